use std::fs;
use std::time::Duration;

use candle_core::Device;

use super::*;
use crate::config::{BankConfig, OutOfRange, RewardRange};
use crate::index::KeyId;
use crate::snapshot::{self, LoadOptions};
use crate::store::{KeyChoice, Memory, MemoryUpdate, NewMemory, PlannedMemory};
use crate::{Bank, CheckpointPolicy, Error, OpenOptions};

fn memory(id: Option<u64>, v: [f32; 3], text: &str) -> NewMemory {
    NewMemory {
        id,
        intent: format!("intent {text}"),
        embedding: Some(v.to_vec()),
        experience: format!("experience {text}"),
        success: text.len().is_multiple_of(2),
        q: None,
        metadata: Some(serde_json::json!({ "text": text, "n": 1.25 })),
    }
}

fn config() -> BankConfig {
    BankConfig {
        dedup_sim: 0.95,
        ..BankConfig::new(3, "toy")
    }
}

/// A writer of a bank of `config()`, checkpointing only when told.
fn writer() -> OpenOptions {
    Bank::options()
        .bank_config(config())
        .checkpoint(CheckpointPolicy::Manual)
}

fn reader(path: &Path) -> Bank {
    Bank::options().read_only(true).open(path).unwrap()
}

/// Every kind of record, through a bank, so the log holds one of each.
fn mutate(engine: &Bank) {
    let ids = engine
        .add_many(vec![
            memory(None, [1.0, 0.0, 0.0], "a"),
            memory(Some(10), [0.0, 1.0, 0.0], "bb"),
            // Shares the key of the first memory of the batch.
            memory(None, [1.0, 0.01, 0.0], "c"),
        ])
        .unwrap();
    assert_eq!(ids, vec![0, 10, 1]);
    // Shares the key of a memory already in the bank.
    assert_eq!(
        engine.add(memory(None, [0.0, 1.0, 0.001], "dd")).unwrap(),
        11
    );
    engine
        .apply_outcomes(&[
            Outcome {
                memory_ids: vec![0, 10],
                reward: 1.0,
            },
            Outcome {
                memory_ids: vec![10],
                reward: -1.0,
            },
        ])
        .unwrap();
    engine
        .set_learning_config(LearningConfig {
            alpha: 0.5,
            q_init: 0.25,
            reward_range: Some(RewardRange {
                min: -1.0,
                max: 1.0,
                out_of_range: OutOfRange::Clamp,
            }),
            // Baseline-corrected credit from here on: the next outcome's record carries the
            // baselines of both keys it touches (memories 0 and 10 too, not injected).
            baseline_rate: Some(0.25),
            q_init_failure: Some(-0.5),
        })
        .unwrap();
    engine
        .apply_outcomes(&[
            Outcome {
                memory_ids: vec![1, 11],
                reward: 3.0,
            },
            Outcome {
                memory_ids: vec![11],
                reward: -1.0,
            },
        ])
        .unwrap();
    engine.remove(0).unwrap();
    engine
        .set_retrieval_config(RetrievalConfig {
            k1: 7,
            thompson: 0.5,
            ucb: 0.25,
            ..Default::default()
        })
        .unwrap();
    engine.add(memory(None, [0.0, 0.0, 1.0], "e")).unwrap();
}

