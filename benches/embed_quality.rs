//! How close the int8 encoder is to the f32 one, measured: one line of JSON with
//!
//! - the cosine of int8 and of f32 vectors to sentence-transformers' on the 64 reference texts
//!   (worst and mean), and of int8 to memrl's own f32 vectors;
//! - recall@10 of int8 retrieval against f32 retrieval over the 10,000-sentence corpus used as a
//!   bank, with its own sentences as the queries: for each query, the share of the f32 top 10
//!   (f32 query, f32 bank) that the int8 top 10 (int8 query, int8 bank) also finds. Reported
//!   with the query itself counted (it is its own best hit in both), without it (top 10 of the
//!   other 9,999), and for int8 queries against an f32 bank (a bank built before switching).
//!   Ties order by row, so equal texts cannot make the two lists differ by chance.
//!
//! `cargo bench --bench embed_quality` (env: MEMRL_BENCH_N texts of the corpus, 0 = all).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use memrl::embed::{Embedder, EmbedderOptions, Precision};
use memrl::models::{resolve, ResolveOptions};

const K: usize = 10;

/// A file the repository ships (`tests/fixtures/...`, `data/...`).
fn shipped(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn jsonl(path: &PathBuf) -> anyhow::Result<Vec<serde_json::Value>> {
    std::fs::read_to_string(path)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn worst_and_mean(values: &[f64]) -> (f64, f64) {
    let worst = values.iter().copied().fold(f64::INFINITY, f64::min);
    (worst, values.iter().sum::<f64>() / values.len() as f64)
}

/// The top `K` rows of `bank` for every row of `queries` (both unit rows, `n x d`), by dot
/// product, best first, ties by lower row; `skip_self` leaves out row `i` for query `i`.
fn top_k(
    queries: &[Vec<f32>],
    bank: &[Vec<f32>],
    skip_self: bool,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let d = bank[0].len();
    let flat = |rows: &[Vec<f32>]| rows.iter().flatten().copied().collect::<Vec<f32>>();
    let bank_t = Tensor::from_vec(flat(bank), (bank.len(), d), &Device::Cpu)?.t()?;
    let mut out = Vec::with_capacity(queries.len());
    for (c, chunk) in queries.chunks(512).enumerate() {
        let q = Tensor::from_vec(flat(chunk), (chunk.len(), d), &Device::Cpu)?;
        let scores = q.matmul(&bank_t)?.to_vec2::<f32>()?;
        for (i, row) in scores.iter().enumerate() {
            let me = c * 512 + i;
            let mut idx: Vec<u32> = (0..row.len() as u32)
                .filter(|&j| !(skip_self && j as usize == me))
                .collect();
            let cmp =
                |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            idx.select_nth_unstable_by(K - 1, cmp);
            idx.truncate(K);
            idx.sort_by(cmp);
            out.push(idx);
        }
    }
    Ok(out)
}

fn recall(truth: &[Vec<u32>], got: &[Vec<u32>]) -> f64 {
    let hits: usize = truth
        .iter()
        .zip(got)
        .map(|(t, g)| t.iter().filter(|x| g.contains(x)).count())
        .sum();
    hits as f64 / (truth.len() * K) as f64
}

fn main() -> anyhow::Result<()> {
    let model = resolve("all-MiniLM-L6-v2", &ResolveOptions::default(), &mut |l| {
        eprintln!("{l}")
    })?;
    let load = |precision| -> anyhow::Result<Embedder> {
        let options = EmbedderOptions {
            precision,
            ..EmbedderOptions::default()
        };
        Ok(Embedder::load_with(&model, &Device::Cpu, &options)?)
    };
    let (f32_model, int8_model) = (load(Precision::F32)?, load(Precision::Int8)?);

    let fixtures = jsonl(&shipped("tests/fixtures/minilm_reference.jsonl"))?;
    let texts: Vec<String> = fixtures
        .iter()
        .map(|v| v["text"].as_str().unwrap_or_default().to_string())
        .collect();
    let reference: Vec<Vec<f32>> = fixtures
        .iter()
        .map(|v| {
            v["embedding"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let ours = f32_model.embed(&texts)?.to_rows()?;
    let quant = int8_model.embed(&texts)?.to_rows()?;
    let cos = |a: &[Vec<f32>], b: &[Vec<f32>]| -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| dot(x, y)).collect()
    };
    let (int8_worst, int8_mean) = worst_and_mean(&cos(&quant, &reference));
    let (f32_worst, f32_mean) = worst_and_mean(&cos(&ours, &reference));
    let (vs_f32_worst, vs_f32_mean) = worst_and_mean(&cos(&quant, &ours));

    let mut corpus: Vec<String> = jsonl(&shipped("data/corpus.jsonl"))?
        .iter()
        .map(|v| v["text"].as_str().unwrap_or_default().to_string())
        .collect();
    let n: usize = std::env::var("MEMRL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if n > 0 {
        corpus.truncate(n);
    }
    let t0 = Instant::now();
    let bank_f32 = f32_model.embed(&corpus)?.to_rows()?;
    let f32_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let bank_int8 = int8_model.embed(&corpus)?.to_rows()?;
    let int8_s = t0.elapsed().as_secs_f64();
    let (corpus_worst, corpus_mean) = worst_and_mean(&cos(&bank_int8, &bank_f32));

    let truth = top_k(&bank_f32, &bank_f32, false)?;
    let truth_others = top_k(&bank_f32, &bank_f32, true)?;
    let recall_self = recall(&truth, &top_k(&bank_int8, &bank_int8, false)?);
    let recall_others = recall(&truth_others, &top_k(&bank_int8, &bank_int8, true)?);
    let recall_mixed = recall(&truth_others, &top_k(&bank_int8, &bank_f32, true)?);
    println!(
        "{}",
        serde_json::json!({
            "fixtures": texts.len(),
            "int8_vs_reference_cosine": {"worst": int8_worst, "mean": int8_mean},
            "f32_vs_reference_cosine": {"worst": f32_worst, "mean": f32_mean},
            "int8_vs_f32_cosine": {"worst": vs_f32_worst, "mean": vs_f32_mean},
            "corpus": corpus.len(),
            "corpus_int8_vs_f32_cosine": {"worst": corpus_worst, "mean": corpus_mean},
            "recall_at_10": recall_self,
            "recall_at_10_without_self": recall_others,
            "recall_at_10_int8_queries_f32_bank_without_self": recall_mixed,
            "embed_s": {"f32": f32_s, "int8": int8_s},
        })
    );
    Ok(())
}
