//! Fused CPU kernels for the encoder's element-wise work and attention.
//!
//! Profiling candle's BERT on this 2-core AVX-512 machine put half the time outside the matrix
//! products: scalar `erf` in GELU (~12%), per-element `exp` in attention (~12%), and a fresh
//! tensor (allocation, page faults, one more pass over memory) for every bias add, residual add
//! and activation. These kernels fold each of those into one pass:
//!
//! - [`BiasGelu`]: `x = gelu(x + b)`, in place on the GEMM output.
//! - [`BiasResidualNorm`]: `x = LayerNorm(x + b + residual)`, in place on the GEMM output.
//! - [`PackedAttention`]: multi-head self-attention of each text over the fused `[T, 3H]` QKV
//!   (bias included), parallel over (text, head) pairs.
//! - [`Linear`]: `x W^T` as one gemm call (the one candle makes, so the same values), into a
//!   buffer that is not zeroed first: the product overwrites it whole, and zeroing a fresh
//!   `[T, N]` buffer per product was 2-3% of the encoder's time.
//!
//! `exp` and `erf` are branch-free polynomial approximations that the compiler vectorizes
//! (AVX-512 or AVX2+FMA when the CPU has them, chosen at run time): `exp` is exact to ~1 ulp,
//! and `erf` is
//! the Abramowitz-Stegun 7.1.26 form PyTorch's vectorized CPU GELU uses (1.5e-7 in exact
//! arithmetic, below 1e-6 as evaluated in f32). The parity test against sentence-transformers bounds the end-to-end effect.
//!
//! Other devices run the same arithmetic as candle tensor ops (see [`super::bert`]).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, InplaceOp1, InplaceOp2, Layout, Shape};
use rayon::prelude::*;

/// `x = gelu(x + bias)` over rows of `bias.len()`, with erf-based GELU.
pub struct BiasGelu<'a> {
    /// One bias per column.
    pub bias: &'a [f32],
}

/// `x = LayerNorm(x + bias + residual) * gamma + beta` over rows of `bias.len()`.
pub struct BiasResidualNorm<'a> {
    /// Linear layer bias, one per column.
    pub bias: &'a [f32],
    /// LayerNorm weight.
    pub gamma: &'a [f32],
    /// LayerNorm bias.
    pub beta: &'a [f32],
    /// LayerNorm epsilon.
    pub eps: f32,
}

/// Self-attention within each text of a packed batch: `[T, 3H]` QKV (before bias) in,
/// `[T, H]` context out.
pub struct PackedAttention<'a> {
    /// The QKV bias, `3H` values.
    pub bias: &'a [f32],
    /// Token count of each text; they sum to `T`.
    pub lengths: &'a [usize],
    /// Number of heads.
    pub heads: usize,
    /// Size of each head; `heads * head_dim = H`.
    pub head_dim: usize,
}

/// `y = x W^T` for `x` `[T, K]` and a linear layer's weight `W` `[N, K]` (both contiguous
/// f32); `y` is `[T, N]`, bias not added.
pub struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "memrl-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        w: &CpuStorage,
        w_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x_data = contiguous_f32(x, x_l, self.name())?;
        let w_data = contiguous_f32(w, w_l, self.name())?;
        let (&[t, k], &[n, wk]) = (x_l.dims(), w_l.dims()) else {
            candle_core::bail!("{}: expects [T, K] and [N, K]", self.name());
        };
        if k != wk || x_data.len() != t * k || w_data.len() != n * k {
            candle_core::bail!("{}: [{t}, {k}] x [{n}, {wk}]^T", self.name());
        }
        let mut out: Vec<f32> = Vec::with_capacity(t * n);
        if t > 0 && n > 0 {
            let threads = rayon::current_num_threads();
            let parallelism = if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            // SAFETY: the shapes were checked above: `x` is t x k row-major (column stride 1,
            // row stride k), `W^T` is read through `W` (k x n with column stride k, row stride
            // 1), and `out` has capacity for t x n row-major values. With `read_dst` false gemm
            // never reads `out`, and it writes every one of its t x n elements, so `set_len` is
            // sound. These are the arguments candle's own matmul passes for `x.matmul(&w.t())`.
            unsafe {
                gemm::gemm(
                    t,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    x_data.as_ptr(),
                    1,
                    k as isize,
                    w_data.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
                out.set_len(t * n);
            }
        } else {
            out.resize(t * n, 0.0);
        }
        Ok((CpuStorage::F32(out), Shape::from((t, n))))
    }
}

