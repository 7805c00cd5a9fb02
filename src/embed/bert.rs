//! A BERT encoder over packed, padding-free batches.
//!
//! Same weights and arithmetic as candle-transformers' `BertModel` (its [`Config`] parses
//! `config.json`), laid out for throughput instead of generality:
//!
//! - **Packed tokens.** A batch is one `[T, H]` matrix of all its tokens, with per-text lengths.
//!   Every linear layer is one GEMM over real tokens only: no padding rows, no `[B, L]` attention
//!   mask broadcast per layer.
//! - **Fused QKV.** Query, key and value weights are concatenated at load into one `[3H, H]`
//!   matrix, so each layer runs one wide GEMM instead of three narrow ones.
//! - **Fused CPU kernels.** On the CPU, bias, GELU, residual and LayerNorm fold into in-place
//!   passes over each GEMM output, and attention runs per text straight from the packed rows
//!   ([`super::fused`]).
//! - **Portable path.** Elsewhere (CUDA, Metal) the same arithmetic runs as candle tensor ops:
//!   packed rows are gathered into a length-sorted padded block, attended with a key mask, and
//!   scattered back; the embedder sorts texts by length so that block wastes little. Tests run
//!   this path on the CPU too and compare it with the fused one.

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
pub use candle_transformers::models::bert::{Config, HiddenAct};

use super::int8::kernels::Tier;
use super::int8::{Int8Layer, QuantizedLinear};
use crate::error::{Error, Result};
use crate::models::Precision;

/// Texts packed into one token stream: ids, token types and positions, one entry per token.
#[derive(Debug, Clone, Default)]
pub struct PackedBatch {
    /// Token ids of every text, one after the other.
    pub ids: Vec<u32>,
    /// Token type (segment) ids, parallel to `ids`.
    pub type_ids: Vec<u32>,
    /// Number of tokens of each text.
    pub lengths: Vec<usize>,
}

impl PackedBatch {
    /// Appends one text's tokens.
    pub fn push(&mut self, ids: &[u32], type_ids: &[u32]) {
        self.ids.extend_from_slice(ids);
        self.type_ids.extend_from_slice(type_ids);
        self.lengths.push(ids.len());
    }

    /// Total number of tokens.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Number of texts.
    pub fn texts(&self) -> usize {
        self.lengths.len()
    }

    /// Offset of each text's first token.
    pub fn offsets(&self) -> Vec<usize> {
        let mut at = 0;
        self.lengths
            .iter()
            .map(|&len| {
                let start = at;
                at += len;
                start
            })
            .collect()
    }
}

/// How the encoder computes; `Auto` picks the fastest correct path for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputePath {
    /// Fused kernels on the CPU, the portable tensor ops elsewhere.
    #[default]
    Auto,
    /// candle tensor ops only, with padded batched attention: what CUDA and Metal run.
    Portable,
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
    /// Host copies of the vectors the fused CPU kernels read (CPU models only).
    host: Option<HostParams>,
    /// The four linear layers in int8, when the encoder runs at [`Precision::Int8`].
    int8: Option<Int8Layer>,
}

struct HostParams {
    qkv_bias: Vec<f32>,
    attn_out_bias: Vec<f32>,
    attn_gamma: Vec<f32>,
    attn_beta: Vec<f32>,
    ffn_in_bias: Vec<f32>,
    ffn_out_bias: Vec<f32>,
    ffn_gamma: Vec<f32>,
    ffn_beta: Vec<f32>,
}

fn host_vec(t: Option<&Tensor>) -> candle_core::Result<Vec<f32>> {
    match t {
        Some(t) => t.to_dtype(DType::F32)?.to_vec1::<f32>(),
        None => candle_core::bail!("a layer lacks a bias"),
    }
}

impl HostParams {
    fn new(layer: &Layer) -> candle_core::Result<Self> {
        let norm = |n: &LayerNorm| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
            Ok((host_vec(Some(n.weight()))?, host_vec(n.bias())?))
        };
        let (attn_gamma, attn_beta) = norm(&layer.attn_norm)?;
        let (ffn_gamma, ffn_beta) = norm(&layer.ffn_norm)?;
        Ok(HostParams {
            qkv_bias: host_vec(layer.qkv.bias())?,
            attn_out_bias: host_vec(layer.attn_out.bias())?,
            attn_gamma,
            attn_beta,
            ffn_in_bias: host_vec(layer.ffn_in.bias())?,
            ffn_out_bias: host_vec(layer.ffn_out.bias())?,
            ffn_gamma,
            ffn_beta,
        })
    }
}

