//! Text -> unit vectors: a local BERT-family sentence embedder on the engine's device.
//!
//! [`Embedder::load`] reads a sentence-transformers model folder: `config.json`,
//! `model.safetensors` (memory-mapped), `tokenizer.json`, `1_Pooling/config.json` (mean or CLS
//! pooling) and `sentence_bert_config.json` (the token limit). [`Embedder::embed`] returns a
//! `B x d` tensor of unit rows, the same vectors sentence-transformers computes (a parity test
//! holds it to 1e-5 against the reference embeddings in `shared/fixtures`).
//!
//! [`Embedder::load_with`] can run the linear layers in int8 ([`Precision::Int8`], CPU only):
//! integer matrix products, with vectors close to the f32 ones rather than equal
//! (`src/embed/int8/mod.rs` has the scheme, the README the measured cosine and recall). The
//! quantized weights are made once per checkpoint and cached, checksummed, in memrl's cache
//! directory ([`Int8Cache`] says what happened at load).
//!
//! Why it is fast: a batch is tokenized in parallel, sorted by token count, cut into chunks by a
//! token budget (not a text count), and each chunk runs as one packed, padding-free forward pass
//! ([`bert`]); the caller's order is restored at the end. A text alone and the same text inside
//! a large mixed batch give the same vector, because nothing depends on its neighbours.
//!
//! ```no_run
//! use memrl::embed::Embedder;
//! use memrl::models::{resolve, ResolveOptions};
//! let model = resolve("all-MiniLM-L6-v2", &ResolveOptions::default(), &mut |l| eprintln!("{l}"))?;
//! let embedder = Embedder::load(&model, &memrl::Device::Cpu)?;
//! let out = embedder.embed(&["parse a date", "format a date"])?;
//! assert_eq!(out.vectors.dims(), &[2, 384]);
//! # Ok::<(), memrl::Error>(())
//! ```

mod bert;
mod file;
mod fused;
mod int8;

pub use crate::models::Precision;
/// Which arithmetic the encoder runs (tests compare the two on the CPU).
#[doc(hidden)]
pub use bert::ComputePath;
pub use file::EmbeddingFileWriter;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::models::{default_cache_dir, Pooling, ResolvedModel};
use bert::{BertEncoder, Config, PackedBatch};

/// Default token budget per forward pass (tokens, counted with padding to the chunk's longest).
pub const DEFAULT_BATCH_TOKENS: usize = 2048;

/// The result of [`Embedder::embed`].
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// `B x d` unit rows, f32, on the embedder's device, in the caller's order.
    pub vectors: Tensor,
    /// Indices of the texts that were cut at the token limit.
    pub truncated: Vec<usize>,
    /// Tokens processed (after truncation, special tokens included).
    pub tokens: usize,
}

impl Embeddings {
    /// The vectors as host rows, ready for [`crate::NewMemory::embedding`] or a query.
    pub fn to_rows(&self) -> Result<Vec<Vec<f32>>> {
        Ok(self.vectors.to_vec2::<f32>()?)
    }

    /// The vectors as one host slice, row after row.
    pub fn to_flat(&self) -> Result<Vec<f32>> {
        Ok(self.vectors.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// How [`Embedder::load_with`] loads a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedderOptions {
    /// Precision of the linear layers (default [`Precision::F32`]).
    pub precision: Precision,
    /// memrl's cache directory, where int8 weights are kept (under `int8/`); `None` quantizes
    /// at every load and writes nothing. Default: [`default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            precision: Precision::F32,
            cache_dir: Some(default_cache_dir()),
        }
    }
}

/// What became of the int8 weight cache when an int8 embedder loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Int8Cache {
    /// Read from this file, its checksum and source checkpoint verified.
    Loaded(PathBuf),
    /// No file yet: quantized now and written to this file.
    Written(PathBuf),
    /// The file could not be used (`problem` says why: corrupted, of other weights, ...), so
    /// the weights were quantized again and the file rewritten. Also logged as a warning.
    Rebuilt {
        /// The cache file.
        path: PathBuf,
        /// What was wrong with it.
        problem: String,
    },
    /// Quantized now, but the file could not be written (`problem` says why), so the next load
    /// quantizes again. Also logged as a warning.
    NotWritten {
        /// The cache file.
        path: PathBuf,
        /// Why it was not written (and, if there was an unusable file, what was wrong with it).
        problem: String,
    },
    /// Quantized now; [`EmbedderOptions::cache_dir`] was `None`.
    Disabled,
}