fn contiguous_f32<'s>(
    storage: &'s CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'s [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expects f32");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expects a contiguous tensor"),
    }
}

fn contiguous_f32_mut<'s>(
    storage: &'s mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'s mut [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expects f32");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => candle_core::bail!("{op}: expects a contiguous tensor"),
    }
}

/// Rows per rayon task: enough work per task that scheduling stays in the noise.
const ROWS_PER_TASK: usize = 16;

impl InplaceOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "memrl-bias-gelu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let x = contiguous_f32_mut(storage, layout, self.name())?;
        let n = self.bias.len();
        if n == 0 || x.len() % n != 0 {
            candle_core::bail!("{}: {} values are not rows of {n}", self.name(), x.len());
        }
        x.par_chunks_mut(n * ROWS_PER_TASK).for_each(|rows| {
            for row in rows.chunks_exact_mut(n) {
                simd::bias_gelu(row, self.bias);
            }
        });
        Ok(())
    }
}

impl InplaceOp2 for BiasResidualNorm<'_> {
    fn name(&self) -> &'static str {
        "memrl-bias-residual-norm"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        residual: &CpuStorage,
        residual_l: &Layout,
    ) -> candle_core::Result<()> {
        let residual = contiguous_f32(residual, residual_l, self.name())?;
        let x = contiguous_f32_mut(dst, dst_l, self.name())?;
        let n = self.bias.len();
        if n == 0 || x.len() % n != 0 || residual.len() != x.len() {
            candle_core::bail!("{}: shapes do not match rows of {n}", self.name());
        }
        x.par_chunks_mut(n * ROWS_PER_TASK)
            .zip(residual.par_chunks(n * ROWS_PER_TASK))
            .for_each(|(rows, res_rows)| {
                for (row, res) in rows.chunks_exact_mut(n).zip(res_rows.chunks_exact(n)) {
                    simd::bias_residual_norm(row, res, self.bias, self.gamma, self.beta, self.eps);
                }
            });
        Ok(())
    }
}

impl CustomOp1 for PackedAttention<'_> {
    fn name(&self) -> &'static str {
        "memrl-packed-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(storage, layout, self.name())?;
        let h = self.heads * self.head_dim;
        let t: usize = self.lengths.iter().sum();
        if self.bias.len() != 3 * h || qkv.len() != t * 3 * h {
            candle_core::bail!("{}: QKV is not [{t}, {}]", self.name(), 3 * h);
        }
        let mut out = vec![0f32; t * h];
        // Each text owns a contiguous block of output rows, so texts run in parallel without
        // sharing; heads run one after another inside a text.
        let mut blocks = Vec::with_capacity(self.lengths.len());
        let mut rest = out.as_mut_slice();
        let mut offset = 0;
        for &len in self.lengths {
            let (block, tail) = rest.split_at_mut(len * h);
            blocks.push((offset, len, block));
            rest = tail;
            offset += len;
        }
        blocks.into_par_iter().for_each(|(offset, len, block)| {
            let rows = &qkv[offset * 3 * h..(offset + len) * 3 * h];
            simd::attend_text(rows, self.bias, len, self.heads, self.head_dim, block);
        });
        Ok((CpuStorage::F32(out), Shape::from((t, h))))
    }
}

/// Vectorizable math, compiled three times: for the baseline target, AVX2+FMA and AVX-512,
/// picked once at run time.
pub(crate) mod simd {
    /// The widest instruction set this CPU offers our kernels, detected once.
    #[cfg(target_arch = "x86_64")]
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Level {
        Baseline,
        Avx2,
        Avx512,
    }

