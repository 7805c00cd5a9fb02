//! Runtime utility learning: `Q <- Q + alpha (r - Q)` for every memory injected in an episode.
//!
//! This module only plans: it validates a whole batch of outcomes and computes the new state of
//! every touched memory without changing anything. The bank logs the plan and then commits it,
//! which is what makes a batch all-or-nothing and its replay exact. A memory named several times
//! in one batch is updated in arrival order (spec: "the updates apply in arrival order").
//!
//! With [`LearningConfig::baseline_rate`] set, the reward is replaced by its advantage over a
//! baseline learned per intent key (see that field); the default is the paper's rule, computed
//! by the same code as before, bit for bit.
//!
//! No finite input may make a stored value non-finite: an update whose result overflows f32
//! (a Q of 3e38 rewarded -3e38) rejects the whole batch.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::{LearningConfig, OutOfRange};
use crate::error::{Error, Result};
use crate::index::KeyId;
use crate::store::MemoryUpdate;

/// The result of one episode: the memories that were injected and the reward it earned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Ids of every memory given to the agent in the episode. May be empty (an episode run
    /// without memory): it is counted and changes nothing.
    pub memory_ids: Vec<u64>,
    /// The environment's reward (the authors use +1 success, -1 failure). Must be finite.
    pub reward: f32,
}

/// What a batch of outcomes changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeReport {
    /// Outcomes applied.
    pub outcomes: usize,
    /// Q updates applied (one per (outcome, memory) pair).
    pub updates: usize,
    /// Distinct memories touched.
    pub memories: usize,
    /// Rewards that were clamped into the configured range.
    pub clamped: usize,
    /// Memories of a retrieval that were removed before its feedback arrived (feedback by
    /// retrieval id only): skipped, the rest updated.
    pub skipped: usize,
}

/// One step of the update rule. With alpha 0 (MemP) Q is returned exactly as it was, even where
/// `reward - q` would overflow.
#[inline]
pub fn update_q(q: f32, reward: f32, alpha: f32) -> f32 {
    if alpha == 0.0 {
        return q;
    }
    q + alpha * (reward - q)
}

/// How learning sees the bank's intent keys: which key a memory is filed under, and the
/// memories under a key with their stored baselines (see
/// [`LearningConfig::baseline_rate`]). Only baseline-corrected credit asks.
pub(crate) trait KeyView {
    /// The key memory `id` is filed under, `None` if there is no such memory.
    fn key_of(&self, id: u64) -> Option<KeyId>;
    /// Every memory filed under `key`: id and stored baseline.
    fn members_of(&self, key: KeyId) -> Vec<(u64, Option<f32>)>;
}

/// What an outcome batch changes: the final state of every injected memory (first-touch
/// order) and, with baseline-corrected credit, the final baseline of every memory of every
/// touched key (keys in first-touch order, memories by id).
pub(crate) struct Planned {
    pub(crate) updates: Vec<MemoryUpdate>,
    pub(crate) baselines: Vec<(u64, f32)>,
    pub(crate) report: OutcomeReport,
}