/// A loaded sentence-embedding model.
pub struct Embedder {
    name: String,
    tokenizer: Tokenizer,
    encoder: BertEncoder,
    pooling: Pooling,
    max_tokens: usize,
    batch_tokens: usize,
    device: Device,
    int8_cache: Option<Int8Cache>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("name", &self.name)
            .field("dim", &self.dim())
            .field("pooling", &self.pooling)
            .field("max_tokens", &self.max_tokens)
            .field("batch_tokens", &self.batch_tokens)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Model {
        path: path.to_path_buf(),
        problem: format!("line {} column {}: {e}", e.line(), e.column()),
    })
}

impl Embedder {
    /// Loads a resolved model onto `device` in f32, checking it against its registry entry.
    pub fn load(model: &ResolvedModel, device: &Device) -> Result<Self> {
        Self::load_with(model, device, &EmbedderOptions::default())
    }

    /// Loads a resolved model onto `device` with `options`, checking it against its registry
    /// entry; a precision the registry does not list for the model is refused.
    pub fn load_with(
        model: &ResolvedModel,
        device: &Device,
        options: &EmbedderOptions,
    ) -> Result<Self> {
        let mut known_sha256 = None;
        if let Some(spec) = &model.spec {
            if !spec.precisions.contains(&options.precision) {
                let listed: Vec<&str> = spec.precisions.iter().map(|p| p.as_str()).collect();
                return Err(Error::Model {
                    path: "models/registry.json".into(),
                    problem: format!(
                        "{} has not been measured at {} (the registry lists {} for it)",
                        spec.name,
                        options.precision,
                        listed.join(", ")
                    ),
                });
            }
            // Verified at resolution: no need to hash the weights again for the cache key.
            if model.verified {
                known_sha256 = spec.files.get("model.safetensors").cloned().flatten();
            }
        }
        let embedder = Self::open(&model.dir, &model.name, device, options, known_sha256)?;
        if let Some(spec) = &model.spec {
            let config = model.dir.join("config.json");
            if spec.dim != embedder.dim() {
                return Err(Error::Model {
                    path: config,
                    problem: format!(
                        "hidden_size is {}, the registry says {} has dim {}",
                        embedder.dim(),
                        spec.name,
                        spec.dim
                    ),
                });
            }
            if spec.pooling != embedder.pooling {
                return Err(Error::Model {
                    path: model.dir.join("1_Pooling/config.json"),
                    problem: format!(
                        "pooling is {}, the registry says {} uses {}",
                        embedder.pooling.as_str(),
                        spec.name,
                        spec.pooling.as_str()
                    ),
                });
            }
        }
        Ok(embedder)
    }

    /// Loads a model folder directly in f32; `name` becomes [`Embedder::name`] (what banks
    /// record).
    pub fn from_dir(dir: &Path, name: &str, device: &Device) -> Result<Self> {
        Self::from_dir_with(dir, name, device, &EmbedderOptions::default())
    }

    /// [`Embedder::from_dir`] with `options`. Outside the registry nothing says which
    /// precisions suit the model: int8 is the caller's call (measure it against f32 first).
    pub fn from_dir_with(
        dir: &Path,
        name: &str,
        device: &Device,
        options: &EmbedderOptions,
    ) -> Result<Self> {
        Self::open(dir, name, device, options, None)
    }

