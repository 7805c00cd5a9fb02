//! # memrl
//!
//! Episodic memory with learned utility for AI agents, after "MemRL: Self-Evolving Agents via
//! Runtime Reinforcement Learning on Episodic Memory" (arXiv 2601.03192). Agents store
//! (intent, experience, Q) memories; retrieval recalls by embedding similarity and re-ranks by a
//! z-scored mix of similarity and Q; each episode's reward updates the Q of the memories that
//! were used, so memories that help rise and those that mislead sink. No model weights change.
//!
//! Data flows one way: embeddings -> [`Bank`] -> [`Bank::retrieve`] (Phase A similarity recall,
//! Phase B value-aware ranking) -> the agent -> [`Outcome`]s -> [`Bank::apply_outcomes`] -> bank,
//! and [`snapshot`] saves and loads a whole bank as one `.safetensors` file. Similarity, top-k and
//! ranking are candle tensor ops, so the same code runs on CPU, CUDA and Metal.
//!
//! ```
//! use memrl::{Bank, BankConfig, NewMemory, Outcome, RetrievalConfig};
//! let mut bank = Bank::new(BankConfig::new(4, "toy"), &memrl::Device::Cpu)?;
//! let helpful = bank.add(NewMemory {
//!     intent: "parse a date".into(),
//!     embedding: vec![1.0, 0.2, 0.0, 0.0],
//!     experience: "use chrono::NaiveDate::parse_from_str".into(),
//!     ..Default::default()
//! })?;
//! let hits = bank.retrieve_vectors(&[vec![1.0, 0.1, 0.0, 0.0]], &RetrievalConfig::default())?;
//! assert_eq!(hits[0][0].id, helpful);
//! bank.apply_outcomes(&[Outcome { memory_ids: vec![helpful], reward: 1.0 }])?;
//! assert!((bank.get(helpful).unwrap().q - 0.3).abs() < 1e-6);
//! # Ok::<(), memrl::Error>(())
//! ```
#![warn(missing_docs)]

pub mod bank;
pub mod batch;
pub mod bench;
pub mod calibrate;
pub mod config;
pub mod device;
pub mod embed;
pub mod engine;
pub mod error;
pub mod ingest;
mod kernels;
pub mod learn;
pub mod models;
pub mod retrieve;
pub mod rng;
pub mod simulate;
pub mod snapshot;
pub mod wal;

pub use bank::{Bank, BankSummary, Memory, NewMemory};
pub use candle_core::{Device, Tensor};
pub use config::{
    BankConfig, KeyDType, LearningConfig, Limits, OutOfRange, RetrievalConfig, RewardRange, ZSim,
};
pub use engine::{Engine, OpenOptions};
pub use error::{Error, Result};
pub use learn::{update_q, Outcome, OutcomeReport};
pub use retrieve::Hit;
pub use snapshot::LoadOptions;
