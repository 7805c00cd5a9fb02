//! The bank's concurrency contract: parallel retrievals while writes are applied whole.

use std::sync::Arc;
use std::thread;

mod common;

use memrl::internal::SplitMix64;
use memrl::{BankConfig, NewMemory, Outcome, RetrievalConfig};

#[test]
fn readers_and_writers_share_one_bank_without_lost_updates() {
    let dim = 16;
    let mut config = BankConfig::new(dim, "threads");
    config.dedup_sim = 1.0;
    let engine = Arc::new(common::bank(config));
    let mut rng = SplitMix64::new(3);
    let ids = engine
        .add_many(
            (0..500)
                .map(|_| NewMemory {
                    embedding: Some(rng.unit_vector(dim)),
                    ..Default::default()
                })
                .collect(),
        )
        .unwrap();
    let target = ids[0];
    let cfg = RetrievalConfig {
        delta: -1.0,
        ..Default::default()
    };

    let readers: Vec<_> = (0..4)
        .map(|t| {
            let engine = Arc::clone(&engine);
            let cfg = cfg.clone();
            thread::spawn(move || {
                let mut rng = SplitMix64::new(100 + t);
                for _ in 0..100 {
                    let queries: Vec<Vec<f32>> = (0..8).map(|_| rng.unit_vector(dim)).collect();
                    let hits = common::hits(&engine, &queries, &cfg);
                    assert_eq!(hits.len(), 8);
                    assert!(hits.iter().all(|h| h.len() == 5));
                }
            })
        })
        .collect();
    let writer = {
        let engine = Arc::clone(&engine);
        thread::spawn(move || {
            let mut rng = SplitMix64::new(7);
            for _ in 0..300 {
                engine
                    .apply_outcomes(&[Outcome {
                        memory_ids: vec![target],
                        reward: 1.0,
                    }])
                    .unwrap();
                engine
                    .add(NewMemory {
                        embedding: Some(rng.unit_vector(dim)),
                        ..Default::default()
                    })
                    .unwrap();
            }
        })
    };
    for r in readers {
        r.join().unwrap();
    }
    writer.join().unwrap();

    // Every update landed exactly once: Q after 300 rewards of 1 from 0 is 1 - 0.7^300.
    let m = engine.get(target).unwrap();
    assert_eq!(m.visits, 300);
    let mut expected = 0.0f32;
    for _ in 0..300 {
        expected = memrl::update_q(expected, 1.0, 0.3);
    }
    assert_eq!(m.q, expected);
    assert_eq!(engine.len(), 800);
    engine.debug_check().unwrap();
}
