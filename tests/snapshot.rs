//! Snapshots: bit-exact round trips, validation of every corruption, atomic saves.

mod common;

use common::{dyadic_unit, state};
use memrl::snapshot::{self, LoadOptions};
use memrl::{Bank, BankConfig, Error, KeyDType, NewMemory, Outcome, RetrievalConfig, ZSim};

fn small_bank(dtype: KeyDType) -> Bank {
    let mut config = BankConfig::new(16, "test/model");
    config.dtype = dtype;
    let mut bank = Bank::new(config, &common::device()).unwrap();
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
                embedding: dyadic_unit(1),
                experience: "use sort_unstable — fast ✓".into(),
                success: true,
                metadata: Some(serde_json::json!({"task": "x", "n": [1, 2]})),
                ..Default::default()
            },
            NewMemory {
                intent: "".into(),
                embedding: dyadic_unit(1),
                experience: "shared key".into(),
                ..Default::default()
            },
            NewMemory {
                id: Some(40),
                intent: "другое".into(),
                embedding: dyadic_unit(2),
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
    snapshot::save(bank, &path).unwrap();
    path
}

#[test]
fn round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [KeyDType::F32, KeyDType::F16, KeyDType::Bf16] {
        let bank = small_bank(dtype);
        let path = save_to(&bank, &dir, "bank.safetensors");
        let loaded = snapshot::load(&path, &common::device(), &LoadOptions::default()).unwrap();
        loaded.debug_check().unwrap();
        assert_eq!(state(&loaded), state(&bank));
        assert_eq!(loaded.config(), bank.config());
        assert_eq!(loaded.retrieval_config(), bank.retrieval_config());
        assert_eq!(loaded.learning_config(), bank.learning_config());
        assert_eq!(loaded.next_id(), bank.next_id());
        assert_eq!(loaded.num_intents(), 2);
        let q = [dyadic_unit(1), dyadic_unit(3)];
        let cfg = RetrievalConfig {
            delta: -1.0,
            ..Default::default()
        };
        assert_eq!(
            loaded.retrieve_vectors(&q, &cfg).unwrap(),
            bank.retrieve_vectors(&q, &cfg).unwrap()
        );
        // And a second generation is still the same bank.
        let again = save_to(&loaded, &dir, "again.safetensors");
        let reloaded = snapshot::load(&again, &common::device(), &LoadOptions::default()).unwrap();
        assert_eq!(state(&reloaded), state(&bank), "{dtype:?}");
    }
}

#[test]
fn empty_bank_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let bank = Bank::new(BankConfig::new(4, "m"), &common::device()).unwrap();
    let path = save_to(&bank, &dir, "empty.safetensors");
    let loaded = snapshot::load(&path, &common::device(), &LoadOptions::default()).unwrap();
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
    let opts = LoadOptions::default();
    let mut checked = 0;
    for pos in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[pos] ^= 1 << bit;
            match snapshot::load_bytes(&bad, &common::device(), &opts) {
                Err(Error::CorruptSnapshot { .. }) | Err(Error::SnapshotMismatch { .. }) => {
                    checked += 1
                }
                Err(other) => panic!("byte {pos} bit {bit}: unexpected error kind {other}"),
                Ok(_) => panic!("byte {pos} bit {bit}: a corrupted file loaded"),
            }
        }
    }
    for len in 0..good.len() {
        assert!(
            matches!(
                snapshot::load_bytes(&good[..len], &common::device(), &opts),
                Err(Error::CorruptSnapshot { .. })
            ),
            "truncated to {len} bytes"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(snapshot::load_bytes(&longer, &common::device(), &opts).is_err());
    // The file on disk goes through the same checks.
    let target = dir.path().join("bad.safetensors");
    std::fs::write(&target, &good[..good.len() / 2]).unwrap();
    assert!(matches!(
        snapshot::load(&target, &common::device(), &opts),
        Err(Error::CorruptSnapshot { .. })
    ));
    assert_eq!(checked, good.len() * 8);
}

#[test]
fn another_version_model_or_dimension_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = save_to(&small_bank(KeyDType::F32), &dir, "bank.safetensors");
    let mismatch = |opts: LoadOptions| match snapshot::load(&path, &common::device(), &opts) {
        Err(Error::SnapshotMismatch {
            field,
            found,
            expected,
            ..
        }) => (field, found, expected),
        other => panic!("expected a mismatch, got {other:?}"),
    };
    assert_eq!(
        mismatch(LoadOptions {
            expect_model: Some("other/model".into()),
            ..Default::default()
        }),
        (
            "model_id",
            "test/model".to_string(),
            "other/model".to_string()
        )
    );
    assert_eq!(
        mismatch(LoadOptions {
            expect_dim: Some(384),
            ..Default::default()
        }),
        ("dim", "16".to_string(), "384".to_string())
    );
    // A file from a future format version: same length, so offsets stay valid.
    let bytes = std::fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(text.contains("\"format_version\":\"1\""));
    let future = dir.path().join("future.safetensors");
    let needle = b"\"format_version\":\"1\"";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut changed = bytes.clone();
    changed[at + needle.len() - 2] = b'2';
    std::fs::write(&future, &changed).unwrap();
    match snapshot::load(&future, &common::device(), &LoadOptions::default()) {
        Err(Error::SnapshotMismatch {
            field: "format_version",
            found,
            ..
        }) => assert_eq!(found, "2"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_file_and_failed_save_leave_everything_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    assert!(matches!(
        snapshot::load(&missing, &common::device(), &LoadOptions::default()),
        Err(Error::Io { .. })
    ));
    // Saving over an existing snapshot replaces it whole, and leaves no temporary file.
    let bank = small_bank(KeyDType::F32);
    let path = save_to(&bank, &dir, "bank.safetensors");
    let mut bigger = small_bank(KeyDType::F32);
    bigger
        .add(NewMemory {
            embedding: dyadic_unit(9),
            ..Default::default()
        })
        .unwrap();
    snapshot::save(&bigger, &path).unwrap();
    assert_eq!(
        snapshot::load(&path, &common::device(), &LoadOptions::default())
            .unwrap()
            .len(),
        4
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["bank.safetensors".to_string()]);
    // A save that cannot happen is an error naming the path.
    let e = snapshot::save(&bank, &dir.path().join("no/such/dir/bank.safetensors")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("no/such/dir"), "{e}");
}

#[test]
fn engine_save_and_load_through_the_facade() {
    let dir = tempfile::tempdir().unwrap();
    let engine = memrl::Engine::from_bank(small_bank(KeyDType::F16));
    let path = dir.path().join("e.safetensors");
    engine.save(&path).unwrap();
    let loaded = memrl::Engine::load(
        &path,
        &common::device(),
        &LoadOptions {
            expect_model: Some("test/model".into()),
            expect_dim: Some(16),
        },
    )
    .unwrap();
    assert_eq!(loaded.len(), 3);
}
