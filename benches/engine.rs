//! Criterion benches of the engine on the CPU: retrieval (N in {10k, 100k, 1M} keys, B in
//! {1, 32, 256} queries, f32 and f16 keys, d = 384, k1 100), outcome updates (batches of 1,000),
//! snapshot save and load (100k memories), and embedding (batches of 1, 32 and 256 corpus texts,
//! when all-MiniLM-L6-v2 is on disk). The workloads are `memrl_bench::workloads`', the same as
//! `memrl bench`, which also measures the machine's ceilings and runs on any device.
//!
//! `cargo bench --bench engine` (all), `cargo bench --bench engine -- retrieval/f16` (a subset).
//! `MEMRL_BENCH_MAX_N` caps N (default 1,000,000).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use memrl::{Bank, Device, KeyDType, Outcome, Queries, RetrievalConfig};
use memrl_bench::workloads::{random_bank, random_queries};

fn max_n() -> usize {
    std::env::var("MEMRL_BENCH_MAX_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn retrieval(c: &mut Criterion) {
    let cfg = RetrievalConfig {
        delta: -1.0,
        k1: 100,
        ..RetrievalConfig::default()
    };
    for dtype in [KeyDType::F32, KeyDType::F16] {
        let mut group = c.benchmark_group(format!("retrieval/{}", dtype.as_str()));
        group.sample_size(10).warm_up_time(Duration::from_secs(1));
        for n in [10_000, 100_000, 1_000_000]
            .into_iter()
            .filter(|&n| n <= max_n())
        {
            let bank = random_bank(n, dtype, &Device::Cpu, 42).expect("bench bank");
            for b in [1usize, 32, 256] {
                let flat: Vec<f32> = random_queries(b, 1).into_iter().flatten().collect();
                group.throughput(Throughput::Elements(b as u64));
                group.bench_with_input(BenchmarkId::new(format!("n{n}"), b), &b, |bench, _| {
                    bench.iter(|| {
                        bank.retrieve_with(Queries::Rows(&flat), &cfg)
                            .expect("retrieve")
                    })
                });
            }
        }
        group.finish();
    }
}

fn outcomes(c: &mut Criterion) {
    let bank = random_bank(100_000, KeyDType::F32, &Device::Cpu, 5).expect("bench bank");
    let mut rng = memrl::internal::SplitMix64::new(3);
    // 200 outcomes of 5 memories: 1,000 memory updates per batch.
    let batches: Vec<Vec<Outcome>> = (0..16)
        .map(|_| {
            (0..200)
                .map(|_| Outcome {
                    memory_ids: (0..5).map(|_| rng.next_u64() % 100_000).collect(),
                    reward: if rng.next_f64() < 0.5 { 1.0 } else { -1.0 },
                })
                .collect()
        })
        .collect();
    let mut group = c.benchmark_group("outcomes");
    group.throughput(Throughput::Elements(1000));
    let mut i = 0;
    group.bench_function("batch_of_1000_updates", |bench| {
        bench.iter(|| {
            i = (i + 1) % batches.len();
            bank.apply_outcomes(&batches[i]).expect("outcomes")
        })
    });
    group.finish();
}

fn snapshots(c: &mut Criterion) {
    let bank = random_bank(100_000, KeyDType::F32, &Device::Cpu, 9).expect("bench bank");
    let dir = tempfile::tempdir().expect("scratch dir");
    let path = dir.path().join("bench.safetensors");
    bank.save_as(&path).expect("save");
    let durable = Bank::open(&path).expect("open");
    let mut group = c.benchmark_group("snapshot_100k");
    group.sample_size(10);
    group.bench_function("save", |bench| {
        bench.iter(|| durable.checkpoint().expect("checkpoint"))
    });
    drop(durable);
    group.bench_function("load", |bench| {
        bench.iter(|| Bank::options().read_only(true).open(&path).expect("load"))
    });
    group.finish();
}

fn embedding(c: &mut Criterion) {
    let options = memrl::models::ResolveOptions {
        hub: false,
        mirror: false,
        ..Default::default()
    };
    let model = match memrl::models::resolve("all-MiniLM-L6-v2", &options, &mut |_| {}) {
        Ok(model) => model,
        Err(e) => {
            eprintln!(
                "embedding benches skipped: the model is not on disk ({e}); run `memrl model pull`"
            );
            return;
        }
    };
    let embedder = memrl::embed::Embedder::load(&model, &Device::Cpu).expect("load model");
    let texts: Vec<String> = memrl_bench::corpus()
        .expect("the shipped corpus")
        .into_iter()
        .take(256)
        .map(|r| r.text)
        .collect();
    let mut group = c.benchmark_group("embedding");
    group.sample_size(10);
    for b in [1usize, 32, 256] {
        group.throughput(Throughput::Elements(b as u64));
        group.bench_with_input(BenchmarkId::from_parameter(b), &b, |bench, &b| {
            bench.iter(|| embedder.embed(&texts[..b]).expect("embed"))
        });
    }
    group.finish();
}

criterion_group!(benches, retrieval, outcomes, snapshots, embedding);
criterion_main!(benches);
