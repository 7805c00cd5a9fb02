//! The tensor path against the scalar reference of the spec (tests/common).

mod common;

use common::{assert_hits_match, assert_same_hits, dyadic_unit, random_unit, RefBank, Rng};
use memrl::{Bank, BankConfig, KeyDType, NewMemory, RetrievalConfig, ZSim};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    dtype: KeyDType,
    dedup_sim: f32,
    /// (pattern of the intent vector, Q) per memory; patterns repeat to create shared intents.
    memories: Vec<(u64, f32)>,
    queries: Vec<u64>,
    cfg: RetrievalConfig,
    batch_size: usize,
}

fn case() -> impl Strategy<Value = Case> {
    let q_value = prop_oneof![(-16i32..=16).prop_map(|k| k as f32 / 16.0), Just(0.0f32),];
    let memories = (0usize..40, 1u64..30).prop_flat_map(move |(n, patterns)| {
        prop::collection::vec((0..patterns, q_value.clone()), n)
    });
    let cfg = (
        1usize..15,
        1usize..10,
        prop::sample::select(vec![-1.0f32, -0.25, 0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.5]),
        prop::sample::select(vec![0.0f32, 0.25, 0.5, 0.75, 1.0]),
        prop::bool::ANY,
        (prop::sample::select(vec![3.0f32, 1.0]), prop::bool::ANY),
        prop::option::of(prop::sample::select(vec![-0.5f32, 0.0, 0.25])),
        (
            prop::sample::select(vec![0.0f32, 0.0, 0.5, 1.0]),
            prop::option::of(prop::sample::select(vec![0.05f32, 0.3, 2.0])),
        ),
        any::<u64>(),
    )
        .prop_map(
            |(
                k1,
                k2,
                delta,
                lambda,
                fixed,
                (z_clip, clip_zsim),
                q_min,
                (epsilon, sim_margin),
                seed,
            )| {
                RetrievalConfig {
                    k1,
                    k2,
                    delta,
                    lambda,
                    zsim: if fixed {
                        ZSim::Fixed {
                            mean: 0.1,
                            std: 0.3,
                        }
                    } else {
                        ZSim::Pool
                    },
                    z_clip,
                    clip_zsim,
                    thompson: 0.0,
                    ucb: 0.0,
                    q_min,
                    epsilon,
                    seed,
                    sim_margin,
                }
            },
        );
    (
        prop::sample::select(vec![KeyDType::F32, KeyDType::F32, KeyDType::F16]),
        prop::sample::select(vec![0.9f32, 1.0]),
        memories,
        prop::collection::vec(0u64..40, 1..5),
        cfg,
        1usize..8,
        prop::bool::ANY,
    )
        .prop_map(
            |(dtype, dedup_sim, memories, queries, cfg, batch_size, all_equal_q)| Case {
                dtype,
                dedup_sim,
                memories: if all_equal_q {
                    memories.into_iter().map(|(p, _)| (p, 0.25)).collect()
                } else {
                    memories
                },
                queries,
                cfg,
                batch_size,
            },
        )
}

fn build(case: &Case) -> (Bank, RefBank) {
    let mut config = BankConfig::new(16, "dyadic");
    config.dtype = case.dtype;
    config.dedup_sim = case.dedup_sim;
    let bank = common::bank(config);
    let mut reference = RefBank::new(case.dedup_sim);
    let mut batch = Vec::new();
    for (i, &(pattern, q)) in case.memories.iter().enumerate() {
        let id = 1000 - 7 * i as u64; // ids not in insertion order, so id ties are meaningful
        let embedding = dyadic_unit(pattern);
        reference.add(id, &embedding, q, &format!("exp {id}"));
        batch.push(NewMemory {
            id: Some(id),
            intent: format!("intent {pattern}"),
            embedding: Some(embedding),
            experience: format!("exp {id}"),
            q: Some(q),
            ..Default::default()
        });
        if batch.len() == case.batch_size {
            bank.add_many(std::mem::take(&mut batch)).unwrap();
        }
    }
    bank.add_many(batch).unwrap();
    bank.debug_check().unwrap();
    (bank, reference)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn tensor_path_matches_the_scalar_reference(case in case()) {
        let (bank, reference) = build(&case);
        prop_assert_eq!(bank.num_intents(), reference.keys.len());
        let queries: Vec<Vec<f32>> = case.queries.iter().map(|&p| dyadic_unit(p)).collect();
        let ours = common::hits(&bank, &queries, &case.cfg);
        prop_assert_eq!(ours.len(), queries.len());
        for (i, q) in queries.iter().enumerate() {
            let (all, want) = reference.retrieve_one(q, i, &case.cfg);
            let exploring = case.cfg.epsilon > 0.0 && {
                let mut rng = Rng::for_item(case.cfg.seed, i as u64);
                rng.unit_f64() < case.cfg.epsilon as f64
            };
            let ctx = format!("query {i} of {case:?}");
            if exploring {
                assert_hits_match(&ours[i], &all, &want, 1e-5, true, &ctx);
            } else {
                // Exact inputs: the very same memories in the very same order, ties included.
                assert_same_hits(&ours[i], &want, 1e-5, &ctx);
            }
            for h in &ours[i] {
                prop_assert_eq!(&h.experience, &format!("exp {}", h.id));
            }
        }
        // The same queries inside a batch large enough for the CPU's tiled path (beyond the
        // fused loop's few queries) give the same hits: dyadic vectors make every sum exact.
        let many: Vec<Vec<f32>> = queries.iter().cycle().take(queries.len() * 8 + 9).cloned().collect();
        let tiled = common::hits(&bank, &many, &case.cfg);
        prop_assert_eq!(&tiled[..queries.len()], &ours[..]);
    }
}