/// Validates `outcomes` and computes the final state of every memory they touch, in first-touch
/// order. `lookup(id)` gives a memory's current Q and visits, or `None` if it does not exist;
/// `keys` is read only with baseline-corrected credit.
pub(crate) fn plan(
    outcomes: &[Outcome],
    config: &LearningConfig,
    lookup: impl Fn(u64) -> Option<(f32, u64)>,
    keys: &dyn KeyView,
) -> Result<Planned> {
    config.validate()?;
    let mut report = OutcomeReport {
        outcomes: outcomes.len(),
        ..Default::default()
    };
    let mut state: HashMap<u64, MemoryUpdate> = HashMap::new();
    let mut order: Vec<u64> = Vec::new();
    // Baseline-corrected credit: each touched key's baseline as the batch has left it so far
    // (`None`: the key has none yet), and the keys in first-touch order.
    let mut key_baseline: HashMap<KeyId, Option<f32>> = HashMap::new();
    let mut key_order: Vec<KeyId> = Vec::new();
    for (index, outcome) in outcomes.iter().enumerate() {
        let mut reward = outcome.reward;
        if !reward.is_finite() {
            return Err(Error::InvalidReward {
                outcome: index,
                reward,
                problem: "not a finite number",
            });
        }
        if let Some(range) = config.reward_range {
            if reward < range.min || reward > range.max {
                match range.out_of_range {
                    OutOfRange::Reject => {
                        return Err(Error::InvalidReward {
                            outcome: index,
                            reward,
                            problem: "outside the configured reward range",
                        })
                    }
                    OutOfRange::Clamp => {
                        reward = reward.clamp(range.min, range.max);
                        report.clamped += 1;
                    }
                }
            }
        }
        // The keys this outcome touches, with their baselines before it.
        let mut touched: Vec<(KeyId, Option<f32>)> = Vec::new();
        if let Some(rate) = config.baseline_rate {
            for &id in &outcome.memory_ids {
                let key = keys
                    .key_of(id)
                    .ok_or(Error::UnknownMemory { outcome: index, id })?;
                if touched.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                let before = *key_baseline.entry(key).or_insert_with(|| {
                    key_order.push(key);
                    stored_baseline(&keys.members_of(key))
                });
                touched.push((key, before));
            }
            for &(key, before) in &touched {
                let after = match before {
                    None => reward,
                    Some(b) => update_q(b, reward, rate),
                };
                if !after.is_finite() {
                    return Err(Error::InvalidReward {
                        outcome: index,
                        reward,
                        problem: "so far from a key's baseline that its update overflows",
                    });
                }
                key_baseline.insert(key, Some(after));
            }
        }
        for &id in &outcome.memory_ids {
            let entry = match state.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let (q, visits) =
                        lookup(id).ok_or(Error::UnknownMemory { outcome: index, id })?;
                    order.push(id);
                    e.insert(MemoryUpdate {
                        id,
                        q,
                        visits,
                        last_reward: reward,
                    })
                }
            };
            // The target: the reward, or with baseline-corrected credit its advantage over the
            // baseline of the memory's key before this outcome (none yet: no advantage).
            let target = if config.baseline_rate.is_some() {
                let before = keys
                    .key_of(id)
                    .and_then(|key| touched.iter().find(|(k, _)| *k == key))
                    .and_then(|(_, before)| *before);
                reward - before.unwrap_or(reward)
            } else {
                reward
            };
            let q = update_q(entry.q, target, config.alpha);
            if !q.is_finite() {
                return Err(Error::InvalidReward {
                    outcome: index,
                    reward,
                    problem: "so far from the memory's Q that the update overflows (Q would not be finite)",
                });
            }
            entry.q = q;
            entry.visits = entry.visits.saturating_add(1);
            entry.last_reward = reward;
            report.updates += 1;
        }
    }
    report.memories = order.len();
    let updates = order.iter().map(|id| state[id]).collect();
    let mut baselines = Vec::new();
    for key in key_order {
        if let Some(Some(b)) = key_baseline.get(&key) {
            let mut members = keys.members_of(key);
            members.sort_unstable_by_key(|(id, _)| *id);
            baselines.extend(members.into_iter().map(|(id, _)| (id, *b)));
        }
    }
    Ok(Planned {
        updates,
        baselines,
        report,
    })
}

