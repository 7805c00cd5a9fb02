//! An int8 sketch of the keys, so that a scan of few queries on the CPU reads a quarter of the
//! bytes of f32 keys (half of f16 keys) and still returns exactly what the full scan returns.
//!
//! Why: a scan of one to a few queries is bound by reading the keys (1M f32 keys of d = 384 are
//! 1.5 GB per query), not by arithmetic. One byte per dimension is enough to tell which keys can
//! still be among the best k; only those are read at full precision.
//!
//! Why it is exact, not approximate:
//! - A key `x` is stored as codes `c` (i8) and a scale `s`; `x' = s c`, and the sketch keeps an
//!   upper bound on `|x - x'|` and on `|x|`. The query is quantized the same way at search time.
//! - The sketch's score is an exact integer dot product times the two scales (in f64). Its
//!   distance from what the full scan's kernel computes (an f32 sum of `d` products, in any
//!   order) is at most `|q| |x - x'| + |q - q'| |x'| + gamma(d) |q| |x|` (Cauchy-Schwarz, and the
//!   textbook bound on a float sum): every key gets an interval `[lo, hi]` holding its score.
//! - With `tau` the k-th largest `lo` over all keys, at least k keys score `>= tau`; a key with
//!   `hi < tau` scores strictly less than each of them and cannot be among the best k, equal
//!   scores included. The survivors are scored again by the full scan's own kernel over the same
//!   query block, so their similarities are its bits, and ranked by its order (similarity
//!   descending, row ascending).
//! - When too many keys survive (near-duplicate keys, all at one score), the full scan runs
//!   instead: slower than the sketch, never wrong.

use half::f16;
use rayon::prelude::*;

use super::scan::TopKeys;
use super::simd::{self, Keys};
use super::topk::better;

// Integer dot products are summed in i32: at the largest dimension a bank allows they stay far
// from overflow (|code| <= 127 on both sides).
const _: () = assert!(127 * 127 * crate::config::MAX_DIM < i32::MAX as usize);

/// Keys per parallel work item of the sketch pass (6 MiB of codes at d = 384).
const CHUNK_ROWS: usize = 16_384;
/// When more than `1 / FALLBACK_SHARE` of the keys survive the sketch, rescoring them would cost
/// about as much as the full scan: run that instead.
const FALLBACK_SHARE: usize = 8;

/// One row quantized: the codes are written in place.
struct Quantized {
    scale: f32,
    /// Upper bound on `|x - scale * codes|`.
    err: f32,
    /// Upper bound on `|x|`.
    norm: f32,
}

/// The smallest f32 at or above a non-negative f64.
fn round_up(v: f64) -> f32 {
    let f = v as f32;
    if f64::from(f) < v {
        f32::from_bits(f.to_bits() + 1)
    } else {
        f
    }
}

/// Quantizes `row` to codes in [-127, 127] with one scale. The bounds are computed from the
/// codes actually written, so they hold whatever the rounding did (a zero or tiny row included).
fn quantize<T: From<i8> + Copy>(row: &[f32], codes: &mut [T]) -> Quantized {
    let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = max / 127.0;
    let (mut err2, mut norm2) = (0f64, 0f64);
    for (c, &x) in codes.iter_mut().zip(row) {
        // Round half away from zero without libm's `round` (a call per value on baseline
        // x86-64); `as` saturates, and NaN (0 / 0 for an all-zero row) becomes 0. Any rounding
        // would do: the bounds below are computed from the codes written.
        let scaled = x / scale;
        let code = (scaled + 0.5f32.copysign(scaled)).clamp(-127.0, 127.0) as i8;
        *c = T::from(code);
        let x = f64::from(x);
        err2 += (x - f64::from(scale) * f64::from(code)).powi(2);
        norm2 += x * x;
    }
    // A sum of d squares in f64 is off by at most d * 2^-53 relative: 1e-9 covers any d here.
    let up = |v: f64| round_up(v.sqrt() * (1.0 + 1e-9));
    Quantized {
        scale,
        err: up(err2),
        norm: up(norm2),
    }
}

