//! The appending side of a log: one locked file, frames written whole, synced per policy.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
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

    /// Writes one record and syncs it per policy. Nothing is acknowledged yet: the caller
    /// applies the mutation, then keeps the record or cuts it off ([`LogWriter::rollback`]).
    ///
    /// On an error the record is cut off again, so the log holds nothing of it, and the error
    /// is the I/O failure. Should the cut fail too, the record may be in the file whole (written,
    /// then its fsync failed) or in part, so whether it will be replayed is unknown: the error
    /// is then [`Error::OutcomeUnknown`], and every later append fails until the bank is
    /// reopened (which shows whether it is there).
    pub(crate) fn append(&mut self, record: RecordRef<'_>) -> Result<Mark> {
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
        let policy = self.policy;
        let file = &mut self.file;
        // Whether the whole frame reached the file: a failed write leaves at most a part of it,
        // which replay never applies (it is the file's last bytes, a torn tail); a failed
        // fsync leaves it whole.
        let mut whole = false;
        let written = fault::write_all(file, &self.frame, "log.append.write").and_then(|()| {
            whole = true;
            match policy {
                SyncPolicy::EveryBatch => {
                    fault::step("log.append.sync").and_then(|()| file.sync_data())
                }
                _ => Ok(()),
            }
        });
        if let Err(e) = written {
            // Cut the frame off so the log never holds a record that was not acknowledged.
            return Err(match self.cut(mark, policy == SyncPolicy::EveryBatch) {
                Ok(()) => Error::io(&self.path, e),
                Err(cut) if !whole => self.error(format!(
                    "appending record {} failed ({e}) and the part written could not be cut off again ({cut}): the record is not in the log, but every write fails until the bank is reopened",
                    mark.seq
                )),
                Err(cut) => Error::OutcomeUnknown {
                    path: self.path.clone(),
                    problem: format!(
                        "syncing record {} failed ({e}), and cutting it off again failed too ({cut}): the record may be in the log; every write fails until the bank is reopened, which shows whether it was applied",
                        mark.seq
                    ),
                },
            });
        }
        if let Some(flusher) = &self.flusher {
            flusher.dirty.store(true, Ordering::Release);
        }
        self.len += self.frame.len() as u64;
        self.next_seq += 1;
        Ok(mark)
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
