#![allow(dead_code)] // each target uses one of the functions
//! The bodies of the fuzz targets. `tests/fuzz_corpus.rs` includes this file too, so every
//! committed corpus input also runs on stable in `cargo test` (there with checksums on).
//!
//! The property each target checks: no input panics, aborts or exhausts memory; an input that is
//! accepted yields a bank whose invariants hold.

use std::io::Cursor;
use std::path::Path;

use memrl::ingest::{read_jsonl_from, MemoryRecord, QueryRecord, Record, TaskRecord};
use memrl::{wal, Bank, BankConfig, Device, Limits, LoadOptions, Outcome};

/// The bank every log input is replayed onto: dimension 4, model `fuzz`, small limits.
pub fn log_bank() -> Bank {
    let config = BankConfig {
        dedup_sim: 0.9,
        ..BankConfig::new(4, "fuzz")
    };
    let mut bank = Bank::new(config, &Device::Cpu).expect("a valid config");
    bank.set_limits(Limits {
        max_text_bytes: 1 << 12,
        max_batch: 1 << 10,
        max_memories: 1 << 14,
    })
    .expect("valid limits");
    bank
}

/// Snapshot loading.
pub fn snapshot(data: &[u8]) {
    if let Ok(bank) = memrl::snapshot::load_bytes(data, &Device::Cpu, &LoadOptions::default()) {
        if let Err(e) = bank.debug_check() {
            panic!("a loaded snapshot breaks an invariant: {e}");
        }
    }
}

/// Log replay onto [`log_bank`].
pub fn log(data: &[u8]) {
    let mut bank = log_bank();
    if let Ok(recovery) = wal::replay_bytes(&mut bank, data, Path::new("fuzz.wal")) {
        if let Err(e) = bank.debug_check() {
            panic!("a replayed log breaks an invariant: {e}");
        }
        assert!(recovery.valid_bytes as usize <= data.len().max(wal::HEADER_LEN));
        assert_eq!(bank.log_seq(), recovery.log_seq);
    }
}

/// JSON Lines parsing, as each record type.
pub fn jsonl(data: &[u8]) {
    fn drain<T: Record + 'static>(data: &[u8]) {
        let records = read_jsonl_from::<T>(Cursor::new(data.to_vec()), Path::new("fuzz.jsonl"))
            .max_line_bytes(1 << 16);
        for record in records {
            let _ = record;
        }
    }
    drain::<MemoryRecord>(data);
    drain::<QueryRecord>(data);
    drain::<Outcome>(data);
    drain::<TaskRecord>(data);
}
