//! The appending side of a log: one locked file, frames written whole, synced per policy.
//!
//! Group commit ([`SyncPolicy::EveryBatch`]): an append writes its frame under the log's lock
//! but does not sync it. Once the bank has applied the mutation it commits the record
//! ([`LogWriter::commit`]), releases its locks and waits on the [`Commit`] ticket: the first
//! waiter to find no sync running becomes the leader, notes the highest committed sequence
//! number and fsyncs; that one fsync acknowledges every record up to the number it noted, and
//! the waiters it does not cover elect the next leader. Durability is tracked by sequence
//! number, never by byte offset: a checkpoint empties the log, and its snapshot makes everything
//! before it durable ([`Durability::covered_by_snapshot`]). A failed fsync is final: every waiter
//! not yet covered fails, and so does every later append (after a failed fsync the kernel may
//! have dropped the dirty pages, so a retry that succeeds proves nothing).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fault;

use super::format::{self, LogHeader, HEADER_LEN};
use super::header_incomplete;
use super::{RecordRef, SyncPolicy};

/// Where an append started, to cut it off again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    pub(crate) seq: u64,
    offset: u64,
}

/// The only writer of one log file (it holds an exclusive lock on it).
#[derive(Debug)]
pub(crate) struct LogWriter {
    path: PathBuf,
    file: File,
    /// Bytes of the file; appends go here.
    len: u64,
    /// Bytes of the file's header (what an emptied log keeps).
    header_len: u64,
    /// Sequence number of the next record.
    next_seq: u64,
    policy: SyncPolicy,
    flusher: Option<Flusher>,
    /// Set when the file may no longer match what was acknowledged; every append then fails.
    broken: Option<String>,
    frame: Vec<u8>,
    durability: Arc<Durability>,
}

