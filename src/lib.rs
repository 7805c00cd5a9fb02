//! # memrl
//!
//! Episodic memory with learned utility for AI agents, after "MemRL: Self-Evolving Agents via
//! Runtime Reinforcement Learning on Episodic Memory" (arXiv 2601.03192). Agents store
//! (intent, experience, Q) memories; retrieval recalls by embedding similarity and re-ranks by a
//! z-scored mix of similarity and Q; each episode's reward updates the Q of the memories that
//! were used, so memories that help rise and those that mislead sink. No model weights change.
//!
//! The front door is [`Bank`]: open one from a path (durable: every write goes to a
//! write-ahead log before it returns), add memories, retrieve, report rewards, reopen.
//!
//! ```no_run
//! use memrl::{Bank, NewMemory};
//! let bank = Bank::options().model("all-MiniLM-L6-v2").open("bank.safetensors")?;
//! bank.add(NewMemory::new("book a flight to Lisbon", "search by airport code").success(true))?;
//! let r = bank.retrieve("fly to Porto")?.remove(0);
//! for hit in &r.hits {
//!     println!("{} {:.3} {}", hit.id, hit.score, hit.experience);
//! }
//! bank.feedback(r.id, 1.0)?; // the episode succeeded: every injected memory's Q moves up
//! # Ok::<(), memrl::Error>(())
//! ```
//!
//! The same loop at the vector level (bring your own embeddings), compiled and run as a test:
//!
//! ```
//! use memrl::{Bank, BankConfig, NewMemory};
//! let bank = Bank::in_memory(BankConfig::new(4, "toy"))?;
//! let helpful = bank.add(
//!     NewMemory::new("parse a date", "use chrono::NaiveDate::parse_from_str")
//!         .embedding(vec![1.0, 0.2, 0.0, 0.0]),
//! )?;
//! let r = bank.retrieve(&[vec![1.0, 0.1, 0.0, 0.0]][..])?.remove(0);
//! assert_eq!(r.hits[0].id, helpful);
//! bank.feedback(r.id, 1.0)?;
//! assert!((bank.get(helpful).unwrap().q - 0.3).abs() < 1e-6);
//! # Ok::<(), memrl::Error>(())
//! ```
//!
//! Data flows one way: texts -> [`embed::Embedder`] -> [`Bank`] (intent keys in a
//! [`KeyIndex`], memories in a table) -> retrieval (Phase A similarity recall through the key
//! index, Phase B value-aware ranking) -> the agent -> [`Bank::feedback`] -> the bank -> its
//! write-ahead log and `.safetensors` snapshots. Similarity, top-k and ranking are candle tensor
//! ops, so the same code runs on CPU, CUDA and Metal. Many threads share one bank; a
//! [`Batcher`] coalesces their single requests into batched calls. Every error has an
//! [`ErrorKind`] for wrappers to map.
//!
//! Features: `embed` (default) adds the local embedding model ([`embed`], [`models`]); without
//! it memrl is vector-only. `cuda` and `metal` add candle's device backends.
#![warn(missing_docs)]

mod bank;
mod batch;
mod calibrate;
mod config;
mod device;
#[cfg(feature = "embed")]
pub mod embed;
mod error;
mod fault;
mod index;
pub mod ingest;
mod kernels;
mod learn;
#[cfg(feature = "embed")]
pub mod models;
mod retrieve;
mod rng;
pub mod shard;
mod snapshot;
mod store;
mod wal;

pub use bank::{
    Bank, BulkLoad, CheckpointPolicy, OpenOptions, Queries, Retention, Retrieval, RetrievalId,
};
pub use batch::{BatchConfig, BatchStats, Batcher, Pending, Query};
pub use calibrate::{calibrate, Calibration, DEFAULT_MAX_PAIRS};
pub use candle_core::Device;
pub use config::{
    BankConfig, KeyDType, LearningConfig, Limits, OutOfRange, RetrievalConfig, RewardRange, ZSim,
    MAX_DIM, MAX_MEMORIES,
};
pub use device::{device_name, parse_device};
pub use error::{Error, ErrorKind, Result};
pub use index::{KeyId, KeyIndex, KeyMatch};
pub use learn::{update_q, Outcome, OutcomeReport};
pub use retrieve::Hit;
pub use store::{Memory, NewMemory, Stats};
pub use wal::{Recovery, SyncPolicy, Tail};

