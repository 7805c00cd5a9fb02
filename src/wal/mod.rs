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
//! - **Visible once applied, acknowledged once durable.** Under [`SyncPolicy::EveryBatch`] a
//!   writer appends and applies under the bank's write lock, releases it, then waits until an
//!   fsync covers its record's sequence number (group commit: one fsync acknowledges every
//!   record committed before it started; `writer.rs`). Meanwhile other threads may already see
//!   the mutation (a retrieval, a later write); since the log is a sequence, a write that is
//!   acknowledged has every record before it durable too. A failed fsync fails every waiter it
//!   did not cover and poisons the bank: nothing is reported durable that is not, and reopening
//!   replays what is on disk.
//! - **Validate, log, apply.** A mutation is fully validated before its record is written, so a
//!   record in the log always applies. Should the apply still fail (a device error), the record is
//!   cut off the log again before the error returns.
//! - **Records hold decisions, not inputs.** An add's record is its plan: the ids, the unit keys
//!   and the key id each memory is filed under; an outcome batch's record is the final Q, visits
//!   and last reward of every memory it touched (with baseline-corrected credit also the final
//!   baseline of every memory of every key it touched), and the time it was applied. A replay therefore
//!   recomputes nothing: it is exact (bit for bit, timestamps included) on any device, whatever
//!   learning rule made the values.
//! - **A log belongs to one bank.** Its header holds the bank's identity (a random id fixed at
//!   creation and stored in the snapshot too), its dimension and model; a log of another bank is
//!   an error, never replayed.
//! - **The snapshot's `log_seq` is the commit point of a checkpoint.** A snapshot records the
//!   sequence number of the last record it reflects; replay skips records at or below it, so a
//!   crash between writing the snapshot and emptying the log replays nothing twice. Emptying the
//!   log is a truncation to its header.
//! - **A torn tail is dropped, never applied; damage in the middle is an error.** A torn tail
//!   is what a write cut short leaves at the end: the last frame cut off by the end of the file,
//!   or bytes after the last intact frame in which no intact frame can be found. Replay stops
//!   there, everything before it is kept, [`Recovery::tail`] says what was dropped, and a writer
//!   truncates the file there before appending. A frame that fails its CRC32C with an intact
//!   record of the sequence after it, an intact frame that does not decode, or one out of
//!   sequence is corruption: [`Error::CorruptLog`] names its offset and the log is left as it
//!   is, for readers and writers alike, until a repair is asked for
//!   (`OpenOptions::truncate_corrupt_log`), which cuts there and saves what it cut.
//! - **One writer.** A bank opened for writing takes an exclusive lock on the log file; a second
//!   writer (another process, or the same one) gets [`Error::Locked`]. Readers take no lock and
//!   change no file.

mod format;
mod writer;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{LearningConfig, RetrievalConfig};
use crate::error::{Error, Result};
use crate::learn::Outcome;
use crate::store::{AddPlan, OutcomePlan, Store};

