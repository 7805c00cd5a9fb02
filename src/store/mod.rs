//! A bank's state in memory: its intent keys (a [`DeviceIndex`]), its memories (the memory
//! table), its configs and counters; every mutation planned, then applied.
//!
//! A bank is two tables (spec, "The memory"): intent keys, the retrieval keys; and memories,
//! each filed under one key. With intent sharing on (`dedup_sim < 1`), a new memory whose intent
//! has cosine >= `dedup_sim` with an existing key is filed under that key (the most similar one;
//! ties go to the lower key id) instead of creating a new key. Both memories keep their own
//! texts and Q.
//!
//! Mutations come in two steps, so the write-ahead log can sit between them:
//! - `plan_*` validates the whole input and makes every decision (ids, the key each memory is
//!   filed under, the new Q of every touched memory) without changing anything;
//! - `apply_*` applies a plan all or nothing. It checks the plan again, cheaply, because a plan
//!   may come from a log file; it never decides anything, so a replayed plan gives exactly the
//!   state the original call gave.
//!
//! The only device write is appending or removing key rows. An append that fails changes
//! nothing; a removal that fails part-way through its row shift marks the store broken (every
//! later call fails until the bank is reopened from its files).

mod stats;
pub(crate) mod table;

pub use stats::Stats;

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::config::{BankConfig, LearningConfig, Limits, RetrievalConfig};
use crate::error::{Error, Result};
use crate::index::{DeviceIndex, KeyId, KeyIndex, KeyMatch};
use crate::learn::{self, Outcome, OutcomeReport};
use crate::retrieve::{self, Hit};

use table::MemoryTable;

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
    /// The baseline of the memory's intent key under baseline-corrected credit
    /// ([`LearningConfig::baseline_rate`]): what episodes that used the key's memories earn
    /// anyway. `None` until an outcome with that credit touches the key; every memory of a key
    /// that has one holds the same value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f32>,
}

/// A memory to add.
///
/// `embedding: None` embeds `intent` with the bank's embedder; `id: None` takes the bank's next
/// free id; `q: None` starts at the learning config's `q_init`.
///
/// ```
/// let m = memrl::NewMemory::new("book a flight to Lisbon", "search by airport code")
///     .success(true)
///     .metadata(serde_json::json!({"agent": "travel"}));
/// assert!(m.embedding.is_none() && m.success);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewMemory {
    /// Explicit id, or `None` for the next free one.
    pub id: Option<u64>,
    /// Intent text: the task the memory was written for.
    pub intent: String,
    /// The intent's embedding (any non-zero finite vector of the bank's dimension; it is
    /// normalised on insert), or `None` to embed `intent` with the bank's embedder.
    pub embedding: Option<Vec<f32>>,
    /// Experience text: what the agent should be told.
    pub experience: String,
    /// Whether the episode succeeded.
    pub success: bool,
    /// Initial Q, or `None` for the learning config's `q_init`.
    pub q: Option<f32>,
    /// Optional user metadata.
    pub metadata: Option<serde_json::Value>,
}

impl NewMemory {
    /// A memory with this intent and experience; everything else at its default.
    pub fn new(intent: impl Into<String>, experience: impl Into<String>) -> Self {
        Self {
            intent: intent.into(),
            experience: experience.into(),
            ..Default::default()
        }
    }

    /// Sets the intent's embedding (instead of embedding the intent text).
    pub fn embedding(mut self, embedding: Vec<f32>) -> Self {
        self.embedding = Some(embedding);
        self
    }

    /// Sets whether the episode succeeded.
    pub fn success(mut self, success: bool) -> Self {
        self.success = success;
        self
    }

    /// Sets an explicit id.
    pub fn id(mut self, id: u64) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the initial Q.
    pub fn q(mut self, q: f32) -> Self {
        self.q = Some(q);
        self
    }

