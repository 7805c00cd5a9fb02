//! The library's result types as Python classes: each wraps the Rust value and exposes its
//! fields as read-only attributes; `to_dict()` gives every field, through serde, so a field the
//! library adds later shows up there (and, for `Hit`, as an attribute) without a change here.

use pyo3::exceptions::PyAttributeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde::Serialize;

use crate::convert::json_to_py;

/// Every field of a serialisable record as a Python dict.
fn record_dict<'py>(py: Python<'py>, record: &impl Serialize) -> PyResult<Bound<'py, PyAny>> {
    let value = serde_json::to_value(record)
        .map_err(|e| crate::errors::to_py(memrl::Error::Internal(format!("serialising: {e}"))))?;
    json_to_py(py, &value)
}

/// A memory's metadata as Python: the JSON value converted, or None.
fn metadata_to_py<'py>(
    py: Python<'py>,
    metadata: Option<&serde_json::Value>,
) -> PyResult<Bound<'py, PyAny>> {
    match metadata {
        Some(value) => json_to_py(py, value),
        None => Ok(py.None().into_bound(py)),
    }
}

/// One retrieved memory and the figures that ranked it.
#[pyclass(frozen, module = "memrl", name = "Hit")]
pub(crate) struct PyHit(pub(crate) memrl::Hit);

#[pymethods]
impl PyHit {
    /// The memory's id.
    #[getter]
    fn id(&self) -> u64 {
        self.0.id
    }
    /// The intent the memory was written for.
    #[getter]
    fn intent(&self) -> &str {
        &self.0.intent
    }
    /// The experience text to give the agent.
    #[getter]
    fn experience(&self) -> &str {
        &self.0.experience
    }
    /// Whether the episode that wrote the memory succeeded.
    #[getter]
    fn success(&self) -> bool {
        self.0.success
    }
    /// The memory's metadata (a dict, or whatever JSON value it was given), or None.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        metadata_to_py(py, self.0.metadata.as_ref())
    }
    /// The memory's utility Q when it was retrieved.
    #[getter]
    fn q(&self) -> f32 {
        self.0.q
    }
    /// Cosine similarity between the query and the memory's intent key.
    #[getter]
    fn sim(&self) -> f32 {
        self.0.sim
    }
    /// Standardised similarity (pool or fixed statistics); clipped only with `clip_zsim=True`.
    #[getter]
    fn zsim(&self) -> f32 {
        self.0.zsim
    }
    /// Standardised utility over the pool, clipped.
    #[getter]
    fn zq(&self) -> f32 {
        self.0.zq
    }
    /// The Phase B score, `(1 - lambda) * zsim + lambda * zq`: hits are ordered by it.
    #[getter]
    fn score(&self) -> f32 {
        self.0.score
    }
    /// Every field as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        record_dict(py, &self.0)
    }
    /// Fields the library has and this class has no attribute for yet.
    fn __getattr__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let dict = record_dict(py, &self.0)?;
        match dict.cast::<PyDict>()?.get_item(name)? {
            Some(value) => Ok(value),
            None => Err(PyAttributeError::new_err(format!(
                "'Hit' object has no attribute '{name}'"
            ))),
        }
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyHit>()
            .is_ok_and(|other| other.get().0 == self.0)
    }
    fn __repr__(&self) -> String {
        let h = &self.0;
        format!(
            "Hit(id={}, score={:.4}, sim={:.4}, q={:.4}, zsim={:.4}, zq={:.4}, experience={:?})",
            h.id, h.score, h.sim, h.q, h.zsim, h.zq, h.experience
        )
    }
}

/// The hits of one query, and the id to report the episode's reward with.
#[pyclass(frozen, module = "memrl", name = "Retrieval")]
pub(crate) struct PyRetrieval(pub(crate) memrl::Retrieval);

