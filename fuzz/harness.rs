#![allow(dead_code)] // each target uses one of the functions
//! The bodies of the fuzz targets. `tests/fuzz_corpus.rs` includes this file too, so every
//! committed corpus input also runs on stable in `cargo test` (there with checksums on).
//!
//! The property each target checks: no input panics, aborts or exhausts memory; an input that is
//! accepted yields a bank whose invariants hold.

use std::io::Cursor;
use std::path::Path;

use memrl::ingest::{read_jsonl_from, MemoryRecord, QueryRecord, Record, TaskRecord};
use memrl::Outcome;

/// Snapshot loading.
pub fn snapshot(data: &[u8]) {
    if let Err(bug) = memrl::internal::fuzz_snapshot(data) {
        panic!("{bug}");
    }
}

/// Log replay onto an empty bank of dimension 4, model `fuzz` (see `memrl::internal`).
pub fn log(data: &[u8]) {
    if let Err(bug) = memrl::internal::fuzz_log(data) {
        panic!("{bug}");
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
