//! [`Bank`], the front door: one bank of memories, durable by default, shared by any number of
//! threads, at the text level (with an embedder) and at the vector level.
//!
//! Concurrency contract: `Bank` is `Send + Sync` and every method takes `&self`. Retrievals,
//! reads, saves and checkpoints share a read lock and run in parallel; adds, removals, outcome
//! batches and config changes take the write lock, so each is applied whole, in some serial
//! order, and a retrieval sees the bank either before or after it, never half-way. Embedding
//! (the slow part of a text-level call) runs before any lock is taken. A poisoned lock is
//! recovered: every mutation validates first and changes memory only once it cannot fail.
//!
//! Durability: a bank opened from a path owns its write-ahead log (`<path>.wal`). Each mutation
//! is validated and planned, its plan appended to the log, then applied, all under the write
//! lock, so the log's order is the order of application and a replay of snapshot + log rebuilds
//! exactly the bank in memory. Under [`crate::SyncPolicy::EveryBatch`] the call then releases the
//! lock and waits until its record is synced: concurrent writers share one fsync (group
//! commit), so a write is *visible* to other threads once applied and *acknowledged* (the call
//! returns) once durable. A failed fsync fails every write it should have covered and poisons
//! the bank (every later call says to reopen it; reopening replays what is on disk). Once a
//! write is durable it is reported as done: a checkpoint that the [`CheckpointPolicy`] runs
//! after it may fail (a full disk), and then the write still succeeds, the failure is logged as
//! a warning and kept in [`Bank::last_checkpoint_error`], and the next write tries again.

mod files;
mod options;
mod pending;

#[cfg(feature = "embed")]
pub(crate) use files::canonical;
pub use options::{CheckpointPolicy, OpenOptions, Retention};
pub use pending::RetrievalId;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "embed")]
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use candle_core::Device;

use crate::calibrate::{self, Calibration};
use crate::config::{BankConfig, LearningConfig, Limits, RetrievalConfig};
#[cfg(feature = "embed")]
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::index::KeyMatch;
use crate::learn::{Outcome, OutcomeReport};
use crate::retrieve::Hit;
use crate::snapshot;
use crate::store::{now_ms, AddPlan, Memory, NewMemory, Placement, Stats, Store};
use crate::wal::{Commit, LogWriter, RecordRef, Recovery};

use pending::Pending;

/// The hits of one query and the id to report its outcome with.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrieval {
    /// Pass to [`Bank::feedback`] once the episode's reward is known.
    pub id: RetrievalId,
    /// Up to k2 memories, best first; empty when nothing passes the similarity gate (the agent
    /// then runs without memory).
    pub hits: Vec<Hit>,
}

/// Queries for [`Bank::retrieve`]: texts (embedded with the bank's embedder), vectors, or a flat
/// slice of rows.
///
/// ```
/// use memrl::Queries;
/// let one: Queries = "book a flight".into();
/// let texts = ["a", "b"];
/// let many: Queries = texts[..].into();
/// let rows = [1.0f32, 0.0, 0.0, 1.0];
/// let flat = Queries::Rows(&rows); // two queries of dimension 2
/// # let _ = (one, many, flat);
/// ```
#[derive(Debug, Clone)]
pub enum Queries<'a> {
    /// Query texts.
    Texts(Vec<&'a str>),
    /// One vector per query.
    Vectors(&'a [Vec<f32>]),
    /// Rows of the bank's dimension, one after the other.
    Rows(&'a [f32]),
}

impl<'a> From<&'a str> for Queries<'a> {
    fn from(text: &'a str) -> Self {
        Queries::Texts(vec![text])
    }
}

impl<'a> From<&'a String> for Queries<'a> {
    fn from(text: &'a String) -> Self {
        Queries::Texts(vec![text.as_str()])
    }
}

impl<'a> From<&'a [&'a str]> for Queries<'a> {
    fn from(texts: &'a [&'a str]) -> Self {
        Queries::Texts(texts.to_vec())
    }
}

impl<'a> From<&'a [String]> for Queries<'a> {
    fn from(texts: &'a [String]) -> Self {
        Queries::Texts(texts.iter().map(String::as_str).collect())
    }
}

impl<'a> From<&'a Vec<String>> for Queries<'a> {
    fn from(texts: &'a Vec<String>) -> Self {
        texts.as_slice().into()
    }
}

impl<'a> From<&'a [Vec<f32>]> for Queries<'a> {
    fn from(vectors: &'a [Vec<f32>]) -> Self {
        Queries::Vectors(vectors)
    }
}

impl<'a> From<&'a Vec<Vec<f32>>> for Queries<'a> {
    fn from(vectors: &'a Vec<Vec<f32>>) -> Self {
        Queries::Vectors(vectors)
    }
}

/// One bank of memories: the front door of memrl (see the module docs).
///
/// The whole loop, at the vector level (the text level is the same with an embedder: see the
/// crate docs):
///
/// ```
/// use memrl::{Bank, NewMemory};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("bank.safetensors");
/// let bank = Bank::options().dim(2).model_id("toy").open(&path)?;
/// let id = bank.add(NewMemory::new("parse a date", "use chrono").embedding(vec![1.0, 0.0]))?;
/// let r = bank.retrieve(&[vec![0.9, 0.1]][..])?.remove(0);
/// assert_eq!(r.hits[0].id, id);
/// bank.feedback(r.id, 1.0)?;
/// drop(bank);
/// let bank = Bank::open(&path)?; // the add and the feedback are in the log
/// assert!((bank.get(id).unwrap().q - 0.3).abs() < 1e-6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Bank {
    store: RwLock<Store>,
    files: Option<Files>,
    #[cfg(feature = "embed")]
    embedder: Option<Arc<Embedder>>,
    pending: Mutex<Pending>,
    recovery: Recovery,
}

