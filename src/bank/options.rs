//! How a bank is opened: [`OpenOptions`], a builder in the manner of `std::fs::OpenOptions`.

use std::path::Path;
#[cfg(feature = "embed")]
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;

use super::Bank;
use crate::config::{BankConfig, KeyDType, Limits};
#[cfg(feature = "embed")]
use crate::embed::{Embedder, Precision};
use crate::error::Result;
use crate::wal::SyncPolicy;

/// When a durable bank rewrites its snapshot and empties its log (a checkpoint) on its own,
/// after a logged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointPolicy {
    /// Once the log has grown larger than the snapshot: replaying it would then cost more than
    /// loading the bank again. The default.
    #[default]
    LogOutgrowsSnapshot,
    /// Once the log holds more than this many bytes.
    LogBytes(u64),
    /// Never on its own: only [`Bank::checkpoint`] (and closing a bulk load) writes a snapshot.
    Manual,
}

/// How many retrievals a bank remembers for feedback by retrieval id, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most retrievals remembered; the oldest is forgotten first. 0 turns the memory off.
    pub capacity: usize,
    /// How long a retrieval is remembered.
    pub ttl: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            ttl: Duration::from_secs(3600),
        }
    }
}

/// Options for opening or creating a bank. Made by [`Bank::options`]; every setter returns the
/// options, and [`OpenOptions::open`] or [`OpenOptions::in_memory`] finishes.
///
/// ```
/// use memrl::{Bank, SyncPolicy};
/// let dir = tempfile::tempdir()?;
/// let bank = Bank::options()
///     .dim(3)
///     .model_id("my-model")
///     .sync(SyncPolicy::Never)
///     .open(dir.path().join("bank.safetensors"))?;
/// assert!(bank.is_durable() && bank.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub(crate) device: Device,
    pub(crate) sync: SyncPolicy,
    pub(crate) limits: Limits,
    pub(crate) checkpoint: CheckpointPolicy,
    pub(crate) retention: Retention,
    pub(crate) read_only: bool,
    pub(crate) create: bool,
    pub(crate) create_new: bool,
    pub(crate) dim: Option<usize>,
    pub(crate) model_id: Option<String>,
    pub(crate) dtype: Option<KeyDType>,
    pub(crate) dedup_sim: Option<f32>,
    pub(crate) truncate_corrupt_log: bool,
    #[cfg(feature = "embed")]
    pub(crate) embedder: Option<Arc<Embedder>>,
    #[cfg(feature = "embed")]
    pub(crate) model: Option<String>,
    #[cfg(feature = "embed")]
    pub(crate) precision: Option<Precision>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            sync: SyncPolicy::default(),
            limits: Limits::default(),
            checkpoint: CheckpointPolicy::default(),
            retention: Retention::default(),
            read_only: false,
            create: true,
            create_new: false,
            dim: None,
            model_id: None,
            dtype: None,
            dedup_sim: None,
            truncate_corrupt_log: false,
            #[cfg(feature = "embed")]
            embedder: None,
            #[cfg(feature = "embed")]
            model: None,
            #[cfg(feature = "embed")]
            precision: None,
        }
    }
}

impl OpenOptions {
    /// The defaults: CPU, synced per batch, checkpoint once the log outgrows the snapshot,
    /// created if missing, writable.
    pub fn new() -> Self {
        Self::default()
    }

    /// The device the keys (and an embedder loaded by [`OpenOptions::model`]) live on.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// When log records are synced to disk (default [`SyncPolicy::EveryBatch`]).
    pub fn sync(mut self, sync: SyncPolicy) -> Self {
        self.sync = sync;
        self
    }

    /// The bank's operational limits (text sizes, batch sizes, bank size).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// When the bank checkpoints on its own (default [`CheckpointPolicy::LogOutgrowsSnapshot`]).
    pub fn checkpoint(mut self, policy: CheckpointPolicy) -> Self {
        self.checkpoint = policy;
        self
    }

