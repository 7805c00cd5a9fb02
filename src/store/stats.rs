//! What a bank holds, summarised: counts and the distribution of Q (`memrl inspect`).

use serde::{Deserialize, Serialize};

use super::Store;

/// Counts and Q telemetry of a bank; see [`crate::Bank::stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Memories held.
    pub memories: usize,
    /// Intent keys (rows of the key matrix).
    pub intents: usize,
    /// Intent keys that more than one memory is filed under.
    pub shared_intents: usize,
    /// min, 25th percentile, median, 75th percentile, max of Q (nearest rank); None when empty.
    pub q_quantiles: Option<[f32; 5]>,
    /// Memories with Q > 0, = 0 and < 0.
    pub q_signs: [usize; 3],
    /// Counts of Q in `bins` equal-width bins over [min, max] (all in the first when max = min).
    pub q_histogram: Vec<usize>,
    /// The memories of highest Q, best first: (id, Q).
    pub top: Vec<(u64, f32)>,
    /// The memories of lowest Q, worst first: (id, Q).
    pub bottom: Vec<(u64, f32)>,
}

impl Store {
    /// Counts, Q quantiles and signs, a `bins`-bin histogram of Q, and the `extremes` memories
    /// of highest and lowest Q (ties by lower id).
    pub(crate) fn stats(&self, bins: usize, extremes: usize) -> Stats {
        Stats::summarise(
            self.iter().map(|m| (m.id, m.q)).collect(),
            self.num_intents(),
            self.table().shared_keys(),
            bins,
            extremes,
        )
    }
}

impl Stats {
    /// The stats of memories given as (id, Q), with the key counts given: what
    /// [`crate::Bank::stats`] computes over one bank, and a sharded bank over all its shards'
    /// memories (each key lives on one shard, so key counts add up).
    pub(crate) fn summarise(
        mut by_q: Vec<(u64, f32)>,
        intents: usize,
        shared_intents: usize,
        bins: usize,
        extremes: usize,
    ) -> Stats {
        by_q.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let n = by_q.len();
        let mut ascending: Vec<f32> = by_q.iter().map(|p| p.1).collect();
        ascending.reverse();
        let rank = |p: f64| ascending[((p * (n - 1) as f64).round() as usize).min(n - 1)];
        let q_quantiles =
            (n > 0).then(|| [rank(0.0), rank(0.25), rank(0.5), rank(0.75), rank(1.0)]);
        let q_signs = [
            ascending.iter().filter(|&&q| q > 0.0).count(),
            ascending.iter().filter(|&&q| q == 0.0).count(),
            ascending.iter().filter(|&&q| q < 0.0).count(),
        ];
        let mut q_histogram = vec![0; bins.max(1)];
        if let Some([lo, .., hi]) = q_quantiles {
            let width = (hi - lo) / q_histogram.len() as f32;
            for &q in &ascending {
                let bin = if width > 0.0 {
                    (((q - lo) / width) as usize).min(q_histogram.len() - 1)
                } else {
                    0
                };
                q_histogram[bin] += 1;
            }
        }
        let top = by_q.iter().take(extremes).copied().collect();
        let mut bottom: Vec<(u64, f32)> = by_q.iter().rev().take(extremes).copied().collect();
        bottom.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        Stats {
            memories: n,
            intents,
            shared_intents,
            q_quantiles,
            q_signs,
            q_histogram,
            top,
            bottom,
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use crate::config::BankConfig;
    use crate::store::{NewMemory, Store};

    #[test]
    fn stats_count_quantiles_histogram_and_extremes() {
        let mut store = Store::new(BankConfig::new(2, "t"), 1, &Device::Cpu).unwrap();
        let qs = [-1.0f32, -0.5, 0.0, 0.0, 0.25, 0.5, 1.0];
        let memories = qs
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                // Memories 0 and 1 share an intent; the others point elsewhere.
                let embedding = if i < 2 {
                    vec![1.0, 0.0]
                } else {
                    vec![(i as f32).cos(), (i as f32).sin() + 2.0]
                };
                NewMemory::default().embedding(embedding).q(q)
            })
            .collect();
        let plan = store.plan_add(memories, 0).unwrap();
        store.apply_add(&plan).unwrap();
        let s = store.stats(4, 2);
        assert_eq!(s.memories, 7);
        assert!(s.shared_intents >= 1 && s.intents < 7, "{s:?}");
        // Nearest rank: index round(p * (n - 1)) of the sorted Q.
        assert_eq!(s.q_quantiles, Some([-1.0, 0.0, 0.0, 0.5, 1.0]));
        assert_eq!(s.q_signs, [3, 2, 2]);
        assert_eq!(s.q_histogram.iter().sum::<usize>(), 7);
        assert_eq!(s.q_histogram, vec![1, 1, 3, 2]);
        assert_eq!(s.top, vec![(6, 1.0), (5, 0.5)]);
        assert_eq!(s.bottom, vec![(0, -1.0), (1, -0.5)]);
        let empty = Store::new(BankConfig::new(2, "t"), 1, &Device::Cpu).unwrap();
        let s = empty.stats(4, 2);
        assert_eq!(
            (s.memories, s.q_quantiles, s.q_histogram.len()),
            (0, None, 4)
        );
    }
}
