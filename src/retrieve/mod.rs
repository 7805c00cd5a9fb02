//! Two-phase retrieval (spec, "Retrieval"): similarity recall, then value-aware selection.
//!
//! `queries -> validate, normalise -> Phase A: a KeyIndex's best k1 keys at or above delta ->
//! pool expansion (every memory filed under a kept key) -> Phase B: z-scores, mix, top-k2 ->
//! hits`. Phase A selects on raw similarity (a z-score within a row is monotone) and is asked of
//! the index through the [`KeyIndex`] trait, on its device; Phase B's statistics come from the
//! small pools only, computed on the host in f64 (`rank.rs` says why, and how ties are exact).

mod rank;

use serde::{Deserialize, Serialize};

use crate::config::RetrievalConfig;
use crate::error::Result;
use crate::index::{KeyIndex, KeyMatch};
use crate::store::table::MemoryTable;
use crate::store::{normalise_rows, Memory};

pub(crate) use rank::{Candidate, Ranked};

/// One retrieved memory: what the agent is given, what the memory is, and the figures that
/// ranked it. Serialised (JSON), the fields appear in this order; `intent`, `success` and
/// `metadata` default when absent, so hits written before they existed still parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Memory id.
    pub id: u64,
    /// The intent the memory was written for.
    #[serde(default)]
    pub intent: String,
    /// The experience text to inject.
    pub experience: String,
    /// Whether the episode that wrote the memory succeeded.
    #[serde(default)]
    pub success: bool,
    /// The memory's user metadata.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// The memory's utility at retrieval time.
    pub q: f32,
    /// Cosine similarity between the query and the memory's intent key.
    pub sim: f32,
    /// Standardised similarity (pool or fixed statistics); clipped only with
    /// [`RetrievalConfig::clip_zsim`].
    pub zsim: f32,
    /// Standardised utility over the pool, clipped to [-z_clip, z_clip].
    pub zq: f32,
    /// `(1 - lambda) * zsim + lambda * zq`, computed in f64 and rounded.
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
    let Some(recalled) = phase_a(index, queries, dim, cfg)? else {
        return Ok(vec![Vec::new(); queries.len() / dim]);
    };
    let pools: Vec<Vec<Candidate>> = recalled
        .iter()
        .map(|matches| {
            pool(matches.iter().flat_map(|m| {
                table.members(m.key).iter().map(move |&slot| Candidate {
                    slot,
                    id: table.at(slot).id,
                    sim: m.sim,
                    q: table.at(slot).q,
                    visits: table.at(slot).visits,
                })
            }))
        })
        .collect();
    Ok(phase_b(&pools, cfg, |slot| table.at(slot)))
}

/// Phase A for `queries`: the config checked, the rows checked and normalised, and each row's
/// best k1 keys at or above delta (ordered by similarity, then key id). `None` when the index
/// holds no key (every query then gets no hit).
pub(crate) fn phase_a(
    index: &dyn KeyIndex,
    queries: &[f32],
    dim: usize,
    cfg: &RetrievalConfig,
) -> Result<Option<Vec<Vec<KeyMatch>>>> {
    cfg.validate()?;
    if queries.len() / dim == 0 {
        return Ok(Some(Vec::new()));
    }
    // Validate and normalise on the host: B x d is small, and errors can name the row.
    let unit = normalise_rows("query", queries, dim)?;
    if index.num_keys() == 0 {
        return Ok(None);
    }
    // No query keeps more keys than there are, however large k1 is.
    index
        .search(&unit, cfg.k1.min(index.num_keys()), cfg.delta)
        .map(Some)
}

/// A pool in tie-break order: similarity desc, then memory id asc (a position then stands for
/// the tie rule).
pub(crate) fn pool(candidates: impl Iterator<Item = Candidate>) -> Vec<Candidate> {
    let mut pool: Vec<Candidate> = candidates.collect();
    pool.sort_by(|a, b| b.sim.total_cmp(&a.sim).then(a.id.cmp(&b.id)));
    pool
}

/// Phase B over the pools: each query's picks, best first, as (candidate, figures).
pub(crate) fn phase_b_picks(
    pools: &[Vec<Candidate>],
    cfg: &RetrievalConfig,
) -> Vec<Vec<(Candidate, Ranked)>> {
    rank::rank(pools, cfg)
        .into_iter()
        .zip(pools)
        .map(|(picks, pool)| picks.into_iter().map(|r| (pool[r.position], r)).collect())
        .collect()
}

/// A hit: a pick and the record of its memory.
pub(crate) fn hit(c: &Candidate, r: &Ranked, memory: &Memory) -> Hit {
    Hit {
        id: c.id,
        intent: memory.intent.clone(),
        experience: memory.experience.clone(),
        success: memory.success,
        metadata: memory.metadata.clone(),
        q: c.q,
        sim: c.sim,
        zsim: r.zsim,
        zq: r.zq,
        score: r.score,
    }
}

/// Phase B over the pools, and the hits it picks, each read from `memory(slot)`.
pub(crate) fn phase_b<'m>(
    pools: &[Vec<Candidate>],
    cfg: &RetrievalConfig,
    memory: impl Fn(u32) -> &'m Memory,
) -> Vec<Vec<Hit>> {
    phase_b_picks(pools, cfg)
        .into_iter()
        .map(|picks| {
            picks
                .iter()
                .map(|(c, r)| hit(c, r, memory(c.slot)))
                .collect()
        })
        .collect()
}
