//! `memrl.Bank`: the front door, `memrl::Bank`, in Python's conventions.
//!
//! The wrapper owns no logic. Every call that computes, locks the bank or touches a file
//! releases the GIL first (`py.detach`), and none takes a bank lock while holding it: a bulk
//! load holds the bank's write lock while it pulls batches from a Python iterator, so a thread
//! that waited for the bank with the GIL held would deadlock it. Single-query calls (one str or
//! one vector to retrieve, one memory to add, one text to embed) go through the library's
//! `Batcher`, so many Python threads calling at once are served by batched calls; batches go to
//! the bank directly.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use memrl::{
    Bank, BankConfig, BatchConfig, Batcher, KeyDType, NewMemory, OpenOptions, Outcome, Queries,
    Query, RetrievalId,
};

use crate::convert::{float_rows, py_to_json, to_array, type_name, Rows};
use crate::embedder::PyEmbedder;
use crate::errors::{invalid, to_py, IntoPy};
use crate::options::{self, float, uint, LearningPatch, RetrievalPatch};
use crate::records::{
    recovery_dict, PyCalibration, PyMemory, PyOutcomeReport, PyRetrieval, PyStats,
};

/// An open bank and the queue in front of it (started on the first single-query call).
struct Open {
    // Dropped first: its thread holds a reference to the bank.
    batcher: Mutex<Option<Arc<Batcher>>>,
    bank: Arc<Bank>,
    /// Fixed for the bank's life: the binding checks shapes against it without a lock.
    config: BankConfig,
    batching: BatchConfig,
}

impl Open {
    fn new(bank: Bank, batching: BatchConfig) -> Self {
        let config = bank.config();
        Self {
            batcher: Mutex::new(None),
            bank: Arc::new(bank),
            config,
            batching,
        }
    }

    fn batcher(&self) -> memrl::Result<Arc<Batcher>> {
        let mut slot = self
            .batcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(batcher) = slot.as_ref() {
            return Ok(batcher.clone());
        }
        let batcher = Arc::new(Batcher::new(self.bank.clone(), self.batching.clone())?);
        *slot = Some(batcher.clone());
        Ok(batcher)
    }
}

/// One bank of memories (intent, experience, utility Q), durable or in memory.
///
/// Open one from a path (`Bank.open`: created if missing; every write goes to its write-ahead
/// log before the call returns) or in memory (`Bank.in_memory`). Add memories, `retrieve` (two
/// phases: similarity recall, then a ranking that mixes similarity with the learned utility Q),
/// report each episode's reward with `feedback`, and Q moves towards the rewards: memories that
/// help rise, those that mislead sink.
///
/// A bank is safe to share between threads; the GIL is released while it works. Used as a
/// context manager it checkpoints (writes its snapshot) and closes on exit.
#[pyclass(frozen, module = "memrl", name = "Bank")]
pub(crate) struct PyBank {
    state: RwLock<Option<Arc<Open>>>,
}

/// Query or intent texts: one `str` (`true`) or a list or tuple of them.
pub(crate) fn texts(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<(Vec<String>, bool)> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok((vec![s.to_str()?.to_owned()], true));
    }
    let items: Vec<Bound<'_, PyAny>> =
        if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
            obj.extract()?
        } else {
            return Err(PyTypeError::new_err(format!(
                "{what}: expected a str or a list of str, got {}",
                type_name(obj)
            )));
        };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.cast::<PyString>() {
            Ok(s) => out.push(s.to_str()?.to_owned()),
            Err(_) => {
                return Err(PyTypeError::new_err(format!(
                    "{what}[{i}]: expected a str, got {}",
                    type_name(item)
                )))
            }
        }
    }
    Ok((out, false))
}

/// What `retrieve` was given.
pub(crate) enum QueryInput<'py> {
    Text(String),
    Texts(Vec<String>),
    Rows(Rows<'py>),
}

pub(crate) fn query_input<'py>(obj: &Bound<'py, PyAny>, dim: usize) -> PyResult<QueryInput<'py>> {
    if obj.is_instance_of::<PyString>() {
        let (mut t, _) = texts("queries", obj)?;
        return Ok(QueryInput::Text(t.remove(0)));
    }
    let is_seq = obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>();
    if is_seq {
        let len = obj.len()?;
        if len == 0 {
            return Ok(QueryInput::Texts(Vec::new()));
        }
        if obj.get_item(0)?.is_instance_of::<PyString>() {
            return Ok(QueryInput::Texts(texts("queries", obj)?.0));
        }
    }
    Ok(QueryInput::Rows(float_rows(obj, "query", dim)?))
}

/// Per-memory values of `add`: one for all, or one per memory.
fn per_memory<'py>(
    field: &str,
    value: Option<&Bound<'py, PyAny>>,
    n: usize,
) -> PyResult<Option<Vec<Bound<'py, PyAny>>>> {
    let Some(value) = value else { return Ok(None) };
    if value.is_none() {
        return Ok(None);
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let items: Vec<Bound<'py, PyAny>> = value.extract()?;
        if items.len() != n {
            return Err(invalid(
                field,
                format!("{} values given for {n} memories", items.len()),
            ));
        }
        return Ok(Some(items));
    }
    Ok(Some(vec![value.clone(); n]))
}

fn boolean(field: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    match value.cast::<pyo3::types::PyBool>() {
        Ok(b) => Ok(b.is_true()),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{field}: expected a bool, got {}",
            type_name(value)
        ))),
    }
}