pub(crate) use format::{LogHeader, HEADER_LEN};
pub(crate) use writer::{Commit, LogWriter};
#[cfg(test)]
pub(crate) use writer::{Durability, SyncHook};

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
pub(crate) enum Record {
    /// Memories added, every decision made.
    Add(AddPlan),
    /// The memory with this id removed.
    Remove(u64),
    /// An outcome batch, as the final state of every memory it touched.
    Outcomes(OutcomePlan),
    /// An outcome batch of a version-1 log: the batch and the learning config it was applied
    /// with, planned again on replay.
    OutcomesV1 {
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
    Add(&'a AddPlan),
    Remove(u64),
    Outcomes(&'a OutcomePlan),
    RetrievalConfig(&'a RetrievalConfig),
    LearningConfig(&'a LearningConfig),
}

/// Applies one record to a store, checking it as the original call did (all or nothing).
pub(crate) fn apply(store: &mut Store, record: &Record) -> Result<()> {
    match record {
        Record::Add(plan) => store.apply_add(plan).map(drop),
        Record::Remove(id) => store.remove(*id).map(drop),
        Record::Outcomes(plan) => store.apply_outcomes(plan),
        Record::OutcomesV1 {
            applied_ms,
            config,
            outcomes,
        } => {
            let (plan, _) = store.plan_outcomes(outcomes, config, *applied_ms)?;
            store.apply_outcomes(&plan)
        }
        Record::RetrievalConfig(config) => store.set_retrieval_config(config.clone()),
        Record::LearningConfig(config) => store.set_learning_config(config.clone()),
    }
}

/// The log beside a snapshot: `<snapshot file name>.wal` in the same folder.
pub(crate) fn log_path(snapshot: &Path) -> PathBuf {
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
    /// Intact records in the dropped part: 0 for a torn tail; more when a damaged log was cut
    /// on request (the records after the damage, lost to the bank).
    pub records: u64,
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
    /// The torn tail that was dropped, if any; or, when `repaired`, the damaged end of the log
    /// that was cut on request.
    pub tail: Option<Tail>,
    /// Whether `tail` is corruption cut on request (`OpenOptions::truncate_corrupt_log`), not a
    /// torn tail.
    pub repaired: bool,
    /// Where the bytes cut by a repair were saved (beside the log), if they were.
    pub saved_tail: Option<PathBuf>,
    /// Temporary files of interrupted snapshot saves that were removed (writers only).
    pub stale_temp_files: usize,
    /// The format version of the log that was read (0: there was none).
    pub log_version: u32,
    /// Whether the bank was rewritten in the current format (a writer opening a bank of an
    /// older format upgrades it).
    pub upgraded: bool,
}

/// Whether log bytes are too short to hold even their own header: a log that a crash cut while
/// it was being created (no record can be in it), or a missing one.
pub(crate) fn header_incomplete(bytes: &[u8]) -> bool {
    match LogHeader::decode(bytes) {
        Ok(_) => false,
        Err(_) => {
            bytes.len() < 24
                || (bytes.len() < HEADER_LEN
                    && bytes.starts_with(format::MAGIC)
                    && bytes[8..12] == format::VERSION.to_le_bytes())
        }
    }
}

/// How [`replay`] treats a log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplayOptions<'a> {
    /// Names the log in errors.
    pub(crate) path: &'a Path,
    /// Corruption (damage followed by intact records) ends the replay there, reported as the
    /// tail to cut, instead of being an error: the repair a caller asked for.
    pub(crate) cut_corruption: bool,
}

/// [`replay`] of a log named `path`, corruption an error.
pub(crate) fn replay_bytes(store: &mut Store, bytes: &[u8], path: &Path) -> Result<Recovery> {
    replay(
        store,
        bytes,
        ReplayOptions {
            path,
            cut_corruption: false,
        },
    )
}

/// Replays log bytes onto `store` (which was just loaded from the snapshot the log follows).
///
/// Errors: a header of another bank or another format, a log that starts after the snapshot
/// ends (records missing), a valid record that does not apply, and corruption
/// ([`Error::CorruptLog`], unless the options cut it). A log shorter than its header (a crash
/// while creating it) is empty.
///
/// A torn tail is not an error: it is reported in [`Recovery::tail`] and never applied. A torn
/// tail is the last frame cut short (the file ends inside it) or bytes after the last intact
/// frame that hold no intact frame (a write whose data did not all reach the disk: zeros, part
/// of a frame). Damage followed by an intact record that could continue the sequence is
/// corruption, not a tail: cutting there would drop acknowledged records. So is an intact
/// frame (its checksum matches) that does not decode, and an intact frame out of sequence.
pub(crate) fn replay(
    store: &mut Store,
    bytes: &[u8],
    options: ReplayOptions<'_>,
) -> Result<Recovery> {
    let path = options.path;
    let log_error = |problem: String| Error::Log {
        path: path.to_path_buf(),
        problem,
    };
    let mut recovery = Recovery {
        snapshot_seq: store.log_seq(),
        log_seq: store.log_seq(),
        ..Default::default()
    };
    if header_incomplete(bytes) {
        return Ok(recovery);
    }
    let header = LogHeader::decode(bytes).map_err(log_error)?;
    let config = store.config();
    let expected = LogHeader::new(config.dim, &config.model_id, store.bank_id());
    if header.dim != expected.dim || header.model_crc != expected.model_crc {
        return Err(log_error(format!(
            "the log belongs to another bank (dimension {}, model checksum {:08x}; the snapshot has dimension {}, model `{}`)",
            header.dim, header.model_crc, config.dim, config.model_id
        )));
    }
    // A version-1 log has no identity: it is trusted beside a bank without one (a version-1
    // snapshot), and beside a version-2 snapshot only for records the snapshot already holds
    // (what a crash in the middle of the upgrade leaves).
    let unbound = header.version == 1 && store.bank_id() != 0;
    if header.version == 2 && header.bank_id != store.bank_id() {
        return Err(log_error(format!(
            "the log belongs to another bank (bank id {:016x}; the snapshot's is {:016x})",
            header.bank_id,
            store.bank_id()
        )));
    }
    let mut pos = header.len();
    let mut previous: Option<u64> = None;
    while pos < bytes.len() {
        let (len, seq, record) = match format::decode_frame(&bytes[pos..]) {
            Ok(frame) => frame,
            Err(problem) => {
                // Damage followed by an intact record is corruption; damage with nothing intact
                // after it is a torn tail.
                let expected = previous.map_or(1, |p| p.saturating_add(1));
                let damage = match (&problem, next_intact_frame(bytes, pos + 1, expected)) {
                    (format::FrameError::Invalid(_), _) => None,
                    (_, None) => {
                        let what = match problem {
                            format::FrameError::Torn(_) => "torn record",
                            _ => "corrupt record",
                        };
                        recovery.tail = Some(tail(
                            pos,
                            bytes.len(),
                            format!("{what}: {}", problem.reason()),
                        ));
                        break;
                    }
                    (_, Some(found)) => Some(found),
                };
                let problem = match damage {
                    None => format!(
                        "the record at byte {pos} is intact (its checksum matches) but cannot be read: {}",
                        problem.reason()
                    ),
                    Some((at, next, _)) => format!(
                        "the record at byte {pos} is damaged ({}), and an intact record (number {next}) follows at byte {at}: this is corruption, not a torn tail",
                        problem.reason()
                    ),
                };
                corrupt(&mut recovery, bytes, pos, expected, problem, options)?;
                break;
            }
        };
        match previous {
            None if seq > store.log_seq().saturating_add(1) => {
                return Err(log_error(format!(
                    "the log starts at record {seq} but the snapshot ends at record {}: records {} to {} are missing",
                    store.log_seq(),
                    store.log_seq() + 1,
                    seq - 1
                )));
            }
            Some(prev) if Some(seq) != prev.checked_add(1) => {
                let problem = format!(
                    "the record at byte {pos} is number {seq} but follows number {prev}: the sequence is broken"
                );
                corrupt(
                    &mut recovery,
                    bytes,
                    pos,
                    prev.saturating_add(1),
                    problem,
                    options,
                )?;
                break;
            }
            _ => {}
        }
        previous = Some(seq);
        if seq <= recovery.snapshot_seq {
            recovery.skipped += 1;
        } else if unbound {
            return Err(log_error(format!(
                "a version-1 log (no bank id) holds record {seq}, which the bank's snapshot (id {:016x}) does not: it is not this bank's log",
                store.bank_id()
            )));
        } else {
            apply(store, &record).map_err(|e| {
                log_error(format!(
                    "record {seq} (byte {pos}) is intact but does not apply: {e}"
                ))
            })?;
            store.set_log_seq(seq);
            recovery.replayed += 1;
        }
        pos += len;
    }
    recovery.valid_bytes = pos as u64;
    recovery.log_seq = store.log_seq();
    recovery.log_version = header.version;
    Ok(recovery)
}

fn tail(offset: usize, end: usize, reason: String) -> Tail {
    Tail {
        offset: offset as u64,
        bytes: (end - offset) as u64,
        reason,
        records: 0,
    }
}

/// The first intact frame at or after `from` whose sequence number could follow the records
/// before the damage (at least `expected`, and no further on than the bytes left could hold):
/// `(offset, seq)`. Frames are found by their sequence number first (cheap), then checked whole
/// (length, checksum, body), so a stale or random byte pattern is not taken for a record.
fn next_intact_frame(bytes: &[u8], from: usize, expected: u64) -> Option<(usize, u64, usize)> {
    let mut at = from;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let furthest = expected.saturating_add((rest.len() / format::MIN_FRAME) as u64);
        match format::peek_seq(rest) {
            None => return None,
            Some(seq) if (expected..=furthest).contains(&seq) => {
                if let Ok((len, found, _)) = format::decode_frame(rest) {
                    if found == seq {
                        return Some((at, seq, len));
                    }
                }
            }
            Some(_) => {}
        }
        at += 1;
    }
    None
}

/// How many intact records lie in `bytes` from `from` on (what cutting there drops).
fn intact_records_from(bytes: &[u8], from: usize, expected: u64) -> u64 {
    let mut count = 0;
    let mut at = from;
    let mut expected = expected;
    while let Some((found, seq, len)) = next_intact_frame(bytes, at, expected) {
        count += 1;
        expected = seq.saturating_add(1);
        at = found + len;
    }
    count
}

/// Damage at `pos` that is not a torn tail: an error naming the offset, or, when the caller
/// asked for a repair, a tail to cut there (with the intact records it drops counted).
fn corrupt(
    recovery: &mut Recovery,
    bytes: &[u8],
    pos: usize,
    expected: u64,
    problem: String,
    options: ReplayOptions<'_>,
) -> Result<()> {
    if !options.cut_corruption {
        return Err(Error::CorruptLog {
            path: options.path.to_path_buf(),
            offset: pos as u64,
            problem: format!(
                "{problem}; the log is kept as it is (OpenOptions::truncate_corrupt_log or `memrl repair` cuts it there, dropping {} bytes)",
                bytes.len() - pos
            ),
        });
    }
    let mut cut = tail(pos, bytes.len(), problem);
    cut.records = intact_records_from(bytes, pos, expected);
    recovery.tail = Some(cut);
    recovery.repaired = true;
    Ok(())
}

/// Whether the file at `path` starts like a memrl log (its magic bytes).
#[cfg(feature = "embed")]
pub(crate) fn is_log_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == format::MAGIC)
}

/// The bytes of the log at `path`, or none when there is no log.
pub(crate) fn read_log(path: &Path) -> Result<Vec<u8>> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests;