/// The keys of an index as int8 codes, in row order (see the module docs).
#[derive(Debug)]
pub(crate) struct Int8Sketch {
    dim: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
    errs: Vec<f32>,
    norms: Vec<f32>,
}

/// Sketch rows made ahead of an append (`Int8Sketch::prepare`), so that the append itself cannot
/// fail half-way.
pub(crate) struct SketchRows {
    codes: Vec<i8>,
    scales: Vec<f32>,
    errs: Vec<f32>,
    norms: Vec<f32>,
}

impl Int8Sketch {
    pub(crate) fn new(dim: usize) -> Self {
        Self {
            dim,
            codes: Vec::new(),
            scales: Vec::new(),
            errs: Vec::new(),
            norms: Vec::new(),
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.scales.len()
    }

    /// Quantizes `rows` (`n x dim` f32, the keys exactly as the index stores them).
    pub(crate) fn prepare(&self, rows: &[f32]) -> SketchRows {
        let d = self.dim.max(1);
        let n = rows.len() / d;
        let mut codes = vec![0i8; n * d];
        let quantized: Vec<Quantized> = codes
            .par_chunks_mut(d)
            .zip(rows.par_chunks(d))
            .map(|(c, row)| quantize(row, c))
            .collect();
        SketchRows {
            codes,
            scales: quantized.iter().map(|q| q.scale).collect(),
            errs: quantized.iter().map(|q| q.err).collect(),
            norms: quantized.iter().map(|q| q.norm).collect(),
        }
    }

    /// Appends prepared rows.
    pub(crate) fn append(&mut self, rows: SketchRows) {
        self.codes.extend_from_slice(&rows.codes);
        self.scales.extend_from_slice(&rows.scales);
        self.errs.extend_from_slice(&rows.errs);
        self.norms.extend_from_slice(&rows.norms);
    }

    /// Removes row `row`; later rows shift up, as in the key matrix.
    pub(crate) fn remove(&mut self, row: usize) {
        if row >= self.len() {
            return;
        }
        self.codes.drain(row * self.dim..(row + 1) * self.dim);
        self.scales.remove(row);
        self.errs.remove(row);
        self.norms.remove(row);
    }
}

/// The integer dot products of `b` quantized queries (`b x d`, values in [-127, 127]) with
/// every row of `codes`: `out[i * rows + r]`. Integer sums are exact in any order, so every
/// kernel gives the same numbers.
fn int_dots(queries: &[i8], b: usize, codes: &[i8], d: usize, out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            // SAFETY: the CPU has AVX-512F, BW and VNNI (checked just above; BW implies F).
            unsafe { x86::int_dots_vnni(queries, b, codes, d, out) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has AVX-512F and BW (checked just above; BW implies F).
            unsafe { x86::int_dots_avx512(queries, b, codes, d, out) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { x86::int_dots_avx2(queries, b, codes, d, out) };
            return;
        }
    }
    int_dots_portable(queries, b, codes, d, out);
}

fn int_dots_portable(queries: &[i8], b: usize, codes: &[i8], d: usize, out: &mut [i32]) {
    let rows = codes.len() / d;
    for (r, key) in codes.chunks_exact(d).enumerate() {
        for (i, query) in queries.chunks_exact(d).take(b).enumerate() {
            out[i * rows + r] = int_dot(query, key);
        }
    }
}

fn int_dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::int_dot;

    /// How many rows ahead of the one being scored the codes are prefetched: the hardware
    /// prefetcher alone leaves one core well short of the memory's speed.
    const PREFETCH_ROWS: usize = 16;

