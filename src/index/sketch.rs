//! An int8 sketch of the keys, so that a scan on the CPU reads a quarter of the bytes of f32
//! keys (half of f16 keys), multiplies bytes instead of floats, and still returns exactly what
//! the fused full scan returns.
//!
//! Why: a scan of one to a few queries is bound by reading the keys (1M f32 keys of d = 384 are
//! 1.5 GB per query), and a scan of many by arithmetic. One byte per dimension is enough to tell
//! which keys can still be among the best k; only those are read at full precision.
//!
//! Why it is exact, not approximate:
//! - A key `x` is stored as codes `c` (i8) and a scale `s`; `x' = s c`, and the sketch keeps an
//!   upper bound on `|x - x'|` and on `|x|`. The query is quantized the same way at search time.
//! - The sketch's score is an exact integer dot product times the two scales. Its distance from
//!   what the full scan's kernel computes (an f32 sum of `d` products, in any order) is at most
//!   `|q| |x - x'| + |q - q'| |x'| + gamma(d) |q| |x|` (Cauchy-Schwarz, and the textbook bound
//!   on a float sum): every key gets an interval `[lo, hi]` holding its score, computed in f32
//!   with room for the f32 roundings (`SketchQuery::new`).
//! - With `tau` the k-th largest `lo` over all keys, at least k keys score `>= tau`; a key with
//!   `hi < tau` scores strictly less than each of them and cannot be among the best k, equal
//!   scores included. The survivors are scored again by the full scan's own kernel, each query
//!   in the same query group as in the full scan, so their similarities are its bits, and ranked
//!   by its order (similarity descending, row ascending).
//! - When too many keys survive (near-duplicate keys, all at one score), the caller's full scan
//!   runs instead: slower than the sketch, never wrong.
//!
//! How it is fast: codes are packed by blocks of 32 keys so that one AVX-512 VNNI instruction
//! multiplies 4 dimensions of 16 keys by one query (no horizontal sums), a block is read from
//! memory once for every query of a batch, and most blocks are ruled out for a query by one
//! vector compare before any interval is computed (`Gate`).

use half::f16;
use rayon::prelude::*;

use super::scan::TopKeys;
use super::simd::{self, Keys};
use super::topk::better;

// Integer dot products are summed in i32, as `(key code + 128) * query code` (VNNI's unsigned
// by signed bytes, below): at the largest dimension a bank allows, padded to whole groups, the
// sums stay clear of overflow.
const _: () = assert!(255 * 127 * crate::config::MAX_DIM.next_multiple_of(4) < i32::MAX as usize);
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

/// Keys per block of the packed codes. A block's codes are `2 * groups` 64-byte lines: line
/// `2g + h` holds dimensions `4g..4g + 4` of keys `16h..16h + 16`, key after key, so one 64-byte
/// load gives one VNNI instruction 4 dimensions of 16 keys, and a product of several queries
/// with a block needs no horizontal sums.
const BLOCK_KEYS: usize = 32;
/// Dimensions per group: the 4 bytes that one 32-bit lane of VNNI multiplies and sums.
const GROUP_DIMS: usize = 4;
/// Code 0 in the packed form, which stores `code + 128` as an unsigned byte (VNNI multiplies
/// unsigned bytes by signed ones). Padding (dimensions past `dim`, keys past `len`) holds it.
const PACKED_ZERO: u8 = 0x80;

/// One cache line of packed codes.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// The keys of an index as int8 codes, packed by blocks of `BLOCK_KEYS` (see the module docs).
#[derive(Debug)]
pub(crate) struct Int8Sketch {
    dim: usize,
    /// Groups of `GROUP_DIMS` dimensions per key (at least one, so a block is never empty).
    groups: usize,
    /// `len().div_ceil(BLOCK_KEYS) * 2 * groups` lines.
    lines: Vec<Line>,
    scales: Vec<f32>,
    errs: Vec<f32>,
    norms: Vec<f32>,
}

/// Sketch rows made ahead of an append (`Int8Sketch::prepare`), so that the append itself cannot
/// fail half-way. Codes are row-major here; `append` packs them.
pub(crate) struct SketchRows {
    codes: Vec<i8>,
    scales: Vec<f32>,
    errs: Vec<f32>,
    norms: Vec<f32>,
}

/// Writes one key's codes into its slots of a block.
fn pack_key(block: &mut [Line], key: usize, codes: &[i8]) {
    let (half, at) = (key / 16, (key % 16) * GROUP_DIMS);
    for (g, group) in codes.chunks(GROUP_DIMS).enumerate() {
        let line = &mut block[2 * g + half].0;
        for (slot, &c) in line[at..at + group.len()].iter_mut().zip(group) {
            *slot = (c as u8) ^ PACKED_ZERO;
        }
    }
}

