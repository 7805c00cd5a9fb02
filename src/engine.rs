//! The thread-safe facade: one bank shared by many agents, optionally durable.
//!
//! Concurrency contract: `Engine` is `Send + Sync`. Any number of threads may call
//! [`Engine::retrieve`], [`Engine::save`] and [`Engine::checkpoint`] at once (they share a read
//! lock); [`Engine::add`], [`Engine::add_many`], [`Engine::remove`], [`Engine::apply_outcomes`]
//! and the config setters take the write lock, so each is applied whole, in some serial order,
//! and a retrieval sees the bank either before or after it, never half-way. Writers are short
//! (host tables plus small device writes, and the log append), so readers wait at most one batch.
//! A save holds the read lock while it writes the file, so writers wait for the save to finish
//! (a snapshot is one consistent state of the bank). Lock poisoning cannot leave a half-applied
//! batch (every mutation validates first and writes the device before the host), so a poisoned
//! lock is recovered.
//!
//! Durability: an engine made by [`Engine::open`] or [`Engine::create`] owns the bank's
//! write-ahead log ([`crate::wal`]). Each mutation is validated, appended to the log (synced per
//! [`SyncPolicy`]) and then applied, all under the write lock, so the log's order is the order
//! of application and a replay of snapshot + log rebuilds exactly the bank in memory.
//! [`Engine::checkpoint`] writes the snapshot and empties the log.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use candle_core::{Device, Tensor};

use crate::bank::{now_ms, Bank, Memory, NewMemory};
use crate::config::{BankConfig, LearningConfig, Limits, RetrievalConfig};
use crate::error::{Error, Result};
use crate::learn::{Outcome, OutcomeReport};
use crate::retrieve::Hit;
use crate::snapshot::{self, LoadOptions};
use crate::wal::{self, LogHeader, LogWriter, RecordRef, Recovery, SyncPolicy};

/// How [`Engine::open`] and [`Engine::create`] treat the bank's files.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// What the snapshot must match.
    pub load: LoadOptions,
    /// When log records are synced to disk.
    pub sync: SyncPolicy,
    /// The bank's operational limits.
    pub limits: Limits,
}

/// A bank behind a reader-writer lock (see the module docs for the concurrency contract).
///
/// ```
/// use memrl::{BankConfig, Engine, NewMemory, Outcome};
/// let engine = Engine::new(BankConfig::new(3, "toy"), &memrl::Device::Cpu)?;
/// let id = engine.add(NewMemory { embedding: vec![0.0, 1.0, 0.0], ..Default::default() })?;
/// let cfg = engine.retrieval_config();
/// let hits = engine.retrieve_vectors(&[vec![0.0, 1.0, 0.1]], &cfg)?;
/// engine.apply_outcomes(&[Outcome { memory_ids: vec![hits[0][0].id], reward: 1.0 }])?;
/// assert!(engine.get(id).unwrap().q > 0.0);
/// # Ok::<(), memrl::Error>(())
/// ```
///
/// A durable engine: the bank lives in `bank.safetensors` and its log `bank.safetensors.wal`.
///
/// ```
/// use memrl::{BankConfig, Engine, NewMemory, OpenOptions};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("bank.safetensors");
/// let engine = Engine::create(&path, BankConfig::new(2, "toy"), &memrl::Device::Cpu, &OpenOptions::default())?;
/// engine.add(NewMemory { embedding: vec![1.0, 0.0], ..Default::default() })?; // logged
/// drop(engine); // no checkpoint: the add is in the log only
/// let (engine, recovery) = Engine::open(&path, &memrl::Device::Cpu, &OpenOptions::default())?;
/// assert_eq!((engine.len(), recovery.replayed), (1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Engine {
    bank: RwLock<Bank>,
    durable: Option<Durable>,
}

/// The files of a durable engine.
#[derive(Debug)]
struct Durable {
    snapshot: PathBuf,
    log: Mutex<LogWriter>,
}

impl Durable {
    fn log(&self) -> MutexGuard<'_, LogWriter> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Engine {
    /// An engine over a new, empty bank, in memory only.
    pub fn new(config: BankConfig, device: &Device) -> Result<Self> {
        Ok(Self::from_bank(Bank::new(config, device)?))
    }

    /// An engine over an existing bank, in memory only.
    pub fn from_bank(bank: Bank) -> Self {
        Self {
            bank: RwLock::new(bank),
            durable: None,
        }
    }

    /// Loads a snapshot into an in-memory engine (see [`snapshot::load`]); its log, if any, is
    /// ignored: use [`Engine::open`] for a durable bank.
    pub fn load(path: &Path, device: &Device, options: &LoadOptions) -> Result<Self> {
        Ok(Self::from_bank(snapshot::load(path, device, options)?))
    }

    /// Creates a durable bank at `path` (an empty snapshot and an empty log beside it). Fails if
    /// a snapshot is already there.
    pub fn create(
        path: &Path,
        config: BankConfig,
        device: &Device,
        options: &OpenOptions,
    ) -> Result<Self> {
        Self::create_with(path, Bank::new(config, device)?, options)
    }

