//! The int8 matrix product: u8 activation rows times s8 weight columns, summed exactly in i32,
//! then scaled back to f32, for the CPU at hand: AVX-512 VNNI, else AVX-VNNI, else portable Rust
//! (compiled once more for AVX2 so that CPUs without VNNI still get vector code).
//!
//! Layout. Weights are packed once, at load, into panels of 16 output columns; within a panel,
//! depth runs in groups of 4, and each group holds the 4 weights of every column side by side:
//! byte `((panel * groups + g) * 16 + lane) * 4 + b` is weight (column `16 * panel + lane`,
//! depth `4 * g + b`). One 64-byte load is then exactly the operand `vpdpbusd` wants: 16 lanes of
//! 4 signed bytes, multiplied by 4 unsigned activation bytes broadcast to every lane and added to
//! 16 i32 sums. Columns and depth are padded with zero weights, so padding adds nothing.
//!
//! Every tier computes the same integers (the sums are exact) and the same f32 products in the
//! same order, so all tiers agree bit for bit with [`reference`], which tests check.

use std::mem::MaybeUninit;

/// Output columns per packed panel (one 512-bit vector of i32 sums).
pub(crate) const PANEL: usize = 16;
/// Depth per 32-bit lane: what one `vpdpbusd` multiplies and adds.
pub(crate) const GROUP: usize = 4;
/// The deepest product whose i32 sums are exact: `255 * 127 * depth < 2^31`.
pub(crate) const MAX_DEPTH: usize = 66_000;

/// Weights of one linear layer, quantized and packed for the kernels.
#[derive(Debug, Clone)]
pub(crate) struct PackedWeights {
    /// Panels of `groups * PANEL * GROUP` bytes (see the module docs).
    data: Vec<i8>,
    /// Output columns (the layer's `out_features`).
    n: usize,
    /// Depth (the layer's `in_features`).
    k: usize,
    /// Sum over depth of each column's weights, padded to whole panels with zeros: the
    /// correction for the activations' zero point.
    colsum: Vec<i32>,
    /// Each column's weight scale, padded like `colsum`.
    scale: Vec<f32>,
}

impl PackedWeights {
    /// Packs row-major `[n, k]` quantized weights (one row per output column) and their scales;
    /// `None` if the lengths disagree or the depth exceeds [`MAX_DEPTH`].
    pub(crate) fn pack(weights: &[i8], scale: &[f32], n: usize, k: usize) -> Option<Self> {
        if weights.len() != n.checked_mul(k)? || scale.len() != n || n == 0 || k == 0 {
            return None;
        }
        if k > MAX_DEPTH {
            return None;
        }
        let groups = k.div_ceil(GROUP);
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0i8; panels * groups * PANEL * GROUP];
        let mut colsum = vec![0i32; panels * PANEL];
        let mut padded_scale = vec![0f32; panels * PANEL];
        for (col, row) in weights.chunks_exact(k).enumerate() {
            let (panel, lane) = (col / PANEL, col % PANEL);
            for (depth, &w) in row.iter().enumerate() {
                let (g, b) = (depth / GROUP, depth % GROUP);
                data[((panel * groups + g) * PANEL + lane) * GROUP + b] = w;
            }
            colsum[col] = row.iter().map(|&w| w as i32).sum();
            padded_scale[col] = scale[col];
        }
        Some(PackedWeights {
            data,
            n,
            k,
            colsum,
            scale: padded_scale,
        })
    }

    /// Output columns.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// Depth.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Depth groups of 4 (the packed depth is `4 * groups`).
    pub(crate) fn groups(&self) -> usize {
        self.k.div_ceil(GROUP)
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Bytes of one panel.
    fn panel_stride(&self) -> usize {
        self.groups() * PANEL * GROUP
    }
}

/// Activation rows quantized to u8 with one scale and zero point each: row `r` stands for
/// `(data[r * stride + i] - zero[r]) * scale[r]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct QuantRows {
    /// `rows * stride` bytes; the padding past the depth is zero (and meets zero weights).
    pub(crate) data: Vec<u8>,
    /// Bytes per row: the weights' packed depth.
    pub(crate) stride: usize,
    /// One scale per row.
    pub(crate) scale: Vec<f32>,
    /// One zero point per row, in 0..=255.
    pub(crate) zero: Vec<i32>,
    /// A row's rotated values before quantization (reused from row to row).
    scratch: Vec<f32>,
}

