//! The write-ahead log: what a bank learned since its last snapshot, on disk before the call
//! that learned it returns.
//!
//! Why: an agent fleet applies outcome batches all day, and rewriting a multi-gigabyte snapshot
//! per batch is out of the question; yet a crash between two snapshots must not erase what was
//! learned. So every accepted mutation (add, remove, outcome batch, config change) is appended to
//! `<snapshot>.wal` as one checksummed frame, synced according to a [`SyncPolicy`], and only then
//! applied and acknowledged. Opening a bank loads the snapshot and replays the log after it.
//!
//! Invariants:
//! - **One record per mutation, in apply order.** Records carry consecutive sequence numbers;
//!   writers append under the bank's write lock, so the log's order is the order the bank saw.
//! - **Validate, log, apply.** A mutation is fully validated before its record is written, so a
//!   record in the log always applies. Should the apply still fail (a device error), the record is
//!   cut off the log again before the error returns.
//! - **Records hold decisions, not inputs.** An add's record has the ids, the unit keys and which
//!   key each memory shares ([`crate::bank::ResolvedAdd`]); an outcome batch's record has the
//!   learning config and the time it was applied. A replay is therefore exact (bit for bit,
//!   timestamps included) on any device.
//! - **The snapshot's `log_seq` is the commit point of a checkpoint.** A snapshot records the
//!   sequence number of the last record it reflects; replay skips records at or below it, so a
//!   crash between writing the snapshot and emptying the log replays nothing twice. Emptying the
//!   log is a truncation to its header.
//! - **A torn or corrupt tail is dropped, never applied.** Replay stops at the first frame that
//!   is cut short, fails its CRC32C, does not decode, or breaks the sequence; everything before it
//!   is kept, and [`Recovery::tail`] says what was dropped. A writer truncates the file there
//!   before appending.
//! - **One writer.** [`crate::Engine::open`] takes an exclusive lock on the log file; a second
//!   writer (another process, or the same one) gets [`Error::Log`]. Readers ([`recover`]) take no
//!   lock and change no file.

mod format;
mod writer;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::Device;

use crate::bank::{Bank, Memory, ResolvedAdd};
use crate::config::{LearningConfig, RetrievalConfig};
use crate::error::{Error, Result};
use crate::learn::{Outcome, OutcomeReport};
use crate::snapshot::{self, LoadOptions};

pub use format::{LogHeader, HEADER_LEN};
pub(crate) use writer::LogWriter;

/// When appended records are forced to disk (fsync).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Before every call returns: an acknowledged mutation survives a power loss. The default.
    #[default]
    EveryBatch,
    /// By a background thread every given interval: at most that much is lost to a power loss;
    /// nothing to a process crash.
    Interval(Duration),
    /// Never by memrl (the OS writes back when it likes): survives a process crash, not a power
    /// loss.
    Never,
}

/// One logged mutation, as read back from a log.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Record {
    /// Memories added, every decision made.
    Add(ResolvedAdd),
    /// The memory with this id removed.
    Remove(u64),
    /// An outcome batch, with the learning config it was applied with and when.
    Outcomes {
        /// `updated_ms` of every touched memory.
        applied_ms: u64,
        /// The config the batch was applied with.
        config: LearningConfig,
        /// The batch.
        outcomes: Vec<Outcome>,
    },
    /// The stored retrieval config replaced.
    RetrievalConfig(RetrievalConfig),
    /// The stored learning config replaced.
    LearningConfig(LearningConfig),
}

/// A record to append, borrowing what the caller already holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RecordRef<'a> {
    Add(&'a ResolvedAdd),
    Remove(u64),
    Outcomes {
        applied_ms: u64,
        config: &'a LearningConfig,
        outcomes: &'a [Outcome],
    },
    RetrievalConfig(&'a RetrievalConfig),
    LearningConfig(&'a LearningConfig),
}

/// What applying one record did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The ids added.
    Added(Vec<u64>),
    /// The memory removed.
    Removed(Memory),
    /// What the outcome batch changed.
    Outcomes(OutcomeReport),
    /// A config was replaced.
    Configured,
}

/// Applies one record to a bank, checking it as the original call did (all or nothing).
pub fn apply(bank: &mut Bank, record: &Record) -> Result<Applied> {
    Ok(match record {
        Record::Add(add) => Applied::Added(bank.apply_add(add)?),
        Record::Remove(id) => Applied::Removed(bank.remove(*id)?),
        Record::Outcomes {
            applied_ms,
            config,
            outcomes,
        } => Applied::Outcomes(bank.apply_outcomes_at(outcomes, config, *applied_ms)?),
        Record::RetrievalConfig(config) => {
            bank.set_retrieval_config(config.clone())?;
            Applied::Configured
        }
        Record::LearningConfig(config) => {
            bank.set_learning_config(config.clone())?;
            Applied::Configured
        }
    })
}

/// The log beside a snapshot: `<snapshot file name>.wal` in the same folder.
pub fn log_path(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.as_os_str().to_owned();
    name.push(".wal");
    PathBuf::from(name)
}

/// A dropped tail of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// Byte offset where the dropped part starts (everything before it was kept).
    pub offset: u64,
    /// Bytes dropped.
    pub bytes: u64,
    /// Why the frame at `offset` was not accepted.
    pub reason: String,
}

