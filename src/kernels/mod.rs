//! Our device code's host side. The kernels themselves are in the top-level `kernels/` folder
//! (its README explains the algorithms); this module launches them and keeps a CPU mirror of
//! each, so their logic is tested on machines without the device.
//!
//! - `cuda` (feature `cuda`): the top-k launcher behind `index::topk`, on CUDA devices.
//! - `mirror` (tests): `kernels/topk.cu` step for step on the CPU.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(test)]
pub(crate) mod mirror;

/// (shift, bits) of each radix pass of the CUDA top-k over 32-bit keys (f32 scores), most
/// significant first: 12 bits first, where cosine scores share sign and exponent bits and a
/// narrow digit would crowd them into a few bins.
#[cfg_attr(not(any(test, feature = "cuda")), allow(dead_code))]
pub(crate) const DIGITS_32: &[(u32, u32)] = &[(20, 12), (8, 12), (0, 8)];
/// The same for 16-bit keys (f16 and bf16 scores).
#[cfg_attr(not(any(test, feature = "cuda")), allow(dead_code))]
pub(crate) const DIGITS_16: &[(u32, u32)] = &[(4, 12), (0, 4)];