    /// How many retrievals are remembered for [`Bank::feedback`], and for how long (default
    /// 100,000 for an hour).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Open for reading only: no lock is taken and no file is changed; every write is an
    /// error. The bank must exist.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Whether a missing bank is created (default true). False: a missing bank is
    /// [`crate::Error::NoBank`].
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Create the bank, failing with [`crate::Error::BankExists`] if it is already there.
    pub fn create_new(mut self, create_new: bool) -> Self {
        self.create_new = create_new;
        self
    }

    /// The embedding dimension of a new bank (taken from the embedder when there is one).
    pub fn dim(mut self, dim: usize) -> Self {
        self.dim = Some(dim);
        self
    }

    /// The model id a new bank records (taken from the embedder when there is one).
    pub fn model_id(mut self, model_id: impl Into<String>) -> Self {
        self.model_id = Some(model_id.into());
        self
    }

    /// The storage precision of a new bank's keys (default f32). For an existing bank, a
    /// different value is an error: it cannot apply.
    pub fn dtype(mut self, dtype: KeyDType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    /// The intent-sharing threshold of a new bank (default 0.90; 1.0 turns sharing off). For
    /// an existing bank, a different value is an error: it cannot apply.
    pub fn dedup_sim(mut self, dedup_sim: f32) -> Self {
        self.dedup_sim = Some(dedup_sim);
        self
    }

    /// Repair a log damaged in the middle (default false). Without it, a log whose damaged frame
    /// is followed by intact records is [`crate::Error::CorruptLog`], and nothing is changed.
    /// With it, a writer cuts the log at the damage: the bank opens with the snapshot and the
    /// records before it, the cut bytes are saved beside the log (`<log>.cut-<unix ms>`), and
    /// [`crate::Recovery`] says what was cut (`tail`, `repaired`, `saved_tail`). The records
    /// after the damage are lost to the bank. Not for read-only opens.
    pub fn truncate_corrupt_log(mut self, repair: bool) -> Self {
        self.truncate_corrupt_log = repair;
        self
    }

    /// Every setting of a new bank from one config: dimension, model id, dtype and sharing.
    pub fn bank_config(self, config: BankConfig) -> Self {
        self.dim(config.dim)
            .model_id(config.model_id)
            .dtype(config.dtype)
            .dedup_sim(config.dedup_sim)
    }

    /// The embedder the bank uses for text: intents of new memories, text queries. Its model
    /// must be the bank's (a new bank takes its name and dimension).
    #[cfg(feature = "embed")]
    pub fn embedder(mut self, embedder: impl Into<Arc<Embedder>>) -> Self {
        self.embedder = Some(embedder.into());
        self
    }

    /// Like [`OpenOptions::embedder`], with the model found (and fetched if need be, verified
    /// against the registry) by name: a registry name such as `all-MiniLM-L6-v2`, or a model
    /// directory. Loaded on the bank's device when the bank opens.
    #[cfg(feature = "embed")]
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The precision of the embedder that [`OpenOptions::model`] loads (default
    /// [`Precision::F32`]). [`Precision::Int8`] runs on the CPU only, for models whose registry
    /// entry lists it, with vectors close to f32's rather than equal; its quantized weights are
    /// cached in memrl's cache directory. Without [`OpenOptions::model`] the bank refuses to
    /// open: an embedder given ready-made already has its precision.
    #[cfg(feature = "embed")]
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = Some(precision);
        self
    }

    /// Opens the durable bank at `path` (its snapshot; the log is `<path>.wal` beside it),
    /// creating it if it is missing (unless told otherwise), replaying its log, and locking it
    /// for writing unless read-only.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Bank> {
        Bank::open_with(path.as_ref(), self)
    }

    /// A bank in memory only: nothing is written anywhere. Needs a dimension and a model id
    /// (or an embedder).
    pub fn in_memory(&self) -> Result<Bank> {
        Bank::in_memory_with(self)
    }
}
