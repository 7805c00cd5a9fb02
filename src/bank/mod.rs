//! The memory bank: intent keys on the device and the memories filed under them.
//!
//! A bank is two tables (spec, "The memory"):
//! - intent keys: unit-vector rows of a device matrix ([`intents`]), the retrieval keys;
//! - memories: id, intent text, experience text, Q and bookkeeping, each filed under one key.
//!
//! With intent sharing on (`dedup_sim < 1`), a new memory whose intent has cosine >= `dedup_sim`
//! with an existing key is filed under that key (the most similar one; ties go to the lower row)
//! instead of creating a new key. Both memories keep their own texts and Q.
//!
//! Invariants (checked by `debug_check` in tests):
//! - memories live in dense slots `0..len`; `slot_of[id] == slot` and `memories[slot].id == id`;
//! - `key_of[slot]` is a live key row and `members[key_of[slot]]` contains `slot`;
//! - every live key has at least one member (a key whose last memory is removed is removed);
//! - the device Q mirror equals the host Q of every slot.
//!
//! Every mutating call validates its whole input before changing anything, and writes the device
//! before the host, so an error leaves the bank exactly as it was.

mod intents;
mod stats;

pub use stats::BankSummary;
mod utility;

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::{BankConfig, LearningConfig, Limits, RetrievalConfig};
use crate::error::{Error, Result};
use crate::learn::{self, Outcome, OutcomeReport};
use crate::retrieve::{self, Hit};

use intents::IntentMatrix;
use utility::UtilityVector;

/// One episodic memory: (intent, experience, Q) plus bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Stable identifier, unique within the bank.
    pub id: u64,
    /// The task description the memory was written for.
    pub intent: String,
    /// What the agent should be told (a distilled script, or a reflection on a failure).
    pub experience: String,
    /// Learned utility: the expected reward of injecting this memory.
    pub q: f32,
    /// How many outcomes have updated this memory.
    pub visits: u64,
    /// The reward of the last outcome, `None` before the first.
    pub last_reward: Option<f32>,
    /// Whether the episode that wrote this memory succeeded.
    pub success: bool,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Time of the last change (creation or outcome), milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// Free-form user metadata.
    pub metadata: Option<serde_json::Value>,
}

/// A memory to add. `id: None` takes the bank's next free id; `q: None` starts at `q_init`.
#[derive(Debug, Clone, Default)]
pub struct NewMemory {
    /// Explicit id, or `None` for the next free one.
    pub id: Option<u64>,
    /// Intent text.
    pub intent: String,
    /// Embedding of the intent (any non-zero finite vector of the bank's dimension; it is
    /// normalised on insert).
    pub embedding: Vec<f32>,
    /// Experience text.
    pub experience: String,
    /// Whether the episode succeeded.
    pub success: bool,
    /// Initial Q, or `None` for the learning config's `q_init`.
    pub q: Option<f32>,
    /// Optional user metadata.
    pub metadata: Option<serde_json::Value>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Validates a batch of vectors (`rows` x `dim`, row-major) and returns them unit-normalised.
pub(crate) fn normalise_rows(what: &'static str, values: &[f32], dim: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(values.len());
    for (index, row) in values.chunks(dim).enumerate() {
        if let Some(pos) = row.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidEmbedding {
                what,
                index,
                problem: format!("component {pos} is {}", row[pos]),
            });
        }
        let norm = row
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt();
        if norm < 1e-12 {
            return Err(Error::InvalidEmbedding {
                what,
                index,
                problem: "the vector is zero and has no direction".to_string(),
            });
        }
        out.extend(row.iter().map(|&v| (v as f64 / norm) as f32));
    }
    Ok(out)
}