impl Int8Sketch {
    pub(crate) fn new(dim: usize) -> Self {
        Self {
            dim,
            groups: dim.div_ceil(GROUP_DIMS).max(1),
            lines: Vec::new(),
            scales: Vec::new(),
            errs: Vec::new(),
            norms: Vec::new(),
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.scales.len()
    }

    /// Lines per block.
    fn block_lines(&self) -> usize {
        2 * self.groups
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
        let (d, per_block) = (self.dim, self.block_lines());
        let (old, new) = (self.len(), self.len() + rows.scales.len());
        self.lines.resize(
            new.div_ceil(BLOCK_KEYS) * per_block,
            Line([PACKED_ZERO; 64]),
        );
        let first = old / BLOCK_KEYS;
        self.lines[first * per_block..]
            .par_chunks_mut(per_block)
            .enumerate()
            .for_each(|(i, block)| {
                let start = (first + i) * BLOCK_KEYS;
                for r in start.max(old)..(start + BLOCK_KEYS).min(new) {
                    pack_key(
                        block,
                        r - start,
                        &rows.codes[(r - old) * d..(r - old + 1) * d],
                    );
                }
            });
        self.scales.extend_from_slice(&rows.scales);
        self.errs.extend_from_slice(&rows.errs);
        self.norms.extend_from_slice(&rows.norms);
    }

    /// Removes row `row`; later rows shift up, as in the key matrix.
    pub(crate) fn remove(&mut self, row: usize) {
        let n = self.len();
        if row >= n {
            return;
        }
        // Within each line the later keys move one slot down; a line's last slot takes the first
        // key of the same line of the next block (or padding). Blocks go in order, so that key
        // is read before its own block shifts.
        let per_block = self.block_lines();
        let blocks = n.div_ceil(BLOCK_KEYS);
        for block in row / BLOCK_KEYS..blocks {
            for l in 0..per_block {
                // Line `2g` holds keys 0-15 of the block, line `2g + 1` keys 16-31.
                let (g, half) = (l / 2, l % 2);
                let first_key = if block == row / BLOCK_KEYS {
                    row % BLOCK_KEYS
                } else {
                    0
                };
                // Key 16h of a line comes from key 0 of the next line in key order: line
                // `2g + 1` of this block for h = 0, line `2g` of the next block for h = 1.
                let incoming = if half == 0 {
                    let next = self.lines[block * per_block + 2 * g + 1].0;
                    [next[0], next[1], next[2], next[3]]
                } else if block + 1 < blocks {
                    let next = self.lines[(block + 1) * per_block + 2 * g].0;
                    [next[0], next[1], next[2], next[3]]
                } else {
                    [PACKED_ZERO; GROUP_DIMS]
                };
                let from = first_key.saturating_sub(16 * half).min(16);
                if first_key >= 16 * (half + 1) {
                    continue;
                }
                let line = &mut self.lines[block * per_block + l].0;
                line.copy_within((from + 1) * GROUP_DIMS..64, from * GROUP_DIMS);
                line[64 - GROUP_DIMS..].copy_from_slice(&incoming);
            }
        }
        if (n - 1).is_multiple_of(BLOCK_KEYS) {
            self.lines.truncate((n - 1) / BLOCK_KEYS * per_block);
        }
        self.scales.remove(row);
        self.errs.remove(row);
        self.norms.remove(row);
    }

    /// The code of key `row`, dimension `t` (tests read the packing back through it).
    #[cfg(test)]
    fn code(&self, row: usize, t: usize) -> i8 {
        let line = (row / BLOCK_KEYS) * self.block_lines() + 2 * (t / GROUP_DIMS) + (row % 32) / 16;
        (self.lines[line].0[(row % 16) * GROUP_DIMS + t % GROUP_DIMS] ^ PACKED_ZERO) as i8
    }
}

/// Quantized queries as the integer kernels read them: per query, one little-endian i32 of
/// four codes per group (padding dimensions 0), and the sum of its codes.
struct PackedQueries {
    words: Vec<i32>,
    sums: Vec<i32>,
}

impl PackedQueries {
    /// `codes` is `b x dim` row-major.
    fn new(codes: &[i8], dim: usize, groups: usize) -> Self {
        let mut words = Vec::with_capacity(codes.len() / dim.max(1) * groups);
        let mut sums = Vec::new();
        for query in codes.chunks(dim.max(1)) {
            let mut group = query.chunks(GROUP_DIMS);
            for _ in 0..groups {
                let mut bytes = [0u8; 4];
                for (b, &c) in bytes.iter_mut().zip(group.next().unwrap_or(&[])) {
                    *b = c as u8;
                }
                words.push(i32::from_le_bytes(bytes));
            }
            sums.push(query.iter().map(|&c| i32::from(c)).sum());
        }
        Self { words, sums }
    }
}

/// The integer dot products of the `b` packed queries with every key of whole blocks `lines`:
/// `out[i * rows + r]` with `rows` the blocks' keys (padding keys included). Integer sums are
/// exact in any order, so every kernel gives the same numbers.
fn int_dots(queries: &PackedQueries, b: usize, lines: &[Line], groups: usize, out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            // SAFETY: the CPU has AVX-512F, BW and VNNI (checked just above; BW implies F).
            unsafe { x86::int_dots_vnni(queries, b, lines, groups, out) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { x86::int_dots_avx2(queries, b, lines, groups, out) };
            return;
        }
    }
    int_dots_portable(queries, b, lines, groups, out);
}

