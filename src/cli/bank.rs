//! `memrl index` and `memrl add`: memories in, through the embedder, into a bank on disk.
//!
//! `index` is a bulk load: everything is applied in memory and written as one new snapshot
//! (the log emptied), so a bad line, a wrong model or a failed save leaves the files exactly as
//! they were. `add` is one record of the bank's write-ahead log, synced before it returns.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use memrl::embed::Embedder;
use memrl::ingest::{read_jsonl, MemoryRecord};
use memrl::{Bank, BankConfig, Device, Engine, KeyDType, NewMemory, OpenOptions};

use super::{check_model, open_engine, settle, ModelArgs};

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

/// The bank at `path` opened for writing (or `None` when it does not exist, with the settings
/// of a new one), and an embedder that matches its keys.
fn open(
    path: &Path,
    new_bank: &NewBankArgs,
    model: &ModelArgs,
    device: &Device,
) -> Result<(Result<Engine, BankConfig>, Embedder)> {
    let existing = if path.exists() {
        Some(open_engine(path, device)?)
    } else {
        None
    };
    let fallback = existing
        .as_ref()
        .map(|e| e.with_bank(|b| b.config().model_id.clone()));
    let embedder = model.embedder(fallback.as_deref(), device)?;
    match existing {
        Some(engine) => {
            engine.with_bank(|bank| check_model(bank, &embedder, path))?;
            Ok((Ok(engine), embedder))
        }
        None => {
            let config = BankConfig {
                dtype: new_bank.dtype,
                dedup_sim: new_bank.dedup_sim,
                ..BankConfig::new(embedder.dim(), embedder.name())
            };
            Ok((Err(config), embedder))
        }
    }
}

/// The records' intents embedded and made into memories.
fn new_memories(
    embedder: &Embedder,
    records: Vec<MemoryRecord>,
) -> memrl::Result<(usize, Vec<NewMemory>)> {
    let intents: Vec<&str> = records.iter().map(|r| r.intent.as_str()).collect();
    let embeddings = embedder.embed(&intents)?;
    let truncated = embeddings.truncated.len();
    let memories = records
        .into_iter()
        .zip(embeddings.to_rows()?)
        .map(|(record, embedding)| record.into_new_memory(embedding))
        .collect();
    Ok((truncated, memories))
}

pub(crate) fn index(args: &IndexArgs) -> Result<()> {
    let started = Instant::now();
    let device = args.model.device()?;
    let (existing, embedder) = open(&args.bank, &args.new_bank, &args.model, &device)?;
    let existed = existing.is_ok();
    let load = |bank: &mut Bank| -> memrl::Result<usize> {
        let mut truncated = 0;
        let mut batch = Vec::with_capacity(INDEX_BATCH);
        let mut records = read_jsonl::<MemoryRecord>(&args.input)?;
        loop {
            let record = records.next().transpose()?;
            let last = record.is_none();
            batch.extend(record);
            if batch.len() == INDEX_BATCH || (last && !batch.is_empty()) {
                tracing::info!(memories = bank.len() + batch.len(), "indexing");
                let (t, memories) = new_memories(&embedder, std::mem::take(&mut batch))?;
                truncated += t;
                bank.add_many(memories)?;
            }
            if last {
                return Ok(truncated);
            }
        }
    };
    let context = || {
        format!(
            "indexing {} into {}",
            args.input.display(),
            args.bank.display()
        )
    };
    let (bank, truncated, before) = match existing {
        Ok(mut engine) => {
            let before = engine.with_bank(|b| (b.len(), b.num_intents()));
            let truncated = engine.bulk(load).with_context(context)?;
            (engine.into_bank(), truncated, before)
        }
        Err(config) => {
            // A new bank is built in memory and created on disk only when all of it is there.
            let mut bank = Bank::new(config, &device)?;
            let truncated = load(&mut bank).with_context(context)?;
            let engine = Engine::create_with(&args.bank, bank, &OpenOptions::default())
                .with_context(|| format!("creating {}", args.bank.display()))?;
            (engine.into_bank(), truncated, (0, 0))
        }
    };
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
    let (existing, embedder) = open(&args.bank, &args.new_bank, &args.model, &device)?;
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
    let (_, memories) = new_memories(&embedder, vec![record])?;
    let ids = match existing {
        Ok(engine) => {
            let ids = engine.add_many(memories)?;
            settle(&engine, &args.bank)?;
            ids
        }
        Err(config) => {
            let mut bank = Bank::new(config, &device)?;
            let ids = bank.add_many(memories)?;
            Engine::create_with(&args.bank, bank, &OpenOptions::default())
                .with_context(|| format!("creating {}", args.bank.display()))?;
            ids
        }
    };
    if !args.quiet {
        for id in ids {
            println!("added memory {id} to {}", args.bank.display());
        }
    }
    Ok(())
}
