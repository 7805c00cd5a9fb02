//! `memrl query`: two-phase retrieval for query texts, as a table or as JSON Lines.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use memrl::ingest::{read_jsonl, QueryRecord};
use memrl::{Bank, Hit, RetrievalConfig};

use super::{bank_model, read_bank, ModelArgs};

/// Queries embedded and retrieved per step.
const QUERY_BATCH: usize = 256;

pub(crate) const QUERY_HELP: &str = "\
Retrieve memories for one query (--text) or for every line of a JSON Lines file (--input, lines \
{\"text\": \"...\"}). The query is embedded with the bank's model, Phase A keeps the k1 intents \
most similar to it (at or above delta), Phase B ranks their memories by \
(1 - lambda) * z(similarity) + lambda * z(Q) and returns the best k2. Unset options take the \
bank's stored retrieval config. Output: a table per query, or with --json one line per query: \
{\"query\": ..., \"hits\": [{id, experience, q, sim, zsim, zq, score}, ...]}.

Example: memrl query --bank bank.safetensors --text \"book a flight\" --k2 3";

/// Arguments of `memrl query`.
#[derive(Args, Debug)]
pub(crate) struct QueryArgs {
    /// The bank file (.safetensors).
    #[arg(long)]
    bank: PathBuf,
    /// One query text.
    #[arg(long, conflicts_with = "input", required_unless_present = "input")]
    text: Option<String>,
    /// JSON Lines file of queries ({"text": ...} per line).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Intent keys kept by similarity (Phase A).
    #[arg(long)]
    k1: Option<usize>,
    /// Memories returned (Phase B).
    #[arg(long)]
    k2: Option<usize>,
    /// Weight of Q against similarity (0 = similarity only).
    #[arg(long)]
    lambda: Option<f32>,
    /// Similarity gate of Phase A.
    #[arg(long, allow_negative_numbers = true)]
    delta: Option<f32>,
    /// Exploration probability per query.
    #[arg(long)]
    epsilon: Option<f32>,
    /// Seed of exploration.
    #[arg(long)]
    seed: Option<u64>,
    /// One JSON line per query instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

impl QueryArgs {
    fn config(&self, stored: &RetrievalConfig) -> Result<RetrievalConfig> {
        let mut cfg = stored.clone();
        cfg.k1 = self.k1.unwrap_or(cfg.k1);
        cfg.k2 = self.k2.unwrap_or(cfg.k2);
        cfg.lambda = self.lambda.unwrap_or(cfg.lambda);
        cfg.delta = self.delta.unwrap_or(cfg.delta);
        cfg.epsilon = self.epsilon.unwrap_or(cfg.epsilon);
        cfg.seed = self.seed.unwrap_or(cfg.seed);
        cfg.validate()?;
        Ok(cfg)
    }
}

fn print_table(out: &mut impl Write, text: &str, hits: &[Hit]) -> std::io::Result<()> {
    writeln!(out, "query: {text}")?;
    if hits.is_empty() {
        return writeln!(out, "  (no memory passes the similarity gate)");
    }
    writeln!(
        out,
        "  {:>4} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7}  experience",
        "rank", "id", "score", "sim", "q", "zsim", "zq"
    )?;
    for (rank, h) in hits.iter().enumerate() {
        writeln!(
            out,
            "  {:>4} {:>8} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3}  {}",
            rank + 1,
            h.id,
            h.score,
            h.sim,
            h.q,
            h.zsim,
            h.zq,
            h.experience
        )?;
    }
    Ok(())
}

fn run_batch(bank: &Bank, cfg: &RetrievalConfig, texts: &[String], json: bool) -> Result<()> {
    let retrievals = bank.retrieve_with(texts, cfg)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (text, retrieval) in texts.iter().zip(&retrievals) {
        let hits = &retrieval.hits;
        if json {
            let line = serde_json::json!({ "query": text, "hits": hits });
            writeln!(out, "{line}")?;
        } else {
            print_table(&mut out, text, hits)?;
        }
    }
    Ok(())
}

pub(crate) fn query(args: &QueryArgs) -> Result<()> {
    let device = args.model.device()?;
    let embedder = args
        .model
        .embedder(bank_model(&args.bank)?.as_deref(), &device)?;
    let bank = read_bank(&args.bank, &device, Some(embedder))?;
    let cfg = args.config(&bank.retrieval_config())?;
    match (&args.text, &args.input) {
        (Some(text), _) => run_batch(&bank, &cfg, std::slice::from_ref(text), args.json),
        (None, Some(input)) => {
            let mut batch = Vec::with_capacity(QUERY_BATCH);
            for record in read_jsonl::<QueryRecord>(input)? {
                batch.push(record?.text);
                if batch.len() == QUERY_BATCH {
                    run_batch(&bank, &cfg, &batch, args.json)
                        .with_context(|| format!("querying {}", input.display()))?;
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                run_batch(&bank, &cfg, &batch, args.json)
                    .with_context(|| format!("querying {}", input.display()))?;
            }
            Ok(())
        }
        (None, None) => anyhow::bail!("give --text or --input"),
    }
}
