//! `memrl feedback`: learning from outcomes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use memrl::ingest::read_jsonl;
use memrl::{Bank, Outcome};

use super::{open_bank, warn_checkpoint};

pub(crate) const FEEDBACK_HELP: &str = "\
Apply a JSON Lines file of outcomes to a bank, one object per line:
  {\"memory_ids\": [3, 17], \"reward\": 1}
Every memory given to the agent in an episode gets Q <- Q + alpha (r - Q). The whole file is one \
batch: a bad line (named by file, line and field), an unknown memory id or a bad reward rejects \
all of it and changes nothing. An accepted batch is appended to the bank's write-ahead log \
(<bank>.wal) and synced before the command returns; the snapshot is rewritten only once the log \
has grown past it.

Example: memrl feedback --bank bank.safetensors --input outcomes.jsonl";

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

pub(crate) fn feedback(args: &FeedbackArgs) -> Result<()> {
    let outcomes = read_jsonl::<Outcome>(&args.input)?.collect::<memrl::Result<Vec<_>>>()?;
    let bank = open_bank(&args.bank, Bank::options().create(false))?;
    let report = bank
        .apply_outcomes(&outcomes)
        .with_context(|| format!("applying {}", args.input.display()))?;
    warn_checkpoint(&bank);
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
