//! A durable bank's files: opening (lock, load, replay, upgrade), creating, reading without a
//! lock, and the clean-up of interrupted saves.
//!
//! Every path a bank owns is derived from the canonical path of its snapshot (symbolic links
//! resolved), so a bank reached through a link and through its target is one bank: one log,
//! one lock, and a checkpoint replaces the target, never the link.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::pending::random_u64;
use crate::config::{BankConfig, Limits};
use crate::error::{Error, Result};
use crate::snapshot::{self, write_atomically, LoadOptions};
use crate::store::Store;
use crate::wal::{self, LogHeader, LogWriter, Recovery, SyncPolicy};

/// The snapshot path with every symbolic link resolved (the file itself may not exist yet:
/// then its folder is resolved). Refuses a folder.
pub(crate) fn canonical(path: &Path) -> Result<PathBuf> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(Error::value(
                path.display().to_string(),
                "is a directory: a bank is a file (for instance bank.safetensors)",
            ))
        }
        Ok(_) => return fs::canonicalize(path).map_err(|e| Error::io(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path, e)),
    }
    // A dangling link names a file to create: resolve it to its target.
    if let Ok(target) = fs::read_link(path) {
        let target = match path.parent() {
            Some(dir) => dir.join(target),
            None => target,
        };
        return canonical(&target);
    }
    let name = path
        .file_name()
        .ok_or_else(|| Error::value(path.display().to_string(), "is not a file path"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    Ok(dir.join(name))
}

/// Whether a bank's snapshot is at `path`.
pub(crate) fn exists(path: &Path) -> bool {
    path.is_file()
}

/// How many times a reader starts again when checkpoints keep replacing the snapshot while it
/// reads, before it gives up.
const READ_ATTEMPTS: usize = 1000;

/// Loads the snapshot and replays the log without a lock, changing no file (a reader's view:
/// a torn tail is skipped and left for the next writer).
///
/// A reader never misses an acknowledged write, even while a writer checkpoints. A checkpoint
/// renames the new snapshot into place and only then empties the log, so a reader that read the
/// old snapshot and then the emptied (or emptied and refilled) log would miss the records in
/// between. It detects that race instead of locking: after reading the log it checks that the
/// snapshot path still names the very file it read (same device and inode, the file held open
/// meanwhile so its inode cannot be reused); if a checkpoint replaced it, the reader starts
/// again (the new snapshot holds everything the emptied log held). Whatever a reader observed of
/// an emptied log happened after the rename, so the check after the log read always sees the new
/// file. Why not a shared lock: writers hold the log's lock for as long as they are open, so a
/// reader's lock would have to be a second lock file taken by every checkpoint, making readers
/// wait for checkpoints and need a writable folder; the check costs one `stat` and a rare retry.
pub(crate) fn read(path: &Path, device: &Device, limits: Limits) -> Result<(Store, Recovery)> {
    if !exists(path) {
        return Err(Error::NoBank {
            path: path.to_path_buf(),
        });
    }
    let log = wal::log_path(path);
    for _ in 0..READ_ATTEMPTS {
        let (snapshot, identity) = open_snapshot(path)?;
        let read = read_once(path, &snapshot, &log, device, limits);
        // Still the file we read: the log we read follows it.
        if file_identity(&fs::metadata(path).map_err(|e| Error::io(path, e))?) == identity {
            return read;
        }
        drop(snapshot);
        tracing::debug!(bank = %path.display(), "a checkpoint replaced the snapshot while it was read: reading again");
    }
    Err(Error::Log {
        path: log,
        problem: format!(
            "checkpoints replaced the snapshot {READ_ATTEMPTS} times while it was being read; try again"
        ),
    })
}

fn read_once(
    path: &Path,
    mut snapshot: &fs::File,
    log: &Path,
    device: &Device,
    limits: Limits,
) -> Result<(Store, Recovery)> {
    use std::io::Read;
    let mut bytes = Vec::new();
    snapshot
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let mut store = snapshot::load_bytes(path, &bytes, device, &LoadOptions::default())?;
    drop(bytes);
    store.set_limits(limits)?;
    let log_bytes = wal::read_log(log)?;
    let recovery = wal::replay_bytes(&mut store, &log_bytes, log)?;
    Ok((store, recovery))
}

/// The snapshot file, open, and its identity.
fn open_snapshot(path: &Path) -> Result<(fs::File, FileIdentity)> {
    let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    Ok((file, file_identity(&meta)))
}

/// What tells two files apart: device and inode on Unix (a rename puts a new inode at the
/// path), size and modification time elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity(u64, u64, u128);

#[cfg(unix)]
fn file_identity(meta: &fs::Metadata) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    FileIdentity(meta.dev(), meta.ino(), 0)
}

#[cfg(not(unix))]
fn file_identity(meta: &fs::Metadata) -> FileIdentity {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    FileIdentity(meta.len(), 0, modified)
}

