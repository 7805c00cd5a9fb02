//! Compiles our device code in `kernels/` when the `cuda` feature is on: each `.cu` file becomes PTX
//! in OUT_DIR, which `src/kernels/cuda.rs` embeds and the driver JIT-compiles for the GPU it
//! runs on. Needs nvcc (`$NVCC`, else on PATH); `CUDA_COMPUTE_CAP` (e.g. 90) picks the virtual
//! architecture, 75 (the oldest CUDA 13 accepts) when unset. Without the feature, nothing runs.

use std::path::PathBuf;
use std::process::Command;

/// Our CUDA sources in kernels/, each compiled to `OUT_DIR/<name>.ptx`.
const KERNELS: [&str; 1] = ["topk"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for kernel in KERNELS {
        println!("cargo:rerun-if-changed=kernels/{kernel}.cu");
    }
    println!("cargo:rerun-if-changed=kernels/common.cuh");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "75".to_string());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for kernel in KERNELS {
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "--Werror", "all-warnings"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(out_dir.join(format!("{kernel}.ptx")))
            .arg(format!("kernels/{kernel}.cu"))
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{nvcc} failed to compile kernels/{kernel}.cu ({s})"),
            Err(e) => panic!(
                "the cuda feature needs nvcc to compile kernels/{kernel}.cu, and `{nvcc}` could \
                 not be run ({e}); put nvcc on PATH or set NVCC"
            ),
        }
    }
}