/// Bank state, timestamps and keys included.
fn state(
    bank: &Bank,
) -> (
    Vec<Memory>,
    Vec<Vec<u32>>,
    u64,
    u64,
    RetrievalConfig,
    LearningConfig,
) {
    let memories: Vec<Memory> = bank.memories();
    let keys = memories
        .iter()
        .map(|m| {
            bank.intent_key(m.id)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect();
    (
        memories,
        keys,
        bank.next_id(),
        bank.log_seq(),
        bank.retrieval_config(),
        bank.learning_config(),
    )
}

#[test]
fn a_replay_rebuilds_the_bank_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let engine = writer().open(&path).unwrap();
    mutate(&engine);
    assert_eq!(engine.log_seq(), 8);
    let live = state(&engine);
    drop(engine);

    let bank = reader(&path);
    let recovery = bank.recovery().clone();
    assert_eq!(state(&bank), live);
    bank.debug_check().unwrap();
    assert_eq!(
        (
            recovery.snapshot_seq,
            recovery.replayed,
            recovery.skipped,
            recovery.log_seq
        ),
        (0, 8, 0, 8)
    );
    assert!(recovery.tail.is_none());

    // The same through a writer, then a checkpoint empties the log and keeps the state.
    let engine = writer().create(false).open(&path).unwrap();
    assert_eq!(engine.recovery().replayed, 8);
    assert_eq!(state(&engine), live);
    engine.checkpoint().unwrap();
    assert_eq!(engine.log_bytes(), Some(HEADER_LEN as u64));
    engine.add(memory(None, [0.5, 0.5, 0.0], "f")).unwrap();
    let live = state(&engine);
    drop(engine);
    let bank = reader(&path);
    let recovery = bank.recovery();
    assert_eq!((recovery.snapshot_seq, recovery.replayed), (8, 1));
    assert_eq!(state(&bank), live);
}

#[test]
fn every_record_kind_round_trips_through_its_frame() {
    let add = AddPlan {
        created_ms: 17,
        next_id: Some(u64::MAX),
        memories: vec![
            PlannedMemory {
                id: 3,
                key: KeyChoice::New(vec![0.6, 0.8]),
                intent: "é".into(),
                experience: String::new(),
                success: true,
                q: -0.5,
                metadata: Some(serde_json::json!([1, "x", 0.1])),
            },
            PlannedMemory {
                id: u64::MAX,
                key: KeyChoice::Existing(KeyId(u64::MAX - 1)),
                intent: String::new(),
                experience: "x".into(),
                success: false,
                q: f32::MIN_POSITIVE,
                metadata: None,
            },
        ],
    };
    let learning = LearningConfig::default();
    let retrieval = RetrievalConfig::default();
    let outcomes = OutcomePlan {
        applied_ms: 5,
        updates: vec![
            MemoryUpdate {
                id: 1,
                q: -0.0,
                visits: u64::MAX,
                last_reward: 3.5,
            },
            MemoryUpdate {
                id: u64::MAX,
                q: 1e-30,
                visits: 1,
                last_reward: -1.0,
            },
        ],
        baselines: Vec::new(),
    };
    // Baseline-corrected credit: the same plan with the baselines of the touched keys.
    let with_baselines = OutcomePlan {
        baselines: vec![(1, -0.25), (2, -0.25), (u64::MAX, 1e-30)],
        ..outcomes.clone()
    };
    let cases: Vec<(RecordRef<'_>, Record)> = vec![
        (RecordRef::Add(&add), Record::Add(add.clone())),
        (RecordRef::Remove(9), Record::Remove(9)),
        (
            RecordRef::Outcomes(&outcomes),
            Record::Outcomes(outcomes.clone()),
        ),
        (
            RecordRef::Outcomes(&with_baselines),
            Record::Outcomes(with_baselines.clone()),
        ),
        (
            RecordRef::RetrievalConfig(&retrieval),
            Record::RetrievalConfig(retrieval.clone()),
        ),
        (
            RecordRef::LearningConfig(&learning),
            Record::LearningConfig(learning.clone()),
        ),
    ];
    for (seq, (record, expected)) in cases.into_iter().enumerate() {
        let mut frame = Vec::new();
        format::encode_frame(seq as u64 + 1, record, &mut frame).unwrap();
        let Ok((len, got_seq, got)) = format::decode_frame(&frame) else {
            panic!("frame {seq} does not decode");
        };
        assert_eq!((len, got_seq), (frame.len(), seq as u64 + 1));
        assert_eq!(got, expected);
        // Any single flipped bit is caught.
        for bit in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(format::decode_frame(&bad), Ok((_, s, ref r)) if s == got_seq && *r == expected),
                "flipping bit {bit} of frame {seq} went unnoticed"
            );
        }
    }
}

