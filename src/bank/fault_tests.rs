//! Every I/O step of every write fails in turn, and the call's result tells the truth.
//!
//! For each kind of write on a durable bank (whose checkpoint policy rewrites the snapshot
//! after every write, so each write runs the checkpoint's steps too), the write runs once with
//! the fault plan only recording its I/O steps (`crate::fault`), then again from the same state
//! for every step: once with that step failing, once with it and every later step failing (a
//! disk that died). After each run:
//! - `Ok` means durable: the bank in memory and the bank read back from its files both hold the
//!   write;
//! - an error means not applied: memory and files both hold the bank as it was before;
//! - [`Error::OutcomeUnknown`] (a failure after the record may have reached the file, whose
//!   undoing failed too) means the files hold the bank before or after the write, and the bank
//!   refuses writes until it is reopened.
//!
//! Then one more write runs without faults: whatever it answers must be what the files say,
//! and the bank must reopen for writing with exactly what the files hold.

use std::path::Path;

use super::*;
use crate::fault::{self, Fail};
use crate::store::NewMemory;
use crate::wal::SyncPolicy;

/// A memory's state, without its timestamps (a rerun of the same write differs in those).
type MemoryState = (u64, u32, u64, Option<u32>, String, String, bool);
type State = (Vec<MemoryState>, RetrievalConfig, LearningConfig, u64);

fn state(bank: &Bank) -> State {
    let memories = bank
        .memories()
        .into_iter()
        .map(|m| {
            (
                m.id,
                m.q.to_bits(),
                m.visits,
                m.last_reward.map(f32::to_bits),
                m.intent,
                m.experience,
                m.success,
            )
        })
        .collect();
    (
        memories,
        bank.retrieval_config(),
        bank.learning_config(),
        bank.next_id(),
    )
}

fn memory(id: u64, v: [f32; 3]) -> NewMemory {
    NewMemory::new(format!("intent {id}"), format!("experience {id}"))
        .id(id)
        .embedding(v.to_vec())
}

/// A bank of three memories whose every write is followed by a checkpoint.
fn setup(dir: &Path, sync: SyncPolicy) -> Bank {
    let path = dir.join("bank.safetensors");
    let bank = Bank::options()
        .dim(3)
        .model_id("toy")
        .sync(sync)
        .checkpoint(CheckpointPolicy::LogBytes(0))
        .open(&path)
        .unwrap();
    bank.add_many(vec![
        memory(0, [1.0, 0.0, 0.0]),
        memory(1, [0.0, 1.0, 0.0]),
        memory(2, [0.0, 0.0, 1.0]),
    ])
    .unwrap();
    bank.apply_outcomes(&[Outcome {
        memory_ids: vec![0],
        reward: 1.0,
    }])
    .unwrap();
    bank
}

fn on_disk(bank: &Bank) -> State {
    let path = bank.path().unwrap();
    state(&Bank::options().read_only(true).open(path).unwrap())
}

/// A write to fail: its name, and a closure that prepares it (outside the fault plan) and
/// returns what to run under it.
type Prepare = fn(&Bank) -> Box<dyn FnOnce(&Bank) -> Result<()>>;

fn writes() -> Vec<(&'static str, Prepare)> {
    vec![
        ("add", |_| {
            Box::new(|b| b.add(memory(7, [1.0, 1.0, 0.0])).map(drop))
        }),
        ("add_many", |_| {
            Box::new(|b| {
                b.add_many(vec![memory(8, [0.0, 1.0, 1.0]), memory(9, [1.0, 0.0, 1.0])])
                    .map(drop)
            })
        }),
        ("remove", |_| Box::new(|b| b.remove(1).map(drop))),
        ("apply_outcomes", |_| {
            Box::new(|b| {
                b.apply_outcomes(&[Outcome {
                    memory_ids: vec![0, 2],
                    reward: -1.0,
                }])
                .map(drop)
            })
        }),
        ("feedback", |bank| {
            let retrieval = bank.retrieve(&[vec![1.0, 0.1, 0.0]][..]).unwrap().remove(0);
            assert!(!retrieval.hits.is_empty());
            Box::new(move |b| b.feedback(retrieval.id, 0.5).map(drop))
        }),
        ("set_retrieval_config", |_| {
            Box::new(|b| {
                b.set_retrieval_config(RetrievalConfig {
                    k1: 7,
                    ..Default::default()
                })
            })
        }),
        ("set_learning_config", |_| {
            Box::new(|b| {
                b.set_learning_config(LearningConfig {
                    alpha: 0.5,
                    ..Default::default()
                })
            })
        }),
        ("bulk", |_| {
            Box::new(|b| {
                b.bulk(|load| load.add_many(vec![memory(11, [0.5, 0.5, 0.0])]))
                    .map(drop)
            })
        }),
        ("checkpoint", |_| Box::new(|b| b.checkpoint())),
    ]
}

