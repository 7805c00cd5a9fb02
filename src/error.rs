//! The one error type of the library, and the kinds a wrapper maps it to.
//!
//! Every variant names the problem precisely enough for a person to act on it (which field, which
//! id, which file); callers match on variants or on [`Error::kind`], never on message text. A
//! server maps [`ErrorKind`] to a status code, a binding to an exception class. The library never
//! panics on user input or I/O.

use std::path::PathBuf;
use std::sync::Arc;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What sort of failure an [`Error`] is: the one thing a wrapper needs to decide how to report it.
///
/// ```
/// use memrl::{Bank, BankConfig, ErrorKind};
/// let bank = Bank::in_memory(BankConfig::new(2, "toy"))?;
/// let err = bank.remove(7).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::NotFound);
/// # Ok::<(), memrl::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller's input is wrong (a value out of range, a wrong dimension, a malformed line,
    /// an operation this bank cannot do); the message names the field. Retrying the same call
    /// fails the same way.
    InvalidInput,
    /// A memory, retrieval, bank or model that does not exist.
    NotFound,
    /// The call conflicts with the state: a duplicate id, a bank that already exists, a bank
    /// open for writing elsewhere.
    Conflict,
    /// A bounded queue is full: retry later.
    Overloaded,
    /// Stored data is damaged or of an unknown format: a snapshot, a log, a model file.
    Corrupt,
    /// The operating system refused a file operation (permissions, a full disk, a missing folder).
    Io,
    /// A failure inside memrl or its device (a tensor operation, a broken invariant, a stopped
    /// thread): not the caller's fault.
    Internal,
}

impl ErrorKind {
    /// A short, stable name (`invalid_input`, `not_found`, ...), for JSON error bodies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    #[error("{what} at index {index} of the batch: {problem}")]
    InvalidEmbedding {
        /// What was being checked ("query", "intent embedding").
        what: &'static str,
        /// Row within the batch, 0-based.
        index: usize,
        /// What is wrong with it.
        problem: String,
    },

    /// A reward is NaN or infinite, outside the configured reward range, or would make a Q
    /// non-finite.
    #[error("outcome at index {outcome} of the batch: reward {reward} is {problem}")]
    InvalidReward {
        /// Index of the outcome within its batch, 0-based.
        outcome: usize,
        /// The offending reward.
        reward: f32,
        /// Why it is rejected.
        problem: &'static str,
    },

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