fn int_dots_portable(
    queries: &PackedQueries,
    b: usize,
    lines: &[Line],
    groups: usize,
    out: &mut [i32],
) {
    let rows = lines.len() / (2 * groups) * BLOCK_KEYS;
    for (n, block) in lines.chunks_exact(2 * groups).enumerate() {
        for i in 0..b {
            let mut acc = [0i32; BLOCK_KEYS];
            for (g, pair) in block.chunks_exact(2).enumerate() {
                let q = queries.words[i * groups + g].to_le_bytes();
                for (h, line) in pair.iter().enumerate() {
                    for (j, key) in line.0.chunks_exact(GROUP_DIMS).enumerate() {
                        acc[16 * h + j] += key
                            .iter()
                            .zip(q)
                            .map(|(&x, y)| i32::from(x) * i32::from(y as i8))
                            .sum::<i32>();
                    }
                }
            }
            let shift = 128 * queries.sums[i];
            for (j, a) in acc.iter().enumerate() {
                out[i * rows + n * BLOCK_KEYS + j] = a - shift;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Line, PackedQueries, BLOCK_KEYS};

    /// Queries per register tile: 8 queries x 2 lines of 16 keys take 16 accumulators.
    const TILE_QUERIES: usize = 8;

    /// One tile: `M` queries against one block, with VNNI: per group, two 64-byte loads of keys
    /// and one broadcast of each query's 4 codes feed `2M` accumulators of 16 keys each.
    /// `dpbusd` sums `(code + 128) * q` exactly in i32; `128 * sum(q)` is taken off at the end.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn tile_vnni<const M: usize>(
        words: *const i32,
        sums: *const i32,
        block: *const Line,
        groups: usize,
        out: *mut i32,
        rows: usize,
    ) {
        let mut lo = [_mm512_setzero_si512(); M];
        let mut hi = [_mm512_setzero_si512(); M];
        for g in 0..groups {
            let k0 = _mm512_load_si512(block.add(2 * g) as *const _);
            let k1 = _mm512_load_si512(block.add(2 * g + 1) as *const _);
            for m in 0..M {
                let q = _mm512_set1_epi32(*words.add(m * groups + g));
                lo[m] = _mm512_dpbusd_epi32(lo[m], k0, q);
                hi[m] = _mm512_dpbusd_epi32(hi[m], k1, q);
            }
        }
        for m in 0..M {
            let shift = _mm512_set1_epi32(128 * *sums.add(m));
            let at = out.add(m * rows);
            _mm512_storeu_si512(at as *mut _, _mm512_sub_epi32(lo[m], shift));
            _mm512_storeu_si512(at.add(16) as *mut _, _mm512_sub_epi32(hi[m], shift));
        }
    }

    /// Blocks outside, query tiles inside: a block (12 KiB at d = 384) is read from memory once
    /// and from L1 for every further tile; the next block is prefetched meanwhile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn int_dots_vnni(
        queries: &PackedQueries,
        b: usize,
        lines: &[Line],
        groups: usize,
        out: &mut [i32],
    ) {
        let per_block = 2 * groups;
        let blocks = lines.len() / per_block;
        let rows = blocks * BLOCK_KEYS;
        let (words, sums, o) = (
            queries.words.as_ptr(),
            queries.sums.as_ptr(),
            out.as_mut_ptr(),
        );
        for n in 0..blocks {
            let block = lines.as_ptr().add(n * per_block);
            if n + 1 < blocks {
                for l in 0..per_block {
                    _mm_prefetch::<_MM_HINT_T0>(block.add(per_block + l) as *const i8);
                }
            }
            let mut i = 0;
            while i < b {
                let m = (b - i).min(TILE_QUERIES);
                let (w, s, at) = (
                    words.add(i * groups),
                    sums.add(i),
                    o.add(i * rows + n * BLOCK_KEYS),
                );
                match m {
                    8 => tile_vnni::<8>(w, s, block, groups, at, rows),
                    7 => tile_vnni::<7>(w, s, block, groups, at, rows),
                    6 => tile_vnni::<6>(w, s, block, groups, at, rows),
                    5 => tile_vnni::<5>(w, s, block, groups, at, rows),
                    4 => tile_vnni::<4>(w, s, block, groups, at, rows),
                    3 => tile_vnni::<3>(w, s, block, groups, at, rows),
                    2 => tile_vnni::<2>(w, s, block, groups, at, rows),
                    _ => tile_vnni::<1>(w, s, block, groups, at, rows),
                }
                i += m;
            }
        }
    }

    /// Without VNNI: per group, the block's 128 bytes are widened to i16 in eight pieces of 4
    /// keys, and `madd` against the query's 4 codes (as i16, repeated) leaves two partial sums
    /// per key, added at the end. Products are at most 255 * 127, so nothing saturates.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn int_dots_avx2(
        queries: &PackedQueries,
        b: usize,
        lines: &[Line],
        groups: usize,
        out: &mut [i32],
    ) {
        let per_block = 2 * groups;
        let blocks = lines.len() / per_block;
        let rows = blocks * BLOCK_KEYS;
        // Each query's groups as four i16 codes in one i64, ready to broadcast.
        let wide: Vec<i64> = queries
            .words
            .iter()
            .map(|w| {
                let q = w.to_le_bytes();
                let mut v = 0i64;
                for (u, &c) in q.iter().enumerate() {
                    v |= i64::from(i16::from(c as i8) as u16) << (16 * u);
                }
                v
            })
            .collect();
        for n in 0..blocks {
            let block = lines.as_ptr().add(n * per_block) as *const u8;
            for i in 0..b {
                let mut acc = [_mm256_setzero_si256(); 8];
                for g in 0..groups {
                    let q = _mm256_set1_epi64x(wide[i * groups + g]);
                    let pieces = block.add(128 * g);
                    for (p, a) in acc.iter_mut().enumerate() {
                        let keys =
                            _mm256_cvtepu8_epi16(_mm_loadu_si128(pieces.add(16 * p) as *const _));
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(keys, q));
                    }
                }
                let mut lanes = [0i32; 64];
                for (p, a) in acc.iter().enumerate() {
                    _mm256_storeu_si256(lanes.as_mut_ptr().add(8 * p) as *mut _, *a);
                }
                let shift = 128 * queries.sums[i];
                for j in 0..BLOCK_KEYS {
                    out[i * rows + n * BLOCK_KEYS + j] = lanes[2 * j] + lanes[2 * j + 1] - shift;
                }
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
    /// `floor`: a number known to be at most the k-th largest of all that will be offered
    /// (here and to the other workers of one scan), or minus infinity.
    fn new(k: usize, floor: f64) -> Self {
        Self {
            k,
            values: Vec::with_capacity(2 * k),
            floor,
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

    /// A number at most the k-th largest of all offered: the k-th largest seen here, or the
    /// starting floor while fewer than k were seen.
    fn kth(&mut self) -> f64 {
        self.compact();
        self.floor
    }
}

/// Whether any value of a block is above `t`. An OR of compares, not a maximum: float maxima
/// do not vectorise as a reduction, this does.
#[inline(always)]
fn any_above(block: &[f32], t: f32) -> bool {
    block.iter().fold(0u32, |acc, &v| acc | u32::from(v > t)) != 0
}

/// A query as the sketch pass sees it: its scale, the weights of a key's two error terms in
/// the half-width of its interval (rounded up, with room for the f32 arithmetic), and a bound
/// on `|q'|` (see `top_keys`).
struct SketchQuery {
    scale: f32,
    on_err: f32,
    on_norm: f32,
    size: f64,
}

impl SketchQuery {
    /// Quantizes `query` into `codes`.
    ///
    /// A key's score lies within `approx +- width` (module docs), with
    ///   approx = q.scale * scale * dot,
    ///   width  = (|q| err + |q - q'| (norm + err) + gamma |q| norm) (1 + 1e-9)
    ///            + 1e-12 (|q| + |q - q'|) (norm + err)   (the f64 setup itself),
    /// regrouped by the key's two numbers. The pass computes it in f32: the two weights are
    /// rounded up and raised by 2^-18, which outweighs the roundings of the width itself, and
    /// the product standing for approx and the interval's two ends (a few roundings of relative
    /// 2^-24 each, on values at most |q'| |x'| <= size (norm + err)) are covered by a chunk's
    /// `slack` of 2^-18 times that bound, plus 1e-37 for subnormal steps.
    fn new(query: &[f32], codes: &mut [i8]) -> Self {
        // The f32 kernel's rounding: a sum of d products in any order (with or without FMA) is
        // within gamma(d + 2) |q| |x| of the real dot product.
        let unit = f64::from(f32::EPSILON) / 2.0;
        let terms = (query.len() + 2) as f64 * unit;
        let gamma = terms / (1.0 - terms);
        let raise = 1.0 + f64::powi(2.0, -18);
        let quantized = quantize(query, codes);
        let (norm, err) = (f64::from(quantized.norm), f64::from(quantized.err));
        let tiny = 1e-12 * (norm + err);
        Self {
            scale: quantized.scale,
            on_err: round_up(((norm + err) * (1.0 + 1e-9) + tiny) * raise),
            on_norm: round_up(((err + gamma * norm) * (1.0 + 1e-9) + tiny) * raise),
            size: norm + err,
        }
    }

    /// The allowance for the f32 roundings over keys of `|x'|` at most `largest` (see `new`).
    fn slack(&self, largest: f64) -> f32 {
        round_up(self.size * largest * f64::powi(2.0, -18) + 1e-37)
    }
}

/// The intervals of up to 16 keys in f32 (the rest of `lo` and `hi` stay as they are).
#[inline(always)]
fn intervals(
    q: &SketchQuery,
    slack: f32,
    (dots, scales, errs, norms): (&[i32], &[f32], &[f32], &[f32]),
    lo: &mut [f32; 16],
    hi: &mut [f32; 16],
) {
    let per_key = scales.iter().zip(errs).zip(norms);
    for ((l, h), (&dot, ((&s, &e), &nm))) in lo
        .iter_mut()
        .zip(hi.iter_mut())
        .zip(dots.iter().zip(per_key))
    {
        let v = dot as f32 * s * q.scale;
        let w = q.on_err * e + q.on_norm * nm;
        let (low, high) = ((v - w) - slack, (v + w) + slack);
        // NaN (0 x inf: keys beyond f32) must widen, not prune.
        *l = if low.is_nan() { f32::NEG_INFINITY } else { low };
        *h = if high.is_nan() { f32::INFINITY } else { high };
    }
}

/// Whether any key of a block has `f32(dot) * scale >= bar` (the first product of its `v`):
/// an OR of compares over a fixed 16, which compiles to a handful of vector instructions.
#[inline(always)]
fn any_product_reaches(dots: &[i32; 16], scales: &[f32; 16], bar: f32) -> bool {
    dots.iter()
        .zip(scales)
        .fold(0u32, |acc, (&d, &s)| acc | u32::from(d as f32 * s >= bar))
        != 0
}

/// The cheap test in front of a block's intervals: a key's upper end is `(u * q.scale + w) +
/// slack` with `u = f32(dot) * scale`, up to roundings of relative 2^-23 each, and `w` at most
/// the chunk's widest, so below `at(bar)` a key's `u` cannot reach `bar`.
struct Gate {
    reserve: f64,
    scale: f64,
}

impl Gate {
    const MARGIN: f64 = 1.0 / 1_048_576.0; // 2^-20

    fn new(q: &SketchQuery, keys: &ChunkKeys<'_>, slack: f32) -> Self {
        Self {
            reserve: (keys.widest(q) + f64::from(slack)) * (1.0 + Self::MARGIN),
            scale: f64::from(q.scale) * (1.0 + Self::MARGIN),
        }
    }

    /// The least `u` that may reach `bar`, rounded down to f32. Minus infinity (no gate) when
    /// `bar` is not above the widths (a `u` of 0 could reach it) or the query's scale is 0.
    fn at(&self, bar: f64) -> f32 {
        let x = (bar * (1.0 - Self::MARGIN) - self.reserve) / self.scale;
        if x > 0.0 {
            // +inf (nothing reaches `bar`) stays +inf.
            let f = x as f32;
            if f64::from(f) > x {
                f.next_down()
            } else {
                f
            }
        } else {
            f32::NEG_INFINITY
        }
    }
}

/// One query over one chunk of keys, 16 keys at a time: lower ends into `lows` (first pass),
/// then the keys whose upper end reaches the k-th lower end seen so far (second pass). Most
/// blocks are ruled out by `f32(dot) * scale` alone (`gate`), before any interval is
/// computed. `slack` is the chunk's allowance for the f32 roundings (see `top_keys`).
#[inline(always)]
fn bound_pass(pass: &mut QueryPass<'_>, slack: f32) {
    let QueryPass {
        q,
        dots,
        keys,
        first,
        lows,
        kept,
    } = pass;
    let gate = Gate::new(q, keys, slack);
    let (dot_blocks, dot_rest) = dots.as_chunks::<16>();
    let (scale_blocks, _) = keys.scales.as_chunks::<16>();
    // The intervals of the keys of block `at` (the last one may be short).
    let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
    let intervals_of = |at: usize, lo: &mut [f32; 16], hi: &mut [f32; 16]| -> usize {
        let span = at * 16..(at * 16 + 16).min(dots.len());
        let len = span.len();
        intervals(
            q,
            slack,
            (
                &dots[span.clone()],
                &keys.scales[span.clone()],
                &keys.errs[span.clone()],
                &keys.norms[span],
            ),
            lo,
            hi,
        );
        len
    };
    let whole = dot_blocks.len();
    let rest = usize::from(!dot_rest.is_empty());

    let mut floor_gate = gate.at(lows.floor);
    for at in 0..whole + rest {
        if at < whole && !any_product_reaches(&dot_blocks[at], &scale_blocks[at], floor_gate) {
            continue;
        }
        let len = intervals_of(at, &mut lo, &mut hi);
        // Lower ends are f32 values, so the floor converts exactly.
        if any_above(&lo[..len], lows.floor as f32) {
            for &l in &lo[..len] {
                lows.offer(f64::from(l));
            }
            floor_gate = gate.at(lows.floor);
        }
    }
    // The k-th lower end so far is at most the global one: a key whose upper end falls below
    // it can never be among the best k.
    let threshold = lows.kth();
    let threshold_gate = gate.at(threshold);
    let threshold = threshold as f32;
    for at in 0..whole + rest {
        if at < whole && !any_product_reaches(&dot_blocks[at], &scale_blocks[at], threshold_gate) {
            continue;
        }
        let len = intervals_of(at, &mut lo, &mut hi);
        for (r, &h) in hi[..len].iter().enumerate() {
            if h >= threshold {
                kept.push(((*first + at * 16 + r) as u32, f64::from(h)));
            }
        }
    }
}

/// A chunk's per-key numbers, and the largest of each.
struct ChunkKeys<'a> {
    scales: &'a [f32],
    errs: &'a [f32],
    norms: &'a [f32],
    largest_err: f32,
    largest_norm: f32,
}

impl ChunkKeys<'_> {
    /// A half-width at least every key's of the chunk, for `q`.
    fn widest(&self, q: &SketchQuery) -> f64 {
        f64::from(q.on_err) * f64::from(self.largest_err)
            + f64::from(q.on_norm) * f64::from(self.largest_norm)
    }
}

/// What `bound_pass` reads and writes for one query and chunk.
struct QueryPass<'a> {
    q: &'a SketchQuery,
    dots: &'a [i32],
    keys: ChunkKeys<'a>,
    first: usize,
    lows: &'a mut KLargest,
    kept: &'a mut Vec<(u32, f64)>,
}