    /// `source_sha256`: the weights' sha256 when already verified (the int8 cache's key).
    fn open(
        dir: &Path,
        name: &str,
        device: &Device,
        options: &EmbedderOptions,
        source_sha256: Option<String>,
    ) -> Result<Self> {
        if options.precision == Precision::Int8 && !device.is_cpu() {
            return Err(Error::config(
                "precision",
                Precision::Int8,
                "int8 runs on the CPU only (use f32 on cuda and metal)",
            ));
        }
        let config_path = dir.join("config.json");
        let config: Config = read_json(&config_path)?;
        let pooling = read_pooling(dir)?;
        let sbert_path = dir.join("sentence_bert_config.json");
        let limit = if sbert_path.is_file() {
            read_json::<SentenceBertConfig>(&sbert_path)?.max_seq_length
        } else {
            None
        };
        let max_tokens = limit
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        if max_tokens < 2 {
            return Err(Error::Model {
                path: sbert_path,
                problem: format!("max_seq_length {max_tokens} leaves no room for a text"),
            });
        }
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), max_tokens)?;

        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(Error::Model {
                path: weights,
                problem: "missing".into(),
            });
        }
        // SAFETY: the file is mapped read-only; memrl never writes it, and a model folder that
        // another process rewrites while in use is outside what any loader can defend against.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .map_err(|e| Error::Model {
                path: weights.clone(),
                problem: e.to_string(),
            })?;
        let mut encoder = BertEncoder::load(vb, &config).map_err(|e| match e {
            Error::Candle(e) => Error::Model {
                path: weights.clone(),
                problem: e.to_string(),
            },
            other => other,
        })?;
        let int8_cache = match options.precision {
            Precision::F32 => None,
            Precision::Int8 => {
                let sha = match source_sha256 {
                    Some(sha) => sha,
                    None => crate::models::sha256_file(&weights)?,
                };
                Some(int8::load_into(
                    &mut encoder,
                    options.cache_dir.as_deref(),
                    &sha,
                )?)
            }
        };
        Ok(Embedder {
            name: name.to_string(),
            tokenizer,
            encoder,
            pooling,
            max_tokens,
            batch_tokens: DEFAULT_BATCH_TOKENS,
            device: device.clone(),
            int8_cache,
        })
    }

    /// Precision of the linear layers.
    pub fn precision(&self) -> Precision {
        self.encoder.precision()
    }

    /// For an int8 embedder, what became of its weight cache at load; `None` in f32.
    pub fn int8_cache(&self) -> Option<&Int8Cache> {
        self.int8_cache.as_ref()
    }

    /// The model name recorded in banks built with this embedder.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.encoder.hidden_size()
    }

    /// Pooling read from `1_Pooling/config.json`.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Tokens per text after truncation, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token budget per forward pass.
    pub fn batch_tokens(&self) -> usize {
        self.batch_tokens
    }

    /// Sets the token budget per forward pass (at least [`Embedder::max_tokens`], so any text
    /// fits). Larger budgets mean larger matrix products and more memory.
    pub fn set_batch_tokens(&mut self, tokens: usize) -> Result<()> {
        if tokens < self.max_tokens {
            return Err(Error::config(
                "batch_tokens",
                tokens,
                "must be at least the model's max_seq_length",
            ));
        }
        self.batch_tokens = tokens;
        Ok(())
    }

    /// Tokens `text` will take in a forward pass (after truncation, special tokens included):
    /// what a batching queue counts against its token cap.
    pub fn token_count(&self, text: &str) -> Result<usize> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().len())
    }

    /// Chooses how the encoder computes (tests run the portable GPU path on the CPU).
    #[doc(hidden)]
    pub fn set_compute_path(&mut self, path: ComputePath) {
        self.encoder.set_compute_path(path);
    }

    /// Embeds `texts` into unit rows, in the caller's order.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Embeddings> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let truncated = encodings
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.get_overflowing().is_empty())
            .map(|(i, _)| i)
            .collect();
        let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        if let Some(i) = lengths.iter().position(|&l| l == 0) {
            return Err(Error::Tokenizer(format!(
                "text #{i} produced no tokens (the tokenizer adds no special tokens)"
            )));
        }
        let dim = self.dim();
        if texts.is_empty() {
            return Ok(Embeddings {
                vectors: Tensor::zeros((0, dim), DType::F32, &self.device)?,
                truncated,
                tokens: 0,
            });
        }
        let order = length_order(&lengths);
        let mut pooled = Vec::new();
        for chunk in token_chunks(&order, &lengths, self.batch_tokens) {
            let mut batch = PackedBatch::default();
            for &i in chunk {
                batch.push(encodings[i].get_ids(), encodings[i].get_type_ids());
            }
            let states = self.encoder.forward(&batch, &self.device)?;
            let vectors = match self.pooling {
                Pooling::Mean => bert::mean_pool(&states, &batch)?,
                Pooling::Cls => bert::cls_pool(&states, &batch)?,
            };
            pooled.push(bert::l2_normalize(&vectors)?);
        }
        let sorted = Tensor::cat(&pooled, 0)?;
        // Row r of `sorted` is text order[r]; gather each text's row back into place.
        let mut slot = vec![0u32; order.len()];
        for (r, &i) in order.iter().enumerate() {
            slot[i] = r as u32;
        }
        let slot = Tensor::from_vec(slot, order.len(), &self.device)?;
        tracing::debug!(
            texts = order.len(),
            tokens = lengths.iter().sum::<usize>(),
            truncated = truncated.len(),
            "embedded"
        );
        Ok(Embeddings {
            vectors: sorted.index_select(&slot, 0)?,
            truncated,
            tokens: lengths.iter().sum(),
        })
    }
}