    /// Asks for the cache lines of `codes[from..from + len]` (clipped to the slice).
    #[inline(always)]
    unsafe fn prefetch(codes: &[i8], from: usize, len: usize) {
        let end = (from + len).min(codes.len());
        let mut at = from;
        while at < end {
            _mm_prefetch::<_MM_HINT_T0>(codes.as_ptr().add(at));
            at += 64;
        }
    }

    /// 32 dimensions per step: widen the key's bytes to i16, multiply with the query's (widened
    /// once per call), add pairs into i32 lanes. Products are at most 127^2, so nothing
    /// saturates. Two keys per pass share the query's registers.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn int_dots_avx512(
        queries: &[i8],
        b: usize,
        codes: &[i8],
        d: usize,
        out: &mut [i32],
    ) {
        let rows = codes.len() / d;
        let body = d - d % 32;
        let wide: Vec<i16> = queries.iter().map(|&q| i16::from(q)).collect();
        let k = codes.as_ptr();
        let mut r = 0;
        while r + 2 <= rows {
            let (k0, k1) = (k.add(r * d), k.add((r + 1) * d));
            prefetch(codes, (r + PREFETCH_ROWS) * d, 2 * d);
            // Rows outside, queries inside: the two key rows are read from memory once.
            for i in 0..b {
                let q = wide.as_ptr().add(i * d);
                let query = &queries[i * d..(i + 1) * d];
                let (mut a0, mut a1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                let mut j = 0;
                while j < body {
                    let qv = _mm512_loadu_si512(q.add(j) as *const _);
                    let x0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(k0.add(j) as *const _));
                    let x1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(k1.add(j) as *const _));
                    a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(qv, x0));
                    a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(qv, x1));
                    j += 32;
                }
                let tail0 = int_dot(&query[body..], &codes[r * d + body..(r + 1) * d]);
                let tail1 = int_dot(&query[body..], &codes[(r + 1) * d + body..(r + 2) * d]);
                out[i * rows + r] = _mm512_reduce_add_epi32(a0) + tail0;
                out[i * rows + r + 1] = _mm512_reduce_add_epi32(a1) + tail1;
            }
            r += 2;
        }
        if r < rows {
            for i in 0..b {
                out[i * rows + r] =
                    int_dot(&queries[i * d..(i + 1) * d], &codes[r * d..(r + 1) * d]);
            }
        }
    }

    /// 64 dimensions per step with AVX-512 VNNI, whose byte product takes one unsigned side: the
    /// query is shifted to `q + 128` (1..=255), and `128 * sum(key)` (the same instruction
    /// against ones, once per key for all queries) is taken off again. Exact in i32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn int_dots_vnni(
        queries: &[i8],
        b: usize,
        codes: &[i8],
        d: usize,
        out: &mut [i32],
    ) {
        let rows = codes.len() / d;
        let body = d - d % 64;
        let shifted: Vec<u8> = queries
            .iter()
            .map(|&q| (i16::from(q) + 128) as u8)
            .collect();
        let ones = _mm512_set1_epi8(1);
        let k = codes.as_ptr();
        let mut r = 0;
        while r + 2 <= rows {
            let (k0, k1) = (k.add(r * d), k.add((r + 1) * d));
            prefetch(codes, (r + PREFETCH_ROWS) * d, 2 * d);
            let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            let mut j = 0;
            while j < body {
                let x0 = _mm512_loadu_si512(k0.add(j) as *const _);
                let x1 = _mm512_loadu_si512(k1.add(j) as *const _);
                s0 = _mm512_dpbusd_epi32(s0, ones, x0);
                s1 = _mm512_dpbusd_epi32(s1, ones, x1);
                j += 64;
            }
            let (sum0, sum1) = (_mm512_reduce_add_epi32(s0), _mm512_reduce_add_epi32(s1));
            for i in 0..b {
                let q = shifted.as_ptr().add(i * d);
                let query = &queries[i * d..(i + 1) * d];
                let (mut a0, mut a1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                let mut j = 0;
                while j < body {
                    let qv = _mm512_loadu_si512(q.add(j) as *const _);
                    a0 = _mm512_dpbusd_epi32(a0, qv, _mm512_loadu_si512(k0.add(j) as *const _));
                    a1 = _mm512_dpbusd_epi32(a1, qv, _mm512_loadu_si512(k1.add(j) as *const _));
                    j += 64;
                }
                let tail0 = int_dot(&query[body..], &codes[r * d + body..(r + 1) * d]);
                let tail1 = int_dot(&query[body..], &codes[(r + 1) * d + body..(r + 2) * d]);
                out[i * rows + r] = _mm512_reduce_add_epi32(a0) - 128 * sum0 + tail0;
                out[i * rows + r + 1] = _mm512_reduce_add_epi32(a1) - 128 * sum1 + tail1;
            }
            r += 2;
        }
        if r < rows {
            for i in 0..b {
                out[i * rows + r] =
                    int_dot(&queries[i * d..(i + 1) * d], &codes[r * d..(r + 1) * d]);
            }
        }
    }

    /// The AVX2 form of the same: 16 dimensions per step.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn int_dots_avx2(
        queries: &[i8],
        b: usize,
        codes: &[i8],
        d: usize,
        out: &mut [i32],
    ) {
        let rows = codes.len() / d;
        let body = d - d % 16;
        let wide: Vec<i16> = queries.iter().map(|&q| i16::from(q)).collect();
        let k = codes.as_ptr();
        for r in 0..rows {
            let kr = k.add(r * d);
            prefetch(codes, (r + PREFETCH_ROWS) * d, d);
            for i in 0..b {
                let q = wide.as_ptr().add(i * d);
                let mut acc = _mm256_setzero_si256();
                let mut j = 0;
                while j < body {
                    let qv = _mm256_loadu_si256(q.add(j) as *const _);
                    let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(kr.add(j) as *const _));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(qv, x));
                    j += 16;
                }
                let mut lanes = [0i32; 8];
                _mm256_storeu_si256(lanes.as_mut_ptr() as *mut _, acc);
                out[i * rows + r] = lanes.iter().sum::<i32>()
                    + int_dot(
                        &queries[i * d + body..(i + 1) * d],
                        &codes[r * d + body..(r + 1) * d],
                    );
            }
        }
    }
}

