//! Every committed fuzz corpus input (`fuzz/corpus/<target>/`) through the fuzz targets' own
//! bodies (`fuzz/harness.rs`), on stable: what the fuzzer once found stays fixed. The
//! ignored `write_seed_corpora` made the `seed-*` inputs.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::fs;
use std::path::{Path, PathBuf};

use memrl::{Bank, BankConfig, KeyDType, NewMemory, Outcome};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_runs_clean() {
    for (target, run) in [
        ("snapshot", harness::snapshot as fn(&[u8])),
        ("log", harness::log),
        ("jsonl", harness::jsonl),
    ] {
        let files = corpus(target);
        assert!(!files.is_empty(), "no corpus for {target}");
        for file in files {
            run(&fs::read(&file).unwrap());
        }
    }
}

#[test]
fn the_seed_inputs_are_accepted() {
    // The seeds are valid files: the targets reach past parsing with them. Each log seed
    // replays onto the empty snapshot of its own version.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for version in ["v1", "v2"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.safetensors");
        fs::copy(
            root.join(format!("snapshot/seed-{version}-shared-f16")),
            &path,
        )
        .unwrap();
        let bank = Bank::options().read_only(true).open(&path).unwrap();
        assert!(bank.len() > bank.num_intents(), "{version}");
        fs::copy(root.join(format!("snapshot/seed-{version}-empty")), &path).unwrap();
        fs::copy(
            root.join(format!("log/seed-{version}-all-records")),
            dir.path().join("bank.safetensors.wal"),
        )
        .unwrap();
        let bank = Bank::options().read_only(true).open(&path).unwrap();
        let recovery = bank.recovery();
        assert_eq!((recovery.replayed, &recovery.tail), (6, &None), "{version}");
    }
}

fn memory(v: [f32; 4], text: &str) -> NewMemory {
    NewMemory {
        intent: text.into(),
        embedding: Some(v.to_vec()),
        experience: format!("{text}: what worked"),
        metadata: Some(serde_json::json!({ "tag": text, "score": 0.5 })),
        ..Default::default()
    }
}

fn mutate(engine: &Bank) {
    engine
        .add_many(vec![
            memory([1.0, 0.0, 0.0, 0.0], "a"),
            memory([0.99, 0.05, 0.0, 0.0], "a again"),
            memory([0.0, 1.0, 0.0, 0.0], "b"),
        ])
        .unwrap();
    engine
        .apply_outcomes(&[
            Outcome {
                memory_ids: vec![0, 1],
                reward: 1.0,
            },
            Outcome {
                memory_ids: vec![2],
                reward: -1.0,
            },
        ])
        .unwrap();
    engine.remove(2).unwrap();
    engine
        .set_retrieval_config(memrl::RetrievalConfig {
            k1: 3,
            ..Default::default()
        })
        .unwrap();
    engine
        .set_learning_config(memrl::LearningConfig {
            alpha: 0.5,
            ..Default::default()
        })
        .unwrap();
    engine.add(memory([0.0, 0.0, 0.0, 1.0], "c")).unwrap();
}

/// A durable bank of the fuzz targets' shape (dimension 4, model `fuzz`, the fuzz bank's
/// identity) after [`mutate`].
fn mutated_engine(path: &Path, dtype: KeyDType) -> Bank {
    let config = BankConfig {
        dtype,
        dedup_sim: 0.9,
        ..BankConfig::new(4, "fuzz")
    };
    let engine = empty_fuzz_bank(path, config);
    mutate(&engine);
    engine
}

/// An empty durable bank whose snapshot and log carry the fuzz bank's identity, so its log
/// replays onto the fuzz targets' bank.
fn empty_fuzz_bank(path: &Path, config: BankConfig) -> Bank {
    let bank = Bank::options()
        .bank_config(config)
        .create_new(true)
        .checkpoint(memrl::CheckpointPolicy::Manual)
        .open(path)
        .unwrap();
    drop(bank);
    memrl::internal::set_bank_id(path, memrl::internal::FUZZ_BANK_ID).unwrap();
    Bank::options()
        .create(false)
        .checkpoint(memrl::CheckpointPolicy::Manual)
        .open(path)
        .unwrap()
}

#[test]
#[ignore = "writes the seed corpora; run by hand when the formats change"]
fn write_seed_corpora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for target in ["snapshot", "log", "jsonl"] {
        fs::create_dir_all(root.join(target)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    // Logs: every record kind, for the fuzz bank (dimension 4, model `fuzz`).
    let path = dir.path().join("bank.safetensors");
    let engine = mutated_engine(&path, KeyDType::F32);
    let log = fs::read(dir.path().join("bank.safetensors.wal")).unwrap();
    fs::write(root.join("log/seed-v2-all-records"), &log).unwrap();
    fs::write(root.join("log/seed-v2-header-only"), &log[..32]).unwrap();
    fs::write(root.join("log/seed-v2-torn"), &log[..log.len() - 5]).unwrap();
    // Damage in the middle (the first frame's length runs past the end, intact frames follow:
    // the search for intact frames), and zeros after the last frame (a torn tail).
    let mut damaged = log.clone();
    damaged[32..36].copy_from_slice(&0xFFFF_0000u32.to_le_bytes());
    fs::write(root.join("log/seed-v2-damaged-length"), &damaged).unwrap();
    let mut zeros = log.clone();
    zeros.extend_from_slice(&[0u8; 64]);
    fs::write(root.join("log/seed-v2-zero-tail"), &zeros).unwrap();
    // Snapshots: empty, and with shared keys in each dtype.
    engine.checkpoint().unwrap();
    fs::copy(&path, root.join("snapshot/seed-v2-shared-f32")).unwrap();
    for dtype in [KeyDType::F16, KeyDType::Bf16] {
        let path = dir.path().join(format!("{}.safetensors", dtype.as_str()));
        let engine = mutated_engine(&path, dtype);
        engine.checkpoint().unwrap();
        fs::copy(
            &path,
            root.join(format!("snapshot/seed-v2-shared-{}", dtype.as_str())),
        )
        .unwrap();
    }
    let empty = dir.path().join("empty.safetensors");
    drop(empty_fuzz_bank(
        &empty,
        BankConfig {
            dedup_sim: 0.9,
            ..BankConfig::new(4, "fuzz")
        },
    ));
    fs::copy(&empty, root.join("snapshot/seed-v2-empty")).unwrap();
    // JSON Lines: each record type, and the usual mistakes.
    let lines = [
        ("memories", "{\"intent\": \"book a flight\", \"experience\": \"use the airport code\", \"q\": 0.5, \"success\": true, \"id\": 7, \"metadata\": {\"k\": [1, 2]}}\n{\"intent\": \"x\", \"experience\": \"y\"}\n"),
        ("outcomes", "{\"memory_ids\": [3, 17], \"reward\": 1}\n\n{\"memory_ids\": [], \"reward\": -1.5}\n"),
        ("queries", "{\"text\": \"how do I sort\"}\n{\"text\": \"\\u00e9\\n\"}\r\n"),
        ("tasks", "{\"text\": \"a task\", \"source\": \"bigbench/arith\"}\n"),
        ("mistakes", "{\"intent\": 3}\n[1]\n{\"memory_ids\": [-1], \"reward\": \"x\"}\nnot json\n\u{feff}{}\n"),
    ];
    for (name, text) in lines {
        fs::write(root.join(format!("jsonl/seed-{name}")), text).unwrap();
    }
}