/// The BERT encoder: embeddings and transformer layers, no pooler.
pub struct BertEncoder {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    act: HiddenAct,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    max_positions: usize,
    vocab: usize,
    type_vocab: usize,
    eps: f32,
    path: ComputePath,
    /// The int8 kernels' instruction set, detected when int8 weights are set.
    tier: Option<Tier>,
}

fn linear(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> candle_core::Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Ok(Linear::new(weight, Some(bias)))
}

fn layer_norm(vb: &VarBuilder, dim: usize, eps: f64) -> candle_core::Result<LayerNorm> {
    let weight = vb.get(dim, "weight")?;
    let bias = vb.get(dim, "bias")?;
    Ok(LayerNorm::new(weight, bias, eps))
}

impl BertEncoder {
    /// Loads the weights of a BERT checkpoint (with or without a `bert.` prefix).
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(Error::Model {
                path: "config.json".into(),
                problem: format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    config.hidden_size, config.num_attention_heads
                ),
            });
        }
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let embedding = |name: &str, rows: usize| -> candle_core::Result<Embedding> {
            Ok(Embedding::new(emb.pp(name).get((rows, h), "weight")?, h))
        };
        let word = embedding("word_embeddings", config.vocab_size)?;
        let position = embedding("position_embeddings", config.max_position_embeddings)?;
        let token_type = embedding("token_type_embeddings", config.type_vocab_size)?;
        let embed_norm = layer_norm(&emb.pp("LayerNorm"), h, eps)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| -> candle_core::Result<Layer> {
                let vb = vb.pp(format!("encoder.layer.{i}"));
                let attn = vb.pp("attention");
                let own = attn.pp("self");
                let q = linear(&own.pp("query"), h, h)?;
                let k = linear(&own.pp("key"), h, h)?;
                let v = linear(&own.pp("value"), h, h)?;
                let weight = Tensor::cat(&[q.weight(), k.weight(), v.weight()], 0)?;
                let bias = [q.bias(), k.bias(), v.bias()]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>();
                let qkv = Linear::new(weight, Some(Tensor::cat(&bias, 0)?));
                let mut layer = Layer {
                    qkv,
                    attn_out: linear(&attn.pp("output.dense"), h, h)?,
                    attn_norm: layer_norm(&attn.pp("output.LayerNorm"), h, eps)?,
                    ffn_in: linear(&vb.pp("intermediate.dense"), h, config.intermediate_size)?,
                    ffn_out: linear(&vb.pp("output.dense"), config.intermediate_size, h)?,
                    ffn_norm: layer_norm(&vb.pp("output.LayerNorm"), h, eps)?,
                    host: None,
                    int8: None,
                };
                if vb.device().is_cpu() {
                    layer.host = Some(HostParams::new(&layer)?);
                }
                Ok(layer)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(BertEncoder {
            word,
            position,
            token_type,
            embed_norm,
            layers,
            act: config.hidden_act,
            heads: config.num_attention_heads,
            head_dim: h / config.num_attention_heads,
            hidden: h,
            max_positions: config.max_position_embeddings,
            vocab: config.vocab_size,
            type_vocab: config.type_vocab_size,
            eps: eps as f32,
            path: ComputePath::Auto,
            tier: None,
        })
    }

    /// Precision of the linear layers.
    pub fn precision(&self) -> Precision {
        if self.tier.is_some() {
            Precision::Int8
        } else {
            Precision::F32
        }
    }

    /// `(out, in)` of each layer's four linear layers, in [`super::int8::LINEARS`] order.
    pub(crate) fn linear_shapes(&self) -> Vec<[(usize, usize); 4]> {
        let shape = |l: &Linear| {
            let (n, k) = l.weight().dims2().unwrap_or((0, 0));
            (n, k)
        };
        self.layers
            .iter()
            .map(|l| {
                [
                    shape(&l.qkv),
                    shape(&l.attn_out),
                    shape(&l.ffn_in),
                    shape(&l.ffn_out),
                ]
            })
            .collect()
    }

    /// Quantizes every layer's four linear layers per output channel (see [`super::int8`]).
    pub(crate) fn quantize_linears(&self) -> Result<Vec<[QuantizedLinear; 4]>> {
        let quantize = |l: &Linear| -> Result<QuantizedLinear> {
            let (n, k) = l.weight().dims2()?;
            let w = l
                .weight()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let q = QuantizedLinear::quantize(&w, n, k);
            if q.scale.iter().any(|s| !s.is_finite()) {
                return Err(Error::Model {
                    path: "model.safetensors".into(),
                    problem: "a linear layer holds NaN or infinite weights; it cannot be quantized"
                        .into(),
                });
            }
            Ok(q)
        };
        self.layers
            .iter()
            .map(|l| {
                Ok([
                    quantize(&l.qkv)?,
                    quantize(&l.attn_out)?,
                    quantize(&l.ffn_in)?,
                    quantize(&l.ffn_out)?,
                ])
            })
            .collect()
    }

    /// Runs the linear layers in int8 from now on, with these weights (shapes as
    /// [`BertEncoder::linear_shapes`]). CPU only: the int8 kernels are CPU kernels.
    pub(crate) fn set_int8(&mut self, layers: &[[QuantizedLinear; 4]]) -> Result<()> {
        let bad = |problem: &str| Error::Model {
            path: "model.safetensors".into(),
            problem: problem.to_string(),
        };
        if layers.len() != self.layers.len() {
            return Err(bad("int8 weights for another number of layers"));
        }
        if self.layers.iter().any(|l| l.host.is_none()) {
            return Err(Error::config(
                "precision",
                Precision::Int8,
                "int8 runs on the CPU only (use f32 on cuda and metal)",
            ));
        }
        let shapes = self.linear_shapes();
        let mut packed = Vec::with_capacity(layers.len());
        for (layer, shape) in layers.iter().zip(&shapes) {
            let fits = layer
                .iter()
                .zip(shape)
                .all(|(q, &(n, k))| q.n == n && q.k == k);
            let pack = |q: &QuantizedLinear| {
                q.pack().ok_or_else(|| {
                    bad("a linear layer deeper than the int8 kernels' exact sums allow (66,000)")
                })
            };
            if !fits {
                return Err(bad("int8 weights of another shape"));
            }
            packed.push(Int8Layer {
                qkv: pack(&layer[0])?,
                attn_out: pack(&layer[1])?,
                ffn_in: pack(&layer[2])?,
                ffn_out: pack(&layer[3])?,
            });
        }
        for (layer, int8) in self.layers.iter_mut().zip(packed) {
            layer.int8 = Some(int8);
        }
        self.tier = Some(Tier::detect());
        tracing::info!(kernels = Tier::detect().as_str(), "int8 linear layers");
        Ok(())
    }

    /// Chooses how the encoder computes (tests compare both paths on the CPU).
    pub fn set_compute_path(&mut self, path: ComputePath) {
        self.path = path;
    }

    /// Hidden size (the embedding dimension).
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Runs the encoder over a packed batch and returns the last hidden states, `[T, H]`.
    pub fn forward(&self, batch: &PackedBatch, device: &Device) -> Result<Tensor> {
        self.check(batch)?;
        let t = batch.tokens();
        let positions: Vec<u32> = batch
            .lengths
            .iter()
            .flat_map(|&len| 0..len as u32)
            .collect();
        let ids = Tensor::from_slice(&batch.ids, t, device)?;
        let type_ids = Tensor::from_slice(&batch.type_ids, t, device)?;
        let positions = Tensor::from_slice(&positions, t, device)?;
        let x = self
            .word
            .forward(&ids)?
            .add(&self.token_type.forward(&type_ids)?)?
            .add(&self.position.forward(&positions)?)?;
        let mut x = self.embed_norm.forward(&x)?;
        if self.tier.is_some() && self.path == ComputePath::Portable {
            return Err(Error::config(
                "compute path",
                "portable",
                "the int8 encoder runs on the fused CPU path only (the portable path is f32)",
            ));
        }
        if self.path == ComputePath::Auto && device.is_cpu() {
            for layer in &self.layers {
                if let Some(host) = &layer.host {
                    x = self.fused_layer(layer, host, &x, &batch.lengths)?;
                    continue;
                }
                return Err(Error::Model {
                    path: "model.safetensors".into(),
                    problem: "a CPU layer was loaded without its host parameters".into(),
                });
            }
            return Ok(x);
        }
        let plan = AttentionPlan::new(batch, device)?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &plan)?;
        }
        Ok(x)
    }

    /// One layer with the fused CPU kernels: four GEMMs, each followed by one in-place pass.
    fn fused_layer(
        &self,
        layer: &Layer,
        host: &HostParams,
        x: &Tensor,
        lengths: &[usize],
    ) -> Result<Tensor> {
        use super::fused::{BiasGelu, BiasResidualNorm, PackedAttention};
        let qkv = self.linear(x, &layer.qkv, layer.int8.as_ref().map(|q| &q.qkv))?;
        let context = qkv.apply_op1_no_bwd(&PackedAttention {
            bias: &host.qkv_bias,
            lengths,
            heads: self.heads,
            head_dim: self.head_dim,
        })?;
        let attn = self.linear(
            &context,
            &layer.attn_out,
            layer.int8.as_ref().map(|q| &q.attn_out),
        )?;
        attn.inplace_op2(
            x,
            &BiasResidualNorm {
                bias: &host.attn_out_bias,
                gamma: &host.attn_gamma,
                beta: &host.attn_beta,
                eps: self.eps,
            },
        )?;
        let inner = self.linear(&attn, &layer.ffn_in, layer.int8.as_ref().map(|q| &q.ffn_in))?;
        match self.act {
            HiddenAct::Gelu => inner.inplace_op1(&BiasGelu {
                bias: &host.ffn_in_bias,
            })?,
            // Rare activations: no fused kernel, plain tensor ops.
            HiddenAct::GeluApproximate | HiddenAct::Relu => {
                let bias =
                    Tensor::from_slice(&host.ffn_in_bias, host.ffn_in_bias.len(), x.device())?;
                let y = inner.broadcast_add(&bias)?;
                let y = if self.act == HiddenAct::Relu {
                    y.relu()?
                } else {
                    y.gelu()?
                };
                return self.finish_fused(layer, host, &attn, &y);
            }
        }
        self.finish_fused(layer, host, &attn, &inner)
    }

    fn finish_fused(
        &self,
        layer: &Layer,
        host: &HostParams,
        attn: &Tensor,
        inner: &Tensor,
    ) -> Result<Tensor> {
        use super::fused::BiasResidualNorm;
        let out = self.linear(
            inner,
            &layer.ffn_out,
            layer.int8.as_ref().map(|q| &q.ffn_out),
        )?;
        out.inplace_op2(
            attn,
            &BiasResidualNorm {
                bias: &host.ffn_out_bias,
                gamma: &host.ffn_gamma,
                beta: &host.ffn_beta,
                eps: self.eps,
            },
        )?;
        Ok(out)
    }

    /// `x W^T` of a linear layer on the fused CPU path, without its bias (the fused pass after
    /// it adds the bias): in int8 when the layer has int8 weights, else one f32 GEMM.
    fn linear(
        &self,
        x: &Tensor,
        linear: &Linear,
        int8: Option<&super::int8::Int8Linear>,
    ) -> Result<Tensor> {
        match (int8, self.tier) {
            (Some(q), Some(tier)) => Ok(q.forward(x, tier)?),
            _ => Ok(x.apply_op2_no_bwd(linear.weight(), &super::fused::Linear)?),
        }
    }

    fn layer(&self, layer: &Layer, x: &Tensor, plan: &AttentionPlan) -> Result<Tensor> {
        let qkv = layer.qkv.forward(x)?;
        let context = plan.attend(&qkv, self.heads, self.head_dim)?;
        let attn = layer.attn_out.forward(&context)?;
        let x = layer.attn_norm.forward(&attn.add(x)?)?;
        let inner = layer.ffn_in.forward(&x)?;
        let inner = match self.act {
            HiddenAct::Gelu => inner.gelu_erf()?,
            HiddenAct::GeluApproximate => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        let out = layer.ffn_out.forward(&inner)?;
        Ok(layer.ffn_norm.forward(&out.add(&x)?)?)
    }

    /// Rejects ids the embedding tables do not have, instead of reading out of bounds.
    fn check(&self, batch: &PackedBatch) -> Result<()> {
        if let Some(&id) = batch.ids.iter().find(|&&id| id as usize >= self.vocab) {
            return Err(Error::Tokenizer(format!(
                "token id {id} is outside the model's vocabulary of {}",
                self.vocab
            )));
        }
        if let Some(&id) = batch
            .type_ids
            .iter()
            .find(|&&id| id as usize >= self.type_vocab)
        {
            return Err(Error::Tokenizer(format!(
                "token type id {id} is outside the model's {} types",
                self.type_vocab
            )));
        }
        if let Some(&len) = batch
            .lengths
            .iter()
            .find(|&&l| l > self.max_positions || l == 0)
        {
            return Err(Error::Tokenizer(format!(
                "a text of {len} tokens does not fit the model's 1..={} positions",
                self.max_positions
            )));
        }
        Ok(())
    }
}