/// The files of a bank opened from a path.
struct Files {
    snapshot: PathBuf,
    /// `None` when the bank is open read-only.
    log: Option<Mutex<LogWriter>>,
    checkpoint: CheckpointPolicy,
    /// Bytes of the snapshot as last written (for the checkpoint policy).
    snapshot_bytes: AtomicU64,
    checkpoint_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Bank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = self.read();
        f.debug_struct("Bank")
            .field("path", &self.path())
            .field("read_only", &self.is_read_only())
            .field("memories", &store.len())
            .field("intents", &store.num_intents())
            .field("config", store.config())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Bank {
    /// Options for opening or creating a bank (see [`OpenOptions`]).
    pub fn options() -> OpenOptions {
        OpenOptions::new()
    }

    /// Opens the existing durable bank at `path` for writing: `Bank::options().create(false)
    /// .open(path)`.
    pub fn open(path: impl AsRef<Path>) -> Result<Bank> {
        OpenOptions::new().create(false).open(path)
    }

    /// Creates a durable bank at `path` with `config` (an error if one is already there).
    pub fn create(path: impl AsRef<Path>, config: BankConfig) -> Result<Bank> {
        OpenOptions::new()
            .bank_config(config)
            .create_new(true)
            .open(path)
    }

    /// A bank in memory only, with `config`.
    pub fn in_memory(config: BankConfig) -> Result<Bank> {
        OpenOptions::new().bank_config(config).in_memory()
    }

    /// The config (dimension, key dtype, sharing, model) recorded in the snapshot at `path`,
    /// read from its header alone: cheap, and enough to pick the embedder a bank needs before
    /// opening it. Opening checks the whole file.
    pub fn peek_config(path: impl AsRef<Path>) -> Result<BankConfig> {
        let path = files::canonical(path.as_ref())?;
        if !files::exists(&path) {
            return Err(Error::NoBank { path });
        }
        snapshot::peek_config(&path)
    }

    pub(crate) fn in_memory_with(options: &OpenOptions) -> Result<Bank> {
        #[cfg(feature = "embed")]
        let embedder = load_embedder(options)?;
        let config = new_bank_config(
            options,
            #[cfg(feature = "embed")]
            embedder.as_deref(),
        )?;
        let mut store = Store::new(config, pending::random_u64().max(1), &options.device)?;
        store.set_limits(options.limits)?;
        Ok(Bank {
            store: RwLock::new(store),
            files: None,
            #[cfg(feature = "embed")]
            embedder,
            pending: Mutex::new(Pending::new(options.retention)),
            recovery: Recovery::default(),
        })
    }

    pub(crate) fn open_with(path: &Path, options: &OpenOptions) -> Result<Bank> {
        options.limits.validate()?;
        let path = files::canonical(path)?;
        #[cfg(feature = "embed")]
        let embedder = load_embedder(options)?;
        if options.sync == crate::wal::SyncPolicy::Interval(std::time::Duration::ZERO) {
            return Err(Error::value(
                "SyncPolicy::Interval",
                "the interval must be longer than zero (SyncPolicy::EveryBatch syncs every write)",
            ));
        }
        if options.read_only && options.truncate_corrupt_log {
            return Err(Error::value(
                "OpenOptions",
                "truncate_corrupt_log repairs a log, which a read-only open cannot do",
            ));
        }
        let (store, log, recovery) = if options.read_only {
            let (store, recovery) = files::read(&path, &options.device, options.limits)?;
            (store, None, recovery)
        } else {
            let mut opened = None;
            if !files::exists(&path) {
                if !options.create {
                    return Err(Error::NoBank { path });
                }
                let config = new_bank_config(
                    options,
                    #[cfg(feature = "embed")]
                    embedder.as_deref(),
                )?;
                opened =
                    files::create(&path, config, &options.device, options.sync, options.limits)?
                        .map(|(store, log)| (store, Some(log), Recovery::default()));
            } else if options.create_new {
                return Err(Error::BankExists { path });
            }
            match opened {
                Some(opened) => opened,
                None => {
                    let (store, log, recovery) = files::open(
                        &path,
                        &options.device,
                        options.sync,
                        options.limits,
                        options.truncate_corrupt_log,
                    )?;
                    (store, Some(log), recovery)
                }
            }
        };
        check_existing(
            &path,
            store.config(),
            options,
            #[cfg(feature = "embed")]
            embedder.as_deref(),
        )?;
        let snapshot_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Ok(Bank {
            store: RwLock::new(store),
            files: Some(Files {
                snapshot: path,
                log: log.map(Mutex::new),
                checkpoint: options.checkpoint,
                snapshot_bytes: AtomicU64::new(snapshot_bytes),
                checkpoint_error: Mutex::new(None),
            }),
            #[cfg(feature = "embed")]
            embedder,
            pending: Mutex::new(Pending::new(options.retention)),
            recovery,
        })
    }

    // ---- what the bank is ----

    /// The snapshot's path (canonical), or `None` for a bank in memory.
    pub fn path(&self) -> Option<&Path> {
        self.files.as_ref().map(|f| f.snapshot.as_path())
    }

    /// Whether mutations are logged to disk (opened from a path, not read-only).
    pub fn is_durable(&self) -> bool {
        self.files.as_ref().is_some_and(|f| f.log.is_some())
    }

    /// Whether the bank was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.files.as_ref().is_some_and(|f| f.log.is_none())
    }

    /// What opening the bank found: records replayed, a torn tail dropped, an upgrade.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The bank's shape: dimension, key dtype, sharing threshold, model.
    pub fn config(&self) -> BankConfig {
        self.read().config().clone()
    }

    /// The device the keys live on.
    pub fn device(&self) -> Device {
        self.read().device().clone()
    }

    /// The bank's embedder, if it has one.
    #[cfg(feature = "embed")]
    pub fn embedder(&self) -> Option<&Arc<Embedder>> {
        self.embedder.as_ref()
    }

    /// Number of memories.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the bank holds no memory.
    pub fn is_empty(&self) -> bool {
        self.read().len() == 0
    }

    /// Number of intent keys (at most the number of memories; fewer when intents are shared).
    pub fn num_intents(&self) -> usize {
        self.read().num_intents()
    }

    /// A copy of one memory.
    pub fn get(&self, id: u64) -> Option<Memory> {
        self.read().get(id).cloned()
    }

