//! The promises of the README's table that hold across files and processes, each tested as a
//! class: readers racing checkpoints, logs bound to their bank, links, directories, ids at the
//! end of their range, finite values under any sequence of finite inputs, numeric settings at
//! their extremes. (Fault injection of every I/O step is a unit test: `src/bank/fault_tests.rs`;
//! the crash and stress tests are `tests/durability.rs`.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memrl::{Bank, BankConfig, CheckpointPolicy, Error, NewMemory, OpenOptions};
use proptest::prelude::*;

fn config() -> BankConfig {
    BankConfig::new(4, "toy")
}

fn writer() -> OpenOptions {
    Bank::options()
        .bank_config(config())
        .checkpoint(CheckpointPolicy::Manual)
}

fn reader(path: &Path) -> memrl::Result<Bank> {
    Bank::options().read_only(true).open(path)
}

fn log_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".wal");
    PathBuf::from(name)
}

fn memory(i: u64) -> NewMemory {
    let angle = i as f32 * 0.7;
    NewMemory::new(format!("intent {i}"), format!("experience {i}"))
        .id(i)
        .embedding(vec![angle.cos(), angle.sin(), 0.5, (i % 3) as f32])
}

/// A writer adds memories one at a time and checkpoints after each; readers open the bank over
/// and over meanwhile, and each must see every add acknowledged before it started. Before the
/// race was detected, a reader that read the old snapshot and then the just-emptied log missed
/// the records in between.
#[test]
fn readers_racing_checkpoints_see_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let bank = writer().open(&path).unwrap();
    // A few hundred memories make the snapshot big enough for its load to overlap checkpoints.
    bank.add_many((1000..1300).map(memory).collect()).unwrap();
    bank.checkpoint().unwrap();
    let acknowledged = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..300 {
                bank.add(memory(i)).unwrap();
                acknowledged.store(i + 1, Ordering::SeqCst);
                bank.checkpoint().unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(Ordering::SeqCst) {
                    let seen = acknowledged.load(Ordering::SeqCst);
                    let view = reader(&path).unwrap();
                    for id in 0..seen {
                        assert!(
                            view.contains(id),
                            "a reader started after add {id} was acknowledged and does not see it (log_seq {})",
                            view.log_seq()
                        );
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert!(reads.load(Ordering::Relaxed) > 10, "the readers barely ran");
    assert_eq!(reader(&path).unwrap().len(), 600);
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A log is bound to its bank's identity: another bank's log, or the log of an earlier bank at
/// the same path, is refused by readers and writers alike, and nothing is changed.
#[test]
fn a_log_of_another_bank_or_an_earlier_one_is_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    for (path, ids) in [(&a, 0..3), (&b, 10..12)] {
        let bank = writer().open(path).unwrap();
        bank.add_many(ids.map(memory).collect()).unwrap();
    }
    // The same shape, the same model: only the identity tells the logs apart.
    std::fs::copy(log_path(&a), log_path(&b)).unwrap();
    let log = std::fs::read(log_path(&b)).unwrap();
    for result in [reader(&b), Bank::open(&b)] {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Log { .. }), "{err}");
        assert!(err.to_string().contains("bank id"), "{err}");
    }
    assert_eq!(std::fs::read(log_path(&b)).unwrap(), log);

    // An earlier bank at the same path: its log, put back beside the new bank, is refused.
    let stale = std::fs::read(log_path(&a)).unwrap();
    std::fs::remove_file(&a).unwrap();
    std::fs::remove_file(log_path(&a)).unwrap();
    let bank = writer().open(&a).unwrap();
    bank.add(memory(5)).unwrap();
    drop(bank);
    std::fs::write(log_path(&a), &stale).unwrap();
    assert!(reader(&a).unwrap_err().to_string().contains("bank id"));

    // A copy is a new bank: the original's log is not its log.
    let c = dir.path().join("c.safetensors");
    let original = writer().open(&c).unwrap();
    original.add(memory(20)).unwrap();
    let copy = dir.path().join("copy.safetensors");
    original.save_as(&copy).unwrap();
    assert!(reader(&copy).unwrap().contains(20));
    std::fs::copy(log_path(&c), log_path(&copy)).unwrap();
    assert!(reader(&copy).unwrap_err().to_string().contains("bank id"));
}