/// Text indices, longest first (ties keep the caller's order).
fn length_order(lengths: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    order
}

/// Cuts `order` (longest first) into chunks whose padded size, texts x longest, fits `budget`;
/// a chunk always takes at least one text.
fn token_chunks<'a>(order: &'a [usize], lengths: &[usize], budget: usize) -> Vec<&'a [usize]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let longest = lengths[order[start]].max(1);
        let take = (budget / longest).clamp(1, order.len() - start);
        chunks.push(&order[start..start + take]);
        start += take;
    }
    chunks
}

fn read_pooling(dir: &Path) -> Result<Pooling> {
    let path = dir.join("1_Pooling").join("config.json");
    if !path.is_file() {
        // No pooling module: sentence-transformers falls back to mean pooling too.
        return Ok(Pooling::Mean);
    }
    let config: PoolingConfig = read_json(&path)?;
    let unsupported = [
        (config.pooling_mode_max_tokens, "pooling_mode_max_tokens"),
        (
            config.pooling_mode_mean_sqrt_len_tokens,
            "pooling_mode_mean_sqrt_len_tokens",
        ),
    ];
    if let Some((_, field)) = unsupported.iter().find(|(on, _)| *on) {
        return Err(Error::Model {
            path,
            problem: format!("{field} is not supported (memrl pools by mean or CLS)"),
        });
    }
    match (config.pooling_mode_mean_tokens, config.pooling_mode_cls_token) {
        (true, false) => Ok(Pooling::Mean),
        (false, true) => Ok(Pooling::Cls),
        (mean, cls) => Err(Error::Model {
            path,
            problem: format!(
                "exactly one of pooling_mode_mean_tokens ({mean}) and pooling_mode_cls_token ({cls}) must be true"
            ),
        }),
    }
}

fn load_tokenizer(path: &PathBuf, max_tokens: usize) -> Result<Tokenizer> {
    if !path.is_file() {
        return Err(Error::Model {
            path: path.clone(),
            problem: "missing".into(),
        });
    }
    let bad = |problem: String| Error::Model {
        path: path.clone(),
        problem,
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| bad(e.to_string()))?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| bad(e.to_string()))?;
    // Packed batches need each text's own tokens, never padding.
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedder_is_shared_across_threads() {
        // Agents share one embedder (one copy of the weights); `embed` takes `&self`.
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Embedder>();
    }

    #[test]
    fn chunks_respect_the_budget_and_cover_every_text_once() {
        let lengths = [5, 40, 3, 40, 12, 7, 300];
        let order = length_order(&lengths);
        assert_eq!(order, vec![6, 1, 3, 4, 5, 0, 2]);
        let chunks = token_chunks(&order, &lengths, 100);
        // The 300-token text exceeds the budget alone and still gets its own chunk.
        assert_eq!(chunks[0], &[6]);
        for chunk in &chunks[1..] {
            assert!(chunk.len() * lengths[chunk[0]] <= 100, "{chunk:?}");
        }
        let mut seen: Vec<usize> = chunks.concat();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
    }
}