    /// [`Engine::create`] with a bank built in memory: its first snapshot holds it all.
    pub fn create_with(path: &Path, mut bank: Bank, options: &OpenOptions) -> Result<Self> {
        bank.set_limits(options.limits)?;
        let header = LogHeader::new(bank.config().dim, &bank.config().model_id);
        let (mut log, _) = LogWriter::lock(&wal::log_path(path), options.sync)?;
        if path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a bank is already there (open it instead)",
                ),
            ));
        }
        snapshot::save(&bank, path)?;
        log.reset_to(header)?;
        log.start(log.len(), bank.log_seq() + 1)?;
        Ok(Self {
            bank: RwLock::new(bank),
            durable: Some(Durable {
                snapshot: path.to_path_buf(),
                log: Mutex::new(log),
            }),
        })
    }

    /// Opens the durable bank at `path`: locks its log (one writer at a time), loads the
    /// snapshot, replays the log, cuts off a torn tail, and removes temporary files that
    /// interrupted saves left. The [`Recovery`] says what was replayed and dropped.
    pub fn open(path: &Path, device: &Device, options: &OpenOptions) -> Result<(Self, Recovery)> {
        let (bank, log, recovery) = open_files(path, device, options)?;
        let engine = Self {
            bank: RwLock::new(bank),
            durable: Some(Durable {
                snapshot: path.to_path_buf(),
                log: Mutex::new(log),
            }),
        };
        Ok((engine, recovery))
    }

    /// Whether mutations are logged (the engine came from [`Engine::open`] or
    /// [`Engine::create`]).
    pub fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// Bytes in the write-ahead log (header included), or `None` for an in-memory engine. A
    /// caller can checkpoint when this grows past the snapshot's size.
    pub fn log_bytes(&self) -> Option<u64> {
        self.durable.as_ref().map(|d| d.log().len())
    }

    /// Writes a snapshot atomically; retrievals go on meanwhile, writers wait for it. The log,
    /// if any, is left as it is (see [`Engine::checkpoint`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        snapshot::save(&self.read(), path)
    }

    /// Writes the bank's snapshot and empties its log: replay then starts from here. Retrievals
    /// go on meanwhile; writers wait. An error for an in-memory engine.
    pub fn checkpoint(&self) -> Result<()> {
        let durable = self.durable()?;
        let bank = self.read();
        snapshot::save(&bank, &durable.snapshot)?;
        // The snapshot (with its log_seq) is the commit point; emptying the log is cleanup.
        durable.log().reset()
    }

    /// Runs `f` on the bank without logging each change, then checkpoints: a bulk load, written
    /// as one new snapshot, all or nothing. If `f` or the checkpoint fails, the bank is read back
    /// from its files, so memory matches disk again. An error for an in-memory engine.
    pub fn bulk<T>(&mut self, f: impl FnOnce(&mut Bank) -> Result<T>) -> Result<T> {
        let durable = self.durable.as_mut().ok_or_else(not_durable)?;
        let bank = self
            .bank
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = f(bank).and_then(|value| {
            snapshot::save(bank, &durable.snapshot)?;
            durable
                .log
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .reset()?;
            Ok(value)
        });
        if result.is_err() {
            let log = durable
                .log
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let device = bank.device().clone();
            let limits = *bank.limits();
            match wal::recover(&durable.snapshot, &device, &LoadOptions::default()) {
                Ok((mut reloaded, _)) => {
                    reloaded.set_limits(limits)?;
                    *bank = reloaded;
                }
                Err(e) => log.poison(format!(
                    "a failed bulk change left the bank in memory unlike its files, and reading them back failed ({e})"
                )),
            }
        }
        result
    }

    fn durable(&self) -> Result<&Durable> {
        self.durable.as_ref().ok_or_else(not_durable)
    }

    fn read(&self) -> RwLockReadGuard<'_, Bank> {
        self.bank
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Bank> {
        self.bank
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Logs `record` (when durable), then applies it with `apply`; the record is cut off again
    /// if `apply` fails. The caller has validated the mutation and holds the write lock.
    fn logged<T>(
        &self,
        bank: &mut Bank,
        record: RecordRef<'_>,
        apply: impl FnOnce(&mut Bank) -> Result<T>,
    ) -> Result<T> {
        let Some(durable) = &self.durable else {
            return apply(bank);
        };
        let mut log = durable.log();
        let mark = log.append(record)?;
        match apply(bank) {
            Ok(value) => {
                bank.set_log_seq(mark.seq);
                Ok(value)
            }
            Err(e) => {
                log.rollback(mark);
                Err(e)
            }
        }
    }

    /// Runs `f` with shared access to the bank (for reads the facade does not cover).
    pub fn with_bank<T>(&self, f: impl FnOnce(&Bank) -> T) -> T {
        f(&self.read())
    }

    /// Takes the bank back out of the engine.
    pub fn into_bank(self) -> Bank {
        self.bank
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// See [`Bank::retrieve`].
    pub fn retrieve(&self, queries: &Tensor, config: &RetrievalConfig) -> Result<Vec<Vec<Hit>>> {
        self.read().retrieve(queries, config)
    }

    /// See [`Bank::retrieve_vectors`].
    pub fn retrieve_vectors(
        &self,
        queries: &[Vec<f32>],
        config: &RetrievalConfig,
    ) -> Result<Vec<Vec<Hit>>> {
        self.read().retrieve_vectors(queries, config)
    }

    /// See [`Bank::add`].
    pub fn add(&self, memory: NewMemory) -> Result<u64> {
        let ids = self.add_many(vec![memory])?;
        Ok(ids[0])
    }

    /// See [`Bank::add_many`].
    pub fn add_many(&self, memories: Vec<NewMemory>) -> Result<Vec<u64>> {
        let mut bank = self.write();
        let add = bank.resolve_add(memories, now_ms())?;
        self.logged(&mut bank, RecordRef::Add(&add), |bank| bank.apply_add(&add))
    }

    /// See [`Bank::remove`].
    pub fn remove(&self, id: u64) -> Result<Memory> {
        let mut bank = self.write();
        if !bank.contains(id) {
            return Err(Error::NotFound(id));
        }
        self.logged(&mut bank, RecordRef::Remove(id), |bank| bank.remove(id))
    }

    /// See [`Bank::apply_outcomes`].
    pub fn apply_outcomes(&self, outcomes: &[Outcome]) -> Result<OutcomeReport> {
        let mut bank = self.write();
        let config = bank.learning_config().clone();
        if self.durable.is_none() {
            return bank.apply_outcomes_with(outcomes, &config);
        }
        bank.check_outcomes(outcomes, &config)?;
        let applied_ms = now_ms();
        let record = RecordRef::Outcomes {
            applied_ms,
            config: &config,
            outcomes,
        };
        self.logged(&mut bank, record, |bank| {
            bank.apply_outcomes_at(outcomes, &config, applied_ms)
        })
    }

    /// See [`Bank::set_retrieval_config`] (logged when durable).
    pub fn set_retrieval_config(&self, config: RetrievalConfig) -> Result<()> {
        config.validate()?;
        let mut bank = self.write();
        self.logged(&mut bank, RecordRef::RetrievalConfig(&config), |bank| {
            bank.set_retrieval_config(config.clone())
        })
    }

    /// See [`Bank::set_learning_config`] (logged when durable).
    pub fn set_learning_config(&self, config: LearningConfig) -> Result<()> {
        config.validate()?;
        let mut bank = self.write();
        self.logged(&mut bank, RecordRef::LearningConfig(&config), |bank| {
            bank.set_learning_config(config.clone())
        })
    }

    /// The log sequence number of the last applied mutation (see [`Bank::log_seq`]).
    pub fn log_seq(&self) -> u64 {
        self.read().log_seq()
    }

    /// A copy of one memory.
    pub fn get(&self, id: u64) -> Option<Memory> {
        self.read().get(id).cloned()
    }

    /// Number of memories.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the bank is empty.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// A copy of the bank's stored retrieval config.
    pub fn retrieval_config(&self) -> RetrievalConfig {
        self.read().retrieval_config().clone()
    }
}

fn not_durable() -> Error {
    Error::config(
        "engine",
        "in memory",
        "this needs a bank on disk: Engine::open or Engine::create",
    )
}

/// Locks the log, loads the snapshot, replays, and leaves the log ready for appends.
fn open_files(
    path: &Path,
    device: &Device,
    options: &OpenOptions,
) -> Result<(Bank, LogWriter, Recovery)> {
    if !path.exists() {
        // Before the lock, which would create an empty log beside nothing.
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no bank here (create it first)",
            ),
        ));
    }
    let log_path = wal::log_path(path);
    // Lock first: the snapshot read after it cannot be replaced by another writer's checkpoint.
    let (mut log, bytes) = LogWriter::lock(&log_path, options.sync)?;
    let mut bank = snapshot::load(path, device, &options.load)?;
    bank.set_limits(options.limits)?;
    log.ensure_header(LogHeader::new(bank.config().dim, &bank.config().model_id))?;
    let mut recovery = wal::replay_bytes(&mut bank, &bytes, &log_path)?;
    if recovery.replayed == 0 {
        // Every record is already in the snapshot (a checkpoint that stopped before emptying
        // the log), the log ends before the snapshot, or it is new: start it afresh.
        recovery.valid_bytes = wal::HEADER_LEN as u64;
    }
    if let Some(tail) = &recovery.tail {
        tracing::warn!(
            log = %log_path.display(),
            offset = tail.offset,
            bytes = tail.bytes,
            reason = %tail.reason,
            "dropping the log's torn tail"
        );
    }
    log.start(recovery.valid_bytes, bank.log_seq() + 1)?;
    recovery.stale_temp_files = remove_stale_temp_files(path);
    Ok((bank, log, recovery))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Engine>();
    }
}