impl LogWriter {
    /// Opens (or creates) the log at `path` and locks it. Returns the writer and the file's
    /// bytes, for the caller to replay before it calls [`LogWriter::start`].
    pub(crate) fn lock(path: &Path, policy: SyncPolicy) -> Result<(Self, Vec<u8>)> {
        let io = |e| Error::io(path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => Error::Locked {
                path: path.to_path_buf(),
            },
            std::fs::TryLockError::Error(e) => Error::io(path, e),
        })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let durability = Arc::new(Durability::new(file.try_clone().map_err(io)?, path));
        let writer = Self {
            path: path.to_path_buf(),
            file,
            len: bytes.len() as u64,
            header_len: HEADER_LEN as u64,
            next_seq: 1,
            policy,
            flusher: None,
            broken: None,
            frame: Vec::new(),
            durability,
        };
        Ok((writer, bytes))
    }

    /// Gives a log shorter than its header (new, or a crash while it was being created: no
    /// record can be in it) the header `header`; `bytes` are the file's bytes, as `lock` read
    /// them. A complete header is left as it is (replay checks it), and its length noted.
    pub(crate) fn ensure_header(&mut self, header: LogHeader, bytes: &[u8]) -> Result<()> {
        if !header_incomplete(bytes) {
            if let Ok(found) = LogHeader::decode(bytes) {
                self.header_len = found.len() as u64;
            }
            return Ok(());
        }
        let io = |e| Error::io(&self.path, e);
        fault::step("log.header.truncate")
            .and_then(|()| self.file.set_len(0))
            .map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        fault::write_all(&mut self.file, &header.encode(), "log.header.write").map_err(io)?;
        fault::step("log.header.sync")
            .and_then(|()| self.file.sync_all())
            .map_err(io)?;
        sync_dir(&self.path)?;
        self.len = HEADER_LEN as u64;
        self.header_len = HEADER_LEN as u64;
        Ok(())
    }

    /// Cuts the file to `valid_len` bytes (dropping a torn tail) and starts appending at record
    /// `next_seq`.
    pub(crate) fn start(&mut self, valid_len: u64, next_seq: u64) -> Result<()> {
        if valid_len != self.len {
            fault::step("log.start.truncate")
                .and_then(|()| self.file.set_len(valid_len))
                .and_then(|()| self.file.sync_all())
                .map_err(|e| Error::io(&self.path, e))?;
            self.len = valid_len;
        }
        self.file
            .seek(SeekFrom::Start(self.len))
            .map_err(|e| Error::io(&self.path, e))?;
        self.next_seq = next_seq;
        // Everything before `next_seq` was read back from the file (or is in the snapshot).
        self.durability.start(next_seq - 1);
        if let SyncPolicy::Interval(every) = self.policy {
            let clone = self
                .file
                .try_clone()
                .map_err(|e| Error::io(&self.path, e))?;
            self.flusher =
                Some(Flusher::start(clone, every).map_err(|e| Error::io(&self.path, e))?);
        }
        Ok(())
    }

    /// Bytes in the file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The log's durability state, shared with the waiters of [`Commit`] tickets.
    pub(crate) fn durability(&self) -> &Arc<Durability> {
        &self.durability
    }

    /// Writes one record (not synced: see the module docs). Nothing is acknowledged yet: the
    /// caller applies the mutation, then keeps the record ([`LogWriter::commit`]) or cuts it off
    /// ([`LogWriter::rollback`]).
    ///
    /// On an error the record is cut off again, so the log holds nothing of it, and the error
    /// is the I/O failure. Should the cut fail too, the writer is broken: every later append
    /// fails until the bank is reopened (the part written is a torn tail, which replay drops).
    pub(crate) fn append(&mut self, record: RecordRef<'_>) -> Result<Mark> {
        if let Some(problem) = self.durability.failure() {
            self.broken = Some(problem);
        }
        if let Some(problem) = &self.broken {
            return Err(self.error(format!("{problem}; reopen the bank")));
        }
        if let Some(flusher) = &self.flusher {
            if let Some(problem) = flusher.failure() {
                self.broken = Some(format!("a background fsync failed: {problem}"));
                return Err(self.error(format!(
                    "a background fsync failed: {problem}; reopen the bank"
                )));
            }
        }
        let mark = Mark {
            seq: self.next_seq,
            offset: self.len,
        };
        self.frame.clear();
        format::encode_frame(mark.seq, record, &mut self.frame).map_err(|p| self.error(p))?;
        if let Err(e) = fault::write_all(&mut self.file, &self.frame, "log.append.write") {
            // The frame may be partly on disk (at most a part of it: replay never applies a
            // torn tail): cut it off so the log never holds a record that was not acknowledged.
            return Err(match self.cut(mark, self.policy == SyncPolicy::EveryBatch) {
                Ok(()) => Error::io(&self.path, e),
                Err(cut) => self.error(format!(
                    "appending record {} failed ({e}) and the part written could not be cut off again ({cut}): the record is not in the log, but every write fails until the bank is reopened",
                    mark.seq
                )),
            });
        }
        if let Some(flusher) = &self.flusher {
            flusher.dirty.store(true, Ordering::Release);
        }
        self.len += self.frame.len() as u64;
        self.next_seq += 1;
        Ok(mark)
    }

    /// Keeps the record appended at `mark` (its mutation was applied): the next sync covers it.
    /// The ticket says when it is durable; under a policy other than
    /// [`SyncPolicy::EveryBatch`] there is nothing to wait for.
    pub(crate) fn commit(&mut self, mark: Mark) -> Commit {
        self.durability.written.store(mark.seq, Ordering::Release);
        Commit {
            durability: match self.policy {
                SyncPolicy::EveryBatch => Some(Arc::clone(&self.durability)),
                _ => None,
            },
            seq: mark.seq,
        }
    }

    /// Removes the record appended at `mark` (its mutation failed to apply). An error means
    /// the record may still be in the file; the writer then refuses every append.
    pub(crate) fn rollback(&mut self, mark: Mark) -> std::result::Result<(), String> {
        self.cut(mark, self.policy == SyncPolicy::EveryBatch)
    }

    /// Truncates the file at `mark`, synced when `sync`. On failure the writer is broken (the
    /// file may not end where it thinks) and the problem is returned.
    fn cut(&mut self, mark: Mark, sync: bool) -> std::result::Result<(), String> {
        let file = &mut self.file;
        let cut = fault::step("log.cut.truncate")
            .and_then(|()| file.set_len(mark.offset))
            .and_then(|()| file.seek(SeekFrom::Start(mark.offset)).map(drop))
            .and_then(|()| match sync {
                true => fault::step("log.cut.sync").and_then(|()| file.sync_data()),
                false => Ok(()),
            });
        match cut {
            Ok(()) => {
                self.len = mark.offset;
                self.next_seq = mark.seq;
                Ok(())
            }
            Err(e) => {
                let problem = format!(
                    "the log could not be cut back to byte {} ({e})",
                    mark.offset
                );
                self.broken = Some(problem.clone());
                Err(problem)
            }
        }
    }

    /// Empties the log (after a snapshot that holds everything in it was written). A failure
    /// leaves the writer broken: every later append fails until the bank is reopened.
    pub(crate) fn reset(&mut self) -> Result<()> {
        let mark = Mark {
            seq: self.next_seq,
            offset: self.header_len,
        };
        self.cut(mark, true).map_err(|problem| self.error(problem))
    }

    /// Empties the log and writes `header` (a new bank over whatever log was there, or a bank
    /// upgraded to the current format).
    pub(crate) fn reset_to(&mut self, header: LogHeader) -> Result<()> {
        self.len = 0;
        self.ensure_header(header, &[])
    }

    fn error(&self, problem: String) -> Error {
        Error::Log {
            path: self.path.clone(),
            problem,
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Stop the flusher first: it syncs one last time on the way out.
        self.flusher.take();
    }
}

/// fsyncs the folder holding `path`, so a newly created file's name is durable.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fault::step("log.dir_sync")
        .and_then(|()| File::open(&dir))
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&dir, e))
}

