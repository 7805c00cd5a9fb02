//! The parts of a sharded bank: one logical bank held by several [`Bank`]s (shards), with a
//! coordinator in front that makes every decision a single bank would make, with the same code,
//! so that a sharded bank returns exactly what one bank holding every memory would.
//!
//! The transport between coordinator and shards is not here (memrl's Python package runs shards
//! as Ray actors); this module is what both sides compute:
//!
//! - **Retrieval.** Each shard recalls ([`Bank::recall`]): its own best k1 keys at or above
//!   delta, ordered by similarity then key id, with what Phase B reads of every memory filed
//!   under them. The coordinator [`merge`]s the recalls: the global best k1 keys (the best k1 of
//!   the union of every shard's best k1, by the same order), the pools of those keys, and Phase
//!   B once, so pools, ties and seeded exploration are those of one bank; then it reads the
//!   records of the picked memories from their shards ([`Pick::hit`]).
//! - **Adds.** Key ids and memory ids are global. The coordinator asks every shard for each new
//!   row's nearest key ([`Bank::search_keys`] with k = 1 and delta = `dedup_sim`), keeps the best
//!   (ties to the lower key id), and [`place`]s the rows by the rule a bank applies itself
//!   (intent sharing within the batch included); new keys take ids from the highest
//!   [`Bank::next_key_id`] of the shards. Each memory then goes to the shard of its key, through
//!   [`Bank::add_placed`], which files it under exactly that key.
//! - **Learning** touches one memory at a time, so an outcome batch split by shard and applied on
//!   each shard gives each memory the value one bank would give it.
//! - **Stats**: [`stats`] over every shard's (id, Q) and key counts.
//!
//! ```
//! use memrl::shard::{self, Placement};
//! use memrl::{Bank, BankConfig, KeyId, NewMemory, RetrievalConfig};
//! let shards = [
//!     Bank::in_memory(BankConfig::new(2, "toy"))?,
//!     Bank::in_memory(BankConfig::new(2, "toy"))?,
//! ];
//! // The coordinator chose ids and keys (here by hand): memory 0 under key 0 on shard 0,
//! // memory 1 under key 1 on shard 1.
//! let a = NewMemory::new("a", "x").id(0).embedding(vec![1.0, 0.0]);
//! let b = NewMemory::new("b", "y").id(1).embedding(vec![0.0, 1.0]);
//! shards[0].add_placed(vec![(a, Placement::New(KeyId(0)))])?;
//! shards[1].add_placed(vec![(b, Placement::New(KeyId(1)))])?;
//! let cfg = RetrievalConfig {
//!     delta: 0.0,
//!     ..Default::default()
//! };
//! let query = vec![vec![0.6f32, 0.8]];
//! let recalls = shards
//!     .iter()
//!     .map(|s| s.recall(&query, &cfg))
//!     .collect::<memrl::Result<Vec<_>>>()?;
//! let picks = shard::merge(&recalls, &cfg)?;
//! let best = picks[0][0];
//! assert_eq!((best.id, best.shard), (1, 1)); // the closer memory, which shard 1 holds
//! let hit = best.hit(&shards[best.shard].get(best.id).unwrap());
//! assert_eq!(hit.experience, "y");
//! # Ok::<(), memrl::Error>(())
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::RetrievalConfig;
use crate::error::{Error, Result};
use crate::index::{KeyId, KeyMatch};
use crate::retrieve::{self, Candidate, Hit};
use crate::store::{self, normalise_rows, Memory, Stats};

#[cfg(doc)]
use crate::Bank;

pub use crate::store::Placement;

/// One shard's recall of one query ([`Bank::recall`]): its best k1 keys at or above delta, by
/// similarity then key id, and every memory filed under them, with what Phase B reads of each
/// (the records stay on the shard until [`merge`] has picked the hits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    /// The keys, best first.
    pub keys: Vec<KeyMatch>,
    /// The memories filed under those keys.
    pub members: Vec<Member>,
}

/// A memory of a recalled pool: what Phase B reads of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The key it is filed under.
    pub key: KeyId,
    /// Memory id.
    pub id: u64,
    /// Its utility.
    pub q: f32,
    /// The outcomes that have updated it.
    pub visits: u64,
}

/// One hit picked by [`merge`], before its record is read: the shard (index into the
/// recalls) that holds the memory, and every figure of the [`Hit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    /// The shard that holds the memory.
    pub shard: usize,
    /// Memory id.
    pub id: u64,
    /// Its utility when recalled.
    pub q: f32,
    /// Similarity of its key to the query.
    pub sim: f32,
    /// Standardised similarity.
    pub zsim: f32,
    /// Standardised utility.
    pub zq: f32,
    /// Its score.
    pub score: f32,
}

impl Pick {
    /// The hit, given the memory's record (read from [`Pick::shard`]).
    pub fn hit(&self, memory: &Memory) -> Hit {
        Hit {
            id: self.id,
            intent: memory.intent.clone(),
            experience: memory.experience.clone(),
            success: memory.success,
            metadata: memory.metadata.clone(),
            q: self.q,
            sim: self.sim,
            zsim: self.zsim,
            zq: self.zq,
            score: self.score,
        }
    }
}

