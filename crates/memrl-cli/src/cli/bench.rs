//! `memrl bench`: the benchmark suite of [`memrl_bench::workloads`] on one device, as a table
//! for people and JSON for machines.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use memrl::{Bank, BatchConfig, Batcher, KeyDType, Query, RetrievalConfig, SyncPolicy};
use memrl_bench::workloads::{
    measure_ceilings, outcome_case, random_bank, random_queries, recall, retrieval_case, time,
    top_ids, Ceilings, RetrievalCase, Timing,
};
use serde::Serialize;

pub(crate) const BENCH_HELP: &str = "\
Benchmark the engine on one device: the device's ceilings (memory read bandwidth, f32 matrix \
product rate), full two-phase retrieval over random banks (N x 384, f32 and f16 keys, k1 100, \
k2 5, every key past the gate) for several batch sizes, recall of f16 keys against f32, outcome \
updates in batches of 1,000, snapshot save and load, and 64 concurrent single-query callers \
through the batching queue against the same callers calling one query at a time.

Every retrieval figure is also printed as a fraction of its roofline: the larger of (bank bytes \
/ bandwidth) and (2 B N d flops / matrix rate), over the measured median. --quick runs smaller \
banks and fewer repetitions (a minute or two on 2 cores).";

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Smaller banks (10k, 100k) and shorter timing.
    #[arg(long)]
    quick: bool,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Bank sizes (default 10000,100000,1000000; --quick 10000,100000).
    #[arg(long, value_delimiter = ',')]
    n: Option<Vec<usize>>,
    /// Queries per call.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32, 256])]
    b: Vec<usize>,
    /// Key precisions: f32, f16, bf16.
    #[arg(long, value_delimiter = ',', default_values_t = [String::from("f32"), String::from("f16")])]
    dtype: Vec<String>,
    /// Phase A's k1.
    #[arg(long, default_value_t = 100)]
    k1: usize,
    /// Concurrent single-query callers for the batching comparison (0 skips it).
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Skip the outcome and snapshot cases.
    #[arg(long)]
    retrieval_only: bool,
}

#[derive(Serialize)]
struct Report {
    device: String,
    threads: usize,
    ceilings: Ceilings,
    retrieval: Vec<RetrievalCase>,
    recall: Vec<RecallFigure>,
    outcomes: Option<OutcomeFigure>,
    snapshot: Option<SnapshotFigure>,
    durable_outcomes: Vec<DurableFigure>,
    batching: Option<BatchingFigure>,
}

#[derive(Serialize)]
struct RecallFigure {
    n: usize,
    dtype: String,
    k: usize,
    queries: usize,
    recall: f64,
}

#[derive(Serialize)]
struct OutcomeFigure {
    bank: usize,
    updates_per_batch: usize,
    timing: Timing,
    updates_per_s: f64,
}

#[derive(Serialize)]
struct DurableFigure {
    sync: String,
    updates_per_batch: usize,
    timing: Timing,
    batches_per_s: f64,
    updates_per_s: f64,
}

#[derive(Serialize)]
struct SnapshotFigure {
    memories: usize,
    bytes: u64,
    save: Timing,
    load: Timing,
}

#[derive(Serialize)]
struct BatchingFigure {
    n: usize,
    dtype: String,
    callers: usize,
    queries: usize,
    batched_queries_per_s: f64,
    one_at_a_time_queries_per_s: f64,
    speedup: f64,
}

fn ms(t: f64) -> String {
    format!("{:.3}", t * 1e3)
}