#[test]
fn exact_ties_follow_similarity_then_id() {
    // Five memories with the same intent direction (no sharing) and the same Q: every score ties,
    // so the order must be by id ascending; one more key with a lower similarity comes after.
    let mut config = BankConfig::new(2, "ties");
    config.dedup_sim = 1.0;
    let bank = common::bank(config);
    for id in [50u64, 10, 40, 20, 30] {
        bank.add(NewMemory {
            id: Some(id),
            embedding: Some(vec![1.0, 0.0]),
            ..Default::default()
        })
        .unwrap();
    }
    bank.add(NewMemory {
        id: Some(1),
        embedding: Some(vec![0.8, 0.6]),
        ..Default::default()
    })
    .unwrap();
    let cfg = RetrievalConfig {
        k1: 10,
        k2: 6,
        delta: 0.0,
        ..Default::default()
    };
    let hits = common::hits(&bank, &[vec![1.0, 0.0]], &cfg);
    let ids: Vec<u64> = hits[0].iter().map(|h| h.id).collect();
    assert_eq!(ids, vec![10, 20, 30, 40, 50, 1]);
    // k1 cuts equal-similarity keys by row (creation order): the first two created win.
    let cfg = RetrievalConfig {
        k1: 2,
        k2: 6,
        delta: 0.0,
        ..Default::default()
    };
    let ids: Vec<u64> = common::hits(&bank, &[vec![1.0, 0.0]], &cfg)[0]
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, vec![10, 50]);
}

#[test]
fn edge_cases_of_the_pool() {
    let bank = common::bank(BankConfig::new(2, "edge"));
    let cfg = RetrievalConfig::default();
    // Empty bank: no hits, not an error.
    assert_eq!(common::hits(&bank, &[vec![1.0, 0.0]], &cfg), vec![vec![]]);
    let a = bank
        .add(NewMemory {
            embedding: Some(vec![1.0, 0.0]),
            q: Some(0.7),
            ..Default::default()
        })
        .unwrap();
    // Pool of one: std taken as 1, z-scores 0, score 0.
    let hits = common::hits(&bank, &[vec![1.0, 0.1]], &cfg);
    assert_eq!(hits[0].len(), 1);
    assert_eq!(
        (
            hits[0][0].id,
            hits[0][0].zsim,
            hits[0][0].zq,
            hits[0][0].score
        ),
        (a, 0.0, 0.0, 0.0)
    );
    // Nothing above delta.
    assert!(common::hits(&bank, &[vec![0.0, 1.0]], &cfg)[0].is_empty());
    // q_min filters everything.
    let strict = RetrievalConfig {
        q_min: Some(0.9),
        ..cfg.clone()
    };
    assert!(common::hits(&bank, &[vec![1.0, 0.0]], &strict)[0].is_empty());
    // An empty batch of queries.
    assert!(common::hits(&bank, &[], &cfg).is_empty());
}

