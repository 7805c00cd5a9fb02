//! `memrl._EmbeddingWriter`: the file `memrl embed` writes (`memrl::embed::EmbeddingFileWriter`),
//! streamed from Python (`memrl.ray.embed_dataset` writes its rows through it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use memrl::embed::EmbeddingFileWriter;

use crate::errors::{invalid, IntoPy};

/// An embeddings file being written: rows appended in order, the file written by `finish`.
#[pyclass(module = "memrl", name = "_EmbeddingWriter")]
pub(crate) struct PyEmbeddingWriter {
    writer: Mutex<Option<EmbeddingFileWriter>>,
    dim: usize,
}

#[pymethods]
impl PyEmbeddingWriter {
    #[new]
    fn new(
        py: Python<'_>,
        out: PathBuf,
        dim: usize,
        metadata: HashMap<String, String>,
    ) -> PyResult<Self> {
        let writer = py
            .detach(|| EmbeddingFileWriter::create(&out, dim, metadata))
            .py()?;
        Ok(Self {
            writer: Mutex::new(Some(writer)),
            dim,
        })
    }

    /// Appends rows (`(n, dim)` float32) and their line numbers (`(n,)` uint64).
    fn append(
        &self,
        py: Python<'_>,
        rows: PyReadonlyArray2<'_, f32>,
        lines: PyReadonlyArray1<'_, u64>,
    ) -> PyResult<()> {
        if rows.shape()[1] != self.dim || rows.shape()[0] != lines.len() {
            return Err(invalid(
                "rows",
                format!(
                    "shape {:?} with {} lines, expected (n, {}) with n lines",
                    rows.shape(),
                    lines.len(),
                    self.dim
                ),
            ));
        }
        let (rows, lines) = (rows.as_slice()?, lines.as_slice()?);
        let mut slot = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let writer = slot
            .as_mut()
            .ok_or_else(|| invalid("writer", "already finished"))?;
        py.detach(|| writer.append(rows, lines)).py()
    }

    /// Writes the file (atomically) and returns its row count.
    fn finish(&self, py: Python<'_>) -> PyResult<usize> {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| invalid("writer", "already finished"))?;
        py.detach(|| writer.finish()).py()
    }
}