/// A bank of memories on one device. Not synchronised: wrap it in an [`crate::Engine`] to share it
/// between threads.
///
/// ```
/// use memrl::{Bank, BankConfig, NewMemory, RetrievalConfig};
/// let mut bank = Bank::new(BankConfig::new(2, "toy"), &memrl::Device::Cpu)?;
/// let id = bank.add(NewMemory {
///     intent: "sort a list".into(),
///     embedding: vec![1.0, 0.0],
///     experience: "use sort_unstable".into(),
///     ..Default::default()
/// })?;
/// let hits = bank.retrieve_vectors(&[vec![0.9, 0.1]], &RetrievalConfig::default())?;
/// assert_eq!(hits[0][0].id, id);
/// # Ok::<(), memrl::Error>(())
/// ```
#[derive(Debug)]
pub struct Bank {
    config: BankConfig,
    retrieval: RetrievalConfig,
    learning: LearningConfig,
    keys: IntentMatrix,
    /// Slots of the memories filed under each key row.
    members: Vec<Vec<u32>>,
    memories: Vec<Memory>,
    key_of: Vec<u32>,
    slot_of: HashMap<u64, u32>,
    utility: UtilityVector,
    next_id: u64,
    /// Sequence number of the last write-ahead log record applied (0: none).
    log_seq: u64,
    limits: Limits,
}

