//! The CPU scan's inner kernels, picked at run time for the CPU at hand: AVX-512, else
//! AVX2 + FMA + F16C, else portable Rust.
//!
//! Why by hand: the crate is compiled for baseline x86-64 (SSE2), so without these a scan of f16
//! keys converts one element at a time and a scan of f32 keys uses 4-wide vectors; both then
//! run below the memory's speed, which is the only limit a scan of few queries should have.
//!
//! Every kernel computes `out[i * rows + r] = dot(query i, key row r)` for a block of key rows,
//! with `d` a multiple of nothing in particular (a scalar tail handles the rest). Results equal
//! the portable path's up to float rounding (the sums are associated differently).

use half::f16;

/// Key rows in their storage precision.
#[derive(Clone, Copy)]
pub(crate) enum Keys<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// `out[i * rows + r]` = dot product of query `i` (of `b`, rows of `queries`) with key row `r`
/// (`rows = keys.len() / d`).
pub(crate) fn scores(queries: &[f32], b: usize, keys: Keys<'_>, d: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            unsafe { x86::scores_avx512(queries, b, keys, d, out) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
            unsafe { x86::scores_avx2(queries, b, keys, d, out) };
            return;
        }
    }
    scores_portable(queries, b, keys, d, out);
}

fn scores_portable(queries: &[f32], b: usize, keys: Keys<'_>, d: usize, out: &mut [f32]) {
    let rows = match keys {
        Keys::F32(k) => k.len() / d,
        Keys::F16(k) => k.len() / d,
    };
    let mut buf = vec![0f32; d];
    for r in 0..rows {
        let key: &[f32] = match keys {
            Keys::F32(k) => &k[r * d..(r + 1) * d],
            Keys::F16(k) => {
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(
                    &k[r * d..(r + 1) * d],
                    &mut buf,
                );
                &buf
            }
        };
        for (i, query) in queries.chunks_exact(d).take(b).enumerate() {
            out[i * rows + r] = dot(query, key);
        }
    }
}

