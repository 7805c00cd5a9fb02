//! The CUDA top-k of `kernels/topk.cu`, step for step on the CPU, so its logic (radix passes of
//! 12-bit and narrower digits on 32- and 16-bit keys, the grouped walk to the k-th key, threshold
//! ties, compaction offsets, the bitonic network's index arithmetic) is tested here
//! against a plain sort, on machines without a GPU. Each function names the kernel it mirrors;
//! thread-level parallelism becomes loops in thread order, which the kernels' results do not
//! depend on.

use super::{DIGITS_16, DIGITS_32};

/// `ordered` in the kernel: f32 bits onto u32, preserving `f32::total_cmp`.
pub(crate) fn ordered(x: f32) -> u32 {
    let u = x.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

fn before(a: (u32, u32), b: (u32, u32)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// `bitonic_sort`: the same compare-exchange network over a power-of-two length.
fn bitonic_sort(items: &mut [(u32, u32)]) {
    let len = items.len();
    debug_assert!(len.is_power_of_two());
    let mut size = 2;
    while size <= len {
        let mut stride = size / 2;
        while stride > 0 {
            for t in 0..len / 2 {
                let i = 2 * t - (t & (stride - 1));
                let j = i + stride;
                let forward = i & size == 0;
                let swap = if forward {
                    before(items[j], items[i])
                } else {
                    before(items[i], items[j])
                };
                if swap {
                    items.swap(i, j);
                }
            }
            stride /= 2;
        }
        size *= 2;
    }
}

/// `memrl_topk_small` and `memrl_topk_sort`: pad to a power of two and sort.
fn sort_first_k(mut items: Vec<(u32, u32)>, k: usize) -> Vec<u32> {
    let len = items.len().next_power_of_two();
    items.resize(len, (0, u32::MAX));
    bitonic_sort(&mut items);
    items[..k].iter().map(|p| p.1).collect()
}

#[derive(Clone, Copy)]
struct RowState {
    prefix: u32,
    mask: u32,
    remaining: u32,
}

/// `ordered` for f16 and bf16 bit patterns: 16-bit keys.
pub(crate) fn ordered16(u: u16) -> u32 {
    if u & 0x8000 != 0 {
        u32::from(!u)
    } else {
        u32::from(u | 0x8000)
    }
}

/// The whole launch sequence for one row of keys (`ordered` or `ordered16` of the scores, with
/// their `digits`): histograms per `hist_chunk` columns, counts and gather per `chunk`.
/// `1 <= k <= min(keys.len(), 1024)`.
pub(crate) fn topk_keys(
    keys: &[u32],
    digits: &[(u32, u32)],
    k: usize,
    (hist_chunk, chunk): (usize, usize),
    small_max: usize,
) -> Vec<u32> {
    let n = keys.len();
    if n <= small_max {
        let items = keys
            .iter()
            .enumerate()
            .map(|(i, &key)| (key, i as u32))
            .collect();
        return sort_first_k(items, k);
    }
    let mut st = RowState {
        prefix: 0,
        mask: 0,
        remaining: k as u32,
    };
    for &(shift, bits) in digits {
        let nbins = 1usize << bits;
        // memrl_topk_histogram, summed over the histogram chunks by memrl_topk_select
        let mut total = vec![0u32; nbins];
        for part in keys.chunks(hist_chunk) {
            for &key in part {
                if key & st.mask == st.prefix {
                    total[((key >> shift) as usize) & (nbins - 1)] += 1;
                }
            }
        }
        // memrl_topk_select: down by groups of 16 bins, then bins.
        let mut need = st.remaining;
        let mut digit = 0;
        for g in (0..nbins / 16).rev() {
            let group: u32 = total[16 * g..16 * g + 16].iter().sum();
            if group < need {
                need -= group;
                continue;
            }
            for d in (16 * g..16 * g + 16).rev() {
                if total[d] >= need {
                    digit = d;
                    break;
                }
                need -= total[d];
            }
            break;
        }
        st.prefix |= (digit as u32) << shift;
        st.mask |= ((nbins - 1) as u32) << shift;
        st.remaining = need;
    }
    // memrl_topk_count
    let counts: Vec<(u32, u32)> = keys
        .chunks(chunk)
        .map(|part| {
            part.iter().fold((0, 0), |(g, e), &key| {
                (g + (key > st.prefix) as u32, e + (key == st.prefix) as u32)
            })
        })
        .collect();
    // memrl_topk_offsets (exclusive prefix sums)
    let mut offsets = Vec::with_capacity(counts.len());
    let mut acc = (0u32, 0u32);
    for c in &counts {
        offsets.push(acc);
        acc = (acc.0 + c.0, acc.1 + c.1);
    }
    // memrl_topk_gather
    let greater_total = k as u32 - st.remaining;
    let mut cand = vec![(0u32, u32::MAX); k];
    for (c, &(mut at_g, mut at_e)) in offsets.iter().enumerate() {
        if at_g >= greater_total && at_e >= st.remaining {
            continue;
        }
        let first = c * chunk;
        for (i, &key) in keys
            .iter()
            .enumerate()
            .take((first + chunk).min(n))
            .skip(first)
        {
            if key > st.prefix {
                if at_g < greater_total {
                    cand[at_g as usize] = (key, i as u32);
                }
                at_g += 1;
            } else if key == st.prefix {
                if at_e < st.remaining {
                    cand[(greater_total + at_e) as usize] = (key, i as u32);
                }
                at_e += 1;
            }
        }
    }
    // memrl_topk_sort
    sort_first_k(cand, k)
}

/// [`topk_keys`] on f32 scores.
pub(crate) fn topk_row(row: &[f32], k: usize, chunk: usize, small_max: usize) -> Vec<u32> {
    let keys: Vec<u32> = row.iter().map(|&v| ordered(v)).collect();
    topk_keys(&keys, DIGITS_32, k, (4 * chunk, chunk), small_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::topk::tests::reference;
    use proptest::prelude::*;

    #[test]
    fn ordered_preserves_total_order() {
        let mut v = vec![
            f32::NEG_INFINITY,
            -1.0,
            -0.5,
            -0.0,
            0.0,
            1e-30,
            0.5,
            1.0,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
        ];
        v.sort_by(|a, b| a.total_cmp(b));
        for w in v.windows(2) {
            assert!(ordered(w[0]) < ordered(w[1]), "{} {}", w[0], w[1]);
        }
    }

    #[test]
    fn ordered16_preserves_f16_order() {
        let mut v: Vec<half::f16> = [-65504.0f32, -1.0, -0.0, 0.0, 1e-7, 0.5, 65504.0]
            .iter()
            .map(|&x| half::f16::from_f32(x))
            .chain([half::f16::NEG_INFINITY, half::f16::INFINITY])
            .collect();
        v.sort_by(|a, b| a.to_f32().total_cmp(&b.to_f32()));
        for w in v.windows(2) {
            assert!(
                ordered16(w[0].to_bits()) < ordered16(w[1].to_bits()),
                "{} {}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn all_equal_rows_take_the_lowest_columns() {
        let row = vec![0.25f32; 5000];
        assert_eq!(topk_row(&row, 7, 256, 1024), (0..7).collect::<Vec<u32>>());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn mirror_equals_a_full_sort(
            levels in prop_oneof![Just(3u32), Just(50), Just(1 << 20)],
            values in prop::collection::vec(0u32..1 << 20, 1..6000),
            k_frac in 0.0f64..1.0,
            chunk in prop_oneof![Just(256usize), Just(1000), Just(8192)],
            specials in prop::collection::vec((0usize..6000, 0u8..4), 0..8),
        ) {
            let mut row: Vec<f32> = values.iter().map(|&v| (v % levels) as f32 / levels as f32 - 0.5).collect();
            for (at, kind) in specials {
                let n = row.len();
                row[at % n] = [f32::NEG_INFINITY, f32::INFINITY, -0.0, 0.0][kind as usize];
            }
            let k = 1 + ((row.len().min(1024) - 1) as f64 * k_frac) as usize;
            prop_assert_eq!(topk_row(&row, k, chunk, 1024), reference(&row, k));
            prop_assert_eq!(topk_row(&row, k, chunk, 0), reference(&row, k));
            // The same row as f16 scores: 16-bit keys, two passes; f16 -> f32 keeps the order.
            let halves: Vec<half::f16> = row.iter().map(|&v| half::f16::from_f32(v)).collect();
            let widened: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
            let keys: Vec<u32> = halves.iter().map(|h| ordered16(h.to_bits())).collect();
            prop_assert_eq!(topk_keys(&keys, DIGITS_16, k, (chunk, chunk), 0), reference(&widened, k));
        }
    }
}