/// `bound_pass` compiled for the widest vectors the CPU has (the crate targets baseline
/// x86-64): at large batches it runs once per key and query, as often as the integer kernel.
fn bound_pass_dispatch(pass: &mut QueryPass<'_>, slack: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(pass: &mut QueryPass<'_>, slack: f32) {
            bound_pass(pass, slack);
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(pass: &mut QueryPass<'_>, slack: f32) {
            bound_pass(pass, slack);
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            unsafe { avx512(pass, slack) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { avx2(pass, slack) };
            return;
        }
    }
    bound_pass(pass, slack);
}

/// One worker's pass over its chunks: per query, the k largest lower ends it has seen and the
/// keys whose upper end reached the k-th of them, as `(row, upper end)`; and scratch buffers
/// reused from chunk to chunk.
struct WorkerPass {
    lows: Vec<KLargest>,
    survivors: Vec<Vec<(u32, f64)>>,
    dots: Vec<i32>,
}

/// The sketch's work per chunk of keys: about this many integer dots, whose 256 KiB of i32s the
/// bound pass then finds in L2 (chunks of 1 MiB of dots were a fifth slower at B = 256).
const CHUNK_DOTS: usize = 1 << 16;
/// Keys per chunk at most (6 MiB of codes at d = 384) and at least (so that a chunk's
/// bookkeeping stays small beside its products); both multiples of `BLOCK_KEYS`.
const MAX_CHUNK_KEYS: usize = 16_384;
const MIN_CHUNK_KEYS: usize = 256;
/// Keys scanned before the parallel pass, to seed its workers' floors: this many, but at
/// most `1 / SEED_SHARE` of the keys (at least one chunk), so that most of a scan of few keys
/// stays parallel.
const SEED_KEYS: usize = 8192;
const SEED_SHARE: usize = 16;
/// Queries per pass at most: a worker keeps `queries x chunk` integer dots, so a larger batch
/// goes through in blocks of this many (a multiple of 4, so that every query keeps its group of
/// the fused scan, and its bits).
const MAX_PASS_QUERIES: usize = 1024;
const _: () = assert!(MAX_PASS_QUERIES.is_multiple_of(4));

