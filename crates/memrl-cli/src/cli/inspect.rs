//! `memrl inspect`: looking inside a bank.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{read_bank, JsonObject};

pub(crate) const INSPECT_HELP: &str = "\
Show what a bank holds: memories, intent keys and shared keys, the model, dimension and key \
dtype, the retrieval and learning configs, and Q telemetry: quantiles, the share of memories \
with Q above, at and below zero, a histogram, and the memories of highest and lowest Q.

Example: memrl inspect --bank bank.safetensors --top 5";

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

pub(crate) fn inspect(args: &InspectArgs) -> Result<()> {
    let bank = read_bank(&args.bank, &memrl::Device::Cpu, None)?;
    let summary = bank.stats(args.bins as usize, args.top);
    let config = bank.config();
    if args.json {
        let line = JsonObject::new()
            .field("bank", &args.bank.display().to_string())?
            .field("model", &config.model_id)?
            .field("dim", &config.dim)?
            .field("dtype", config.dtype.as_str())?
            .field("dedup_sim", &config.dedup_sim)?
            .field("retrieval", &bank.retrieval_config())?
            .field("learning", &bank.learning_config())?
            .field("summary", &summary)?
            .finish();
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
            let memory = bank.get(id);
            let intent = memory.as_ref().map(|m| m.intent.as_str()).unwrap_or("");
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
