//! Shared helpers for the integration tests: a plain scalar reference of the spec (no candle)
//! and generators of exactly representable unit vectors.
#![allow(dead_code)]

use memrl::{Bank, BankConfig, Device, Hit, RetrievalConfig, ZSim};

/// The device the engine runs on in these tests: `MEMRL_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`,
/// `metal`), CPU when unset. The references stay on the CPU, so on a GPU every test compares the
/// device's results with the CPU's (`MEMRL_TEST_DEVICE=cuda cargo test --features cuda`).
pub fn device() -> Device {
    let spec = std::env::var("MEMRL_TEST_DEVICE").unwrap_or_else(|_| "cpu".to_string());
    match memrl::parse_device(&spec) {
        Ok(device) => device,
        Err(e) => panic!("MEMRL_TEST_DEVICE={spec}: {e}"),
    }
}

/// SplitMix64, written again from the published algorithm so the reference does not share code
/// with the engine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    pub fn for_item(seed: u64, item: u64) -> Rng {
        let mut mixer = Rng(seed ^ item.wrapping_mul(0xD1B54A32D192ED03));
        Rng(mixer.next_u64())
    }
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn key_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }
    pub fn gaussian(&mut self) -> f32 {
        // Box-Muller.
        let u1 = self.unit_f64().max(1e-300);
        let u2 = self.unit_f64();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

pub fn normalise(v: &[f32]) -> Vec<f32> {
    let n = v
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    v.iter().map(|&x| (x as f64 / n) as f32).collect()
}

pub fn random_unit(rng: &mut Rng, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| rng.gaussian()).collect();
    normalise(&v)
}

/// A unit vector of dimension 16 whose components are multiples of 1/4 (sixteen entries in
/// {0, ±1, ±2} with squares summing to 16) or of 1/2 (four ±1): dot products between such
/// vectors are exact in f16, f32 and f64, so every implementation computes the same similarity.
pub fn dyadic_unit(pattern: u64) -> Vec<f32> {
    let mut rng = Rng(pattern);
    let dim = 16;
    let mut v = vec![0f32; dim];
    let mut positions: Vec<usize> = (0..dim).collect();
    for i in (1..dim).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        positions.swap(i, j);
    }
    let sign = |rng: &mut Rng| if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
    if rng.next_u64().is_multiple_of(3) {
        for &p in &positions[..4] {
            v[p] = 0.5 * sign(&mut rng);
        }
    } else {
        let twos = (rng.next_u64() % 5) as usize; // 0..=4 entries of ±2
        let ones = 16 - 4 * twos;
        for &p in &positions[..twos] {
            v[p] = 0.5 * sign(&mut rng);
        }
        for &p in &positions[twos..twos + ones] {
            v[p] = 0.25 * sign(&mut rng);
        }
    }
    v
}

#[derive(Debug, Clone)]
pub struct RefMemory {
    pub id: u64,
    pub key: usize,
    pub q: f32,
    pub experience: String,
}

/// The spec, computed the obvious way in f64.
#[derive(Debug, Default)]
pub struct RefBank {
    pub keys: Vec<Vec<f32>>,
    pub memories: Vec<RefMemory>,
    pub dedup_sim: f32,
}

#[derive(Debug, Clone)]
pub struct RefHit {
    pub id: u64,
    pub q: f32,
    pub sim: f64,
    pub zsim: f64,
    pub zq: f64,
    pub score: f64,
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Population z-scores, std taken as 1 for one value or a spread of at most 1e-9 (unclipped).
fn zscores(x: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let mut std = var.sqrt();
    if x.len() == 1 || std <= 1e-9 {
        std = 1.0;
    }
    x.iter().map(|v| (v - mean) / std).collect()
}

/// Scores closer than this are ties in the reference: f64 rounding of these small pools is
/// far below it, and scores of different memories that are not tied in real arithmetic are far
/// above it.
pub const REFERENCE_TIE: f64 = 1e-9;

impl RefBank {
    pub fn new(dedup_sim: f32) -> Self {
        Self {
            dedup_sim,
            ..Default::default()
        }
    }

