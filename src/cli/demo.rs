//! `memrl demo`: a small, synthetic demonstration of the engine loop
//! (retrieve -> act -> reward -> `apply_outcomes`). It shows that value-aware retrieval with
//! runtime Q learning learns to prefer memories that help over look-alikes that are merely more
//! similar, while similarity-only retrieval (RAG) keeps picking the look-alikes.
//!
//! What it does not show: there is no LLM and no embedding model (embeddings are synthetic unit
//! vectors, and success is a hidden coin flip whose odds depend on which memories were injected),
//! and no memories are written during the run. The full simulated world comes later.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use memrl::{snapshot, Bank, BankConfig, Device, LoadOptions, NewMemory, Outcome, RetrievalConfig};

const DIM: usize = 32;
const FAMILIES: usize = 40;
const MODEL_ID: &str = "synthetic-unit-vectors-d32";
/// Per-component standard deviation of a task's noise around its family centre.
const TASK_NOISE: f32 = 0.05;
/// Cosine between a family centre and its helpful / misleading memories' intents.
const HELPFUL_COS: f32 = 0.80;
const MISLEADING_COS: f32 = 0.92;
const BLOCK: usize = 100;

pub(crate) const DEMO_HELP: &str = "\
Run a small synthetic demonstration of the MemRL loop against plain RAG.

There is NO LLM and NO embedding model: embeddings are synthetic unit vectors (d = 32). The world \
has 40 task families; a task is its family's centre plus a little noise. The bank is pre-populated \
with one helpful memory per family and one or two misleading look-alikes whose intents are closer \
to the tasks than the helpful one. Only the world knows which is which: an attempt succeeds with \
probability 0.2, +0.6 if a helpful memory of the task's family was injected, -0.15 per misleading \
memory injected (clamped to [0.05, 0.95]).

Two policies run on the same tasks and the same random draws (k1 5, k2 2, delta 0.3): RAG \
(lambda 0, no learning) and MemRL (lambda 0.5, Q updated with reward +1/-1 for every injected \
memory, alpha 0.3). No memories are written during the run. The demo prints the success rate per \
block of 100 episodes and the learned Q of helpful vs misleading memories, then saves the MemRL \
bank to <OUT>/bank.safetensors and loads it back.";

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Episodes per policy.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    episodes: u64,
    /// Seed of the synthetic world: centres, memories, task order and outcome draws.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Directory for the saved MemRL bank (created if missing).
    #[arg(long, default_value = "memrl-demo")]
    out: PathBuf,
}

type Rng = memrl::rng::SplitMix64;

fn gaussian_vec(rng: &mut Rng) -> Vec<f32> {
    (0..DIM).map(|_| rng.gaussian()).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = dot(&v, &v).sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// A unit vector at exactly cosine `cos` from the unit vector `centre`, in a random direction.
fn tilted(centre: &[f32], cos: f32, rng: &mut Rng) -> Vec<f32> {
    let r = gaussian_vec(rng);
    let along = dot(&r, centre);
    let perp = normalised(r.iter().zip(centre).map(|(x, c)| x - along * c).collect());
    let sin = (1.0 - cos * cos).sqrt();
    centre
        .iter()
        .zip(&perp)
        .map(|(c, p)| cos * c + sin * p)
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Helpful,
    Misleading,
}

/// A pre-populated memory and the hidden truth about it.
struct Planted {
    family: usize,
    kind: Kind,
    intent: Vec<f32>,
}

struct Episode {
    family: usize,
    task: Vec<f32>,
    /// The uniform draw that decides success (`u < p`), shared by both policies.
    u: f64,
}

/// The hidden success probability of an attempt at a task of `family` with `injected` memories.
fn success_probability(family: usize, injected: &[&Planted]) -> f64 {
    let helpful = injected
        .iter()
        .any(|m| m.kind == Kind::Helpful && m.family == family);
    let misleading = injected
        .iter()
        .filter(|m| m.kind == Kind::Misleading)
        .count();
    let p = 0.2 + if helpful { 0.6 } else { 0.0 } - 0.15 * misleading as f64;
    p.clamp(0.05, 0.95)
}

/// A bank holding every planted memory (one key each), and the planted index of each id.
fn build_bank(planted: &[Planted]) -> Result<(Bank, HashMap<u64, usize>)> {
    let config = BankConfig {
        dedup_sim: 1.0,
        ..BankConfig::new(DIM, MODEL_ID)
    };
    let mut bank = Bank::new(config, &Device::Cpu)?;
    let memories = planted.iter().map(|p| NewMemory {
        intent: format!("family {} task", p.family),
        embedding: p.intent.clone(),
        experience: format!("advice for family {}", p.family),
        success: true,
        ..Default::default()
    });
    let ids = bank.add_many(memories.collect())?;
    Ok((bank, ids.into_iter().zip(0..).collect()))
}

/// Runs one policy over the episodes; returns per-episode success and the final bank.
fn run_policy(
    planted: &[Planted],
    episodes: &[Episode],
    lambda: f32,
    learn: bool,
) -> Result<(Vec<bool>, Bank, HashMap<u64, usize>)> {
    let (mut bank, index) = build_bank(planted)?;
    let cfg = RetrievalConfig {
        k1: 5,
        k2: 2,
        delta: 0.3,
        lambda,
        ..Default::default()
    };
    let mut successes = Vec::with_capacity(episodes.len());
    for ep in episodes {
        let hits = bank.retrieve_vectors(std::slice::from_ref(&ep.task), &cfg)?;
        let ids: Vec<u64> = hits.into_iter().flatten().map(|h| h.id).collect();
        let injected = ids
            .iter()
            .map(|id| {
                index
                    .get(id)
                    .map(|&i| &planted[i])
                    .context("retrieved an unknown id")
            })
            .collect::<Result<Vec<_>>>()?;
        let success = ep.u < success_probability(ep.family, &injected);
        successes.push(success);
        if learn && !ids.is_empty() {
            let reward = if success { 1.0 } else { -1.0 };
            bank.apply_outcomes(&[Outcome {
                memory_ids: ids,
                reward,
            }])?;
        }
    }
    Ok((successes, bank, index))
}

fn rate(xs: &[bool]) -> f64 {
    xs.iter().filter(|&&s| s).count() as f64 / xs.len().max(1) as f64
}

fn mean(xs: impl Iterator<Item = f32>) -> f32 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f32
}

