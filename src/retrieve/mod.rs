//! Two-phase retrieval (spec, "Retrieval"): similarity recall, then value-aware selection.
//!
//! `queries -> normalise -> scan (Phase A: tiled matmul + top-k1 + delta gate) -> pool expansion
//! through shared intents -> rank (Phase B: z-scores, mix, top-k2) -> hits`.
//! Phase A selects on raw similarity (a z-score within a row is monotone); statistics come from
//! the small pools only.

mod rank;
mod scan;
mod simd;

pub(crate) use simd::read_sum;
pub(crate) mod topk;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::bank::{normalise_rows, Bank};
use crate::config::RetrievalConfig;
use crate::error::{Error, Result};

pub(crate) use scan::top_keys;

/// One retrieved memory with the figures that ranked it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Memory id.
    pub id: u64,
    /// The experience text to inject.
    pub experience: String,
    /// The memory's utility at retrieval time.
    pub q: f32,
    /// Cosine similarity between the query and the memory's intent key.
    pub sim: f32,
    /// Standardised similarity (pool or fixed statistics), clipped.
    pub zsim: f32,
    /// Standardised utility over the pool, clipped.
    pub zq: f32,
    /// `(1 - lambda) * zsim + lambda * zq`.
    pub score: f32,
}

pub(crate) fn retrieve(
    bank: &Bank,
    queries: &Tensor,
    cfg: &RetrievalConfig,
) -> Result<Vec<Vec<Hit>>> {
    cfg.validate()?;
    let dim = bank.config().dim;
    let (b, d) = match queries.dims() {
        &[b, d] => (b, d),
        &[d] => (1, d),
        other => {
            return Err(Error::DimensionMismatch {
                what: "query batch (rank)",
                expected: 2,
                got: other.len(),
            })
        }
    };
    if d != dim {
        return Err(Error::DimensionMismatch {
            what: "query",
            expected: dim,
            got: d,
        });
    }
    if b == 0 {
        return Ok(Vec::new());
    }
    // Validate and normalise on the host: B x d is small, and errors can name the row.
    let host: Vec<f32> = queries.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let unit = normalise_rows("query", &host, dim)?;
    if bank.num_intents() == 0 {
        return Ok(vec![Vec::new(); b]);
    }
    // f32 here: the scan casts to the key dtype only where a matmul needs it.
    let unit = Tensor::from_vec(unit, (b, dim), &Device::Cpu)?.to_device(bank.device())?;

    // Phase A.
    let top = top_keys(&unit, &bank.keys_view()?, cfg.k1)?;
    let mut pools = Vec::with_capacity(b);
    for (row_sims, row_keys) in top.sims.iter().zip(&top.rows) {
        let mut pool = Vec::new();
        for (&sim, &key) in row_sims.iter().zip(row_keys) {
            // Lists are best first, so the gate cuts a suffix.
            if sim < cfg.delta {
                break;
            }
            for &slot in bank.members_of_key(key as usize) {
                pool.push(rank::Candidate { slot, sim });
            }
        }
        // Tie-break order: similarity desc, then memory id asc.
        pool.sort_by(|a, b| {
            b.sim
                .total_cmp(&a.sim)
                .then(bank.memory_at(a.slot).id.cmp(&bank.memory_at(b.slot).id))
        });
        pools.push(pool);
    }

    // Phase B.
    let ranked = rank::rank(&pools, &bank.utility_view()?, cfg)?;
    Ok(ranked
        .into_iter()
        .zip(&pools)
        .map(|(picks, pool)| {
            picks
                .into_iter()
                .map(|r| {
                    let c = pool[r.position];
                    let m = bank.memory_at(c.slot);
                    Hit {
                        id: m.id,
                        experience: m.experience.clone(),
                        q: m.q,
                        sim: c.sim,
                        zsim: r.zsim,
                        zq: r.zq,
                        score: r.score,
                    }
                })
                .collect()
        })
        .collect())
}
