//! The wire side of `memrl.Client` (in `memrl/client.py`): a remote bank's options are read by
//! the same code as a local bank's (so a misspelt option or a value of the wrong type fails the
//! same way, before any request), and a server's answers become the very classes a local bank
//! returns (`Retrieval`, `Memory`, `Stats`, ...), decoded by serde from the JSON the server
//! wrote with the same types. The HTTP itself is plain Python.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::bank::{
    bank_config_dict, memory_id_list, new_memories, outcomes, query_input, retrieval_id,
    retrieval_rewards, QueryInput,
};
use crate::errors::{invalid, to_py};
use crate::options::{learning_dict, retrieval_dict, LearningPatch, RetrievalPatch};
use crate::records::{PyCalibration, PyHit, PyMemory, PyOutcomeReport, PyRetrieval, PyStats};

/// A server answer that is not what the route returns: a version mismatch or not a memrl server.
fn unreadable(what: &str, e: impl std::fmt::Display) -> PyErr {
    to_py(memrl::Error::Internal(format!(
        "the server's answer is not a {what} (is the url a memrl server of this version?): {e}"
    )))
}

fn decode<T: DeserializeOwned>(what: &str, body: &[u8]) -> PyResult<T> {
    serde_json::from_slice(body).map_err(|e| unreadable(what, e))
}

fn to_text(value: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| to_py(memrl::Error::Internal(e.to_string())))
}

/// A memory as the body of `POST /v1/namespaces/{ns}/memories` takes it.
fn memory_json(m: memrl::NewMemory) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    if let Some(id) = m.id {
        o.insert("id".into(), json!(id));
    }
    o.insert("intent".into(), json!(m.intent));
    o.insert("experience".into(), json!(m.experience));
    o.insert("success".into(), json!(m.success));
    if let Some(q) = m.q {
        o.insert("q".into(), json!(q));
    }
    if let Some(metadata) = m.metadata {
        o.insert("metadata".into(), metadata);
    }
    if let Some(embedding) = m.embedding {
        o.insert("embedding".into(), json!(embedding));
    }
    serde_json::Value::Object(o)
}

/// One query's answer as the server writes it: the id is a string (it does not fit a double).
#[derive(Deserialize)]
struct WireRetrieval {
    retrieval_id: String,
    hits: Vec<memrl::Hit>,
}

impl WireRetrieval {
    fn into_retrieval(self) -> PyResult<PyRetrieval> {
        let id = self
            .retrieval_id
            .parse()
            .map_err(|e| unreadable("retrieval id", e))?;
        Ok(PyRetrieval(memrl::Retrieval {
            id: memrl::RetrievalId(id),
            hits: self.hits,
        }))
    }
}

#[derive(Deserialize)]
struct WireRetrievals {
    results: Vec<WireRetrieval>,
}

#[derive(Deserialize)]
struct WireCalibration {
    calibration: memrl::Calibration,
}

#[derive(Deserialize)]
struct WireConfigs {
    config: memrl::BankConfig,
    retrieval_config: memrl::RetrievalConfig,
    learning_config: memrl::LearningConfig,
}

/// Helpers of `memrl.Client`; not a public API.
#[pyclass(frozen, module = "memrl._memrl", name = "_Wire")]
pub(crate) struct Wire;

#[pymethods]
impl Wire {
    /// The JSON fields of `retrieve`'s (or `set_retrieval_config`'s) keyword options, read as a
    /// local bank reads them (`call` names the method in errors).
    #[staticmethod]
    #[pyo3(signature = (call, **options))]
    fn retrieval_options(call: &str, options: Option<&Bound<'_, PyDict>>) -> PyResult<String> {
        to_text(&RetrievalPatch::parse(call, options)?.to_json())
    }

    /// The body of a retrieval (`text`, `texts`, `vector` or `vectors`, and the options), and
    /// whether it asks for one answer; `width` is the vectors' length (the server checks it
    /// against the namespace's dimension).
    #[staticmethod]
    #[pyo3(signature = (queries, width, **options))]
    fn retrieve_body(
        queries: &Bound<'_, PyAny>,
        width: usize,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<(String, bool)> {
        let mut body = RetrievalPatch::parse("retrieve", options)?.to_json();
        let single = match query_input(queries, width)? {
            QueryInput::Text(text) => {
                body.insert("text".into(), json!(text));
                true
            }
            QueryInput::Texts(texts) => {
                body.insert("texts".into(), json!(texts));
                false
            }
            QueryInput::Rows(rows) => {
                let flat = rows.as_slice()?;
                if rows.one {
                    body.insert("vector".into(), json!(flat));
                } else {
                    let vectors: Vec<&[f32]> = flat.chunks(width.max(1)).collect();
                    body.insert("vectors".into(), json!(vectors));
                }
                rows.one
            }
        };
        Ok((to_text(&body)?, single))
    }

    /// The memories `add`'s arguments describe, each as the JSON object the server takes, read
    /// and checked as a local bank reads them; and whether one memory was given (not a list).
    #[staticmethod]
    #[pyo3(signature = (width, intents, experiences, embeddings=None, success=None, q=None, ids=None, metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn memories(
        width: usize,
        intents: &Bound<'_, PyAny>,
        experiences: &Bound<'_, PyAny>,
        embeddings: Option<&Bound<'_, PyAny>>,
        success: Option<&Bound<'_, PyAny>>,
        q: Option<&Bound<'_, PyAny>>,
        ids: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Vec<String>, bool)> {
        let (memories, one) = new_memories(
            width,
            intents,
            experiences,
            embeddings,
            success,
            q,
            ids,
            metadata,
        )?;
        let texts = memories
            .into_iter()
            .map(|m| to_text(&memory_json(m)))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((texts, one))
    }

