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
use crate::snapshot::{self, LoadOptions};
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

/// Loads the snapshot and replays the log without a lock, changing no file (a reader's view:
/// a torn tail is skipped and left for the next writer).
pub(crate) fn read(path: &Path, device: &Device, limits: Limits) -> Result<(Store, Recovery)> {
    if !exists(path) {
        return Err(Error::NoBank {
            path: path.to_path_buf(),
        });
    }
    let mut store = snapshot::load(path, device, &LoadOptions::default())?;
    store.set_limits(limits)?;
    let log = wal::log_path(path);
    let bytes = wal::read_log(&log)?;
    let recovery = wal::replay_bytes(&mut store, &bytes, &log)?;
    Ok((store, recovery))
}

/// Locks the log of the existing bank at `path`, loads the snapshot, replays, cuts a torn
/// tail, upgrades an older format, and leaves the log ready for appends.
pub(crate) fn open(
    path: &Path,
    device: &Device,
    sync: SyncPolicy,
    limits: Limits,
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
    let mut recovery = wal::replay_bytes(&mut store, &bytes, &log_path)?;
    if let Some(tail) = &recovery.tail {
        tracing::warn!(
            log = %log_path.display(),
            offset = tail.offset,
            bytes = tail.bytes,
            reason = %tail.reason,
            "dropping the log's torn tail"
        );
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
    recovery.stale_temp_files = remove_stale_temp_files(path);
    Ok((store, log, recovery))
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

/// Removes the temporary files of interrupted saves of `path` (`.<name>.tmp-*`, see
/// `snapshot::write_atomically`). Only a writer holding the log's lock calls this, so no save of
/// this bank is in flight elsewhere. Best effort: returns how many were removed.
fn remove_stale_temp_files(path: &Path) -> usize {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .filter(|entry| fs::remove_file(entry.path()).is_ok())
        .count()
}