/// What opening a bank found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// `log_seq` of the snapshot.
    pub snapshot_seq: u64,
    /// Records applied on top of the snapshot.
    pub replayed: u64,
    /// Records already in the snapshot (a checkpoint that ended before emptying the log).
    pub skipped: u64,
    /// The bank's `log_seq` after replay.
    pub log_seq: u64,
    /// Bytes of valid records in the log (header included).
    pub valid_bytes: u64,
    /// The torn or corrupt tail that was dropped, if any.
    pub tail: Option<Tail>,
    /// Temporary files of interrupted snapshot saves that were removed (writers only).
    pub stale_temp_files: usize,
}

/// Replays log bytes onto `bank` (which was just loaded from the snapshot the log follows).
/// `path` only names the log in errors.
///
/// Errors: a header of another bank or another format, a log that starts after the snapshot
/// ends (records missing), or a valid record that does not apply. A log shorter than its header
/// (a crash while creating it) is empty. A torn or corrupt tail is not an error: it is reported
/// in [`Recovery::tail`].
pub fn replay_bytes(bank: &mut Bank, bytes: &[u8], path: &Path) -> Result<Recovery> {
    let log_error = |problem: String| Error::Log {
        path: path.to_path_buf(),
        problem,
    };
    let mut recovery = Recovery {
        snapshot_seq: bank.log_seq(),
        log_seq: bank.log_seq(),
        ..Default::default()
    };
    if bytes.len() < HEADER_LEN {
        return Ok(recovery);
    }
    let header = LogHeader::decode(bytes).map_err(log_error)?;
    let expected = LogHeader::new(bank.config().dim, &bank.config().model_id);
    if header != expected {
        return Err(log_error(format!(
            "the log belongs to another bank (dimension {}, model checksum {:08x}; the snapshot has dimension {}, model `{}`)",
            header.dim,
            header.model_crc,
            bank.config().dim,
            bank.config().model_id
        )));
    }
    let mut pos = HEADER_LEN;
    let mut previous: Option<u64> = None;
    while pos < bytes.len() {
        let (len, seq, record) = match format::decode_frame(&bytes[pos..]) {
            Ok(frame) => frame,
            Err(format::FrameError::Torn(reason)) => {
                recovery.tail = Some(tail(pos, bytes.len(), format!("torn record: {reason}")));
                break;
            }
            Err(format::FrameError::Corrupt(reason)) => {
                recovery.tail = Some(tail(pos, bytes.len(), format!("corrupt record: {reason}")));
                break;
            }
        };
        match previous {
            None if seq > bank.log_seq().saturating_add(1) => {
                return Err(log_error(format!(
                    "the log starts at record {seq} but the snapshot ends at record {}: records {} to {} are missing",
                    bank.log_seq(),
                    bank.log_seq() + 1,
                    seq - 1
                )));
            }
            Some(prev) if Some(seq) != prev.checked_add(1) => {
                recovery.tail = Some(tail(
                    pos,
                    bytes.len(),
                    format!("record {seq} follows record {prev}: the sequence is broken"),
                ));
                break;
            }
            _ => {}
        }
        previous = Some(seq);
        if seq <= recovery.snapshot_seq {
            recovery.skipped += 1;
        } else {
            apply(bank, &record).map_err(|e| {
                log_error(format!(
                    "record {seq} (byte {pos}) is intact but does not apply: {e}"
                ))
            })?;
            bank.set_log_seq(seq);
            recovery.replayed += 1;
        }
        pos += len;
    }
    recovery.valid_bytes = pos as u64;
    recovery.log_seq = bank.log_seq();
    Ok(recovery)
}

fn tail(offset: usize, end: usize, reason: String) -> Tail {
    Tail {
        offset: offset as u64,
        bytes: (end - offset) as u64,
        reason,
    }
}

/// Loads the snapshot at `path` and replays its log, changing no file (a reader's view: a torn
/// tail is skipped here and cut off by the next writer).
pub fn recover(path: &Path, device: &Device, options: &LoadOptions) -> Result<(Bank, Recovery)> {
    let mut bank = snapshot::load(path, device, options)?;
    let log = log_path(path);
    let bytes = match fs::read(&log) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(&log, e)),
    };
    let recovery = replay_bytes(&mut bank, &bytes, &log)?;
    Ok((bank, recovery))
}

#[cfg(test)]
mod tests;