#[pymethods]
impl PyRetrieval {
    /// Pass to `Bank.feedback(id, reward=...)` once the episode's reward is known.
    #[getter]
    fn id(&self) -> u64 {
        self.0.id.0
    }
    /// Up to k2 memories, best first; empty when nothing passed the similarity gate.
    #[getter]
    fn hits(&self) -> Vec<PyHit> {
        self.0.hits.iter().cloned().map(PyHit).collect()
    }
    /// The ids of the hits, best first.
    #[getter]
    fn memory_ids(&self) -> Vec<u64> {
        self.0.hits.iter().map(|h| h.id).collect()
    }
    fn __len__(&self) -> usize {
        self.0.hits.len()
    }
    /// `{"id": ..., "hits": [hit.to_dict(), ...]}`.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let dict = PyDict::new(py);
        dict.set_item("id", self.0.id.0)?;
        dict.set_item("hits", record_dict(py, &self.0.hits)?)?;
        Ok(dict.into_any())
    }
    fn __repr__(&self) -> String {
        format!(
            "Retrieval(id={}, hits=[{}])",
            self.0.id.0,
            self.0
                .hits
                .iter()
                .map(|h| h.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// One stored memory: intent, experience, utility Q and bookkeeping.
#[pyclass(frozen, module = "memrl", name = "Memory")]
pub(crate) struct PyMemory(pub(crate) memrl::Memory);

#[pymethods]
impl PyMemory {
    /// Pickled as its fields, each exact (Ray moves memories between processes this way).
    fn __reduce__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, (crate::shard::MemoryTuple,))> {
        let rebuild = py.import("memrl._memrl")?.getattr("_memory_from_tuple")?;
        Ok((rebuild, (crate::shard::memory_tuple(self.0.clone()),)))
    }
    /// Stable id, unique within the bank.
    #[getter]
    fn id(&self) -> u64 {
        self.0.id
    }
    /// The task description the memory was written for (its embedding is the retrieval key).
    #[getter]
    fn intent(&self) -> &str {
        &self.0.intent
    }
    /// What the agent is told when the memory is retrieved.
    #[getter]
    fn experience(&self) -> &str {
        &self.0.experience
    }
    /// Learned utility: the expected reward of injecting this memory.
    #[getter]
    fn q(&self) -> f32 {
        self.0.q
    }
    /// How many outcomes have updated it.
    #[getter]
    fn visits(&self) -> u64 {
        self.0.visits
    }
    /// The reward of the last outcome, None before the first.
    #[getter]
    fn last_reward(&self) -> Option<f32> {
        self.0.last_reward
    }
    /// Whether the episode that wrote it succeeded.
    #[getter]
    fn success(&self) -> bool {
        self.0.success
    }
    /// Creation time, milliseconds since the Unix epoch.
    #[getter]
    fn created_ms(&self) -> u64 {
        self.0.created_ms
    }
    /// Time of the last change (creation or outcome), milliseconds since the Unix epoch.
    #[getter]
    fn updated_ms(&self) -> u64 {
        self.0.updated_ms
    }
    /// The user metadata (a dict), or None.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        metadata_to_py(py, self.0.metadata.as_ref())
    }
    /// Every field as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        record_dict(py, &self.0)
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyMemory>()
            .is_ok_and(|other| other.get().0 == self.0)
    }
    fn __repr__(&self) -> String {
        let m = &self.0;
        format!(
            "Memory(id={}, q={:.4}, visits={}, success={}, intent={:?}, experience={:?})",
            m.id,
            m.q,
            m.visits,
            if m.success { "True" } else { "False" },
            m.intent,
            m.experience
        )
    }
}

/// Counts and Q telemetry of a bank (what `memrl inspect` prints).
#[pyclass(frozen, module = "memrl", name = "Stats")]
pub(crate) struct PyStats(pub(crate) memrl::Stats);

#[pymethods]
impl PyStats {
    /// Memories held.
    #[getter]
    fn memories(&self) -> usize {
        self.0.memories
    }
    /// Intent keys (fewer than memories when intents are shared).
    #[getter]
    fn intents(&self) -> usize {
        self.0.intents
    }
    /// Intent keys that more than one memory is filed under.
    #[getter]
    fn shared_intents(&self) -> usize {
        self.0.shared_intents
    }
    /// (min, 25th percentile, median, 75th percentile, max) of Q, nearest rank; None when empty.
    #[getter]
    fn q_quantiles(&self) -> Option<(f32, f32, f32, f32, f32)> {
        self.0.q_quantiles.map(|[a, b, c, d, e]| (a, b, c, d, e))
    }
    /// How many memories have Q > 0, Q = 0 and Q < 0.
    #[getter]
    fn q_signs(&self) -> (usize, usize, usize) {
        let [pos, zero, neg] = self.0.q_signs;
        (pos, zero, neg)
    }
    /// Counts of Q in equal-width bins over [min, max] (all in the first when min = max).
    #[getter]
    fn q_histogram(&self) -> Vec<usize> {
        self.0.q_histogram.clone()
    }
    /// The memories of highest Q, best first: (id, Q).
    #[getter]
    fn top(&self) -> Vec<(u64, f32)> {
        self.0.top.clone()
    }
    /// The memories of lowest Q, worst first: (id, Q).
    #[getter]
    fn bottom(&self) -> Vec<(u64, f32)> {
        self.0.bottom.clone()
    }
    /// Every field as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        record_dict(py, &self.0)
    }
    fn __repr__(&self) -> String {
        let s = &self.0;
        let q = match s.q_quantiles {
            Some([min, p25, median, p75, max]) => format!(
                "q(min={min:.3}, p25={p25:.3}, median={median:.3}, p75={p75:.3}, max={max:.3})"
            ),
            None => "q=None".into(),
        };
        format!(
            "Stats(memories={}, intents={}, shared_intents={}, {q}, q_signs={:?})",
            s.memories, s.intents, s.shared_intents, s.q_signs
        )
    }
}