    /// Whether a memory with this id exists.
    pub fn contains(&self, id: u64) -> bool {
        self.read().contains(id)
    }

    /// A copy of every memory, in id order.
    pub fn memories(&self) -> Vec<Memory> {
        let mut all: Vec<Memory> = self.read().iter().cloned().collect();
        all.sort_unstable_by_key(|m| m.id);
        all
    }

    /// The unit intent key memory `id` is filed under (as f32, whatever the storage dtype).
    pub fn intent_key(&self, id: u64) -> Result<Vec<f32>> {
        self.read().intent_key(id)
    }

    /// The ids of the memories filed under the same key as memory `id` (itself included),
    /// ascending.
    pub fn intent_members(&self, id: u64) -> Result<Vec<u64>> {
        self.read().intent_members(id)
    }

    /// Counts and Q telemetry: quantiles, signs, a `bins`-bin histogram, and the `extremes`
    /// memories of highest and lowest Q.
    pub fn stats(&self, bins: usize, extremes: usize) -> Stats {
        self.read().stats(bins, extremes)
    }

    /// The paper's calibration over the bank's intent keys: delta (the top-20% pairwise
    /// similarity) and the fixed-zsim statistics. Above `max_pairs` pairs, that many are sampled
    /// with `seed`.
    pub fn calibrate(&self, max_pairs: usize, seed: u64) -> Result<Calibration> {
        let (rows, dim) = {
            let store = self.read();
            (store.index().rows_f32()?, store.config().dim)
        };
        calibrate::calibrate(&rows, dim, max_pairs, seed)
    }

    /// The stored retrieval config (what [`Bank::retrieve`] uses).
    pub fn retrieval_config(&self) -> RetrievalConfig {
        self.read().retrieval_config().clone()
    }

    /// The stored learning config (what outcomes are applied with).
    pub fn learning_config(&self) -> LearningConfig {
        self.read().learning_config().clone()
    }

    /// The operational limits.
    pub fn limits(&self) -> Limits {
        *self.read().limits()
    }

    /// fsyncs of the write-ahead log since the bank was opened (group commit: one covers every
    /// write that reached the log before it), or `None` when the bank has no log.
    pub fn log_syncs(&self) -> Option<u64> {
        self.log().map(|log| log.durability().syncs())
    }

    /// Bytes in the write-ahead log (header included), or `None` when the bank has no log.
    pub fn log_bytes(&self) -> Option<u64> {
        self.log().map(|log| log.len())
    }

    /// Where the search for the next automatic memory id starts (an id above every id the
    /// bank has handed out, unless ids were exhausted up to `u64::MAX`).
    pub fn next_id(&self) -> u64 {
        self.read().next_id()
    }

    /// The sequence number of the last logged mutation the bank reflects.
    pub fn log_seq(&self) -> u64 {
        self.read().log_seq()
    }

    /// Why the last automatic checkpoint failed, if it did (cleared by the next one that
    /// succeeds). The writes before it are safe in the log.
    pub fn last_checkpoint_error(&self) -> Option<String> {
        self.files
            .as_ref()
            .and_then(|f| lock(&f.checkpoint_error).clone())
    }

    // ---- retrieval ----

