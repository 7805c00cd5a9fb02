//! Namespaces: one durable bank per namespace, each in its own folder of the data directory
//! (`<data>/<name>/bank.safetensors` and its write-ahead log), with its own batching queue.
//!
//! A namespace is created on its first write (with the server's model, or the server's default
//! dimension and model id for vectors), or explicitly with a config; reads of a namespace that
//! does not exist are 404 and create nothing. Names are 1 to 64 characters of `A-Z a-z 0-9 _ -`,
//! starting with a letter or digit: no path separator, no `..`, no hidden file, so a name is
//! always one plain folder inside the data directory.
//!
//! Every request holds its namespace's gate (a shared lock) for as long as it uses the bank;
//! deleting a namespace takes the gate exclusively (so it waits for the requests in flight and
//! no request starts on a deleted bank), closes the bank, moves its folder aside (one rename,
//! atomic) and removes it. Folders moved aside by a deletion that a crash interrupted are removed
//! at startup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use memrl::embed::Embedder;
use memrl::{
    Bank, BankConfig, BatchConfig, Batcher, CheckpointPolicy, Device, Limits, Retention, SyncPolicy,
};
use tokio::sync::{Mutex, OwnedRwLockReadGuard, RwLock as AsyncRwLock};

use crate::error::ApiError;

/// The snapshot's file name inside a namespace's folder.
pub const BANK_FILE: &str = "bank.safetensors";
/// The longest namespace name.
pub const MAX_NAME_LEN: usize = 64;
const TRASH_PREFIX: &str = ".trash-";

/// Checks a namespace name (see the module docs); the error says what is wrong.
pub fn validate_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid namespace name {:?}: 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ -, starting with a letter or digit",
            truncate(name, 80)
        ))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// How banks are opened and served.
#[derive(Clone)]
pub struct BankSettings {
    /// The server's embedding model: used by every namespace whose bank holds its keys.
    pub embedder: Option<Arc<Embedder>>,
    /// The config of a namespace created by its first write: the model's, or the server's
    /// `--dim`/`--model-id`. `None`: namespaces must be created explicitly.
    pub default_config: Option<BankConfig>,
    /// When log records are synced (group commit under `EveryBatch`).
    pub sync: SyncPolicy,
    /// When a bank checkpoints on its own.
    pub checkpoint: CheckpointPolicy,
    /// How long retrievals are remembered for feedback.
    pub retention: Retention,
    /// Text, batch and bank-size limits of every bank.
    pub limits: Limits,
    /// The device of the keys.
    pub device: Device,
    /// The batching queue of each namespace; `None` serves every request with its own call.
    pub batch: Option<BatchConfig>,
}

/// One open namespace.
pub struct Namespace {
    name: String,
    bank: Arc<Bank>,
    batcher: Option<Batcher>,
    /// `true` once deleted.
    gate: Arc<AsyncRwLock<bool>>,
}

impl Namespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bank.
    pub fn bank(&self) -> &Arc<Bank> {
        &self.bank
    }

    /// Its batching queue (`None` when batching is off).
    pub fn batcher(&self) -> Option<&Batcher> {
        self.batcher.as_ref()
    }
}

/// A namespace in use: holds its gate, so it is not deleted meanwhile. Moves into blocking
/// tasks.
pub struct Handle {
    namespace: Arc<Namespace>,
    _gate: OwnedRwLockReadGuard<bool>,
}

impl std::ops::Deref for Handle {
    type Target = Namespace;
    fn deref(&self) -> &Namespace {
        &self.namespace
    }
}

/// Every namespace of a data directory.
pub struct Namespaces {
    dir: PathBuf,
    settings: BankSettings,
    open: RwLock<HashMap<String, Arc<Namespace>>>,
    /// Serialises opening, creating and deleting (lookups of open namespaces do not take it).
    changes: Mutex<()>,
}