/// Dot product with 16 independent accumulators, so the compiler keeps several vector
/// registers busy instead of one serial chain of adds.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (a_body, a_tail) = a.split_at(a.len() - a.len() % 16);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (x, y) in a_body.chunks_exact(16).zip(b_body.chunks_exact(16)) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Keys;

    /// How far ahead of the row being scored its keys are prefetched.
    const PREFETCH_ROWS: usize = 4;

    macro_rules! kernel {
        ($name:ident, $features:literal, $lanes:literal, $vec:ty, $zero:ident, $loadu:ident,
         $fmadd:ident, $add:ident, $load_f16:expr, $reduce:ident) => {
            /// Accumulators live in named registers (no arrays indexed at run time, which would
            /// put them on the stack): four queries per pass over a key row, then one at a time
            /// with four independent chains.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(
                queries: &[f32],
                b: usize,
                keys: Keys<'_>,
                d: usize,
                out: &mut [f32],
            ) {
                let body = d - d % $lanes;
                let rows = match keys {
                    Keys::F32(k) => k.len() / d,
                    Keys::F16(k) => k.len() / d,
                };
                let q = queries.as_ptr();
                let tail = |i: usize, r: usize| -> f32 {
                    (body..d)
                        .map(|t| {
                            let key = match keys {
                                Keys::F32(k) => k[r * d + t],
                                Keys::F16(k) => k[r * d + t].to_f32(),
                            };
                            queries[i * d + t] * key
                        })
                        .sum()
                };
                let key_bytes = match keys {
                    Keys::F32(_) => 4 * d,
                    Keys::F16(_) => 2 * d,
                };
                let key_base = match keys {
                    Keys::F32(k) => k.as_ptr() as *const i8,
                    Keys::F16(k) => k.as_ptr() as *const i8,
                };
                for r in 0..rows {
                    // Ask for the rows a few ahead now: the hardware prefetcher alone leaves
                    // the scan short of the memory's bandwidth (measured on a Zen 4 EPYC).
                    if r + PREFETCH_ROWS < rows {
                        let ahead = key_base.add((r + PREFETCH_ROWS) * key_bytes);
                        let mut line = 0;
                        while line < key_bytes {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.add(line));
                            line += 64;
                        }
                    }
                    let key = |j: usize| -> $vec {
                        match keys {
                            Keys::F32(k) => $loadu(k.as_ptr().add(r * d + j)),
                            Keys::F16(k) => $load_f16(k.as_ptr().add(r * d + j)),
                        }
                    };
                    let mut i = 0;
                    while i + 4 <= b {
                        let (mut a0, mut a1, mut a2, mut a3) = ($zero(), $zero(), $zero(), $zero());
                        let mut j = 0;
                        while j < body {
                            let k = key(j);
                            a0 = $fmadd($loadu(q.add(i * d + j)), k, a0);
                            a1 = $fmadd($loadu(q.add((i + 1) * d + j)), k, a1);
                            a2 = $fmadd($loadu(q.add((i + 2) * d + j)), k, a2);
                            a3 = $fmadd($loadu(q.add((i + 3) * d + j)), k, a3);
                            j += $lanes;
                        }
                        out[i * rows + r] = $reduce(a0) + tail(i, r);
                        out[(i + 1) * rows + r] = $reduce(a1) + tail(i + 1, r);
                        out[(i + 2) * rows + r] = $reduce(a2) + tail(i + 2, r);
                        out[(i + 3) * rows + r] = $reduce(a3) + tail(i + 3, r);
                        i += 4;
                    }
                    while i < b {
                        let (mut a0, mut a1, mut a2, mut a3) = ($zero(), $zero(), $zero(), $zero());
                        let mut j = 0;
                        while j + 4 * $lanes <= body {
                            a0 = $fmadd($loadu(q.add(i * d + j)), key(j), a0);
                            a1 = $fmadd($loadu(q.add(i * d + j + $lanes)), key(j + $lanes), a1);
                            a2 = $fmadd(
                                $loadu(q.add(i * d + j + 2 * $lanes)),
                                key(j + 2 * $lanes),
                                a2,
                            );
                            a3 = $fmadd(
                                $loadu(q.add(i * d + j + 3 * $lanes)),
                                key(j + 3 * $lanes),
                                a3,
                            );
                            j += 4 * $lanes;
                        }
                        while j < body {
                            a0 = $fmadd($loadu(q.add(i * d + j)), key(j), a0);
                            j += $lanes;
                        }
                        out[i * rows + r] = $reduce($add($add(a0, a1), $add(a2, a3))) + tail(i, r);
                        i += 1;
                    }
                }
            }
        };
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum_avx512(values: &[f32]) -> f32 {
        super::sum_wide(values)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum_avx2(values: &[f32]) -> f32 {
        super::sum_wide(values)
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn load_f16_512(p: *const half::f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn reduce_512(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16_256(p: *const half::f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn reduce_256(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
    }

    kernel!(
        scores_avx512,
        "avx512f",
        16,
        __m512,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        load_f16_512,
        reduce_512
    );
    kernel!(
        scores_avx2,
        "avx2,fma,f16c",
        8,
        __m256,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        load_f16_256,
        reduce_256
    );
}

/// The sum of `values`, read as fast as the CPU allows (the widest vectors it has, many
/// independent accumulators): what the benchmarks take as the memory's read bandwidth.
pub fn read_sum(values: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { x86::sum_avx512(values) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { x86::sum_avx2(values) };
        }
    }
    sum_wide(values)
}

/// 64 independent lanes of sums; with a target feature enabled the compiler maps them onto
/// the widest vectors.
#[inline(always)]
fn sum_wide(values: &[f32]) -> f32 {
    let mut acc = [0f32; 64];
    let mut chunks = values.chunks_exact(64);
    for chunk in chunks.by_ref() {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_sum_adds_everything() {
        let values: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        let exact: f32 = values.iter().sum();
        assert_eq!(read_sum(&values), exact);
        assert_eq!(sum_wide(&values), exact);
    }

    #[test]
    fn every_kernel_matches_the_scalar_dot() {
        let mut rng = crate::rng::SplitMix64::new(4);
        for (b, d, rows) in [(1, 384, 7), (3, 16, 5), (5, 37, 4), (9, 8, 3), (2, 1, 2)] {
            let queries: Vec<f32> = (0..b * d).map(|_| rng.gaussian()).collect();
            let keys: Vec<f32> = (0..rows * d).map(|_| rng.gaussian()).collect();
            let halves: Vec<f16> = keys.iter().map(|&x| f16::from_f32(x)).collect();
            let widened: Vec<f32> = halves.iter().map(|x| x.to_f32()).collect();
            for (keys, reference) in [(Keys::F32(&keys), &keys), (Keys::F16(&halves), &widened)] {
                let mut fast = vec![0f32; b * rows];
                let mut slow = vec![0f32; b * rows];
                scores(&queries, b, keys, d, &mut fast);
                scores_portable(&queries, b, keys, d, &mut slow);
                for i in 0..b {
                    for r in 0..rows {
                        let exact: f64 = (0..d)
                            .map(|t| {
                                f64::from(queries[i * d + t]) * f64::from(reference[r * d + t])
                            })
                            .sum();
                        for got in [fast[i * rows + r], slow[i * rows + r]] {
                            assert!(
                                (f64::from(got) - exact).abs() < 1e-4 * (d as f64).sqrt(),
                                "b {b} d {d} row {r} query {i}: {got} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }
}
