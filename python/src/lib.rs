//! The `memrl._memrl` extension module: memrl's front door (`memrl::Bank`), its embedder, its
//! result types, and the wire helpers of `memrl.Client`, for Python. The Python package `memrl`
//! (in `python/memrl/`) re-exports it with the exception hierarchy, the client and the LangGraph
//! store.

mod bank;
mod convert;
mod embedder;
mod embedfile;
mod errors;
mod options;
mod records;
mod remote;
mod shard;

use pyo3::prelude::*;

#[pymodule]
fn _memrl(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<bank::PyBank>()?;
    m.add_class::<embedder::PyEmbedder>()?;
    m.add_class::<records::PyHit>()?;
    m.add_class::<records::PyRetrieval>()?;
    m.add_class::<records::PyMemory>()?;
    m.add_class::<records::PyStats>()?;
    m.add_class::<records::PyCalibration>()?;
    m.add_class::<records::PyOutcomeReport>()?;
    m.add_class::<remote::Wire>()?;
    m.add_class::<embedfile::PyEmbeddingWriter>()?;
    m.add_function(wrap_pyfunction!(shard::merge_recalls, m)?)?;
    m.add_function(wrap_pyfunction!(shard::retrievals, m)?)?;
    m.add_function(wrap_pyfunction!(shard::place, m)?)?;
    m.add_function(wrap_pyfunction!(shard::stats, m)?)?;
    m.add_function(wrap_pyfunction!(shard::outcome_report, m)?)?;
    m.add_function(wrap_pyfunction!(shard::memory_from_fields, m)?)?;
    m.add("RETRIEVAL_OPTIONS", options::RETRIEVAL.to_vec())?;
    m.add("LEARNING_OPTIONS", options::LEARNING.to_vec())?;
    Ok(())
}
