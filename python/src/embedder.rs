//! `memrl.Embedder`: a loaded sentence-embedding model, shareable between banks and threads.

use std::sync::Arc;

use pyo3::prelude::*;

use memrl::embed::{Embedder, EmbedderOptions, Precision};
use memrl::models::{resolve, ResolveOptions};

use crate::convert::to_array;
use crate::errors::IntoPy;
use crate::options::count;

/// A local sentence-embedding model (all-MiniLM-L6-v2 by default), found on this machine or
/// fetched, and verified against memrl's registry.
///
/// One embedder can serve many banks (`Bank.open(path, embedder=e)`) and many threads: the
/// weights are loaded once. `embed` releases the GIL.
#[pyclass(frozen, module = "memrl", name = "Embedder")]
pub(crate) struct PyEmbedder(pub(crate) Arc<Embedder>);

#[pymethods]
impl PyEmbedder {
    /// Loads `model`: a registry name (`all-MiniLM-L6-v2`) or a model directory. `device` is
    /// `"cpu"`, `"cuda"`, `"cuda:N"` or `"metal"` (when compiled in); `batch_tokens` caps the
    /// tokens of one forward pass (default 2048); `precision` is `"f32"` (default) or `"int8"`
    /// (dynamic int8 linear layers on the CPU, for the models the registry lists it for: about
    /// twice the throughput, vectors within the registry's measured bound of f32; the quantized
    /// weights are cached beside the model, checksummed).
    #[new]
    #[pyo3(signature = (model = "all-MiniLM-L6-v2", *, device = "cpu", batch_tokens = None, precision = "f32"))]
    fn new(
        py: Python<'_>,
        model: &str,
        device: &str,
        batch_tokens: Option<&Bound<'_, PyAny>>,
        precision: &str,
    ) -> PyResult<Self> {
        let precision: Precision = precision.parse().py()?;
        let batch_tokens = batch_tokens
            .map(|b| count("batch_tokens", b, 1, "must be at least 1"))
            .transpose()?;
        let device = memrl::parse_device(device).py()?;
        let model = model.to_string();
        let embedder = py
            .detach(|| -> memrl::Result<Embedder> {
                let resolved = resolve(&model, &ResolveOptions::default(), &mut |_| {})?;
                let options = EmbedderOptions {
                    precision,
                    ..EmbedderOptions::default()
                };
                let mut embedder = Embedder::load_with(&resolved, &device, &options)?;
                if let Some(tokens) = batch_tokens {
                    embedder.set_batch_tokens(tokens)?;
                }
                Ok(embedder)
            })
            .py()?;
        Ok(Self(Arc::new(embedder)))
    }

    /// `"f32"` or `"int8"`: the precision of the linear layers.
    #[getter]
    fn precision(&self) -> &'static str {
        self.0.precision().as_str()
    }

    /// The model's name (what a bank records as its `model_id`).
    #[getter]
    fn name(&self) -> &str {
        self.0.name()
    }

    /// The embedding dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.0.dim()
    }

    /// Tokens a text is cut at.
    #[getter]
    fn max_tokens(&self) -> usize {
        self.0.max_tokens()
    }

    /// Most tokens in one forward pass.
    #[getter]
    fn batch_tokens(&self) -> usize {
        self.0.batch_tokens()
    }

    /// The device the model runs on.
    #[getter]
    fn device(&self) -> String {
        memrl::device_name(self.0.device())
    }

    /// Unit vectors for `texts`: a float32 array of shape `(len(texts), dim)`, or `(dim,)` for
    /// one str. A text gets the same vector alone or in any batch.
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (texts, one) = crate::bank::texts("texts", texts)?;
        let dim = self.0.dim();
        let embedder = self.0.clone();
        let flat = py
            .detach(|| -> memrl::Result<Vec<f32>> {
                if texts.is_empty() {
                    return Ok(Vec::new());
                }
                embedder.embed(&texts)?.to_flat()
            })
            .py()?;
        match one {
            true => Ok(numpy::PyArray1::from_vec(py, flat).into_any()),
            false => to_array(py, flat, dim),
        }
    }

    /// How many tokens the model sees for `text` (special tokens included, before the cut).
    fn token_count(&self, py: Python<'_>, text: &str) -> PyResult<usize> {
        let embedder = self.0.clone();
        let text = text.to_string();
        py.detach(|| embedder.token_count(&text)).py()
    }

    fn __repr__(&self) -> String {
        format!(
            "Embedder(name={:?}, dim={}, device={:?})",
            self.0.name(),
            self.0.dim(),
            memrl::device_name(self.0.device())
        )
    }
}