    /// Files a memory as the spec says: under the most similar key (lowest row on ties) when
    /// its cosine is >= dedup_sim and sharing is on, else under a new key.
    pub fn add(&mut self, id: u64, embedding: &[f32], q: f32, experience: &str) {
        let unit = normalise(embedding);
        let mut best: Option<(f64, usize)> = None;
        if self.dedup_sim < 1.0 {
            for (row, key) in self.keys.iter().enumerate() {
                let s = dot(&unit, key);
                if s >= self.dedup_sim as f64 && best.is_none_or(|(bs, _)| s > bs) {
                    best = Some((s, row));
                }
            }
        }
        let key = match best {
            Some((_, row)) => row,
            None => {
                self.keys.push(unit);
                self.keys.len() - 1
            }
        };
        self.memories.push(RefMemory {
            id,
            key,
            q,
            experience: experience.to_string(),
        });
    }

    /// Every surviving pool member ranked (best first), and the hits the spec returns.
    pub fn retrieve_one(
        &self,
        query: &[f32],
        index: usize,
        cfg: &RetrievalConfig,
    ) -> (Vec<RefHit>, Vec<RefHit>) {
        let query = normalise(query);
        let mut keys: Vec<(f64, usize)> = self
            .keys
            .iter()
            .enumerate()
            .map(|(r, k)| (dot(&query, k), r))
            .collect();
        keys.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let kept: Vec<(f64, usize)> = keys
            .into_iter()
            .filter(|(s, _)| *s >= cfg.delta as f64)
            .take(cfg.k1)
            .collect();
        // Pool in tie-break order.
        let mut pool: Vec<(f64, &RefMemory)> = Vec::new();
        for &(s, row) in &kept {
            for m in self.memories.iter().filter(|m| m.key == row) {
                pool.push((s, m));
            }
        }
        pool.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
        // Exploration draws come before filtering so they do not depend on Q.
        let mut explore_keys: Option<Vec<f32>> = None;
        if cfg.epsilon > 0.0 && !pool.is_empty() {
            let mut rng = Rng::for_item(cfg.seed, index as u64);
            if rng.unit_f64() < cfg.epsilon as f64 {
                explore_keys = Some(pool.iter().map(|_| rng.key_f32()).collect());
            }
        }
        let nearest = pool.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        let survivors: Vec<usize> = (0..pool.len())
            .filter(|&i| cfg.q_min.is_none_or(|qm| pool[i].1.q >= qm))
            .filter(|&i| {
                cfg.sim_margin
                    .is_none_or(|m| pool[i].0 >= nearest - m as f64)
            })
            .collect();
        if survivors.is_empty() {
            return (Vec::new(), Vec::new());
        }
        // The spec: zq clipped to [-z_clip, z_clip]; zsim clipped only when asked.
        let clip = cfg.z_clip as f64;
        let sims: Vec<f64> = survivors.iter().map(|&i| pool[i].0).collect();
        let qs: Vec<f64> = survivors.iter().map(|&i| pool[i].1.q as f64).collect();
        let zsim: Vec<f64> = match cfg.zsim {
            ZSim::Pool => zscores(&sims),
            ZSim::Fixed { mean, std } => sims
                .iter()
                .map(|s| (s - mean as f64) / std as f64)
                .collect(),
        };
        let zsim: Vec<f64> = if cfg.clip_zsim {
            zsim.into_iter().map(|z| z.clamp(-clip, clip)).collect()
        } else {
            zsim
        };
        let zq: Vec<f64> = zscores(&qs)
            .into_iter()
            .map(|z| z.clamp(-clip, clip))
            .collect();
        let lambda = cfg.lambda as f64;
        let mut ranked: Vec<(usize, RefHit)> = survivors
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                let m = pool[i].1;
                (
                    i,
                    RefHit {
                        id: m.id,
                        q: m.q,
                        sim: pool[i].0,
                        zsim: zsim[j],
                        zq: zq[j],
                        score: (1.0 - lambda) * zsim[j] + lambda * zq[j],
                    },
                )
            })
            .collect();
        // Score desc; ties (scores within REFERENCE_TIE of the next, in runs) by pool position
        // (similarity desc, id asc).
        ranked.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then(a.0.cmp(&b.0)));
        let mut start = 0;
        while start < ranked.len() {
            let mut end = start + 1;
            while end < ranked.len()
                && ranked[end - 1].1.score - ranked[end].1.score <= REFERENCE_TIE
            {
                end += 1;
            }
            ranked[start..end].sort_by_key(|(position, _)| *position);
            start = end;
        }
        let all: Vec<RefHit> = ranked.iter().map(|(_, h)| h.clone()).collect();
        let hits = match explore_keys {
            None => all.iter().take(cfg.k2).cloned().collect(),
            Some(keys) => {
                let mut by_key = ranked.clone();
                by_key.sort_by(|a, b| keys[b.0].total_cmp(&keys[a.0]).then(a.0.cmp(&b.0)));
                by_key.into_iter().take(cfg.k2).map(|(_, h)| h).collect()
            }
        };
        (all, hits)
    }
}