/// A bank reached through a symbolic link and through its target is one bank: one log, one
/// lock, and a checkpoint replaces the target's file, never the link.
#[cfg(unix)]
#[test]
fn a_bank_through_a_link_is_the_bank_it_links_to() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("real");
    std::fs::create_dir(&real_dir).unwrap();
    let target = real_dir.join("bank.safetensors");
    let link = dir.path().join("link.safetensors");
    let bank = writer().open(&target).unwrap();
    bank.add(memory(1)).unwrap();
    symlink(&target, &link).unwrap();
    // Writers through the link and through the target exclude each other.
    assert!(matches!(Bank::open(&link), Err(Error::Locked { .. })));
    drop(bank);
    let through_link = Bank::open(&link).unwrap();
    assert_eq!(
        through_link.path(),
        Some(target.canonicalize().unwrap().as_path())
    );
    assert!(matches!(Bank::open(&target), Err(Error::Locked { .. })));
    // Its writes go to the target's log and are seen through the target.
    through_link.add(memory(2)).unwrap();
    assert!(!log_path(&link).exists());
    assert!(reader(&target).unwrap().contains(2));
    // A checkpoint through the link replaces the target.
    through_link.checkpoint().unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    drop(through_link);
    let view = reader(&target).unwrap();
    assert_eq!((view.len(), view.recovery().replayed), (2, 0));
    assert_eq!(files_in(dir.path()), ["link.safetensors", "real"]);
    // A dangling link names the file to create.
    let dangling = dir.path().join("new.safetensors");
    symlink(real_dir.join("new.safetensors"), &dangling).unwrap();
    let created = writer().open(&dangling).unwrap();
    created.add(memory(3)).unwrap();
    created.checkpoint().unwrap();
    drop(created);
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(reader(&real_dir.join("new.safetensors"))
        .unwrap()
        .contains(3));
    assert_eq!(
        files_in(&real_dir),
        [
            "bank.safetensors",
            "bank.safetensors.wal",
            "new.safetensors",
            "new.safetensors.wal"
        ]
    );
}

/// A folder is not a bank: every way of opening one is refused and nothing is created, in it
/// or beside it.
#[test]
fn a_directory_is_refused_as_a_bank_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let attempts = [
        writer().open(&folder).map(drop),
        Bank::open(&folder).map(drop),
        Bank::create(&folder, config()).map(drop),
        reader(&folder).map(drop),
        Bank::peek_config(&folder).map(drop),
        Bank::in_memory(config()).unwrap().save_as(&folder),
    ];
    for result in attempts {
        let err = result.unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }
    assert_eq!(files_in(dir.path()), ["folder"]);
    assert!(files_in(&folder).is_empty());
}

/// A memory with id `u64::MAX` does not end automatic ids, in memory, after a replay of the
/// log, and after a snapshot.
#[test]
fn automatic_ids_go_on_past_the_largest_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let auto = |i: u64| {
        let mut m = memory(i);
        m.id = None;
        m
    };
    let bank = writer().open(&path).unwrap();
    bank.add(memory(u64::MAX)).unwrap();
    assert_eq!(bank.add_many(vec![auto(1), auto(2)]).unwrap(), vec![0, 1]);
    bank.add(memory(u64::MAX - 1)).unwrap();
    assert_eq!(bank.add(auto(3)).unwrap(), 2);
    drop(bank);
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.recovery().replayed, 4);
    assert_eq!(bank.add(auto(4)).unwrap(), 3);
    bank.checkpoint().unwrap();
    drop(bank);
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.add(auto(5)).unwrap(), 4);
    assert_eq!(bank.len(), 7);
}