/// The memories `add` (or one batch of `bulk`) describes, validated for type and shape; the
/// library checks the values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn new_memories(
    dim: usize,
    intents: &Bound<'_, PyAny>,
    experiences: &Bound<'_, PyAny>,
    embeddings: Option<&Bound<'_, PyAny>>,
    success: Option<&Bound<'_, PyAny>>,
    q: Option<&Bound<'_, PyAny>>,
    ids: Option<&Bound<'_, PyAny>>,
    metadata: Option<&Bound<'_, PyAny>>,
) -> PyResult<(Vec<NewMemory>, bool)> {
    let (intents, one) = texts("intents", intents)?;
    let (experiences, one_experience) = texts("experiences", experiences)?;
    if one != one_experience || intents.len() != experiences.len() {
        return Err(invalid(
            "experiences",
            format!(
                "{} experiences given for {} intents (give one per intent)",
                experiences.len(),
                intents.len()
            ),
        ));
    }
    let n = intents.len();
    let mut memories: Vec<NewMemory> = intents
        .into_iter()
        .zip(experiences)
        .map(|(i, e)| NewMemory::new(i, e))
        .collect();
    if let Some(embeddings) = embeddings.filter(|e| !e.is_none()) {
        let rows = float_rows(embeddings, "embeddings", dim)?;
        if rows.one != one || rows.len() != n {
            return Err(invalid(
                "embeddings",
                format!("{} vectors given for {n} memories", rows.len()),
            ));
        }
        let flat = rows.as_slice()?;
        for (memory, row) in memories.iter_mut().zip(flat.chunks(dim.max(1))) {
            memory.embedding = Some(row.to_vec());
        }
    }
    if let Some(values) = per_memory("success", success, n)? {
        for (i, (memory, v)) in memories.iter_mut().zip(values).enumerate() {
            memory.success = boolean(&format!("success[{i}]"), &v)?;
        }
    }
    if let Some(values) = per_memory("q", q, n)? {
        for (i, (memory, v)) in memories.iter_mut().zip(values).enumerate() {
            if !v.is_none() {
                memory.q = Some(float(&format!("q[{i}]"), &v)? as f32);
            }
        }
    }
    if let Some(ids) = ids.filter(|i| !i.is_none()) {
        let ids: Vec<Bound<'_, PyAny>> = if one {
            vec![ids.clone()]
        } else {
            ids.extract()
                .map_err(|_| PyTypeError::new_err("ids: expected a list of int"))?
        };
        if ids.len() != n {
            return Err(invalid(
                "ids",
                format!("{} ids given for {n} memories", ids.len()),
            ));
        }
        for (memory, id) in memories.iter_mut().zip(ids) {
            if !id.is_none() {
                memory.id = Some(uint("ids", &id)?);
            }
        }
    }
    if let Some(metadata) = metadata.filter(|m| !m.is_none()) {
        let values: Vec<Bound<'_, PyAny>> = if one {
            vec![metadata.clone()]
        } else {
            metadata
                .extract()
                .map_err(|_| PyTypeError::new_err("metadata: expected a list of dict (or None)"))?
        };
        if values.len() != n {
            return Err(invalid(
                "metadata",
                format!("{} values given for {n} memories", values.len()),
            ));
        }
        for (i, (memory, value)) in memories.iter_mut().zip(values).enumerate() {
            if value.is_none() {
                continue;
            }
            if !value.is_instance_of::<PyDict>() {
                return Err(PyTypeError::new_err(format!(
                    "metadata[{i}]: expected a dict, got {}",
                    type_name(&value)
                )));
            }
            memory.metadata = Some(py_to_json(&value, &format!("metadata[{i}]"))?);
        }
    }
    Ok((memories, one))
}

/// `(memory_ids, reward)` pairs of `apply_outcomes`.
pub(crate) fn outcomes(value: &Bound<'_, PyAny>) -> PyResult<Vec<Outcome>> {
    let items: Vec<Bound<'_, PyAny>> = value
        .extract()
        .map_err(|_| PyTypeError::new_err("outcomes: expected a list of (memory_ids, reward)"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let (ids, reward): (Vec<Bound<'_, PyAny>>, Bound<'_, PyAny>) =
                item.extract().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "outcomes[{i}]: expected a (memory_ids, reward) pair"
                    ))
                })?;
            Ok(Outcome {
                memory_ids: ids
                    .iter()
                    .map(|id| uint("memory_ids", id))
                    .collect::<PyResult<_>>()?,
                reward: float(&format!("outcomes[{i}].reward"), &reward)? as f32,
            })
        })
        .collect()
}

/// `memory_ids=` of `feedback`: a list of ids.
pub(crate) fn memory_id_list(value: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    let ids: Vec<Bound<'_, PyAny>> = value
        .extract()
        .map_err(|_| PyTypeError::new_err("memory_ids: expected a list of int"))?;
    ids.iter().map(|id| uint("memory_ids", id)).collect()
}

/// `(retrieval, reward)` pairs of `feedback_many`.
pub(crate) fn retrieval_rewards(value: &Bound<'_, PyAny>) -> PyResult<Vec<(RetrievalId, f32)>> {
    let items: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)> = value.extract().map_err(|_| {
        PyTypeError::new_err("rewards: expected a list of (retrieval, reward) pairs")
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, (r, reward))| {
            Ok((
                retrieval_id(r)?,
                float(&format!("rewards[{i}]"), reward)? as f32,
            ))
        })
        .collect()
}

pub(crate) fn retrieval_id(value: &Bound<'_, PyAny>) -> PyResult<RetrievalId> {
    if let Ok(r) = value.cast::<PyRetrieval>() {
        return Ok(r.get().0.id);
    }
    Ok(RetrievalId(uint("retrieval", value)?))
}