    #[cfg(target_arch = "x86_64")]
    fn level() -> Level {
        use std::arch::is_x86_feature_detected as has;
        use std::sync::OnceLock;
        static DETECTED: OnceLock<Level> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            if has!("avx512f") && has!("avx2") && has!("fma") {
                Level::Avx512
            } else if has!("avx2") && has!("fma") {
                Level::Avx2
            } else {
                Level::Baseline
            }
        })
    }

    /// Defines `pub fn $name` that runs `$generic` compiled for AVX-512 or AVX2+FMA when the
    /// CPU has them (the compiler vectorizes the same plain loops wider), else as is.
    macro_rules! dispatch {
        ($(fn $name:ident / $avx:ident, $avx512:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty = $generic:ident;)*) => {$(
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn $avx($($arg: $ty),*) -> $ret {
                $generic($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn $avx512($($arg: $ty),*) -> $ret {
                $generic($($arg),*)
            }

            #[inline]
            pub fn $name($($arg: $ty),*) -> $ret {
                #[cfg(target_arch = "x86_64")]
                match level() {
                    // SAFETY: the CPU has these features (detected at run time in `level`).
                    Level::Avx512 => return unsafe { $avx512($($arg),*) },
                    // SAFETY: as above.
                    Level::Avx2 => return unsafe { $avx($($arg),*) },
                    Level::Baseline => {}
                }
                $generic($($arg),*)
            }
        )*};
    }

    dispatch! {
        fn bias_gelu / bias_gelu_avx2, bias_gelu_avx512(x: &mut [f32], bias: &[f32]) -> () = bias_gelu_generic;
        fn bias_residual_norm / bias_residual_norm_avx2, bias_residual_norm_avx512(
            row: &mut [f32], residual: &[f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32
        ) -> () = bias_residual_norm_generic;
        fn attend_text / attend_text_avx2, attend_text_avx512(
            qkv: &[f32], bias: &[f32], len: usize, heads: usize, d: usize, out: &mut [f32]
        ) -> () = attend_text_generic;
    }

    #[inline(always)]
    fn bias_residual_norm_generic(
        row: &mut [f32],
        residual: &[f32],
        bias: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) {
        let n = row.len() as f32;
        for ((x, r), b) in row.iter_mut().zip(residual).zip(bias) {
            *x += r + b;
        }
        let mean = sum_generic(row) / n;
        let mut acc = [0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let mut var: f32 = chunks
            .remainder()
            .iter()
            .map(|&x| (x - mean) * (x - mean))
            .sum();
        for x in chunks {
            for l in 0..LANES {
                acc[l] += (x[l] - mean) * (x[l] - mean);
            }
        }
        var = (var + acc.iter().sum::<f32>()) / n;
        let inv = 1.0 / (var + eps).sqrt();
        for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *x = (*x - mean) * inv * g + b;
        }
    }

    /// Attention of one text (`len` rows of fused QKV, before bias) into its `len x H` output.
    #[inline(always)]
    fn attend_text_generic(
        qkv: &[f32],
        bias: &[f32],
        len: usize,
        heads: usize,
        d: usize,
        out: &mut [f32],
    ) {
        let h = heads * d;
        let scale = 1.0 / (d as f32).sqrt();
        // One pass over the text's rows gathers every head into head-major `[heads, len, d]`
        // q, k and v, bias added and q pre-scaled. Then per head two small matrix products
        // (scores = q k^T, context = softmax(scores) v) run on the same GEMM kernels as the
        // linear layers, single-threaded: texts already run in parallel.
        let mut q = vec![0f32; heads * len * d];
        let mut k = vec![0f32; heads * len * d];
        let mut v = vec![0f32; heads * len * d];
        for (i, row) in qkv.chunks_exact(3 * h).take(len).enumerate() {
            let (row_q, rest) = row.split_at(h);
            let (row_k, row_v) = rest.split_at(h);
            let (bias_q, rest) = bias.split_at(h);
            let (bias_k, bias_v) = rest.split_at(h);
            for head in 0..heads {
                let (col, dst) = (head * d..(head + 1) * d, (head * len + i) * d);
                // Zipped slices: no index checks, so each head's copy is a few vector ops.
                let dst = dst..dst + d;
                for ((o, x), b) in q[dst.clone()]
                    .iter_mut()
                    .zip(&row_q[col.clone()])
                    .zip(&bias_q[col.clone()])
                {
                    *o = (x + b) * scale;
                }
                for ((o, x), b) in k[dst.clone()]
                    .iter_mut()
                    .zip(&row_k[col.clone()])
                    .zip(&bias_k[col.clone()])
                {
                    *o = x + b;
                }
                for ((o, x), b) in v[dst].iter_mut().zip(&row_v[col.clone()]).zip(&bias_v[col]) {
                    *o = x + b;
                }
            }
        }
        let mut scores = vec![0f32; len * len];
        for head in 0..heads {
            let block = head * len * d..(head + 1) * len * d;
            let (qh, kh, vh) = (&q[block.clone()], &k[block.clone()], &v[block]);
            matmul(&mut scores, len, 1, qh, d, 1, kh, 1, d, len, len, d);
            for row in scores.chunks_exact_mut(len) {
                softmax_generic(row);
            }
            // Output rows are `h` apart; this head's columns start at `head * d`.
            matmul(
                &mut out[head * d..],
                h,
                1,
                &scores,
                len,
                1,
                vh,
                d,
                1,
                len,
                d,
                len,
            );
        }
    }

    /// `dst[m x n] = lhs[m x k] * rhs[k x n]` with the given row and column strides, one thread.
    /// Checks that every element each operand's strides reach lies inside its slice, so the
    /// unsafe call below cannot read or write out of bounds.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn matmul(
        dst: &mut [f32],
        dst_rs: usize,
        dst_cs: usize,
        lhs: &[f32],
        lhs_rs: usize,
        lhs_cs: usize,
        rhs: &[f32],
        rhs_rs: usize,
        rhs_cs: usize,
        m: usize,
        n: usize,
        k: usize,
    ) {
        let last =
            |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
        if m == 0 || n == 0 || k == 0 {
            return;
        }
        assert!(
            last(m, n, dst_rs, dst_cs) < dst.len()
                && last(m, k, lhs_rs, lhs_cs) < lhs.len()
                && last(k, n, rhs_rs, rhs_cs) < rhs.len(),
            "attention matmul operands out of bounds"
        );
        // SAFETY: the assert above bounds every index gemm reaches through these strides, and
        // `dst` is borrowed mutably, so it does not alias `lhs` or `rhs`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                dst_cs as isize,
                dst_rs as isize,
                false,
                lhs.as_ptr(),
                lhs_cs as isize,
                lhs_rs as isize,
                rhs.as_ptr(),
                rhs_cs as isize,
                rhs_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    const LANES: usize = 8;

    #[inline(always)]
    fn sum_generic(a: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = a.chunks_exact(LANES);
        let tail: f32 = chunks.remainder().iter().sum();
        for x in chunks {
            for l in 0..LANES {
                acc[l] += x[l];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    #[inline(always)]
    fn softmax_generic(x: &mut [f32]) {
        // Lane-wise max (f32::max's NaN rule keeps a fold scalar); NaN scores stay NaN anyway.
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let chunks = x.chunks_exact(LANES);
        let mut max = chunks
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        for c in chunks {
            for l in 0..LANES {
                lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
            }
        }
        for l in lanes {
            max = if l > max { l } else { max };
        }
        for v in x.iter_mut() {
            *v = exp(*v - max);
        }
        let inv = 1.0 / sum_generic(x);
        for v in x.iter_mut() {
            *v *= inv;
        }
    }

    #[inline(always)]
    fn bias_gelu_generic(x: &mut [f32], bias: &[f32]) {
        for (v, b) in x.iter_mut().zip(bias) {
            let y = *v + b;
            *v = 0.5 * y * (1.0 + erf(y * std::f32::consts::FRAC_1_SQRT_2));
        }
    }

    /// `e^x`, branch-free: round `x / ln 2` to `n` with the 1.5 * 2^23 trick, a degree-6
    /// polynomial for `e^r` on `|r| <= ln2/2`, and `2^n` built in the exponent bits. Inputs are
    /// clamped to the normal range (`e^-87.3` stands in for 0).
    #[inline(always)]
    pub fn exp(x: f32) -> f32 {
        const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
        let x = x.clamp(-87.3, 88.7);
        let shifted = x * std::f32::consts::LOG2_E + MAGIC;
        let n = shifted - MAGIC;
        // ln 2 split in two so n * LN2_HI is exact.
        let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        let bits = (shifted
            .to_bits()
            .wrapping_sub(0x4B40_0000)
            .wrapping_add(127))
            << 23;
        p * f32::from_bits(bits)
    }

    /// erf by Abramowitz and Stegun 7.1.26 (absolute error 1.5e-7 in exact arithmetic, below
    /// 1e-6 in f32).
    #[inline(always)]
    pub fn erf(x: f32) -> f32 {
        let a = x.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * a);
        let poly = t
            * (0.254_829_6
                + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
        (1.0 - poly * exp(-a * a)).copysign(x)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn exp_is_within_two_ulp_over_the_softmax_range() {
            let mut worst = 0f64;
            for i in 0..=200_000 {
                let x = -87.0 + 175.0 * i as f32 / 200_000.0;
                let exact = (x as f64).exp();
                worst = worst.max(((exp(x) as f64 - exact) / exact).abs());
            }
            assert!(worst < 2.5e-7, "worst relative error {worst}");
            assert!(exp(f32::NEG_INFINITY) < 1e-37);
        }

        #[test]
        fn erf_is_within_its_published_bound() {
            let mut worst = 0f64;
            for i in 0..=100_000 {
                let x = -6.0 + 12.0 * i as f64 / 100_000.0;
                // erf via the complementary series would need a crate; use the identity with
                // a high-precision numerical integral instead.
                let exact = erf_reference(x);
                worst = worst.max((erf(x as f32) as f64 - exact).abs());
            }
            assert!(worst < 1e-6, "worst absolute error {worst}");
        }

        /// erf(x) = 2/sqrt(pi) * integral_0^x e^(-t^2) dt, by Simpson's rule on 2000 panels.
        fn erf_reference(x: f64) -> f64 {
            let n = 2000;
            let h = x / n as f64;
            let f = |t: f64| (-t * t).exp();
            let mut s = f(0.0) + f(x);
            for i in 1..n {
                s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
        }

        /// Every tier this CPU can run computes what the baseline build computes.
        #[test]
        fn each_instruction_set_tier_agrees_with_the_baseline() {
            let (len, heads, d) = (19, 3, 8);
            let h = heads * d;
            let wave =
                |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * f).sin()).collect() };
            let (qkv, bias3) = (wave(len * 3 * h, 0.37), wave(3 * h, 0.11));
            let (row, res, bias, gamma, beta) = (
                wave(50, 0.3),
                wave(50, 0.7),
                wave(50, 0.2),
                wave(50, 0.5),
                wave(50, 0.9),
            );
            let base_att = {
                let mut o = vec![0f32; len * h];
                attend_text_generic(&qkv, &bias3, len, heads, d, &mut o);
                o
            };
            let mut base_gelu = row.clone();
            bias_gelu_generic(&mut base_gelu, &bias);
            let mut base_norm = row.clone();
            bias_residual_norm_generic(&mut base_norm, &res, &bias, &gamma, &beta, 1e-12);
            let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5);
            let mut tiers = 0;
            #[cfg(target_arch = "x86_64")]
            for tier in [Level::Avx2, Level::Avx512] {
                if level() == Level::Baseline || (tier == Level::Avx512 && level() != Level::Avx512)
                {
                    continue;
                }
                tiers += 1;
                let (mut att, mut gelu, mut norm) = (vec![0f32; len * h], row.clone(), row.clone());
                // SAFETY: only tiers the CPU supports are run (checked above).
                unsafe {
                    match tier {
                        Level::Avx2 => {
                            attend_text_avx2(&qkv, &bias3, len, heads, d, &mut att);
                            bias_gelu_avx2(&mut gelu, &bias);
                            bias_residual_norm_avx2(&mut norm, &res, &bias, &gamma, &beta, 1e-12);
                        }
                        _ => {
                            attend_text_avx512(&qkv, &bias3, len, heads, d, &mut att);
                            bias_gelu_avx512(&mut gelu, &bias);
                            bias_residual_norm_avx512(&mut norm, &res, &bias, &gamma, &beta, 1e-12);
                        }
                    }
                }
                assert!(
                    close(&att, &base_att) && close(&gelu, &base_gelu) && close(&norm, &base_norm)
                );
            }
            eprintln!("checked {tiers} vector tiers against the baseline");
        }

        #[test]
        fn softmax_and_sum_match_plain_loops() {
            let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
            assert!((sum_generic(&a) - a.iter().sum::<f32>()).abs() < 1e-5);
            let mut s = a.clone();
            softmax_generic(&mut s);
            let max = a.iter().copied().fold(f32::MIN, f32::max);
            let total: f64 = a.iter().map(|&x| ((x - max) as f64).exp()).sum();
            for (got, x) in s.iter().zip(&a) {
                let want = ((x - max) as f64).exp() / total;
                assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
            }
        }
    }
}