    /// The body of `feedback`: a retrieval (its id, or the `Retrieval`) or `memory_ids`.
    #[staticmethod]
    #[pyo3(signature = (retrieval, reward, memory_ids))]
    fn feedback_body(
        retrieval: Option<&Bound<'_, PyAny>>,
        reward: &Bound<'_, PyAny>,
        memory_ids: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let reward = crate::options::float("reward", reward)? as f32;
        let body = match (retrieval, memory_ids) {
            (Some(r), None) => {
                json!({ "retrieval_id": retrieval_id(r)?.0.to_string(), "reward": reward })
            }
            (None, Some(ids)) => json!({ "memory_ids": memory_id_list(ids)?, "reward": reward }),
            _ => {
                return Err(invalid(
                    "feedback",
                    "give a retrieval or memory_ids=, exactly one of them",
                ))
            }
        };
        to_text(&body)
    }

    /// The body of `feedback_many`: `(retrieval, reward)` pairs, one atomic batch.
    #[staticmethod]
    fn feedback_many_body(rewards: &Bound<'_, PyAny>) -> PyResult<String> {
        let rewards: Vec<serde_json::Value> = retrieval_rewards(rewards)?
            .into_iter()
            .map(|(id, reward)| json!({ "retrieval_id": id.0.to_string(), "reward": reward }))
            .collect();
        to_text(&json!({ "rewards": rewards }))
    }

    /// The body of `apply_outcomes`: `(memory_ids, reward)` pairs, one atomic batch.
    #[staticmethod]
    fn outcomes_body(value: &Bound<'_, PyAny>) -> PyResult<String> {
        let outcomes: Vec<serde_json::Value> = outcomes(value)?
            .into_iter()
            .map(|o| json!({ "memory_ids": o.memory_ids, "reward": o.reward }))
            .collect();
        to_text(&json!({ "outcomes": outcomes }))
    }

    /// The whole learning config to store: `stored` (the server's, as JSON) with the keyword
    /// options applied and checked as a local bank applies them.
    #[staticmethod]
    #[pyo3(signature = (stored, **options))]
    fn learning_config(stored: &[u8], options: Option<&Bound<'_, PyDict>>) -> PyResult<String> {
        let patch = LearningPatch::parse("set_learning_config", options)?;
        let stored: memrl::LearningConfig = decode("learning config", stored)?;
        to_text(&patch.apply(stored).map_err(to_py)?)
    }

    /// `(config, retrieval_config, learning_config)` as the dicts a local bank's properties give,
    /// from the answer of `GET /v1/namespaces/{ns}`.
    #[staticmethod]
    #[allow(clippy::type_complexity)]
    fn namespace_dicts<'py>(
        py: Python<'py>,
        body: &[u8],
    ) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>, Bound<'py, PyDict>)> {
        let c: WireConfigs = decode("namespace description", body)?;
        Ok((
            bank_config_dict(py, &c.config)?,
            retrieval_dict(py, &c.retrieval_config)?,
            learning_dict(py, &c.learning_config)?,
        ))
    }

    /// A server answer as the class a local bank returns; `kind` is the route's answer
    /// (`retrieval`, `retrievals`, `memory`, `stats`, `calibration`, `outcome_report`).
    #[staticmethod]
    fn decode<'py>(
        py: Python<'py>,
        kind: &str,
        body: &Bound<'py, PyBytes>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let body = body.as_bytes();
        Ok(match kind {
            "retrieval" => {
                let r: WireRetrieval = decode("retrieval", body)?;
                Bound::new(py, r.into_retrieval()?)?.into_any()
            }
            "retrievals" => {
                let rs: WireRetrievals = decode("list of retrievals", body)?;
                let list = rs
                    .results
                    .into_iter()
                    .map(WireRetrieval::into_retrieval)
                    .collect::<PyResult<Vec<_>>>()?;
                list.into_pyobject(py)?.into_any()
            }
            "hit" => Bound::new(py, PyHit(decode("hit", body)?))?.into_any(),
            "memory" => Bound::new(py, PyMemory(decode("memory", body)?))?.into_any(),
            "stats" => Bound::new(py, PyStats(decode("stats answer", body)?))?.into_any(),
            "calibration" => {
                let c: WireCalibration = decode("calibration", body)?;
                Bound::new(py, PyCalibration(c.calibration))?.into_any()
            }
            "outcome_report" => {
                Bound::new(py, PyOutcomeReport(decode("outcome report", body)?))?.into_any()
            }
            other => {
                return Err(to_py(memrl::Error::Internal(format!(
                    "no answer kind {other:?}"
                ))))
            }
        })
    }
}