impl QuantRows {
    /// Number of rows.
    pub(crate) fn rows(&self) -> usize {
        self.scale.len()
    }
}

/// The instruction set the int8 kernels run on, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    /// Plain Rust, any CPU.
    Portable,
    /// The portable code compiled for AVX2 (no VNNI: `vpmaddwd`-style sums).
    Avx2,
    /// 256-bit VNNI (`vpdpbusd ymm`), on CPUs without AVX-512 VNNI.
    AvxVnni,
    /// 512-bit VNNI (`vpdpbusd zmm`).
    Avx512Vnni,
}

impl Tier {
    /// The best tier this CPU supports.
    pub(crate) fn detect() -> Tier {
        use std::sync::OnceLock;
        static DETECTED: OnceLock<Tier> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                    return Tier::Avx512Vnni;
                }
                if has!("avx2") && has!("avxvnni") {
                    return Tier::AvxVnni;
                }
                if has!("avx2") {
                    return Tier::Avx2;
                }
            }
            Tier::Portable
        })
    }

    /// Whether this CPU can run the tier.
    #[cfg(test)]
    pub(crate) fn supported(self) -> bool {
        let best = Tier::detect();
        match self {
            Tier::Portable => true,
            Tier::Avx2 => best != Tier::Portable,
            Tier::AvxVnni => {
                #[cfg(target_arch = "x86_64")]
                {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("avxvnni")
                }
                #[cfg(not(target_arch = "x86_64"))]
                false
            }
            Tier::Avx512Vnni => best == Tier::Avx512Vnni,
        }
    }

    /// A short name for logs and benchmarks.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Tier::Portable => "portable",
            Tier::Avx2 => "avx2",
            Tier::AvxVnni => "avx-vnni",
            Tier::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// Rotates each row of `x` (`rows x k`, row-major) by the Hadamard blocks of `rotation`
/// channels (1: none; see [`super::rotate`]) and quantizes it to u8 with its own scale and zero
/// point, into rows of `stride >= k` bytes.
///
/// Asymmetric per row: the row's range `[min(0, lo), max(0, hi)]` maps onto 0..=255, so 0 is
/// exact (it is the zero point) and a row that is mostly positive, like GELU's output, still
/// uses all 256 levels, where a symmetric scale would waste half of them. The zero point costs
/// nothing in the product: `sum (q - z) w = sum q w - z * colsum(w)`, one multiply per output.
pub(crate) fn quantize_rows(
    x: &[f32],
    k: usize,
    stride: usize,
    rotation: usize,
    out: &mut QuantRows,
    tier: Tier,
) {
    let rows = x.len().checked_div(k).unwrap_or(0);
    out.stride = stride;
    out.data.clear();
    out.data.resize(rows * stride, 0);
    out.scale.clear();
    out.zero.clear();
    let scratch = &mut out.scratch;
    for (row, dst) in x.chunks_exact(k).zip(out.data.chunks_exact_mut(stride)) {
        let dst = &mut dst[..k];
        let (scale, zero) = match tier {
            // SAFETY: `tier` is only ever a tier this CPU supports (see `Tier::supported`); the
            // AVX-512 and AVX-VNNI machines have AVX2 too.
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512Vnni => unsafe { x86::quantize_row_avx512(row, rotation, scratch, dst) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Tier::AvxVnni | Tier::Avx2 => unsafe {
                x86::quantize_row_avx2(row, rotation, scratch, dst)
            },
            _ => quantize_rotated(row, rotation, scratch, dst),
        };
        out.scale.push(scale);
        out.zero.push(zero);
    }
}

/// One row: rotated into `scratch` when `rotation > 1`, then quantized; the unnormalized
/// transform's `sqrt(rotation)` comes off the scale.
#[inline(always)]
fn quantize_rotated(
    x: &[f32],
    rotation: usize,
    scratch: &mut Vec<f32>,
    out: &mut [u8],
) -> (f32, i32) {
    if rotation <= 1 {
        return quantize_row(x, out);
    }
    scratch.clear();
    scratch.extend_from_slice(x);
    super::rotate::fwht_portable(scratch, rotation);
    let (scale, zero) = quantize_row(scratch, out);
    (scale / (rotation as f32).sqrt(), zero)
}

/// Scale, its inverse and zero point for a row spanning `[lo, hi]` (`lo <= 0 <= hi`); `Err`
/// holds the scale of a row that quantizes to all zeros: 1 for a row of zeros (exact), NaN
/// for a row with an infinity, so the layer's output is NaN as the f32 product's would be.
/// Shared by every tier, so they agree bit for bit.
#[inline(always)]
fn row_params(lo: f32, hi: f32) -> Result<(f32, f32, f32), f32> {
    let range = hi - lo;
    if !(range > 0.0 && range.is_finite()) {
        return Err(if range == 0.0 { 1.0 } else { f32::NAN });
    }
    let inv = 255.0 / range;
    let zero = (-lo * inv).round_ties_even().clamp(0.0, 255.0);
    Ok((range / 255.0, inv, zero))
}

/// One row's quantization (see [`quantize_rows`]); returns its scale and zero point.
///
/// Min and max are compares (`if v < lo`), which skip NaN: a NaN activation quantizes to 0.
/// Activations of a checkpoint with finite weights (int8 refuses others) are finite.
#[inline(always)]
pub(crate) fn quantize_row(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    const LANES: usize = 16;
    let (mut lo, mut hi) = ([0f32; LANES], [0f32; LANES]);
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        lo[l] = if v < lo[l] { v } else { lo[l] };
        hi[l] = if v > hi[l] { v } else { hi[l] };
    }
    let lo = lo.iter().fold(0f32, |m, &v| if v < m { v } else { m });
    let hi = hi.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    match row_params(lo, hi) {
        Err(scale) => {
            out.fill(0);
            (scale, 0)
        }
        Ok((scale, inv, zero)) => {
            for (q, &v) in out.iter_mut().zip(x) {
                // Through i32, which vectorizes; the value is already in 0..=255.
                *q = (v * inv + zero).round_ties_even().clamp(0.0, 255.0) as i32 as u8;
            }
            (scale, zero as i32)
        }
    }
}