/// The ids of one outcome batch count against `Limits::max_batch` in total, however they are
/// spread over outcomes: a batch over it is refused whole, before anything is logged.
#[test]
fn the_ids_of_an_outcome_batch_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let limits = memrl::Limits {
        max_batch: 10,
        ..Default::default()
    };
    let bank = writer().limits(limits).open(&path).unwrap();
    bank.add_many((0..3).map(memory).collect()).unwrap();
    let log = bank.log_bytes();
    let outcome = |n: usize| memrl::Outcome {
        memory_ids: (0..n as u64).map(|i| i % 3).collect(),
        reward: 1.0,
    };
    for batch in [vec![outcome(11)], vec![outcome(6), outcome(5)]] {
        let err = bank.apply_outcomes(&batch).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LimitExceeded {
                    limit: 10,
                    got: 11,
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(bank.log_bytes(), log);
    assert!(bank.apply_outcomes(&[outcome(10)]).is_ok());
    // The default limit holds for a single huge outcome too.
    let big = Bank::in_memory(config()).unwrap();
    big.add(memory(0)).unwrap();
    let err = big
        .apply_outcomes(&[memrl::Outcome {
            memory_ids: vec![0; (1 << 20) + 1],
            reward: 1.0,
        }])
        .unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
}

/// Finite numbers for the property below: anywhere in f32's range, with its edges (the largest
/// magnitudes, the smallest normals and subnormals) drawn often.
fn finite() -> impl Strategy<Value = f32> {
    prop_oneof![
        -2.0f32..2.0,
        Just(f32::MAX),
        Just(-f32::MAX),
        Just(3e38f32),
        Just(-3e38f32),
        Just(f32::MIN_POSITIVE),
        Just(-1e-45f32),
        any::<f32>().prop_filter("finite", |v| v.is_finite()),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Add {
        q: Option<f32>,
    },
    Outcome {
        picks: Vec<usize>,
        reward: f32,
    },
    Learning {
        alpha: f32,
        q_init: f32,
        range: Option<(f32, f32, bool)>,
        baseline_rate: Option<f32>,
        q_init_failure: Option<f32>,
    },
    Checkpoint,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::option::of(finite()).prop_map(|q| Op::Add { q }),
        5 => (prop::collection::vec(0usize..8, 0..6), finite())
            .prop_map(|(picks, reward)| Op::Outcome { picks, reward }),
        1 => (
            prop_oneof![Just(1.0f32), Just(f32::MIN_POSITIVE), 0.001f32..=1.0],
            finite(),
            prop::option::of((finite(), finite(), any::<bool>())),
            prop::option::of(prop_oneof![Just(1.0f32), Just(f32::MIN_POSITIVE), 0.001f32..=1.0]),
            prop::option::of(finite()),
        )
            .prop_map(|(alpha, q_init, range, baseline_rate, q_init_failure)| Op::Learning {
                alpha,
                q_init,
                range,
                baseline_rate,
                q_init_failure,
            }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// No sequence of finite inputs (initial Qs, rewards, learning rates, q_init, q_init_failure,
    /// baseline rates and reward ranges anywhere in f32's range) stores a non-finite value: after
    /// every call every memory's Q, last reward and baseline are finite, and every snapshot
    /// written loads again. A call
    /// that would overflow is refused whole.
    #[test]
    fn no_sequence_of_finite_inputs_stores_a_non_finite_value(ops in prop::collection::vec(op(), 1..24)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.safetensors");
        let mut bank = writer().open(&path).unwrap();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Add { q } => {
                    let mut m = memory(next);
                    m.q = q;
                    if bank.add(m).is_ok() {
                        next += 1;
                    }
                }
                Op::Outcome { picks, reward } => {
                    let ids: Vec<u64> = bank.memories().iter().map(|m| m.id).collect();
                    if !ids.is_empty() {
                        let memory_ids = picks.iter().map(|&p| ids[p % ids.len()]).collect();
                        let _ = bank.apply_outcomes(&[memrl::Outcome { memory_ids, reward }]);
                    }
                }
                Op::Learning { alpha, q_init, range, baseline_rate, q_init_failure } => {
                    let reward_range = range.map(|(a, b, clamp)| memrl::RewardRange {
                        min: a.min(b),
                        max: a.max(b),
                        out_of_range: if clamp { memrl::OutOfRange::Clamp } else { memrl::OutOfRange::Reject },
                    });
                    let _ = bank.set_learning_config(memrl::LearningConfig {
                        alpha,
                        q_init,
                        reward_range,
                        baseline_rate,
                        q_init_failure,
                    });
                }
                Op::Checkpoint => bank.checkpoint().unwrap(),
                Op::Reopen => {
                    drop(bank);
                    bank = Bank::open(&path).unwrap();
                }
            }
            for m in bank.memories() {
                prop_assert!(m.q.is_finite(), "memory {} has Q {}", m.id, m.q);
                prop_assert!(m.last_reward.is_none_or(f32::is_finite), "memory {}: {:?}", m.id, m.last_reward);
                prop_assert!(m.baseline.is_none_or(f32::is_finite), "memory {}: baseline {:?}", m.id, m.baseline);
            }
        }
        bank.checkpoint().unwrap();
        drop(bank);
        let reopened = reader(&path).unwrap();
        reopened.debug_check().unwrap();
        prop_assert!(reopened.memories().iter().all(|m| m.q.is_finite()));
        prop_assert!(reopened.memories().iter().all(|m| m.baseline.is_none_or(f32::is_finite)));
    }
}

/// Values at the edges of each numeric type, for the test below.
const FLOATS: [f32; 13] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    2.0,
    f32::MIN_POSITIVE,
    1e-45,
    f32::MAX,
    f32::MIN,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
];
const COUNTS: [usize; 8] = [
    0,
    1,
    2,
    1 << 20,
    (1 << 20) + 1,
    1 << 32,
    usize::MAX - 1,
    usize::MAX,
];