/// The hidden world: planted memories, then the episodes (task and success draw) in order.
fn make_world(seed: u64, episodes: u64) -> (Vec<Planted>, Vec<Episode>) {
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f32>> = (0..FAMILIES)
        .map(|_| normalised(gaussian_vec(&mut rng)))
        .collect();
    let mut planted = Vec::new();
    for (family, centre) in centres.iter().enumerate() {
        // One helpful memory, then one look-alike (even families) or two (odd families).
        let look_alikes = std::iter::repeat_n((Kind::Misleading, MISLEADING_COS), 1 + family % 2);
        for (kind, cos) in std::iter::once((Kind::Helpful, HELPFUL_COS)).chain(look_alikes) {
            let intent = tilted(centre, cos, &mut rng);
            planted.push(Planted {
                family,
                kind,
                intent,
            });
        }
    }
    // Common random numbers: both policies see these exact tasks and draws.
    let episodes = (0..episodes)
        .map(|_| {
            let family = (rng.next_u64() % FAMILIES as u64) as usize;
            let noisy = centres[family]
                .iter()
                .map(|c| c + TASK_NOISE * rng.gaussian());
            let task = normalised(noisy.collect());
            Episode {
                family,
                task,
                u: rng.next_f64(),
            }
        })
        .collect();
    (planted, episodes)
}

pub(crate) fn demo(args: &DemoArgs) -> Result<()> {
    let start = Instant::now();
    let (planted, episodes) = make_world(args.seed, args.episodes);
    let n_misleading = planted
        .iter()
        .filter(|p| p.kind == Kind::Misleading)
        .count();
    println!("memrl demo: a synthetic world with NO LLM and NO embedding model");
    println!("  embeddings are synthetic unit vectors (d = {DIM}); {FAMILIES} task families");
    println!(
        "  bank: {} helpful memories, {n_misleading} misleading look-alikes; none written in the run",
        FAMILIES
    );
    let mean_sim = |kind: Kind| {
        let pairs = episodes.iter().flat_map(|ep| {
            let own = planted
                .iter()
                .filter(move |p| p.family == ep.family && p.kind == kind);
            own.map(|p| dot(&p.intent, &ep.task))
        });
        mean(pairs)
    };
    println!(
        "  mean cosine to own family's tasks: helpful {:.3}, misleading {:.3}",
        mean_sim(Kind::Helpful),
        mean_sim(Kind::Misleading)
    );
    println!("  RAG: lambda 0, no learning | MemRL: lambda 0.5, alpha 0.3, reward +1/-1");
    println!(
        "  both: k1 5, k2 2, delta 0.3; same tasks, same random draws (seed {})",
        args.seed
    );

    let (rag, _, _) = run_policy(&planted, &episodes, 0.0, false)?;
    let (memrl, bank, index) = run_policy(&planted, &episodes, 0.5, true)?;

    println!("\n  episodes      RAG    MemRL");
    for (b, (r, m)) in rag.chunks(BLOCK).zip(memrl.chunks(BLOCK)).enumerate() {
        let range = format!("{}-{}", b * BLOCK + 1, b * BLOCK + r.len());
        println!("  {range:>9}    {:.2}     {:.2}", rate(r), rate(m));
    }
    println!(
        "  {:>9}    {:.2}     {:.2}",
        "all",
        rate(&rag),
        rate(&memrl)
    );

    let kind_of = |id: u64| index.get(&id).map(|&i| planted[i].kind);
    let mean_q = |kind: Kind| {
        mean(
            bank.iter()
                .filter(|m| kind_of(m.id) == Some(kind))
                .map(|m| m.q),
        )
    };
    println!(
        "\nMemRL bank after {} episodes: mean Q of helpful memories {:+.3}, misleading {:+.3}",
        args.episodes,
        mean_q(Kind::Helpful),
        mean_q(Kind::Misleading)
    );

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create directory {}", args.out.display()))?;
    let path = args.out.join("bank.safetensors");
    snapshot::save(&bank, &path).with_context(|| format!("saving {}", path.display()))?;
    let options = LoadOptions {
        expect_model: Some(MODEL_ID.into()),
        expect_dim: Some(DIM),
    };
    let loaded = snapshot::load(&path, &Device::Cpu, &options)
        .with_context(|| format!("loading {}", path.display()))?;
    if !loaded.iter().eq(bank.iter()) {
        bail!(
            "the reloaded bank differs from the saved one ({} vs {} memories)",
            loaded.len(),
            bank.len()
        );
    }
    println!(
        "saved the MemRL bank ({} memories) to {}; reloaded it",
        loaded.len(),
        path.display()
    );
    println!("done in {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}