/// Checks one query's hits against the reference where both computed from the same exact
/// inputs (dyadic vectors, so every similarity is exact): the same memories in the same order,
/// exact ties included, and every figure within `tol`.
pub fn assert_same_hits(ours: &[Hit], want: &[RefHit], tol: f64, ctx: &str) {
    let ids: Vec<u64> = ours.iter().map(|h| h.id).collect();
    let want_ids: Vec<u64> = want.iter().map(|h| h.id).collect();
    assert_eq!(ids, want_ids, "{ctx}\nours {ours:#?}\nwant {want:#?}");
    for (o, r) in ours.iter().zip(want) {
        for (name, a, b) in [
            ("sim", o.sim as f64, r.sim),
            ("zsim", o.zsim as f64, r.zsim),
            ("zq", o.zq as f64, r.zq),
            ("score", o.score as f64, r.score),
            ("q", o.q as f64, r.q as f64),
        ] {
            assert!(
                (a - b).abs() <= tol * b.abs().max(1.0),
                "{ctx}: hit {} {name} {a} vs reference {b}",
                o.id
            );
        }
    }
}

/// Checks one query's hits against the reference where the inputs are not exact (real-valued
/// vectors: the engine's f32 similarities and the reference's f64 ones differ in their last
/// bits): same length, every figure within `tol`, and the same ranking up to near-ties within
/// `tol`: hits are in descending reference score (within `tol`), memories with identical inputs
/// keep id order, and a reference pick left out must be a near-tie of the lowest pick kept. One
/// near-tie can shift a whole run of picks, so positions are not compared one by one. An
/// exploring query (random keys, no near-ties) must match position for position.
pub fn assert_hits_match(
    ours: &[Hit],
    all: &[RefHit],
    want: &[RefHit],
    tol: f64,
    exploring: bool,
    ctx: &str,
) {
    assert_eq!(
        ours.len(),
        want.len(),
        "{ctx}: number of hits\nours {ours:#?}\nwant {want:#?}"
    );
    let mut seen = std::collections::HashSet::new();
    let mut refs = Vec::with_capacity(ours.len());
    for (i, o) in ours.iter().enumerate() {
        assert!(seen.insert(o.id), "{ctx}: id {} returned twice", o.id);
        if exploring {
            assert_eq!(o.id, want[i].id, "{ctx}: exploring pick {i}");
        }
        let r = all
            .iter()
            .find(|h| h.id == o.id)
            .unwrap_or_else(|| panic!("{ctx}: id {} not in the pool", o.id));
        for (name, a, b) in [
            ("sim", o.sim as f64, r.sim),
            ("zsim", o.zsim as f64, r.zsim),
            ("zq", o.zq as f64, r.zq),
            ("score", o.score as f64, r.score),
            ("q", o.q as f64, r.q as f64),
        ] {
            assert!(
                (a - b).abs() <= tol,
                "{ctx}: hit {} {name} {a} vs reference {b}",
                o.id
            );
        }
        refs.push(r);
    }
    if exploring {
        return; // ranked by random keys: matched position for position above
    }
    for i in 0..refs.len() {
        for j in i + 1..refs.len() {
            let (a, b) = (refs[i], refs[j]);
            assert!(
                a.score >= b.score - tol,
                "{ctx}: {} (score {}) ranked above {} (score {})\nours {ours:#?}\nwant {want:#?}",
                a.id,
                a.score,
                b.id,
                b.score
            );
            if a.sim == b.sim && a.q == b.q {
                assert!(
                    a.id < b.id,
                    "{ctx}: identical memories {} and {} out of id order\nours {ours:#?}",
                    a.id,
                    b.id
                );
            }
        }
    }
    let lowest = refs.iter().map(|r| r.score).fold(f64::INFINITY, f64::min);
    for w in want {
        if !seen.contains(&w.id) {
            assert!(
                (w.score - lowest).abs() <= tol,
                "{ctx}: reference pick {} (score {}) missing, lowest kept score {lowest}\nours {ours:#?}\nwant {want:#?}",
                w.id,
                w.score
            );
        }
    }
}