pub(crate) fn bench(args: &BenchArgs) -> Result<()> {
    let device = memrl::parse_device(&args.device)?;
    let (min_reps, min_time) = if args.quick {
        (3, Duration::from_millis(300))
    } else {
        (7, Duration::from_secs(2))
    };
    let ns = args.n.clone().unwrap_or_else(|| {
        if args.quick {
            vec![10_000, 100_000]
        } else {
            vec![10_000, 100_000, 1_000_000]
        }
    });
    let dtypes = args
        .dtype
        .iter()
        .map(|d| d.parse::<KeyDType>())
        .collect::<memrl::Result<Vec<_>>>()?;
    let threads = rayon::current_num_threads();
    println!("memrl bench on {} ({threads} threads)", args.device);

    let ceilings = measure_ceilings(&device, args.quick, min_time)?;
    println!(
        "ceilings: memory read {:.1} GB/s, f32 matrix product {:.1} GFLOP/s",
        ceilings.read_bytes_per_s / 1e9,
        ceilings.matmul_flop_per_s / 1e9
    );

    println!(
        "\nretrieval (d 384, k1 {}, k2 5, delta -1; memory = the process's peak resident memory during the calls):\n{:>6} {:>9} {:>5} {:>11} {:>11} {:>11} {:>8} {:>9} {:>10}",
        args.k1, "dtype", "N", "B", "median ms", "p95 ms", "queries/s", "bound", "roofline", "memory MB"
    );
    let mut retrieval = Vec::new();
    let mut recalls = Vec::new();
    let queries = random_queries(100, 7);
    for &n in &ns {
        // One bank alive at a time, so each case's peak memory is its own bank's.
        let mut exact: Option<Vec<Vec<u64>>> = None;
        for &dtype in &dtypes {
            let bank = random_bank(n, dtype, &device, 42)?;
            for &b in &args.b {
                let case = retrieval_case(&bank, b, args.k1, &ceilings, min_reps, min_time)?;
                let memory = case
                    .peak_rss_bytes
                    .map(|m| format!("{:.0}", m as f64 / 1e6))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:>6} {:>9} {:>5} {:>11} {:>11} {:>11.1} {:>8} {:>9.2} {:>10}",
                    case.dtype,
                    n,
                    b,
                    ms(case.timing.median_s),
                    ms(case.timing.p95_s),
                    case.queries_per_s,
                    case.bound,
                    case.roofline_fraction,
                    memory
                );
                retrieval.push(case);
            }
            // Reduced-precision keys against f32 keys built from the same vectors.
            let ids = top_ids(&bank, &queries, args.k1)?;
            match (&exact, dtype) {
                (None, KeyDType::F32) => exact = Some(ids),
                (Some(exact), KeyDType::F16 | KeyDType::Bf16) => recalls.push(RecallFigure {
                    n,
                    dtype: dtype.as_str().into(),
                    k: args.k1,
                    queries: queries.len(),
                    recall: recall(exact, &ids),
                }),
                _ => {}
            }
        }
    }
    for r in &recalls {
        println!(
            "recall@{} of {} keys against f32, N = {}: {:.4} ({} queries)",
            r.k, r.dtype, r.n, r.recall, r.queries
        );
    }

    let (outcomes, snapshot, durable_outcomes) = if args.retrieval_only {
        (None, None, Vec::new())
    } else {
        let n = if args.quick { 10_000 } else { 100_000 };
        let bank = random_bank(n, KeyDType::F32, &device, 5)?;
        let timing = outcome_case(&bank, 1000, min_reps, min_time)?;
        let outcomes = OutcomeFigure {
            bank: n,
            updates_per_batch: 1000,
            timing,
            updates_per_s: 1000.0 / timing.median_s,
        };
        println!(
            "\noutcome updates: batches of 1000 on a bank of {n}: median {} ms, {:.2}M updates/s",
            ms(timing.median_s),
            outcomes.updates_per_s / 1e6
        );
        let snapshot = snapshot_case(&bank, &device, min_reps, min_time)?;
        let durable = durable_case(bank, min_reps, min_time)?;
        (Some(outcomes), Some(snapshot), durable)
    };

    let batching = match (ns.iter().max(), dtypes.first()) {
        (Some(&n), Some(&dtype)) if args.callers > 0 => {
            let bank = random_bank(n, dtype, &device, 42)?;
            Some(batching_case(bank, args.callers, args)?)
        }
        _ => None,
    };
    let report = Report {
        device: args.device.clone(),
        threads,
        ceilings,
        retrieval,
        recall: recalls,
        outcomes,
        snapshot,
        durable_outcomes,
        batching,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON: {}", path.display());
    }
    Ok(())
}

