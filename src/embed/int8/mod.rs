//! The int8 encoder path: dynamic quantization of the four linear layers of every BERT layer.
//!
//! - **Rotation**: both sides of every product are rotated by the same block Hadamard matrix
//!   first, which leaves the product unchanged and spreads outlier channels out ([`rotate`]).
//! - **Weights**: symmetric, one scale per output channel (`absmax / 127`, values in -127..=127,
//!   so the range is symmetric and -128 never occurs). Computed once from the f32 checkpoint and
//!   cached on disk ([`cache`]).
//! - **Activations**: asymmetric u8, one scale and zero point per row (token), computed at run
//!   time from the rotated row itself (see [`kernels::quantize_rows`]).
//!
//! Why u8 x s8 with a zero point: `vpdpbusd`, the VNNI instruction, multiplies unsigned by signed
//! bytes. A symmetric s8 activation would have to be shifted by 128 into u8 and corrected with
//! `128 * colsum(w)` anyway; an asymmetric u8 activation is corrected the same way with its own
//! zero point instead of 128, at the same cost, and spends all 256 levels on the row's actual
//! range (GELU's output is almost all positive: a symmetric scale would waste half the levels).
//! The sums are exact in i32 (255 x 127 x 4 per step, at most 2^31 / 32,385 = 66,000 deep).
//!
//! Everything else (embeddings, attention, GELU, LayerNorm, pooling) stays f32: those steps are
//! a minor share of the work and the ones quantization would hurt most.

pub(crate) mod cache;
pub(crate) mod kernels;
pub(crate) mod rotate;

use std::path::Path;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::bert::BertEncoder;
use super::Int8Cache;
use crate::error::Result;
use cache::Unusable;
use kernels::{PackedWeights, QuantRows, Tier};

/// The linear layers of one BERT layer, in the order the cache names them.
pub(crate) const LINEARS: [&str; 4] = ["qkv", "attn_out", "ffn_in", "ffn_out"];

/// One linear layer's weights, rotated ([`rotate`]) and quantized per output channel: `[n, k]`
/// row-major s8 and one scale per row (output channel).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuantizedLinear {
    /// Output channels.
    pub(crate) n: usize,
    /// Input channels.
    pub(crate) k: usize,
    /// `n * k` values in -127..=127.
    pub(crate) weights: Vec<i8>,
    /// `n` scales, each `absmax / 127` of its channel (0 for an all-zero channel).
    pub(crate) scale: Vec<f32>,
}

impl QuantizedLinear {
    /// Rotates and quantizes f32 weights `[n, k]` (one row per output channel).
    pub(crate) fn quantize(weights: &[f32], n: usize, k: usize) -> Self {
        let mut q = Vec::with_capacity(n * k);
        let mut scale = Vec::with_capacity(n);
        let block = rotate::block_for(k);
        let mut row = Vec::with_capacity(k);
        for original in weights.chunks_exact(k.max(1)).take(n) {
            row.clear();
            row.extend_from_slice(original);
            rotate::rotate_normalized(&mut row, block);
            let finite = row.iter().all(|w| w.is_finite());
            let absmax = row.iter().fold(0f32, |m, &w| m.max(w.abs()));
            if finite && absmax > 0.0 {
                let inv = 127.0 / absmax;
                q.extend(
                    row.iter()
                        .map(|&w| (w * inv).round_ties_even().clamp(-127.0, 127.0) as i8),
                );
                scale.push(absmax / 127.0);
            } else {
                // An all-zero channel stays zero; a non-finite one is refused by the caller's
                // check of the checkpoint (a NaN scale would spread to the whole output).
                q.extend(std::iter::repeat_n(0, row.len()));
                scale.push(if finite { 0.0 } else { f32::NAN });
            }
        }
        QuantizedLinear {
            n,
            k,
            weights: q,
            scale,
        }
    }

    /// Packs the weights for the kernels.
    pub(crate) fn pack(&self) -> Option<Int8Linear> {
        Some(Int8Linear {
            packed: PackedWeights::pack(&self.weights, &self.scale, self.n, self.k)?,
            rotation: rotate::block_for(self.k),
        })
    }
}

/// A linear layer ready for the int8 kernels (the bias is added by the fused f32 pass after it).
#[derive(Debug, Clone)]
pub(crate) struct Int8Linear {
    packed: PackedWeights,
    /// The Hadamard block its weights were rotated by, which the activations get too.
    rotation: usize,
}

/// The four int8 linear layers of one BERT layer.
#[derive(Debug, Clone)]
pub(crate) struct Int8Layer {
    /// Fused query, key and value, `[3H, H]`.
    pub(crate) qkv: Int8Linear,
    /// Attention output, `[H, H]`.
    pub(crate) attn_out: Int8Linear,
    /// Feed-forward in, `[I, H]`.
    pub(crate) ffn_in: Int8Linear,
    /// Feed-forward out, `[H, I]`.
    pub(crate) ffn_out: Int8Linear,
}

