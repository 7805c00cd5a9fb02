//! Our device code's host side. The kernels themselves are in the top-level `kernels/` folder
//! (its README explains the algorithms); this module launches them and keeps a CPU mirror of
//! each, so their logic is tested on machines without the device.
//!
//! - `cuda` (feature `cuda`): the top-k launcher behind `retrieve::topk` on CUDA devices.
//! - `mirror` (tests): `kernels/topk.cu` step for step on the CPU.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(test)]
pub(crate) mod mirror;
