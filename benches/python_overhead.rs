//! The Rust side of the Python overhead benchmark (`benches/python/bench.py` runs it in the
//! same run as the Python side and prints the ratios): the same calls on the same bank and
//! queries, timed the same way. Prints one JSON line of median seconds per call.
//!
//! usage: cargo bench -p memrl-bench --bench python_overhead -- BANK QUERIES.f32 REPS
//! (QUERIES: raw little-endian float32 rows of the bank's dimension)

use std::time::Instant;

use memrl::{Bank, BankConfig, NewMemory, Queries};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut() -> memrl::Result<()>) -> memrl::Result<f64> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [bank_path, queries_path, reps] = args.as_slice() else {
        return Err("usage: python_overhead BANK QUERIES.f32 REPS".into());
    };
    let reps: usize = reps.parse()?;
    let bank = Bank::options().read_only(true).open(bank_path)?;
    let dim = bank.config().dim;
    let bytes = std::fs::read(queries_path)?;
    let queries: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let config = memrl::RetrievalConfig {
        k1: 100,
        k2: 5,
        delta: -1.0,
        ..Default::default()
    };
    let mut next = 0usize;
    let n_queries = queries.len() / dim;
    let mut batch = |b: usize| -> &[f32] {
        let start = (next * b) % (n_queries - b + 1);
        next += 1;
        &queries[start * dim..(start + b) * dim]
    };
    let b1 = time(reps, || {
        bank.retrieve_with(Queries::Rows(batch(1)), &config)
            .map(drop)
    })?;
    let b256 = time(reps.div_ceil(8).max(3), || {
        bank.retrieve_with(Queries::Rows(batch(256)), &config)
            .map(drop)
    })?;
    // add of 1,000 vectors into a new bank in memory: the memories built from flat rows and
    // texts, as the binding builds them, then one add_many.
    let rows = &queries[..1000 * dim];
    let add = {
        let mut times = Vec::new();
        for _ in 0..reps.div_ceil(4).max(3) {
            let fresh = Bank::in_memory(BankConfig::new(dim, "bench"))?;
            let t0 = Instant::now();
            let memories: Vec<NewMemory> = rows
                .chunks(dim)
                .map(|r| NewMemory::new("intent", "experience").embedding(r.to_vec()))
                .collect();
            fresh.add_many(memories)?;
            times.push(t0.elapsed().as_secs_f64());
        }
        median(times)
    };
    println!(
        "{}",
        serde_json::json!({"peer": "rust", "retrieve_b1_s": b1, "retrieve_b256_s": b256,
                           "add_1000_s": add, "memories": bank.len(), "dim": dim,
                           "threads": rayon::current_num_threads()})
    );
    Ok(())
}