/// Which records of a log are on disk, and who is syncing (see the module docs).
pub(crate) struct Durability {
    /// A second descriptor of the log file, synced outside the log's lock.
    file: File,
    path: PathBuf,
    /// The highest committed sequence number: its frame and every earlier one are written.
    written: AtomicU64,
    /// fsyncs run by leaders.
    syncs: AtomicU64,
    state: Mutex<SyncState>,
    synced: Condvar,
    #[cfg(test)]
    hook: Mutex<Option<SyncHook>>,
}

/// Runs in a leader before its fsync; an error fails the sync (fault injection in tests).
#[cfg(test)]
pub(crate) type SyncHook = Box<dyn FnMut() -> std::io::Result<()> + Send>;

#[derive(Debug, Default)]
struct SyncState {
    /// Every record up to this sequence number is durable.
    durable: u64,
    /// A leader's fsync is running.
    syncing: bool,
    /// Why a sync failed: final.
    failed: Option<String>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("path", &self.path)
            .field("written", &self.written)
            .field("state", &*self.state())
            .finish_non_exhaustive()
    }
}

impl Durability {
    fn new(file: File, path: &Path) -> Self {
        Self {
            file,
            path: path.to_path_buf(),
            written: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            state: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            #[cfg(test)]
            hook: Mutex::new(None),
        }
    }

    fn state(&self) -> MutexGuard<'_, SyncState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn start(&self, seq: u64) {
        self.written.store(seq, Ordering::Release);
        let mut state = self.state();
        state.durable = state.durable.max(seq);
    }

    /// Why a sync failed, if one did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.state().failed.clone()
    }

    /// fsyncs run so far.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// A snapshot holding every record up to `seq` was written: they are durable, whatever the
    /// log's syncs do.
    pub(crate) fn covered_by_snapshot(&self, seq: u64) {
        let mut state = self.state();
        if seq > state.durable {
            state.durable = seq;
            self.synced.notify_all();
        }
    }

    /// The highest committed sequence number (tests).
    #[cfg(test)]
    pub(crate) fn committed(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Every record up to this sequence number is durable (tests).
    #[cfg(test)]
    pub(crate) fn durable(&self) -> u64 {
        self.state().durable
    }

    /// Installs a hook that runs before every fsync (tests).
    #[cfg(test)]
    pub(crate) fn set_sync_hook(&self, hook: Option<SyncHook>) {
        *self.hook.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    fn sync(&self) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(hook) = self.hook.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            hook()?;
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        fault::step("log.append.sync").and_then(|()| self.file.sync_data())
    }

    /// Returns once record `seq` is durable: as the leader of a sync, or covered by another's.
    fn wait(&self, seq: u64) -> Result<()> {
        let mut state = self.state();
        loop {
            if state.durable >= seq {
                return Ok(());
            }
            if let Some(problem) = &state.failed {
                // Applied in memory, but maybe not on disk: neither success nor failure.
                return Err(Error::OutcomeUnknown {
                    path: self.path.clone(),
                    problem: format!(
                        "{problem}: this write may or may not be on disk; every write fails until the bank is reopened (it replays what is on disk)"
                    ),
                });
            }
            if state.syncing {
                state = self
                    .synced
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            // Lead: one fsync for every record committed so far.
            state.syncing = true;
            let target = self.written.load(Ordering::Acquire);
            drop(state);
            let synced = self.sync();
            state = self.state();
            state.syncing = false;
            match synced {
                Ok(()) => state.durable = state.durable.max(target),
                Err(e) => state.failed = Some(format!("syncing the log failed ({e})")),
            }
            self.synced.notify_all();
        }
    }
}

/// A committed record's ticket: [`Commit::wait`] returns once it is durable.
#[must_use = "a write is acknowledged only once its record is durable"]
#[derive(Debug)]
pub(crate) struct Commit {
    /// `None` when the policy does not sync per write.
    durability: Option<Arc<Durability>>,
    seq: u64,
}

impl Commit {
    /// Blocks until the record is durable (group commit), or the sync that should have made it
    /// so failed.
    pub(crate) fn wait(self) -> Result<()> {
        match &self.durability {
            Some(durability) => durability.wait(self.seq),
            None => Ok(()),
        }
    }
}

/// The background thread of [`SyncPolicy::Interval`].
#[derive(Debug)]
struct Flusher {
    dirty: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(file: File, every: Duration) -> std::io::Result<Self> {
        let dirty = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = {
            let dirty = Arc::clone(&dirty);
            let failure = Arc::clone(&failure);
            std::thread::Builder::new()
                .name("memrl-log-sync".into())
                .spawn(move || loop {
                    let last =
                        !matches!(stopped.recv_timeout(every), Err(RecvTimeoutError::Timeout));
                    if dirty.swap(false, Ordering::AcqRel) {
                        if let Err(e) = file.sync_data() {
                            if let Ok(mut slot) = failure.lock() {
                                *slot = Some(e.to_string());
                            }
                        }
                    }
                    if last {
                        break;
                    }
                })?
        };
        Ok(Self {
            dirty,
            failure,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|slot| slot.clone())
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