/// A bank in memory on the test device.
pub fn bank(config: BankConfig) -> Bank {
    Bank::options()
        .bank_config(config)
        .device(device())
        .in_memory()
        .expect("an in-memory bank")
}

/// Bank contents as comparable data: every memory and the bits of its key.
pub fn state(bank: &Bank) -> Vec<(memrl::Memory, Vec<u32>, Vec<u64>)> {
    let mut out: Vec<_> = bank
        .memories()
        .into_iter()
        .map(|m| {
            let key = bank
                .intent_key(m.id)
                .expect("key")
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let members = bank.intent_members(m.id).expect("members");
            (m, key, members)
        })
        .collect();
    out.sort_by_key(|(m, _, _)| m.id);
    out
}
pub mod tiny_model;

/// A small task corpus for the simulation: `sources` skills of `per_source` texts each. A skill's
/// texts share a topic word; the rest of each text is drawn from words common to all skills, so
/// neighbourhoods only partly follow skills (as in real corpora).
pub fn task_corpus(sources: usize, per_source: usize, seed: u64) -> Vec<memrl::ingest::TaskRecord> {
    const TOPICS: [&str; 8] = [
        "date", "bug", "sort", "parse", "graph", "query", "cache", "token",
    ];
    const COMMON: [&str; 12] = [
        "fix", "the", "list", "find", "value", "test", "file", "read", "write", "count", "map",
        "check",
    ];
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for s in 0..sources {
        for _ in 0..per_source {
            let mut words = vec![TOPICS[s % TOPICS.len()].to_string()];
            for _ in 0..4 {
                words.push(COMMON[(rng.next_u64() % COMMON.len() as u64) as usize].to_string());
            }
            out.push(memrl::ingest::TaskRecord {
                text: words.join(" "),
                source: format!("skill/{s}"),
            });
        }
    }
    out
}

/// Retrieval's hits alone, per query (the tests compare hits; retrieval ids are random).
pub fn hits(bank: &Bank, queries: &[Vec<f32>], cfg: &RetrievalConfig) -> Vec<Vec<Hit>> {
    bank.retrieve_with(queries, cfg)
        .expect("retrieve")
        .into_iter()
        .map(|r| r.hits)
        .collect()
}