/// What `Bank.calibrate` found: the similarity gate and the fixed-zsim statistics.
#[pyclass(frozen, module = "memrl", name = "Calibration")]
pub(crate) struct PyCalibration(pub(crate) memrl::Calibration);

#[pymethods]
impl PyCalibration {
    /// The similarity gate: 20% of the intent pairs are at or above it.
    #[getter]
    fn delta(&self) -> f32 {
        self.0.delta
    }
    /// Mean pairwise intent similarity (for `zsim=(mean, std)`).
    #[getter]
    fn mean(&self) -> f32 {
        self.0.mean
    }
    /// Standard deviation of the pairwise intent similarity.
    #[getter]
    fn std(&self) -> f32 {
        self.0.std
    }
    /// Intents the pairs were drawn from.
    #[getter]
    fn intents(&self) -> usize {
        self.0.intents
    }
    /// Pairs measured.
    #[getter]
    fn pairs(&self) -> usize {
        self.0.pairs
    }
    /// Whether the pairs were a sample rather than all of them.
    #[getter]
    fn sampled(&self) -> bool {
        self.0.sampled
    }
    /// Every field as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        record_dict(py, &self.0)
    }
    fn __repr__(&self) -> String {
        let c = &self.0;
        format!(
            "Calibration(delta={:.4}, mean={:.4}, std={:.4}, intents={}, pairs={}, sampled={})",
            c.delta,
            c.mean,
            c.std,
            c.intents,
            c.pairs,
            if c.sampled { "True" } else { "False" }
        )
    }
}

/// What a batch of outcomes (feedback) changed.
#[pyclass(frozen, module = "memrl", name = "OutcomeReport")]
pub(crate) struct PyOutcomeReport(pub(crate) memrl::OutcomeReport);

#[pymethods]
impl PyOutcomeReport {
    #[allow(clippy::type_complexity)]
    fn __reduce__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, (usize, usize, usize, usize, usize))> {
        let r = &self.0;
        let rebuild = py.import("memrl._memrl")?.getattr("_outcome_report")?;
        Ok((
            rebuild,
            (r.outcomes, r.updates, r.memories, r.clamped, r.skipped),
        ))
    }
    /// Outcomes applied.
    #[getter]
    fn outcomes(&self) -> usize {
        self.0.outcomes
    }
    /// Q updates applied (one per (outcome, memory) pair).
    #[getter]
    fn updates(&self) -> usize {
        self.0.updates
    }
    /// Distinct memories touched.
    #[getter]
    fn memories(&self) -> usize {
        self.0.memories
    }
    /// Rewards clamped into the configured reward range.
    #[getter]
    fn clamped(&self) -> usize {
        self.0.clamped
    }
    /// Memories of a retrieval removed before its feedback arrived (skipped).
    #[getter]
    fn skipped(&self) -> usize {
        self.0.skipped
    }
    /// Every field as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        record_dict(py, &self.0)
    }
    fn __repr__(&self) -> String {
        let r = &self.0;
        format!(
            "OutcomeReport(outcomes={}, updates={}, memories={}, clamped={}, skipped={})",
            r.outcomes, r.updates, r.memories, r.clamped, r.skipped
        )
    }
}

/// What opening a bank found, as a dict: records replayed from the log, a torn tail dropped
/// (`tail`: offset, bytes, reason), an upgrade from an older format.
pub(crate) fn recovery_dict<'py>(
    py: Python<'py>,
    r: &memrl::Recovery,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("snapshot_seq", r.snapshot_seq)?;
    dict.set_item("replayed", r.replayed)?;
    dict.set_item("skipped", r.skipped)?;
    dict.set_item("log_seq", r.log_seq)?;
    dict.set_item("valid_bytes", r.valid_bytes)?;
    match &r.tail {
        Some(tail) => {
            let t = PyDict::new(py);
            t.set_item("offset", tail.offset)?;
            t.set_item("bytes", tail.bytes)?;
            t.set_item("reason", &tail.reason)?;
            dict.set_item("tail", t)?;
        }
        None => dict.set_item("tail", py.None())?,
    }
    dict.set_item("stale_temp_files", r.stale_temp_files)?;
    dict.set_item("log_version", r.log_version)?;
    dict.set_item("upgraded", r.upgraded)?;
    Ok(dict)
}