/// Snapshot save (a checkpoint of a durable copy of `bank`: the snapshot rewritten, the log
/// emptied) and load (opening the copy to read).
fn snapshot_case(
    bank: &Bank,
    device: &memrl::Device,
    min_reps: usize,
    min_time: Duration,
) -> Result<SnapshotFigure> {
    let dir = std::env::temp_dir().join(format!("memrl-bench-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("bank.safetensors");
    let measured = (|| -> Result<(Timing, Timing, u64)> {
        bank.save_as(&path)?;
        let copy = Bank::options()
            .create(false)
            .device(device.clone())
            .open(&path)?;
        let save = time(min_reps, min_time, || Ok(copy.checkpoint()?))?;
        drop(copy);
        let load = time(min_reps, min_time, || {
            Bank::options()
                .read_only(true)
                .device(device.clone())
                .open(&path)?;
            Ok(())
        })?;
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        Ok((save, load, bytes))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let (save, load, bytes) = measured?;
    println!(
        "snapshot of {} memories ({:.1} MB): save {} ms ({:.0} MB/s), load {} ms ({:.0} MB/s)",
        bank.len(),
        bytes as f64 / 1e6,
        ms(save.median_s),
        bytes as f64 / save.median_s / 1e6,
        ms(load.median_s),
        bytes as f64 / load.median_s / 1e6
    );
    Ok(SnapshotFigure {
        memories: bank.len(),
        bytes,
        save,
        load,
    })
}

/// Outcome batches through a durable bank: each batch one log record, synced before the call
/// returns (`every-batch`, the default) or left to the OS (`never`).
fn durable_case(bank: Bank, min_reps: usize, min_time: Duration) -> Result<Vec<DurableFigure>> {
    let dir = std::env::temp_dir().join(format!("memrl-bench-wal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("bank.safetensors");
    let measured = (|| -> Result<Vec<DurableFigure>> {
        let mut figures = Vec::new();
        for (name, sync) in [
            ("every-batch", SyncPolicy::EveryBatch),
            ("never", SyncPolicy::Never),
        ] {
            for stale in [path.clone(), dir.join("bank.safetensors.wal")] {
                let _ = std::fs::remove_file(stale);
            }
            bank.save_as(&path)?;
            let durable = Bank::options()
                .create(false)
                .sync(sync)
                .device(bank.device())
                .open(&path)?;
            for per_batch in [5, 1000] {
                let timing = outcome_case(&durable, per_batch, min_reps, min_time)?;
                println!(
                    "durable outcome batches of {per_batch} updates, sync {name}: median {} ms, {:.0} batches/s, {:.3}M updates/s",
                    ms(timing.median_s),
                    1.0 / timing.median_s,
                    per_batch as f64 / timing.median_s / 1e6
                );
                figures.push(DurableFigure {
                    sync: name.into(),
                    updates_per_batch: per_batch,
                    timing,
                    batches_per_s: 1.0 / timing.median_s,
                    updates_per_s: per_batch as f64 / timing.median_s,
                });
            }
        }
        Ok(figures)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

/// `callers` threads each retrieving single queries: through one [`Batcher`], then each query
/// its own call on the shared [`Bank`].
fn batching_case(bank: Bank, callers: usize, args: &BenchArgs) -> Result<BatchingFigure> {
    let n = bank.len();
    let dtype = bank.config().dtype.as_str().to_string();
    let bank = Arc::new(bank);
    let cfg = RetrievalConfig {
        delta: -1.0,
        k1: args.k1,
        ..RetrievalConfig::default()
    };
    let per_caller = if args.quick { 2 } else { 4 };
    let queries = random_queries(callers * per_caller, 11);
    let run = |one: &(dyn Fn(&Vec<f32>) -> memrl::Result<()> + Sync)| -> Result<f64> {
        let start = Instant::now();
        std::thread::scope(|s| {
            let handles: Vec<_> = queries
                .chunks(per_caller)
                .map(|mine| s.spawn(move || mine.iter().try_for_each(one)))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(memrl::Error::Internal("a caller panicked".into())))
            })
        })?;
        Ok(queries.len() as f64 / start.elapsed().as_secs_f64())
    };
    let batcher = Batcher::new(bank.clone(), BatchConfig::default())?;
    let batched = run(&|q| {
        batcher
            .retrieve(Query::Vector(q.clone()), Some(cfg.clone()))
            .map(drop)
    })?;
    drop(batcher);
    let alone = run(&|q| bank.retrieve_with(std::slice::from_ref(q), &cfg).map(drop))?;
    println!(
        "\n{callers} concurrent single-query callers, N = {n} {dtype}: batched {batched:.1} queries/s, one query per call {alone:.1} queries/s ({:.1}x)",
        batched / alone
    );
    Ok(BatchingFigure {
        n,
        dtype,
        callers,
        queries: queries.len(),
        batched_queries_per_s: batched,
        one_at_a_time_queries_per_s: alone,
        speedup: batched / alone,
    })
}