fn logged_bank(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("bank.safetensors");
    let engine = writer().open(&path).unwrap();
    mutate(&engine);
    drop(engine);
    let log = fs::read(log_path(&path)).unwrap();
    (path, log)
}

/// Offsets where each record's frame starts, and the file's end.
fn frame_starts(log: &[u8]) -> Vec<usize> {
    let mut starts = vec![HEADER_LEN];
    while *starts.last().unwrap() < log.len() {
        let at = *starts.last().unwrap();
        let Ok((len, _, _)) = format::decode_frame(&log[at..]) else {
            panic!("bad frame at {at}");
        };
        starts.push(at + len);
    }
    starts
}

#[test]
fn a_torn_tail_is_dropped_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = logged_bank(dir.path());
    let starts = frame_starts(&log);
    let snapshot_bytes = fs::read(&path).unwrap();
    // Cut the log at every byte: the bank holds exactly the whole records before the cut.
    for cut in HEADER_LEN..log.len() {
        let mut bank = snapshot::load_bytes(
            &path,
            &snapshot_bytes,
            &Device::Cpu,
            &LoadOptions::default(),
        )
        .unwrap();
        let recovery = replay_bytes(&mut bank, &log[..cut], Path::new("log")).unwrap();
        let whole = starts.iter().filter(|&&s| s <= cut).count() as u64 - 1;
        assert_eq!(recovery.replayed, whole, "cut at {cut}");
        assert_eq!(recovery.valid_bytes as usize, starts[whole as usize]);
        assert_eq!(recovery.tail.is_some(), cut != starts[whole as usize]);
        bank.debug_check().unwrap();
    }
    // A writer cuts the torn tail off the file and appends after the last whole record.
    fs::write(log_path(&path), &log[..starts[4] + 3]).unwrap();
    let engine = writer().create(false).open(&path).unwrap();
    let tail = engine.recovery().tail.clone().unwrap();
    assert_eq!((tail.offset, tail.bytes), (starts[4] as u64, 3));
    assert!(tail.reason.contains("torn"), "{}", tail.reason);
    assert_eq!(
        fs::metadata(log_path(&path)).unwrap().len(),
        starts[4] as u64
    );
    engine.add(memory(None, [0.0, 0.0, -1.0], "g")).unwrap();
    let live = state(&engine);
    drop(engine);
    let bank = reader(&path);
    assert_eq!(
        (bank.recovery().replayed, &bank.recovery().tail),
        (5, &None)
    );
    assert_eq!(state(&bank), live);
}

/// Every single-bit flip anywhere after the header: in the last frame it is a torn tail (a
/// damaged last record cannot be told from a write cut short), anywhere before it is
/// corruption, an error naming the damaged frame's offset, never a silent cut.
#[test]
fn damage_before_the_last_frame_is_an_error_naming_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = logged_bank(dir.path());
    let starts = frame_starts(&log);
    let last = starts[starts.len() - 2];
    let snapshot_bytes = fs::read(&path).unwrap();
    let fresh = || {
        snapshot::load_bytes(
            &path,
            &snapshot_bytes,
            &Device::Cpu,
            &LoadOptions::default(),
        )
        .unwrap()
    };
    for byte in HEADER_LEN..log.len() {
        let frame = starts.iter().rposition(|&s| s <= byte).unwrap();
        for bit in [0x01u8, 0x80] {
            let mut damaged = log.clone();
            damaged[byte] ^= bit;
            let mut store = fresh();
            let result = replay_bytes(&mut store, &damaged, Path::new("log"));
            if starts[frame] == last {
                let recovery = result.unwrap_or_else(|e| panic!("byte {byte}: {e}"));
                assert_eq!(recovery.replayed as usize, frame, "byte {byte}");
                let tail = recovery.tail.unwrap();
                assert_eq!((tail.offset as usize, tail.records), (last, 0));
                store.debug_check().unwrap();
            } else {
                match result {
                    Err(Error::CorruptLog {
                        offset, problem, ..
                    }) => {
                        assert_eq!(offset as usize, starts[frame], "byte {byte}: {problem}");
                        assert!(
                            problem.contains(&format!("byte {}", starts[frame])),
                            "{problem}"
                        );
                    }
                    other => panic!("byte {byte} bit {bit}: expected corruption, got {other:?}"),
                }
            }
        }
    }
    // Zeros after the last frame (a file extended by a write whose data never reached the
    // disk) hold no frame: a torn tail.
    let mut zeros = log.clone();
    zeros.extend_from_slice(&[0u8; 100]);
    let recovery = replay_bytes(&mut fresh(), &zeros, Path::new("log")).unwrap();
    assert_eq!(recovery.replayed as usize, starts.len() - 1);
    assert_eq!(recovery.tail.unwrap().offset as usize, log.len());
    // A frame out of sequence (here the last one duplicated) is corruption too.
    let mut repeated = log.clone();
    repeated.extend_from_slice(&log[last..]);
    assert!(matches!(
        replay_bytes(&mut fresh(), &repeated, Path::new("log")),
        Err(Error::CorruptLog { offset, .. }) if offset as usize == log.len()
    ));
}