    /// Two-phase retrieval with the stored config: for each query, up to k2 hits and a
    /// retrieval id for [`Bank::feedback`].
    pub fn retrieve<'q>(&self, queries: impl Into<Queries<'q>>) -> Result<Vec<Retrieval>> {
        self.retrieve_inner(queries.into(), None)
    }

    /// [`Bank::retrieve`] with an explicit retrieval config.
    pub fn retrieve_with<'q>(
        &self,
        queries: impl Into<Queries<'q>>,
        config: &RetrievalConfig,
    ) -> Result<Vec<Retrieval>> {
        self.retrieve_inner(queries.into(), Some(config))
    }

    fn retrieve_inner(
        &self,
        queries: Queries<'_>,
        config: Option<&RetrievalConfig>,
    ) -> Result<Vec<Retrieval>> {
        // Before any text is embedded: a bad setting costs nothing.
        if let Some(config) = config {
            config.validate()?;
        }
        let mut embedded = Vec::new();
        let rows = self.query_rows(queries, &mut embedded)?;
        let hits = {
            let store = self.read();
            check_usable(&store)?;
            match config {
                Some(config) => store.retrieve(rows, config)?,
                None => store.retrieve(rows, store.retrieval_config())?,
            }
        };
        let mut pending = lock(&self.pending);
        Ok(hits
            .into_iter()
            .map(|hits| Retrieval {
                id: pending.issue(hits.iter().map(|h| h.id).collect()),
                hits,
            })
            .collect())
    }

    /// The rows of `queries` (texts embedded into `buffer`), checked against the dimension.
    fn query_rows<'a>(&self, queries: Queries<'a>, buffer: &'a mut Vec<f32>) -> Result<&'a [f32]> {
        let dim = self.read().config().dim;
        match queries {
            Queries::Texts(texts) => {
                *buffer = self.embed_rows(&texts, "a text query")?;
                Ok(buffer)
            }
            Queries::Vectors(vectors) => {
                buffer.reserve(vectors.len() * dim);
                for v in vectors {
                    if v.len() != dim {
                        return Err(Error::DimensionMismatch {
                            what: "query",
                            expected: dim,
                            got: v.len(),
                        });
                    }
                    buffer.extend_from_slice(v);
                }
                Ok(buffer)
            }
            Queries::Rows(rows) => {
                if rows.len() % dim != 0 {
                    return Err(Error::DimensionMismatch {
                        what: "query rows (length not a multiple of the dimension)",
                        expected: dim,
                        got: rows.len(),
                    });
                }
                Ok(rows)
            }
        }
    }

    // ---- a shard of a sharded bank ([`crate::shard`]) ----

    /// This bank as a shard: for each query, its best k1 keys at or above delta and every
    /// memory filed under them (Phase A and the pools, without Phase B), for a coordinator to
    /// [`crate::shard::merge`] with the other shards' recalls. Nothing is remembered for
    /// feedback: the coordinator issues retrieval ids.
    pub fn recall<'q>(
        &self,
        queries: impl Into<Queries<'q>>,
        config: &RetrievalConfig,
    ) -> Result<Vec<crate::shard::Recall>> {
        config.validate()?;
        let mut embedded = Vec::new();
        let rows = self.query_rows(queries.into(), &mut embedded)?;
        let store = self.read();
        check_usable(&store)?;
        store.recall(rows, config)
    }

    /// This bank as a shard: each row's best `k` keys at or above `delta` (by similarity, then
    /// key id), as Phase A finds them; `k = 1`, `delta = dedup_sim` finds the key a new intent
    /// would share.
    pub fn search_keys(&self, rows: &[f32], k: usize, delta: f32) -> Result<Vec<Vec<KeyMatch>>> {
        let store = self.read();
        check_usable(&store)?;
        store.search_keys(rows, k, delta)
    }

    /// The id this bank gives its next new key (a sharded bank's next key id is the highest of
    /// its shards').
    pub fn next_key_id(&self) -> u64 {
        self.read().next_key_id()
    }

    /// Every memory's (id, Q), for a sharded bank's [`crate::shard::stats`].
    pub fn q_by_id(&self) -> Vec<(u64, f32)> {
        self.read().iter().map(|m| (m.id, m.q)).collect()
    }

    /// This bank as a shard: adds memories whose ids and keys the coordinator chose (see
    /// [`crate::shard`]): each has its id and its intent embedding, and goes under an existing
    /// key of this bank (or one an earlier memory of the batch creates) or under a new key with
    /// the id given, above every key id this bank has used. All or nothing; one record in the
    /// log, as [`Bank::add_many`].
    pub fn add_placed(&self, memories: Vec<(NewMemory, Placement)>) -> Result<Vec<u64>> {
        self.check_writable("add memories")?;
        self.commit_add(|store| store.plan_placed_add(memories, now_ms()))
    }

    // ---- writes ----

    /// Adds one memory and returns its id (see [`Bank::add_many`]).
    pub fn add(&self, memory: NewMemory) -> Result<u64> {
        Ok(self.add_many(vec![memory])?[0])
    }

    /// Adds a batch of memories, all or nothing, and returns their ids in order. Intents without
    /// an embedding are embedded with the bank's embedder (in one batch, before any lock).
    /// Memories of one batch can share intents with each other as well as with the bank; each
    /// is filed in order, as if added one at a time. One record in the log.
    pub fn add_many(&self, memories: Vec<NewMemory>) -> Result<Vec<u64>> {
        self.check_writable("add memories")?;
        let (memories, _) = self.embed_missing(memories)?;
        self.commit_add(|store| store.plan_add(memories, now_ms()))
    }

    /// What every add does once its memories are ready: plan under the lock, log the plan,
    /// apply it, then make it durable. One record in the log; all or nothing.
    fn commit_add(&self, plan: impl FnOnce(&Store) -> Result<AddPlan>) -> Result<Vec<u64>> {
        let (ids, commit) = {
            let mut store = self.write();
            check_usable(&store)?;
            let plan = plan(&store)?;
            self.logged(&mut store, RecordRef::Add(&plan), |store| {
                store.apply_add(&plan)
            })?
        };
        self.durable(commit)?;
        self.settle();
        Ok(ids)
    }

    /// Removes a memory (its key goes too when no other memory shares it) and returns it.
    pub fn remove(&self, id: u64) -> Result<Memory> {
        self.check_writable("remove a memory")?;
        let (removed, commit) = {
            let mut store = self.write();
            check_usable(&store)?;
            if !store.contains(id) {
                return Err(Error::NotFound(id));
            }
            self.logged(&mut store, RecordRef::Remove(id), |store| store.remove(id))?
        };
        self.durable(commit)?;
        self.settle();
        Ok(removed)
    }

    /// Applies a batch of outcomes with the stored learning config: for every memory injected
    /// in an episode, `Q <- Q + alpha (r - Q)`, visits + 1, last reward recorded. All or
    /// nothing: an unknown id or a bad reward rejects the whole batch. One record in the log.
    pub fn apply_outcomes(&self, outcomes: &[Outcome]) -> Result<OutcomeReport> {
        self.apply_outcomes_inner(outcomes, None)
    }

    /// [`Bank::apply_outcomes`] with an explicit learning config for this batch alone (alpha,
    /// the reward range); the stored one is unchanged. The log records the resulting values, so
    /// a replay gives the same bank whatever config is stored then.
    pub fn apply_outcomes_with(
        &self,
        outcomes: &[Outcome],
        config: &LearningConfig,
    ) -> Result<OutcomeReport> {
        self.apply_outcomes_inner(outcomes, Some(config))
    }

    fn apply_outcomes_inner(
        &self,
        outcomes: &[Outcome],
        config: Option<&LearningConfig>,
    ) -> Result<OutcomeReport> {
        self.check_writable("apply outcomes")?;
        let (report, commit) = {
            let mut store = self.write();
            check_usable(&store)?;
            let config = config.unwrap_or(store.learning_config()).clone();
            let (plan, report) = store.plan_outcomes(outcomes, &config, now_ms())?;
            let ((), commit) = self.logged(&mut store, RecordRef::Outcomes(&plan), |store| {
                store.apply_outcomes(&plan)
            })?;
            (report, commit)
        };
        self.durable(commit)?;
        self.settle();
        Ok(report)
    }

    /// Reports the reward of the episode that used retrieval `retrieval`: every memory it
    /// injected is updated (memories removed since are skipped and counted). A retrieval's
    /// feedback is applied once: reporting it again is [`Error::UnknownRetrieval`].
    pub fn feedback(&self, retrieval: RetrievalId, reward: f32) -> Result<OutcomeReport> {
        self.feedback_many(&[(retrieval, reward)])
    }

    /// [`Bank::feedback`] for several retrievals as one atomic batch.
    pub fn feedback_many(&self, rewards: &[(RetrievalId, f32)]) -> Result<OutcomeReport> {
        self.feedback_inner(rewards, None)
    }

    /// [`Bank::feedback_many`] with an explicit learning config for this batch alone (see
    /// [`Bank::apply_outcomes_with`]).
    pub fn feedback_many_with(
        &self,
        rewards: &[(RetrievalId, f32)],
        config: &LearningConfig,
    ) -> Result<OutcomeReport> {
        self.feedback_inner(rewards, Some(config))
    }

    fn feedback_inner(
        &self,
        rewards: &[(RetrievalId, f32)],
        config: Option<&LearningConfig>,
    ) -> Result<OutcomeReport> {
        self.check_writable("apply feedback")?;
        let ids: Vec<RetrievalId> = rewards.iter().map(|(id, _)| *id).collect();
        let taken = lock(&self.pending).take(&ids)?;
        let result = (|| {
            let mut store = self.write();
            check_usable(&store)?;
            let mut skipped = 0;
            let outcomes: Vec<Outcome> = taken
                .iter()
                .zip(rewards)
                .map(|((_, memory_ids), &(_, reward))| {
                    let present: Vec<u64> = memory_ids
                        .iter()
                        .copied()
                        .filter(|&id| store.contains(id))
                        .collect();
                    skipped += memory_ids.len() - present.len();
                    Outcome {
                        memory_ids: present,
                        reward,
                    }
                })
                .collect();
            let config = config.unwrap_or(store.learning_config()).clone();
            let (plan, mut report) = store.plan_outcomes(&outcomes, &config, now_ms())?;
            report.skipped = skipped;
            let ((), commit) = self.logged(&mut store, RecordRef::Outcomes(&plan), |store| {
                store.apply_outcomes(&plan)
            })?;
            Ok((report, commit))
        })();
        match result {
            Ok((report, commit)) => {
                // Applied: whether or not the sync succeeds, the retrievals are not put back (a
                // retry could apply them twice).
                self.durable(commit)?;
                self.settle();
                Ok(report)
            }
            Err(e) => {
                lock(&self.pending).restore(taken);
                Err(e)
            }
        }
    }

    /// Replaces the stored retrieval config (one record in the log).
    pub fn set_retrieval_config(&self, config: RetrievalConfig) -> Result<()> {
        self.check_writable("change the retrieval config")?;
        config.validate()?;
        let ((), commit) = {
            let mut store = self.write();
            check_usable(&store)?;
            self.logged(&mut store, RecordRef::RetrievalConfig(&config), |store| {
                store.set_retrieval_config(config.clone())
            })?
        };
        self.durable(commit)?;
        self.settle();
        Ok(())
    }

    /// Replaces the stored learning config (one record in the log).
    pub fn set_learning_config(&self, config: LearningConfig) -> Result<()> {
        self.check_writable("change the learning config")?;
        config.validate()?;
        let ((), commit) = {
            let mut store = self.write();
            check_usable(&store)?;
            self.logged(&mut store, RecordRef::LearningConfig(&config), |store| {
                store.set_learning_config(config.clone())
            })?
        };
        self.durable(commit)?;
        self.settle();
        Ok(())
    }

    /// A bulk load: `load` adds memories through [`BulkLoad::add_many`] without logging each
    /// batch, and the result is written as one new snapshot (the log emptied), all or nothing:
    /// if `load` or the snapshot fails, the bank is as it was, in memory and on disk. The write
    /// lock is held throughout, so retrievals wait for the load.
    pub fn bulk<T>(&self, load: impl FnOnce(&mut BulkLoad<'_>) -> Result<T>) -> Result<T> {
        self.check_writable("bulk-load memories")?;
        let mut store = self.write();
        check_usable(&store)?;
        let counters = store.counters();
        let mut bulk = BulkLoad {
            bank: self,
            store: &mut store,
            added: Vec::new(),
            truncated: 0,
        };
        let loaded = load(&mut bulk);
        let added = std::mem::take(&mut bulk.added);
        let result = loaded.and_then(|value| {
            if let Some(files) = &self.files {
                let bytes = snapshot::save(&store, &files.snapshot)?;
                files.snapshot_bytes.store(bytes, Ordering::Relaxed);
                // The new snapshot is the commit point: from here the load is in the bank, and
                // emptying the log (whose records the snapshot holds) is clean-up whose failure
                // must not report the load as failed.
                if let Some(mut log) = self.log() {
                    log.durability().covered_by_snapshot(store.log_seq());
                    if let Err(e) = log.reset() {
                        self.checkpoint_failed(files, &e);
                    }
                }
            }
            Ok(value)
        });
        match &result {
            // The new snapshot is in place (its folder's fsync failed): memory matches it.
            Err(Error::OutcomeUnknown { .. }) => {}
            Err(_) => self.restore_after_failed_bulk(&mut store, &added, counters),
            Ok(_) => {}
        }
        result
    }

    /// Writes the bank's snapshot and empties its log: replay then starts from here. Retrievals
    /// go on meanwhile; writers wait.
    pub fn checkpoint(&self) -> Result<()> {
        let files = self.files.as_ref().ok_or(Error::NotDurable {
            operation: "a checkpoint",
        })?;
        let Some(log) = &files.log else {
            return Err(Error::ReadOnly {
                path: files.snapshot.clone(),
                operation: "checkpoint it",
            });
        };
        let store = self.read();
        check_usable(&store)?;
        let durability = lock(log).durability().clone();
        if let Some(problem) = durability.failure() {
            // Writes since the failed sync were reported as failed: a snapshot must not make
            // them durable behind their callers' backs.
            return Err(Error::Poisoned(problem));
        }
        let bytes = snapshot::save(&store, &files.snapshot)?;
        files.snapshot_bytes.store(bytes, Ordering::Relaxed);
        // The snapshot (with its log_seq) is the commit point; emptying the log is cleanup.
        durability.covered_by_snapshot(store.log_seq());
        lock(log).reset()?;
        *lock(&files.checkpoint_error) = None;
        Ok(())
    }

    /// Writes a copy of the bank as a new durable bank at `path` (its snapshot and an empty
    /// log), or [`Error::BankExists`] if a bank is already there: nothing is ever overwritten.
    /// The copy gets an identity of its own, so the original's log can never be replayed onto
    /// it. This is how a bank built in memory (a bulk import, a simulation) goes to disk once,
    /// whole. The bank's own files are unchanged.
    pub fn save_as(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = files::canonical(path.as_ref())?;
        let store = self.read();
        files::create_copy(&path, &store)
    }

    /// Embeds texts with the bank's embedder: one unit row per text, row-major. `operation`
    /// names what the embedding is for, in the error when the bank has no embedder.
    pub fn embed_rows(&self, texts: &[&str], operation: &str) -> Result<Vec<f32>> {
        Ok(self.embed_texts(texts, operation)?.0)
    }

    /// [`Bank::embed_rows`], and how many texts were cut at the model's token limit.
    fn embed_texts(&self, texts: &[&str], operation: &str) -> Result<(Vec<f32>, usize)> {
        #[cfg(feature = "embed")]
        if let Some(embedder) = &self.embedder {
            let embeddings = embedder.embed(texts)?;
            return Ok((embeddings.to_flat()?, embeddings.truncated.len()));
        }
        let _ = texts;
        Err(Error::NoEmbedder {
            operation: operation.to_string(),
        })
    }

    /// Checks every invariant of the bank's tables (tests and debug tooling).
    #[doc(hidden)]
    pub fn debug_check(&self) -> Result<()> {
        self.read().debug_check()
    }

    // ---- internals ----

    fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.store
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn log(&self) -> Option<MutexGuard<'_, LogWriter>> {
        self.files
            .as_ref()
            .and_then(|f| f.log.as_ref())
            .map(|log| lock(log))
    }

    fn check_writable(&self, operation: &'static str) -> Result<()> {
        match &self.files {
            Some(files) if files.log.is_none() => Err(Error::ReadOnly {
                path: files.snapshot.clone(),
                operation,
            }),
            _ => Ok(()),
        }
    }

    /// Fills in the embedding of every memory that has none, in one call of the embedder;
    /// also returns how many intents were cut at the model's token limit.
    fn embed_missing(&self, mut memories: Vec<NewMemory>) -> Result<(Vec<NewMemory>, usize)> {
        let missing: Vec<usize> = (0..memories.len())
            .filter(|&i| memories[i].embedding.is_none())
            .collect();
        if missing.is_empty() {
            return Ok((memories, 0));
        }
        let texts: Vec<&str> = missing
            .iter()
            .map(|&i| memories[i].intent.as_str())
            .collect();
        let operation = format!("embedding the intent of the memory at index {}", missing[0]);
        let (rows, truncated) = self.embed_texts(&texts, &operation)?;
        let dim = rows.len() / missing.len();
        for (k, &i) in missing.iter().enumerate() {
            memories[i].embedding = Some(rows[k * dim..(k + 1) * dim].to_vec());
        }
        Ok((memories, truncated))
    }

    /// Logs `record` (when durable), then applies it with `apply`; the record is cut off again
    /// if `apply` fails. The caller has validated the mutation and holds the write lock; once it
    /// has released it, it passes the commit ticket to [`Bank::durable`] before it reports
    /// success.
    fn logged<T>(
        &self,
        store: &mut Store,
        record: RecordRef<'_>,
        apply: impl FnOnce(&mut Store) -> Result<T>,
    ) -> Result<(T, Option<Commit>)> {
        let Some(mut log) = self.log() else {
            return Ok((apply(store)?, None));
        };
        let mark = log.append(record)?;
        match apply(store) {
            Ok(value) => {
                store.set_log_seq(mark.seq);
                Ok((value, Some(log.commit(mark))))
            }
            Err(e) => match log.rollback(mark) {
                Ok(()) => Err(e),
                // The record may still be in the file: a replay could apply what failed here.
                Err(cut) => Err(Error::OutcomeUnknown {
                    path: self.path().map(crate::wal::log_path).unwrap_or_default(),
                    problem: format!(
                        "the write failed to apply ({e}), and its record could not be cut off the log ({cut}); reopen the bank"
                    ),
                }),
            },
        }
    }

    /// Waits (without any lock of the bank) until a logged write is durable. A failed sync
    /// poisons the bank: memory is now ahead of what the disk is known to hold.
    fn durable(&self, commit: Option<Commit>) -> Result<()> {
        let Some(commit) = commit else { return Ok(()) };
        commit.wait().inspect_err(|e| {
            let mut store = self.write();
            if store.broken().is_none() {
                store.poison(format!("syncing the log failed, so the bank in memory may hold writes its files do not ({e})"));
            }
        })
    }

    /// After a logged write: checkpoint when the policy says so. A failure here does not fail
    /// the write, which is already durable in the log (see the module docs).
    fn settle(&self) {
        let Some(files) = &self.files else { return };
        let Some(log_len) = self.log_bytes() else {
            return;
        };
        let due = match files.checkpoint {
            CheckpointPolicy::LogOutgrowsSnapshot => {
                log_len > files.snapshot_bytes.load(Ordering::Relaxed)
            }
            CheckpointPolicy::LogBytes(limit) => log_len > limit,
            CheckpointPolicy::Manual => false,
        };
        if !due {
            return;
        }
        if let Err(e) = self.checkpoint() {
            self.checkpoint_failed(files, &e);
        }
    }

    /// A checkpoint after durable writes failed: a warning, kept for
    /// [`Bank::last_checkpoint_error`], never the writes' error.
    fn checkpoint_failed(&self, files: &Files, e: &Error) {
        tracing::warn!(
            bank = %files.snapshot.display(),
            error = %e,
            "checkpoint failed; the writes are safe, the next write tries again"
        );
        *lock(&files.checkpoint_error) = Some(e.to_string());
    }

    fn restore_after_failed_bulk(&self, store: &mut Store, added: &[u64], counters: (u64, u64)) {
        match &self.files {
            Some(files) => {
                let limits = *store.limits();
                let device = store.device().clone();
                match files::read(&files.snapshot, &device, limits) {
                    Ok((reloaded, _)) => *store = reloaded,
                    Err(e) => store.poison(format!(
                        "a failed bulk load left the bank in memory unlike its files, and reading them back failed ({e})"
                    )),
                }
            }
            None => {
                // Newest first: their keys are the last rows, so no removal shifts any row.
                for &id in added.iter().rev() {
                    if let Err(e) = store.remove(id) {
                        store.poison(format!(
                            "a failed bulk load could not be undone in memory ({e})"
                        ));
                        return;
                    }
                }
                store.restore_counters(counters);
            }
        }
    }
}