    /// Sets the user metadata.
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How far a stored key's norm may be from 1: the rounding of f16 and bf16 storage (bf16 keeps 8
/// bits of mantissa) stays well inside it, while anything that is not a unit vector is far out.
pub(crate) const UNIT_NORM_TOLERANCE: f64 = 1e-2;

/// Whether `v` is a unit vector, up to [`UNIT_NORM_TOLERANCE`].
pub(crate) fn is_unit(v: &[f32]) -> bool {
    let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    norm.is_finite() && (norm - 1.0).abs() <= UNIT_NORM_TOLERANCE
}

/// Validates a batch of vectors (`rows` x `dim`, row-major) and returns them unit-normalised.
pub(crate) fn normalise_rows(what: &'static str, values: &[f32], dim: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(values.len());
    for (index, row) in values.chunks(dim.max(1)).enumerate() {
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

/// An add with every decision made: what [`Store::plan_add`] returns, [`Store::apply_add`]
/// applies and the write-ahead log stores.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AddPlan {
    /// Creation time of every memory of the add, milliseconds since the Unix epoch.
    pub(crate) created_ms: u64,
    /// Where the search for the next automatic id starts after this add (`None` in plans of
    /// version-1 logs: then past the highest id added, as version 1 did).
    pub(crate) next_id: Option<u64>,
    /// The memories, in order.
    pub(crate) memories: Vec<PlannedMemory>,
}

/// One memory of an [`AddPlan`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlannedMemory {
    pub(crate) id: u64,
    pub(crate) key: KeyChoice,
    pub(crate) intent: String,
    pub(crate) experience: String,
    pub(crate) success: bool,
    pub(crate) q: f32,
    pub(crate) metadata: Option<serde_json::Value>,
}

/// Where a planned memory is filed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeyChoice {
    /// Under a new key: this unit vector (f32; stored in the bank's dtype). New keys take the
    /// store's next key ids, in the order of the plan.
    New(Vec<f32>),
    /// Under this key, which exists in the store or is created earlier in the same plan.
    Existing(KeyId),
    /// Under a new key with this id (above every key id the store has used, and above the
    /// plan's earlier new keys): how a shard of a sharded bank files a key whose id the
    /// coordinator chose ([`crate::shard`]).
    NewAt(KeyId, Vec<f32>),
    /// Under the key of this memory, which exists in the store or comes earlier in the same
    /// plan (how version-1 logs name a shared key).
    SameAsMemory(u64),
}

/// An outcome batch with every new value computed: what [`Store::plan_outcomes`] returns and
/// the write-ahead log stores.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutcomePlan {
    /// `updated_ms` of every touched memory.
    pub(crate) applied_ms: u64,
    /// The final state of every touched memory, in first-touch order.
    pub(crate) updates: Vec<MemoryUpdate>,
    /// With baseline-corrected credit: the final baseline of every memory of every touched
    /// intent key (empty otherwise, and then the log record is the one older versions wrote).
    pub(crate) baselines: Vec<(u64, f32)>,
}

/// The state an outcome batch leaves one memory in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MemoryUpdate {
    pub(crate) id: u64,
    pub(crate) q: f32,
    pub(crate) visits: u64,
    pub(crate) last_reward: f32,
}

/// Everything a snapshot holds, already validated.
pub(crate) struct StoreParts {
    pub(crate) config: BankConfig,
    pub(crate) retrieval: RetrievalConfig,
    pub(crate) learning: LearningConfig,
    pub(crate) bank_id: u64,
    /// Key ids, increasing, one per row of `keys`.
    pub(crate) key_ids: Vec<KeyId>,
    /// `K x dim` unit keys in the storage dtype, on the CPU.
    pub(crate) keys: candle_core::Tensor,
    /// Memories, each with the key it is filed under.
    pub(crate) memories: Vec<(Memory, KeyId)>,
    pub(crate) next_id: u64,
    pub(crate) next_key_id: u64,
    pub(crate) log_seq: u64,
}

/// The in-memory state of one bank (see the module docs). Not synchronised: the front door
/// ([`crate::Bank`]) holds it behind a reader-writer lock.
#[derive(Debug)]
pub(crate) struct Store {
    config: BankConfig,
    retrieval: RetrievalConfig,
    learning: LearningConfig,
    index: DeviceIndex,
    table: MemoryTable,
    /// Where the search for an automatic memory id starts.
    next_id: u64,
    /// The id the next new key gets.
    next_key_id: u64,
    /// Sequence number of the last write-ahead log record applied (0: none).
    log_seq: u64,
    /// A random identity, fixed at creation, shared by the bank's snapshot and log header, so a
    /// log is never replayed onto another bank.
    bank_id: u64,
    limits: Limits,
    /// Set when a failed device write left the keys unlike the table.
    broken: Option<String>,
}