/// A damaged log is kept as it is by readers and writers alike; a repair, asked for, cuts it
/// at the damage, saves what it cut, and says how many records it dropped.
#[test]
fn a_damaged_log_is_kept_until_a_repair_cuts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut log) = logged_bank(dir.path());
    let starts = frame_starts(&log);
    log[starts[2] + 12] ^= 0x40;
    fs::write(log_path(&path), &log).unwrap();
    let err = Bank::options().read_only(true).open(&path).unwrap_err();
    assert!(
        matches!(err, Error::CorruptLog { offset, .. } if offset as usize == starts[2]),
        "{err}"
    );
    assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
    let err = writer().create(false).open(&path).unwrap_err();
    assert!(matches!(err, Error::CorruptLog { .. }), "{err}");
    assert!(err.to_string().contains("truncate_corrupt_log"), "{err}");
    assert_eq!(
        fs::read(log_path(&path)).unwrap(),
        log,
        "the log was changed"
    );
    // A repair is for writers.
    assert!(Bank::options()
        .read_only(true)
        .truncate_corrupt_log(true)
        .open(&path)
        .is_err());
    let engine = writer()
        .create(false)
        .truncate_corrupt_log(true)
        .open(&path)
        .unwrap();
    let recovery = engine.recovery().clone();
    assert!(recovery.repaired);
    assert_eq!(recovery.replayed, 2);
    let tail = recovery.tail.unwrap();
    assert_eq!(tail.offset as usize, starts[2]);
    assert_eq!(tail.bytes as usize, log.len() - starts[2]);
    assert_eq!(tail.records as usize, starts.len() - 1 - 3);
    let saved = recovery.saved_tail.unwrap();
    assert_eq!(fs::read(&saved).unwrap(), &log[starts[2]..]);
    assert_eq!(
        fs::metadata(log_path(&path)).unwrap().len() as usize,
        starts[2]
    );
    engine.add(memory(None, [0.0, 0.0, -1.0], "after")).unwrap();
    let live = state(&engine);
    drop(engine);
    let bank = reader(&path);
    assert_eq!(state(&bank), live);
    assert_eq!(bank.recovery().tail, None);
}