    /// A value given to a call (not a configuration field) is invalid: an initial Q, a
    /// memory's text, a batch of texts, ...
    #[error("{field}: {problem}")]
    InvalidValue {
        /// What the value is ("memory #3: q", "texts", ...).
        field: String,
        /// What is wrong with it.
        problem: String,
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

    /// A call or a bank would exceed one of its [`crate::Limits`].
    #[error("{what}: {got} exceeds the limit of {limit}")]
    LimitExceeded {
        /// What was measured ("memories in the bank", "queries in one retrieval", ...).
        what: &'static str,
        /// The configured limit.
        limit: usize,
        /// The value that exceeds it.
        got: usize,
    },

    /// A text of one memory in a batch is longer than [`crate::Limits::max_text_bytes`].
    #[error("memory at index {index} of the batch: {what}: {got} exceeds the limit of {limit}")]
    TextTooLong {
        /// Which text ("intent bytes", "experience bytes", "metadata bytes (as JSON)").
        what: &'static str,
        /// The memory's index within its batch, 0-based.
        index: usize,
        /// The configured limit.
        limit: usize,
        /// The text's length in bytes.
        got: usize,
    },

    /// The tokenizer failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A text-level call on a bank that has no embedder.
    #[error("{operation} needs an embedder: open the bank with OpenOptions::embedder or OpenOptions::model, or pass vectors")]
    NoEmbedder {
        /// What was asked ("embedding the intent of memory #0", "a text query", ...).
        operation: String,
    },

    /// An embedder whose model is not the one that made the bank's keys.
    #[error("{bank} holds keys of model `{bank_model}` (dim {bank_dim}); the embedder is `{model}` (dim {dim})")]
    ModelMismatch {
        /// The bank (its path, or `in-memory bank`).
        bank: String,
        /// The bank's model id.
        bank_model: String,
        /// The bank's dimension.
        bank_dim: usize,
        /// The embedder's model name.
        model: String,
        /// The embedder's dimension.
        dim: usize,
    },

    /// A write to a bank opened read-only.
    #[error("{path}: the bank is open read-only; open it for writing to {operation}")]
    ReadOnly {
        /// The bank's snapshot.
        path: PathBuf,
        /// What was asked.
        operation: &'static str,
    },

    /// An operation that needs files on a bank that lives in memory only.
    #[error("{operation} needs a bank on disk (this one lives in memory only)")]
    NotDurable {
        /// What was asked.
        operation: &'static str,
    },

    /// A device string could not be parsed or the device is not compiled in.
    #[error("device `{spec}`: {problem}")]
    Device {
        /// What the user asked for.
        spec: String,
        /// Why it cannot be used.
        problem: String,
    },

    /// An outcome names a memory the bank does not hold; the whole batch is rejected.
    #[error("outcome at index {outcome} of the batch: unknown memory id {id} (the whole batch was rejected, nothing changed)")]
    UnknownMemory {
        /// Index of the outcome within its batch, 0-based.
        outcome: usize,
        /// The unknown id.
        id: u64,
    },

    /// A memory id was requested that the bank does not hold.
    #[error("no memory with id {0}")]
    NotFound(u64),

    /// Feedback for a retrieval id the bank does not remember (never issued, already reported,
    /// or expired).
    #[error("retrieval {id}: unknown, already reported or expired ({retention})")]
    UnknownRetrieval {
        /// The retrieval id.
        id: u64,
        /// How long and how many retrievals the bank remembers.
        retention: String,
    },

    /// No bank at a path that was expected to hold one.
    #[error("{}: no such bank", path.display())]
    NoBank {
        /// The snapshot path.
        path: PathBuf,
    },

    /// The model is not in the registry and is not a model directory.
    #[error("unknown model `{name}` (known: {}; or pass a directory with config.json)", known.join(", "))]
    UnknownModel {
        /// What was asked for.
        name: String,
        /// The registry's model names.
        known: Vec<String>,
    },

    /// An insert reuses an id that is already in the bank (or twice in the same batch).
    #[error("duplicate memory id {0}: ids must be unique within a bank")]
    DuplicateId(u64),

    /// A bank was to be created where one already exists.
    #[error("{}: a bank is already there (open it instead)", path.display())]
    BankExists {
        /// The snapshot path.
        path: PathBuf,
    },

    /// The bank is open for writing elsewhere (its log is locked).
    #[error("{}: the bank is open for writing elsewhere (its log is locked)", path.display())]
    Locked {
        /// The log file.
        path: PathBuf,
    },

    /// Every automatic memory id is taken.
    #[error("no free memory id is left")]
    IdsExhausted,

    /// A bounded queue is full.
    #[error(
        "overloaded: {pending} requests are waiting (the queue holds {capacity}); retry later"
    )]
    Overloaded {
        /// Requests waiting when this one arrived.
        pending: usize,
        /// The queue's capacity.
        capacity: usize,
    },

    /// A snapshot file is malformed, corrupted or truncated.
    #[error("snapshot {path}: {problem}")]
    CorruptSnapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor or metadata field.
        problem: String,
    },

    /// A snapshot is valid but does not fit what the caller expects (model, dimension).
    #[error("snapshot {path}: {field} is `{found}`, expected `{expected}`")]
    SnapshotMismatch {
        /// The file.
        path: PathBuf,
        /// The mismatching field.
        field: &'static str,
        /// What the file says.
        found: String,
        /// What the caller expects.
        expected: String,
    },

    /// A file of a format version this memrl cannot read.
    #[error("{}: format version {found} (this memrl reads {supported})", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The file's version.
        found: String,
        /// The versions this build reads.
        supported: String,
    },

    /// A write-ahead log cannot be used: a broken header, a log of another bank, records missing
    /// between the snapshot and the log, or a record that does not apply. (A torn *tail* is not
    /// an error: it is dropped and reported by the recovery.)
    #[error("log {path}: {problem}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },

    /// A write-ahead log damaged in the middle: the frame at `offset` is unreadable and valid
    /// records follow it, so it is not a torn tail (which is only ever the last frame) and
    /// nothing is cut. The log is kept as it is; `OpenOptions::truncate_corrupt_log` (or
    /// `memrl repair`) cuts it at `offset`, on request.
    #[error("log {}: {problem}", path.display())]
    CorruptLog {
        /// The log file.
        path: PathBuf,
        /// Byte offset of the damaged frame (everything before it is intact).
        offset: u64,
        /// What is wrong, and what follows the damage.
        problem: String,
    },

    /// A write whose outcome is unknown: it failed after its record could have reached the
    /// log (and cutting the record off again failed too), or after a new snapshot was put in
    /// place whose folder could not be synced. Reopening the bank shows whether it was applied;
    /// until then the bank refuses writes.
    #[error("{}: {problem}", path.display())]
    OutcomeUnknown {
        /// The file concerned (the log, or the snapshot).
        path: PathBuf,
        /// What failed, and what is unknown.
        problem: String,
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

    /// An I/O operation on a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// No source could provide a verified copy of the model.
    #[error("model `{name}` is not available; tried:\n  {}", tried.join("\n  "))]
    ModelUnavailable {
        /// The registry name.
        name: String,
        /// One line per source and why it failed.
        tried: Vec<String>,
    },

    /// A batched call failed as a whole: every caller of the batch gets this, sharing the one
    /// underlying error (whose kind it keeps).
    #[error("the batch failed: {0}")]
    Batch(Arc<Error>),

    /// The batching queue has stopped (its thread ended).
    #[error("the batching queue has stopped")]
    QueueStopped,

    /// An earlier failure left the bank in memory unlike its files; reopen it.
    #[error("the bank must be reopened: {0}")]
    Poisoned(String),

    /// A broken invariant or an impossible state inside memrl (a bug: please report it).
    #[error("internal error: {0}")]
    Internal(String),

    /// An error from the tensor library (a device failure).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// The kind of failure (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            DimensionMismatch { .. }
            | InvalidEmbedding { .. }
            | InvalidReward { .. }
            | InvalidConfig { .. }
            | InvalidValue { .. }
            | Input { .. }
            | LimitExceeded { .. }
            | TextTooLong { .. }
            | Tokenizer(_)
            | NoEmbedder { .. }
            | ModelMismatch { .. }
            | ReadOnly { .. }
            | NotDurable { .. }
            | Device { .. }
            | SnapshotMismatch { .. } => ErrorKind::InvalidInput,
            UnknownMemory { .. }
            | NotFound(_)
            | UnknownRetrieval { .. }
            | NoBank { .. }
            | UnknownModel { .. } => ErrorKind::NotFound,
            DuplicateId(_) | BankExists { .. } | Locked { .. } | IdsExhausted => {
                ErrorKind::Conflict
            }
            Overloaded { .. } => ErrorKind::Overloaded,
            CorruptSnapshot { .. }
            | UnsupportedVersion { .. }
            | Log { .. }
            | CorruptLog { .. }
            | Model { .. }
            | Checksum { .. } => ErrorKind::Corrupt,
            Io { .. } | OutcomeUnknown { .. } | ModelUnavailable { .. } => ErrorKind::Io,
            Batch(inner) => inner.kind(),
            QueueStopped | Poisoned(_) | Internal(_) | Candle(_) => ErrorKind::Internal,
        }
    }

    /// For an error about one item of a batch (a memory of an add, an outcome of an outcome
    /// batch, a query of a retrieval), that item's 0-based index in the batch: what a caller
    /// maps back to its own numbering (a line of a file, an element of a request). `None` for
    /// every other error (a duplicate id names the id instead: [`Error::DuplicateId`]).
    ///
    /// ```
    /// use memrl::{Bank, BankConfig, Outcome};
    /// let bank = Bank::in_memory(BankConfig::new(2, "toy"))?;
    /// let outcomes = [
    ///     Outcome { memory_ids: vec![], reward: 1.0 },
    ///     Outcome { memory_ids: vec![], reward: f32::NAN },
    /// ];
    /// assert_eq!(bank.apply_outcomes(&outcomes).unwrap_err().batch_index(), Some(1));
    /// # Ok::<(), memrl::Error>(())
    /// ```
    pub fn batch_index(&self) -> Option<usize> {
        match self {
            Error::InvalidEmbedding { index, .. } | Error::TextTooLong { index, .. } => {
                Some(*index)
            }
            Error::InvalidReward { outcome, .. } | Error::UnknownMemory { outcome, .. } => {
                Some(*outcome)
            }
            // A batch's shared error: its index is of the coalesced batch, not the caller's.
            _ => None,
        }
    }

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

    pub(crate) fn value(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::InvalidValue {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same error again, for a second receiver of one failure (a batch's callers): an
    /// [`Error::Batch`] shares its source, anything else is wrapped into one.
    pub(crate) fn shared(self) -> Arc<Error> {
        match self {
            Error::Batch(inner) => inner,
            other => Arc::new(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_error_keeps_the_kind_of_its_source() {
        let inner = Error::DuplicateId(3).shared();
        let a = Error::Batch(inner.clone());
        let b = Error::Batch(inner);
        assert_eq!(a.kind(), ErrorKind::Conflict);
        assert_eq!(b.kind(), ErrorKind::Conflict);
        assert!(a.to_string().contains("duplicate memory id 3"), "{a}");
    }

    #[test]
    fn kinds_have_stable_names() {
        let names: Vec<&str> = [
            ErrorKind::InvalidInput,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Overloaded,
            ErrorKind::Corrupt,
            ErrorKind::Io,
            ErrorKind::Internal,
        ]
        .iter()
        .map(|k| k.as_str())
        .collect();
        assert_eq!(
            names,
            [
                "invalid_input",
                "not_found",
                "conflict",
                "overloaded",
                "corrupt",
                "io",
                "internal"
            ]
        );
    }
}