/// The k largest of a stream of numbers, kept with one compare per number once k are in.
struct KLargest {
    k: usize,
    // Invariant: every number dropped is at most `floor`, and `values` holds every number seen
    // above it (at most 2k between compactions).
    values: Vec<f64>,
    floor: f64,
}

impl KLargest {
    fn new(k: usize) -> Self {
        Self {
            k,
            values: Vec::with_capacity(2 * k),
            floor: f64::NEG_INFINITY,
        }
    }

    #[inline]
    fn offer(&mut self, v: f64) {
        if v > self.floor {
            self.values.push(v);
            if self.values.len() == 2 * self.k {
                self.compact();
            }
        }
    }

    fn compact(&mut self) {
        if self.values.len() > self.k {
            let k = self.k;
            self.values
                .select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            self.values.truncate(k);
        }
        if self.values.len() == self.k {
            self.floor = self.values.iter().copied().fold(f64::INFINITY, f64::min);
        }
    }

    /// The k-th largest number seen (minus infinity when fewer than k were).
    fn kth(&mut self) -> f64 {
        self.compact();
        if self.values.len() < self.k {
            f64::NEG_INFINITY
        } else {
            self.floor
        }
    }

    fn into_values(mut self) -> Vec<f64> {
        self.compact();
        self.values
    }
}

