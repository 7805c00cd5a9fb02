//! Snapshots: bit-exact round trips, validation of every corruption, atomic saves.

mod common;

use std::path::Path;

use common::{dyadic_unit, state};
use memrl::{
    Bank, BankConfig, Error, ErrorKind, KeyDType, NewMemory, Outcome, RetrievalConfig, ZSim,
};

fn small_bank(dtype: KeyDType) -> Bank {
    let mut config = BankConfig::new(16, "test/model");
    config.dtype = dtype;
    let bank = common::bank(config);
    bank.set_retrieval_config(RetrievalConfig {
        k1: 7,
        delta: 0.3,
        zsim: ZSim::Fixed {
            mean: 0.12,
            std: 0.2,
        },
        q_min: Some(-0.8),
        ..Default::default()
    })
    .unwrap();
    let ids = bank
        .add_many(vec![
            NewMemory {
                intent: "sort a list".into(),
                embedding: Some(dyadic_unit(1)),
                experience: "use sort_unstable — fast ✓".into(),
                success: true,
                metadata: Some(serde_json::json!({"task": "x", "n": [1, 2]})),
                ..Default::default()
            },
            NewMemory {
                intent: "".into(),
                embedding: Some(dyadic_unit(1)),
                experience: "shared key".into(),
                ..Default::default()
            },
            NewMemory {
                id: Some(40),
                intent: "другое".into(),
                embedding: Some(dyadic_unit(2)),
                ..Default::default()
            },
        ])
        .unwrap();
    bank.apply_outcomes(&[Outcome {
        memory_ids: vec![ids[0], ids[2]],
        reward: 1.0,
    }])
    .unwrap();
    bank
}

fn save_to(bank: &Bank, dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    bank.save_as(&path).unwrap();
    path
}

/// Opens the snapshot at `path` for reading, as any reader would.
fn load(path: &Path) -> memrl::Result<Bank> {
    Bank::options()
        .read_only(true)
        .device(common::device())
        .open(path)
}

/// Loads snapshot bytes through a file beside the others.
fn load_bytes(dir: &tempfile::TempDir, bytes: &[u8]) -> memrl::Result<Bank> {
    let path = dir.path().join("probe.safetensors");
    std::fs::write(&path, bytes).unwrap();
    load(&path)
}

#[test]
fn round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [KeyDType::F32, KeyDType::F16, KeyDType::Bf16] {
        let bank = small_bank(dtype);
        let path = save_to(&bank, &dir, &format!("bank-{dtype:?}.safetensors"));
        let loaded = load(&path).unwrap();
        loaded.debug_check().unwrap();
        assert_eq!(state(&loaded), state(&bank));
        assert_eq!(loaded.config(), bank.config());
        assert_eq!(loaded.retrieval_config(), bank.retrieval_config());
        assert_eq!(loaded.learning_config(), bank.learning_config());
        assert_eq!(loaded.num_intents(), 2);
        let q = [dyadic_unit(1), dyadic_unit(3)];
        let cfg = RetrievalConfig {
            delta: -1.0,
            ..Default::default()
        };
        assert_eq!(
            common::hits(&loaded, &q, &cfg),
            common::hits(&bank, &q, &cfg)
        );
        // And a second generation is still the same bank.
        let again = save_to(&loaded, &dir, &format!("again-{dtype:?}.safetensors"));
        let reloaded = load(&again).unwrap();
        assert_eq!(state(&reloaded), state(&bank), "{dtype:?}");
        // Automatic ids go on where they would have.
        let fresh = NewMemory::default().embedding(dyadic_unit(5));
        let next = Bank::options()
            .create(false)
            .open(&again)
            .unwrap()
            .add(fresh.clone());
        assert_eq!(next.unwrap(), bank.add(fresh).unwrap(), "{dtype:?}");
    }
}

#[test]
fn empty_bank_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let bank = common::bank(BankConfig::new(4, "m"));
    let path = save_to(&bank, &dir, "empty.safetensors");
    let loaded = load(&path).unwrap();
    assert_eq!(
        (loaded.len(), loaded.num_intents(), loaded.config().dim),
        (0, 0, 4)
    );
}

