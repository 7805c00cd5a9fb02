//! How memrl is measured.
//!
//! - [`simulate`]: the learning benchmark. Policies (no memory, RAG, MemP, MemRL, an oracle,
//!   a lambda sweep) run the paper's agent loop over a simulated world whose tasks are real
//!   sentences embedded by the real model, and whose hidden memory effects make similarity and
//!   utility disagree. `memrl simulate` and `memrl demo` print its report.
//! - [`workloads`]: the speed benchmarks behind `memrl bench` and the programs in the
//!   repository's `benches/` folder: the machine's ceilings, retrieval over random banks,
//!   outcome updates and snapshots.
//!
//! Both use memrl through its front door, [`memrl::Bank`], like any other program.

pub mod simulate;
pub mod workloads;

/// The task corpus shipped with memrl: 10,000 BIG-bench sentences (Apache-2.0; see
/// `data/README.md`), the default world of `memrl simulate` and `memrl demo`.
pub const CORPUS_JSONL: &str = include_str!("../../../data/corpus.jsonl");

/// The shipped corpus, parsed.
pub fn corpus() -> Result<Vec<memrl::ingest::TaskRecord>> {
    let records = memrl::ingest::read_jsonl_from::<memrl::ingest::TaskRecord>(
        std::io::Cursor::new(CORPUS_JSONL.as_bytes().to_vec()),
        std::path::Path::new("data/corpus.jsonl"),
    );
    Ok(records.collect::<memrl::Result<Vec<_>>>()?)
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while measuring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine failed.
    #[error(transparent)]
    Memrl(#[from] memrl::Error),
    /// A tensor operation of a workload failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A benchmark setting is out of its range.
    #[error("invalid setting: {field} = {value}: {reason}")]
    Setting {
        /// The setting's name.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// The valid range or rule.
        reason: &'static str,
    },
    /// The simulation met a state it cannot be in (a bug).
    #[error("simulation: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn config(
        field: &'static str,
        value: impl std::fmt::Display,
        reason: &'static str,
    ) -> Self {
        Error::Setting {
            field,
            value: value.to_string(),
            reason,
        }
    }
}