/// What the portable attention needs to know about a batch, built once for every layer:
/// gather into `[B, L]` blocks, attend with a key mask, scatter back.
struct AttentionPlan {
    /// For each padded slot, the packed row it reads (`T` = an all-zero row).
    gather: Tensor,
    /// For each packed row, its padded slot.
    scatter: Tensor,
    /// 0 for real keys, -inf for padding, shaped `[B, 1, 1, L]`.
    mask: Tensor,
    texts: usize,
    max_len: usize,
}

impl AttentionPlan {
    fn new(batch: &PackedBatch, device: &Device) -> Result<Self> {
        let max_len = batch.lengths.iter().copied().max().unwrap_or(0);
        let (b, t) = (batch.texts(), batch.tokens());
        let mut gather = vec![t as u32; b * max_len];
        let mut scatter = Vec::with_capacity(t);
        let mut mask = vec![f32::NEG_INFINITY; b * max_len];
        let mut at = 0u32;
        for (i, &len) in batch.lengths.iter().enumerate() {
            for p in 0..len {
                gather[i * max_len + p] = at;
                scatter.push((i * max_len + p) as u32);
                mask[i * max_len + p] = 0.0;
                at += 1;
            }
        }
        Ok(AttentionPlan {
            gather: Tensor::from_vec(gather, b * max_len, device)?,
            scatter: Tensor::from_vec(scatter, t, device)?,
            mask: Tensor::from_vec(mask, (b, 1, 1, max_len), device)?,
            texts: b,
            max_len,
        })
    }

