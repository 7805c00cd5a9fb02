//! The update rule and the all-or-nothing contract of outcome batches.

mod common;

use common::{state, Rng};
use memrl::{Bank, BankConfig, Error, LearningConfig, NewMemory, Outcome};
use proptest::prelude::*;

fn bank_with(n: usize, q: f32) -> (Bank, Vec<u64>) {
    let mut config = BankConfig::new(2, "learn");
    config.dedup_sim = 1.0;
    let bank = common::bank(config);
    let ids = bank
        .add_many(
            (0..n)
                .map(|i| NewMemory {
                    embedding: Some(vec![1.0, i as f32]),
                    q: Some(q),
                    ..Default::default()
                })
                .collect(),
        )
        .unwrap();
    (bank, ids)
}

proptest! {
    #[test]
    fn after_t_identical_rewards_the_gap_shrinks_geometrically(
        alpha in 0.01f32..=1.0,
        reward in -2.0f32..2.0,
        q0 in -1.0f32..1.0,
        t in 0u32..60,
    ) {
        let (bank, ids) = bank_with(1, q0);
        bank.set_learning_config(LearningConfig { alpha, ..Default::default() }).unwrap();
        for _ in 0..t {
            bank.apply_outcomes(&[Outcome { memory_ids: ids.clone(), reward }]).unwrap();
        }
        let m = bank.get(ids[0]).unwrap();
        let expected = (1.0 - alpha as f64).powi(t as i32) * (q0 as f64 - reward as f64);
        prop_assert!(((m.q - reward) as f64 - expected).abs() <= 1e-6, "q {} expected gap {}", m.q, expected);
        prop_assert_eq!(m.visits, t as u64);
        prop_assert_eq!(m.last_reward, (t > 0).then_some(reward));
        bank.debug_check().unwrap();
    }
}

#[test]
fn bernoulli_rewards_drive_q_to_the_mean() {
    // Success with p = 0.7 (reward +1) else -1: mean reward 0.4. With a constant alpha Q is an
    // exponential average, so its time average converges to the mean.
    let (bank, ids) = bank_with(1, 0.0);
    bank.set_learning_config(LearningConfig {
        alpha: 0.05,
        ..Default::default()
    })
    .unwrap();
    let mut rng = Rng(11);
    let (mut sum, mut count) = (0.0f64, 0);
    for step in 0..20_000 {
        let reward = if rng.unit_f64() < 0.7 { 1.0 } else { -1.0 };
        bank.apply_outcomes(&[Outcome {
            memory_ids: ids.clone(),
            reward,
        }])
        .unwrap();
        if step >= 1_000 {
            sum += bank.get(ids[0]).unwrap().q as f64;
            count += 1;
        }
    }
    let mean_q = sum / count as f64;
    assert!((mean_q - 0.4).abs() < 0.03, "time-averaged Q {mean_q}");
}

