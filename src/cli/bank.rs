//! `memrl index` and `memrl add`: memories in, through the embedder, into a bank on disk.
//!
//! Both load the bank (or create it), apply everything in memory, and save once through the
//! snapshot's atomic path: a bad line, a wrong model or a failed save leaves the file on disk
//! exactly as it was.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use memrl::embed::Embedder;
use memrl::ingest::{read_jsonl, MemoryRecord};
use memrl::{snapshot, Bank, BankConfig, Device, KeyDType};

use super::{check_model, load_bank, ModelArgs};

/// Records embedded and added per step: large enough for the embedder's token-budget chunks,
/// small enough that a multi-GB input never sits in memory.
const INDEX_BATCH: usize = 1024;

pub(crate) const INDEX_HELP: &str = "\
Create or extend a bank from a JSON Lines file of memories, one object per line:
  {\"intent\": \"...\", \"experience\": \"...\", \"q\": 0.0, \"success\": false, \"id\": 7, \"metadata\": {...}}
`intent` and `experience` are required; the others are optional. Intents are embedded with the \
model (the bank's own when it exists) and filed in the bank; an existing bank keeps everything \
it holds. The input is streamed; the bank is saved once at the end, atomically: on any error \
(a bad line names its file, line and field) nothing is written.

Example: memrl index --input memories.jsonl --bank bank.safetensors";

pub(crate) const ADD_HELP: &str = "\
Add one memory to a bank (created if missing), embedding its intent with the bank's model.

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

/// Settings of a bank that does not exist yet (ignored when it does).
#[derive(Args, Debug)]
struct NewBankArgs {
    /// Storage precision of a new bank's keys: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: KeyDType,
    /// Intent sharing threshold of a new bank (1.0 turns sharing off).
    #[arg(long, default_value_t = 0.90)]
    dedup_sim: f32,
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

/// The bank at `path` (or a new one) and an embedder that matches its keys.
fn open(
    path: &Path,
    new_bank: &NewBankArgs,
    model: &ModelArgs,
    device: &Device,
) -> Result<(Bank, Embedder, bool)> {
    let existing = load_bank(path, device)?;
    let fallback = existing.as_ref().map(|b| b.config().model_id.clone());
    let embedder = model.embedder(fallback.as_deref(), device)?;
    match existing {
        Some(bank) => {
            check_model(&bank, &embedder, path)?;
            Ok((bank, embedder, true))
        }
        None => {
            let config = BankConfig {
                dtype: new_bank.dtype,
                dedup_sim: new_bank.dedup_sim,
                ..BankConfig::new(embedder.dim(), embedder.name())
            };
            Ok((Bank::new(config, device)?, embedder, false))
        }
    }
}

/// Embeds the records' intents and adds them as one all-or-nothing batch; returns how many
/// intents were truncated and the new memories' ids.
fn add_records(
    bank: &mut Bank,
    embedder: &Embedder,
    records: Vec<MemoryRecord>,
) -> Result<(usize, Vec<u64>)> {
    let intents: Vec<&str> = records.iter().map(|r| r.intent.as_str()).collect();
    let embeddings = embedder.embed(&intents)?;
    let truncated = embeddings.truncated.len();
    let memories = records
        .into_iter()
        .zip(embeddings.to_rows()?)
        .map(|(record, embedding)| record.into_new_memory(embedding))
        .collect();
    let ids = bank.add_many(memories)?;
    Ok((truncated, ids))
}

pub(crate) fn index(args: &IndexArgs) -> Result<()> {
    let started = Instant::now();
    let device = args.model.device()?;
    let (mut bank, embedder, existed) = open(&args.bank, &args.new_bank, &args.model, &device)?;
    let before = (bank.len(), bank.num_intents());
    let mut truncated = 0;
    let mut batch = Vec::with_capacity(INDEX_BATCH);
    for record in read_jsonl::<MemoryRecord>(&args.input)? {
        batch.push(record?);
        if batch.len() == INDEX_BATCH {
            tracing::info!(memories = bank.len() + batch.len(), "indexing");
            truncated += add_records(&mut bank, &embedder, std::mem::take(&mut batch))
                .with_context(|| format!("indexing {}", args.input.display()))?
                .0;
        }
    }
    if !batch.is_empty() {
        truncated += add_records(&mut bank, &embedder, batch)
            .with_context(|| format!("indexing {}", args.input.display()))?
            .0;
    }
    snapshot::save(&bank, &args.bank).with_context(|| format!("saving {}", args.bank.display()))?;
    let added = bank.len() - before.0;
    let seconds = started.elapsed().as_secs_f64();
    if !args.quiet {
        println!(
            "{} {}: +{added} memories (+{} intent keys), {} in all; {truncated} intents truncated at {} tokens; {seconds:.1} s, {:.0} memories/s",
            if existed { "extended" } else { "created" },
            args.bank.display(),
            bank.num_intents() - before.1,
            bank.len(),
            embedder.max_tokens(),
            added as f64 / seconds.max(1e-9),
        );
    }
    Ok(())
}

pub(crate) fn add(args: &AddArgs) -> Result<()> {
    let device = args.model.device()?;
    let (mut bank, embedder, _) = open(&args.bank, &args.new_bank, &args.model, &device)?;
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
    let (_, ids) = add_records(&mut bank, &embedder, vec![record])?;
    snapshot::save(&bank, &args.bank).with_context(|| format!("saving {}", args.bank.display()))?;
    if !args.quiet {
        for id in ids {
            println!("added memory {id} to {}", args.bank.display());
        }
    }
    Ok(())
}