#[test]
fn a_checkpoint_cut_short_replays_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = logged_bank(dir.path());
    // The snapshot of the full bank is written, the log is not emptied yet.
    let bank = reader(&path);
    let live = state(&bank);
    let mut store = snapshot::load(&path, &Device::Cpu, &LoadOptions::default()).unwrap();
    replay_bytes(&mut store, &log, Path::new("log")).unwrap();
    snapshot::save(&store, &path).unwrap();
    assert_eq!(fs::read(log_path(&path)).unwrap(), log);
    let engine = writer().create(false).open(&path).unwrap();
    let recovery = engine.recovery();
    assert_eq!(
        (recovery.replayed, recovery.skipped, recovery.snapshot_seq),
        (0, 8, 8)
    );
    assert_eq!(state(&engine), live);
    // The stale records are gone, and the next record is number 9.
    assert_eq!(engine.log_bytes(), Some(HEADER_LEN as u64));
    engine.remove(10).unwrap();
    assert_eq!(engine.log_seq(), 9);
}

#[test]
fn logs_that_do_not_fit_the_snapshot_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = logged_bank(dir.path());
    let starts = frame_starts(&log);
    let fresh = || snapshot::load(&path, &Device::Cpu, &LoadOptions::default()).unwrap();
    // Records 1-3 missing: the log starts after the snapshot ends.
    let mut gap = log[..HEADER_LEN].to_vec();
    gap.extend_from_slice(&log[starts[3]..]);
    let err = replay_bytes(&mut fresh(), &gap, Path::new("log")).unwrap_err();
    assert!(
        err.to_string().contains("records 1 to 3 are missing"),
        "{err}"
    );
    // Another bank's log.
    let mut other = log.clone();
    let id = fresh().bank_id();
    other[..HEADER_LEN].copy_from_slice(&LogHeader::new(3, "another model", id).encode());
    let err = replay_bytes(&mut fresh(), &other, Path::new("log")).unwrap_err();
    assert!(err.to_string().contains("another bank"), "{err}");
    // The log of another bank of the same shape: its identity gives it away.
    let mut foreign = log.clone();
    foreign[..HEADER_LEN].copy_from_slice(&LogHeader::new(3, "toy", id ^ 1).encode());
    let err = replay_bytes(&mut fresh(), &foreign, Path::new("log")).unwrap_err();
    assert!(err.to_string().contains("bank id"), "{err}");
    // A broken header before records.
    let mut broken = log.clone();
    broken[2] ^= 1;
    assert!(matches!(
        replay_bytes(&mut fresh(), &broken, Path::new("log")),
        Err(Error::Log { .. })
    ));
    // A log cut inside its header holds no record: empty.
    let recovery = replay_bytes(&mut fresh(), &log[..10], Path::new("log")).unwrap();
    assert_eq!(recovery.replayed, 0);
}

#[test]
fn opening_a_missing_bank_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.safetensors");
    let err = Bank::open(&path).unwrap_err();
    assert!(err.to_string().contains("no such bank"), "{err}");
    let err = Bank::options().read_only(true).open(&path).unwrap_err();
    assert!(matches!(err, Error::NoBank { .. }), "{err}");
    // A new bank needs its shape: refused before any file is made.
    assert!(Bank::options().open(&path).is_err());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn one_writer_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let engine = writer().open(&path).unwrap();
    let err = Bank::open(&path).unwrap_err();
    assert!(
        err.to_string().contains("open for writing elsewhere"),
        "{err}"
    );
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    let err = Bank::create(&path, config()).unwrap_err();
    assert!(matches!(err, Error::BankExists { .. }), "{err}");
    // Readers need no lock.
    reader(&path);
    drop(engine);
    Bank::open(&path).unwrap();
    let err = Bank::create(&path, config()).unwrap_err();
    assert!(err.to_string().contains("already there"), "{err}");
}

#[test]
fn rejected_calls_log_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let engine = writer().open(&path).unwrap();
    engine.add(memory(Some(1), [1.0, 0.0, 0.0], "a")).unwrap();
    let before = engine.log_bytes();
    assert!(engine.add(memory(Some(1), [0.0, 1.0, 0.0], "dup")).is_err());
    assert!(engine.remove(5).is_err());
    assert!(engine
        .apply_outcomes(&[Outcome {
            memory_ids: vec![1, 2],
            reward: 1.0
        }])
        .is_err());
    assert!(engine
        .set_learning_config(LearningConfig {
            alpha: 2.0,
            ..Default::default()
        })
        .is_err());
    assert_eq!(engine.log_bytes(), before);
    assert_eq!(engine.log_seq(), 1);
}

