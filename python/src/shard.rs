//! The shard protocol of `memrl.ray`'s sharded bank: what a shard (a `memrl.Bank` in a Ray actor)
//! answers and what the coordinator computes, as the library's `memrl::shard` defines them.
//!
//! Values cross as plain Python tuples (ints, floats, str), so Ray moves them by pickle, and every
//! f32 travels as the Python float that holds it exactly (a decimal round trip could move one by
//! a unit in the last place, and a sharded bank must give exactly what one bank gives).

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use memrl::shard::{self, Placement, Recall};
use memrl::{Bank, KeyId, KeyMatch, Memory, NewMemory, RetrievalConfig, RetrievalId};

use crate::errors::{invalid, IntoPy};
use crate::options::RetrievalPatch;
use crate::records::{PyMemory, PyOutcomeReport, PyRetrieval, PyStats};

/// A memory on the wire: (id, intent, experience, q, visits, last_reward, success, created_ms,
/// updated_ms, metadata as JSON text or None, baseline).
pub(crate) type MemoryTuple = (
    u64,
    String,
    String,
    f32,
    u64,
    Option<f32>,
    bool,
    u64,
    u64,
    Option<String>,
    Option<f32>,
);

/// One query's recall on the wire: the keys `(key id, sim)` and the members `(key id, memory)`.
pub(crate) type RecallTuple = (Vec<(u64, f32)>, Vec<(u64, MemoryTuple)>);

pub(crate) fn memory_tuple(m: Memory) -> MemoryTuple {
    // Every field, named: a field added to `Memory` fails to compile here until it travels.
    let Memory {
        id,
        intent,
        experience,
        q,
        visits,
        last_reward,
        success,
        created_ms,
        updated_ms,
        metadata,
        baseline,
    } = m;
    (
        id,
        intent,
        experience,
        q,
        visits,
        last_reward,
        success,
        created_ms,
        updated_ms,
        metadata.map(|v| v.to_string()),
        baseline,
    )
}

fn memory_from_tuple(t: MemoryTuple) -> PyResult<Memory> {
    let (
        id,
        intent,
        experience,
        q,
        visits,
        last_reward,
        success,
        created_ms,
        updated_ms,
        meta,
        baseline,
    ) = t;
    let metadata = match meta {
        None => None,
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| invalid("recalls", format!("memory {id}: metadata: {e}")))?,
        ),
    };
    Ok(Memory {
        id,
        intent,
        experience,
        q,
        visits,
        last_reward,
        success,
        created_ms,
        updated_ms,
        metadata,
        baseline,
    })
}

fn recall_tuple(r: Recall) -> RecallTuple {
    (
        r.keys.into_iter().map(|m| (m.key.0, m.sim)).collect(),
        r.members
            .into_iter()
            .map(|(key, m)| (key.0, memory_tuple(m)))
            .collect(),
    )
}

fn recall_from_tuple((keys, members): RecallTuple) -> PyResult<Recall> {
    Ok(Recall {
        keys: keys
            .into_iter()
            .map(|(key, sim)| KeyMatch {
                key: KeyId(key),
                sim,
            })
            .collect(),
        members: members
            .into_iter()
            .map(|(key, m)| Ok((KeyId(key), memory_from_tuple(m)?)))
            .collect::<PyResult<_>>()?,
    })
}

/// A shard's recall of query rows (`n x dim`, flat) with a complete retrieval config.
pub(crate) fn recall(
    bank: &Bank,
    rows: &[f32],
    config: &RetrievalConfig,
) -> memrl::Result<Vec<RecallTuple>> {
    Ok(bank
        .recall(memrl::Queries::Rows(rows), config)?
        .into_iter()
        .map(recall_tuple)
        .collect())
}

/// A placement on the wire: (is new, key id).
pub(crate) type PlacementTuple = (bool, u64);

pub(crate) fn placement(t: PlacementTuple) -> Placement {
    match t {
        (true, key) => Placement::New(KeyId(key)),
        (false, key) => Placement::Existing(KeyId(key)),
    }
}

/// A shard's add of memories placed by the coordinator.
pub(crate) fn add_placed(
    bank: &Bank,
    memories: Vec<NewMemory>,
    keys: Vec<PlacementTuple>,
) -> memrl::Result<Vec<u64>> {
    if keys.len() != memories.len() {
        return Err(memrl::Error::InvalidValue {
            field: "keys".into(),
            problem: format!("{} placements for {} memories", keys.len(), memories.len()),
        });
    }
    bank.add_placed(
        memories
            .into_iter()
            .zip(keys.into_iter().map(placement))
            .collect(),
    )
}