/// The best `k` keys of each of the `b` queries (unit rows of `queries`), exactly as the fused
/// scan over `keys` returns them (`scan::fused_cpu_scan`, whatever `b`), reading the keys
/// through `sketch` first. `None` when too many keys survive the sketch (the caller runs its
/// full scan).
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
    if b > MAX_PASS_QUERIES {
        let mut out = TopKeys {
            sims: Vec::with_capacity(b),
            rows: Vec::with_capacity(b),
        };
        for block in queries.chunks(MAX_PASS_QUERIES * d) {
            let part = top_keys(block, block.len() / d, keys, sketch, k)?;
            out.sims.extend(part.sims);
            out.rows.extend(part.rows);
        }
        return Some(out);
    }
    let mut codes = vec![0i8; b * d];
    let qs: Vec<SketchQuery> = codes
        .chunks_mut(d)
        .zip(queries.chunks(d))
        .map(|(c, q)| SketchQuery::new(q, c))
        .collect();
    let packed = PackedQueries::new(&codes, d, sketch.groups);

    let chunk_keys =
        (CHUNK_DOTS / b).clamp(MIN_CHUNK_KEYS, MAX_CHUNK_KEYS) / BLOCK_KEYS * BLOCK_KEYS;
    let per_block = sketch.block_lines();
    let chunks = n.div_ceil(chunk_keys);
    let scan_chunk = |pass: &mut WorkerPass, c: usize| {
        let first = c * chunk_keys;
        let valid = chunk_keys.min(n - first);
        let blocks = valid.div_ceil(BLOCK_KEYS);
        let rows = blocks * BLOCK_KEYS;
        let from = first / BLOCK_KEYS * per_block;
        pass.dots.resize(b * rows, 0);
        int_dots(
            &packed,
            b,
            &sketch.lines[from..from + blocks * per_block],
            sketch.groups,
            &mut pass.dots,
        );
        let span = first..first + valid;
        let most = |v: &[f32]| v.iter().fold(0f32, |m, &x| m.max(x));
        let (largest_err, largest_norm) = (
            most(&sketch.errs[span.clone()]),
            most(&sketch.norms[span.clone()]),
        );
        // |v| <= |q'| |x'| <= size (norm + err): the f32 roundings of a key's
        // interval stay far inside 2^-18 of that (see the setup above).
        let largest = f64::from(largest_norm) + f64::from(largest_err);
        for (i, q) in qs.iter().enumerate() {
            let slack = q.slack(largest);
            let kept = &mut pass.survivors[i];
            bound_pass_dispatch(
                &mut QueryPass {
                    q,
                    dots: &pass.dots[i * rows..i * rows + valid],
                    keys: ChunkKeys {
                        scales: &sketch.scales[span.clone()],
                        errs: &sketch.errs[span.clone()],
                        norms: &sketch.norms[span.clone()],
                        largest_err,
                        largest_norm,
                    },
                    first,
                    lows: &mut pass.lows[i],
                    kept: &mut *kept,
                },
                slack,
            );
            if kept.len() > 4 * k + 4096 {
                let threshold = pass.lows[i].kth();
                kept.retain(|&(_, h)| h >= threshold);
            }
        }
    };
    let new_pass = |floors: &[f64]| WorkerPass {
        lows: floors.iter().map(|&f| KLargest::new(k, f)).collect(),
        survivors: vec![Vec::new(); b],
        dots: Vec::new(),
    };
    // The first keys are scanned alone, and their k-th lower ends start every worker's floor:
    // a worker that started from minus infinity would keep thousands of keys per query before
    // its own floor rose (one per split of the parallel loop).
    let seed_chunks = SEED_KEYS
        .min(n / SEED_SHARE)
        .div_ceil(chunk_keys)
        .clamp(1, chunks);
    let mut seed = new_pass(&vec![f64::NEG_INFINITY; b]);
    for c in 0..seed_chunks {
        scan_chunk(&mut seed, c);
    }
    let floors: Vec<f64> = seed.lows.iter_mut().map(KLargest::kth).collect();
    let mut passes: Vec<WorkerPass> = (seed_chunks..chunks)
        .into_par_iter()
        .fold(
            || new_pass(&floors),
            |mut pass, c| {
                scan_chunk(&mut pass, c);
                pass
            },
        )
        .collect();
    passes.push(seed);

    // Each query's global threshold and survivors, in row order (each worker's rows increase,
    // but workers' ranges interleave).
    let mut survivors: Vec<Vec<u32>> = Vec::with_capacity(b);
    for i in 0..b {
        let mut lows: Vec<f64> = passes
            .iter()
            .flat_map(|p| p.lows[i].values.iter().copied())
            .collect();
        // Fewer than k lower ends are offered only when every width is infinite.
        let tau = if lows.len() < k {
            f64::NEG_INFINITY
        } else {
            *lows.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a)).1
        };
        let mut rows: Vec<u32> = passes
            .iter()
            .flat_map(|p| &p.survivors[i])
            .filter(|(_, h)| *h >= tau)
            .map(|&(r, _)| r)
            .collect();
        rows.sort_unstable();
        survivors.push(rows);
    }
    rescore(queries, b, keys, d, &survivors, k, n)
}