impl Bank {
    /// An empty bank on `device`, with the default retrieval and learning configs.
    pub fn new(config: BankConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            keys: IntentMatrix::new(config.dim, config.dtype.candle(), device)?,
            config,
            retrieval: RetrievalConfig::default(),
            learning: LearningConfig::default(),
            members: Vec::new(),
            memories: Vec::new(),
            key_of: Vec::new(),
            slot_of: HashMap::new(),
            utility: UtilityVector::new(device)?,
            next_id: 0,
            log_seq: 0,
            limits: Limits::default(),
        })
    }

    /// The bank's shape: dimension, dtype, sharing threshold, model.
    pub fn config(&self) -> &BankConfig {
        &self.config
    }

    /// The retrieval config stored with the bank (saved in snapshots).
    pub fn retrieval_config(&self) -> &RetrievalConfig {
        &self.retrieval
    }

    /// Replaces the stored retrieval config after validating it.
    pub fn set_retrieval_config(&mut self, config: RetrievalConfig) -> Result<()> {
        config.validate()?;
        self.retrieval = config;
        Ok(())
    }

    /// The learning config stored with the bank (saved in snapshots).
    pub fn learning_config(&self) -> &LearningConfig {
        &self.learning
    }

    /// Replaces the stored learning config after validating it.
    pub fn set_learning_config(&mut self, config: LearningConfig) -> Result<()> {
        config.validate()?;
        self.learning = config;
        Ok(())
    }

    /// The operational limits (not saved with the bank).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the limits after validating them. A bank already larger than the new
    /// `max_memories` keeps its memories and refuses further adds.
    pub fn set_limits(&mut self, limits: Limits) -> Result<()> {
        limits.validate()?;
        self.limits = limits;
        Ok(())
    }

    /// Sequence number of the last write-ahead log record this bank reflects (saved in
    /// snapshots; 0 for a bank that never had a log). See [`crate::wal`].
    pub fn log_seq(&self) -> u64 {
        self.log_seq
    }

    pub(crate) fn set_log_seq(&mut self, seq: u64) {
        self.log_seq = seq;
    }

    /// The device the keys and Q live on.
    pub fn device(&self) -> &Device {
        self.keys.device()
    }

    /// Number of memories.
    pub fn len(&self) -> usize {
        self.memories.len()
    }

    /// Whether the bank holds no memory.
    pub fn is_empty(&self) -> bool {
        self.memories.is_empty()
    }

    /// Number of intent keys (<= number of memories; fewer when intents are shared).
    pub fn num_intents(&self) -> usize {
        self.keys.len()
    }

    /// The id the next memory without an explicit id will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The memory with this id.
    pub fn get(&self, id: u64) -> Option<&Memory> {
        self.slot_of
            .get(&id)
            .map(|&slot| &self.memories[slot as usize])
    }

    /// Whether a memory with this id exists.
    pub fn contains(&self, id: u64) -> bool {
        self.slot_of.contains_key(&id)
    }

    /// All memories, in slot order (insertion order until something is removed).
    pub fn iter(&self) -> impl Iterator<Item = &Memory> + '_ {
        self.memories.iter()
    }

    /// The unit intent key a memory is filed under (as f32, whatever the storage dtype).
    pub fn intent_key(&self, id: u64) -> Result<Vec<f32>> {
        let slot = *self.slot_of.get(&id).ok_or(Error::NotFound(id))?;
        self.keys.row(self.key_of[slot as usize] as usize)
    }

    /// Ids of the memories that share the key of memory `id` (itself included), in slot order.
    pub fn intent_members(&self, id: u64) -> Result<Vec<u64>> {
        let slot = *self.slot_of.get(&id).ok_or(Error::NotFound(id))?;
        let key = self.key_of[slot as usize] as usize;
        Ok(self.members[key]
            .iter()
            .map(|&s| self.memories[s as usize].id)
            .collect())
    }

    /// Adds one memory and returns its id.
    pub fn add(&mut self, memory: NewMemory) -> Result<u64> {
        let ids = self.add_many(vec![memory])?;
        Ok(ids[0])
    }

    /// Adds a batch of memories, all or nothing, and returns their ids in order.
    ///
    /// Memories of one batch can share intents with each other as well as with the bank; each is
    /// filed in order, as if added one at a time.
    pub fn add_many(&mut self, batch: Vec<NewMemory>) -> Result<Vec<u64>> {
        let resolved = self.resolve_add(batch, now_ms())?;
        self.apply_add(&resolved)
    }

    /// Validates a batch and makes every decision an add takes (ids, which key each memory is
    /// filed under, the unit keys, the creation time) without changing anything. Applying the
    /// result with [`Bank::apply_add`] is what [`Bank::add_many`] does; the write-ahead log
    /// stores it in between, so a replay files every memory exactly as the original call did.
    pub fn resolve_add(&self, batch: Vec<NewMemory>, created_ms: u64) -> Result<ResolvedAdd> {
        let dim = self.config.dim;
        self.check_add_size(batch.len())?;
        let mut flat = Vec::with_capacity(batch.len() * dim);
        for (index, m) in batch.iter().enumerate() {
            if m.embedding.len() != dim {
                return Err(Error::DimensionMismatch {
                    what: "intent embedding",
                    expected: dim,
                    got: m.embedding.len(),
                });
            }
            if let Some(q) = m.q {
                if !q.is_finite() {
                    return Err(Error::config("q", q, "initial Q must be a finite number"));
                }
            }
            let metadata_bytes = m.metadata.as_ref().map_or(0, |v| v.to_string().len());
            self.check_texts(index, &m.intent, &m.experience, metadata_bytes)?;
            flat.extend_from_slice(&m.embedding);
        }
        let unit = normalise_rows("intent embedding", &flat, dim)?;
        let mut next_id = self.next_id;
        let mut ids = Vec::with_capacity(batch.len());
        let mut batch_ids = HashSet::with_capacity(batch.len());
        for m in &batch {
            let id = match m.id {
                Some(id) => id,
                None => {
                    // Skip ids taken explicitly by this batch.
                    while batch_ids.contains(&next_id) || self.slot_of.contains_key(&next_id) {
                        next_id = next_id.checked_add(1).ok_or(Error::config(
                            "id",
                            "u64::MAX",
                            "no free memory id is left",
                        ))?;
                    }
                    next_id
                }
            };
            if self.slot_of.contains_key(&id) || !batch_ids.insert(id) {
                return Err(Error::DuplicateId(id));
            }
            ids.push(id);
        }

        // An existing key is named by its first member; a key created earlier in the batch by
        // the memory that creates it. Both stay valid until the add is applied.
        let assignment = self.assign_keys(&unit)?;
        let q_init = self.learning.q_init;
        let memories = batch
            .into_iter()
            .enumerate()
            .map(|(i, m)| ResolvedMemory {
                id: ids[i],
                key: match assignment[i] {
                    KeyAssignment::Existing(row) => {
                        KeyChoice::SharedWith(self.memories[self.members[row][0] as usize].id)
                    }
                    KeyAssignment::SameAs(j) => KeyChoice::SharedWith(ids[j]),
                    KeyAssignment::New => KeyChoice::New(unit[i * dim..(i + 1) * dim].to_vec()),
                },
                intent: m.intent,
                experience: m.experience,
                success: m.success,
                q: m.q.unwrap_or(q_init),
                metadata: m.metadata,
            })
            .collect();
        Ok(ResolvedAdd {
            created_ms,
            memories,
        })
    }

    /// Applies a resolved add, all or nothing, and returns the new ids in order. It checks
    /// everything again (ids free and distinct, keys that exist, finite unit vectors of the
    /// bank's dimension, the limits), because a resolved add may come from a log file.
    pub fn apply_add(&mut self, add: &ResolvedAdd) -> Result<Vec<u64>> {
        let dim = self.config.dim;
        let batch = &add.memories;
        self.check_add_size(batch.len())?;
        // 1. Validate, touching nothing.
        let mut batch_index: HashMap<u64, usize> = HashMap::with_capacity(batch.len());
        let mut new_rows = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            if self.slot_of.contains_key(&m.id) || batch_index.insert(m.id, i).is_some() {
                return Err(Error::DuplicateId(m.id));
            }
            if !m.q.is_finite() {
                return Err(Error::config("q", m.q, "initial Q must be a finite number"));
            }
            let metadata_bytes = m.metadata.as_ref().map_or(0, |v| v.to_string().len());
            self.check_texts(i, &m.intent, &m.experience, metadata_bytes)?;
            match &m.key {
                KeyChoice::New(unit) => {
                    if unit.len() != dim {
                        return Err(Error::DimensionMismatch {
                            what: "intent key",
                            expected: dim,
                            got: unit.len(),
                        });
                    }
                    let norm2: f64 = unit.iter().map(|&v| v as f64 * v as f64).sum();
                    if !norm2.is_finite() || (norm2 - 1.0).abs() > 1e-3 {
                        return Err(Error::InvalidEmbedding {
                            what: "intent key",
                            index: i,
                            problem: format!("not a unit vector (squared norm {norm2})"),
                        });
                    }
                    new_rows.extend_from_slice(unit);
                }
                KeyChoice::SharedWith(other) => {
                    let earlier = batch_index.get(other).is_some_and(|&j| j < i);
                    if !earlier && !self.slot_of.contains_key(other) {
                        return Err(Error::NotFound(*other));
                    }
                }
            }
        }
        let new_next_id = batch
            .iter()
            .fold(self.next_id, |acc, m| acc.max(m.id.saturating_add(1)));

        // 2. Device writes first (they can fail), then the host tables (they cannot).
        let new_keys = new_rows.len() / dim;
        let qs: Vec<f32> = batch.iter().map(|m| m.q).collect();
        self.keys.reserve(new_keys)?;
        self.utility.reserve(batch.len())?;
        if new_keys > 0 {
            let rows = Tensor::from_vec(new_rows, (new_keys, dim), &Device::Cpu)?;
            self.keys.push_rows(&rows)?;
        }
        self.utility.push(&qs)?;

        let mut key_of_new: Vec<u32> = Vec::with_capacity(batch.len());
        let mut next_key = self.members.len() as u32;
        for (i, m) in batch.iter().enumerate() {
            let key = match &m.key {
                KeyChoice::New(_) => {
                    self.members.push(Vec::new());
                    next_key += 1;
                    next_key - 1
                }
                KeyChoice::SharedWith(other) => match batch_index.get(other) {
                    Some(&j) if j < i => key_of_new[j],
                    _ => self.key_of[self.slot_of[other] as usize],
                },
            };
            key_of_new.push(key);
            let slot = self.memories.len() as u32;
            self.members[key as usize].push(slot);
            self.key_of.push(key);
            self.slot_of.insert(m.id, slot);
            self.memories.push(Memory {
                id: m.id,
                intent: m.intent.clone(),
                experience: m.experience.clone(),
                q: m.q,
                visits: 0,
                last_reward: None,
                success: m.success,
                created_ms: add.created_ms,
                updated_ms: add.created_ms,
                metadata: m.metadata.clone(),
            });
        }
        self.next_id = new_next_id;
        Ok(batch.iter().map(|m| m.id).collect())
    }

    fn check_add_size(&self, adding: usize) -> Result<()> {
        Limits::check("memories in one add", self.limits.max_batch, adding)?;
        Limits::check(
            "memories in the bank",
            self.limits.max_memories,
            self.memories.len().saturating_add(adding),
        )
    }

    fn check_texts(
        &self,
        index: usize,
        intent: &str,
        experience: &str,
        metadata: usize,
    ) -> Result<()> {
        let limit = self.limits.max_text_bytes;
        for (what, len) in [
            ("intent bytes", intent.len()),
            ("experience bytes", experience.len()),
            ("metadata bytes (as JSON)", metadata),
        ] {
            if len > limit {
                return Err(Error::TextTooLong {
                    what,
                    index,
                    limit,
                    got: len,
                });
            }
        }
        Ok(())
    }

    /// For each unit row of a batch: file it under an existing key, under a key that an earlier
    /// row of the batch creates, or under a new key. Read-only.
    fn assign_keys(&self, unit: &[f32]) -> Result<Vec<KeyAssignment>> {
        let dim = self.config.dim;
        let n = unit.len() / dim;
        if !self.config.shares_intents() {
            return Ok(vec![KeyAssignment::New; n]);
        }
        let threshold = self.config.dedup_sim;
        // Best existing key of every row, with one tiled scan of the bank.
        let mut best_existing: Vec<Option<(f32, usize)>> = vec![None; n];
        if self.keys.len() > 0 && n > 0 {
            let queries = Tensor::from_slice(unit, (n, dim), self.device())?;
            let top = retrieve::top_keys(&queries, &self.keys.view()?, 1)?;
            for ((best, sims), rows) in best_existing.iter_mut().zip(&top.sims).zip(&top.rows) {
                if let (Some(&s), Some(&r)) = (sims.first(), rows.first()) {
                    if s >= threshold {
                        *best = Some((s, r as usize));
                    }
                }
            }
        }
        // Keys created within the batch: a plain scan (batches are small next to the bank).
        let mut assignment = Vec::with_capacity(n);
        let mut created: Vec<usize> = Vec::new();
        for i in 0..n {
            let row_i = &unit[i * dim..(i + 1) * dim];
            let mut best = best_existing[i].map(|(s, r)| (s, KeyAssignment::Existing(r)));
            for &j in &created {
                let row_j = &unit[j * dim..(j + 1) * dim];
                let s: f32 = row_i.iter().zip(row_j).map(|(a, b)| a * b).sum();
                // Existing keys have lower rows than batch keys, so only a strictly higher
                // similarity displaces the current best (ties go to the lower row).
                if s >= threshold && best.as_ref().is_none_or(|(bs, _)| s > *bs) {
                    best = Some((s, KeyAssignment::SameAs(j)));
                }
            }
            match best {
                Some((_, a)) => assignment.push(a),
                None => {
                    created.push(i);
                    assignment.push(KeyAssignment::New);
                }
            }
        }
        Ok(assignment)
    }

    /// Removes a memory; its key goes too when no other memory shares it. Returns the memory.
    pub fn remove(&mut self, id: u64) -> Result<Memory> {
        let slot = *self.slot_of.get(&id).ok_or(Error::NotFound(id))? as usize;
        let key = self.key_of[slot] as usize;
        let last = self.memories.len() - 1;

        // Device writes first.
        let key_goes = self.members[key].len() == 1;
        self.utility.swap_remove(slot, self.memories[last].q)?;
        let moved_key = if key_goes {
            self.keys.swap_remove(key)?
        } else {
            None
        };

        // Host tables.
        self.members[key].retain(|&s| s as usize != slot);
        let removed = self.memories.swap_remove(slot);
        self.key_of.swap_remove(slot);
        self.slot_of.remove(&id);
        if slot != last {
            // The memory that was in the last slot now lives in `slot`.
            let moved_id = self.memories[slot].id;
            self.slot_of.insert(moved_id, slot as u32);
            let moved_key_of = self.key_of[slot] as usize;
            for s in &mut self.members[moved_key_of] {
                if *s as usize == last {
                    *s = slot as u32;
                }
            }
        }
        if key_goes {
            self.members.swap_remove(key);
            if let Some(old_row) = moved_key {
                debug_assert_eq!(old_row, self.members.len());
                for &s in &self.members[key] {
                    self.key_of[s as usize] = key as u32;
                }
            }
        }
        Ok(removed)
    }

    /// Two-phase retrieval for a batch of query embeddings (`B x dim`, any device; normalised
    /// here). Returns, for each query, up to `k2` hits best first; an empty list when nothing
    /// passes the similarity gate.
    pub fn retrieve(&self, queries: &Tensor, config: &RetrievalConfig) -> Result<Vec<Vec<Hit>>> {
        Limits::check(
            "queries in one retrieval",
            self.limits.max_batch,
            queries.dims().first().copied().unwrap_or(0),
        )?;
        retrieve::retrieve(self, queries, config)
    }

    /// [`Bank::retrieve`] for queries given as plain vectors.
    pub fn retrieve_vectors(
        &self,
        queries: &[Vec<f32>],
        config: &RetrievalConfig,
    ) -> Result<Vec<Vec<Hit>>> {
        let dim = self.config.dim;
        let mut flat = Vec::with_capacity(queries.len() * dim);
        for q in queries {
            if q.len() != dim {
                return Err(Error::DimensionMismatch {
                    what: "query",
                    expected: dim,
                    got: q.len(),
                });
            }
            flat.extend_from_slice(q);
        }
        let t = Tensor::from_vec(flat, (queries.len(), dim), &Device::Cpu)?;
        self.retrieve(&t, config)
    }

    /// Applies a batch of outcomes with the bank's learning config: for every memory injected in
    /// an episode, `Q <- Q + alpha (r - Q)`, visits + 1, last reward recorded. All or nothing:
    /// an unknown id or a bad reward rejects the whole batch.
    pub fn apply_outcomes(&mut self, outcomes: &[Outcome]) -> Result<OutcomeReport> {
        let config = self.learning.clone();
        self.apply_outcomes_with(outcomes, &config)
    }

    /// [`Bank::apply_outcomes`] with an explicit learning config.
    pub fn apply_outcomes_with(
        &mut self,
        outcomes: &[Outcome],
        config: &LearningConfig,
    ) -> Result<OutcomeReport> {
        self.apply_outcomes_at(outcomes, config, now_ms())
    }

    /// Checks a batch of outcomes as [`Bank::apply_outcomes_with`] would, changing nothing.
    pub fn check_outcomes(&self, outcomes: &[Outcome], config: &LearningConfig) -> Result<()> {
        self.plan_outcomes(outcomes, config).map(drop)
    }

    fn plan_outcomes(&self, outcomes: &[Outcome], config: &LearningConfig) -> Result<learn::Plan> {
        Limits::check(
            "outcomes in one batch",
            self.limits.max_batch,
            outcomes.len(),
        )?;
        learn::plan(outcomes, config, |id| {
            self.slot_of.get(&id).map(|&slot| {
                let m = &self.memories[slot as usize];
                (slot, m.q, m.visits)
            })
        })
    }

    /// [`Bank::apply_outcomes_with`] stamped with a given time (`updated_ms`), as a log replay
    /// needs.
    pub fn apply_outcomes_at(
        &mut self,
        outcomes: &[Outcome],
        config: &LearningConfig,
        now: u64,
    ) -> Result<OutcomeReport> {
        let plan = self.plan_outcomes(outcomes, config)?;
        let slots: Vec<u32> = plan.updates.iter().map(|u| u.slot).collect();
        let values: Vec<f32> = plan.updates.iter().map(|u| u.q).collect();
        self.utility.set(&slots, &values)?;
        for u in &plan.updates {
            let m = &mut self.memories[u.slot as usize];
            m.q = u.q;
            m.visits = u.visits;
            m.last_reward = Some(u.last_reward);
            m.updated_ms = now;
        }
        Ok(plan.report)
    }

    // ---- crate-internal read access for retrieval and snapshots ----

    pub(crate) fn keys_view(&self) -> Result<Tensor> {
        self.keys.view()
    }

    pub(crate) fn utility_view(&self) -> Result<Tensor> {
        self.utility.view()
    }

    pub(crate) fn members_of_key(&self, row: usize) -> &[u32] {
        &self.members[row]
    }

    pub(crate) fn memory_at(&self, slot: u32) -> &Memory {
        &self.memories[slot as usize]
    }

    pub(crate) fn key_rows(&self) -> &[u32] {
        &self.key_of
    }

    /// Rebuilds a bank from validated snapshot parts. `keys` are row-major unit vectors in the
    /// storage dtype; `key_of[i]` is the key of `memories[i]`.
    pub(crate) fn from_parts(parts: BankParts, device: &Device) -> Result<Self> {
        let mut bank = Bank::new(parts.config, device)?;
        bank.retrieval = parts.retrieval;
        bank.learning = parts.learning;
        bank.keys.push_rows(&parts.keys.to_device(device)?)?;
        let qs: Vec<f32> = parts.memories.iter().map(|m| m.q).collect();
        bank.utility.push(&qs)?;
        bank.members = vec![Vec::new(); bank.keys.len()];
        for (slot, (m, &key)) in parts.memories.iter().zip(&parts.key_of).enumerate() {
            bank.members[key as usize].push(slot as u32);
            bank.slot_of.insert(m.id, slot as u32);
        }
        bank.key_of = parts.key_of;
        bank.memories = parts.memories;
        bank.next_id = parts.next_id;
        bank.log_seq = parts.log_seq;
        Ok(bank)
    }

    /// Checks every invariant listed in the module docs (tests and debug tooling).
    #[doc(hidden)]
    pub fn debug_check(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::config("bank", msg, "invariant violated"));
        let n = self.memories.len();
        if self.key_of.len() != n
            || self.slot_of.len() != n
            || self.members.len() != self.keys.len()
        {
            return fail("table lengths disagree".into());
        }
        for (slot, m) in self.memories.iter().enumerate() {
            if self.slot_of.get(&m.id) != Some(&(slot as u32)) {
                return fail(format!("slot_of[{}] != {slot}", m.id));
            }
            let key = self.key_of[slot] as usize;
            if key >= self.members.len() || !self.members[key].contains(&(slot as u32)) {
                return fail(format!("slot {slot} missing from members of key {key}"));
            }
        }
        if self.members.iter().any(|m| m.is_empty()) {
            return fail("a key has no memory".into());
        }
        let device_q: Vec<f32> = self.utility.view()?.to_vec1()?;
        for (slot, m) in self.memories.iter().enumerate() {
            if device_q[slot].to_bits() != m.q.to_bits() {
                return fail(format!(
                    "device Q of slot {slot} is {} not {}",
                    device_q[slot], m.q
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum KeyAssignment {
    Existing(usize),
    SameAs(usize),
    New,
}

/// Everything a snapshot holds, already validated.
pub(crate) struct BankParts {
    pub(crate) config: BankConfig,
    pub(crate) retrieval: RetrievalConfig,
    pub(crate) learning: LearningConfig,
    pub(crate) keys: Tensor,
    pub(crate) memories: Vec<Memory>,
    pub(crate) key_of: Vec<u32>,
    pub(crate) next_id: u64,
    pub(crate) log_seq: u64,
}

/// An add with every decision made: what [`Bank::resolve_add`] returns, [`Bank::apply_add`]
/// applies and the write-ahead log stores.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedAdd {
    /// Creation time of every memory of the add, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The memories, in order.
    pub memories: Vec<ResolvedMemory>,
}

/// One memory of a [`ResolvedAdd`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedMemory {
    /// Its id.
    pub id: u64,
    /// The key it is filed under.
    pub key: KeyChoice,
    /// Intent text.
    pub intent: String,
    /// Experience text.
    pub experience: String,
    /// Whether the episode succeeded.
    pub success: bool,
    /// Initial Q.
    pub q: f32,
    /// User metadata.
    pub metadata: Option<serde_json::Value>,
}

/// Where a resolved memory is filed.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyChoice {
    /// Under a new key: this unit vector (f32; stored in the bank's dtype).
    New(Vec<f32>),
    /// Under the key of this memory, which exists in the bank or comes earlier in the same add.
    SharedWith(u64),
}
