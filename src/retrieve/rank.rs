//! Phase B: value-aware selection over each query's candidate pool, as tensor ops.
//!
//! The pools of a batch are laid out as a padded `B x P` matrix (P = largest pool) with a
//! validity mask, similarities and Q values, uploaded to the device (a few kilobytes: pools are
//! small); both z-scores, the mix and the top-k2 are tensor ops, and only `B x k2` positions and
//! scores come back.
//!
//! Conventions (spec, "Phase B"):
//! - z-scores use the population std; std is taken as 1 when the pool has one member, when
//!   std <= 1e-9, or when every value is equal (an exact test, so a pool of equal Q gives zq = 0
//!   up to rounding however f32 rounds the mean).
//! - both z-scores are clipped to [-z_clip, z_clip] (in `pool` mode |zsim| <= sqrt(P - 1) anyway).
//! - `q_min` removes members before the statistics are taken.
//! - Columns are in tie-break order (similarity desc, memory id asc), so the top-k's
//!   "lower position first" on equal scores is the spec's tie rule.
//! - Exploration: a query explores with probability epsilon; it then ranks its (filtered) pool
//!   by uniform random keys instead of scores, which picks k2 members uniformly without
//!   replacement. Its hits still carry their real zsim, zq and score.

use candle_core::{DType, Device, Tensor, D};

use crate::config::{RetrievalConfig, ZSim};
use crate::error::Result;
use crate::index::topk::topk_indices;
use crate::rng::SplitMix64;

/// One candidate: a memory (its table slot for this call, id and Q) and the similarity of its
/// intent key to the query.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) slot: u32,
    pub(crate) id: u64,
    pub(crate) sim: f32,
    pub(crate) q: f32,
}

/// One selected candidate: its position in the pool and its Phase B figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ranked {
    pub(crate) position: usize,
    pub(crate) zsim: f32,
    pub(crate) zq: f32,
    pub(crate) score: f32,
}

/// Top-k2 pool positions per query, and four planes (valid, zsim, zq, score) of the same shape.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
type Picks = (Vec<Vec<u32>>, Vec<Vec<Vec<f32>>>);

/// A random key in [0, 1) exactly representable in f32 (24 bits).
fn exploration_key(rng: &mut SplitMix64) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32
}

/// Ranks each pool (already in tie-break order) on `device` and returns up to k2 picks per
/// query.
pub(crate) fn rank(
    pools: &[Vec<Candidate>],
    cfg: &RetrievalConfig,
    device: Device,
) -> Result<Vec<Vec<Ranked>>> {
    let b = pools.len();
    let p = pools.iter().map(Vec::len).max().unwrap_or(0);
    if p == 0 {
        return Ok(vec![Vec::new(); b]);
    }
    let device = &device;

    // Host layout: padded Q, sims, validity and (when exploring) random keys.
    let mut qs = vec![0f32; b * p];
    let mut sims = vec![0f32; b * p];
    let mut valid = vec![0f32; b * p];
    let mut explore = vec![0u8; b * p];
    let mut random_keys = vec![0f32; b * p];
    let mut any_exploring = false;
    let mut explore_rows = vec![0u32; b];
    for (i, pool) in pools.iter().enumerate() {
        for (j, c) in pool.iter().enumerate() {
            qs[i * p + j] = c.q;
            sims[i * p + j] = c.sim;
            valid[i * p + j] = 1.0;
        }
        if cfg.epsilon > 0.0 && !pool.is_empty() {
            let mut rng = SplitMix64::for_item(cfg.seed, i as u64);
            if rng.next_f64() < cfg.epsilon as f64 {
                any_exploring = true;
                explore_rows[i] = 1;
                for j in 0..pool.len() {
                    explore[i * p + j] = 1;
                    random_keys[i * p + j] = exploration_key(&mut rng);
                }
            }
        }
    }
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        if p <= crate::kernels::cuda::RANK_MAX && b <= 65_535 {
            let lens: Vec<u32> = pools.iter().map(|pool| pool.len() as u32).collect();
            // The kernel gathers Q through an index: Q is uploaded padded, in pool order, so
            // candidate (i, j) reads entry i * p + j.
            let slots: Vec<u32> = (0..(b * p) as u32).collect();
            let utility = Tensor::from_slice(&qs, b * p, device)?;
            let host = crate::kernels::cuda::Pools {
                b,
                sims: &sims,
                slots: &slots,
                lens: &lens,
                explore: &explore_rows,
                random_keys: &random_keys,
            };
            let (pos, picked) = cuda::rank(dev, &utility, p, &host, cfg)?;
            return Ok(hits(&pos, &picked));
        }
    }
    let sims = Tensor::from_vec(sims, (b, p), device)?;
    let mut valid = Tensor::from_vec(valid, (b, p), device)?;
    let q = Tensor::from_vec(qs, (b, p), device)?;
    if let Some(q_min) = cfg.q_min {
        valid = (valid * q.ge(q_min as f64)?.to_dtype(DType::F32)?)?;
    }
    let count = valid.sum_keepdim(D::Minus1)?;

    let zq = pool_zscore(&q, &valid, &count, cfg.z_clip)?;
    let zsim = match cfg.zsim {
        ZSim::Pool => pool_zscore(&sims, &valid, &count, cfg.z_clip)?,
        ZSim::Fixed { mean, std } => sims
            .affine(1.0 / std as f64, -(mean as f64) / std as f64)?
            .clamp(-cfg.z_clip, cfg.z_clip)?,
    };
    let lambda = cfg.lambda as f64;
    let score = (zsim.affine(1.0 - lambda, 0.0)? + zq.affine(lambda, 0.0)?)?;
    let is_valid = valid.gt(0.0)?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, (b, p), device)?;
    let mut key = is_valid.where_cond(&score, &neg_inf)?;
    if any_exploring {
        let explore = Tensor::from_vec(explore, (b, p), device)?;
        let random_keys = Tensor::from_vec(random_keys, (b, p), device)?;
        key = is_valid.where_cond(&explore.where_cond(&random_keys, &score)?, &neg_inf)?;
    }

    let pos = topk_indices(&key, cfg.k2)?;
    let picked = Tensor::stack(
        &[
            valid.gather(&pos, 1)?,
            zsim.gather(&pos, 1)?,
            zq.gather(&pos, 1)?,
            score.gather(&pos, 1)?,
        ],
        0,
    )?
    .to_device(&Device::Cpu)?;
    let picked: Vec<Vec<Vec<f32>>> = picked.to_vec3()?;
    let pos: Vec<Vec<u32>> = pos.to_vec2()?;
    Ok(hits(&pos, &picked))
}

