//! The one error type of the library.
//!
//! Every variant names the problem precisely enough for a person to act on it (which field, which
//! id, which file); callers match on variants, never on message text. The binary wraps these in
//! `anyhow` for context; the library never panics on user input or I/O.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in memrl.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A vector or matrix does not have the bank's embedding dimension.
    #[error("{what}: expected dimension {expected}, got {got}")]
    DimensionMismatch {
        /// What was being checked ("query", "intent embedding", ...).
        what: &'static str,
        /// The bank's dimension.
        expected: usize,
        /// The dimension that was passed.
        got: usize,
    },

    /// An embedding contains NaN or an infinite value, or has zero norm.
    #[error("{what} #{index}: {problem}")]
    InvalidEmbedding {
        /// What was being checked ("query", "intent embedding").
        what: &'static str,
        /// Row within the batch.
        index: usize,
        /// What is wrong with it.
        problem: String,
    },

    /// A reward is NaN or infinite, or outside the configured reward range.
    #[error("outcome #{outcome}: reward {reward} is {problem}")]
    InvalidReward {
        /// Index of the outcome within its batch.
        outcome: usize,
        /// The offending reward.
        reward: f32,
        /// Why it is rejected.
        problem: &'static str,
    },

    /// An outcome names a memory the bank does not hold; the whole batch is rejected.
    #[error("outcome #{outcome}: unknown memory id {id} (the whole batch was rejected, nothing changed)")]
    UnknownMemory {
        /// Index of the outcome within its batch.
        outcome: usize,
        /// The unknown id.
        id: u64,
    },

    /// A memory id was requested that the bank does not hold.
    #[error("no memory with id {0}")]
    NotFound(u64),

    /// An insert reuses an id that is already in the bank (or twice in the same batch).
    #[error("duplicate memory id {0}: ids must be unique within a bank")]
    DuplicateId(u64),

    /// A configuration value is out of its valid range.
    #[error("invalid configuration: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field name, as spelled in the config struct.
        field: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// The valid range or rule.
        reason: &'static str,
    },

    /// A device string could not be parsed or the device is not compiled in.
    #[error("device `{spec}`: {problem}")]
    Device {
        /// What the user asked for.
        spec: String,
        /// Why it cannot be used.
        problem: String,
    },

    /// A snapshot file is malformed, corrupted or truncated.
    #[error("snapshot {path}: {problem}")]
    CorruptSnapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor or metadata field.
        problem: String,
    },

    /// A snapshot is valid but does not fit what the caller expects (format version, model, dimension).
    #[error("snapshot {path}: {field} is `{found}`, expected `{expected}`")]
    SnapshotMismatch {
        /// The file.
        path: PathBuf,
        /// The mismatching field.
        field: &'static str,
        /// What the file says.
        found: String,
        /// What the caller or this version of memrl expects.
        expected: String,
    },

    /// A line of an input file (JSON Lines) is malformed: names the file, the 1-based line and,
    /// when one is at fault, the field.
    #[error("{}:{line}: {}{problem}", path.display(), field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Input {
        /// The input file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field at fault, if one is.
        field: Option<String>,
        /// What is wrong.
        problem: String,
    },

    /// An I/O operation on a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A model file is missing or malformed, or a model source failed.
    #[error("{path}: {problem}")]
    Model {
        /// The file, folder or source (repo id, pip requirement).
        path: PathBuf,
        /// What is wrong, naming the field where there is one.
        problem: String,
    },

    /// A model file does not have the sha256 the registry pins.
    #[error("{path}: sha256 is {found}, the registry expects {expected}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The registry's hash.
        expected: String,
        /// The file's hash.
        found: String,
    },

    /// The model is not in the registry and is not a model directory.
    #[error("unknown model `{name}` (known: {}; or pass a directory with config.json)", known.join(", "))]
    UnknownModel {
        /// What was asked for.
        name: String,
        /// The registry's model names.
        known: Vec<String>,
    },

    /// No source could provide a verified copy of the model.
    #[error("model `{name}` is not available; tried:\n  {}", tried.join("\n  "))]
    ModelUnavailable {
        /// The registry name.
        name: String,
        /// One line per source and why it failed.
        tried: Vec<String>,
    },

    /// A call or a bank would exceed one of its [`crate::config::Limits`].
    #[error("{what}: {got} exceeds the limit of {limit}")]
    LimitExceeded {
        /// What was measured ("memories in the bank", "intent bytes of memory #3", ...).
        what: &'static str,
        /// The configured limit.
        limit: usize,
        /// The value that exceeds it.
        got: usize,
    },

    /// A text of one memory in a batch is longer than [`crate::config::Limits::max_text_bytes`].
    #[error("memory #{index} of the batch: {what}: {got} exceeds the limit of {limit}")]
    TextTooLong {
        /// Which text ("intent bytes", "experience bytes", "metadata bytes (as JSON)").
        what: &'static str,
        /// The memory's index within its batch.
        index: usize,
        /// The configured limit.
        limit: usize,
        /// The text's length in bytes.
        got: usize,
    },

    /// A write-ahead log cannot be used: a broken header, a log of another bank, records missing
    /// between the snapshot and the log, a record that does not apply, or a log already in use.
    /// (A torn or corrupt *tail* is not an error: it is dropped and reported by the recovery.)
    #[error("log {path}: {problem}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },

    /// A batched call failed as a whole (each caller of the batch gets this), or the batching
    /// queue has stopped.
    #[error("batch: {0}")]
    Batch(String),

    /// The tokenizer failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(
        field: &'static str,
        value: impl std::fmt::Display,
        reason: &'static str,
    ) -> Self {
        Error::InvalidConfig {
            field,
            value: value.to_string(),
            reason,
        }
    }
}
