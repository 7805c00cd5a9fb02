//! `memrl feedback`: learning from outcomes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use memrl::{Bank, Outcome};

use super::options::UpdateArgs;
use super::{
    open_bank, read_records, summarise_unknown_fields, warn_checkpoint, Origins, UnknownFields,
};

pub(crate) const FEEDBACK_HELP: &str = "\
Apply a JSON Lines file of outcomes to a bank, one object per line:
  {\"memory_ids\": [3, 17], \"reward\": 1}
Every memory given to the agent in an episode gets Q <- Q + alpha (r - Q). The whole file is one \
batch: a bad line, an unknown memory id or a bad reward (each named by file, line and field) \
rejects all of it and changes nothing. An accepted batch is appended to the bank's write-ahead \
log (<bank>.wal) and synced before the command returns; the snapshot is rewritten only once the \
log has grown past it. The learning options apply to this batch (unset: the bank's stored \
ones); --write also stores them. (Feedback by retrieval id needs the retrieval in the same \
process: see `memrl pipe`.)

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
    /// A field no outcome line takes: `error` (the default) or `warn`.
    #[arg(long, value_enum, default_value_t)]
    unknown_fields: UnknownFields,
    #[command(flatten)]
    update: UpdateArgs,
    /// Store the given learning options as the bank's.
    #[arg(long)]
    write: bool,
    /// Print nothing on success.
    #[arg(long)]
    quiet: bool,
}

pub(crate) fn feedback(args: &FeedbackArgs) -> Result<()> {
    if args.write && args.update.given().is_empty() {
        anyhow::bail!("--write stores the learning options given, and none was");
    }
    let mut origins = Origins::new(&args.input);
    let mut outcomes = Vec::new();
    let mut records = read_records::<Outcome>(&args.input, args.unknown_fields)?;
    while let Some(outcome) = records.next() {
        outcomes.push(outcome?);
        origins.push(records.line(), None);
    }
    summarise_unknown_fields();
    let bank = open_bank(&args.bank, Bank::options().create(false))?;
    let config = args.update.apply(&bank.learning_config())?;
    // The options first: storing them again is harmless, so if the outcomes then fail, running
    // the command again after a fix applies them once.
    if args.write {
        bank.set_learning_config(config.clone())?;
        if !args.quiet {
            eprintln!(
                "stored {} in {}",
                args.update.given().join(", "),
                args.bank.display()
            );
        }
    }
    let report = bank
        .apply_outcomes_with(&outcomes, &config)
        .map_err(|e| origins.locate(e))
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