#[doc(hidden)]
pub mod internal {
    //! Not part of memrl's API: what the workspace's own crates (the benchmarks, the fuzz
    //! targets) need of the inside. It may change in any release without notice.

    pub use crate::index::read_sum;
    pub use crate::rng::SplitMix64;

    use std::path::Path;

    use candle_core::Device;

    use crate::config::{BankConfig, Limits};
    use crate::snapshot::{self, LoadOptions};
    use crate::store::Store;
    use crate::wal;

    /// The identity of the bank [`fuzz_log`] replays onto (version-2 logs must carry it).
    pub const FUZZ_BANK_ID: u64 = 0xF022_F022_F022_F022;

    /// Loads snapshot bytes: `Ok` when they are refused or load into a bank whose invariants
    /// hold, `Err` (a bug) when a loaded bank breaks one.
    pub fn fuzz_snapshot(bytes: &[u8]) -> Result<(), String> {
        match snapshot::load_bytes(
            Path::new("fuzz.safetensors"),
            bytes,
            &Device::Cpu,
            &LoadOptions::default(),
        ) {
            Ok(store) => store
                .debug_check()
                .map_err(|e| format!("a loaded snapshot breaks an invariant: {e}")),
            Err(_) => Ok(()),
        }
    }

    /// Gives the bank at `path`, just created (its log empty), the identity `bank_id`: how the
    /// fuzz seeds get the fuzz bank's identity.
    pub fn set_bank_id(path: &Path, bank_id: u64) -> crate::Result<()> {
        let log = wal::log_path(path);
        if wal::read_log(&log)?.len() > wal::HEADER_LEN {
            return Err(crate::Error::value(
                log.display().to_string(),
                "holds records: only a new bank's identity can be set",
            ));
        }
        let mut store = snapshot::load(path, &Device::Cpu, &LoadOptions::default())?;
        store.set_bank_id(bank_id);
        snapshot::save(&store, path)?;
        let config = store.config();
        let header = wal::LogHeader::new(config.dim, &config.model_id, bank_id);
        std::fs::write(&log, header.encode()).map_err(|e| crate::Error::io(&log, e))
    }

    /// The empty bank [`fuzz_log`] replays onto: dimension 4, model `fuzz`, sharing at 0.9,
    /// small limits; `bank_id` 0 accepts version-1 logs, [`FUZZ_BANK_ID`] version-2 ones.
    fn fuzz_store(bank_id: u64) -> Result<Store, String> {
        let config = BankConfig {
            dedup_sim: 0.9,
            ..BankConfig::new(4, "fuzz")
        };
        let mut store = Store::new(config, bank_id, &Device::Cpu).map_err(|e| e.to_string())?;
        let limits = Limits {
            max_text_bytes: 1 << 12,
            max_batch: 1 << 10,
            max_memories: 1 << 14,
        };
        store.set_limits(limits).map_err(|e| e.to_string())?;
        Ok(store)
    }

    /// Replays log bytes onto the fuzz bank (as a version-1 bank and as a version-2 one): `Ok`
    /// when they are refused or replay into a bank whose invariants hold and whose recovery
    /// report is consistent, `Err` (a bug) otherwise.
    pub fn fuzz_log(bytes: &[u8]) -> Result<(), String> {
        for bank_id in [0, FUZZ_BANK_ID] {
            let mut store = fuzz_store(bank_id)?;
            if let Ok(recovery) = wal::replay_bytes(&mut store, bytes, Path::new("fuzz.wal")) {
                store
                    .debug_check()
                    .map_err(|e| format!("a replayed log breaks an invariant: {e}"))?;
                if recovery.valid_bytes as usize > bytes.len().max(wal::HEADER_LEN) {
                    return Err(format!(
                        "{} valid bytes in a log of {}",
                        recovery.valid_bytes,
                        bytes.len()
                    ));
                }
                if store.log_seq() != recovery.log_seq {
                    return Err("the recovery's log_seq is not the bank's".into());
                }
            }
        }
        Ok(())
    }
}
