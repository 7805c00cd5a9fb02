//! Embedding throughput over the BIG-bench corpus: sentences per second for the whole file,
//! best of a few repeats, one line of JSON (the peer scripts print the same shape).
//!
//! `cargo bench --bench embed` (env: MEMRL_BENCH_N texts, 0 = all; MEMRL_BENCH_REPEATS;
//! MEMRL_BENCH_BATCH_TOKENS; MEMRL_BENCH_PRECISION `f32` (default) or `int8`, reported as peer
//! `memrl` or `memrl-int8`).

use std::time::Instant;

use memrl::embed::{Embedder, EmbedderOptions, Precision};
use memrl::models::{resolve, ResolveOptions};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/data/corpus.jsonl");
    let precision: Precision = std::env::var("MEMRL_BENCH_PRECISION")
        .unwrap_or_else(|_| "f32".into())
        .parse()?;
    let mut texts: Vec<String> = std::fs::read_to_string(corpus)?
        .lines()
        .map(|l| -> anyhow::Result<String> {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok(v["text"].as_str().unwrap_or_default().to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    let n = env_usize("MEMRL_BENCH_N", 0);
    if n > 0 {
        texts.truncate(n);
    }
    let model = resolve("all-MiniLM-L6-v2", &ResolveOptions::default(), &mut |l| {
        eprintln!("{l}")
    })?;
    let t0 = Instant::now();
    let options = EmbedderOptions {
        precision,
        ..EmbedderOptions::default()
    };
    let mut embedder = Embedder::load_with(&model, &memrl::Device::Cpu, &options)?;
    let load_s = t0.elapsed().as_secs_f64();
    embedder.set_batch_tokens(env_usize(
        "MEMRL_BENCH_BATCH_TOKENS",
        embedder.batch_tokens(),
    ))?;
    embedder.embed(&texts[..256.min(texts.len())])?; // warm-up
    let mut times = Vec::new();
    let mut tokens = 0;
    for _ in 0..env_usize("MEMRL_BENCH_REPEATS", 3) {
        let t0 = Instant::now();
        let out = embedder.embed(&texts)?;
        times.push(t0.elapsed().as_secs_f64());
        tokens = out.tokens;
    }
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{}",
        serde_json::json!({
            "peer": match precision { Precision::F32 => "memrl", Precision::Int8 => "memrl-int8" },
            "precision": precision.as_str(), "n": texts.len(), "batch_tokens": embedder.batch_tokens(),
            "threads": rayon::current_num_threads(), "tokens": tokens, "load_s": load_s,
            "times_s": times, "sent_per_s_best": texts.len() as f64 / best,
            "tokens_per_s_best": tokens as f64 / best,
        })
    );
    Ok(())
}