#[test]
fn utility_reorders_lookalikes() {
    // A close look-alike with low Q wins on similarity alone (lambda 0) and loses once utility
    // weighs more (lambda 0.75): the point of the whole engine. In a pool of two both z-scores
    // are +-1, so at lambda 0.5 the scores tie exactly and the tie rule (higher similarity) picks
    // the look-alike.
    let bank = common::bank(BankConfig::new(2, "toy"));
    let lookalike = bank
        .add(NewMemory {
            embedding: Some(vec![1.0, 0.05]),
            q: Some(-0.9),
            ..Default::default()
        })
        .unwrap();
    let helpful = bank
        .add(NewMemory {
            embedding: Some(vec![1.0, 0.6]),
            q: Some(0.9),
            ..Default::default()
        })
        .unwrap();
    let query = vec![vec![1.0, 0.0]];
    let top = |lambda: f32| {
        let cfg = RetrievalConfig {
            k2: 1,
            lambda,
            ..Default::default()
        };
        common::hits(&bank, &query, &cfg)[0][0].id
    };
    assert_eq!(top(0.0), lookalike);
    assert_eq!(top(0.5), lookalike);
    assert_eq!(top(0.75), helpful);
    assert_eq!(top(1.0), helpful);
}

#[test]
fn random_vectors_large_bank_agree_with_the_reference_across_tiles() {
    // Real-valued vectors over more keys than one score tile holds for this batch, so the
    // running top-k merge across tiles is exercised. Similarities are not exact here, so the
    // tolerance is looser; ties have probability ~0.
    let dim = 24;
    let n = 9000;
    let b = 600; // 16 MiB / (4 * 600) rows per tile < n
    let mut rng = Rng(99);
    let mut config = BankConfig::new(dim, "random");
    config.dedup_sim = 1.0;
    let bank = common::bank(config);
    let mut reference = RefBank::new(1.0);
    let mut batch = Vec::new();
    for id in 0..n as u64 {
        let e = random_unit(&mut rng, dim);
        let q = (rng.unit_f64() * 2.0 - 1.0) as f32;
        reference.add(id, &e, q, "");
        batch.push(NewMemory {
            id: Some(id),
            embedding: Some(e),
            q: Some(q),
            ..Default::default()
        });
    }
    bank.add_many(batch).unwrap();
    let queries: Vec<Vec<f32>> = (0..b).map(|_| random_unit(&mut rng, dim)).collect();
    let cfg = RetrievalConfig {
        k1: 20,
        k2: 5,
        delta: 0.3,
        ..Default::default()
    };
    let ours = common::hits(&bank, &queries, &cfg);
    for i in (0..b).step_by(37) {
        let (all, want) = reference.retrieve_one(&queries[i], i, &cfg);
        assert_hits_match(&ours[i], &all, &want, 2e-4, false, &format!("query {i}"));
    }
    // A few queries take the fused CPU scan instead (chunks of keys in parallel, merged).
    let few = common::hits(&bank, &queries[..3], &cfg);
    for (i, hits) in few.iter().enumerate() {
        let (all, want) = reference.retrieve_one(&queries[i], i, &cfg);
        assert_hits_match(hits, &all, &want, 2e-4, false, &format!("fused query {i}"));
    }
}