/// A complete retrieval config from a dict of every option (`Bank.retrieval_config()`, with a
/// call's options over it).
pub(crate) fn full_config(options: Option<&Bound<'_, PyDict>>) -> PyResult<RetrievalConfig> {
    RetrievalPatch::parse("retrieve", options)?
        .apply(RetrievalConfig::default())
        .py()
}

/// The coordinator's retrieval: every shard's recalls merged, Phase B once, each query's hits
/// under the retrieval id given for it.
#[pyfunction]
#[pyo3(name = "_merge_recalls", signature = (recalls, retrieval_ids, **options))]
pub(crate) fn merge_recalls(
    py: Python<'_>,
    recalls: Vec<Vec<RecallTuple>>,
    retrieval_ids: Vec<u64>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<PyRetrieval>> {
    let config = full_config(options)?;
    let recalls = recalls
        .into_iter()
        .map(|shard| shard.into_iter().map(recall_from_tuple).collect())
        .collect::<PyResult<Vec<Vec<Recall>>>>()?;
    let hits = py.detach(|| shard::merge(&recalls, &config)).py()?;
    if hits.len() != retrieval_ids.len() {
        return Err(invalid(
            "retrieval_ids",
            format!("{} ids for {} queries", retrieval_ids.len(), hits.len()),
        ));
    }
    Ok(hits
        .into_iter()
        .zip(retrieval_ids)
        .map(|(hits, id)| {
            PyRetrieval(memrl::Retrieval {
                id: RetrievalId(id),
                hits,
            })
        })
        .collect())
}

/// The coordinator's intent sharing for an add: where each row goes (`(is new, key id)`), given
/// each row's nearest key over every shard (or None) and the next key id.
#[pyfunction]
#[pyo3(name = "_place")]
pub(crate) fn place(
    py: Python<'_>,
    rows: PyReadonlyArray1<'_, f32>,
    dim: usize,
    best_existing: Vec<Option<(u64, f32)>>,
    dedup_sim: f32,
    next_key_id: u64,
) -> PyResult<Vec<PlacementTuple>> {
    let rows = rows.as_slice()?;
    let best: Vec<Option<KeyMatch>> = best_existing
        .into_iter()
        .map(|b| {
            b.map(|(key, sim)| KeyMatch {
                key: KeyId(key),
                sim,
            })
        })
        .collect();
    let placed = py
        .detach(|| shard::place(rows, dim, &best, dedup_sim, next_key_id))
        .py()?;
    Ok(placed
        .keys
        .into_iter()
        .map(|p| match p {
            Placement::New(key) => (true, key.0),
            Placement::Existing(key) => (false, key.0),
        })
        .collect())
}

/// The stats of a sharded bank from every shard's ids and Q and their key counts.
#[pyfunction]
#[pyo3(name = "_shard_stats")]
pub(crate) fn stats(
    ids: PyReadonlyArray1<'_, u64>,
    q: PyReadonlyArray1<'_, f32>,
    intents: usize,
    shared_intents: usize,
    bins: usize,
    extremes: usize,
) -> PyResult<PyStats> {
    let (ids, q) = (ids.as_slice()?, q.as_slice()?);
    if ids.len() != q.len() {
        return Err(invalid(
            "q",
            format!("{} values for {} ids", q.len(), ids.len()),
        ));
    }
    let pairs = ids.iter().copied().zip(q.iter().copied()).collect();
    Ok(PyStats(shard::stats(
        pairs,
        intents,
        shared_intents,
        bins,
        extremes,
    )))
}

/// Every memory's (id, Q) of a bank, as two numpy arrays.
pub(crate) fn q_by_id<'py>(
    py: Python<'py>,
    pairs: Vec<(u64, f32)>,
) -> (Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<f32>>) {
    let (ids, q): (Vec<u64>, Vec<f32>) = pairs.into_iter().unzip();
    (PyArray1::from_vec(py, ids), PyArray1::from_vec(py, q))
}

/// The report of an outcome batch split over shards, from its totals.
#[pyfunction]
#[pyo3(name = "_outcome_report")]
pub(crate) fn outcome_report(
    outcomes: usize,
    updates: usize,
    memories: usize,
    clamped: usize,
    skipped: usize,
) -> PyOutcomeReport {
    PyOutcomeReport(memrl::OutcomeReport {
        outcomes,
        updates,
        memories,
        clamped,
        skipped,
    })
}

/// A memory from its pickled fields (`Memory.__reduce__`).
#[pyfunction]
#[pyo3(name = "_memory_from_tuple")]
pub(crate) fn memory_from_fields(fields: MemoryTuple) -> PyResult<PyMemory> {
    memory_from_tuple(fields).map(PyMemory)
}