/// The rows of an add, placed ([`place`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// The rows unit-normalised, as a bank stores them.
    pub unit: Vec<f32>,
    /// Where each row is filed.
    pub keys: Vec<Placement>,
}

/// Retrieval over shards: `recalls[s][i]` is shard `s`'s recall of query `i` (every shard
/// recalled the same queries with `cfg`). Keeps the best `cfg.k1` keys of all shards, pools
/// their members and runs Phase B once: the picks one bank holding every shard's memories
/// makes, best first; [`Pick::hit`] with each memory's record gives the hits.
pub fn merge(recalls: &[Vec<Recall>], cfg: &RetrievalConfig) -> Result<Vec<Vec<Pick>>> {
    cfg.validate()?;
    let queries = recalls.first().map_or(0, Vec::len);
    if let Some((s, r)) = recalls.iter().enumerate().find(|(_, r)| r.len() != queries) {
        return Err(Error::value(
            "recalls",
            format!(
                "shard {s} recalled {} queries, shard 0 {queries}: every shard recalls the same queries",
                r.len()
            ),
        ));
    }
    // The shard of each candidate, by its slot.
    let mut shard_of: Vec<usize> = Vec::new();
    let mut pools = Vec::with_capacity(queries);
    for i in 0..queries {
        let mut keys: Vec<KeyMatch> = recalls
            .iter()
            .flat_map(|shard| shard[i].keys.iter().copied())
            .collect();
        keys.sort_by(|a, b| b.sim.total_cmp(&a.sim).then(a.key.cmp(&b.key)));
        keys.truncate(cfg.k1);
        let kept: HashMap<KeyId, f32> = keys.iter().map(|m| (m.key, m.sim)).collect();
        let mut candidates = Vec::new();
        for (s, shard) in recalls.iter().enumerate() {
            for m in &shard[i].members {
                if let Some(&sim) = kept.get(&m.key) {
                    let slot = u32::try_from(shard_of.len())
                        .map_err(|_| Error::value("recalls", "more than 2^32 memories recalled"))?;
                    shard_of.push(s);
                    candidates.push(Candidate {
                        slot,
                        id: m.id,
                        sim,
                        q: m.q,
                        visits: m.visits,
                    });
                }
            }
        }
        pools.push(retrieve::pool(candidates.into_iter()));
    }
    Ok(retrieve::phase_b_picks(&pools, cfg)
        .into_iter()
        .map(|picks| {
            picks
                .into_iter()
                .map(|(c, r)| Pick {
                    shard: shard_of[c.slot as usize],
                    id: c.id,
                    q: c.q,
                    sim: c.sim,
                    zsim: r.zsim,
                    zq: r.zq,
                    score: r.score,
                })
                .collect()
        })
        .collect())
}

/// Intent sharing for an add over shards: `rows` (`n x dim`, the intents' embeddings as given),
/// `best_existing[i]` the nearest key of row `i` at or above `dedup_sim` over every shard (ties
/// to the lower key id), `next_key_id` the highest [`Bank::next_key_id`] of the shards. Rows
/// join an existing key, a key an earlier row creates, or a new key, by the rule a bank applies
/// itself; with `dedup_sim >= 1` (no sharing) every row gets a new key.
pub fn place(
    rows: &[f32],
    dim: usize,
    best_existing: &[Option<KeyMatch>],
    dedup_sim: f32,
    next_key_id: u64,
) -> Result<Placed> {
    if dim == 0 || !rows.len().is_multiple_of(dim) {
        return Err(Error::DimensionMismatch {
            what: "intent embeddings (length not a multiple of the dimension)",
            expected: dim,
            got: rows.len(),
        });
    }
    let n = rows.len() / dim;
    if best_existing.len() != n {
        return Err(Error::value(
            "best_existing",
            format!("{} entries for {n} rows", best_existing.len()),
        ));
    }
    let unit = normalise_rows("intent embedding", rows, dim)?;
    let keys = if dedup_sim < 1.0 {
        store::place_rows(&unit, dim, best_existing, dedup_sim, next_key_id)
    } else {
        (0..n as u64)
            .map(|i| Placement::New(KeyId(next_key_id + i)))
            .collect()
    };
    Ok(Placed { unit, keys })
}

/// The stats of a sharded bank ([`crate::Bank::stats`] of one bank holding every memory): every
/// shard's (id, Q) pairs, and the sums of their key counts ([`Stats::intents`] and
/// [`Stats::shared_intents`]; a key lives on one shard).
pub fn stats(
    q_by_id: Vec<(u64, f32)>,
    intents: usize,
    shared_intents: usize,
    bins: usize,
    extremes: usize,
) -> Stats {
    Stats::summarise(q_by_id, intents, shared_intents, bins, extremes)
}