fn dtype(value: Option<&str>) -> PyResult<Option<KeyDType>> {
    value.map(|d| d.parse::<KeyDType>()).transpose().py()
}

impl PyBank {
    fn wrap(bank: Bank, batching: BatchConfig) -> Self {
        Self {
            state: RwLock::new(Some(Arc::new(Open::new(bank, batching)))),
        }
    }

    fn open_state(&self) -> PyResult<Arc<Open>> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or_else(|| invalid("bank", "the bank is closed"))
    }

    fn retrievals(list: Vec<memrl::Retrieval>) -> Vec<PyRetrieval> {
        list.into_iter().map(PyRetrieval).collect()
    }
}

/// The options `open` and `in_memory` share.
#[allow(clippy::too_many_arguments)]
fn open_options(
    model: Option<&str>,
    precision: Option<&str>,
    embedder: Option<&Bound<'_, PyEmbedder>>,
    dim: Option<&Bound<'_, PyAny>>,
    model_id: Option<&str>,
    dtype_name: Option<&str>,
    dedup_sim: Option<&Bound<'_, PyAny>>,
    device: Option<&str>,
    retention: Option<&Bound<'_, PyAny>>,
    limits: Option<&Bound<'_, PyAny>>,
) -> PyResult<OpenOptions> {
    let mut options = Bank::options()
        .retention(options::retention(retention)?)
        .limits(options::limits(limits)?);
    if let Some(device) = device {
        options = options.device(memrl::parse_device(device).py()?);
    }
    if let (Some(_), Some(_)) = (model, embedder) {
        return Err(invalid(
            "embedder",
            "give a model name or an embedder, not both",
        ));
    }
    if let Some(model) = model {
        options = options.model(model);
    }
    if let Some(precision) = precision {
        // Without `model` the library refuses it (an embedder given ready-made has its own).
        options = options.precision(precision.parse().py()?);
    }
    if let Some(embedder) = embedder {
        options = options.embedder(embedder.get().0.clone());
    }
    if let Some(dim) = dim {
        options = options.dim(options::count(
            "dim",
            dim,
            1,
            "must be between 1 and 65536",
        )?);
    }
    if let Some(model_id) = model_id {
        options = options.model_id(model_id);
    }
    if let Some(dtype) = dtype(dtype_name)? {
        options = options.dtype(dtype);
    }
    if let Some(dedup_sim) = dedup_sim {
        options = options.dedup_sim(float("dedup_sim", dedup_sim)? as f32);
    }
    Ok(options)
}