fn check_write(name: &str, prepare: Prepare, sync: SyncPolicy) {
    // The write's steps and its result, without faults.
    let dir = tempfile::tempdir().unwrap();
    let bank = setup(dir.path(), sync);
    let before = state(&bank);
    let write = prepare(&bank);
    let armed = fault::arm(Fail::Never);
    write(&bank).unwrap();
    let steps = armed.trace();
    let after = state(&bank);
    assert_eq!(on_disk(&bank), after, "{name}");
    assert!(
        name == "checkpoint" || before != after,
        "{name} changed nothing"
    );
    assert!(
        steps.iter().any(|s| s.starts_with("save.")),
        "{name}: no checkpoint ran ({steps:?})"
    );
    drop(bank);

    let mut outcomes = std::collections::BTreeMap::new();
    for (index, step) in steps.iter().enumerate() {
        for fail in [Fail::Step(index), Fail::From(index)] {
            let case = format!("{name} ({sync:?}), {fail:?} = {step}");
            let dir = tempfile::tempdir().unwrap();
            let bank = setup(dir.path(), sync);
            assert_eq!(state(&bank), before, "{case}: setup");
            let write = prepare(&bank);
            let armed = fault::arm(fail);
            let result = write(&bank);
            drop(armed);
            let disk = on_disk(&bank);
            let verdict = match &result {
                Ok(()) => {
                    assert_eq!(
                        state(&bank),
                        after,
                        "{case}: Ok, but memory lacks the write"
                    );
                    assert_eq!(disk, after, "{case}: Ok, but the files lack the write");
                    "ok"
                }
                Err(Error::OutcomeUnknown { .. }) => {
                    assert!(
                        disk == before || disk == after,
                        "{case}: the files hold neither the bank before nor after the write"
                    );
                    "unknown"
                }
                Err(e) => {
                    assert_eq!(
                        state(&bank),
                        before,
                        "{case}: failed ({e}), but memory changed"
                    );
                    assert_eq!(disk, before, "{case}: failed ({e}), but the files changed");
                    "error"
                }
            };
            *outcomes.entry(verdict).or_insert(0) += 1;
            // One more write, without faults: its answer is what the files say.
            let next = bank.add(memory(100, [0.3, 0.3, 0.3]));
            let disk = on_disk(&bank);
            match &next {
                Ok(_) => {
                    assert!(disk.0.iter().any(|m| m.0 == 100), "{case}: next write lost");
                    assert_eq!(state(&bank), disk, "{case}: memory and files differ");
                }
                Err(e) => {
                    assert!(
                        !disk.0.iter().any(|m| m.0 == 100),
                        "{case}: next write failed ({e}) but is on disk"
                    );
                    assert!(
                        result.is_err() || bank.last_checkpoint_error().is_some(),
                        "{case}: a healthy bank refused a write: {e}"
                    );
                }
            }
            let path = bank.path().unwrap().to_path_buf();
            drop(bank);
            let reopened = Bank::open(&path).unwrap_or_else(|e| panic!("{case}: reopen: {e}"));
            assert_eq!(state(&reopened), disk, "{case}: reopened");
            reopened.debug_check().unwrap();
        }
    }
    // Each write has steps that fail it and steps (the checkpoint's after it) that must not.
    assert!(
        name == "checkpoint" || outcomes.contains_key("ok"),
        "{name}: {outcomes:?}"
    );
    assert!(outcomes.contains_key("error"), "{name}: {outcomes:?}");
}

#[test]
fn every_failed_io_step_is_reported_truthfully() {
    for (name, prepare) in writes() {
        check_write(name, prepare, SyncPolicy::EveryBatch);
    }
}

#[test]
fn every_failed_io_step_is_reported_truthfully_without_fsync() {
    for (name, prepare) in writes() {
        check_write(name, prepare, SyncPolicy::Never);
    }
}
