//! Launches our CUDA kernel (`kernels/topk.cu`, compiled to PTX by `build.rs`): the top-k behind
//! `index::topk`.
//!
//! Launch invariants (the kernel file's header asks for them): block sizes are the kernel's
//! `TOPK_THREADS` and `TOPK_SORT_THREADS`; a row is cut into chunks of `CHUNK` columns, one block
//! each; `1 <= k <= min(N, SORT_MAX)`; at most `MAX_GRID_Y` rows per launch, so longer batches go
//! in groups.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Shape};

use super::{DIGITS_16, DIGITS_32};

const TOPK_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/topk.ptx"));
const TOPK_MODULE: &str = "memrl_topk";
/// `TOPK_THREADS` in the kernel.
const THREADS: u32 = 256;
/// `TOPK_SORT_THREADS` in the kernel.
const SORT_THREADS: u32 = 512;
/// `TOPK_SORT_MAX` in the kernel: the widest row sorted whole, and the largest k.
pub(crate) const SORT_MAX: usize = 1024;
/// Columns per block in the count and gather passes: 32 keys per thread; enough blocks (N / 8192)
/// to fill the GPU at B = 1, few enough for the per-row offset scan.
pub(crate) const CHUNK: usize = THREADS as usize * 32;
/// Columns per block in the histogram passes: each block flushes `BINS` counters, so it counts
/// 16 keys per counter.
const HIST_CHUNK: usize = 1 << 16;
/// `TOPK_BINS` in the kernel: the widest digit, 12 bits.
const BINS: usize = 4096;

/// CUDA's limit on gridDim.y.
const MAX_GRID_Y: usize = 65_535;