#[pymethods]
impl PyBank {
    /// Opens the durable bank at `path` (its snapshot; the log `path + ".wal"` lies beside it),
    /// creating it if it is missing, replaying its log, and locking it for writing.
    ///
    /// - `model`: a registry name (`"all-MiniLM-L6-v2"`) or model directory; the bank then
    ///   embeds texts itself (`precision="int8"` for the int8 encoder). Or `embedder=`: an
    ///   `Embedder` shared with other banks. Without either the bank takes vectors only (a new
    ///   one then needs `dim` and `model_id`).
    /// - `dtype` (`"f32"`, `"f16"`, `"bf16"`) and `dedup_sim` (intent sharing, 1.0 = off) shape
    ///   a new bank; for an existing one they must match what it has.
    /// - `create=False`: a missing bank is a `NotFoundError`; `create_new=True`: an existing one
    ///   is a `ConflictError`; `read_only=True`: no lock, no change, every write an error.
    /// - `sync`: `"every_batch"` (default: an acknowledged write survives a power loss),
    ///   `"never"`, or an interval in seconds. `checkpoint`: `"log_outgrows_snapshot"`
    ///   (default), `"manual"`, or a log size in bytes.
    /// - `retention={"capacity": 100000, "ttl": 3600.0}`: the retrievals remembered for
    ///   `feedback`; `limits={"max_text_bytes", "max_batch", "max_memories"}`;
    ///   `batching={"max_batch", "max_batch_tokens", "capacity"}`: the queue in front of single
    ///   calls; `device`: `"cpu"`, `"cuda:N"`, `"metal"`.
    ///
    /// A bank open for writing elsewhere raises `BankLockedError`; a damaged file
    /// `CorruptError`, and nothing is changed.
    #[staticmethod]
    #[pyo3(signature = (path, *, model=None, precision=None, embedder=None, dim=None, model_id=None, dtype=None,
        dedup_sim=None, create=true, create_new=false, read_only=false, sync=None,
        checkpoint=None, device=None, retention=None, limits=None, batching=None))]
    #[allow(clippy::too_many_arguments)]
    fn open(
        py: Python<'_>,
        path: PathBuf,
        model: Option<&str>,
        precision: Option<&str>,
        embedder: Option<&Bound<'_, PyEmbedder>>,
        dim: Option<&Bound<'_, PyAny>>,
        model_id: Option<&str>,
        dtype: Option<&str>,
        dedup_sim: Option<&Bound<'_, PyAny>>,
        create: bool,
        create_new: bool,
        read_only: bool,
        sync: Option<&Bound<'_, PyAny>>,
        checkpoint: Option<&Bound<'_, PyAny>>,
        device: Option<&str>,
        retention: Option<&Bound<'_, PyAny>>,
        limits: Option<&Bound<'_, PyAny>>,
        batching: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let options = open_options(
            model, precision, embedder, dim, model_id, dtype, dedup_sim, device, retention, limits,
        )?
        .create(create)
        .create_new(create_new)
        .read_only(read_only)
        .sync(options::sync_policy(sync)?)
        .checkpoint(options::checkpoint_policy(checkpoint)?);
        let batching = options::batching(batching)?;
        let bank = py.detach(|| options.open(&path)).py()?;
        Ok(Self::wrap(bank, batching))
    }

    /// A bank in memory only: nothing is written anywhere. Needs `model` or `embedder`, or
    /// `dim` and `model_id` for a vector-only bank; the other options are those of `open`.
    #[staticmethod]
    #[pyo3(signature = (*, model=None, precision=None, embedder=None, dim=None, model_id=None, dtype=None,
        dedup_sim=None, device=None, retention=None, limits=None, batching=None))]
    #[allow(clippy::too_many_arguments)]
    fn in_memory(
        py: Python<'_>,
        model: Option<&str>,
        precision: Option<&str>,
        embedder: Option<&Bound<'_, PyEmbedder>>,
        dim: Option<&Bound<'_, PyAny>>,
        model_id: Option<&str>,
        dtype: Option<&str>,
        dedup_sim: Option<&Bound<'_, PyAny>>,
        device: Option<&str>,
        retention: Option<&Bound<'_, PyAny>>,
        limits: Option<&Bound<'_, PyAny>>,
        batching: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let options = open_options(
            model, precision, embedder, dim, model_id, dtype, dedup_sim, device, retention, limits,
        )?;
        let batching = options::batching(batching)?;
        let bank = py.detach(|| options.in_memory()).py()?;
        Ok(Self::wrap(bank, batching))
    }

    /// The config recorded in the snapshot at `path` (dim, dtype, dedup_sim, model_id), read
    /// from its header alone, without opening the bank.
    #[staticmethod]
    fn peek_config<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
        let config = py.detach(|| Bank::peek_config(&path)).py()?;
        bank_config_dict(py, &config)
    }

    // ---- what the bank is ----

    /// The snapshot's path (canonical), or None for a bank in memory.
    #[getter]
    fn path(&self) -> PyResult<Option<PathBuf>> {
        Ok(self.open_state()?.bank.path().map(PathBuf::from))
    }

    /// Whether writes are logged to disk (opened from a path, not read-only).
    #[getter]
    fn is_durable(&self) -> PyResult<bool> {
        Ok(self.open_state()?.bank.is_durable())
    }

    /// Whether the bank was opened read-only.
    #[getter]
    fn read_only(&self) -> PyResult<bool> {
        Ok(self.open_state()?.bank.is_read_only())
    }

    /// Whether `close()` was called (or the `with` block ended).
    #[getter]
    fn closed(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_none()
    }

    /// The bank's shape: `{"dim", "dtype", "dedup_sim", "model_id"}`.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        bank_config_dict(py, &self.open_state()?.config)
    }

    /// The embedding dimension.
    #[getter]
    fn dim(&self) -> PyResult<usize> {
        Ok(self.open_state()?.config.dim)
    }

    /// The model that made the bank's keys.
    #[getter]
    fn model_id(&self) -> PyResult<String> {
        Ok(self.open_state()?.config.model_id.clone())
    }

    /// The bank's embedder, or None for a vector-only bank.
    #[getter]
    fn embedder(&self) -> PyResult<Option<PyEmbedder>> {
        Ok(self.open_state()?.bank.embedder().cloned().map(PyEmbedder))
    }

    /// What opening found: records replayed, a torn tail dropped, an upgrade (a dict).
    #[getter]
    fn recovery<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        recovery_dict(py, self.open_state()?.bank.recovery())
    }

    /// The stored retrieval config, as the options that set it.
    #[getter]
    fn retrieval_config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let open = self.open_state()?;
        let config = py.detach(|| open.bank.retrieval_config());
        options::retrieval_dict(py, &config)
    }

    /// The stored learning config (alpha, q_init, reward_range, out_of_range, baseline_rate,
    /// q_init_failure).
    #[getter]
    fn learning_config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let open = self.open_state()?;
        let config = py.detach(|| open.bank.learning_config());
        options::learning_dict(py, &config)
    }

    /// Number of intent keys (fewer than memories when intents are shared).
    #[getter]
    fn num_intents(&self, py: Python<'_>) -> PyResult<usize> {
        let open = self.open_state()?;
        Ok(py.detach(|| open.bank.num_intents()))
    }

    /// Where the search for the next automatic memory id starts.
    #[getter]
    fn next_id(&self, py: Python<'_>) -> PyResult<u64> {
        let open = self.open_state()?;
        Ok(py.detach(|| open.bank.next_id()))
    }

    /// Sequence number of the last logged write the bank reflects.
    #[getter]
    fn log_seq(&self, py: Python<'_>) -> PyResult<u64> {
        let open = self.open_state()?;
        Ok(py.detach(|| open.bank.log_seq()))
    }

    /// Bytes in the write-ahead log, or None when the bank has no log.
    #[getter]
    fn log_bytes(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        let open = self.open_state()?;
        Ok(py.detach(|| open.bank.log_bytes()))
    }

    /// Why the last automatic checkpoint failed (the writes are safe in the log), or None.
    #[getter]
    fn last_checkpoint_error(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let open = self.open_state()?;
        Ok(py.detach(|| open.bank.last_checkpoint_error()))
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        let open = self.open_state()?;
        Ok(py.detach(|| open.bank.len()))
    }

    fn __contains__(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(id) = id.extract::<u64>() else {
            return Ok(false);
        };
        let open = self.open_state()?;
        Ok(py.detach(|| open.bank.contains(id)))
    }

    /// The memory with this id; a `NotFoundError` (a `KeyError`) when there is none.
    fn __getitem__(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<PyMemory> {
        let id = uint("id", id)?;
        let open = self.open_state()?;
        py.detach(|| open.bank.get(id).ok_or(memrl::Error::NotFound(id)))
            .py()
            .map(PyMemory)
    }

    /// The memory with this id, or None.
    fn get(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<Option<PyMemory>> {
        let id = uint("id", id)?;
        let open = self.open_state()?;
        Ok(py.detach(|| open.bank.get(id)).map(PyMemory))
    }

    /// Every memory, in id order.
    fn memories(&self, py: Python<'_>) -> PyResult<Vec<PyMemory>> {
        let open = self.open_state()?;
        Ok(py
            .detach(|| open.bank.memories())
            .into_iter()
            .map(PyMemory)
            .collect())
    }

    /// The unit intent key memory `id` is filed under (float32, shape `(dim,)`).
    fn intent_key<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = uint("id", id)?;
        let open = self.open_state()?;
        let key = py.detach(|| open.bank.intent_key(id)).py()?;
        Ok(numpy::PyArray1::from_vec(py, key).into_any())
    }

    /// The ids of the memories filed under the same intent key as `id` (itself included).
    fn intent_members(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
        let id = uint("id", id)?;
        let open = self.open_state()?;
        py.detach(|| open.bank.intent_members(id)).py()
    }

    /// Counts and Q telemetry: quantiles, signs, a `bins`-bin histogram, and the `extremes`
    /// memories of highest and lowest Q.
    #[pyo3(signature = (bins = None, extremes = None))]
    #[pyo3(text_signature = "(self, bins=10, extremes=5)")]
    fn stats(
        &self,
        py: Python<'_>,
        bins: Option<&Bound<'_, PyAny>>,
        extremes: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyStats> {
        let bins = bins.map_or(Ok(10), |b| {
            options::count("bins", b, 1, "must be at least 1")
        })?;
        let extremes =
            extremes.map_or(Ok(5), |e| options::count("extremes", e, 0, "must be >= 0"))?;
        let open = self.open_state()?;
        Ok(PyStats(py.detach(|| open.bank.stats(bins, extremes))))
    }

    /// The paper's calibration over the bank's intent keys: `delta` (20% of intent pairs are
    /// at or above it) and the mean and std for `zsim=(mean, std)`. Above `max_pairs` pairs,
    /// that many are sampled with `seed`. Apply it with `set_retrieval_config(delta=c.delta)`.
    #[pyo3(signature = (max_pairs = None, seed = None))]
    #[pyo3(text_signature = "(self, max_pairs=1000000, seed=0)")]
    fn calibrate(
        &self,
        py: Python<'_>,
        max_pairs: Option<&Bound<'_, PyAny>>,
        seed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyCalibration> {
        let max_pairs = max_pairs.map_or(Ok(memrl::DEFAULT_MAX_PAIRS), |m| {
            options::count("max_pairs", m, 1, "must be at least 1")
        })?;
        let seed = seed.map_or(Ok(0), |s| uint("seed", s))?;
        let open = self.open_state()?;
        py.detach(|| open.bank.calibrate(max_pairs, seed))
            .py()
            .map(PyCalibration)
    }

    // ---- retrieval ----

    /// Two-phase retrieval: Phase A recalls the `k1` intent keys most similar to the query (at
    /// or above `delta`), Phase B ranks their memories by `(1 - lambda_) * zsim + lambda_ * zq`
    /// and keeps `k2`.
    ///
    /// `queries`: one str or one vector (shape `(dim,)`) gives one `Retrieval`; a list of str or
    /// an array of shape `(n, dim)` gives a list. A C-contiguous float32 array is read without a
    /// copy. Options override the stored config for this call: `k1`, `k2`, `delta`, `lambda_`,
    /// `zsim` (`"pool"` or `(mean, std)`), `z_clip`, `clip_zsim` (clip zsim as well as zq; off, as in the spec), `q_min` (None = off), `epsilon`, `seed`, `thompson` (Thompson sampling's scale: rank by Q + thompson * N(0, 1) / sqrt(1 + visits); 0 = off), `ucb` (rank by Q + ucb / sqrt(1 + visits); 0 = off), `sim_margin` (rank only the pool members whose similarity is within this of the most similar one; None = off).
    #[pyo3(signature = (queries, **options))]
    #[pyo3(
        text_signature = "(self, queries, *, k1=None, k2=None, delta=None, lambda_=None, zsim=None, z_clip=None, clip_zsim=None, q_min=None, epsilon=None, seed=None, thompson=None, ucb=None, sim_margin=None)"
    )]
    fn retrieve<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let patch = RetrievalPatch::parse("retrieve", options)?;
        let open = self.open_state()?;
        let input = query_input(queries, open.config.dim)?;
        let config = |bank: &Bank| -> memrl::Result<Option<memrl::RetrievalConfig>> {
            if patch.is_empty() {
                Ok(None)
            } else {
                patch.apply(bank.retrieval_config()).map(Some)
            }
        };
        let one = |query: Query| -> memrl::Result<memrl::Retrieval> {
            let config = config(&open.bank)?;
            open.batcher()?.retrieve(query, config)
        };
        match input {
            QueryInput::Text(text) => {
                let r = py.detach(|| one(Query::Text(text))).py()?;
                Ok(Bound::new(py, PyRetrieval(r))?.into_any())
            }
            QueryInput::Rows(rows) if rows.one => {
                let vector = rows.as_slice()?.to_vec();
                let r = py.detach(|| one(Query::Vector(vector))).py()?;
                Ok(Bound::new(py, PyRetrieval(r))?.into_any())
            }
            QueryInput::Rows(rows) => {
                let flat = rows.as_slice()?;
                let list = py
                    .detach(|| match config(&open.bank)? {
                        Some(c) => open.bank.retrieve_with(Queries::Rows(flat), &c),
                        None => open.bank.retrieve(Queries::Rows(flat)),
                    })
                    .py()?;
                Ok(Self::retrievals(list).into_pyobject(py)?.into_any())
            }
            QueryInput::Texts(texts) => {
                let list = py
                    .detach(|| {
                        if texts.is_empty() {
                            return Ok(Vec::new());
                        }
                        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                        match config(&open.bank)? {
                            Some(c) => open.bank.retrieve_with(Queries::Texts(refs), &c),
                            None => open.bank.retrieve(Queries::Texts(refs)),
                        }
                    })
                    .py()?;
                Ok(Self::retrievals(list).into_pyobject(py)?.into_any())
            }
        }
    }

    /// Replaces the stored retrieval config (one logged write); options not given keep their
    /// stored values. Takes the options of `retrieve`.
    #[pyo3(signature = (**options))]
    #[pyo3(
        text_signature = "(self, *, k1=None, k2=None, delta=None, lambda_=None, zsim=None, z_clip=None, clip_zsim=None, q_min=None, epsilon=None, seed=None, thompson=None, ucb=None, sim_margin=None)"
    )]
    fn set_retrieval_config(
        &self,
        py: Python<'_>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let patch = RetrievalPatch::parse("set_retrieval_config", options)?;
        let open = self.open_state()?;
        py.detach(|| {
            let config = patch.apply(open.bank.retrieval_config())?;
            open.bank.set_retrieval_config(config)
        })
        .py()
    }

    /// Replaces the stored learning config (one logged write): `alpha` (learning rate, in
    /// (0, 1]), `q_init` (Q of new memories), `reward_range` (`(min, max)` or None) and
    /// `out_of_range` (`"reject"`, the default, or `"clamp"`), `baseline_rate` (baseline-corrected
    /// credit: each intent key learns what its episodes earn anyway at this rate, in (0, 1], and
    /// memories are credited with the reward minus it; None = the paper's rule) and
    /// `q_init_failure` (Q of a new memory of a failed episode; None = `q_init`). Options not
    /// given keep their stored values.
    #[pyo3(signature = (**options))]
    #[pyo3(
        text_signature = "(self, *, alpha=None, q_init=None, reward_range=None, out_of_range=None, baseline_rate=None, q_init_failure=None)"
    )]
    fn set_learning_config(
        &self,
        py: Python<'_>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let patch = LearningPatch::parse("set_learning_config", options)?;
        let open = self.open_state()?;
        py.detach(|| {
            let config = patch.apply(open.bank.learning_config())?;
            open.bank.set_learning_config(config)
        })
        .py()
    }

    // ---- writes ----

    /// Adds memories, all or nothing, and returns their ids.
    ///
    /// One memory: `add("intent", "experience", success=True)` returns its id. Several:
    /// `add([intents], [experiences], ...)` returns a list (one logged write). Per memory (one
    /// value for all, or a list): `success`, `q` (initial Q, default the learning config's
    /// `q_init`), `ids` (explicit ids), `metadata` (a dict, stored as JSON). `embeddings`: the
    /// intents' vectors (shape `(n, dim)`, or `(dim,)` for one), else the bank embeds the
    /// intents with its embedder.
    #[pyo3(signature = (intents, experiences, *, embeddings=None, success=None, q=None, ids=None, metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn add<'py>(
        &self,
        py: Python<'py>,
        intents: &Bound<'py, PyAny>,
        experiences: &Bound<'py, PyAny>,
        embeddings: Option<&Bound<'py, PyAny>>,
        success: Option<&Bound<'py, PyAny>>,
        q: Option<&Bound<'py, PyAny>>,
        ids: Option<&Bound<'py, PyAny>>,
        metadata: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let open = self.open_state()?;
        let (memories, one) = new_memories(
            open.config.dim,
            intents,
            experiences,
            embeddings,
            success,
            q,
            ids,
            metadata,
        )?;
        if one {
            let memory = memories
                .into_iter()
                .next()
                .ok_or_else(|| invalid("intents", "empty"))?;
            let id = py
                .detach(|| {
                    if open.bank.is_read_only() {
                        // The queue would report it too; this keeps the bank's own wording.
                        return open.bank.add(memory);
                    }
                    open.batcher()?.add(memory)
                })
                .py()?;
            return Ok(id.into_pyobject(py)?.into_any());
        }
        let ids = py.detach(|| open.bank.add_many(memories)).py()?;
        Ok(ids.into_pyobject(py)?.into_any())
    }

    /// A bulk load: each item of `batches` is a dict of `add`'s arguments (`intents`,
    /// `experiences`, and optionally `embeddings`, `success`, `q`, `ids`, `metadata`), added
    /// without logging each batch; the whole load is written as one new snapshot, all or
    /// nothing. If a batch is invalid or the iterator raises, the bank is as it was, in memory
    /// and on disk. Wrap the iterator in a progress bar to watch it. Returns every id, in order.
    fn bulk(&self, py: Python<'_>, batches: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
        let open = self.open_state()?;
        let iterator = batches.try_iter()?.unbind();
        let dim = open.config.dim;
        let mut raised: Option<PyErr> = None;
        let result = py.detach(|| {
            open.bank.bulk(|load| {
                let mut ids = Vec::new();
                loop {
                    let next = Python::attach(|py| -> PyResult<Option<Vec<NewMemory>>> {
                        let Some(batch) = iterator.bind(py).clone().next() else {
                            return Ok(None);
                        };
                        bulk_batch(dim, &batch?).map(Some)
                    });
                    match next {
                        Ok(Some(memories)) => ids.extend(load.add_many(memories)?),
                        Ok(None) => return Ok(ids),
                        Err(e) => {
                            raised = Some(e);
                            return Err(memrl::Error::InvalidValue {
                                field: "batches".into(),
                                problem: "the iterator raised (the bulk load was undone)".into(),
                            });
                        }
                    }
                }
            })
        });
        match (result, raised) {
            (_, Some(e)) => Err(e),
            (result, None) => result.py(),
        }
    }

    /// Removes memory `id` (its intent key goes too when no other memory shares it) and
    /// returns it; a `NotFoundError` when there is none.
    fn remove(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<PyMemory> {
        let id = uint("id", id)?;
        let open = self.open_state()?;
        py.detach(|| open.bank.remove(id)).py().map(PyMemory)
    }

    /// Reports an episode's reward: every memory it was given moves `Q <- Q + alpha (reward - Q)`.
    ///
    /// Give the retrieval (`r.id` or `r`) whose hits the agent used, or `memory_ids=[...]`.
    /// A retrieval's feedback is applied once; again, or after it expired, it is a
    /// `NotFoundError`. Returns what changed.
    #[pyo3(signature = (retrieval=None, *, reward, memory_ids=None))]
    fn feedback(
        &self,
        py: Python<'_>,
        retrieval: Option<&Bound<'_, PyAny>>,
        reward: &Bound<'_, PyAny>,
        memory_ids: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyOutcomeReport> {
        let reward = float("reward", reward)? as f32;
        let open = self.open_state()?;
        match (retrieval, memory_ids) {
            (Some(retrieval), None) => {
                let id = retrieval_id(retrieval)?;
                py.detach(|| open.bank.feedback(id, reward))
                    .py()
                    .map(PyOutcomeReport)
            }
            (None, Some(ids)) => {
                let memory_ids = memory_id_list(ids)?;
                let outcome = [Outcome { memory_ids, reward }];
                py.detach(|| open.bank.apply_outcomes(&outcome))
                    .py()
                    .map(PyOutcomeReport)
            }
            _ => Err(invalid(
                "feedback",
                "give a retrieval or memory_ids=, exactly one of them",
            )),
        }
    }

    /// `feedback` for several retrievals as one atomic batch: a list of `(retrieval, reward)`.
    fn feedback_many(
        &self,
        py: Python<'_>,
        rewards: &Bound<'_, PyAny>,
    ) -> PyResult<PyOutcomeReport> {
        let rewards = retrieval_rewards(rewards)?;
        let open = self.open_state()?;
        py.detach(|| open.bank.feedback_many(&rewards))
            .py()
            .map(PyOutcomeReport)
    }

    /// A batch of outcomes by memory ids, applied atomically: a list of `(memory_ids, reward)`.
    /// An unknown id or a bad reward rejects the whole batch.
    fn apply_outcomes(
        &self,
        py: Python<'_>,
        outcomes: &Bound<'_, PyAny>,
    ) -> PyResult<PyOutcomeReport> {
        let outcomes = self::outcomes(outcomes)?;
        let open = self.open_state()?;
        py.detach(|| open.bank.apply_outcomes(&outcomes))
            .py()
            .map(PyOutcomeReport)
    }

    /// Unit vectors for `texts` with the bank's embedder: float32 `(len(texts), dim)`, or
    /// `(dim,)` for one str (one str goes through the batching queue).
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (texts, one) = self::texts("texts", texts)?;
        let open = self.open_state()?;
        let dim = open.config.dim;
        if one {
            let text = texts.into_iter().next().unwrap_or_default();
            let v = py
                .detach(|| open.batcher()?.submit_embed(text)?.wait())
                .py()?;
            return Ok(numpy::PyArray1::from_vec(py, v).into_any());
        }
        let flat = py
            .detach(|| {
                if texts.is_empty() {
                    return Ok(Vec::new());
                }
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                open.bank.embed_rows(&refs, "embedding texts")
            })
            .py()?;
        to_array(py, flat, dim)
    }

    /// Writes the snapshot and empties the log: replay starts from here.
    fn checkpoint(&self, py: Python<'_>) -> PyResult<()> {
        let open = self.open_state()?;
        py.detach(|| open.bank.checkpoint()).py()
    }

    /// Writes a copy of the bank as a new durable bank at `path` (a `ConflictError` if one is
    /// there: nothing is overwritten). The copy has an identity of its own.
    fn save_as(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let open = self.open_state()?;
        py.detach(|| open.bank.save_as(&path)).py()
    }

    /// Closes the bank: the queue stops, and the lock on its log is released once calls still
    /// running in other threads have returned. Later calls raise `InvalidInputError`. Closing
    /// does not checkpoint (the log holds every write); `with` does.
    fn close(&self, py: Python<'_>) {
        let open = self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        // Stopping the queue joins its thread: not with the GIL held.
        py.detach(move || drop(open));
    }

    // ---- the shard protocol of memrl.ray's sharded bank (not for direct use) ----

    /// Shard protocol: each query row's best k1 keys at or above delta and their members,
    /// with a complete retrieval config given as options.
    #[pyo3(signature = (rows, **options))]
    fn _recall<'py>(
        &self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<crate::shard::RecallArrays<'py>> {
        let config = crate::shard::full_config(options)?;
        let open = self.open_state()?;
        let rows = float_rows(rows, "query", open.config.dim)?;
        let flat = rows.as_slice()?;
        crate::shard::recall(py, &open.bank, flat, &config)
    }

    /// Shard protocol: each row's best `k` keys at or above `delta`, as `(key id, sim)`.
    fn _search_keys(
        &self,
        py: Python<'_>,
        rows: &Bound<'_, PyAny>,
        k: usize,
        delta: f32,
    ) -> PyResult<Vec<Vec<(u64, f32)>>> {
        let open = self.open_state()?;
        let rows = float_rows(rows, "rows", open.config.dim)?;
        let flat = rows.as_slice()?;
        let found = py.detach(|| open.bank.search_keys(flat, k, delta)).py()?;
        Ok(found
            .into_iter()
            .map(|row| row.into_iter().map(|m| (m.key.0, m.sim)).collect())
            .collect())
    }

    /// Shard protocol: the id of the next new key.
    fn _next_key_id(&self, py: Python<'_>) -> PyResult<u64> {
        let open = self.open_state()?;
        Ok(py.detach(|| open.bank.next_key_id()))
    }

    /// Shard protocol: every memory's id and Q, as two numpy arrays.
    #[allow(clippy::type_complexity)]
    fn _q_by_id<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(
        Bound<'py, numpy::PyArray1<u64>>,
        Bound<'py, numpy::PyArray1<f32>>,
    )> {
        let open = self.open_state()?;
        let pairs = py.detach(|| open.bank.q_by_id());
        Ok(crate::shard::q_by_id(py, pairs))
    }

    /// Shard protocol: memories whose ids and keys the coordinator chose (`keys`: one
    /// `(is new, key id)` per memory); the arguments of `add` otherwise, every id and
    /// embedding given.
    #[pyo3(signature = (intents, experiences, *, embeddings, ids, keys, success=None, q=None, metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn _add_placed(
        &self,
        py: Python<'_>,
        intents: &Bound<'_, PyAny>,
        experiences: &Bound<'_, PyAny>,
        embeddings: &Bound<'_, PyAny>,
        ids: &Bound<'_, PyAny>,
        keys: Vec<crate::shard::PlacementTuple>,
        success: Option<&Bound<'_, PyAny>>,
        q: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<u64>> {
        let open = self.open_state()?;
        let (memories, _) = new_memories(
            open.config.dim,
            intents,
            experiences,
            Some(embeddings),
            success,
            q,
            Some(ids),
            metadata,
        )?;
        py.detach(|| crate::shard::add_placed(&open.bank, memories, keys))
            .py()
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Checkpoints a writable durable bank, then closes it. A failed checkpoint is raised
    /// unless the block is already raising (the writes are safe in the log either way).
    #[pyo3(signature = (exc_type=None, _exc=None, _traceback=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let result = match self.open_state() {
            Ok(open) if open.bank.is_durable() => py.detach(|| open.bank.checkpoint()),
            _ => Ok(()),
        };
        self.close(py);
        match result {
            Err(e) if exc_type.is_none_or(|t| t.is_none()) => Err(to_py(e)),
            _ => Ok(false),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match self.open_state() {
            Ok(open) => {
                let (len, path) = py.detach(|| {
                    (
                        open.bank.len(),
                        open.bank.path().map(|p| p.display().to_string()),
                    )
                });
                format!(
                    "Bank(path={}, memories={len}, dim={}, model_id={:?}{})",
                    path.map(|p| format!("{p:?}"))
                        .unwrap_or_else(|| "None".into()),
                    open.config.dim,
                    open.config.model_id,
                    if open.bank.is_read_only() {
                        ", read_only=True"
                    } else {
                        ""
                    }
                )
            }
            Err(_) => "Bank(closed)".into(),
        }
    }
}