/// The handle [`Bank::bulk`] gives its closure.
pub struct BulkLoad<'a> {
    bank: &'a Bank,
    store: &'a mut Store,
    added: Vec<u64>,
    truncated: usize,
}

impl BulkLoad<'_> {
    /// Adds a batch (embedding intents that have no embedding), all or nothing within the batch;
    /// nothing is on disk until the bulk load ends.
    pub fn add_many(&mut self, memories: Vec<NewMemory>) -> Result<Vec<u64>> {
        let (memories, truncated) = self.bank.embed_missing(memories)?;
        let plan = self.store.plan_add(memories, now_ms())?;
        let ids = self.store.apply_add(&plan)?;
        self.added.extend_from_slice(&ids);
        self.truncated += truncated;
        Ok(ids)
    }

    /// Intents embedded so far that were cut at the model's token limit.
    pub fn truncated(&self) -> usize {
        self.truncated
    }

    /// Memories in the bank so far.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether the bank holds no memory so far.
    pub fn is_empty(&self) -> bool {
        self.store.len() == 0
    }

    /// Intent keys in the bank so far.
    pub fn num_intents(&self) -> usize {
        self.store.num_intents()
    }
}

fn check_usable(store: &Store) -> Result<()> {
    match store.broken() {
        Some(problem) => Err(Error::Poisoned(problem.to_string())),
        None => Ok(()),
    }
}