/// Runs `f`, turning a panic into an error naming `case`.
fn no_panic<T>(case: &str, f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| panic!("{case}: panicked"))
}

/// Every numeric setting at its extremes (0, 1, the largest values, NaN, the infinities,
/// negatives) either works or is a clear error naming it, and nothing panics, aborts or
/// allocates from the number: retrieval configs through retrieve and set, learning configs
/// through outcomes, bank configs and limits through creation and adds.
#[test]
fn every_numeric_setting_at_its_extremes_is_accepted_or_refused_cleanly() {
    use memrl::{LearningConfig, Limits, RetrievalConfig, ZSim};
    let bank = Bank::in_memory(config()).unwrap();
    bank.add_many((0..40).map(memory).collect()).unwrap();
    let queries = [vec![1.0, 0.2, 0.5, 0.0], vec![0.0, 1.0, 0.5, 2.0]];
    let check_retrieval = |case: String, cfg: RetrievalConfig| {
        let valid = cfg.validate();
        let result = no_panic(&case, || bank.retrieve_with(&queries[..], &cfg));
        match (&valid, &result) {
            (Ok(()), Ok(retrievals)) => {
                for r in retrievals {
                    assert!(r.hits.len() <= cfg.k2, "{case}");
                    for h in &r.hits {
                        let figures = [h.sim, h.zsim, h.zq, h.score, h.q];
                        assert!(figures.iter().all(|v| v.is_finite()), "{case}: {h:?}");
                    }
                }
            }
            (Err(e), Err(_)) => {
                assert!(matches!(e, Error::InvalidConfig { .. }), "{case}: {e}");
            }
            _ => panic!("{case}: validate says {valid:?}, retrieve says {result:?}"),
        }
        let stored = no_panic(&case, || bank.set_retrieval_config(cfg.clone()));
        assert_eq!(stored.is_ok(), valid.is_ok(), "{case}");
    };
    for &k in &COUNTS {
        check_retrieval(
            format!("k1 = {k}"),
            RetrievalConfig {
                k1: k,
                ..Default::default()
            },
        );
        check_retrieval(
            format!("k2 = {k}"),
            RetrievalConfig {
                k2: k,
                ..Default::default()
            },
        );
    }
    for &v in &FLOATS {
        let d = RetrievalConfig::default;
        check_retrieval(format!("delta = {v}"), RetrievalConfig { delta: v, ..d() });
        check_retrieval(
            format!("lambda = {v}"),
            RetrievalConfig { lambda: v, ..d() },
        );
        check_retrieval(
            format!("z_clip = {v}"),
            RetrievalConfig { z_clip: v, ..d() },
        );
        check_retrieval(
            format!("epsilon = {v}"),
            RetrievalConfig { epsilon: v, ..d() },
        );
        check_retrieval(
            format!("thompson = {v}"),
            RetrievalConfig { thompson: v, ..d() },
        );
        check_retrieval(format!("ucb = {v}"), RetrievalConfig { ucb: v, ..d() });
        check_retrieval(
            format!("q_min = {v}"),
            RetrievalConfig {
                q_min: Some(v),
                ..d()
            },
        );
        for &w in &FLOATS {
            for lambda in [0.0, 0.5, 1.0] {
                check_retrieval(
                    format!("zsim = fixed({v}, {w}), lambda {lambda}"),
                    RetrievalConfig {
                        zsim: ZSim::Fixed { mean: v, std: w },
                        lambda,
                        delta: -1.0,
                        ..d()
                    },
                );
            }
        }
    }
    for seed in [0, 1, u64::MAX] {
        check_retrieval(
            format!("seed = {seed}"),
            RetrievalConfig {
                seed,
                epsilon: 0.5,
                ..Default::default()
            },
        );
    }

    // Learning: every config, then outcomes with every reward.
    for &alpha in &FLOATS {
        for &q_init in &FLOATS {
            let cfg = LearningConfig {
                alpha,
                q_init,
                ..Default::default()
            };
            let case = format!("alpha = {alpha}, q_init = {q_init}");
            let valid = cfg.validate().is_ok();
            assert_eq!(
                no_panic(&case, || bank.set_learning_config(cfg)).is_ok(),
                valid,
                "{case}"
            );
        }
    }
    // Baseline-corrected credit and the failure prior, with every reward.
    for &rate in &FLOATS {
        for &q_init_failure in &FLOATS {
            let cfg = LearningConfig {
                baseline_rate: Some(rate),
                q_init_failure: Some(q_init_failure),
                ..Default::default()
            };
            let case = format!("baseline_rate = {rate}, q_init_failure = {q_init_failure}");
            let valid = cfg.validate().is_ok();
            assert_eq!(
                no_panic(&case, || bank.set_learning_config(cfg)).is_ok(),
                valid,
                "{case}"
            );
            if !valid {
                continue;
            }
            for &reward in &FLOATS {
                let case = format!("{case}, reward {reward}");
                let _ = no_panic(&case, || {
                    bank.apply_outcomes(&[memrl::Outcome {
                        memory_ids: vec![0, 1, 2],
                        reward,
                    }])
                });
                assert!(
                    bank.memories()
                        .iter()
                        .all(|m| m.q.is_finite() && m.baseline.is_none_or(f32::is_finite)),
                    "{case}"
                );
            }
        }
    }
    bank.set_learning_config(LearningConfig::default()).unwrap();
    for &min in &FLOATS {
        for &max in &FLOATS {
            let range = memrl::RewardRange {
                min,
                max,
                out_of_range: memrl::OutOfRange::Clamp,
            };
            let cfg = LearningConfig {
                reward_range: Some(range),
                ..Default::default()
            };
            let _ = no_panic("reward range", || bank.set_learning_config(cfg));
            for &reward in &FLOATS {
                let case = format!("range [{min}, {max}], reward {reward}");
                let _ = no_panic(&case, || {
                    bank.apply_outcomes(&[memrl::Outcome {
                        memory_ids: vec![0, 1],
                        reward,
                    }])
                });
                assert!(bank.memories().iter().all(|m| m.q.is_finite()), "{case}");
            }
        }
    }
    for &q in &FLOATS {
        let case = format!("initial q = {q}");
        let mut m = memory(1000);
        m.q = Some(q);
        let added = no_panic(&case, || bank.add(m));
        assert_eq!(added.is_ok(), q.is_finite(), "{case}");
        if added.is_ok() {
            bank.remove(1000).unwrap();
        }
    }

    // Bank configs and limits: creation, then an add and a retrieval.
    for &dedup_sim in &FLOATS {
        let case = format!("dedup_sim = {dedup_sim}");
        let cfg = BankConfig {
            dedup_sim,
            ..config()
        };
        let valid = cfg.validate().is_ok();
        assert_eq!(valid, dedup_sim >= 0.0, "{case}");
        match no_panic(&case, || Bank::in_memory(cfg)) {
            Ok(b) => {
                b.add_many(vec![memory(1), memory(2)]).unwrap();
                let shared = b.num_intents() == 1;
                assert!(!shared || dedup_sim < 1.0, "{case}");
            }
            Err(e) => assert!(!valid && e.to_string().contains("dedup_sim"), "{case}: {e}"),
        }
    }
    for &dim in &[0, 1, 1 << 16, (1 << 16) + 1, usize::MAX] {
        let case = format!("dim = {dim}");
        let result = no_panic(&case, || Bank::in_memory(BankConfig::new(dim, "toy")));
        assert_eq!(result.is_ok(), (1..=1 << 16).contains(&dim), "{case}");
    }
    // Durable-bank settings: sync intervals and checkpoint thresholds at their ends.
    let dir = tempfile::tempdir().unwrap();
    for (i, sync) in [
        memrl::SyncPolicy::Interval(std::time::Duration::ZERO),
        memrl::SyncPolicy::Interval(std::time::Duration::MAX),
        memrl::SyncPolicy::Interval(std::time::Duration::from_nanos(1)),
    ]
    .into_iter()
    .enumerate()
    {
        for checkpoint in [
            CheckpointPolicy::LogBytes(0),
            CheckpointPolicy::LogBytes(u64::MAX),
        ] {
            let case = format!("{sync:?} {checkpoint:?}");
            let path = dir.path().join(format!("{i}-{checkpoint:?}.safetensors"));
            let opened = no_panic(&case, || {
                writer().sync(sync).checkpoint(checkpoint).open(&path)
            });
            let Ok(b) = opened else {
                assert_eq!(i, 0, "{case}");
                continue;
            };
            b.add(memory(1)).unwrap();
            drop(b);
            assert!(reader(&path).unwrap().contains(1), "{case}");
        }
    }
    for &n in &COUNTS {
        for limits in [
            Limits {
                max_batch: n,
                ..Default::default()
            },
            Limits {
                max_text_bytes: n,
                ..Default::default()
            },
            Limits {
                max_memories: n,
                ..Default::default()
            },
        ] {
            let case = format!("{limits:?}");
            let opened = no_panic(&case, || {
                Bank::options()
                    .bank_config(config())
                    .limits(limits)
                    .in_memory()
            });
            let Ok(b) = opened else { continue };
            let _ = no_panic(&case, || b.add_many(vec![memory(1), memory(2)]));
            let _ = no_panic(&case, || b.retrieve(&queries[..]));
        }
    }
}
