//! Retrieval latency: a plain timing program (no criterion yet).
//!
//! Builds a bank of N random unit vectors (d = 384, N from `MEMRL_BENCH_N`, default 100000, keys
//! in `MEMRL_BENCH_DTYPE` precision, default f32,
//! intent sharing off) and times `Bank::retrieve` for batches of 1, 32 and 256 queries (or the
//! comma-separated sizes in `MEMRL_BENCH_BATCHES`) with the default config except `delta = -1`
//! (the gate keeps everything). Reports the median latency of
//! a few repetitions and queries per second. Run with `cargo bench --bench retrieval`.

use std::time::{Duration, Instant};

use memrl::{Bank, BankConfig, Device, KeyDType, NewMemory, RetrievalConfig, Tensor};

const DIM: usize = 384;
const ADD_BATCH: usize = 10_000;
const REPS: usize = 7;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::var("MEMRL_BENCH_N") {
        Ok(s) => s.parse().map_err(|e| format!("MEMRL_BENCH_N={s:?}: {e}"))?,
        Err(_) => 100_000,
    };
    let mut rng = memrl::rng::SplitMix64::new(42);
    let dtype: KeyDType = std::env::var("MEMRL_BENCH_DTYPE")
        .unwrap_or_else(|_| "f32".into())
        .parse()?;
    let config = BankConfig {
        dtype,
        dedup_sim: 1.0,
        ..BankConfig::new(DIM, "bench-random")
    };
    let mut bank = Bank::new(config, &Device::Cpu)?;
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let batch = (0..left.min(ADD_BATCH))
            .map(|_| NewMemory {
                embedding: rng.unit_vector(DIM),
                ..Default::default()
            })
            .collect();
        left -= bank.add_many(batch)?.len();
    }
    println!(
        "bank: {} memories, d = {DIM}, {} keys, CPU; built in {:.2} s",
        bank.len(),
        dtype.as_str(),
        start.elapsed().as_secs_f64()
    );

    let cfg = RetrievalConfig {
        delta: -1.0,
        ..Default::default()
    };
    println!(
        "retrieve: k1 {}, k2 {}, delta {}, lambda {}; median of {REPS} runs",
        cfg.k1, cfg.k2, cfg.delta, cfg.lambda
    );
    let batches: Vec<usize> = match std::env::var("MEMRL_BENCH_BATCHES") {
        Ok(list) => list
            .split(',')
            .map(|b| b.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("MEMRL_BENCH_BATCHES={list}: {e}"))?,
        Err(_) => vec![1, 32, 256],
    };
    for b in batches {
        let flat: Vec<f32> = (0..b).flat_map(|_| rng.unit_vector(DIM)).collect();
        let queries = Tensor::from_vec(flat, (b, DIM), &Device::Cpu)?;
        bank.retrieve(&queries, &cfg)?; // warm-up
        let mut times: Vec<Duration> = (0..REPS)
            .map(|_| {
                let t = Instant::now();
                bank.retrieve(&queries, &cfg).map(|_| t.elapsed())
            })
            .collect::<Result<_, _>>()?;
        times.sort();
        let median = times[REPS / 2].as_secs_f64();
        println!(
            "B = {b:>3}: median {:>9.3} ms per call, {:>10.0} queries/s",
            median * 1e3,
            b as f64 / median
        );
    }
    Ok(())
}
