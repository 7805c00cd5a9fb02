//! The benchmark suite behind `memrl bench` and the criterion benches: the machine's ceilings,
//! retrieval over random banks, outcome updates and snapshots, each as median and p95 latency,
//! throughput and (for retrieval) the fraction of its roofline.
//!
//! Why one crate holds them: the same workloads run from the CLI on any device and from
//! `cargo bench`, and a user comparing devices must know both measured the same thing.
//!
//! Roofline: a retrieval call must at least read the bank once (`N x d x bytes per key`) and do
//! `2 B N d` flops of similarity. With the measured read bandwidth and matrix-product rate of the
//! same run, its floor is `max(bytes / bandwidth, flops / rate)`; the fraction reported is that
//! floor over the measured median (1.0 = at the ceiling).

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use memrl::internal::{read_sum, SplitMix64};
use memrl::{Bank, BankConfig, KeyDType, NewMemory, Outcome, Queries, RetrievalConfig};
use rayon::prelude::*;
use serde::Serialize;

use crate::Result;

/// Embedding dimension of every benchmark bank (all-MiniLM-L6-v2's).
pub const DIM: usize = 384;
/// Distinct random vectors drawn; larger banks reuse them rotated (see [`random_bank`]).
const POOL: usize = 100_000;

/// Random unit vectors for a bank of `n` keys: `POOL` Gaussian draws, reused for larger banks with
/// their coordinates rotated by one more place per round, so every key is distinct and a 10M bank
/// builds in seconds.
///
/// The pool is one flat allocation, so it goes back to the system when dropped instead of
/// leaving 100k small blocks in the allocator (they showed up as 150 MB in the peak memory of
/// later cases).
fn random_keys(n: usize, seed: u64) -> impl Iterator<Item = Vec<f32>> {
    let mut rng = SplitMix64::new(seed);
    let rows = POOL.min(n);
    let pool: Vec<f32> = (0..rows).flat_map(|_| rng.unit_vector(DIM)).collect();
    (0..n).map(move |i| {
        let r = i % rows;
        let mut v = pool[r * DIM..(r + 1) * DIM].to_vec();
        v.rotate_left((i / rows) % DIM);
        v
    })
}

/// A bank of `n` random memories (intent sharing off), keys in `dtype` on `device`.
pub fn random_bank(n: usize, dtype: KeyDType, device: &Device, seed: u64) -> Result<Bank> {
    let config = BankConfig {
        dtype,
        dedup_sim: 1.0,
        ..BankConfig::new(DIM, "bench-random")
    };
    let bank = Bank::options()
        .bank_config(config)
        .device(device.clone())
        .in_memory()?;
    let mut keys = random_keys(n, seed).peekable();
    while keys.peek().is_some() {
        let batch = keys
            .by_ref()
            .take(10_000)
            .map(|embedding| NewMemory::default().embedding(embedding))
            .collect();
        bank.add_many(batch)?;
    }
    Ok(bank)
}

/// `b` random unit query rows.
pub fn random_queries(b: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    (0..b).map(|_| rng.unit_vector(DIM)).collect()
}

/// Median, p95 and count of repeated timings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timing {
    /// Median seconds per call.
    pub median_s: f64,
    /// 95th percentile seconds per call.
    pub p95_s: f64,
    /// Calls timed (after one warm-up).
    pub reps: usize,
}

/// Times `f` after one warm-up call: at least `min_reps` calls and at least `min_time` in all.
pub fn time<F: FnMut() -> Result<()>>(
    min_reps: usize,
    min_time: Duration,
    mut f: F,
) -> Result<Timing> {
    f()?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_reps.max(1) || start.elapsed() < min_time {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    Ok(Timing {
        median_s: at(0.5),
        p95_s: at(0.95),
        reps: times.len(),
    })
}

/// The device's measured ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ceilings {
    /// Memory read bandwidth, bytes per second: on the CPU a parallel sum over 1 GiB; on a GPU
    /// a device-to-device copy of 1 GiB, counting the bytes read (what a scan needs).
    pub read_bytes_per_s: f64,
    /// f32 matrix product rate, flop per second (candle's matmul of two square matrices).
    pub matmul_flop_per_s: f64,
}

/// Measures [`Ceilings`] on `device`; `quick` uses smaller buffers and matrices.
pub fn measure_ceilings(device: &Device, quick: bool, min_time: Duration) -> Result<Ceilings> {
    let read_bytes_per_s = if device.is_cpu() {
        // 256 MiB (64 quick): far beyond the caches, small enough not to dominate peak memory.
        let bytes: usize = if quick { 64 << 20 } else { 256 << 20 };
        let data = vec![1.0f32; bytes / 4];
        let mut sink = 0.0f32;
        let t = time(3, min_time, || {
            sink += data.par_chunks(1 << 20).map(read_sum).sum::<f32>();
            Ok(())
        })?;
        std::hint::black_box(sink);
        bytes as f64 / t.median_s
    } else {
        let bytes: usize = if quick { 256 << 20 } else { 1 << 30 };
        let src = Tensor::ones(bytes / 4, DType::F32, device)?;
        let t = time(3, min_time, || {
            let copy = src.copy()?;
            device.synchronize()?;
            drop(copy);
            Ok(())
        })?;
        bytes as f64 / t.median_s
    };
    let side = match (device.is_cpu(), quick) {
        (true, true) => 1024,
        (true, false) => 2048,
        (false, true) => 4096,
        (false, false) => 8192,
    };
    let a = Tensor::ones((side, side), DType::F32, device)?;
    let t = time(3, min_time, || {
        let c = a.matmul(&a)?;
        device.synchronize()?;
        drop(c);
        Ok(())
    })?;
    let flops = 2.0 * (side as f64).powi(3);
    Ok(Ceilings {
        read_bytes_per_s,
        matmul_flop_per_s: flops / t.median_s,
    })
}

