//! The server under load, against its peers in the same run (not a test: `cargo bench -p
//! memrl-cli --bench serve_load`; minutes, and 4 GB of memory for the 1M bank).
//!
//! 1. Retrieval: 1, 16, 64 and 256 concurrent clients, each sending single retrievals one after
//!    the other over its own keep-alive connection, over a namespace of 1M vectors (d = 384, f32)
//!    and over one of 100k memories queried by text (embedding included: all-MiniLM-L6-v2, the
//!    queries are BIG-bench sentences). Three systems take turns: `memrl serve` (batching queue
//!    per namespace), `memrl serve --no-batching` (one bank call per request), and the same
//!    clients as threads calling the library's `Batcher` in this process. Throughput, p50, p99.
//! 2. Feedback (group commit): 64 clients sending outcome batches of one memory to a bank synced
//!    per batch, against the same 64 clients made to take turns (one fsync per request, what
//!    the log did before group commit), in process and through the server.
//!
//! Environment: `MEMRL_LOAD_VECTORS` (1000000), `MEMRL_LOAD_TEXTS` (100000),
//! `MEMRL_LOAD_CLIENTS` (1,16,64,256), `MEMRL_LOAD_SECONDS` (10 per cell),
//! `MEMRL_LOAD_DATA` (where the banks are built once and kept; default under target/),
//! `MEMRL_LOAD_ONLY` (`vectors`, `texts` or `feedback`).

#[path = "../tests/server/mod.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memrl::internal::SplitMix64;
use memrl::{Bank, BatchConfig, Batcher, CheckpointPolicy, NewMemory, Outcome, Query, SyncPolicy};
use serde_json::json;
use server::{Http, Server};

const DIM: usize = 384;
const MODEL: &str = "all-MiniLM-L6-v2";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Latencies of one cell, and its rate.
struct Cell {
    requests: usize,
    seconds: f64,
    latencies_ms: Vec<f64>,
}

impl Cell {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank]
    }
}