/// Locks the log of the existing bank at `path`, loads the snapshot, replays, cuts a torn
/// tail, upgrades an older format, and leaves the log ready for appends. With `repair`, a log
/// damaged in the middle is cut at the damage too (the cut bytes saved beside it first) instead
/// of being an error.
pub(crate) fn open(
    path: &Path,
    device: &Device,
    sync: SyncPolicy,
    limits: Limits,
    repair: bool,
) -> Result<(Store, LogWriter, Recovery)> {
    let log_path = wal::log_path(path);
    // Lock first: the snapshot read after it cannot be replaced by another writer's checkpoint.
    let (mut log, bytes) = LogWriter::lock(&log_path, sync)?;
    let mut store = snapshot::load(path, device, &LoadOptions::default())?;
    store.set_limits(limits)?;
    let config = store.config().clone();
    log.ensure_header(
        LogHeader::new(config.dim, &config.model_id, store.bank_id()),
        &bytes,
    )?;
    let mut recovery = wal::replay(
        &mut store,
        &bytes,
        wal::ReplayOptions {
            path: &log_path,
            cut_corruption: repair,
        },
    )?;
    if let Some(tail) = &recovery.tail {
        if recovery.repaired {
            // The cut drops acknowledged records: keep their bytes.
            let saved = saved_tail_path(&log_path);
            write_atomically(&saved, |file, tmp| {
                use std::io::Write;
                file.write_all(&bytes[tail.offset as usize..])
                    .map_err(|e| Error::io(tmp, e))
            })?;
            tracing::warn!(
                log = %log_path.display(),
                offset = tail.offset,
                bytes = tail.bytes,
                records = tail.records,
                saved = %saved.display(),
                reason = %tail.reason,
                "cutting the damaged log at the damage, as asked"
            );
            recovery.saved_tail = Some(saved);
        } else {
            tracing::warn!(
                log = %log_path.display(),
                offset = tail.offset,
                bytes = tail.bytes,
                reason = %tail.reason,
                "dropping the log's torn tail"
            );
        }
    }
    if store.bank_id() == 0 {
        // A version-1 bank: give it an identity and write it in the current format. The new
        // snapshot holds every replayed record, so the old log is emptied after it.
        store.set_bank_id(random_u64().max(1));
        snapshot::save(&store, path)?;
        recovery.upgraded = true;
    }
    if recovery.upgraded || recovery.log_version == 1 {
        log.reset_to(LogHeader::new(
            config.dim,
            &config.model_id,
            store.bank_id(),
        ))?;
        recovery.valid_bytes = wal::HEADER_LEN as u64;
    } else if recovery.replayed == 0 {
        // Every record is already in the snapshot (a checkpoint that stopped before emptying
        // the log), or the log is new: start it afresh.
        recovery.valid_bytes = wal::HEADER_LEN as u64;
    }
    log.start(recovery.valid_bytes, store.log_seq() + 1)?;
    recovery.stale_temp_files = remove_stale_temp_files(path, store.bank_id());
    Ok((store, log, recovery))
}

/// Where a repair saves the bytes it cuts off the log: `<log>.cut-<unix ms>` beside it.
fn saved_tail_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(format!(".cut-{}", crate::store::now_ms()));
    PathBuf::from(name)
}

/// Creates a bank at `path`: locks its (new) log, writes an empty snapshot and the log's
/// header. If another process created the bank between the caller's check and the lock, the
/// existing bank is opened instead (`Ok(None)` asks the caller to open it).
pub(crate) fn create(
    path: &Path,
    config: BankConfig,
    device: &Device,
    sync: SyncPolicy,
    limits: Limits,
) -> Result<Option<(Store, LogWriter)>> {
    let mut store = Store::new(config, random_u64().max(1), device)?;
    store.set_limits(limits)?;
    let log_path = wal::log_path(path);
    let (mut log, bytes) = LogWriter::lock(&log_path, sync)?;
    if exists(path) {
        return Ok(None);
    }
    let written = snapshot::save(&store, path).and_then(|_| {
        let config = store.config();
        log.reset_to(LogHeader::new(
            config.dim,
            &config.model_id,
            store.bank_id(),
        ))?;
        log.start(log.len(), store.log_seq() + 1)
    });
    if let Err(e) = written {
        // Leave nothing behind: no snapshot was written, and an empty log beside nothing would
        // only confuse the next open.
        if bytes.is_empty() && !exists(path) {
            let _ = fs::remove_file(&log_path);
        }
        return Err(e);
    }
    Ok(Some((store, log)))
}

/// Writes `store` as a new bank at `path` under a new identity: locks the new log, refuses a
/// bank already there, writes the snapshot and the log's header. On failure nothing is left.
pub(crate) fn create_copy(path: &Path, store: &Store) -> Result<()> {
    if exists(path) {
        return Err(Error::BankExists {
            path: path.to_path_buf(),
        });
    }
    let log_path = wal::log_path(path);
    let (mut log, bytes) = LogWriter::lock(&log_path, SyncPolicy::EveryBatch)?;
    if exists(path) || !bytes.is_empty() {
        return Err(Error::BankExists {
            path: path.to_path_buf(),
        });
    }
    let bank_id = random_u64().max(1);
    let config = store.config();
    let written = snapshot::save_with_id(store, path, bank_id)
        .and_then(|_| log.reset_to(LogHeader::new(config.dim, &config.model_id, bank_id)));
    if let Err(e) = written {
        let _ = fs::remove_file(path);
        let _ = fs::remove_file(&log_path);
        return Err(e);
    }
    Ok(())
}

/// Removes the temporary files of interrupted saves of the bank at `path`: ours
/// (`.<name>.tmp-*`, see `snapshot::write_atomically`), and those an older memrl left through
/// safetensors' own writer (`.tmpXXXXXX`), recognised by the header they start with: a
/// snapshot of this very bank (its identity). Only a writer holding the log's lock calls this,
/// so no save of this bank is in flight elsewhere. Best effort: returns how many were removed.
fn remove_stale_temp_files(path: &Path, bank_id: u64) -> usize {
    let Some(prefix) = snapshot::temp_prefix(path) else {
        return 0;
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let is_legacy_temp = |name: &str| {
        name.len() == 10
            && name.starts_with(".tmp")
            && name[4..].bytes().all(|b| b.is_ascii_alphanumeric())
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix)
                || (is_legacy_temp(&name)
                    && entry.file_type().is_ok_and(|t| t.is_file())
                    && snapshot::peek_bank_id(&entry.path()) == Some(bank_id))
        })
        .filter(|entry| fs::remove_file(entry.path()).is_ok())
        .count()
}
