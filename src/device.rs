//! Turning a device name (`cpu`, `cuda`, `cuda:N`, `metal`) into a candle [`Device`].
//!
//! CUDA and Metal exist only when the crate is built with the `cuda` or `metal` feature; asking
//! for them otherwise is an error that says which feature to enable.

pub use candle_core::Device;

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda`, `cuda:N` or `metal` and opens that device.
///
/// ```
/// let cpu = memrl::parse_device("cpu").unwrap();
/// assert!(cpu.is_cpu());
/// assert!(memrl::parse_device("tpu").is_err());
/// ```
pub fn parse_device(spec: &str) -> Result<Device> {
    let err = |problem: String| Error::Device {
        spec: spec.to_string(),
        problem,
    };
    let (kind, ordinal) = match spec.split_once(':') {
        Some((kind, n)) => {
            let n = n
                .parse::<usize>()
                .map_err(|_| err(format!("`{n}` is not a device number")))?;
            (kind, n)
        }
        None => (spec, 0),
    };
    match kind {
        "cpu" if !spec.contains(':') => Ok(Device::Cpu),
        "cuda" => open_cuda(ordinal).map_err(err),
        "metal" => open_metal(ordinal).map_err(err),
        _ => Err(err("expected cpu, cuda, cuda:N or metal".to_string())),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> std::result::Result<Device, String> {
    Device::new_cuda(ordinal).map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> std::result::Result<Device, String> {
    Err("this build has no CUDA support; rebuild with `--features cuda`".to_string())
}

#[cfg(feature = "metal")]
fn open_metal(ordinal: usize) -> std::result::Result<Device, String> {
    Device::new_metal(ordinal).map_err(|e| e.to_string())
}

#[cfg(not(feature = "metal"))]
fn open_metal(_ordinal: usize) -> std::result::Result<Device, String> {
    Err("this build has no Metal support; rebuild with `--features metal`".to_string())
}

/// A short human-readable name of a device, for logs and benchmark tables.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        for bad in ["", "gpu", "cpu:1", "cuda:x"] {
            assert!(parse_device(bad).is_err(), "{bad}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_which_feature() {
        let msg = parse_device("cuda:0").unwrap_err().to_string();
        assert!(msg.contains("--features cuda"), "{msg}");
    }
}