/// Each query's picks from the top-k2 positions and the four planes (valid, zsim, zq, score)
/// at those positions; invalid picks (a pool smaller than k2) are dropped.
fn hits(pos: &[Vec<u32>], picked: &[Vec<Vec<f32>>]) -> Vec<Vec<Ranked>> {
    let mut out = Vec::with_capacity(pos.len());
    for (i, row) in pos.iter().enumerate() {
        let mut picks = Vec::with_capacity(row.len());
        for (j, &position) in row.iter().enumerate() {
            if picked[0][i][j] > 0.0 {
                picks.push(Ranked {
                    position: position as usize,
                    zsim: picked[1][i][j],
                    zq: picked[2][i][j],
                    score: picked[3][i][j],
                });
            }
        }
        out.push(picks);
    }
    out
}

/// Phase B as one CUDA kernel (kernels/rank.cu) instead of some forty tensor ops.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::{CudaDevice, Storage, Tensor};

    use crate::config::{RetrievalConfig, ZSim};
    use crate::error::Result;
    use crate::kernels::cuda::{rank as launch, Pools, RankParams};

    /// Positions `b x kk` and planes `4 x b x kk`, as the tensor path returns them.
    pub(super) fn rank(
        dev: &CudaDevice,
        utility: &Tensor,
        p: usize,
        pools: &Pools<'_>,
        cfg: &RetrievalConfig,
    ) -> Result<super::Picks> {
        let (fixed, fixed_mul, fixed_add) = match cfg.zsim {
            ZSim::Pool => (0, 1.0, 0.0),
            ZSim::Fixed { mean, std } => (
                1,
                (1.0 / std as f64) as f32,
                (-(mean as f64) / std as f64) as f32,
            ),
        };
        let params = RankParams {
            lambda: cfg.lambda,
            one_minus_lambda: (1.0 - cfg.lambda as f64) as f32,
            z_clip: cfg.z_clip,
            fixed_mul,
            fixed_add,
            q_min: cfg.q_min.unwrap_or(0.0),
            fixed,
            has_q_min: u32::from(cfg.q_min.is_some()),
            p: p as u32,
            k2: cfg.k2 as u32,
        };
        let utility = utility.contiguous()?;
        let (storage, layout) = utility.storage_and_layout();
        let Storage::Cuda(storage) = &*storage else {
            return Err(
                candle_core::Error::Msg("memrl-rank: Q is not on the CUDA device".into()).into(),
            );
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(candle_core::Error::Msg("memrl-rank: Q is not contiguous".into()).into());
        };
        let q = storage.as_cuda_slice::<f32>()?;
        let (pos, fields) = launch(dev, q, start..end, pools, params)?;
        let kk = cfg.k2.min(p);
        let pos = pos.chunks(kk).map(<[u32]>::to_vec).collect();
        let planes = fields
            .chunks(pools.b * kk)
            .map(|plane| plane.chunks(kk).map(<[f32]>::to_vec).collect())
            .collect();
        Ok((pos, planes))
    }
}

/// Row-wise z-score of `x` over the entries where `valid` is 1 (see the module docs).
fn pool_zscore(x: &Tensor, valid: &Tensor, count: &Tensor, clip: f32) -> Result<Tensor> {
    let denom = count.clamp(1.0, f64::INFINITY)?;
    let mean = (x * valid)?.sum_keepdim(D::Minus1)?.broadcast_div(&denom)?;
    let centred = (x.broadcast_sub(&mean)? * valid)?;
    let var = centred
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .broadcast_div(&denom)?;
    let std = var.sqrt()?;
    let is_valid = valid.gt(0.0)?;
    let big = Tensor::full(f32::MAX, x.shape(), x.device())?;
    let max = is_valid
        .where_cond(x, &big.neg()?)?
        .max_keepdim(D::Minus1)?;
    let min = is_valid.where_cond(x, &big)?.min_keepdim(D::Minus1)?;
    let spread = (std.gt(1e-9)?.to_dtype(DType::F32)?
        * count.gt(1.0)?.to_dtype(DType::F32)?
        * max.gt(&min)?.to_dtype(DType::F32)?)?;
    // std where it is meaningful, 1 elsewhere.
    let std = ((std * &spread)? + (1.0 - spread)?)?;
    Ok(centred.broadcast_div(&std)?.clamp(-clip, clip)?)
}