/// Gives `encoder` int8 linear layers: from the cache under `cache_dir` when it holds a valid
/// file for these weights (`source_sha256`), else quantized now and written there.
pub(crate) fn load_into(
    encoder: &mut BertEncoder,
    cache_dir: Option<&Path>,
    source_sha256: &str,
) -> Result<Int8Cache> {
    let Some(dir) = cache_dir else {
        let layers = encoder.quantize_linears()?;
        encoder.set_int8(&layers)?;
        return Ok(Int8Cache::Disabled);
    };
    let path = cache::path(dir, source_sha256);
    let problem = match cache::read(&path, source_sha256, &encoder.linear_shapes()) {
        Ok(layers) => {
            encoder.set_int8(&layers)?;
            tracing::debug!(path = %path.display(), "int8 weights from the cache");
            return Ok(Int8Cache::Loaded(path));
        }
        Err(Unusable::Missing) => None,
        Err(Unusable::Invalid(problem)) => Some(problem),
    };
    let layers = encoder.quantize_linears()?;
    encoder.set_int8(&layers)?;
    let written = cache::write(&path, source_sha256, &layers);
    let outcome = match (written, problem) {
        (Ok(()), None) => {
            tracing::info!(path = %path.display(), "int8 weights quantized and cached");
            return Ok(Int8Cache::Written(path));
        }
        (Ok(()), Some(problem)) => Int8Cache::Rebuilt { path, problem },
        (Err(e), None) => Int8Cache::NotWritten {
            path,
            problem: e.to_string(),
        },
        (Err(e), Some(problem)) => Int8Cache::NotWritten {
            path,
            problem: format!("{problem}; rewriting it failed: {e}"),
        },
    };
    match &outcome {
        Int8Cache::Rebuilt { path, problem } => tracing::warn!(
            "int8 weight cache {}: {problem}; quantized the weights again and rewrote it",
            path.display()
        ),
        Int8Cache::NotWritten { path, problem } => tracing::warn!(
            "int8 weight cache {}: {problem}; the weights were quantized for this load only",
            path.display()
        ),
        _ => {}
    }
    Ok(outcome)
}

/// Rows per parallel task: each task quantizes its own rows, then multiplies them by every
/// column, so the quantized block (rows x depth bytes) stays in the core's cache.
const ROWS_PER_TASK: usize = 48;

/// `y = x W^T` for `x` `[T, k]` f32, with int8 arithmetic; `y` is `[T, n]` f32, bias not added.
pub(crate) struct Int8Matmul<'a> {
    /// The layer.
    pub(crate) linear: &'a Int8Linear,
    /// The kernels to run (a tier this CPU supports).
    pub(crate) tier: Tier,
}

impl CustomOp1 for Int8Matmul<'_> {
    fn name(&self) -> &'static str {
        "memrl-int8-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = &self.linear.packed;
        let (n, k) = (w.n(), w.k());
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: expects f32", self.name());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: expects a contiguous tensor", self.name());
        };
        let x = &data[start..end];
        if layout.dims().last() != Some(&k) || x.len() % k != 0 {
            candle_core::bail!(
                "{}: input {:?} does not have depth {k}",
                self.name(),
                layout.dims()
            );
        }
        let t = x.len() / k;
        let stride = w.groups() * kernels::GROUP;
        // Not zeroed first: the kernels write every element (see `kernels::matmul`), and a
        // fresh zeroed buffer per product cost a tenth of the int8 encoder's time.
        let mut out: Vec<f32> = Vec::with_capacity(t * n);
        out.spare_capacity_mut()[..t * n]
            .par_chunks_mut(ROWS_PER_TASK * n)
            .zip(x.par_chunks(ROWS_PER_TASK * k))
            .for_each_init(QuantRows::default, |rows, (dst, src)| {
                kernels::quantize_rows(src, k, stride, self.linear.rotation, rows, self.tier);
                kernels::matmul(rows, w, dst, self.tier);
            });
        // SAFETY: the chunks cover all `t * n` elements of the spare capacity, and
        // `kernels::matmul` writes every element of its output.
        unsafe { out.set_len(t * n) };
        Ok((CpuStorage::F32(out), Shape::from((t, n))))
    }
}

impl Int8Linear {
    /// Applies the layer to `x` `[T, k]`.
    pub(crate) fn forward(&self, x: &Tensor, tier: Tier) -> candle_core::Result<Tensor> {
        x.apply_op1_no_bwd(&Int8Matmul { linear: self, tier })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_quantize_per_channel_within_half_a_step() {
        let (n, k) = (5, 37);
        let mut w: Vec<f32> = (0..n * k)
            .map(|i| ((i as f32) * 0.71).sin() * (1 + i % 5) as f32)
            .collect();
        w[k..2 * k].fill(0.0); // an all-zero channel
        let q = QuantizedLinear::quantize(&w, n, k);
        assert_eq!((q.weights.len(), q.scale.len()), (n * k, n));
        assert_eq!(q.scale[1], 0.0);
        for c in 0..n {
            let absmax = w[c * k..(c + 1) * k]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            for i in 0..k {
                let (qv, wv) = (q.weights[c * k + i], w[c * k + i]);
                assert!((-127..=127).contains(&qv));
                assert!((qv as f32 * q.scale[c] - wv).abs() <= 0.5 * absmax / 127.0 * 1.0001);
            }
        }
    }

    #[test]
    fn the_op_matches_an_f32_product_within_quantization_error() {
        let (t, n, k) = (101, 70, 96);
        let x: Vec<f32> = (0..t * k)
            .map(|i| ((i as f32) * 0.13).cos() + 0.2)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i as f32) * 0.29).sin() * 0.1)
            .collect();
        let linear = QuantizedLinear::quantize(&w, n, k).pack().unwrap();
        let xt = Tensor::from_vec(x.clone(), (t, k), &candle_core::Device::Cpu).unwrap();
        let got = linear
            .forward(&xt, Tier::detect())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut worst = 0f32;
        for r in 0..t {
            for c in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
                worst = worst.max((got[r][c] - exact).abs());
            }
        }
        // Sums of 96 products of values near 1 and 0.1: the error is a few hundredths at most.
        assert!(worst < 0.03, "worst absolute error {worst}");
    }
}