#[test]
fn shared_intents_pool_every_member() {
    let bank = common::bank(BankConfig::new(3, "share"));
    let ids = bank
        .add_many(vec![
            NewMemory {
                embedding: Some(vec![1.0, 0.0, 0.0]),
                ..Default::default()
            },
            NewMemory {
                embedding: Some(vec![0.99, 0.05, 0.0]),
                ..Default::default()
            },
            NewMemory {
                embedding: Some(vec![0.0, 1.0, 0.0]),
                ..Default::default()
            },
        ])
        .unwrap();
    bank.add(NewMemory {
        embedding: Some(vec![1.0, 0.01, 0.0]),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(bank.num_intents(), 2);
    assert_eq!(bank.intent_members(ids[0]).unwrap().len(), 3);
    // k1 = 1 key, but the pool holds its three memories.
    let cfg = RetrievalConfig {
        k1: 1,
        k2: 10,
        ..Default::default()
    };
    assert_eq!(
        common::hits(&bank, &[vec![1.0, 0.0, 0.0]], &cfg)[0].len(),
        3
    );
    // Removing memories keeps the invariants; the key goes with its last memory.
    bank.remove(ids[0]).unwrap();
    bank.debug_check().unwrap();
    bank.remove(ids[2]).unwrap();
    bank.debug_check().unwrap();
    assert_eq!(bank.num_intents(), 1);
    assert_eq!(
        common::hits(&bank, &[vec![1.0, 0.0, 0.0]], &cfg)[0].len(),
        2
    );
}

#[test]
fn removal_in_any_order_keeps_invariants() {
    let mut rng = Rng(5);
    let mut config = BankConfig::new(16, "remove");
    config.dedup_sim = 0.9;
    let bank = common::bank(config);
    let ids = bank
        .add_many(
            (0..200)
                .map(|i| NewMemory {
                    embedding: Some(dyadic_unit(i % 37)),
                    ..Default::default()
                })
                .collect(),
        )
        .unwrap();
    let mut live = ids.clone();
    while !live.is_empty() {
        let i = (rng.next_u64() % live.len() as u64) as usize;
        let id = live.swap_remove(i);
        assert_eq!(bank.remove(id).unwrap().id, id);
        bank.debug_check().unwrap();
        assert!(bank.get(id).is_none());
    }
    assert_eq!((bank.len(), bank.num_intents()), (0, 0));
}

/// A bank of one memory per entry `(id, intent pattern, Q)` (no intent sharing), and its
/// reference.
fn flat_bank(memories: &[(u64, u64, f32)], dedup_sim: f32) -> (Bank, RefBank) {
    let mut config = BankConfig::new(16, "dyadic");
    config.dedup_sim = dedup_sim;
    let bank = common::bank(config);
    let mut reference = RefBank::new(dedup_sim);
    for &(id, pattern, q) in memories {
        let embedding = dyadic_unit(pattern);
        reference.add(id, &embedding, q, &format!("exp {id}"));
        bank.add(
            NewMemory::new(format!("intent {pattern}"), format!("exp {id}"))
                .id(id)
                .embedding(embedding)
                .q(q),
        )
        .unwrap();
    }
    (bank, reference)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Pools built so that every score ties in real arithmetic: Q = c - k * sim exactly (dyadic
    /// similarities, k a power of two), so at lambda 0.5 zq = -zsim and every score is 0. The
    /// order must be the tie rule's alone (similarity desc, then id asc), for any k2, and the
    /// reference must agree. Pools of at most 10 keep |z| <= 3, so clipping zq cannot break the
    /// tie; with clip_zsim both are clipped alike.
    #[test]
    fn exact_ties_in_real_arithmetic_follow_the_tie_rule(
        patterns in prop::collection::vec(0u64..60, 2..=10),
        query in 0u64..60,
        c in prop::sample::select(vec![-1.0f32, -0.5, 0.0, 0.5]),
        k in prop::sample::select(vec![0.5f32, 1.0, 2.0]),
        k2 in 1usize..12,
        clip_zsim in prop::bool::ANY,
        id_seed in any::<u64>(),
    ) {
        let query_vec = dyadic_unit(query);
        let mut rng = Rng(id_seed);
        let mut memories = Vec::new();
        let mut want: Vec<(f64, u64)> = Vec::new();
        for (i, &pattern) in patterns.iter().enumerate() {
            let id = (rng.next_u64() % 1000) * 16 + i as u64; // distinct, not in insertion order
            let sim = dot(&query_vec, &dyadic_unit(pattern)) as f32;
            memories.push((id, pattern, c - k * sim));
            want.push((sim as f64, id));
        }
        want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let want: Vec<u64> = want.into_iter().take(k2).map(|(_, id)| id).collect();
        let (bank, reference) = flat_bank(&memories, 1.0);
        let cfg = RetrievalConfig {
            k1: 64,
            k2,
            delta: -1.0,
            lambda: 0.5,
            clip_zsim,
            ..RetrievalConfig::default()
        };
        let ours = common::hits(&bank, std::slice::from_ref(&query_vec), &cfg);
        let ids: Vec<u64> = ours[0].iter().map(|h| h.id).collect();
        prop_assert_eq!(&ids, &want, "{:?}", ours[0]);
        let (_, reference_hits) = reference.retrieve_one(&query_vec, 0, &cfg);
        let reference_ids: Vec<u64> = reference_hits.iter().map(|h| h.id).collect();
        prop_assert_eq!(&reference_ids, &want);
        for h in &ours[0] {
            prop_assert!(h.score.abs() < 1e-6, "{:?}", h);
        }
    }

    /// In any pool of two at lambda 0.5 the closer memory comes first, whatever the Q: with the
    /// lower Q both scores are exactly 0 (z = +-1 twice), otherwise it leads on both figures.
    /// Real-valued vectors, so the similarities carry rounding of their own.
    #[test]
    fn a_pool_of_two_at_lambda_half_puts_the_closer_memory_first(
        seed in any::<u64>(),
        equal_q in prop::bool::ANY,
    ) {
        let mut rng = Rng(seed);
        let dim = 8;
        let mut config = BankConfig::new(dim, "random");
        config.dedup_sim = 1.0;
        let bank = common::bank(config);
        for id in [3u64, 1] {
            let q = if equal_q { 0.25 } else { rng.gaussian() };
            bank.add(NewMemory::new("", "").id(id).embedding(random_unit(&mut rng, dim)).q(q))
                .unwrap();
        }
        let query = random_unit(&mut rng, dim);
        let cfg = RetrievalConfig { k2: 2, delta: -1.0, ..RetrievalConfig::default() };
        let hits = &common::hits(&bank, &[query], &cfg)[0];
        prop_assert_eq!(hits.len(), 2);
        let (a, b) = (&hits[0], &hits[1]);
        prop_assert!(a.sim > b.sim || (a.sim == b.sim && a.id < b.id), "{:?}", hits);
    }

    /// Pools larger than k1, where |zsim| > 3: m >= 11 memories share one intent key and one more
    /// has a key of its own, so with k1 = 2 the pool is m + 1 and the lone memory's zsim is
    /// +-sqrt(m). zsim is not clipped (the spec) unless clip_zsim asks; both against the
    /// reference, exactly.
    #[test]
    fn pools_larger_than_k1_with_zsim_beyond_three_match_the_reference(
        shared in 0u64..60,
        lone in 0u64..60,
        query in 0u64..60,
        qs in prop::collection::vec((-16i32..=16).prop_map(|k| k as f32 / 16.0), 11..30),
        lone_q in (-16i32..=16).prop_map(|k| k as f32 / 16.0),
        lambda in prop::sample::select(vec![0.0f32, 0.25, 0.5, 0.75, 1.0]),
        k2 in 1usize..8,
        clip_zsim in prop::bool::ANY,
    ) {
        let (a, o, q) = (dyadic_unit(shared), dyadic_unit(lone), dyadic_unit(query));
        prop_assume!(dot(&a, &o) < 0.9 && dot(&q, &a) != dot(&q, &o));
        let mut memories: Vec<(u64, u64, f32)> = qs
            .iter()
            .enumerate()
            .map(|(i, &q)| (500 - i as u64, shared, q))
            .collect();
        memories.push((7, lone, lone_q));
        let (bank, reference) = flat_bank(&memories, 0.9);
        prop_assert_eq!(bank.num_intents(), 2);
        let cfg = RetrievalConfig {
            k1: 2,
            k2,
            delta: -1.0,
            lambda,
            clip_zsim,
            ..RetrievalConfig::default()
        };
        let (all, want) = reference.retrieve_one(&q, 0, &cfg);
        let lone_z = all.iter().find(|h| h.id == 7).unwrap().zsim;
        if clip_zsim {
            prop_assert_eq!(lone_z.abs(), 3.0);
        } else {
            prop_assert!((lone_z.abs() - (qs.len() as f64).sqrt()).abs() < 1e-9, "{lone_z}");
        }
        let ours = common::hits(&bank, std::slice::from_ref(&q), &cfg);
        assert_same_hits(&ours[0], &want, 1e-5, &format!("{cfg:?}"));
    }
}

#[test]
fn clipping_zsim_changes_the_pick_in_a_pool_of_twenty() {
    // 19 memories under one key and one under a closer key: the lone memory's zsim is
    // sqrt(19) = 4.36. One of the 19 has the pool's best Q (zq sqrt(19), clipped to 3). The
    // spec (zsim unclipped) returns the lone memory; clipping zsim at 3 as well returns the
    // other.
    let mut config = BankConfig::new(2, "twenty");
    config.dedup_sim = 0.9;
    let bank = common::bank(config);
    for id in 0..19u64 {
        let q = if id == 5 { 1.0 } else { 0.0 };
        bank.add(NewMemory::new("", "").id(id).embedding(vec![1.0, 0.0]).q(q))
            .unwrap();
    }
    bank.add(
        NewMemory::new("", "")
            .id(99)
            .embedding(vec![0.0, 1.0])
            .q(-0.0625),
    )
    .unwrap();
    assert_eq!(bank.num_intents(), 2);
    let query = vec![vec![0.6, 0.8]];
    let cfg = RetrievalConfig {
        k1: 2,
        k2: 1,
        delta: -1.0,
        ..RetrievalConfig::default()
    };
    let top = &common::hits(&bank, &query, &cfg)[0][0];
    assert_eq!(top.id, 99, "{top:?}");
    assert!((top.zsim - 19f32.sqrt()).abs() < 1e-5, "{top:?}");
    let clipped = RetrievalConfig {
        clip_zsim: true,
        ..cfg
    };
    let top = &common::hits(&bank, &query, &clipped)[0][0];
    assert_eq!((top.id, top.zq), (5, 3.0), "{top:?}");
}