/// The largest of a block of bounds (never NaN), written so that it compiles to vector maxima.
#[inline]
fn block_max(block: &[f64]) -> f64 {
    block
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// A query as the sketch pass sees it.
struct SketchQuery {
    scale: f64,
    err: f64,
    norm: f64,
}

/// Per chunk: the k largest lower bounds of each query, and each query's survivors of the
/// chunk's own threshold as `(row, upper bound)`.
struct ChunkPass {
    best_lo: Vec<Vec<f64>>,
    survivors: Vec<Vec<(u32, f64)>>,
}

/// The best `k` keys of each of the `b` queries (unit rows of `queries`), exactly as the fused
/// scan over `keys` returns them, reading the keys through `sketch` first. `None` when too many
/// keys survive the sketch (the caller runs the full scan).
pub(crate) fn top_keys(
    queries: &[f32],
    b: usize,
    keys: Keys<'_>,
    sketch: &Int8Sketch,
    k: usize,
) -> Option<TopKeys> {
    let d = sketch.dim;
    let n = sketch.len();
    if b == 0 || d == 0 || k == 0 || n <= k || queries.len() != b * d {
        return None;
    }
    let mut codes = vec![0i8; b * d];
    let qs: Vec<SketchQuery> = codes
        .chunks_mut(d)
        .zip(queries.chunks(d))
        .map(|(c, q)| {
            let quantized = quantize(q, c);
            SketchQuery {
                scale: f64::from(quantized.scale),
                err: f64::from(quantized.err),
                norm: f64::from(quantized.norm),
            }
        })
        .collect();
    // The f32 kernel's rounding: a sum of d products in any order (with or without FMA) is
    // within gamma(d + 2) |q| |x| of the real dot product.
    let unit = f64::from(f32::EPSILON) / 2.0;
    let terms = (d + 2) as f64 * unit;
    let gamma = terms / (1.0 - terms);
    // Per query, the interval of a key is `approx +- (wa * err + wb * norm)` with
    //   approx = q.scale * scale * dot,
    //   width  = (|q| err + |q - q'| (norm + err) + gamma |q| norm) (1 + 1e-9)
    //            + 1e-12 (|q| + |q - q'|) (norm + err)   (the f64 arithmetic itself),
    // regrouped by the key's two numbers.
    let widths: Vec<(f64, f64)> = qs
        .iter()
        .map(|q| {
            let tiny = 1e-12 * (q.norm + q.err);
            (
                (q.norm + q.err) * (1.0 + 1e-9) + tiny,
                (q.err + gamma * q.norm) * (1.0 + 1e-9) + tiny,
            )
        })
        .collect();

    let chunks = n.div_ceil(CHUNK_ROWS);
    let passes: Vec<ChunkPass> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let first = c * CHUNK_ROWS;
            let rows = CHUNK_ROWS.min(n - first);
            let mut dots = vec![0i32; b * rows];
            int_dots(
                &codes,
                b,
                &sketch.codes[first * d..(first + rows) * d],
                d,
                &mut dots,
            );
            let mut pass = ChunkPass {
                best_lo: Vec::with_capacity(b),
                survivors: Vec::with_capacity(b),
            };
            let span = first..first + rows;
            let (scales, errs, norms) = (
                &sketch.scales[span.clone()],
                &sketch.errs[span.clone()],
                &sketch.norms[span],
            );
            let (mut lo, mut hi) = (vec![0f64; rows], vec![0f64; rows]);
            for i in 0..b {
                let (scale, (wa, wb)) = (qs[i].scale, widths[i]);
                let row_dots = &dots[i * rows..(i + 1) * rows];
                let keys = scales.iter().zip(errs).zip(norms).zip(row_dots);
                for ((l, h), (((&s, &e), &nm), &dot)) in lo.iter_mut().zip(hi.iter_mut()).zip(keys)
                {
                    let approx = scale * f64::from(s) * f64::from(dot);
                    let width = wa * f64::from(e) + wb * f64::from(nm);
                    // Unit keys never get here; a NaN width (0 x inf) must widen, not prune.
                    let width = if width.is_nan() { f64::INFINITY } else { width };
                    *l = approx - width;
                    *h = approx + width;
                }
                // Blocks whose largest value cannot enter are skipped with one vector compare.
                let mut lows = KLargest::new(k);
                for block in lo.chunks(16) {
                    if block_max(block) > lows.floor {
                        for &l in block {
                            lows.offer(l);
                        }
                    }
                }
                let threshold = lows.kth();
                pass.best_lo.push(lows.into_values());
                let mut kept = Vec::new();
                for (at, block) in hi.chunks(16).enumerate() {
                    if block_max(block) >= threshold {
                        for (r, &h) in block.iter().enumerate() {
                            if h >= threshold {
                                kept.push(((first + at * 16 + r) as u32, h));
                            }
                        }
                    }
                }
                pass.survivors.push(kept);
            }
            pass
        })
        .collect();

    // Each query's global threshold and survivors; then their union, in row order.
    let mut survivors: Vec<Vec<u32>> = Vec::with_capacity(b);
    for i in 0..b {
        let mut lows: Vec<f64> = passes.iter().flat_map(|p| p.best_lo[i].clone()).collect();
        let (_, kth, _) = lows.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let tau = *kth;
        survivors.push(
            passes
                .iter()
                .flat_map(|p| &p.survivors[i])
                .filter(|(_, h)| *h >= tau)
                .map(|&(r, _)| r)
                .collect(),
        );
    }
    let mut union: Vec<u32> = survivors.iter().flatten().copied().collect();
    union.sort_unstable();
    union.dedup();
    if union.len() > n / FALLBACK_SHARE {
        return None;
    }

    // Rescore the survivors with the full scan's kernel: the same query block, so the same bits.
    let m = union.len();
    let mut scores = vec![0f32; b * m];
    match keys {
        Keys::F32(all) => {
            let mut gathered = Vec::with_capacity(m * d);
            for &r in &union {
                gathered.extend_from_slice(&all[r as usize * d..(r as usize + 1) * d]);
            }
            simd::scores(queries, b, Keys::F32(&gathered), d, &mut scores);
        }
        Keys::F16(all) => {
            let mut gathered: Vec<f16> = Vec::with_capacity(m * d);
            for &r in &union {
                gathered.extend_from_slice(&all[r as usize * d..(r as usize + 1) * d]);
            }
            simd::scores(queries, b, Keys::F16(&gathered), d, &mut scores);
        }
    }
    let mut out = TopKeys {
        sims: Vec::with_capacity(b),
        rows: Vec::with_capacity(b),
    };
    for (i, rows) in survivors.iter().enumerate() {
        let mut ranked: Vec<(f32, u32)> = rows
            .iter()
            .map(|&r| {
                // `union` is sorted and holds every survivor.
                let at = union.partition_point(|&u| u < r);
                (scores[i * m + at], r)
            })
            .collect();
        ranked.sort_unstable_by(better);
        ranked.truncate(k);
        out.sims.push(ranked.iter().map(|p| p.0).collect());
        out.rows.push(ranked.iter().map(|p| p.1).collect());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use proptest::prelude::*;

    use super::*;
    use crate::rng::SplitMix64;

    /// Keys of the kinds that stress the bounds: random, near-copies of the query (scores a
    /// rounding apart), exact duplicates (ties broken by row), zero rows, and rows with one
    /// large component (coarse codes for the rest).
    fn keys(n: usize, d: usize, query: &[f32], seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let mut out = Vec::with_capacity(n * d);
        for r in 0..n {
            let row: Vec<f32> = match rng.below(40) {
                0 => query.iter().map(|&x| x + 1e-6 * rng.gaussian()).collect(),
                1 if r > 0 => out[(r - 1) * d..r * d].to_vec(),
                2 => vec![0.0; d],
                3 => {
                    let mut v = rng.unit_vector(d);
                    v[0] = 30.0;
                    v
                }
                _ => rng.unit_vector(d),
            };
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            out.extend(row.iter().map(|x| if norm > 0.0 { x / norm } else { 0.0 }));
        }
        out
    }

    /// The plain scan's lists (the fused loop: up to 8 queries on the CPU).
    fn plain(queries: &[f32], b: usize, keys: &Tensor, k: usize) -> TopKeys {
        let d = queries.len() / b;
        let q = Tensor::from_slice(queries, (b, d), &Device::Cpu).unwrap();
        super::super::scan::top_keys(&q, keys, k).unwrap()
    }

    /// Compares the sketched scan with the plain one; false when the sketch fell back.
    fn check(n: usize, d: usize, b: usize, k: usize, f16_keys: bool, seed: u64) -> bool {
        let mut rng = SplitMix64::new(seed ^ 0xABCD);
        let queries: Vec<f32> = (0..b).flat_map(|_| rng.unit_vector(d)).collect();
        let rows = keys(n, d, &queries[..d], seed);
        let dtype = if f16_keys { DType::F16 } else { DType::F32 };
        let tensor = Tensor::from_vec(rows, (n, d), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let stored: Vec<f32> = tensor
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut sketch = Int8Sketch::new(d);
        sketch.append(sketch.prepare(&stored));
        let want = plain(&queries, b, &tensor, k);
        let (storage, _) = tensor.storage_and_layout();
        let got = match &*storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) => {
                top_keys(&queries, b, Keys::F32(data), &sketch, k)
            }
            candle_core::Storage::Cpu(candle_core::CpuStorage::F16(data)) => {
                top_keys(&queries, b, Keys::F16(data), &sketch, k)
            }
            _ => unreachable!("CPU f32 or f16 keys"),
        };
        // `None` (too many survivors) sends the caller to the plain scan: also exact.
        if let Some(got) = got {
            assert_eq!(got.rows, want.rows, "rows, n {n} d {d} b {b} k {k}");
            let bits = |t: &TopKeys| -> Vec<Vec<u32>> {
                t.sims
                    .iter()
                    .map(|s| s.iter().map(|x| x.to_bits()).collect())
                    .collect()
            };
            assert_eq!(bits(&got), bits(&want), "similarities, n {n} d {d} b {b}");
            return true;
        }
        false
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn sketched_scan_returns_exactly_the_plain_scans_lists(
            n in 1usize..3000,
            d in prop::sample::select(vec![1usize, 3, 16, 17, 64, 384]),
            b in 1usize..=8,
            k in 1usize..40,
            f16_keys in any::<bool>(),
            seed in any::<u64>(),
        ) {
            check(n, d, b, k, f16_keys, seed);
        }
    }

    #[test]
    fn most_mixed_banks_go_through_the_sketch_and_agree() {
        // The property test above passes vacuously if everything falls back: count.
        let mut sketched = 0;
        for seed in 0..40u64 {
            let b = 1 + (seed % 8) as usize;
            let k = 1 + (seed * 7 % 30) as usize;
            sketched += usize::from(check(4000, 384, b, k, seed % 2 == 0, seed));
        }
        assert!(
            sketched >= 30,
            "only {sketched} of 40 scans used the sketch"
        );
    }

    #[test]
    fn a_bank_of_duplicates_falls_back() {
        let (n, d) = (1000, 16);
        let mut rng = SplitMix64::new(9);
        let key = rng.unit_vector(d);
        let rows: Vec<f32> = (0..n).flat_map(|_| key.clone()).collect();
        let mut sketch = Int8Sketch::new(d);
        sketch.append(sketch.prepare(&rows));
        assert!(top_keys(&key, 1, Keys::F32(&rows), &sketch, 5).is_none());
    }

    #[test]
    fn random_keys_leave_few_survivors() {
        // Unit random keys at d = 384: the sketch must prune, or it is only overhead.
        let (n, d, k) = (20_000, 384, 10);
        let mut rng = SplitMix64::new(3);
        let rows: Vec<f32> = (0..n).flat_map(|_| rng.unit_vector(d)).collect();
        let query = rng.unit_vector(d);
        let mut sketch = Int8Sketch::new(d);
        sketch.append(sketch.prepare(&rows));
        let got = top_keys(&query, 1, Keys::F32(&rows), &sketch, k);
        assert!(got.is_some(), "the sketch fell back to the full scan");
    }

    #[test]
    fn quantization_bounds_hold_for_every_kind_of_row() {
        let rows: Vec<Vec<f32>> = vec![
            vec![0.0; 8],
            vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            vec![1e-40, -1e-40, 0.0, 1e-45, 0.0, 0.0, 0.0, 0.0],
            vec![0.3, -0.2, 0.1, 0.77, -0.5, 0.01, 0.0, -0.123],
            vec![3e38, -3e38, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ];
        for row in rows {
            let mut codes = vec![0i8; row.len()];
            let q = quantize(&row, &mut codes);
            let err: f64 = row
                .iter()
                .zip(&codes)
                .map(|(&x, &c)| (f64::from(x) - f64::from(q.scale) * f64::from(c)).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm: f64 = row
                .iter()
                .map(|&x| f64::from(x).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(f64::from(q.err) >= err, "{row:?}: {} < {err}", q.err);
            assert!(f64::from(q.norm) >= norm, "{row:?}");
            assert!(codes.iter().all(|c| (-127..=127).contains(c)));
        }
    }

    #[test]
    fn every_integer_kernel_matches_the_plain_dot() {
        // The property test runs only the kernel this CPU picks; here each one this CPU can run.
        let mut rng = SplitMix64::new(5);
        for d in [1usize, 15, 16, 31, 32, 33, 63, 64, 65, 384] {
            for b in [1usize, 3, 8] {
                let rows = 7;
                let mut draw = |n: usize| -> Vec<i8> {
                    (0..n)
                        .map(|_| (rng.below(255) as i16 - 127) as i8)
                        .collect()
                };
                let (queries, codes) = (draw(b * d), draw(rows * d));
                let want: Vec<i32> = (0..b)
                    .flat_map(|i| (0..rows).map(move |r| (i, r)))
                    .map(|(i, r)| int_dot(&queries[i * d..(i + 1) * d], &codes[r * d..(r + 1) * d]))
                    .collect();
                let mut out = vec![0i32; b * rows];
                int_dots_portable(&queries, b, &codes, d, &mut out);
                assert_eq!(out, want, "portable, d {d} b {b}");
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2") {
                        let mut out = vec![0i32; b * rows];
                        // SAFETY: the CPU has AVX2 (checked just above).
                        unsafe { x86::int_dots_avx2(&queries, b, &codes, d, &mut out) };
                        assert_eq!(out, want, "AVX2, d {d} b {b}");
                    }
                    if std::arch::is_x86_feature_detected!("avx512bw")
                        && std::arch::is_x86_feature_detected!("avx512vnni")
                    {
                        let mut out = vec![0i32; b * rows];
                        // SAFETY: the CPU has AVX-512F, BW and VNNI (checked just above).
                        unsafe { x86::int_dots_vnni(&queries, b, &codes, d, &mut out) };
                        assert_eq!(out, want, "AVX-512 VNNI, d {d} b {b}");
                    }
                    if std::arch::is_x86_feature_detected!("avx512bw") {
                        let mut out = vec![0i32; b * rows];
                        // SAFETY: the CPU has AVX-512F and BW (checked just above).
                        unsafe { x86::int_dots_avx512(&queries, b, &codes, d, &mut out) };
                        assert_eq!(out, want, "AVX-512, d {d} b {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn round_up_never_rounds_down() {
        for v in [0.0, 1.0, 0.1, 1e-40, 3.4e38, 0.3333333333333333] {
            assert!(f64::from(round_up(v)) >= v);
        }
    }
}