impl Store {
    /// An empty store on `device`, with the default retrieval and learning configs.
    pub(crate) fn new(config: BankConfig, bank_id: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            index: DeviceIndex::new(config.dim, config.dtype.candle(), device)?,
            config,
            retrieval: RetrievalConfig::default(),
            learning: LearningConfig::default(),
            table: MemoryTable::default(),
            next_id: 0,
            next_key_id: 0,
            log_seq: 0,
            bank_id,
            limits: Limits::default(),
            broken: None,
        })
    }

    /// Rebuilds a store from validated snapshot parts.
    pub(crate) fn from_parts(parts: StoreParts, device: &Device) -> Result<Self> {
        let mut store = Store::new(parts.config, parts.bank_id, device)?;
        store.retrieval = parts.retrieval;
        store.learning = parts.learning;
        store.index = DeviceIndex::from_parts(parts.key_ids, &parts.keys, device)?;
        for (memory, key) in parts.memories {
            store.table.insert(memory, key);
        }
        store.next_id = parts.next_id;
        store.next_key_id = parts.next_key_id;
        store.log_seq = parts.log_seq;
        Ok(store)
    }

    pub(crate) fn config(&self) -> &BankConfig {
        &self.config
    }

    pub(crate) fn retrieval_config(&self) -> &RetrievalConfig {
        &self.retrieval
    }

    pub(crate) fn set_retrieval_config(&mut self, config: RetrievalConfig) -> Result<()> {
        config.validate()?;
        self.retrieval = config;
        Ok(())
    }

    pub(crate) fn learning_config(&self) -> &LearningConfig {
        &self.learning
    }

    pub(crate) fn set_learning_config(&mut self, config: LearningConfig) -> Result<()> {
        config.validate()?;
        self.learning = config;
        Ok(())
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn set_limits(&mut self, limits: Limits) -> Result<()> {
        limits.validate()?;
        self.limits = limits;
        Ok(())
    }

    pub(crate) fn log_seq(&self) -> u64 {
        self.log_seq
    }

    pub(crate) fn set_log_seq(&mut self, seq: u64) {
        self.log_seq = seq;
    }

    pub(crate) fn bank_id(&self) -> u64 {
        self.bank_id
    }

    /// Gives a bank of an older format (bank id 0) its identity.
    pub(crate) fn set_bank_id(&mut self, bank_id: u64) {
        self.bank_id = bank_id;
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    pub(crate) fn next_key_id(&self) -> u64 {
        self.next_key_id
    }

    pub(crate) fn device(&self) -> &Device {
        KeyIndex::device(&self.index).unwrap_or(&Device::Cpu)
    }

    pub(crate) fn index(&self) -> &DeviceIndex {
        &self.index
    }

    pub(crate) fn table(&self) -> &MemoryTable {
        &self.table
    }

    /// Why the store is unusable, if it is.
    pub(crate) fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Marks the store unusable: it no longer matches what its files (or its caller) expect.
    pub(crate) fn poison(&mut self, problem: String) {
        self.broken = Some(problem);
    }

    /// The id counters (next memory id, next key id), to put back after an undone bulk load.
    pub(crate) fn counters(&self) -> (u64, u64) {
        (self.next_id, self.next_key_id)
    }

    pub(crate) fn restore_counters(&mut self, (next_id, next_key_id): (u64, u64)) {
        self.next_id = next_id;
        self.next_key_id = next_key_id;
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn num_intents(&self) -> usize {
        self.index.num_keys()
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Memory> {
        self.table.get(id)
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.table.contains(id)
    }

    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = &Memory> + '_ {
        self.table.iter()
    }

    /// The unit intent key a memory is filed under (as f32, whatever the storage dtype).
    pub(crate) fn intent_key(&self, id: u64) -> Result<Vec<f32>> {
        let key = self.table.key_of(id).ok_or(Error::NotFound(id))?;
        self.index.key(key)
    }

    /// Ids of the memories that share the key of memory `id` (itself included), ascending.
    pub(crate) fn intent_members(&self, id: u64) -> Result<Vec<u64>> {
        let key = self.table.key_of(id).ok_or(Error::NotFound(id))?;
        let mut ids: Vec<u64> = self
            .table
            .members(key)
            .iter()
            .map(|&slot| self.table.at(slot).id)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Two-phase retrieval for host query rows (`B x dim`, row-major).
    pub(crate) fn retrieve(
        &self,
        queries: &[f32],
        config: &RetrievalConfig,
    ) -> Result<Vec<Vec<Hit>>> {
        let dim = self.config.dim;
        if !queries.len().is_multiple_of(dim) {
            return Err(Error::DimensionMismatch {
                what: "query",
                expected: dim,
                got: queries.len() % dim,
            });
        }
        Limits::check(
            "queries in one retrieval",
            self.limits.max_batch,
            queries.len() / dim,
        )?;
        retrieve::retrieve(&self.index, &self.table, queries, dim, config)
    }

    /// Phase A and the pools, without Phase B: what a shard of a sharded bank answers.
    pub(crate) fn recall(
        &self,
        queries: &[f32],
        config: &RetrievalConfig,
    ) -> Result<Vec<crate::shard::Recall>> {
        let dim = self.config.dim;
        Limits::check(
            "queries in one retrieval",
            self.limits.max_batch,
            queries.len() / dim,
        )?;
        let Some(recalled) = retrieve::phase_a(&self.index, queries, dim, config)? else {
            return Ok(vec![
                crate::shard::Recall {
                    keys: Vec::new(),
                    members: Vec::new()
                };
                queries.len() / dim
            ]);
        };
        Ok(recalled
            .into_iter()
            .map(|keys| {
                let members = keys
                    .iter()
                    .flat_map(|m| {
                        self.table.members(m.key).iter().map(move |&slot| {
                            let memory = self.table.at(slot);
                            crate::shard::Member {
                                key: m.key,
                                id: memory.id,
                                q: memory.q,
                                visits: memory.visits,
                            }
                        })
                    })
                    .collect();
                crate::shard::Recall { keys, members }
            })
            .collect())
    }

    /// Each row's best `k` keys at or above `delta`.
    pub(crate) fn search_keys(
        &self,
        rows: &[f32],
        k: usize,
        delta: f32,
    ) -> Result<Vec<Vec<KeyMatch>>> {
        let dim = self.config.dim;
        if !rows.len().is_multiple_of(dim) {
            return Err(Error::DimensionMismatch {
                what: "rows (length not a multiple of the dimension)",
                expected: dim,
                got: rows.len(),
            });
        }
        if !delta.is_finite() {
            return Err(Error::value(
                "delta",
                format!("{delta} is not a finite number"),
            ));
        }
        Limits::check(
            "rows in one search",
            self.limits.max_batch,
            rows.len() / dim,
        )?;
        let unit = normalise_rows("row", rows, dim)?;
        if self.index.num_keys() == 0 || k == 0 {
            return Ok(vec![Vec::new(); rows.len() / dim]);
        }
        self.index
            .search(&unit, k.min(self.index.num_keys()), delta)
    }

    // ---- adds ----

    /// Validates a batch (every embedding given) and makes every decision an add takes,
    /// without changing anything.
    pub(crate) fn plan_add(&self, batch: Vec<NewMemory>, created_ms: u64) -> Result<AddPlan> {
        let dim = self.config.dim;
        let unit = self.check_batch(&batch)?;
        let (ids, next_id) = self.assign_ids(&batch)?;
        let placement = self.assign_keys(&unit)?;
        let q_init = self.learning.q_init;
        let q_init_failure = self.learning.q_init_failure.unwrap_or(q_init);
        let memories = batch
            .into_iter()
            .enumerate()
            .map(|(i, m)| PlannedMemory {
                id: ids[i],
                key: match placement[i] {
                    Placement::Existing(key) => KeyChoice::Existing(key),
                    Placement::New(_) => KeyChoice::New(unit[i * dim..(i + 1) * dim].to_vec()),
                },
                intent: m.intent,
                experience: m.experience,
                success: m.success,
                q: m.q
                    .unwrap_or(if m.success { q_init } else { q_init_failure }),
                metadata: m.metadata,
            })
            .collect();
        Ok(AddPlan {
            created_ms,
            next_id: Some(next_id),
            memories,
        })
    }

    /// Plans an add whose ids and keys a sharded bank's coordinator chose ([`crate::shard`]):
    /// every memory has an id and an embedding, and is filed under an existing key of this store
    /// (or one created earlier in the batch) or under a new key with the id given (above every
    /// key id used, increasing through the batch). Nothing is decided here but `created_ms`.
    pub(crate) fn plan_placed_add(
        &self,
        batch: Vec<(NewMemory, Placement)>,
        created_ms: u64,
    ) -> Result<AddPlan> {
        let dim = self.config.dim;
        let (batch, placement): (Vec<NewMemory>, Vec<Placement>) = batch.into_iter().unzip();
        let unit = self.check_batch(&batch)?;
        let mut taken = HashSet::with_capacity(batch.len());
        let mut created = HashSet::new();
        let mut next_key = self.next_key_id;
        let q_init = self.learning.q_init;
        let q_init_failure = self.learning.q_init_failure.unwrap_or(q_init);
        let mut memories = Vec::with_capacity(batch.len());
        for (i, (m, place)) in batch.into_iter().zip(placement).enumerate() {
            let id = m.id.ok_or_else(|| {
                Error::value(
                    format!("memory at index {i} of a placed add: id"),
                    "a placed memory needs the id its coordinator chose",
                )
            })?;
            if self.table.contains(id) || !taken.insert(id) {
                return Err(Error::DuplicateId(id));
            }
            let key = match place {
                Placement::Existing(key) => {
                    if !self.index.contains(key) && !created.contains(&key) {
                        return Err(Error::value(
                            format!("memory {id} of a placed add: key"),
                            format!("{key} is not a key of this bank"),
                        ));
                    }
                    KeyChoice::Existing(key)
                }
                Placement::New(key) => {
                    if key.0 < next_key {
                        return Err(Error::value(
                            format!("memory {id} of a placed add: key"),
                            format!("{key} is not above every key id this bank has used (next {next_key})"),
                        ));
                    }
                    next_key = key.0.saturating_add(1);
                    created.insert(key);
                    KeyChoice::NewAt(key, unit[i * dim..(i + 1) * dim].to_vec())
                }
            };
            memories.push(PlannedMemory {
                id,
                key,
                intent: m.intent,
                experience: m.experience,
                success: m.success,
                q: m.q
                    .unwrap_or(if m.success { q_init } else { q_init_failure }),
                metadata: m.metadata,
            });
        }
        let next_id = memories
            .iter()
            .filter(|m| m.id != u64::MAX)
            .fold(self.next_id, |acc, m| acc.max(m.id + 1));
        Ok(AddPlan {
            created_ms,
            next_id: Some(next_id),
            memories,
        })
    }

    /// Checks a batch to add (size, embeddings given and of the bank's dimension, finite initial
    /// Q, text sizes) and returns its intent embeddings unit-normalised.
    fn check_batch(&self, batch: &[NewMemory]) -> Result<Vec<f32>> {
        let dim = self.config.dim;
        self.check_add_size(batch.len())?;
        let mut flat = Vec::with_capacity(batch.len() * dim);
        for (index, m) in batch.iter().enumerate() {
            let embedding = m.embedding.as_ref().ok_or_else(|| Error::NoEmbedder {
                operation: format!("embedding the intent of the memory at index {index}"),
            })?;
            if embedding.len() != dim {
                return Err(Error::DimensionMismatch {
                    what: "intent embedding",
                    expected: dim,
                    got: embedding.len(),
                });
            }
            if let Some(q) = m.q {
                if !q.is_finite() {
                    return Err(Error::value(
                        format!("memory at index {index} of the batch: q"),
                        format!("initial Q {q} is not a finite number"),
                    ));
                }
            }
            let metadata_bytes = m.metadata.as_ref().map_or(0, |v| v.to_string().len());
            self.check_texts(index, &m.intent, &m.experience, metadata_bytes)?;
            flat.extend_from_slice(embedding);
        }
        normalise_rows("intent embedding", &flat, dim)
    }

    /// The id of every memory of a batch (its own, or the next free one) and where the next
    /// search starts. Automatic ids count up from `next_id`, skipping taken ones, and wrap at
    /// `u64::MAX` to the lowest free id. After the batch the search starts past every id it
    /// added, `u64::MAX` excepted (so one such id cannot end automatic ids), or right after the
    /// last automatic id once the search has wrapped.
    fn assign_ids(&self, batch: &[NewMemory]) -> Result<(Vec<u64>, u64)> {
        let explicit: HashSet<u64> = batch.iter().filter_map(|m| m.id).collect();
        let mut cursor = self.next_id;
        let mut wrapped = false;
        let mut ids = Vec::with_capacity(batch.len());
        let mut taken = HashSet::with_capacity(batch.len());
        for m in batch {
            let id = match m.id {
                Some(id) => id,
                None => {
                    let mut tries: u64 = 0;
                    while explicit.contains(&cursor)
                        || taken.contains(&cursor)
                        || self.table.contains(cursor)
                    {
                        if cursor == u64::MAX {
                            wrapped = true;
                        }
                        cursor = cursor.wrapping_add(1);
                        tries += 1;
                        // More tries than ids in use means every id is in use.
                        if tries > (self.table.len() + batch.len()) as u64 {
                            return Err(Error::IdsExhausted);
                        }
                    }
                    let id = cursor;
                    if cursor == u64::MAX {
                        wrapped = true;
                    }
                    cursor = cursor.wrapping_add(1);
                    id
                }
            };
            if self.table.contains(id) || !taken.insert(id) {
                return Err(Error::DuplicateId(id));
            }
            ids.push(id);
        }
        let next_id = if wrapped {
            cursor
        } else {
            ids.iter()
                .filter(|&&id| id != u64::MAX)
                .fold(self.next_id, |acc, &id| acc.max(id + 1))
        };
        Ok((ids, next_id))
    }

    fn check_add_size(&self, adding: usize) -> Result<()> {
        Limits::check("memories in one add", self.limits.max_batch, adding)?;
        Limits::check(
            "memories in the bank",
            self.limits.max_memories,
            self.table.len().saturating_add(adding),
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
    fn assign_keys(&self, unit: &[f32]) -> Result<Vec<Placement>> {
        let dim = self.config.dim;
        let n = unit.len() / dim;
        if !self.config.shares_intents() {
            return Ok((0..n as u64)
                .map(|i| Placement::New(KeyId(self.next_key_id + i)))
                .collect());
        }
        // Best existing key of every row, with one search of the index.
        let best_existing: Vec<Option<KeyMatch>> = self
            .index
            .search(unit, 1, self.config.dedup_sim)?
            .into_iter()
            .map(|best| best.first().copied())
            .collect();
        Ok(place_rows(
            unit,
            dim,
            &best_existing,
            self.config.dedup_sim,
            self.next_key_id,
        ))
    }

    /// Applies an add plan, all or nothing, and returns the new ids in order. It checks the plan
    /// again (ids free and distinct, keys that exist, unit vectors of the bank's dimension, the
    /// limits), because a plan may come from a log file.
    pub(crate) fn apply_add(&mut self, plan: &AddPlan) -> Result<Vec<u64>> {
        self.check_usable()?;
        let dim = self.config.dim;
        let batch = &plan.memories;
        self.check_add_size(batch.len())?;
        // 1. Validate and resolve every key, touching nothing.
        let mut batch_key: HashMap<u64, KeyId> = HashMap::with_capacity(batch.len());
        let mut new_ids = Vec::new();
        let mut new_rows = Vec::new();
        let mut keys = Vec::with_capacity(batch.len());
        let mut next_key = self.next_key_id;
        for (i, m) in batch.iter().enumerate() {
            if self.table.contains(m.id) || batch_key.contains_key(&m.id) {
                return Err(Error::DuplicateId(m.id));
            }
            if !m.q.is_finite() {
                return Err(Error::value(
                    format!("memory at index {i} of the batch: q"),
                    format!("initial Q {} is not a finite number", m.q),
                ));
            }
            let metadata_bytes = m.metadata.as_ref().map_or(0, |v| v.to_string().len());
            self.check_texts(i, &m.intent, &m.experience, metadata_bytes)?;
            let key = match &m.key {
                KeyChoice::New(unit) | KeyChoice::NewAt(_, unit) => {
                    if unit.len() != dim {
                        return Err(Error::DimensionMismatch {
                            what: "intent key",
                            expected: dim,
                            got: unit.len(),
                        });
                    }
                    if !is_unit(unit) {
                        return Err(Error::InvalidEmbedding {
                            what: "intent key",
                            index: i,
                            problem: "not a unit vector".into(),
                        });
                    }
                    if let KeyChoice::NewAt(at, _) = &m.key {
                        // Key rows stay in id order: a named id is above every id used.
                        if at.0 < next_key {
                            return Err(Error::value(
                                format!("memory {} of the add: key", m.id),
                                format!(
                                    "{at} is not above every key id this bank has used (next {next_key})"
                                ),
                            ));
                        }
                        next_key = at.0;
                    }
                    let key = KeyId(next_key);
                    next_key = next_key
                        .checked_add(1)
                        .ok_or_else(|| Error::Internal("key ids exhausted".into()))?;
                    new_ids.push(key);
                    new_rows.extend_from_slice(unit);
                    key
                }
                KeyChoice::Existing(key) => {
                    if !self.index.contains(*key) && !new_ids.contains(key) {
                        return Err(Error::Internal(format!(
                            "memory {} is filed under {key}, which does not exist",
                            m.id
                        )));
                    }
                    *key
                }
                KeyChoice::SameAsMemory(other) => match batch_key.get(other) {
                    Some(&key) => key,
                    None => self.table.key_of(*other).ok_or(Error::NotFound(*other))?,
                },
            };
            batch_key.insert(m.id, key);
            keys.push(key);
        }
        let next_id = plan.next_id.unwrap_or_else(|| {
            batch
                .iter()
                .fold(self.next_id, |acc, m| acc.max(m.id.saturating_add(1)))
        });

        // 2. The device write (it can fail, and then changes nothing), then the host tables.
        self.index.push(&new_ids, new_rows)?;
        for (m, key) in batch.iter().zip(keys) {
            self.table.insert(
                Memory {
                    id: m.id,
                    intent: m.intent.clone(),
                    experience: m.experience.clone(),
                    q: m.q,
                    visits: 0,
                    last_reward: None,
                    success: m.success,
                    created_ms: plan.created_ms,
                    updated_ms: plan.created_ms,
                    metadata: m.metadata.clone(),
                    baseline: None,
                },
                key,
            );
        }
        self.next_id = next_id;
        self.next_key_id = next_key;
        Ok(batch.iter().map(|m| m.id).collect())
    }

    // ---- removal ----

    /// Removes a memory; its key goes too when no other memory shares it. Returns the memory.
    pub(crate) fn remove(&mut self, id: u64) -> Result<Memory> {
        self.check_usable()?;
        let key = self.table.key_of(id).ok_or(Error::NotFound(id))?;
        let key_goes = self.table.members(key).len() == 1;
        if key_goes {
            if let Err(e) = self.index.remove(key) {
                self.broken = Some(format!("removing {key} failed part-way: {e}"));
                return Err(e);
            }
        }
        let (memory, _, _) = self
            .table
            .remove(id)
            .ok_or_else(|| Error::Internal(format!("memory {id} vanished")))?;
        Ok(memory)
    }

    // ---- outcomes ----

    /// Validates a batch of outcomes and computes the final state of every memory it touches,
    /// changing nothing.
    pub(crate) fn plan_outcomes(
        &self,
        outcomes: &[Outcome],
        config: &LearningConfig,
        applied_ms: u64,
    ) -> Result<(OutcomePlan, OutcomeReport)> {
        Limits::check(
            "outcomes in one batch",
            self.limits.max_batch,
            outcomes.len(),
        )?;
        let ids: usize = outcomes.iter().map(|o| o.memory_ids.len()).sum();
        Limits::check(
            "memory ids in one outcome batch",
            self.limits.max_batch,
            ids,
        )?;
        let planned = learn::plan(
            outcomes,
            config,
            |id| self.table.get(id).map(|m| (m.q, m.visits)),
            &self.table,
        )?;
        Ok((
            OutcomePlan {
                applied_ms,
                updates: planned.updates,
                baselines: planned.baselines,
            },
            planned.report,
        ))
    }

    /// Applies an outcome plan: every touched memory takes its planned state. All or nothing:
    /// an unknown id or a non-finite value rejects the whole plan.
    pub(crate) fn apply_outcomes(&mut self, plan: &OutcomePlan) -> Result<()> {
        self.check_usable()?;
        let mut slots = Vec::with_capacity(plan.updates.len());
        for (i, u) in plan.updates.iter().enumerate() {
            let slot = self.table.slot(u.id).ok_or(Error::UnknownMemory {
                outcome: i,
                id: u.id,
            })?;
            if !u.q.is_finite() || !u.last_reward.is_finite() {
                return Err(Error::Internal(format!(
                    "memory {}: planned Q {} or reward {} is not finite",
                    u.id, u.q, u.last_reward
                )));
            }
            slots.push(slot);
        }
        let mut baseline_slots = Vec::with_capacity(plan.baselines.len());
        for (i, &(id, b)) in plan.baselines.iter().enumerate() {
            let slot = self
                .table
                .slot(id)
                .ok_or(Error::UnknownMemory { outcome: i, id })?;
            if !b.is_finite() {
                return Err(Error::Internal(format!(
                    "memory {id}: planned baseline {b} is not finite"
                )));
            }
            baseline_slots.push(slot);
        }
        for (u, slot) in plan.updates.iter().zip(slots) {
            let m = self.table.at_mut(slot);
            m.q = u.q;
            m.visits = u.visits;
            m.last_reward = Some(u.last_reward);
            m.updated_ms = plan.applied_ms;
        }
        for (&(_, b), slot) in plan.baselines.iter().zip(baseline_slots) {
            self.table.at_mut(slot).baseline = Some(b);
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        match &self.broken {
            Some(problem) => Err(Error::Poisoned(problem.clone())),
            None => Ok(()),
        }
    }

    /// Checks every invariant of the store and its table (tests and debug tooling).
    pub(crate) fn debug_check(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Internal(format!("invariant violated: {msg}")));
        if let Err(msg) = self.table.check() {
            return fail(msg);
        }
        let keys = self.index.ids();
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return fail("key ids are not increasing".into());
        }
        if keys.last().is_some_and(|k| k.0 >= self.next_key_id) {
            return fail("a key id is not below next_key_id".into());
        }
        for &key in keys {
            if self.table.members(key).is_empty() {
                return fail(format!("{key} has no memory"));
            }
        }
        let filed: HashSet<KeyId> = self.table.rows().map(|(_, key)| key).collect();
        if filed.len() != keys.len() || !filed.iter().all(|k| self.index.contains(*k)) {
            return fail("memories are filed under keys the index does not hold".into());
        }
        Ok(())
    }
}

/// Where a new memory is filed: under a key that exists (or that an earlier memory of the same
/// add creates), or under a new key with this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// Under this existing key.
    Existing(KeyId),
    /// Under a new key with this id.
    New(KeyId),
}

/// Intent sharing for the unit rows of one add (`dim` wide), given each row's best existing key
/// at or above `threshold` (ties already broken by the lower key id): a row joins that key, or a
/// key an earlier row of the batch created if that one is strictly more similar, or creates a
/// key, numbered from `next_key_id` in order. The one rule a bank and a sharded bank's
/// coordinator both apply.
pub(crate) fn place_rows(
    unit: &[f32],
    dim: usize,
    best_existing: &[Option<KeyMatch>],
    threshold: f32,
    next_key_id: u64,
) -> Vec<Placement> {
    // Keys created within the batch: a plain scan (batches are small next to the bank).
    let mut placement = Vec::with_capacity(best_existing.len());
    let mut created: Vec<(usize, KeyId)> = Vec::new();
    for (i, best) in best_existing.iter().enumerate() {
        let row_i = &unit[i * dim..(i + 1) * dim];
        let mut choice: Option<(f32, KeyId)> = best.map(|m| (m.sim, m.key));
        for &(j, key) in &created {
            let row_j = &unit[j * dim..(j + 1) * dim];
            let s: f32 = row_i.iter().zip(row_j).map(|(a, b)| a * b).sum();
            // Batch keys have higher ids than existing ones, so only a strictly higher
            // similarity displaces the current choice (ties go to the lower key id).
            if s >= threshold && choice.is_none_or(|(cs, _)| s > cs) {
                choice = Some((s, key));
            }
        }
        match choice {
            Some((_, key)) => placement.push(Placement::Existing(key)),
            None => {
                let key = KeyId(next_key_id + created.len() as u64);
                created.push((i, key));
                placement.push(Placement::New(key));
            }
        }
    }
    placement
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dedup_sim: f32) -> Store {
        let config = BankConfig {
            dedup_sim,
            ..BankConfig::new(2, "t")
        };
        Store::new(config, 1, &Device::Cpu).unwrap()
    }

    fn add(store: &mut Store, memories: Vec<NewMemory>) -> Result<Vec<u64>> {
        let plan = store.plan_add(memories, 5)?;
        store.apply_add(&plan)
    }

    #[test]
    fn shared_keys_are_named_by_id_and_survive_removals() {
        let mut s = store(0.9);
        let v = |x: f32, y: f32| NewMemory::default().embedding(vec![x, y]);
        let ids = add(
            &mut s,
            vec![v(1.0, 0.0), v(0.0, 1.0), v(1.0, 0.01), v(0.01, 1.0)],
        )
        .unwrap();
        assert_eq!(ids, vec![0, 1, 2, 3]);
        assert_eq!(s.num_intents(), 2);
        assert_eq!(s.intent_members(2).unwrap(), vec![0, 2]);
        s.remove(0).unwrap();
        assert_eq!(s.intent_members(2).unwrap(), vec![2]);
        s.remove(2).unwrap();
        assert_eq!(s.num_intents(), 1);
        let again = add(&mut s, vec![v(1.0, 0.0)]).unwrap();
        assert_eq!(again, vec![4]);
        assert_eq!(s.index().ids(), &[KeyId(1), KeyId(2)]);
        s.debug_check().unwrap();
    }

    #[test]
    fn automatic_ids_skip_taken_ones_and_wrap_past_the_largest() {
        let mut s = store(1.0);
        let v = || NewMemory::default().embedding(vec![1.0, 0.0]);
        add(&mut s, vec![v().id(u64::MAX)]).unwrap();
        assert_eq!(add(&mut s, vec![v(), v()]).unwrap(), vec![0, 1]);
        add(&mut s, vec![v().id(u64::MAX - 1)]).unwrap();
        // next_id is now u64::MAX, which is taken: the search wraps to the lowest free id.
        assert_eq!(add(&mut s, vec![v()]).unwrap(), vec![2]);
        s.debug_check().unwrap();
    }

    #[test]
    fn a_plan_that_does_not_fit_changes_nothing() {
        let mut s = store(0.9);
        add(&mut s, vec![NewMemory::default().embedding(vec![1.0, 0.0])]).unwrap();
        let plan = AddPlan {
            created_ms: 0,
            next_id: None,
            memories: vec![PlannedMemory {
                id: 9,
                key: KeyChoice::Existing(KeyId(7)),
                intent: String::new(),
                experience: String::new(),
                success: false,
                q: 0.0,
                metadata: None,
            }],
        };
        assert!(s.apply_add(&plan).is_err());
        assert_eq!(s.len(), 1);
        s.debug_check().unwrap();
    }
}