/// The process's peak resident memory since the last [`reset_peak_rss`], in bytes (Linux;
/// `None` elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Resets the kernel's peak-resident-memory mark of this process (Linux; no-op elsewhere).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One retrieval case's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalCase {
    /// Key precision.
    pub dtype: String,
    /// Keys in the bank.
    pub n: usize,
    /// Queries per call.
    pub b: usize,
    /// Phase A's k1.
    pub k1: usize,
    /// Latency per call.
    pub timing: Timing,
    /// Queries per second.
    pub queries_per_s: f64,
    /// Which ceiling bounds the case: `memory` or `compute`.
    pub bound: &'static str,
    /// The roofline floor over the median (1.0 = at the ceiling), the floor counting every
    /// byte of the key matrix. Scans of up to 8 queries over 4096 or more CPU keys read the
    /// keys' int8 sketch instead (a quarter of f32 keys, half of f16), so there it exceeds 1.
    pub roofline_fraction: f64,
    /// The bank's key bytes.
    pub key_bytes: u64,
    /// The process's peak resident memory during the calls (Linux only): the bank, every
    /// buffer of the calls, and whatever else the process holds at the time.
    pub peak_rss_bytes: Option<u64>,
}

/// Times full two-phase retrieval of `b` queries over `bank` (delta -1: the gate keeps all).
pub fn retrieval_case(
    bank: &Bank,
    b: usize,
    k1: usize,
    ceilings: &Ceilings,
    min_reps: usize,
    min_time: Duration,
) -> Result<RetrievalCase> {
    let cfg = RetrievalConfig {
        delta: -1.0,
        k1,
        ..RetrievalConfig::default()
    };
    let queries = random_queries(b, b as u64);
    let flat: Vec<f32> = queries.iter().flatten().copied().collect();
    reset_peak_rss();
    let timing = time(min_reps, min_time, || {
        bank.retrieve_with(Queries::Rows(&flat), &cfg)?;
        Ok(())
    })?;
    let peak_rss_bytes = peak_rss_bytes();
    let n = bank.num_intents();
    let key_bytes = (n * DIM * bank.config().dtype.size_in_bytes()) as u64;
    let t_memory = key_bytes as f64 / ceilings.read_bytes_per_s;
    let t_compute = 2.0 * (b * n * DIM) as f64 / ceilings.matmul_flop_per_s;
    Ok(RetrievalCase {
        dtype: bank.config().dtype.as_str().to_string(),
        n,
        b,
        k1,
        timing,
        queries_per_s: b as f64 / timing.median_s,
        bound: if t_memory >= t_compute {
            "memory"
        } else {
            "compute"
        },
        roofline_fraction: t_memory.max(t_compute) / timing.median_s,
        key_bytes,
        peak_rss_bytes,
    })
}

/// The ids of the `k` most similar memories of each query (similarity only).
pub fn top_ids(bank: &Bank, queries: &[Vec<f32>], k: usize) -> Result<Vec<Vec<u64>>> {
    let cfg = RetrievalConfig {
        delta: -1.0,
        k1: k,
        k2: k,
        lambda: 0.0,
        ..RetrievalConfig::default()
    };
    let hits = bank.retrieve_with(queries, &cfg)?;
    Ok(hits
        .into_iter()
        .map(|r| r.hits.into_iter().map(|h| h.id).collect())
        .collect())
}

/// recall@k of `approx` against `exact` (per query, the share of exact ids found; pooled).
///
/// ```
/// let r = memrl_bench::workloads::recall(&[vec![1, 2], vec![3, 4]], &[vec![2, 9], vec![3, 4]]);
/// assert_eq!(r, 0.75);
/// ```
pub fn recall(exact: &[Vec<u64>], approx: &[Vec<u64>]) -> f64 {
    let mut found = 0usize;
    let mut total = 0usize;
    for (a, b) in exact.iter().zip(approx) {
        let want: std::collections::HashSet<u64> = a.iter().copied().collect();
        found += b.iter().filter(|id| want.contains(id)).count();
        total += want.len();
    }
    found as f64 / total.max(1) as f64
}

/// Outcome updates: batches of `per_batch` memory updates (outcomes of 5 memories each) on
/// `bank`; returns the timing of one batch. On a durable bank each batch is one log record,
/// appended (and synced, per its policy) before the call returns.
pub fn outcome_case(
    bank: &Bank,
    per_batch: usize,
    min_reps: usize,
    min_time: Duration,
) -> Result<Timing> {
    let ids: Vec<u64> = bank.memories().iter().map(|m| m.id).collect();
    let batches = outcome_batches(&ids, per_batch);
    let mut next = 0;
    time(min_reps, min_time, || {
        next = (next + 1) % batches.len();
        bank.apply_outcomes(&batches[next])?;
        Ok(())
    })
}

/// 16 batches of outcomes, five random memories each, `per_batch` updates per batch (rounded up
/// to whole outcomes). Built before timing, so only the updates are measured.
fn outcome_batches(ids: &[u64], per_batch: usize) -> Vec<Vec<Outcome>> {
    let n = ids.len() as u64;
    let mut rng = SplitMix64::new(77);
    (0..16)
        .map(|_| {
            (0..per_batch.div_ceil(5))
                .map(|_| Outcome {
                    memory_ids: (0..5).map(|_| ids[rng.below(n) as usize]).collect(),
                    reward: if rng.next_f64() < 0.5 { 1.0 } else { -1.0 },
                })
                .collect()
        })
        .collect()
}