    /// Multi-head attention of each text with itself: `[T, 3H]` fused QKV in, `[T, H]` out.
    fn attend(&self, qkv: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
        let three_h = qkv.dim(1)?;
        let h = three_h / 3;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let (b, l) = (self.texts, self.max_len);
        let zero = Tensor::zeros((1, three_h), qkv.dtype(), qkv.device())?;
        let padded = Tensor::cat(&[qkv, &zero], 0)?
            .index_select(&self.gather, 0)?
            .reshape((b, l, 3, heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?; // [3, B, heads, L, d]
        let q = padded.i(0)?.contiguous()?;
        let k = padded.i(1)?.contiguous()?;
        let v = padded.i(2)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&self.mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs
            .matmul(&v)? // [B, heads, L, d]
            .transpose(1, 2)?
            .reshape((b * l, h))?;
        Ok(context.index_select(&self.scatter, 0)?)
    }
}

/// Sums the token states of each text (`[T, H]` -> `[B, H]`) and divides by its length.
pub fn mean_pool(states: &Tensor, batch: &PackedBatch) -> Result<Tensor> {
    let device = states.device();
    let segment: Vec<u32> = batch
        .lengths
        .iter()
        .enumerate()
        .flat_map(|(i, &len)| std::iter::repeat_n(i as u32, len))
        .collect();
    let segment = Tensor::from_vec(segment, batch.tokens(), device)?;
    let (_, h) = states.dims2()?;
    let sums = Tensor::zeros((batch.texts(), h), DType::F32, device)?.index_add(
        &segment,
        &states.to_dtype(DType::F32)?,
        0,
    )?;
    let lengths: Vec<f32> = batch.lengths.iter().map(|&l| l as f32).collect();
    let lengths = Tensor::from_vec(lengths, (batch.texts(), 1), device)?;
    Ok(sums.broadcast_div(&lengths)?)
}

/// The state of each text's first token (`[CLS]`), `[B, H]`.
pub fn cls_pool(states: &Tensor, batch: &PackedBatch) -> Result<Tensor> {
    let offsets: Vec<u32> = batch.offsets().into_iter().map(|o| o as u32).collect();
    let offsets = Tensor::from_vec(offsets, batch.texts(), states.device())?;
    Ok(states.index_select(&offsets, 0)?.to_dtype(DType::F32)?)
}

/// Scales each row to unit L2 norm (rows of norm below 1e-12 are divided by 1e-12, as
/// `torch.nn.functional.normalize` does).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&norms)?)
}
