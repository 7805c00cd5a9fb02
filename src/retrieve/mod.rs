//! Two-phase retrieval (spec, "Retrieval"): similarity recall, then value-aware selection.
//!
//! `queries -> validate, normalise -> Phase A: a KeyIndex's best k1 keys at or above delta ->
//! pool expansion (every memory filed under a kept key) -> Phase B: z-scores, mix, top-k2 ->
//! hits`. Phase A selects on raw similarity (a z-score within a row is monotone) and is asked of
//! the index through the [`KeyIndex`] trait; statistics come from the small pools only.

mod rank;

use serde::{Deserialize, Serialize};

use crate::config::RetrievalConfig;
use crate::error::Result;
use crate::index::KeyIndex;
use crate::store::normalise_rows;
use crate::store::table::MemoryTable;

pub(crate) use rank::Candidate;

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

/// Retrieval for `queries` (`B x dim` host rows, any non-zero finite vectors): Phase A through
/// `index`, pools from `table`, Phase B.
pub(crate) fn retrieve(
    index: &dyn KeyIndex,
    table: &MemoryTable,
    queries: &[f32],
    dim: usize,
    cfg: &RetrievalConfig,
) -> Result<Vec<Vec<Hit>>> {
    cfg.validate()?;
    let b = queries.len() / dim;
    if b == 0 {
        return Ok(Vec::new());
    }
    // Validate and normalise on the host: B x d is small, and errors can name the row.
    let unit = normalise_rows("query", queries, dim)?;
    if index.num_keys() == 0 {
        return Ok(vec![Vec::new(); b]);
    }

    // Phase A.
    let recalled = index.search(&unit, cfg.k1, cfg.delta)?;
    let mut pools = Vec::with_capacity(b);
    for matches in &recalled {
        let mut pool = Vec::new();
        for m in matches {
            for &slot in table.members(m.key) {
                let memory = table.at(slot);
                pool.push(Candidate {
                    slot,
                    id: memory.id,
                    sim: m.sim,
                    q: memory.q,
                });
            }
        }
        // Tie-break order: similarity desc, then memory id asc.
        pool.sort_by(|a, b| b.sim.total_cmp(&a.sim).then(a.id.cmp(&b.id)));
        pools.push(pool);
    }

    // Phase B.
    let ranked = rank::rank(&pools, cfg, index_device(index))?;
    Ok(ranked
        .into_iter()
        .zip(&pools)
        .map(|(picks, pool)| {
            picks
                .into_iter()
                .map(|r| {
                    let c = pool[r.position];
                    Hit {
                        id: c.id,
                        experience: table.at(c.slot).experience.clone(),
                        q: c.q,
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

/// The device Phase B runs on: the index's when it is a device index, else the CPU.
fn index_device(index: &dyn KeyIndex) -> candle_core::Device {
    index.device().cloned().unwrap_or(candle_core::Device::Cpu)
}