fn config(grid_x: usize, rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid_x as u32, rows as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `B x min(k, N)` u32 column indices of each row's best scores (score desc, column asc), for
/// f32, f16 and bf16 scores. `k` must be at most [`SORT_MAX`]; callers route larger k
/// elsewhere.
pub(crate) fn topk(
    storage: &CudaStorage,
    layout: &Layout,
    k: usize,
) -> candle_core::Result<(CudaStorage, Shape)> {
    match storage.dtype() {
        DType::F32 => topk_typed::<f32>(storage, layout, k, "f32", DIGITS_32),
        DType::F16 => topk_typed::<half::f16>(storage, layout, k, "f16", DIGITS_16),
        DType::BF16 => topk_typed::<half::bf16>(storage, layout, k, "bf16", DIGITS_16),
        other => candle_core::bail!("memrl-topk on CUDA takes f32, f16 or bf16, got {other:?}"),
    }
}

fn topk_typed<T: CudaDType + DeviceRepr>(
    storage: &CudaStorage,
    layout: &Layout,
    k: usize,
    suffix: &str,
    digits: &[(u32, u32)],
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = storage.device().clone();
    let (rows, cols) = layout.shape().dims2()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("memrl-topk expects contiguous scores")
    };
    if cols > u32::MAX as usize {
        candle_core::bail!("memrl-topk: {cols} columns do not fit u32 indices")
    }
    let k = k.min(cols);
    if k > SORT_MAX {
        candle_core::bail!("memrl-topk on CUDA takes k <= {SORT_MAX}, got {k}")
    }
    let scores = storage.as_cuda_slice::<T>()?.slice(start..end);
    let mut out: CudaSlice<u32> = dev.alloc_zeros(rows * k)?;
    if k == 0 || rows == 0 {
        return Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((rows, k)),
        ));
    }
    let func = |name: &str| {
        dev.get_or_load_custom_func(&format!("{name}_{suffix}"), TOPK_MODULE, TOPK_PTX)
    };
    let (n, k32) = (cols as u32, k as u32);
    let mut first = 0;
    while first < rows {
        let group = MAX_GRID_Y.min(rows - first);
        let scores = scores.slice(first * cols..(first + group) * cols);
        let mut out_group = out.slice_mut(first * k..(first + group) * k);
        if cols <= SORT_MAX {
            let f = func("memrl_topk_small")?;
            let mut b = f.builder();
            b.arg(&scores).arg(&n).arg(&k32).arg(&mut out_group);
            // SAFETY: the kernel reads `group * n` scores and writes `group * k` indices, the
            // sizes of the two buffers; grid and block match its invariants.
            unsafe { b.launch(config(1, group, SORT_THREADS)) }.w()?;
        } else {
            let chunks = cols.div_ceil(CHUNK);
            let hist_chunks = cols.div_ceil(HIST_CHUNK);
            let (chunk, chunks32) = (CHUNK as u32, chunks as u32);
            let (hist_chunk, hist_chunks32) = (HIST_CHUNK as u32, hist_chunks as u32);
            // RowState {prefix, mask, remaining, k} per row.
            let init: Vec<u32> = (0..group).flat_map(|_| [0, 0, k32, k32]).collect();
            let mut state = dev.clone_htod(&init)?;
            // SAFETY (the four allocations below): every element is written by a kernel before
            // any kernel reads it: each histogram pass writes the 2^bits bins that select reads,
            // the count pass every (greater, equal) pair, the gather pass the candidates' first
            // k slots (exactly k keys rank at or above the threshold, by construction of the
            // select passes).
            let mut hist = unsafe { dev.alloc::<u32>(group * hist_chunks * BINS)? };
            let mut counts = unsafe { dev.alloc::<u32>(group * chunks * 2)? };
            let mut cand_keys = unsafe { dev.alloc::<u32>(group * k)? };
            let mut cand_cols = unsafe { dev.alloc::<u32>(group * k)? };
            let histogram = func("memrl_topk_histogram")?;
            let select = dev.get_or_load_custom_func("memrl_topk_select", TOPK_MODULE, TOPK_PTX)?;
            for &(shift, bits) in digits {
                let mut b = histogram.builder();
                b.arg(&scores)
                    .arg(&n)
                    .arg(&hist_chunk)
                    .arg(&state)
                    .arg(&shift)
                    .arg(&bits)
                    .arg(&mut hist);
                // SAFETY: reads group * n scores and group states, writes 2^bits bins per
                // histogram chunk.
                unsafe { b.launch(config(hist_chunks, group, THREADS)) }.w()?;
                let mut b = select.builder();
                b.arg(&hist)
                    .arg(&hist_chunks32)
                    .arg(&mut state)
                    .arg(&shift)
                    .arg(&bits);
                // SAFETY: one block per row; reads the row's hist_chunks * 2^bits bins and
                // updates its state.
                unsafe { b.launch(config(1, group, THREADS)) }.w()?;
            }
            let f = func("memrl_topk_count")?;
            let mut b = f.builder();
            b.arg(&scores)
                .arg(&n)
                .arg(&chunk)
                .arg(&state)
                .arg(&mut counts);
            // SAFETY: writes group * chunks (greater, equal) pairs.
            unsafe { b.launch(config(chunks, group, THREADS)) }.w()?;
            let f = dev.get_or_load_custom_func("memrl_topk_offsets", TOPK_MODULE, TOPK_PTX)?;
            let mut b = f.builder();
            b.arg(&mut counts).arg(&chunks32);
            // SAFETY: rewrites each row's chunks pairs in place.
            unsafe { b.launch(config(1, group, SORT_THREADS)) }.w()?;
            let f = func("memrl_topk_gather")?;
            let mut b = f.builder();
            b.arg(&scores)
                .arg(&n)
                .arg(&chunk)
                .arg(&state)
                .arg(&counts)
                .arg(&mut cand_keys)
                .arg(&mut cand_cols);
            // SAFETY: writes positions below k of each row's candidates, checked in the kernel.
            unsafe { b.launch(config(chunks, group, THREADS)) }.w()?;
            let f = dev.get_or_load_custom_func("memrl_topk_sort", TOPK_MODULE, TOPK_PTX)?;
            let mut b = f.builder();
            b.arg(&cand_keys)
                .arg(&cand_cols)
                .arg(&k32)
                .arg(&mut out_group);
            // SAFETY: reads group * k candidates, writes group * k indices.
            unsafe { b.launch(config(1, group, SORT_THREADS)) }.w()?;
        }
        first += group;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((rows, k)),
    ))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use crate::rng::SplitMix64;

    /// The GPU these tests run on: only when `MEMRL_TEST_DEVICE` names a CUDA device, as on the
    /// GPU machine (`MEMRL_TEST_DEVICE=cuda cargo test --features cuda`); elsewhere they say so
    /// and pass, since a CUDA build without a GPU has nothing to run them on.
    fn gpu() -> Option<Device> {
        let spec = std::env::var("MEMRL_TEST_DEVICE").unwrap_or_default();
        if !spec.starts_with("cuda") {
            eprintln!("MEMRL_TEST_DEVICE is not cuda: CUDA kernel test not run");
            return None;
        }
        Some(crate::device::parse_device(&spec).expect("open the CUDA device"))
    }

    fn scores(rows: usize, cols: usize, levels: u64, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let mut v: Vec<f32> = (0..rows * cols)
            .map(|_| rng.below(levels) as f32 / levels as f32 * 2.0 - 1.0)
            .collect();
        // A few values that only an exact total order places right.
        for special in [f32::NEG_INFINITY, f32::INFINITY, -0.0, 0.0] {
            let at = rng.below(v.len() as u64) as usize;
            v[at] = special;
        }
        v
    }

    #[test]
    fn kernel_equals_the_cpu_op() {
        let Some(gpu) = gpu() else { return };
        let cases = [
            // (rows, cols, k, levels): small rows, the small/large boundary, ties, long rows,
            // batches, k at its limit, and more rows than one launch's grid takes.
            (5, 1, 1, 10),
            (4, 1000, 1000, 7),
            (3, 1024, 17, 1 << 20),
            (3, 1025, 17, 5),
            (2, 8193, 1024, 3),
            (1, 10_000_000, 100, 1 << 24),
            (1, 1_000_000, 1024, 1000),
            (32, 200_000, 10, 1 << 20),
            (256, 40_000, 100, 1 << 16),
            (70_000, 12, 3, 4),
            (2, 50_000, 1, 1),
        ];
        for (rows, cols, k, levels) in cases {
            let v = scores(rows, cols, levels, (rows * cols + k) as u64);
            let cpu = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
            let want: Vec<Vec<u32>> = crate::index::topk::topk_indices(&cpu, k)
                .unwrap()
                .to_vec2()
                .unwrap();
            let on_gpu = cpu.to_device(&gpu).unwrap();
            let got: Vec<Vec<u32>> = crate::index::topk::topk_indices(&on_gpu, k)
                .unwrap()
                .to_vec2()
                .unwrap();
            assert_eq!(got, want, "rows={rows} cols={cols} k={k} levels={levels}");
            // 16-bit scores are ranked as they are on the GPU; the CPU op ranks their exact f32
            // widening, which keeps order and ties.
            for dtype in [DType::F16, DType::BF16] {
                let narrow = cpu.to_dtype(dtype).unwrap();
                let want: Vec<Vec<u32>> = crate::index::topk::topk_indices(&narrow, k)
                    .unwrap()
                    .to_vec2()
                    .unwrap();
                let on_gpu = narrow.to_device(&gpu).unwrap();
                let got: Vec<Vec<u32>> = crate::index::topk::topk_indices(&on_gpu, k)
                    .unwrap()
                    .to_vec2()
                    .unwrap();
                assert_eq!(got, want, "{dtype:?} rows={rows} cols={cols} k={k}");
            }
        }
    }
}