/// Scores each query's survivors with the full scan's own kernel and keeps the best `k`.
///
/// The fused scan's kernel takes queries four at a time (one accumulator each) and the last
/// `b % 4` one at a time (four accumulators), so a query's bits depend on which it is. Each
/// group of four is rescored together, over the union of its survivors, and each leftover
/// query alone: the same arithmetic as the fused scan over all `b`. `None` when that would
/// cost more than `1 / FALLBACK_SHARE` of the full scan.
fn rescore(
    queries: &[f32],
    b: usize,
    keys: Keys<'_>,
    d: usize,
    survivors: &[Vec<u32>],
    k: usize,
    n: usize,
) -> Option<TopKeys> {
    let full = b - b % 4;
    let groups: Vec<std::ops::Range<usize>> = (0..full)
        .step_by(4)
        .map(|i| i..i + 4)
        .chain((full..b).map(|i| i..i + 1))
        .collect();
    let unions: Vec<Vec<u32>> = groups
        .iter()
        .map(|g| {
            let mut union: Vec<u32> = survivors[g.clone()].iter().flatten().copied().collect();
            union.sort_unstable();
            union.dedup();
            union
        })
        .collect();
    let cost: usize = groups
        .iter()
        .zip(&unions)
        .map(|(g, u)| g.len() * u.len())
        .sum();
    if cost > b * n / FALLBACK_SHARE {
        return None;
    }
    let ranked: Vec<Vec<(f32, u32)>> = groups
        .par_iter()
        .zip(&unions)
        .flat_map_iter(|(g, union)| {
            let m = union.len();
            let mut scores = vec![0f32; g.len() * m];
            let block = &queries[g.start * d..g.end * d];
            match keys {
                Keys::F32(all) => {
                    let mut gathered = Vec::with_capacity(m * d);
                    for &r in union {
                        gathered.extend_from_slice(&all[r as usize * d..(r as usize + 1) * d]);
                    }
                    simd::scores(block, g.len(), Keys::F32(&gathered), d, &mut scores);
                }
                Keys::F16(all) => {
                    let mut gathered: Vec<f16> = Vec::with_capacity(m * d);
                    for &r in union {
                        gathered.extend_from_slice(&all[r as usize * d..(r as usize + 1) * d]);
                    }
                    simd::scores(block, g.len(), Keys::F16(&gathered), d, &mut scores);
                }
            }
            g.clone()
                .enumerate()
                .map(|(local, i)| {
                    let mut best: Vec<(f32, u32)> = survivors[i]
                        .iter()
                        .map(|&r| {
                            // `union` is sorted and holds every survivor of the group.
                            let at = union.partition_point(|&u| u < r);
                            (scores[local * m + at], r)
                        })
                        .collect();
                    best.sort_unstable_by(better);
                    best.truncate(k);
                    best
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = TopKeys {
        sims: Vec::with_capacity(b),
        rows: Vec::with_capacity(b),
    };
    for best in ranked {
        out.sims.push(best.iter().map(|p| p.0).collect());
        out.rows.push(best.iter().map(|p| p.1).collect());
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

    /// The plain scan's lists: the fused loop over every key, with all `b` queries in one call.
    fn plain(queries: &[f32], b: usize, keys: &Tensor, k: usize) -> TopKeys {
        let (storage, _) = keys.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) => {
                super::super::scan::fused_cpu_scan(queries, Keys::F32(data), b, k)
            }
            candle_core::Storage::Cpu(candle_core::CpuStorage::F16(data)) => {
                super::super::scan::fused_cpu_scan(queries, Keys::F16(data), b, k)
            }
            _ => unreachable!("CPU f32 or f16 keys"),
        }
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
            b in prop::sample::select(vec![1usize, 2, 3, 4, 5, 7, 8, 9, 12, 13, 17, 20]),
            k in 1usize..40,
            f16_keys in any::<bool>(),
            seed in any::<u64>(),
        ) {
            check(n, d, b, k, f16_keys, seed);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10))]
        #[test]
        fn sketched_scan_of_many_chunks_and_workers_returns_the_plain_scans_lists(
            // Beyond the seed's keys and over many chunks (256 keys each from 256 queries):
            // the workers' seeded floors, their gates and the merge of their passes.
            n in 9000usize..24_000,
            d in prop::sample::select(vec![16usize, 64]),
            b in prop::sample::select(vec![9usize, 33, 64, 130, 256]),
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
            let b = 1 + (seed * 5 % 19) as usize;
            let k = 1 + (seed * 7 % 30) as usize;
            sketched += usize::from(check(4000, 384, b, k, seed % 2 == 0, seed));
        }
        assert!(
            sketched >= 30,
            "only {sketched} of 40 scans used the sketch"
        );
        // And large batches over many chunks and workers.
        let mut large = 0;
        for (seed, b) in [33usize, 64, 130, 256].into_iter().enumerate() {
            large += usize::from(check(12_000, 64, b, 10, seed % 2 == 0, seed as u64));
        }
        assert!(
            large >= 3,
            "only {large} of 4 large batches used the sketch"
        );
    }

    #[test]
    fn a_batch_larger_than_a_pass_goes_through_in_blocks_with_the_same_lists() {
        // 1030 queries: a block of 1024, then 6 (one group of four and two alone, as in the
        // fused scan over all 1030).
        let b = MAX_PASS_QUERIES + 6;
        assert!(check(3000, 16, b, 5, false, 4), "the sketch fell back");
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

    fn int_dot(a: &[i8], b: &[i8]) -> i32 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum()
    }

    /// Random codes in [-127, 127].
    fn draw(rng: &mut SplitMix64, n: usize) -> Vec<i8> {
        (0..n)
            .map(|_| (rng.below(255) as i16 - 127) as i8)
            .collect()
    }

    #[test]
    fn every_integer_kernel_matches_the_plain_dot() {
        // The property test runs only the kernel this CPU picks; here each one this CPU can run,
        // over whole blocks (padding keys included: they must come out as 0 products).
        let mut rng = SplitMix64::new(5);
        for d in [1usize, 3, 4, 5, 15, 16, 33, 64, 65, 384] {
            for (b, n) in [(1usize, 7usize), (3, 32), (8, 40), (9, 64), (17, 95)] {
                let (queries, codes) = (draw(&mut rng, b * d), draw(&mut rng, n * d));
                let mut sketch = Int8Sketch::new(d);
                sketch.append(SketchRows {
                    codes: codes.clone(),
                    scales: vec![1.0; n],
                    errs: vec![0.0; n],
                    norms: vec![1.0; n],
                });
                let packed = PackedQueries::new(&queries, d, sketch.groups);
                let rows = n.div_ceil(BLOCK_KEYS) * BLOCK_KEYS;
                let want: Vec<i32> = (0..b)
                    .flat_map(|i| (0..rows).map(move |r| (i, r)))
                    .map(|(i, r)| {
                        if r < n {
                            int_dot(&queries[i * d..(i + 1) * d], &codes[r * d..(r + 1) * d])
                        } else {
                            0
                        }
                    })
                    .collect();
                let (lines, groups) = (&sketch.lines, sketch.groups);
                let mut out = vec![0i32; b * rows];
                int_dots_portable(&packed, b, lines, groups, &mut out);
                assert_eq!(out, want, "portable, d {d} b {b} n {n}");
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2") {
                        let mut out = vec![0i32; b * rows];
                        // SAFETY: the CPU has AVX2 (checked just above).
                        unsafe { x86::int_dots_avx2(&packed, b, lines, groups, &mut out) };
                        assert_eq!(out, want, "AVX2, d {d} b {b} n {n}");
                    }
                    if std::arch::is_x86_feature_detected!("avx512bw")
                        && std::arch::is_x86_feature_detected!("avx512vnni")
                    {
                        let mut out = vec![0i32; b * rows];
                        // SAFETY: the CPU has AVX-512F, BW and VNNI (checked just above).
                        unsafe { x86::int_dots_vnni(&packed, b, lines, groups, &mut out) };
                        assert_eq!(out, want, "AVX-512 VNNI, d {d} b {b} n {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn packing_follows_appends_and_removals_key_for_key() {
        // Every code read back against a row-major copy given the same appends and removals,
        // across block and line boundaries (keys 15/16 and 31/32), down to an empty sketch.
        let mut rng = SplitMix64::new(8);
        for d in [1usize, 5, 8, 17] {
            let mut sketch = Int8Sketch::new(d);
            let mut reference: Vec<Vec<i8>> = Vec::new();
            let check = |sketch: &Int8Sketch, reference: &[Vec<i8>]| {
                assert_eq!(sketch.len(), reference.len());
                assert_eq!(
                    sketch.lines.len(),
                    reference.len().div_ceil(BLOCK_KEYS) * sketch.block_lines()
                );
                for (r, row) in reference.iter().enumerate() {
                    for (t, &c) in row.iter().enumerate() {
                        assert_eq!(sketch.code(r, t), c, "d {d} key {r} dim {t}");
                    }
                }
                // Padding past the last key stays code 0, so it adds nothing to a product.
                let tail = reference.len()..reference.len().div_ceil(BLOCK_KEYS) * BLOCK_KEYS;
                for r in tail {
                    for t in 0..sketch.groups * GROUP_DIMS {
                        assert_eq!(sketch.code(r, t), 0, "d {d} padding key {r}");
                    }
                }
            };
            for batch in [1usize, 15, 1, 16, 40, 3] {
                let codes = draw(&mut rng, batch * d);
                reference.extend(codes.chunks(d).map(<[i8]>::to_vec));
                sketch.append(SketchRows {
                    codes,
                    scales: vec![1.0; batch],
                    errs: vec![0.0; batch],
                    norms: vec![1.0; batch],
                });
                check(&sketch, &reference);
            }
            for victim in [15usize, 16, 0, 31, 32, 40, 47] {
                let victim = victim.min(reference.len() - 1);
                sketch.remove(victim);
                reference.remove(victim);
                check(&sketch, &reference);
            }
            while !reference.is_empty() {
                let victim = rng.below(reference.len() as u64) as usize;
                sketch.remove(victim);
                reference.remove(victim);
                check(&sketch, &reference);
            }
        }
    }

    #[test]
    fn the_gate_never_rules_out_a_block_that_reaches_its_bar() {
        // At the edge: the bar is the block's largest upper (or lower) end, so a gate a hair
        // too tight fails here. Every kind of key of `keys`, several dimensions.
        let most = |v: &[f32]| v.iter().fold(0f32, |m, &x| m.max(x));
        let mut rng = SplitMix64::new(21);
        for d in [1usize, 3, 16, 64, 384] {
            for seed in 0..30u64 {
                let query = rng.unit_vector(d);
                let rows = keys(64, d, &query, seed);
                let mut sketch = Int8Sketch::new(d);
                sketch.append(sketch.prepare(&rows));
                let mut codes = vec![0i8; d];
                let q = SketchQuery::new(&query, &mut codes);
                let packed = PackedQueries::new(&codes, d, sketch.groups);
                let mut dots = vec![0i32; 64];
                int_dots_portable(&packed, 1, &sketch.lines, sketch.groups, &mut dots);
                for span in [0..16, 16..32, 32..48, 48..64] {
                    let keys = ChunkKeys {
                        scales: &sketch.scales[span.clone()],
                        errs: &sketch.errs[span.clone()],
                        norms: &sketch.norms[span.clone()],
                        largest_err: most(&sketch.errs[span.clone()]),
                        largest_norm: most(&sketch.norms[span.clone()]),
                    };
                    let slack = q.slack(f64::from(keys.largest_norm) + f64::from(keys.largest_err));
                    let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
                    let block = (&dots[span.clone()], keys.scales, keys.errs, keys.norms);
                    intervals(&q, slack, block, &mut lo, &mut hi);
                    let gate = Gate::new(&q, &keys, slack);
                    let (Ok(d16), Ok(s16)) = (
                        <&[i32; 16]>::try_from(&dots[span.clone()]),
                        <&[f32; 16]>::try_from(keys.scales),
                    ) else {
                        unreachable!("blocks of 16")
                    };
                    for bar in [most(&hi), most(&lo)] {
                        assert!(
                            any_product_reaches(d16, s16, gate.at(f64::from(bar))),
                            "d {d} seed {seed} keys {span:?}: bar {bar} ruled out"
                        );
                    }
                    // Not vacuous: far above the block, it is ruled out.
                    let above = f64::from(most(&hi)) + 0.5;
                    assert!(!any_product_reaches(d16, s16, gate.at(above)), "d {d}");
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