#[test]
fn interval_and_never_policies_log_the_same_records() {
    for sync in [
        SyncPolicy::Interval(Duration::from_millis(5)),
        SyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.safetensors");
        let engine = writer().sync(sync).open(&path).unwrap();
        mutate(&engine);
        std::thread::sleep(Duration::from_millis(20));
        let live = state(&engine);
        drop(engine);
        let bank = reader(&path);
        assert_eq!(bank.recovery().replayed, 8, "{sync:?}");
        assert_eq!(state(&bank), live);
    }
}

#[test]
fn bulk_changes_are_one_snapshot_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let engine = writer().open(&path).unwrap();
    engine.add(memory(None, [1.0, 0.0, 0.0], "a")).unwrap();
    engine
        .bulk(|bank| bank.add_many(vec![memory(None, [0.0, 1.0, 0.0], "b")]))
        .unwrap();
    assert_eq!(engine.log_bytes(), Some(HEADER_LEN as u64));
    // A failing bulk change leaves memory equal to the files.
    let err = engine.bulk(|bank| {
        bank.add_many(vec![memory(None, [0.0, 0.0, 1.0], "c")])?;
        bank.add_many(vec![memory(Some(0), [0.0, 0.0, 1.0], "dup")])
    });
    assert!(matches!(err, Err(Error::DuplicateId(0))));
    assert_eq!(engine.len(), 2);
    engine.add(memory(None, [0.0, 0.5, 0.5], "d")).unwrap();
    let live = state(&engine);
    drop(engine);
    assert_eq!(state(&reader(&path)), live);
    // The same in memory: a failed bulk load leaves the bank as it was, counters included.
    let bank = writer().in_memory().unwrap();
    bank.add(memory(None, [1.0, 0.0, 0.0], "a")).unwrap();
    let before = state(&bank);
    let err = bank.bulk(|load| {
        load.add_many(vec![memory(None, [0.0, 0.0, 1.0], "c")])?;
        load.add_many(vec![memory(Some(0), [0.0, 0.0, 1.0], "dup")])
    });
    assert!(matches!(err, Err(Error::DuplicateId(0))));
    assert_eq!(state(&bank), before);
    bank.debug_check().unwrap();
}

#[test]
fn stale_temporary_files_of_interrupted_saves_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = logged_bank(dir.path());
    fs::write(
        dir.path().join(".bank.safetensors.tmp-1-0"),
        b"half a snapshot",
    )
    .unwrap();
    fs::write(dir.path().join("unrelated"), b"x").unwrap();
    // What an older memrl left through safetensors' own temporary file: this bank's snapshot
    // under `.tmpXXXXXX` is removed; another bank's, or anything else, is not ours to remove.
    fs::copy(&path, dir.path().join(".tmpAbC123")).unwrap();
    let other = dir.path().join("other.safetensors");
    writer().open(&other).unwrap();
    fs::copy(&other, dir.path().join(".tmpQwErTy")).unwrap();
    fs::write(dir.path().join(".tmpZzZzZz"), b"someone else's").unwrap();
    let engine = Bank::open(&path).unwrap();
    assert_eq!(engine.recovery().stale_temp_files, 2);
    for kept in ["unrelated", ".tmpQwErTy", ".tmpZzZzZz"] {
        assert!(dir.path().join(kept).exists(), "{kept}");
    }
    assert!(!dir.path().join(".tmpAbC123").exists());
    // Saves leave no temporary file of any name behind.
    for _ in 0..3 {
        engine.add(memory(None, [0.0, 1.0, 1.0], "x")).unwrap();
        engine.checkpoint().unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".tmpQwErTy" && n != ".tmpZzZzZz")
        .collect();
    names.sort();
    assert!(names.is_empty(), "{names:?}");
}
