//! Retrieval latency: a plain timing program (no criterion yet).
//!
//! Builds a bank of N unit vectors (d = 384, N from `MEMRL_BENCH_N`, default 100000, keys in
//! `MEMRL_BENCH_DTYPE` precision, default f32, on `MEMRL_BENCH_DEVICE`, default cpu, intent
//! sharing off) and times `Bank::retrieve` for batches of 1, 32 and 256 queries (or the
//! comma-separated sizes in `MEMRL_BENCH_BATCHES`) with the default config except `delta = -1`
//! (the gate keeps everything) and `k1` from `MEMRL_BENCH_K1` (default 10). Reports the median
//! and p95 latency of a few repetitions, queries per second and the bank bytes read per second,
//! as a line for people and a line of JSON. Run with `cargo bench --bench retrieval`.
//!
//! The bank is `memrl_bench::workloads::random_bank` (what `memrl bench` and the criterion
//! benches use).
//! This program stays for the GPU scripts (`benches/peers/gpu.sh` reads its JSON lines).

use std::time::{Duration, Instant};

use memrl::{KeyDType, Queries, RetrievalConfig};
use memrl_bench::workloads::{random_bank, random_queries, DIM};

const REPS: usize = 7;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(s) => s.parse().map_err(|e| format!("{name}={s:?}: {e}")),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = env_or("MEMRL_BENCH_N", 100_000)?;
    let k1: usize = env_or("MEMRL_BENCH_K1", 10)?;
    let device_name: String = env_or("MEMRL_BENCH_DEVICE", "cpu".to_string())?;
    let device = memrl::parse_device(&device_name)?;
    let dtype: KeyDType = std::env::var("MEMRL_BENCH_DTYPE")
        .unwrap_or_else(|_| "f32".into())
        .parse()?;
    let start = Instant::now();
    let bank = random_bank(n, dtype, &device, 42)?;
    println!(
        "bank: {} memories, d = {DIM}, {} keys, {device_name}; built in {:.2} s",
        bank.len(),
        dtype.as_str(),
        start.elapsed().as_secs_f64()
    );
    let key_bytes = (n * DIM * if dtype == KeyDType::F32 { 4 } else { 2 }) as f64;

    let cfg = RetrievalConfig {
        delta: -1.0,
        k1,
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
        let flat: Vec<f32> = random_queries(b, b as u64).into_iter().flatten().collect();
        let queries = Queries::Rows(&flat);
        bank.retrieve_with(queries.clone(), &cfg)?; // warm-up
        let mut times: Vec<Duration> = (0..REPS)
            .map(|_| {
                let t = Instant::now();
                bank.retrieve_with(queries.clone(), &cfg)
                    .map(|_| t.elapsed())
            })
            .collect::<Result<_, _>>()?;
        times.sort();
        let median = times[REPS / 2].as_secs_f64();
        let p95 = times[(REPS * 95).div_ceil(100) - 1].as_secs_f64();
        println!(
            "B = {b:>3}: median {:>9.3} ms per call, p95 {:>9.3} ms, {:>10.0} queries/s, bank read at {:>7.1} GB/s",
            median * 1e3,
            p95 * 1e3,
            b as f64 / median,
            key_bytes / median / 1e9
        );
        println!(
            "{{\"peer\": \"memrl\", \"device\": \"{device_name}\", \"dtype\": \"{}\", \"n\": {n}, \"b\": {b}, \"k1\": {k1}, \"median_ms\": {:.4}, \"p95_ms\": {:.4}, \"q_per_s\": {:.1}, \"bank_gb_per_s\": {:.2}}}",
            dtype.as_str(),
            median * 1e3,
            p95 * 1e3,
            b as f64 / median,
            key_bytes / median / 1e9
        );
    }
    Ok(())
}