/// `out[r * n + c] = (sum_i a[r][i] * w[c][i] - zero[r] * colsum[c]) as f32 * (scale_a[r] *
/// scale_w[c])` for every row of `a` and every column of `w`; `out` holds `a.rows() * w.n()`
/// values, and every one of them is written (so it may start uninitialized: the caller skips
/// zeroing a buffer about to be overwritten).
///
/// # Panics
/// If the shapes disagree (a bug in the caller, never input-dependent).
pub(crate) fn matmul(a: &QuantRows, w: &PackedWeights, out: &mut [MaybeUninit<f32>], tier: Tier) {
    let rows = a.rows();
    assert!(
        a.stride == w.groups() * GROUP
            && a.data.len() == rows * a.stride
            && a.zero.len() == rows
            && out.len() == rows * w.n(),
        "int8 matmul: operands do not fit"
    );
    if rows == 0 {
        return;
    }
    match tier {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the shapes were checked above, and `tier` is one this CPU supports (callers get
        // it from `Tier::detect` or check `Tier::supported`).
        Tier::Avx512Vnni => unsafe { x86::matmul_avx512(a, w, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Tier::AvxVnni => unsafe { x86::matmul_avxvnni(a, w, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Tier::Avx2 => unsafe { x86::matmul_portable_avx2(a, w, out) },
        _ => matmul_portable(a, w, out),
    }
}

/// The portable kernel: one panel (16 columns) of one row at a time, in the packed layout.
#[inline(always)]
fn matmul_portable(a: &QuantRows, w: &PackedWeights, out: &mut [MaybeUninit<f32>]) {
    let (n, groups) = (w.n, w.groups());
    let stride = w.panel_stride();
    for (r, dst) in out.chunks_exact_mut(n).enumerate() {
        let row = &a.data[r * a.stride..(r + 1) * a.stride];
        for p in 0..w.panels() {
            let panel = &w.data[p * stride..(p + 1) * stride];
            let mut acc = [0i32; PANEL];
            for g in 0..groups {
                let x = &row[g * GROUP..(g + 1) * GROUP];
                let block = &panel[g * PANEL * GROUP..(g + 1) * PANEL * GROUP];
                for (lane, ws) in acc.iter_mut().zip(block.chunks_exact(GROUP)) {
                    let mut s = 0i32;
                    for b in 0..GROUP {
                        s += x[b] as i32 * ws[b] as i32;
                    }
                    *lane += s;
                }
            }
            let cols = (n - p * PANEL).min(PANEL);
            for (lane, acc) in acc.iter().enumerate().take(cols) {
                let c = p * PANEL + lane;
                dst[c].write(dequantize(
                    *acc,
                    a.zero[r],
                    w.colsum[c],
                    a.scale[r],
                    w.scale[c],
                ));
            }
        }
    }
}

/// The one formula every tier applies to a finished integer sum.
#[inline(always)]
fn dequantize(acc: i32, zero: i32, colsum: i32, scale_a: f32, scale_w: f32) -> f32 {
    (acc - zero * colsum) as f32 * (scale_a * scale_w)
}

/// The definition, written plainly from unpacked weights (`[n, k]` row-major): what tests hold
/// every tier to, bit for bit.
#[cfg(test)]
pub(crate) fn reference(a: &QuantRows, k: usize, weights: &[i8], scale_w: &[f32]) -> Vec<f32> {
    let n = scale_w.len();
    let mut out = Vec::with_capacity(a.rows() * n);
    for r in 0..a.rows() {
        let row = &a.data[r * a.stride..r * a.stride + k];
        for c in 0..n {
            let col = &weights[c * k..(c + 1) * k];
            let acc: i32 = row
                .iter()
                .zip(col)
                .map(|(&x, &w)| x as i32 * w as i32)
                .sum();
            let colsum: i32 = col.iter().map(|&w| w as i32).sum();
            out.push(dequantize(acc, a.zero[r], colsum, a.scale[r], scale_w[c]));
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{dequantize, PackedWeights, QuantRows, GROUP, PANEL};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use crate::embed::int8::rotate;

    /// [`super::quantize_rotated`] on AVX-512: the rotation reads the row and writes the scratch
    /// in one pass, min and max are vector reductions, and 16 values at a time are rounded,
    /// clamped and narrowed to bytes. Bit for bit the portable result (same operations on the
    /// same values; min and max are exact).
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW; `out.len() == x.len()`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row_avx512(
        x: &[f32],
        rotation: usize,
        scratch: &mut Vec<f32>,
        out: &mut [u8],
    ) -> (f32, i32) {
        let src: &[f32] = if rotation > 1 {
            if scratch.len() != x.len() {
                scratch.resize(x.len(), 0.0);
            }
            if (16..=rotate::MAX_BLOCK).contains(&rotation) {
                rotate::x86::fwht_avx512(x, scratch, rotation);
            } else {
                scratch.copy_from_slice(x);
                rotate::fwht_portable(scratch, rotation);
            }
            scratch
        } else {
            x
        };
        let n = src.len();
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i < n {
            let mask = lane_mask(n - i);
            // Masked-off lanes read as 0, which the range always includes.
            let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
            // min(v, lo) keeps lo when v is NaN, as the portable compare does.
            lo = _mm512_min_ps(v, lo);
            hi = _mm512_max_ps(v, hi);
            i += 16;
        }
        let (lo, hi) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        let (scale, zero) = match super::row_params(lo, hi) {
            Err(scale) => {
                out.fill(0);
                (scale, 0)
            }
            Ok((scale, inv, zero)) => {
                let (inv_v, zero_v) = (_mm512_set1_ps(inv), _mm512_set1_ps(zero));
                let (floor, ceil) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
                let mut i = 0;
                while i < n {
                    let mask = lane_mask(n - i);
                    let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
                    // Multiply, then add: two roundings, as the portable code (no FMA there).
                    let y = _mm512_add_ps(_mm512_mul_ps(v, inv_v), zero_v);
                    let y = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                        y,
                    );
                    // max(y, 0) gives 0 for NaN, as the portable clamp-then-cast does.
                    let y = _mm512_min_ps(_mm512_max_ps(y, floor), ceil);
                    let q = _mm512_cvtps_epi32(y);
                    _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(i) as *mut _, mask, q);
                    i += 16;
                }
                (scale, zero as i32)
            }
        };
        if rotation > 1 {
            (scale / (rotation as f32).sqrt(), zero)
        } else {
            (scale, zero)
        }
    }

    /// The first `min(left, 16)` lanes.
    #[inline(always)]
    fn lane_mask(left: usize) -> __mmask16 {
        if left >= 16 {
            0xFFFF
        } else {
            ((1u32 << left) - 1) as __mmask16
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_row_avx2(
        x: &[f32],
        rotation: usize,
        scratch: &mut Vec<f32>,
        out: &mut [u8],
    ) -> (f32, i32) {
        super::quantize_rotated(x, rotation, scratch, out)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn matmul_portable_avx2(
        a: &QuantRows,
        w: &PackedWeights,
        out: &mut [MaybeUninit<f32>],
    ) {
        super::matmul_portable(a, w, out)
    }

    /// Rows per AVX-512 tile: 6 rows x 4 panels = 24 accumulators of the 32 registers, plus 4
    /// weight vectors and one broadcast.
    const MR_512: usize = 6;
    const NB_512: usize = 4;

    /// Walks the output in tiles of up to `mr` rows by `nb` panels, calling `tile` with the
    /// tile's shape; the tile order keeps one group of panels (depth x 64 bytes) hot in cache
    /// while every row block passes over it.
    #[inline(always)]
    fn for_each_tile(
        rows: usize,
        panels: usize,
        mr: usize,
        nb: usize,
        mut tile: impl FnMut(usize, usize, usize, usize),
    ) {
        let mut p = 0;
        while p < panels {
            let np = (panels - p).min(nb);
            let mut r = 0;
            while r < rows {
                let nr = (rows - r).min(mr);
                tile(r, nr, p, np);
                r += nr;
            }
            p += np;
        }
    }

    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI; the shapes were checked by `matmul`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn matmul_avx512(
        a: &QuantRows,
        w: &PackedWeights,
        out: &mut [MaybeUninit<f32>],
    ) {
        let (n, groups, stride) = (w.n, w.groups(), w.panel_stride());
        for_each_tile(a.rows(), w.panels(), MR_512, NB_512, |r, nr, p, np| {
            macro_rules! run {
                ($($mr:literal),*) => {
                    match (nr, np) {
                        $(
                            ($mr, 4) => tile_avx512::<$mr, 4>(a, w, out, r, p, n, groups, stride),
                            ($mr, 3) => tile_avx512::<$mr, 3>(a, w, out, r, p, n, groups, stride),
                            ($mr, 2) => tile_avx512::<$mr, 2>(a, w, out, r, p, n, groups, stride),
                            ($mr, 1) => tile_avx512::<$mr, 1>(a, w, out, r, p, n, groups, stride),
                        )*
                        _ => unreachable!("tiles are at most {MR_512} x {NB_512}"),
                    }
                };
            }
            // SAFETY: the tile lies inside the operands (for_each_tile stays within rows and
            // panels), and the features are enabled on this function.
            unsafe { run!(1, 2, 3, 4, 5, 6) }
        });
    }

    /// One `MR x (NB * 16)` tile starting at row `r0`, panel `p0`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_avx512<const MR: usize, const NB: usize>(
        a: &QuantRows,
        w: &PackedWeights,
        out: &mut [MaybeUninit<f32>],
        r0: usize,
        p0: usize,
        n: usize,
        groups: usize,
        stride: usize,
    ) {
        let mut acc = [[_mm512_setzero_si512(); NB]; MR];
        let a_ptr = a.data.as_ptr().add(r0 * a.stride);
        let w_ptr = w.data.as_ptr().add(p0 * stride);
        for g in 0..groups {
            let mut wv = [_mm512_setzero_si512(); NB];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(w_ptr.add(j * stride + g * PANEL * GROUP) as *const _);
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let x = (a_ptr.add(i * a.stride + g * GROUP) as *const i32).read_unaligned();
                let xv = _mm512_set1_epi32(x);
                for (s, v) in row.iter_mut().zip(&wv) {
                    *s = _mm512_dpbusd_epi32(*s, xv, *v);
                }
            }
        }
        #[allow(clippy::needless_range_loop)] // j indexes the panels and each row's sums
        for j in 0..NB {
            let c0 = (p0 + j) * PANEL;
            let colsum = _mm512_loadu_si512(w.colsum.as_ptr().add(c0) as *const _);
            let scale_w = _mm512_loadu_ps(w.scale.as_ptr().add(c0));
            let cols = (n - c0).min(PANEL);
            for (i, row) in acc.iter().enumerate() {
                let r = r0 + i;
                let zero = _mm512_set1_epi32(a.zero[r]);
                let d = _mm512_sub_epi32(row[j], _mm512_mullo_epi32(zero, colsum));
                let s = _mm512_mul_ps(_mm512_set1_ps(a.scale[r]), scale_w);
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(d), s);
                let dst = out.as_mut_ptr().add(r * n + c0).cast::<f32>();
                if cols == PANEL {
                    _mm512_storeu_ps(dst, v);
                } else {
                    _mm512_mask_storeu_ps(dst, ((1u32 << cols) - 1) as u16, v);
                }
            }
        }
    }

    /// Rows per AVX-VNNI tile: 6 rows x one panel (two 256-bit halves) = 12 of the 16
    /// registers, plus 2 weight halves and one broadcast.
    const MR_256: usize = 6;

    /// # Safety
    /// The CPU has AVX2 and AVX-VNNI; the shapes were checked by `matmul`.
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn matmul_avxvnni(
        a: &QuantRows,
        w: &PackedWeights,
        out: &mut [MaybeUninit<f32>],
    ) {
        let (n, groups, stride) = (w.n, w.groups(), w.panel_stride());
        for_each_tile(a.rows(), w.panels(), MR_256, 1, |r, nr, p, _| {
            macro_rules! run {
                ($($mr:literal),*) => {
                    match nr {
                        $($mr => tile_avxvnni::<$mr>(a, w, out, r, p, n, groups, stride),)*
                        _ => unreachable!("tiles are at most {MR_256} rows"),
                    }
                };
            }
            // SAFETY: as in matmul_avx512.
            unsafe { run!(1, 2, 3, 4, 5, 6) }
        });
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn tile_avxvnni<const MR: usize>(
        a: &QuantRows,
        w: &PackedWeights,
        out: &mut [MaybeUninit<f32>],
        r0: usize,
        p0: usize,
        n: usize,
        groups: usize,
        stride: usize,
    ) {
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        let a_ptr = a.data.as_ptr().add(r0 * a.stride);
        let w_ptr = w.data.as_ptr().add(p0 * stride);
        for g in 0..groups {
            let base = w_ptr.add(g * PANEL * GROUP);
            let lo = _mm256_loadu_si256(base as *const _);
            let hi = _mm256_loadu_si256(base.add(32) as *const _);
            for (i, row) in acc.iter_mut().enumerate() {
                let x = (a_ptr.add(i * a.stride + g * GROUP) as *const i32).read_unaligned();
                let xv = _mm256_set1_epi32(x);
                row[0] = _mm256_dpbusd_avx_epi32(row[0], xv, lo);
                row[1] = _mm256_dpbusd_avx_epi32(row[1], xv, hi);
            }
        }
        let c0 = p0 * PANEL;
        let cols = (n - c0).min(PANEL);
        for (i, row) in acc.iter().enumerate() {
            let r = r0 + i;
            let mut sums = [0i32; PANEL];
            _mm256_storeu_si256(sums.as_mut_ptr() as *mut _, row[0]);
            _mm256_storeu_si256(sums.as_mut_ptr().add(8) as *mut _, row[1]);
            // The epilogue is a sliver of the work: the shared scalar formula keeps it exact.
            for (lane, &s) in sums.iter().enumerate().take(cols) {
                let c = c0 + lane;
                out.get_unchecked_mut(r * n + c).write(dequantize(
                    s,
                    a.zero[r],
                    w.colsum[c],
                    a.scale[r],
                    w.scale[c],
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream of bytes for test data.
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    fn case(m: usize, n: usize, k: usize, seed: u64) -> (QuantRows, Vec<i8>, Vec<f32>) {
        let stride = k.div_ceil(GROUP) * GROUP;
        let raw = bytes(seed, m * k);
        let mut a = QuantRows {
            data: vec![0; m * stride],
            stride,
            scale: (0..m).map(|r| 0.01 + r as f32 * 0.003).collect(),
            zero: bytes(seed + 1, m).iter().map(|&z| z as i32).collect(),
            ..QuantRows::default()
        };
        for r in 0..m {
            a.data[r * stride..r * stride + k].copy_from_slice(&raw[r * k..(r + 1) * k]);
        }
        // Weights span the full s8 range used (-127..=127), extremes included.
        let w: Vec<i8> = bytes(seed + 2, n * k)
            .iter()
            .map(|&b| (b as i32 % 255 - 127) as i8)
            .collect();
        let scale: Vec<f32> = (0..n).map(|c| 0.002 + c as f32 * 1e-4).collect();
        (a, w, scale)
    }

    /// [`matmul`] into an initialized buffer (filled with NaN first by the callers, so an
    /// element a kernel skipped would show).
    fn matmul_f32(a: &QuantRows, w: &PackedWeights, out: &mut [f32], tier: Tier) {
        let mut buf: Vec<MaybeUninit<f32>> = out.iter().map(|&v| MaybeUninit::new(v)).collect();
        matmul(a, w, &mut buf, tier);
        for (o, b) in out.iter_mut().zip(&buf) {
            // SAFETY: every element started initialized and stays so.
            *o = unsafe { b.assume_init() };
        }
    }

    fn tiers() -> Vec<Tier> {
        [Tier::Portable, Tier::Avx2, Tier::AvxVnni, Tier::Avx512Vnni]
            .into_iter()
            .filter(|t| t.supported())
            .collect()
    }

    #[test]
    fn every_tier_equals_the_reference_bit_for_bit() {
        eprintln!("tiers on this CPU: {:?}", tiers());
        // Shapes around every edge: rows around the tile heights, columns around the panel
        // width and the 4-panel tile, depth not a multiple of 4.
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 17, 3),
            (6, 16, 4),
            (7, 64, 8),
            (13, 65, 33),
            (12, 80, 384),
            (19, 130, 97),
            (3, 384, 1536),
        ] {
            let (a, weights, scale) = case(m, n, k, (m * 1000 + n * 10 + k) as u64);
            let want = reference(&a, k, &weights, &scale);
            let packed = PackedWeights::pack(&weights, &scale, n, k).unwrap();
            for tier in tiers() {
                let mut got = vec![f32::NAN; m * n];
                matmul_f32(&a, &packed, &mut got, tier);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits()),
                    "{tier:?} differs from the reference at m {m} n {n} k {k}"
                );
            }
        }
    }

    #[test]
    fn extreme_values_do_not_overflow_the_sums() {
        // 255 x -127 over the deepest layer memrl meets (and then some): exact in i32.
        let (m, n, k) = (7, 33, 4096);
        let a = QuantRows {
            data: vec![255; m * k],
            stride: k,
            scale: vec![1.0; m],
            zero: vec![255; m],
            ..QuantRows::default()
        };
        let weights = vec![-127i8; n * k];
        let scale = vec![1.0; n];
        let packed = PackedWeights::pack(&weights, &scale, n, k).unwrap();
        for tier in tiers() {
            let mut got = vec![0f32; m * n];
            matmul_f32(&a, &packed, &mut got, tier);
            // (255 - 255) * anything = 0: the zero-point correction cancels exactly.
            assert!(got.iter().all(|&v| v == 0.0), "{tier:?}");
        }
        let a = QuantRows {
            zero: vec![0; m],
            ..a
        };
        for tier in tiers() {
            let mut got = vec![0f32; m * n];
            matmul_f32(&a, &packed, &mut got, tier);
            assert!(
                got.iter().all(|&v| v == (255 * -127 * k as i32) as f32),
                "{tier:?}"
            );
        }
    }

    #[test]
    fn quantized_rows_reconstruct_within_half_a_step() {
        let x: Vec<f32> = (0..390)
            .map(|i| ((i as f32) * 0.37).sin() * 3.0 + 0.5)
            .collect();
        let (k, stride) = (130, 132);
        for tier in tiers() {
            let mut q = QuantRows::default();
            quantize_rows(&x, k, stride, 1, &mut q, tier);
            assert_eq!(q.rows(), 3);
            for r in 0..3 {
                let (s, z) = (q.scale[r], q.zero[r]);
                assert!((0..=255).contains(&z));
                for i in 0..k {
                    let back = (q.data[r * stride + i] as i32 - z) as f32 * s;
                    let err = (back - x[r * k + i]).abs();
                    assert!(
                        err <= 0.5 * s * 1.0001,
                        "{tier:?} row {r} col {i}: error {err}"
                    );
                }
                assert_eq!(&q.data[r * stride + k..(r + 1) * stride], &[0, 0]);
            }
            // Every tier quantizes identically.
            let mut base = QuantRows::default();
            quantize_rows(&x, k, stride, 1, &mut base, Tier::Portable);
            assert_eq!(q.data, base.data, "{tier:?}");
            assert_eq!(q.zero, base.zero, "{tier:?}");
        }
        // All zeros, and all of one sign: zero stays exact.
        let mut q = QuantRows::default();
        quantize_rows(&[0.0; 8], 8, 8, 1, &mut q, Tier::Portable);
        assert_eq!((q.data.clone(), q.zero[0]), (vec![0; 8], 0));
        quantize_rows(&[0.0, 1.0, 2.0, 4.0], 4, 4, 1, &mut q, Tier::Portable);
        assert_eq!(q.zero[0], 0);
        assert_eq!(q.data, vec![0, 64, 128, 255]);
        quantize_rows(&[-4.0, 0.0], 2, 4, 1, &mut q, Tier::Portable);
        assert_eq!((q.zero[0], q.data[1]), (255, 255));
    }

    #[test]
    fn rotated_rows_quantize_identically_on_every_tier() {
        let k = 384;
        let x: Vec<f32> = (0..5 * k)
            .map(|i| ((i as f32) * 0.37).sin() + if i % 97 == 3 { 25.0 } else { 0.0 })
            .collect();
        let mut base = QuantRows::default();
        quantize_rows(&x, k, k, 128, &mut base, Tier::Portable);
        for tier in tiers() {
            let mut q = QuantRows::default();
            quantize_rows(&x, k, k, 128, &mut q, tier);
            assert_eq!(q.data, base.data, "{tier:?}");
            assert_eq!(q.zero, base.zero, "{tier:?}");
            let same = q
                .scale
                .iter()
                .zip(&base.scale)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{tier:?}");
        }
        // The rotated rows reconstruct the rotated values: (q - z) * s * sqrt(128) = H' x / ...
        let mut rotated = x[..k].to_vec();
        super::super::rotate::rotate_normalized(&mut rotated, 128);
        for (i, r) in rotated.iter().enumerate() {
            let back = (base.data[i] as i32 - base.zero[0]) as f32 * base.scale[0];
            assert!(
                (back - r).abs() <= 0.5 * base.scale[0] * 1.01,
                "channel {i}"
            );
        }
    }

    #[test]
    fn odd_lengths_and_values_quantize_identically_on_every_tier() {
        for k in [1, 15, 16, 17, 37, 384] {
            let mut rows: Vec<Vec<f32>> = vec![
                (0..k).map(|i| ((i as f32) * 0.37).sin()).collect(),
                vec![0.0; k],
                (0..k).map(|i| i as f32).collect(),
                (0..k).map(|i| -(i as f32) - 0.5).collect(),
            ];
            let mut nan = rows[0].clone();
            nan[k / 2] = f32::NAN;
            let mut inf = rows[0].clone();
            inf[k - 1] = f32::INFINITY;
            rows.extend([nan, inf]);
            let x: Vec<f32> = rows.concat();
            let mut base = QuantRows::default();
            quantize_rows(&x, k, k.div_ceil(4) * 4, 1, &mut base, Tier::Portable);
            assert_eq!(base.scale[1], 1.0);
            assert!(base.scale[5].is_nan());
            for tier in tiers() {
                let mut q = QuantRows::default();
                quantize_rows(&x, k, k.div_ceil(4) * 4, 1, &mut q, tier);
                assert_eq!(
                    (&q.data, &q.zero),
                    (&base.data, &base.zero),
                    "{tier:?} k {k}"
                );
                let same = q
                    .scale
                    .iter()
                    .zip(&base.scale)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{tier:?} k {k}");
            }
        }
    }

    #[test]
    fn packing_rejects_inconsistent_shapes() {
        assert!(PackedWeights::pack(&[1, 2, 3], &[1.0], 1, 2).is_none());
        assert!(PackedWeights::pack(&[1, 2], &[1.0, 1.0], 1, 2).is_none());
        assert!(PackedWeights::pack(&[], &[], 0, 0).is_none());
        let deep = MAX_DEPTH + 1;
        assert!(PackedWeights::pack(&vec![0; deep], &[1.0], 1, deep).is_none());
        assert!(PackedWeights::pack(&vec![0; MAX_DEPTH], &[1.0], 1, MAX_DEPTH).is_some());
    }
}
