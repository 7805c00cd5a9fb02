//! Retrieval latency: a plain timing program (no criterion yet).
//!
//! Builds a bank of N random unit vectors (d = 384, N from `MEMRL_BENCH_N`, default 100000,
//! intent sharing off) and times `Bank::retrieve` for batches of 1, 32 and 256 queries with the
//! default config except `delta = -1` (the gate keeps everything). Reports the median latency of
//! a few repetitions and queries per second. Run with `cargo bench --bench retrieval`.

use std::time::{Duration, Instant};

use candle_core::Tensor;
use memrl::{Bank, BankConfig, Device, NewMemory, RetrievalConfig};

const DIM: usize = 384;
const ADD_BATCH: usize = 10_000;
const REPS: usize = 7;

/// SplitMix64, for reproducible random vectors.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A random unit vector (uniform components in [-1, 1), normalised).
    fn unit_vector(&mut self) -> Vec<f32> {
        let v: Vec<f32> = (0..DIM)
            .map(|_| (self.next_u64() >> 40) as f32 / (1u32 << 23) as f32 - 1.0)
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.into_iter().map(|x| x / norm).collect()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::var("MEMRL_BENCH_N") {
        Ok(s) => s.parse().map_err(|e| format!("MEMRL_BENCH_N={s:?}: {e}"))?,
        Err(_) => 100_000,
    };
    let mut rng = Rng(42);
    let config = BankConfig {
        dedup_sim: 1.0,
        ..BankConfig::new(DIM, "bench-random")
    };
    let mut bank = Bank::new(config, &Device::Cpu)?;
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let batch = (0..left.min(ADD_BATCH))
            .map(|_| NewMemory {
                embedding: rng.unit_vector(),
                ..Default::default()
            })
            .collect();
        left -= bank.add_many(batch)?.len();
    }
    println!(
        "bank: {} memories, d = {DIM}, f32 keys, CPU; built in {:.2} s",
        bank.len(),
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
    for b in [1usize, 32, 256] {
        let flat: Vec<f32> = (0..b).flat_map(|_| rng.unit_vector()).collect();
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