/// `clients` threads calling `request(client, i)` for `seconds` (after a warm-up of one request
/// each); requests answered after the deadline still count if they started before it.
fn drive(clients: usize, seconds: f64, request: impl Fn(usize, usize) + Sync) -> Cell {
    let stop = AtomicBool::new(false);
    let latencies = Mutex::new(Vec::new());
    // Outside the scope: the threads borrow it for the scope's whole life.
    let barrier = std::sync::Barrier::new(clients + 1);
    let started = std::thread::scope(|s| {
        for c in 0..clients {
            let (stop, latencies, barrier, request) = (&stop, &latencies, &barrier, &request);
            s.spawn(move || {
                request(c, 0);
                barrier.wait();
                let mut mine = Vec::new();
                let mut i = 1;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    request(c, i);
                    mine.push(t.elapsed().as_secs_f64() * 1e3);
                    i += 1;
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
        barrier.wait();
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        started
    });
    let latencies_ms = latencies.into_inner().unwrap();
    Cell {
        requests: latencies_ms.len(),
        seconds: started.elapsed().as_secs_f64(),
        latencies_ms,
    }
}

fn corpus() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/corpus.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Builds `<data>/<name>/bank.safetensors` once: `n` memories with random unit keys (one key
/// each), recorded as keys of `model_id`.
fn build_bank(data: &Path, name: &str, n: usize, model_id: &str) {
    let path = data.join(name).join("bank.safetensors");
    if path.is_file() {
        let bank = Bank::options().read_only(true).open(&path).unwrap();
        if bank.len() == n {
            return;
        }
        drop(bank);
        std::fs::remove_dir_all(data.join(name)).unwrap();
    }
    std::fs::create_dir_all(data.join(name)).unwrap();
    let started = Instant::now();
    let bank = Bank::options()
        .dim(DIM)
        .model_id(model_id)
        .dedup_sim(1.0)
        .checkpoint(CheckpointPolicy::Manual)
        .open(&path)
        .unwrap();
    let mut rng = SplitMix64::new(7);
    bank.bulk(|load| {
        let mut added = 0;
        while added < n {
            let chunk = (n - added).min(50_000);
            let memories = (0..chunk)
                .map(|i| NewMemory {
                    intent: format!("memory {}", added + i),
                    experience: format!("experience {}", added + i),
                    embedding: Some(rng.unit_vector(DIM)),
                    ..Default::default()
                })
                .collect();
            load.add_many(memories)?;
            added += chunk;
        }
        Ok(())
    })
    .unwrap();
    eprintln!(
        "built {name}: {n} memories in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

fn retrieve_body(rng_seed: u64, texts: Option<&[String]>) -> Vec<u8> {
    let body = match texts {
        Some(texts) => json!({"text": texts[(rng_seed as usize) % texts.len()], "delta": -1.0}),
        None => json!({"vector": SplitMix64::new(rng_seed).unit_vector(DIM), "delta": -1.0}),
    };
    serde_json::to_vec(&body).unwrap()
}

/// One row per client count: the three systems.
fn retrieval_table(
    title: &str,
    data: &Path,
    namespace: &str,
    texts: Option<&[String]>,
    clients: &[usize],
    seconds: f64,
) {
    let mut rows: Vec<(usize, [Cell; 3])> = Vec::new();
    let path = format!("/v1/namespaces/{namespace}/retrieve");
    let run_server = |batching: bool| -> Vec<Cell> {
        let mut args = vec!["--model", MODEL];
        if !batching {
            args.push("--no-batching");
        }
        let server = Server::start(data, &args, &[]);
        let cells = clients
            .iter()
            .map(|&n| {
                let conns: Vec<Mutex<Http>> = (0..n).map(|_| Mutex::new(server.http())).collect();
                drive(n, seconds, |c, i| {
                    let body = retrieve_body((c * 1_000_003 + i) as u64, texts);
                    let r = conns[c]
                        .lock()
                        .unwrap()
                        .send(
                            "POST",
                            &path,
                            &[("content-type", "application/json")],
                            Some(&body),
                        )
                        .unwrap();
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                })
            })
            .collect();
        let status = server.terminate(Duration::from_secs(120));
        assert!(status.success());
        cells
    };
    let batched = run_server(true);
    let unbatched = run_server(false);
    let in_process: Vec<Cell> = {
        let mut options = Bank::options().read_only(true);
        if texts.is_some() {
            options = options.model(MODEL);
        }
        let bank = options
            .open(data.join(namespace).join("bank.safetensors"))
            .unwrap();
        let batcher = Batcher::new(Arc::new(bank), BatchConfig::default()).unwrap();
        let config = memrl::RetrievalConfig {
            delta: -1.0,
            ..Default::default()
        };
        clients
            .iter()
            .map(|&n| {
                drive(n, seconds, |c, i| {
                    let seed = (c * 1_000_003 + i) as u64;
                    let query = match texts {
                        Some(texts) => Query::Text(texts[(seed as usize) % texts.len()].clone()),
                        None => Query::Vector(SplitMix64::new(seed).unit_vector(DIM)),
                    };
                    batcher.retrieve(query, Some(config.clone())).unwrap();
                })
            })
            .collect()
    };
    for (((n, b), u), p) in clients.iter().zip(batched).zip(unbatched).zip(in_process) {
        rows.push((*n, [b, u, p]));
    }
    println!("\n### {title}\n");
    println!("| clients | server q/s | p50 ms | p99 ms | unbatched server q/s | p50 ms | p99 ms | in-process batched q/s | p50 ms | p99 ms | server / unbatched | server / in-process |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, [b, u, p]) in &rows {
        println!(
            "| {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x | {:.2}x |",
            b.rate(), b.percentile(50.0), b.percentile(99.0),
            u.rate(), u.percentile(50.0), u.percentile(99.0),
            p.rate(), p.percentile(50.0), p.percentile(99.0),
            b.rate() / u.rate(), b.rate() / p.rate()
        );
    }
}

/// Group commit: acknowledged feedback per second, 64 clients, in process and over HTTP.
fn feedback_table(dir: &Path, seconds: f64) {
    const CLIENTS: usize = 64;
    const MEMORIES: u64 = 1024;
    let path = dir.join("feedback").join("bank.safetensors");
    let _ = std::fs::remove_dir_all(dir.join("feedback"));
    std::fs::create_dir_all(dir.join("feedback")).unwrap();
    let outcome = |c: usize, i: usize| Outcome {
        memory_ids: vec![((c * 7919 + i) as u64) % MEMORIES],
        reward: if i.is_multiple_of(2) { 1.0 } else { -1.0 },
    };
    let (group, turns, syncs) = {
        let bank = Bank::options()
            .dim(8)
            .model_id("feedback")
            .sync(SyncPolicy::EveryBatch)
            .checkpoint(CheckpointPolicy::Manual)
            .open(&path)
            .unwrap();
        let mut rng = SplitMix64::new(1);
        bank.add_many(
            (0..MEMORIES)
                .map(|_| NewMemory::new("", "x").embedding(rng.unit_vector(8)))
                .collect(),
        )
        .unwrap();
        let before = bank.log_syncs().unwrap();
        let group = drive(CLIENTS, seconds, |c, i| {
            bank.apply_outcomes(&[outcome(c, i)]).unwrap();
        });
        let syncs = bank.log_syncs().unwrap() - before;
        // The same clients taking turns: one request, one fsync, as before group commit (the
        // log was synced under the bank's write lock).
        let turn = Mutex::new(());
        let turns = drive(CLIENTS, seconds, |c, i| {
            let _one_at_a_time = turn.lock().unwrap();
            bank.apply_outcomes(&[outcome(c, i)]).unwrap();
        });
        bank.checkpoint().unwrap();
        (group, turns, syncs)
    };
    // Through the server: the same bank as a namespace.
    let server = Server::start(dir, &["--no-model"], &[]);
    let fb = |conn: &Mutex<Http>, c: usize, i: usize| {
        let o = outcome(c, i);
        let body =
            serde_json::to_vec(&json!({"memory_ids": o.memory_ids, "reward": o.reward})).unwrap();
        let r = conn
            .lock()
            .unwrap()
            .send(
                "POST",
                "/v1/namespaces/feedback/feedback",
                &[("content-type", "application/json")],
                Some(&body),
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    };
    let conns: Vec<Mutex<Http>> = (0..CLIENTS).map(|_| Mutex::new(server.http())).collect();
    let http_group = drive(CLIENTS, seconds, |c, i| fb(&conns[c], c, i));
    let one = [Mutex::new(server.http())];
    let http_one = drive(1, seconds, |c, i| fb(&one[0], c, i));
    assert!(server.terminate(Duration::from_secs(120)).success());
    println!("\n### Feedback, group commit (fsync per batch)\n");
    println!("| | acknowledged/s | p50 ms | p99 ms | vs one fsync per request |");
    println!("|---|---|---|---|---|");
    let base = turns.rate();
    for (name, cell) in [
        (
            "in process, 64 threads, one fsync per request (taking turns)",
            &turns,
        ),
        ("in process, 64 threads, group commit", &group),
        ("server, 1 client", &http_one),
        ("server, 64 clients, group commit", &http_group),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.1}x |",
            cell.rate(),
            cell.percentile(50.0),
            cell.percentile(99.0),
            cell.rate() / base
        );
    }
    println!(
        "\nIn process: {} acknowledged outcome batches shared {syncs} fsyncs ({:.1} per fsync).",
        group.requests,
        group.requests as f64 / syncs.max(1) as f64
    );
}

fn main() {
    let vectors: usize = env_or("MEMRL_LOAD_VECTORS", 1_000_000);
    let texts_n: usize = env_or("MEMRL_LOAD_TEXTS", 100_000);
    let seconds: f64 = env_or("MEMRL_LOAD_SECONDS", 10.0);
    let clients: Vec<usize> = std::env::var("MEMRL_LOAD_CLIENTS")
        .unwrap_or_else(|_| "1,16,64,256".into())
        .split(',')
        .map(|c| c.trim().parse().unwrap())
        .collect();
    let only = std::env::var("MEMRL_LOAD_ONLY").ok();
    let data: PathBuf = std::env::var("MEMRL_LOAD_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/serve-load"));
    std::fs::create_dir_all(&data).unwrap();
    let want = |what: &str| only.as_deref().is_none_or(|o| o == what);
    println!(
        "memrl serve under load: {} cores, {seconds} s per cell, clients {clients:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if want("vectors") {
        let dir = data.join("vectors");
        build_bank(&dir, "v", vectors, "bench-vectors");
        retrieval_table(
            &format!(
                "Single retrievals over {vectors} vectors (d = {DIM}, f32, k1 10, k2 5, delta -1)"
            ),
            &dir,
            "v",
            None,
            &clients,
            seconds,
        );
    }
    if want("texts") {
        let dir = data.join("texts");
        build_bank(&dir, "t", texts_n, MODEL);
        let corpus = corpus();
        retrieval_table(
            &format!(
                "Single text retrievals over {texts_n} memories (embedding included, {MODEL})"
            ),
            &dir,
            "t",
            Some(&corpus),
            &clients,
            seconds,
        );
    }
    if want("feedback") {
        feedback_table(&data.join("feedback-data"), seconds);
    }
}