#[cfg(feature = "embed")]
fn load_embedder(options: &OpenOptions) -> Result<Option<Arc<Embedder>>> {
    if options.precision.is_some() && options.model.is_none() {
        return Err(Error::value(
            "OpenOptions",
            "a precision applies to the embedder that `model` loads; give `model`, or set the \
             precision when loading the embedder yourself (`EmbedderOptions`)",
        ));
    }
    match (&options.embedder, &options.model) {
        (Some(_), Some(_)) => Err(Error::value(
            "OpenOptions",
            "give an embedder or a model name, not both",
        )),
        (Some(embedder), None) => Ok(Some(embedder.clone())),
        (None, Some(name)) => {
            let model = crate::models::resolve(
                name,
                &crate::models::ResolveOptions::default(),
                &mut |line| tracing::info!("{line}"),
            )?;
            let embed_options = crate::embed::EmbedderOptions {
                precision: options.precision.unwrap_or_default(),
                ..crate::embed::EmbedderOptions::default()
            };
            Ok(Some(Arc::new(Embedder::load_with(
                &model,
                &options.device,
                &embed_options,
            )?)))
        }
        (None, None) => Ok(None),
    }
}

/// The config of a bank to create: the options' settings, the embedder's model and dimension.
fn new_bank_config(
    options: &OpenOptions,
    #[cfg(feature = "embed")] embedder: Option<&Embedder>,
) -> Result<BankConfig> {
    #[cfg(feature = "embed")]
    let (embedder_dim, embedder_name) = (
        embedder.map(Embedder::dim),
        embedder.map(|e| e.name().to_string()),
    );
    #[cfg(not(feature = "embed"))]
    let (embedder_dim, embedder_name): (Option<usize>, Option<String>) = (None, None);
    let dim = match (options.dim, embedder_dim) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::value(
                "dim",
                format!("{a} was given, but the embedder's dimension is {b}"),
            ))
        }
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) => {
            return Err(Error::value(
                "dim",
                "a new bank needs a dimension: give an embedder, a model, or OpenOptions::dim",
            ))
        }
    };
    let model_id = match (&options.model_id, embedder_name) {
        (Some(a), Some(b)) if *a != b => {
            return Err(Error::value(
                "model_id",
                format!("`{a}` was given, but the embedder is `{b}`"),
            ))
        }
        (Some(m), _) => m.clone(),
        (None, Some(m)) => m,
        (None, None) => {
            return Err(Error::value(
                "model_id",
                "a new bank records the model of its keys: give an embedder, a model, or OpenOptions::model_id",
            ))
        }
    };
    let mut config = BankConfig::new(dim, model_id);
    if let Some(dtype) = options.dtype {
        config.dtype = dtype;
    }
    if let Some(dedup_sim) = options.dedup_sim {
        config.dedup_sim = dedup_sim;
    }
    config.validate()?;
    Ok(config)
}