/// A key's stored baseline: every memory of a key that has one holds the same value (an
/// outcome sets them all), so the one of the lowest id is taken, which does not depend on
/// the order of the members; `None` when no memory of the key has one yet.
fn stored_baseline(members: &[(u64, Option<f32>)]) -> Option<f32> {
    members
        .iter()
        .filter_map(|&(id, b)| b.map(|b| (id, b)))
        .min_by_key(|&(id, _)| id)
        .map(|(_, b)| b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(q: f32) -> impl Fn(u64) -> Option<(f32, u64)> {
        move |id| (id < 3).then_some((q, 0))
    }

    /// Memories 0, 1, 2, each under its own key, none with a baseline yet.
    struct OwnKeys;

    impl KeyView for OwnKeys {
        fn key_of(&self, id: u64) -> Option<KeyId> {
            (id < 3).then_some(KeyId(id))
        }
        fn members_of(&self, key: KeyId) -> Vec<(u64, Option<f32>)> {
            vec![(key.0, None)]
        }
    }

    fn plan(
        outcomes: &[Outcome],
        config: &LearningConfig,
        lookup: impl Fn(u64) -> Option<(f32, u64)>,
    ) -> Result<(Vec<MemoryUpdate>, OutcomeReport)> {
        super::plan(outcomes, config, lookup, &OwnKeys).map(|p| (p.updates, p.report))
    }

    #[test]
    fn repeated_ids_apply_in_arrival_order() {
        let cfg = LearningConfig {
            alpha: 0.5,
            ..Default::default()
        };
        let outcomes = [
            Outcome {
                memory_ids: vec![0, 1],
                reward: 1.0,
            },
            Outcome {
                memory_ids: vec![0],
                reward: -1.0,
            },
        ];
        let (updates, report) = plan(&outcomes, &cfg, one(0.0)).unwrap();
        // memory 0: 0 -> 0.5 -> -0.25 ; memory 1: 0 -> 0.5
        assert_eq!(updates[0].q, -0.25);
        assert_eq!(updates[0].visits, 2);
        assert_eq!(updates[0].last_reward, -1.0);
        assert_eq!(updates[1].q, 0.5);
        assert_eq!(
            report,
            OutcomeReport {
                outcomes: 2,
                updates: 3,
                memories: 2,
                clamped: 0,
                skipped: 0
            }
        );
    }

    #[test]
    fn bad_batches_are_rejected_whole() {
        let cfg = LearningConfig::default();
        let unknown = [
            Outcome {
                memory_ids: vec![0],
                reward: 1.0,
            },
            Outcome {
                memory_ids: vec![9],
                reward: 1.0,
            },
        ];
        assert!(matches!(
            plan(&unknown, &cfg, one(0.0)),
            Err(Error::UnknownMemory { outcome: 1, id: 9 })
        ));
        for r in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let bad = [Outcome {
                memory_ids: vec![0],
                reward: r,
            }];
            assert!(matches!(
                plan(&bad, &cfg, one(0.0)),
                Err(Error::InvalidReward { outcome: 0, .. })
            ));
        }
    }

    #[test]
    fn reward_range_clamps_or_rejects() {
        use crate::config::RewardRange;
        let mut cfg = LearningConfig {
            alpha: 1.0,
            reward_range: Some(RewardRange {
                min: -1.0,
                max: 1.0,
                out_of_range: OutOfRange::Clamp,
            }),
            ..Default::default()
        };
        let o = [Outcome {
            memory_ids: vec![0],
            reward: 5.0,
        }];
        let (updates, report) = plan(&o, &cfg, one(0.0)).unwrap();
        assert_eq!((updates[0].q, report.clamped), (1.0, 1));
        cfg.reward_range = Some(RewardRange {
            min: -1.0,
            max: 1.0,
            out_of_range: OutOfRange::Reject,
        });
        assert!(plan(&o, &cfg, one(0.0)).is_err());
    }

    /// Memories 0 and 1 under key 7 (memory 1 with a stale baseline the key's first outcome
    /// replaces), memory 2 under key 9.
    struct SharedKey;

    impl KeyView for SharedKey {
        fn key_of(&self, id: u64) -> Option<KeyId> {
            match id {
                0 | 1 => Some(KeyId(7)),
                2 => Some(KeyId(9)),
                _ => None,
            }
        }
        fn members_of(&self, key: KeyId) -> Vec<(u64, Option<f32>)> {
            match key.0 {
                7 => vec![(1, None), (0, None)],
                9 => vec![(2, None)],
                _ => Vec::new(),
            }
        }
    }

    #[test]
    fn baseline_credit_by_hand() {
        let cfg = LearningConfig {
            alpha: 0.5,
            baseline_rate: Some(0.25),
            ..Default::default()
        };
        let outcomes = [
            Outcome {
                memory_ids: vec![0],
                reward: 1.0,
            },
            Outcome {
                memory_ids: vec![0, 2],
                reward: -1.0,
            },
        ];
        let p = super::plan(&outcomes, &cfg, one(0.0), &SharedKey).unwrap();
        // Outcome 0: key 7 has no baseline, so no advantage (Q 0 -> 0) and B7 = 1.
        // Outcome 1: memory 0's advantage is -1 - 1 = -2, Q 0 -> -1; key 9 has none yet, so
        // memory 2's is 0; B7 = 1 + 0.25 (-1 - 1) = 0.5, B9 = -1.
        assert_eq!(p.updates[0].q, -1.0);
        assert_eq!(p.updates[0].visits, 2);
        assert_eq!(p.updates[1].q, 0.0);
        assert_eq!(p.updates[1].last_reward, -1.0);
        // Every memory of a touched key, the uninjected memory 1 included, by id.
        assert_eq!(p.baselines, vec![(0, 0.5), (1, 0.5), (2, -1.0)]);
        assert_eq!(p.report.updates, 3);
    }

    #[test]
    fn the_paper_rule_is_unchanged_and_writes_no_baseline() {
        // Without baseline_rate, the same outcomes give the paper's update, exactly.
        let cfg = LearningConfig {
            alpha: 0.5,
            ..Default::default()
        };
        let outcomes = [Outcome {
            memory_ids: vec![0, 2],
            reward: -1.0,
        }];
        let p = super::plan(&outcomes, &cfg, one(0.25), &SharedKey).unwrap();
        assert_eq!(p.updates[0].q, update_q(0.25, -1.0, 0.5));
        assert!(p.baselines.is_empty());
    }

    #[test]
    fn a_stored_baseline_is_read_whatever_the_order_of_members() {
        struct Stored;
        impl KeyView for Stored {
            fn key_of(&self, id: u64) -> Option<KeyId> {
                (id < 3).then_some(KeyId(1))
            }
            fn members_of(&self, _: KeyId) -> Vec<(u64, Option<f32>)> {
                // Memory 2 was added after the last outcome: no baseline yet.
                vec![(2, None), (1, Some(0.5)), (0, Some(0.5))]
            }
        }
        let cfg = LearningConfig {
            alpha: 1.0,
            baseline_rate: Some(1.0),
            ..Default::default()
        };
        let o = [Outcome {
            memory_ids: vec![2],
            reward: 1.0,
        }];
        let p = super::plan(&o, &cfg, one(0.0), &Stored).unwrap();
        assert_eq!(p.updates[0].q, 0.5, "advantage 1 - 0.5, alpha 1");
        assert_eq!(p.baselines, vec![(0, 1.0), (1, 1.0), (2, 1.0)]);
        // An advantage that overflows is refused, as the paper's update is.
        let huge = [Outcome {
            memory_ids: vec![2],
            reward: f32::MAX,
        }];
        struct Negative;
        impl KeyView for Negative {
            fn key_of(&self, _: u64) -> Option<KeyId> {
                Some(KeyId(1))
            }
            fn members_of(&self, _: KeyId) -> Vec<(u64, Option<f32>)> {
                vec![(0, Some(f32::MIN))]
            }
        }
        assert!(matches!(
            super::plan(&huge, &cfg, one(0.0), &Negative),
            Err(Error::InvalidReward { .. })
        ));
    }
}