impl Namespaces {
    /// The namespaces of `dir` (created if missing); removes what interrupted deletions left.
    pub fn new(dir: &Path, settings: BankSettings) -> std::io::Result<Namespaces> {
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(TRASH_PREFIX)
            {
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a deleted namespace's folder");
                }
            }
        }
        Ok(Namespaces {
            dir,
            settings,
            open: RwLock::new(HashMap::new()),
            changes: Mutex::new(()),
        })
    }

    /// The data directory (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How banks are opened.
    pub fn settings(&self) -> &BankSettings {
        &self.settings
    }

    fn bank_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join(BANK_FILE)
    }

    /// Names of the namespaces on disk, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|name| validate_name(name).is_ok())
                    .filter(|name| self.bank_path(name).is_file())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The namespaces open now, sorted by name.
    pub fn opened(&self) -> Vec<Arc<Namespace>> {
        let mut open: Vec<Arc<Namespace>> = self.read_map().values().cloned().collect();
        open.sort_by(|a, b| a.name.cmp(&b.name));
        open
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Namespace>>> {
        self.open.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Namespace>>> {
        self.open.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens every namespace on disk (replaying its log); one that fails is logged and left
    /// closed (a request to it tries again and reports the error).
    pub async fn open_all(&self) -> usize {
        let mut opened = 0;
        for name in self.names() {
            match self.get(&name, None).await {
                Ok(Some(_)) => opened += 1,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(namespace = %name, error = %e.message, "cannot open the namespace")
                }
            }
        }
        opened
    }

    /// The namespace, opened if need be; `create`: the config to create it with when it does
    /// not exist (`None`: a missing namespace is `Ok(None)`).
    async fn get(
        &self,
        name: &str,
        create: Option<BankConfig>,
    ) -> Result<Option<Arc<Namespace>>, ApiError> {
        validate_name(name).map_err(ApiError::invalid)?;
        if let Some(ns) = self.read_map().get(name) {
            return Ok(Some(ns.clone()));
        }
        let _changes = self.changes.lock().await;
        if let Some(ns) = self.read_map().get(name) {
            return Ok(Some(ns.clone()));
        }
        let path = self.bank_path(name);
        if !path.is_file() && create.is_none() {
            return Ok(None);
        }
        let settings = self.settings.clone();
        let folder = self.dir.join(name);
        let bank = tokio::task::spawn_blocking(move || open_bank(&folder, &settings, create))
            .await
            .map_err(|e| ApiError::internal(format!("opening the bank: {e}")))??;
        let bank = Arc::new(bank);
        let batcher = match &self.settings.batch {
            Some(config) => Some(Batcher::new(bank.clone(), config.clone())?),
            None => None,
        };
        let ns = Arc::new(Namespace {
            name: name.to_string(),
            bank,
            batcher,
            gate: Arc::new(AsyncRwLock::new(false)),
        });
        if let Some(tail) = &ns.bank.recovery().tail {
            tracing::warn!(namespace = %name, bytes = tail.bytes, reason = %tail.reason, "dropped a torn tail of the log");
        }
        tracing::info!(namespace = %name, memories = ns.bank.len(), replayed = ns.bank.recovery().replayed, "namespace open");
        self.write_map().insert(name.to_string(), ns.clone());
        Ok(Some(ns))
    }

    async fn enter(ns: Arc<Namespace>) -> Option<Handle> {
        let gate = ns.gate.clone().read_owned().await;
        if *gate {
            return None;
        }
        Some(Handle {
            namespace: ns,
            _gate: gate,
        })
    }

    /// An existing namespace, for reading: 404 when it does not exist.
    pub async fn existing(&self, name: &str) -> Result<Handle, ApiError> {
        loop {
            let Some(ns) = self.get(name, None).await? else {
                return Err(ApiError::not_found(format!("no namespace {name:?}")));
            };
            if let Some(handle) = Self::enter(ns).await {
                return Ok(handle);
            }
            // Deleted meanwhile: look again.
        }
    }

    /// A namespace to write to, created with the default config when it does not exist.
    pub async fn writable(&self, name: &str) -> Result<Handle, ApiError> {
        loop {
            let create = self.settings.default_config.clone();
            let ns = match self.get(name, create).await? {
                Some(ns) => ns,
                None => {
                    return Err(ApiError::not_found(format!(
                        "no namespace {name:?}, and this server has no embedding model or --dim/--model-id to create one with: create it with PUT /v1/namespaces/{name} {{\"dim\": .., \"model_id\": ..}}"
                    )))
                }
            };
            if let Some(handle) = Self::enter(ns).await {
                return Ok(handle);
            }
        }
    }

    /// Creates a namespace with `config`: `Ok(false)` when it already exists with that very
    /// config, a conflict when it exists with another.
    pub async fn create(&self, name: &str, config: BankConfig) -> Result<bool, ApiError> {
        validate_name(name).map_err(ApiError::invalid)?;
        config.validate()?;
        if let Some(ns) = self.get(name, None).await? {
            let existing = ns.bank.config();
            if existing == config {
                return Ok(false);
            }
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "conflict",
                format!(
                    "namespace {name:?} exists with dim {}, model_id {:?}, dtype {}, dedup_sim {}",
                    existing.dim,
                    existing.model_id,
                    existing.dtype.as_str(),
                    existing.dedup_sim
                ),
            ));
        }
        self.get(name, Some(config)).await?;
        Ok(true)
    }

    /// Deletes a namespace, its bank and its log: 404 when there is none.
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        validate_name(name).map_err(ApiError::invalid)?;
        let _changes = self.changes.lock().await;
        let folder = self.dir.join(name);
        let open = self.read_map().get(name).cloned();
        if open.is_none() && !self.bank_path(name).is_file() {
            return Err(ApiError::not_found(format!("no namespace {name:?}")));
        }
        if let Some(ns) = open {
            // Waits for the requests in flight; none starts after this.
            let mut deleted = ns.gate.clone().write_owned().await;
            *deleted = true;
            self.write_map().remove(name);
            drop(deleted);
            // Closing joins the batching thread: not on the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || drop(ns)).await;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let trash = self.dir.join(format!("{TRASH_PREFIX}{name}-{nanos}"));
        std::fs::rename(&folder, &trash).map_err(|e| ApiError::from(io_error(&folder, e)))?;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::remove_dir_all(&trash) {
                tracing::warn!(path = %trash.display(), error = %e, "cannot remove a deleted namespace's folder (removed at the next start)");
            }
        });
        tracing::info!(namespace = %name, "namespace deleted");
        Ok(())
    }

    /// Checkpoints every open namespace (at shutdown); returns how many failed.
    pub async fn checkpoint_all(&self) -> usize {
        let mut failed = 0;
        for ns in self.opened() {
            let bank = ns.bank.clone();
            let name = ns.name.clone();
            let done = tokio::task::spawn_blocking(move || bank.checkpoint()).await;
            match done {
                Ok(Ok(())) => tracing::info!(namespace = %name, "checkpointed"),
                Ok(Err(e)) => {
                    failed += 1;
                    tracing::error!(namespace = %name, error = %e, "checkpoint failed; the log still holds every write");
                }
                Err(e) => {
                    failed += 1;
                    tracing::error!(namespace = %name, error = %e, "checkpoint task failed");
                }
            }
        }
        failed
    }

    /// Closes every namespace (their batching threads stop once their queues are answered).
    pub async fn close_all(&self) {
        let all: Vec<Arc<Namespace>> = self.write_map().drain().map(|(_, ns)| ns).collect();
        let _ = tokio::task::spawn_blocking(move || drop(all)).await;
    }
}