/// Refuses settings that cannot apply to an existing bank, and an embedder of another model.
fn check_existing(
    path: &Path,
    config: &BankConfig,
    options: &OpenOptions,
    #[cfg(feature = "embed")] embedder: Option<&Embedder>,
) -> Result<()> {
    let cannot_apply = |field: &str, given: String, stored: String| {
        Err(Error::value(
            field,
            format!(
                "{given} was given for a new bank, but {} exists with {field} {stored} (it cannot change)",
                path.display()
            ),
        ))
    };
    if let Some(dim) = options.dim.filter(|&d| d != config.dim) {
        return cannot_apply("dim", dim.to_string(), config.dim.to_string());
    }
    if let Some(model) = options.model_id.as_ref().filter(|&m| *m != config.model_id) {
        return cannot_apply(
            "model_id",
            format!("`{model}`"),
            format!("`{}`", config.model_id),
        );
    }
    if let Some(dtype) = options.dtype.filter(|&d| d != config.dtype) {
        return cannot_apply("dtype", dtype.as_str().into(), config.dtype.as_str().into());
    }
    if let Some(dedup) = options.dedup_sim.filter(|&d| d != config.dedup_sim) {
        return cannot_apply("dedup_sim", dedup.to_string(), config.dedup_sim.to_string());
    }
    #[cfg(feature = "embed")]
    if let Some(embedder) = embedder {
        if !crate::models::same_model(embedder.name(), &config.model_id)
            || embedder.dim() != config.dim
        {
            return Err(Error::ModelMismatch {
                bank: path.display().to_string(),
                bank_model: config.model_id.clone(),
                bank_dim: config.dim,
                model: embedder.name().to_string(),
                dim: embedder.dim(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod fault_tests;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::wal::SyncPolicy;

    #[test]
    fn bank_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Bank>();
    }

    const WRITERS: u64 = 8;

    /// A durable bank synced per batch, with one memory.
    fn durable_bank(dir: &Path) -> (Bank, Arc<crate::wal::Durability>) {
        let bank = Bank::options()
            .dim(2)
            .model_id("toy")
            .sync(SyncPolicy::EveryBatch)
            .checkpoint(CheckpointPolicy::Manual)
            .open(dir.join("bank.safetensors"))
            .unwrap();
        bank.add(NewMemory::new("a", "x").embedding(vec![1.0, 0.0]))
            .unwrap();
        let durability = bank.log().unwrap().durability().clone();
        (bank, durability)
    }

    /// A sync hook that holds the first fsync until `WRITERS` more records are committed (so
    /// every writer waits on it), then answers `answer`.
    fn hold_until_all_committed(
        durability: &Arc<crate::wal::Durability>,
        answer: fn() -> std::io::Result<()>,
    ) -> crate::wal::SyncHook {
        let target = durability.committed() + WRITERS;
        let durability = Arc::downgrade(durability);
        Box::new(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while durability.upgrade().is_some_and(|d| d.committed() < target)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            answer()
        })
    }

    /// `WRITERS` threads, each one outcome batch on memory 0; their answers.
    fn concurrent_feedback(bank: &Bank) -> Vec<Result<OutcomeReport>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..WRITERS)
                .map(|_| {
                    s.spawn(|| {
                        bank.apply_outcomes(&[Outcome {
                            memory_ids: vec![0],
                            reward: 1.0,
                        }])
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn one_fsync_acknowledges_every_write_committed_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (bank, durability) = durable_bank(dir.path());
        let before = bank.log_syncs().unwrap();
        durability.set_sync_hook(Some(hold_until_all_committed(&durability, || Ok(()))));
        let answers = concurrent_feedback(&bank);
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        // The first leader's fsync covers at least its own record; the writers that committed
        // while it ran share the next one.
        let syncs = bank.log_syncs().unwrap() - before;
        assert!(
            (1..=2).contains(&syncs),
            "{syncs} fsyncs for {WRITERS} writes"
        );
        durability.set_sync_hook(None);
        let q = bank.get(0).unwrap().q;
        // The log's lock lives as long as any descriptor of it.
        drop((bank, durability));
        let reopened = Bank::open(dir.path().join("bank.safetensors")).unwrap();
        assert_eq!(reopened.get(0).unwrap().visits, WRITERS);
        assert_eq!(reopened.get(0).unwrap().q, q);
    }

    #[test]
    fn a_failed_fsync_fails_every_waiter_and_poisons_the_bank() {
        let dir = tempfile::tempdir().unwrap();
        let (bank, durability) = durable_bank(dir.path());
        durability.set_sync_hook(Some(hold_until_all_committed(&durability, || {
            Err(std::io::Error::other("injected fsync failure"))
        })));
        let answers = concurrent_feedback(&bank);
        for answer in &answers {
            let e = answer.as_ref().unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Io, "{e}");
            assert!(e.to_string().contains("injected fsync failure"), "{e}");
            assert!(e.to_string().contains("may or may not be on disk"), "{e}");
        }
        durability.set_sync_hook(None);
        // Nothing more is acknowledged, read or snapshotted: the bank must be reopened.
        assert!(matches!(
            bank.add(NewMemory::new("b", "y").embedding(vec![0.0, 1.0])),
            Err(Error::Poisoned(_))
        ));
        assert!(matches!(
            bank.retrieve(&[vec![1.0, 0.0]][..]),
            Err(Error::Poisoned(_))
        ));
        assert!(bank.checkpoint().is_err());
        drop((bank, durability));
        // Reopening replays what is on disk: here every record reached the file before the
        // injected failure, so all of them are there, and the bank is whole.
        let reopened = Bank::open(dir.path().join("bank.safetensors")).unwrap();
        reopened.debug_check().unwrap();
        assert_eq!(reopened.len(), 1);
        assert_eq!(reopened.get(0).unwrap().visits, WRITERS);
        reopened
            .apply_outcomes(&[Outcome {
                memory_ids: vec![0],
                reward: 0.0,
            }])
            .unwrap();
    }

    #[test]
    fn a_checkpoint_acknowledges_the_writes_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (bank, durability) = durable_bank(dir.path());
        let target = durability.committed() + 1;
        // The log's fsync fails, but only once a checkpoint has made the record durable.
        durability.set_sync_hook(Some(Box::new({
            let durability = Arc::downgrade(&durability);
            move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while durability.upgrade().is_some_and(|d| d.durable() < target)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(std::io::Error::other("late"))
            }
        })));
        let answer = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                bank.apply_outcomes(&[Outcome {
                    memory_ids: vec![0],
                    reward: 1.0,
                }])
            });
            while durability.committed() < target {
                std::thread::sleep(Duration::from_millis(1));
            }
            bank.checkpoint().unwrap();
            writer.join().unwrap()
        });
        assert!(answer.is_ok(), "{answer:?}");
        durability.set_sync_hook(None);
        // The failed sync is final: no later write is acknowledged.
        assert!(bank
            .apply_outcomes(&[Outcome {
                memory_ids: vec![0],
                reward: 1.0,
            }])
            .is_err());
        drop((bank, durability));
        let reopened = Bank::open(dir.path().join("bank.safetensors")).unwrap();
        assert_eq!(reopened.get(0).unwrap().visits, 1);
    }
}
