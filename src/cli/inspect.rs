//! `memrl feedback` and `memrl inspect`: learning from outcomes, and looking inside a bank.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use memrl::ingest::read_jsonl;
use memrl::Outcome;

use super::{load_bank, open_engine, settle};

pub(crate) const FEEDBACK_HELP: &str = "\
Apply a JSON Lines file of outcomes to a bank, one object per line:
  {\"memory_ids\": [3, 17], \"reward\": 1}
Every memory given to the agent in an episode gets Q <- Q + alpha (r - Q). The whole file is one \
batch: a bad line (named by file, line and field), an unknown memory id or a bad reward rejects \
all of it and changes nothing. An accepted batch is appended to the bank's write-ahead log \
(<bank>.wal) and synced before the command returns; the snapshot is rewritten only once the log \
has grown past it.

Example: memrl feedback --bank bank.safetensors --input outcomes.jsonl";

pub(crate) const INSPECT_HELP: &str = "\
Show what a bank holds: memories, intent keys and shared keys, the model, dimension and key \
dtype, the retrieval and learning configs, and Q telemetry: quantiles, the share of memories \
with Q above, at and below zero, a histogram, and the memories of highest and lowest Q.

Example: memrl inspect --bank bank.safetensors --top 5";

/// Arguments of `memrl feedback`.
#[derive(Args, Debug)]
pub(crate) struct FeedbackArgs {
    /// The bank file (.safetensors).
    #[arg(long)]
    bank: PathBuf,
    /// JSON Lines file of outcomes.
    #[arg(long)]
    input: PathBuf,
    /// Print nothing on success.
    #[arg(long)]
    quiet: bool,
}

/// Arguments of `memrl inspect`.
#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// The bank file (.safetensors).
    #[arg(long)]
    bank: PathBuf,
    /// How many memories of highest and of lowest Q to list.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Bins of the Q histogram.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=100))]
    bins: u16,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn feedback(args: &FeedbackArgs) -> Result<()> {
    let device = memrl::Device::Cpu;
    if !args.bank.exists() {
        bail!("{}: no such bank", args.bank.display());
    }
    let outcomes = read_jsonl::<Outcome>(&args.input)?.collect::<memrl::Result<Vec<_>>>()?;
    let engine = open_engine(&args.bank, &device)?;
    let report = engine
        .apply_outcomes(&outcomes)
        .with_context(|| format!("applying {}", args.input.display()))?;
    settle(&engine, &args.bank)?;
    if !args.quiet {
        println!(
            "{}: {} outcomes, {} Q updates over {} memories ({} rewards clamped)",
            args.bank.display(),
            report.outcomes,
            report.updates,
            report.memories,
            report.clamped
        );
    }
    Ok(())
}

pub(crate) fn inspect(args: &InspectArgs) -> Result<()> {
    let device = memrl::Device::Cpu;
    let Some(bank) = load_bank(&args.bank, &device)? else {
        bail!("{}: no such bank", args.bank.display());
    };
    let summary = bank.summary(args.bins as usize, args.top);
    let config = bank.config();
    if args.json {
        let line = serde_json::json!({
            "bank": args.bank.display().to_string(),
            "model": config.model_id,
            "dim": config.dim,
            "dtype": config.dtype.as_str(),
            "dedup_sim": config.dedup_sim,
            "retrieval": bank.retrieval_config(),
            "learning": bank.learning_config(),
            "summary": summary,
        });
        println!("{line}");
        return Ok(());
    }
    println!("bank        {}", args.bank.display());
    println!(
        "model       {} (dim {}, {} keys, intent sharing at {})",
        config.model_id,
        config.dim,
        config.dtype.as_str(),
        config.dedup_sim
    );
    println!(
        "memories    {} under {} intent keys ({} shared by several memories)",
        summary.memories, summary.intents, summary.shared_intents
    );
    println!("retrieval   {:?}", bank.retrieval_config());
    println!("learning    {:?}", bank.learning_config());
    let Some([min, p25, median, p75, max]) = summary.q_quantiles else {
        println!("Q           (no memories)");
        return Ok(());
    };
    let n = summary.memories as f64;
    let [pos, zero, neg] = summary.q_signs;
    println!(
        "Q           min {min:.3}  p25 {p25:.3}  median {median:.3}  p75 {p75:.3}  max {max:.3}"
    );
    println!(
        "            > 0: {:.2}%   = 0: {:.2}%   < 0: {:.2}%",
        100.0 * pos as f64 / n,
        100.0 * zero as f64 / n,
        100.0 * neg as f64 / n
    );
    let peak = summary
        .q_histogram
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let width = (max - min) / summary.q_histogram.len() as f32;
    for (i, &count) in summary.q_histogram.iter().enumerate() {
        let from = min + width * i as f32;
        let bar = "#".repeat((40 * count).div_ceil(peak));
        println!("  {from:>8.3} .. {:>8.3} {count:>8} {bar}", from + width);
    }
    for (title, list) in [("highest Q", &summary.top), ("lowest Q", &summary.bottom)] {
        println!("{title}:");
        for &(id, q) in list.iter() {
            let intent = bank.get(id).map(|m| m.intent.as_str()).unwrap_or("");
            // One line per memory: long intents are cut at 80 characters.
            let mut shown: String = intent.chars().take(80).collect();
            if shown.len() < intent.len() {
                shown.push_str("...");
            }
            println!("  {id:>8} {q:>7.3}  {shown}");
        }
    }
    Ok(())
}