fn io_error(path: &Path, source: std::io::Error) -> memrl::Error {
    memrl::Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens the bank in `folder` (or creates it there with `create`), with the server's embedder
/// when the bank holds its model's keys.
fn open_bank(
    folder: &Path,
    settings: &BankSettings,
    create: Option<BankConfig>,
) -> memrl::Result<Bank> {
    let path = folder.join(BANK_FILE);
    let mut options = Bank::options()
        .device(settings.device.clone())
        .sync(settings.sync)
        .checkpoint(settings.checkpoint)
        .retention(settings.retention)
        .limits(settings.limits);
    let config = if path.is_file() {
        options = options.create(false);
        Bank::peek_config(&path)?
    } else {
        let config = create.ok_or_else(|| memrl::Error::NoBank { path: path.clone() })?;
        std::fs::create_dir_all(folder).map_err(|e| io_error(folder, e))?;
        options = options.bank_config(config.clone()).create_new(true);
        config
    };
    if let Some(embedder) = &settings.embedder {
        if embedder.name() == config.model_id && embedder.dim() == config.dim {
            options = options.embedder(embedder.clone());
        }
    }
    options.open(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_plain_folder() {
        for good in ["a", "A9", "fleet-a", "fleet_b", "0", &"x".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../a",
            "a\\b",
            "-a",
            "_a",
            "a.b",
            "a b",
            "é",
            "a\0",
            &"x".repeat(65),
            "a\n",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