#[test]
fn every_injected_memory_gets_the_reward_and_new_memories_start_at_q_init() {
    let mut config = BankConfig::new(2, "learn");
    config.dedup_sim = 1.0;
    let bank = common::bank(config);
    bank.set_learning_config(LearningConfig {
        alpha: 0.5,
        q_init: 0.25,
        ..Default::default()
    })
    .unwrap();
    let a = bank
        .add(NewMemory {
            embedding: Some(vec![1.0, 0.0]),
            ..Default::default()
        })
        .unwrap();
    let b = bank
        .add(NewMemory {
            embedding: Some(vec![0.0, 1.0]),
            success: false,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (bank.get(a).unwrap().q, bank.get(b).unwrap().q),
        (0.25, 0.25)
    );
    let report = bank
        .apply_outcomes(&[
            Outcome {
                memory_ids: vec![a, b],
                reward: -1.0,
            },
            Outcome {
                memory_ids: vec![a],
                reward: 1.0,
            },
        ])
        .unwrap();
    assert_eq!(
        (report.outcomes, report.updates, report.memories),
        (2, 3, 2)
    );
    // a: 0.25 -> -0.375 -> 0.3125 ; b: 0.25 -> -0.375
    assert_eq!(bank.get(a).unwrap().q, 0.3125);
    assert_eq!(bank.get(b).unwrap().q, -0.375);
    assert_eq!(bank.get(a).unwrap().visits, 2);
    bank.debug_check().unwrap();
}

#[test]
fn a_bad_batch_changes_nothing() {
    let (bank, ids) = bank_with(3, 0.0);
    bank.apply_outcomes(&[Outcome {
        memory_ids: vec![ids[0]],
        reward: 1.0,
    }])
    .unwrap();
    let before = state(&bank);
    let good = Outcome {
        memory_ids: vec![ids[1], ids[2]],
        reward: 1.0,
    };
    type Check = fn(&Error) -> bool;
    let cases: Vec<(Vec<Outcome>, Check)> = vec![
        (
            vec![
                good.clone(),
                Outcome {
                    memory_ids: vec![999],
                    reward: 1.0,
                },
            ],
            |e| {
                matches!(
                    e,
                    Error::UnknownMemory {
                        outcome: 1,
                        id: 999
                    }
                )
            },
        ),
        (
            vec![
                good.clone(),
                Outcome {
                    memory_ids: vec![ids[0]],
                    reward: f32::NAN,
                },
            ],
            |e| matches!(e, Error::InvalidReward { outcome: 1, .. }),
        ),
        (
            vec![
                good.clone(),
                Outcome {
                    memory_ids: vec![ids[0]],
                    reward: f32::INFINITY,
                },
            ],
            |e| matches!(e, Error::InvalidReward { outcome: 1, .. }),
        ),
    ];
    for (batch, is_expected) in cases {
        let err = bank.apply_outcomes(&batch).unwrap_err();
        assert!(is_expected(&err), "unexpected error: {err}");
        // Which outcome was at fault, for a caller to map to its own numbering.
        assert_eq!(err.batch_index(), Some(1), "{err}");
        assert_eq!(state(&bank), before, "the bank changed after: {err}");
        bank.debug_check().unwrap();
    }
    for alpha in [-0.1, 1.5, f32::NAN] {
        let err = bank
            .set_learning_config(LearningConfig {
                alpha,
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig { field: "alpha", .. }),
            "{err}"
        );
        assert_eq!(state(&bank), before);
    }
}

proptest! {
    /// MemP is alpha 0: outcomes are applied (visits, last reward) and every Q stays bit for bit
    /// where it was, whatever the rewards, including rewards so far from Q that `r - Q`
    /// overflows f32.
    #[test]
    fn alpha_zero_never_moves_q(
        q0 in prop::sample::select(vec![0.0f32, -0.0, 0.3, -1.0, 3e38, -3e38]),
        rewards in prop::collection::vec(prop::sample::select(vec![1.0f32, -1.0, 0.0, 3e38, -3e38, 1e-30]), 1..20),
    ) {
        let (bank, ids) = bank_with(2, q0);
        bank.set_learning_config(LearningConfig { alpha: 0.0, ..Default::default() }).unwrap();
        for &reward in &rewards {
            bank.apply_outcomes(&[Outcome { memory_ids: vec![ids[0]], reward }]).unwrap();
        }
        let m = bank.get(ids[0]).unwrap();
        prop_assert_eq!(m.q.to_bits(), q0.to_bits());
        prop_assert_eq!(m.visits, rewards.len() as u64);
        prop_assert_eq!(m.last_reward, rewards.last().copied());
        prop_assert_eq!(bank.get(ids[1]).unwrap().visits, 0);
    }
}

#[test]
fn a_learning_config_for_one_batch_leaves_the_stored_one() {
    let (bank, ids) = bank_with(2, 0.0);
    let stored = bank.learning_config();
    let once = LearningConfig {
        alpha: 0.5,
        reward_range: Some(memrl::RewardRange {
            min: -1.0,
            max: 1.0,
            out_of_range: memrl::OutOfRange::Clamp,
        }),
        ..Default::default()
    };
    let report = bank
        .apply_outcomes_with(
            &[Outcome {
                memory_ids: vec![ids[0]],
                reward: 3.0,
            }],
            &once,
        )
        .unwrap();
    assert_eq!(report.clamped, 1);
    assert_eq!(bank.get(ids[0]).unwrap().q, 0.5); // 0 + 0.5 * (clamp(3) - 0)
    assert_eq!(bank.learning_config(), stored);
    // By retrieval id, the same.
    let r = bank.retrieve(&[vec![1.0, 1.0]][..]).unwrap().remove(0);
    let injected: Vec<u64> = r.hits.iter().map(|h| h.id).collect();
    assert!(!injected.is_empty());
    let before: Vec<f32> = injected.iter().map(|&id| bank.get(id).unwrap().q).collect();
    let frozen = LearningConfig {
        alpha: 0.0,
        ..Default::default()
    };
    bank.feedback_many_with(&[(r.id, 1.0)], &frozen).unwrap();
    for (&id, q) in injected.iter().zip(before) {
        let m = bank.get(id).unwrap();
        assert_eq!((m.q, m.last_reward), (q, Some(1.0)));
    }
    // An invalid one-batch config is refused before anything changes.
    let bad = LearningConfig {
        alpha: 2.0,
        ..Default::default()
    };
    let before = state(&bank);
    let err = bank
        .apply_outcomes_with(
            &[Outcome {
                memory_ids: vec![ids[0]],
                reward: 1.0,
            }],
            &bad,
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfig { field: "alpha", .. }),
        "{err}"
    );
    assert_eq!(state(&bank), before);
}