#[test]
fn every_flipped_bit_and_every_truncation_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = save_to(&small_bank(KeyDType::F32), &dir, "bank.safetensors");
    let good = std::fs::read(&path).unwrap();
    let mut checked = 0;
    for pos in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[pos] ^= 1 << bit;
            match load_bytes(&dir, &bad) {
                Err(e) if e.kind() == ErrorKind::Corrupt => checked += 1,
                Err(other) => panic!("byte {pos} bit {bit}: unexpected error kind {other}"),
                Ok(_) => panic!("byte {pos} bit {bit}: a corrupted file loaded"),
            }
        }
    }
    for len in 0..good.len() {
        assert!(
            matches!(
                load_bytes(&dir, &good[..len]),
                Err(Error::CorruptSnapshot { .. })
            ),
            "truncated to {len} bytes"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(load_bytes(&dir, &longer).is_err());
    assert_eq!(checked, good.len() * 8);
}

#[test]
fn another_version_model_or_dimension_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = save_to(&small_bank(KeyDType::F32), &dir, "bank.safetensors");
    // Settings of a new bank that the existing one does not have cannot apply.
    for (options, field) in [
        (Bank::options().model_id("other/model"), "model_id"),
        (Bank::options().dim(384), "dim"),
        (Bank::options().dtype(KeyDType::F16), "dtype"),
        (Bank::options().dedup_sim(0.5), "dedup_sim"),
    ] {
        match options.read_only(true).open(&path) {
            Err(Error::InvalidValue { field: f, problem }) => {
                assert_eq!(f, field);
                assert!(problem.contains("cannot change"), "{problem}");
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    // A file from a future format version: same length, so offsets stay valid.
    let bytes = std::fs::read(&path).unwrap();
    let needle = b"\"format_version\":\"2\"";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut changed = bytes.clone();
    changed[at + needle.len() - 2] = b'3';
    match load_bytes(&dir, &changed) {
        Err(Error::UnsupportedVersion { found, .. }) => assert_eq!(found, "3"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_file_and_failed_save_leave_everything_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    let e = load(&missing).unwrap_err();
    assert!(matches!(e, Error::NoBank { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // A reader creates nothing.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // A copy never overwrites a bank, and leaves no temporary file.
    let bank = small_bank(KeyDType::F32);
    let path = save_to(&bank, &dir, "bank.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let bigger = small_bank(KeyDType::F32);
    bigger
        .add(NewMemory {
            embedding: Some(dyadic_unit(9)),
            ..Default::default()
        })
        .unwrap();
    assert!(matches!(
        bigger.save_as(&path),
        Err(Error::BankExists { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["bank.safetensors", "bank.safetensors.wal"]);
    // Rewriting a bank's snapshot is a checkpoint: replaced whole, atomically.
    let writer = Bank::open(&path).unwrap();
    writer
        .add(NewMemory {
            embedding: Some(dyadic_unit(9)),
            ..Default::default()
        })
        .unwrap();
    writer.checkpoint().unwrap();
    drop(writer);
    assert_eq!(load(&path).unwrap().len(), 4);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    // A save that cannot happen is an error naming the path.
    let e = bank
        .save_as(dir.path().join("no/such/dir/bank.safetensors"))
        .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("no/such/dir"), "{e}");
}

/// The version-1 files committed as fuzz seeds (written by the release before key ids): a
/// reader loads them as they are, a writer upgrades them to the current format, and nothing is
/// lost on the way.
#[test]
fn version_1_banks_and_logs_are_read_and_upgraded() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for dtype in ["f32", "f16", "bf16"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.safetensors");
        std::fs::copy(
            corpus.join(format!("snapshot/seed-v1-shared-{dtype}")),
            &path,
        )
        .unwrap();
        let before = state(&load(&path).unwrap());
        assert!(!before.is_empty());
        let upgraded = Bank::options().create(false).open(&path).unwrap();
        assert!(upgraded.recovery().upgraded, "{dtype}");
        assert_eq!(state(&upgraded), before, "{dtype}");
        drop(upgraded);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.windows(20).any(|w| w == b"\"format_version\":\"2\""));
        assert_eq!(state(&load(&path).unwrap()), before, "{dtype}");
    }
    // An empty version-1 bank and its version-1 log: every record replays, then upgrades.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    std::fs::copy(corpus.join("snapshot/seed-v1-empty"), &path).unwrap();
    std::fs::copy(
        corpus.join("log/seed-v1-all-records"),
        dir.path().join("bank.safetensors.wal"),
    )
    .unwrap();
    let reader = load(&path).unwrap();
    assert_eq!(
        (reader.recovery().replayed, reader.recovery().log_version),
        (6, 1)
    );
    let before = state(&reader);
    let writer = Bank::options().create(false).open(&path).unwrap();
    assert!(writer.recovery().upgraded);
    assert_eq!(state(&writer), before);
    writer
        .apply_outcomes(&[Outcome {
            memory_ids: vec![before[0].0.id],
            reward: 1.0,
        }])
        .unwrap();
    drop(writer);
    let after = load(&path).unwrap();
    assert_eq!(after.recovery().log_version, 2);
    assert_eq!(after.recovery().replayed, 1);
    assert_eq!(
        after.get(before[0].0.id).unwrap().visits,
        before[0].0.visits + 1
    );
}