/// One batch of a bulk load: a dict of `add`'s arguments.
fn bulk_batch(dim: usize, batch: &Bound<'_, PyAny>) -> PyResult<Vec<NewMemory>> {
    const KEYS: &[&str] = &[
        "intents",
        "experiences",
        "embeddings",
        "success",
        "q",
        "ids",
        "metadata",
    ];
    let dict = batch.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "batches: each batch must be a dict of add()'s arguments, got {}",
            type_name(batch)
        ))
    })?;
    for key in dict.keys() {
        let name: String = key.extract()?;
        if !KEYS.contains(&name.as_str()) {
            return Err(PyTypeError::new_err(format!(
                "batches: unknown key '{name}'; a batch's keys are {}",
                KEYS.join(", ")
            )));
        }
    }
    let get = |k: &str| dict.get_item(k);
    let required = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        get(k)?.ok_or_else(|| PyTypeError::new_err(format!("batches: a batch needs '{k}'")))
    };
    let (memories, one) = new_memories(
        dim,
        &required("intents")?,
        &required("experiences")?,
        get("embeddings")?.as_ref(),
        get("success")?.as_ref(),
        get("q")?.as_ref(),
        get("ids")?.as_ref(),
        get("metadata")?.as_ref(),
    )?;
    if one {
        return Err(PyTypeError::new_err(
            "batches: a batch's intents and experiences are lists",
        ));
    }
    Ok(memories)
}

pub(crate) fn bank_config_dict<'py>(
    py: Python<'py>,
    c: &BankConfig,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("dim", c.dim)?;
    dict.set_item("dtype", c.dtype.as_str())?;
    dict.set_item("dedup_sim", options::shortest(c.dedup_sim))?;
    dict.set_item("model_id", &c.model_id)?;
    Ok(dict)
}
