//! The shard protocol of `memrl.ray`'s sharded bank: what a shard (a `memrl.Bank` in a Ray actor)
//! answers and what the coordinator computes, as the library's `memrl::shard` defines them.
//!
//! Values cross as plain Python tuples (ints, floats, str), so Ray moves them by pickle, and every
//! f32 travels as the Python float that holds it exactly (a decimal round trip could move one by
//! a unit in the last place, and a sharded bank must give exactly what one bank gives).

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use memrl::shard::{self, Member, Pick, Placement, Recall};
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

/// A shard's recall of a batch on the wire, as numpy arrays (Ray moves them without copying):
/// `(key_offsets, key_ids, key_sims, member_offsets, member_keys, member_ids, member_q,
/// member_visits)`; query `i`'s keys are `key_offsets[i]..key_offsets[i + 1]`, its members
/// likewise.
pub(crate) type RecallArrays<'py> = (
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<u64>>,
);

/// [`RecallArrays`] as the coordinator receives them.
pub(crate) type RecallArraysIn<'py> = (
    PyReadonlyArray1<'py, u64>,
    PyReadonlyArray1<'py, u64>,
    PyReadonlyArray1<'py, f32>,
    PyReadonlyArray1<'py, u64>,
    PyReadonlyArray1<'py, u64>,
    PyReadonlyArray1<'py, u64>,
    PyReadonlyArray1<'py, f32>,
    PyReadonlyArray1<'py, u64>,
);

/// A pick on the wire: (shard, id, q, sim, zsim, zq, score).
pub(crate) type PickTuple = (usize, u64, f32, f32, f32, f32, f32);

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

/// A shard's recall of query rows (`n x dim`, flat) with a complete retrieval config, as arrays.
pub(crate) fn recall<'py>(
    py: Python<'py>,
    bank: &Bank,
    rows: &[f32],
    config: &RetrievalConfig,
) -> PyResult<RecallArrays<'py>> {
    let recalls = py
        .detach(|| bank.recall(memrl::Queries::Rows(rows), config))
        .py()?;
    let (mut key_offsets, mut member_offsets) = (vec![0u64], vec![0u64]);
    let (mut key_ids, mut key_sims) = (Vec::new(), Vec::new());
    let (mut member_keys, mut member_ids, mut member_q, mut member_visits) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in recalls {
        for m in r.keys {
            key_ids.push(m.key.0);
            key_sims.push(m.sim);
        }
        for m in r.members {
            member_keys.push(m.key.0);
            member_ids.push(m.id);
            member_q.push(m.q);
            member_visits.push(m.visits);
        }
        key_offsets.push(key_ids.len() as u64);
        member_offsets.push(member_ids.len() as u64);
    }
    Ok((
        PyArray1::from_vec(py, key_offsets),
        PyArray1::from_vec(py, key_ids),
        PyArray1::from_vec(py, key_sims),
        PyArray1::from_vec(py, member_offsets),
        PyArray1::from_vec(py, member_keys),
        PyArray1::from_vec(py, member_ids),
        PyArray1::from_vec(py, member_q),
        PyArray1::from_vec(py, member_visits),
    ))
}

fn span(offsets: &[u64], i: usize, len: usize, what: &str) -> PyResult<std::ops::Range<usize>> {
    let (lo, hi) = (offsets[i] as usize, offsets[i + 1] as usize);
    if lo > hi || hi > len {
        return Err(invalid(
            "recalls",
            format!("{what} offsets {lo}..{hi} outside 0..{len}"),
        ));
    }
    Ok(lo..hi)
}

fn recalls_from_arrays(r: &RecallArraysIn<'_>) -> PyResult<Vec<Recall>> {
    let (ko, kid, ksim, mo, mkey, mid, mq, mv) = (
        r.0.as_slice()?,
        r.1.as_slice()?,
        r.2.as_slice()?,
        r.3.as_slice()?,
        r.4.as_slice()?,
        r.5.as_slice()?,
        r.6.as_slice()?,
        r.7.as_slice()?,
    );
    if ko.len() != mo.len() || ko.is_empty() || kid.len() != ksim.len() {
        return Err(invalid("recalls", "the key arrays do not match"));
    }
    if mkey.len() != mid.len() || mid.len() != mq.len() || mq.len() != mv.len() {
        return Err(invalid("recalls", "the member arrays do not match"));
    }
    (0..ko.len() - 1)
        .map(|i| {
            let keys = span(ko, i, kid.len(), "key")?
                .map(|j| KeyMatch {
                    key: KeyId(kid[j]),
                    sim: ksim[j],
                })
                .collect();
            let members = span(mo, i, mid.len(), "member")?
                .map(|j| Member {
                    key: KeyId(mkey[j]),
                    id: mid[j],
                    q: mq[j],
                    visits: mv[j],
                })
                .collect();
            Ok(Recall { keys, members })
        })
        .collect()
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

/// The coordinator's retrieval: every shard's recalls merged and Phase B run once; each
/// query's picks, best first, as `(shard, id, q, sim, zsim, zq, score)`.
#[pyfunction]
#[pyo3(name = "_merge_recalls", signature = (recalls, **options))]
pub(crate) fn merge_recalls(
    py: Python<'_>,
    recalls: Vec<RecallArraysIn<'_>>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<Vec<PickTuple>>> {
    let config = full_config(options)?;
    let recalls = recalls
        .iter()
        .map(recalls_from_arrays)
        .collect::<PyResult<Vec<Vec<Recall>>>>()?;
    let picks = py.detach(|| shard::merge(&recalls, &config)).py()?;
    Ok(picks
        .into_iter()
        .map(|q| {
            q.into_iter()
                .map(|p| (p.shard, p.id, p.q, p.sim, p.zsim, p.zq, p.score))
                .collect()
        })
        .collect())
}

/// The coordinator's retrievals: each query's picks with their memories' records (in the same
/// order), under the retrieval id given for the query.
#[pyfunction]
#[pyo3(name = "_retrievals")]
pub(crate) fn retrievals(
    picks: Vec<Vec<PickTuple>>,
    records: Vec<Vec<PyRef<'_, PyMemory>>>,
    retrieval_ids: Vec<u64>,
) -> PyResult<Vec<PyRetrieval>> {
    if picks.len() != records.len() || picks.len() != retrieval_ids.len() {
        return Err(invalid(
            "records",
            format!(
                "{} queries of picks, {} of records, {} retrieval ids",
                picks.len(),
                records.len(),
                retrieval_ids.len()
            ),
        ));
    }
    picks
        .into_iter()
        .zip(records)
        .zip(retrieval_ids)
        .map(|((picks, records), id)| {
            if picks.len() != records.len() {
                return Err(invalid("records", "a record for every pick, in order"));
            }
            let hits = picks
                .into_iter()
                .zip(records)
                .map(|((shard, id, q, sim, zsim, zq, score), record)| {
                    if record.0.id != id {
                        return Err(invalid(
                            "records",
                            format!("memory {} given for pick {id}", record.0.id),
                        ));
                    }
                    let pick = Pick {
                        shard,
                        id,
                        q,
                        sim,
                        zsim,
                        zq,
                        score,
                    };
                    Ok(pick.hit(&record.0))
                })
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyRetrieval(memrl::Retrieval {
                id: RetrievalId(id),
                hits,
            }))
        })
        .collect()
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
