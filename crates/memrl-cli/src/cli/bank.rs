//! `memrl index` and `memrl add`: memories in, through the embedder, into a bank on disk.
//!
//! `index` is a bulk load: everything is applied in memory and written as one new snapshot
//! (the log emptied), so a bad line, a wrong model or a failed save leaves the files exactly as
//! they were. `add` is one record of the bank's write-ahead log, synced before it returns.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use memrl::ingest::{read_jsonl, MemoryRecord};
use memrl::{Bank, KeyDType};

use super::{bank_model, open_bank, warn_checkpoint, ModelArgs};

/// Records embedded and added per step: large enough for the embedder's token-budget chunks,
/// small enough that a multi-GB input never sits in memory.
const INDEX_BATCH: usize = 1024;

pub(crate) const INDEX_HELP: &str = "\
Create or extend a bank from a JSON Lines file of memories, one object per line:
  {\"intent\": \"...\", \"experience\": \"...\", \"q\": 0.0, \"success\": false, \"id\": 7, \"metadata\": {...}}
`intent` and `experience` are required; the others are optional. Intents are embedded with the \
model (the bank's own when it exists) and filed in the bank; an existing bank keeps everything \
it holds. The input is streamed; the bank is written once at the end as a new snapshot \
(atomically, its write-ahead log emptied): on any error (a bad line names its file, line and \
field) nothing is written.

Example: memrl index --input memories.jsonl --bank bank.safetensors";

pub(crate) const ADD_HELP: &str = "\
Add one memory to a bank (created if missing), embedding its intent with the bank's model. The \
add is appended to the bank's write-ahead log (<bank>.wal) and synced before the command returns.

Example: memrl add --bank bank.safetensors --intent \"book a flight\" --experience \"search by airport code\" --success";

/// Arguments of `memrl index`.
#[derive(Args, Debug)]
pub(crate) struct IndexArgs {
    /// JSON Lines file of memories.
    #[arg(long)]
    input: PathBuf,
    /// The bank file (.safetensors); created if missing.
    #[arg(long)]
    bank: PathBuf,
    #[command(flatten)]
    new_bank: NewBankArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Print nothing on success.
    #[arg(long)]
    quiet: bool,
}

/// Settings of a bank that does not exist yet (for an existing bank, a value that differs
/// from the stored one is an error: it cannot apply).
#[derive(Args, Debug)]
struct NewBankArgs {
    /// Storage precision of a new bank's keys: f32 (the default), f16 or bf16.
    #[arg(long)]
    dtype: Option<KeyDType>,
    /// Intent sharing threshold of a new bank (default 0.90; 1.0 turns sharing off).
    #[arg(long)]
    dedup_sim: Option<f32>,
}

/// Arguments of `memrl add`.
#[derive(Args, Debug)]
pub(crate) struct AddArgs {
    /// The bank file (.safetensors); created if missing.
    #[arg(long)]
    bank: PathBuf,
    /// The task the memory is filed under.
    #[arg(long)]
    intent: String,
    /// What the agent should be told.
    #[arg(long)]
    experience: String,
    /// Initial utility (default: the bank's q_init).
    #[arg(long, allow_negative_numbers = true)]
    q: Option<f32>,
    /// The episode succeeded.
    #[arg(long)]
    success: bool,
    /// Memory id (default: the next free one).
    #[arg(long)]
    id: Option<u64>,
    /// Metadata, as a JSON value.
    #[arg(long)]
    metadata: Option<String>,
    #[command(flatten)]
    new_bank: NewBankArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Print nothing on success.
    #[arg(long)]
    quiet: bool,
}

/// The bank at `path` opened for writing, with an embedder of its model; or, when there is no
/// bank yet, a new one in memory (with `new_bank`'s settings) that [`finish`] writes to `path`
/// once everything is in it: a failed command leaves no bank behind.
fn open(path: &Path, new_bank: &NewBankArgs, model: &ModelArgs) -> Result<(Bank, bool)> {
    let device = model.device()?;
    let existed = path.exists();
    if !existed {
        // Before the model loads and anything is embedded.
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            anyhow::bail!(
                "{}: the folder {} does not exist",
                path.display(),
                dir.display()
            );
        }
    }
    let embedder = model.embedder(bank_model(path)?.as_deref(), &device)?;
    let mut options = Bank::options().device(device).embedder(embedder);
    if let Some(dtype) = new_bank.dtype {
        options = options.dtype(dtype);
    }
    if let Some(dedup_sim) = new_bank.dedup_sim {
        options = options.dedup_sim(dedup_sim);
    }
    if existed {
        Ok((open_bank(path, options.create(false))?, true))
    } else {
        Ok((options.in_memory()?, false))
    }
}

/// Writes a bank built in memory by [`open`] to `path` (a durable bank is already on disk).
fn finish(bank: &Bank, path: &Path) -> Result<()> {
    if !bank.is_durable() {
        bank.save_as(path)
            .with_context(|| format!("creating {}", path.display()))?;
    }
    Ok(())
}

pub(crate) fn index(args: &IndexArgs) -> Result<()> {
    let started = Instant::now();
    let (bank, existed) = open(&args.bank, &args.new_bank, &args.model)?;
    let before = (bank.len(), bank.num_intents());
    let context = || {
        format!(
            "indexing {} into {}",
            args.input.display(),
            args.bank.display()
        )
    };
    let truncated = bank
        .bulk(|load| {
            let mut batch = Vec::with_capacity(INDEX_BATCH);
            let mut records = read_jsonl::<MemoryRecord>(&args.input)?;
            loop {
                let record = records.next().transpose()?;
                let last = record.is_none();
                batch.extend(record.map(|r| r.into_new_memory(None)));
                if batch.len() == INDEX_BATCH || (last && !batch.is_empty()) {
                    tracing::info!(memories = load.len() + batch.len(), "indexing");
                    load.add_many(std::mem::take(&mut batch))?;
                }
                if last {
                    return Ok(load.truncated());
                }
            }
        })
        .with_context(context)?;
    finish(&bank, &args.bank)?;
    let added = bank.len() - before.0;
    let seconds = started.elapsed().as_secs_f64();
    if !args.quiet {
        let max_tokens = bank.embedder().map_or(0, |e| e.max_tokens());
        println!(
            "{} {}: +{added} memories (+{} intent keys), {} in all; {truncated} intents truncated at {max_tokens} tokens; {seconds:.1} s, {:.0} memories/s",
            if existed { "extended" } else { "created" },
            args.bank.display(),
            bank.num_intents() - before.1,
            bank.len(),
            added as f64 / seconds.max(1e-9),
        );
    }
    Ok(())
}

pub(crate) fn add(args: &AddArgs) -> Result<()> {
    let (bank, _) = open(&args.bank, &args.new_bank, &args.model)?;
    let metadata = match &args.metadata {
        Some(text) => Some(serde_json::from_str(text).context("--metadata is not valid JSON")?),
        None => None,
    };
    let record = MemoryRecord {
        id: args.id,
        intent: args.intent.clone(),
        experience: args.experience.clone(),
        q: args.q,
        success: args.success,
        metadata,
    };
    let id = bank.add(record.into_new_memory(None))?;
    finish(&bank, &args.bank)?;
    warn_checkpoint(&bank);
    if !args.quiet {
        println!("added memory {id} to {}", args.bank.display());
    }
    Ok(())
}
