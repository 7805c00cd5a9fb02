//! `memrl index` and `memrl add`: memories in, through the embedder (or with their own
//! embeddings), into a bank on disk.
//!
//! `index` is a bulk load: everything is applied in memory and written as one new snapshot
//! (the log emptied), so a bad line, a wrong model or a failed save leaves the files exactly as
//! they were. `add` (one memory, or a file of them with `--input`) is one record of the bank's
//! write-ahead log, synced before it returns. Into a missing bank, both build it in memory and
//! write it once everything is in it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use memrl::ingest::MemoryRecord;
use memrl::{Bank, KeyDType, NewMemory, OpenOptions, DEFAULT_MAX_PAIRS};

use super::options::{LearningArgs, RetrievalArgs};
use super::{
    open_bank, read_records, summarise_unknown_fields, warn_checkpoint, ModelArgs, Origins,
    UnknownFields,
};

/// Records embedded and added per step: large enough for the embedder's token-budget chunks,
/// small enough that a multi-GB input never sits in memory.
const INDEX_BATCH: usize = 1024;

pub(crate) const INDEX_HELP: &str = "\
Create or extend a bank from a JSON Lines file of memories, one object per line:
  {\"intent\": \"...\", \"experience\": \"...\", \"q\": 0.0, \"success\": false, \"id\": 7, \"metadata\": {...}, \"embedding\": [...]}
`intent` and `experience` are required; the others are optional. A line's `embedding` (the \
bank's dimension; normalised) is its intent key; other intents are embedded with the model (the \
bank's own when it exists; with --no-model every line must bring one). A field no line takes is \
an error naming file, line and field (`--unknown-fields warn` makes it a warning). The input is \
streamed; the bank is written once at the end as a new snapshot (atomically, its write-ahead log \
emptied): on any error (naming its file, line and field) nothing is written. To append a few \
memories to a large bank, `memrl add --input` writes one log record instead of a new snapshot.

A new bank takes the options below (its stored configuration); its delta is calibrated from its \
intents, the paper's procedure (the top-20% quantile of their pairwise similarity), unless \
--delta is given. For an existing bank those options are an error (they cannot apply): change \
its stored configuration with `memrl config`.

Example: memrl index --input memories.jsonl --bank bank.safetensors";

pub(crate) const ADD_HELP: &str = "\
Add one memory (--intent, --experience, ...), or every memory of a JSON Lines file (--input, \
lines as for `memrl index`), to a bank, embedding intents with the bank's model unless they \
bring an `embedding`. The memories are one batch, all or nothing, appended to the bank's \
write-ahead log (<bank>.wal) as one record and synced before the command returns; the snapshot \
is not rewritten (until the log outgrows it). A bad line names its file, line and field, and \
nothing is written. A missing bank is created, with the options below (a new bank from --input \
gets its delta calibrated, as `memrl index` does).

Example: memrl add --bank bank.safetensors --intent \"book a flight\" --experience \"search by airport code\" --success";

/// Settings of a bank that does not exist yet. For an existing bank, the shape (dtype,
/// dedup_sim, dim, model id) must match what it stores, and the configuration options cannot
/// apply.
#[derive(Args, Debug, Default)]
pub(crate) struct NewBankArgs {
    /// Storage precision of a new bank's keys: f32 (the default), f16 or bf16.
    #[arg(long, help_heading = "New bank")]
    dtype: Option<KeyDType>,
    /// Intent sharing threshold of a new bank (default 0.90; 1.0 turns sharing off).
    #[arg(long, help_heading = "New bank")]
    dedup_sim: Option<f32>,
    /// Embedding dimension of a new bank without a model (--no-model).
    #[arg(long, help_heading = "New bank", requires = "no_model")]
    dim: Option<usize>,
    /// The model a new bank's vectors come from, recorded in it (--no-model).
    #[arg(long, help_heading = "New bank", requires = "no_model")]
    model_id: Option<String>,
    #[command(flatten)]
    retrieval: RetrievalArgs,
    #[command(flatten)]
    learning: LearningArgs,
}

impl NewBankArgs {
    /// Whether --delta was given (else a new bank's delta is calibrated, or the default).
    pub(crate) fn delta_given(&self) -> bool {
        self.retrieval.delta.is_some()
    }

    /// The configuration flags given (those that cannot apply to an existing bank).
    pub(crate) fn config_flags(&self) -> Vec<&'static str> {
        let mut flags = self.retrieval.given();
        flags.extend(self.learning.given());
        flags
    }
}

/// Arguments of `memrl index`.
#[derive(Args, Debug)]
pub(crate) struct IndexArgs {
    /// JSON Lines file of memories.
    #[arg(long)]
    input: PathBuf,
    /// The bank file (.safetensors); created if missing.
    #[arg(long)]
    bank: PathBuf,
    /// A field no memory line takes: `error` (the default) or `warn`.
    #[arg(long, value_enum, default_value_t)]
    unknown_fields: UnknownFields,
    #[command(flatten)]
    new_bank: NewBankArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Print nothing on success.
    #[arg(long)]
    quiet: bool,
}

/// Arguments of `memrl add`.
#[derive(Args, Debug)]
pub(crate) struct AddArgs {
    /// The bank file (.safetensors); created if missing.
    #[arg(long)]
    bank: PathBuf,
    /// A JSON Lines file of memories to add as one batch (instead of --intent ...).
    #[arg(long, conflicts_with_all = ["intent", "experience", "q", "success", "id", "metadata", "embedding"])]
    input: Option<PathBuf>,
    /// The task the memory is filed under.
    #[arg(long, required_unless_present = "input", requires = "experience")]
    intent: Option<String>,
    /// What the agent should be told.
    #[arg(long, required_unless_present = "input")]
    experience: Option<String>,
    /// Initial utility (default: the bank's q_init).
    #[arg(long)]
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
    /// The intent's embedding, as a JSON array (instead of embedding the intent).
    #[arg(long)]
    embedding: Option<String>,
    /// With --input, a field no memory line takes: `error` (the default) or `warn`.
    #[arg(long, value_enum, default_value_t)]
    unknown_fields: UnknownFields,
    #[command(flatten)]
    new_bank: NewBankArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Print nothing on success.
    #[arg(long)]
    quiet: bool,
}

/// The options to open the bank at `path` with: an embedder of its model (none with
/// --no-model) and `new_bank`'s shape. Refuses configuration flags for an existing bank, and a
/// new bank's missing pieces, before the model loads. Returns whether the bank exists.
pub(crate) fn bank_options(
    path: &Path,
    new_bank: &NewBankArgs,
    model: &ModelArgs,
) -> Result<(OpenOptions, bool)> {
    let device = model.device()?;
    let existed = path.exists();
    if existed {
        let flags = new_bank.config_flags();
        if !flags.is_empty() {
            bail!(
                "{} set a new bank's configuration, but {} exists and they cannot apply to it: \
                 change its stored configuration with `memrl config --bank {} {}`",
                flags.join(", "),
                path.display(),
                path.display(),
                flags
                    .iter()
                    .map(|f| format!("{f} ..."))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    } else {
        // Before the model loads and anything is embedded.
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "{}: the folder {} does not exist",
                path.display(),
                dir.display()
            );
        }
        if model.no_model && (new_bank.dim.is_none() || new_bank.model_id.is_none()) {
            bail!(
                "{} does not exist, and a new bank without a model (--no-model) needs --dim and --model-id: the dimension of its vectors and the model they come from",
                path.display()
            );
        }
        // The new bank's configuration, validated before anything is loaded or created.
        new_bank.retrieval.apply(&Default::default())?;
        new_bank.learning.apply(&Default::default())?;
    }
    let mut options = Bank::options().device(device.clone());
    if let Some(embedder) = model.embedder_for(path, &device)? {
        options = options.embedder(embedder);
    }
    if let Some(dtype) = new_bank.dtype {
        options = options.dtype(dtype);
    }
    if let Some(dedup_sim) = new_bank.dedup_sim {
        options = options.dedup_sim(dedup_sim);
    }
    if let Some(dim) = new_bank.dim {
        options = options.dim(dim);
    }
    if let Some(model_id) = &new_bank.model_id {
        options = options.model_id(model_id.clone());
    }
    Ok((options, existed))
}

/// Gives a bank just created `new_bank`'s configuration.
pub(crate) fn configure_new(bank: &Bank, new_bank: &NewBankArgs) -> Result<()> {
    bank.set_retrieval_config(new_bank.retrieval.apply(&bank.retrieval_config())?)?;
    bank.set_learning_config(new_bank.learning.apply(&bank.learning_config())?)?;
    Ok(())
}

/// The bank at `path` opened for writing; or, when there is no bank yet, a new one in memory
/// (with `new_bank`'s settings and configuration) that [`finish_new`] writes to `path` once
/// everything is in it: a failed command leaves no bank behind. Returns whether the bank
/// existed.
fn open(path: &Path, new_bank: &NewBankArgs, model: &ModelArgs) -> Result<(Bank, bool)> {
    let (options, existed) = bank_options(path, new_bank, model)?;
    if existed {
        return Ok((open_bank(path, options.create(false))?, true));
    }
    let bank = options.in_memory()?;
    configure_new(&bank, new_bank)?;
    Ok((bank, false))
}

/// For a bank just built in memory: calibrates delta from its intents unless --delta was given
/// (the paper's procedure; the spec's 0.5 suits almost no embedding model), then writes it to
/// `path`. Says what delta the bank got.
fn finish_new(bank: &Bank, path: &Path, new_bank: &NewBankArgs, quiet: bool) -> Result<()> {
    let note = match new_bank.retrieval.delta {
        Some(delta) => format!("delta {delta} (--delta)"),
        None if bank.num_intents() >= 2 => {
            let c = bank.calibrate(DEFAULT_MAX_PAIRS, 0)?;
            let mut cfg = bank.retrieval_config();
            cfg.delta = c.delta;
            bank.set_retrieval_config(cfg)?;
            format!(
                "delta {:.4}, calibrated from its {} intents (the paper's procedure: the top 20% of {} pairwise similarities{}; --delta sets it)",
                c.delta,
                c.intents,
                c.pairs,
                if c.sampled { ", sampled" } else { "" }
            )
        }
        None => format!(
            "delta {} (the paper's default: too few intents to calibrate; run `memrl calibrate --bank {} --write` once it holds more)",
            bank.retrieval_config().delta,
            path.display()
        ),
    };
    bank.save_as(path)
        .with_context(|| format!("creating {}", path.display()))?;
    if !quiet {
        eprintln!("new bank {}: {note}", path.display());
    }
    Ok(())
}

/// What a memory line must fit: the bank's dimension, and whether a line without an embedding
/// can be embedded.
#[derive(Clone, Copy)]
struct Fit {
    dim: usize,
    has_model: bool,
}

impl Fit {
    fn of(bank: &Bank) -> Self {
        Self {
            dim: bank.config().dim,
            has_model: bank.embedder().is_some(),
        }
    }
}

/// Checks what the library cannot tie to a line itself: an embedding's dimension, and that a
/// memory without one has a model to embed it.
fn check_record(
    record: &MemoryRecord,
    line: usize,
    fit: Fit,
    origins: &Origins,
) -> Result<(), memrl::Error> {
    let dim = fit.dim;
    match &record.embedding {
        Some(e) if e.len() != dim => Err(origins.at(
            line,
            "embedding",
            format!("{} components; the bank's dimension is {dim}", e.len()),
        )),
        None if !fit.has_model => Err(origins.at(
            line,
            "embedding",
            "missing, and there is no model to embed the intent with (--no-model)".to_string(),
        )),
        _ => Ok(()),
    }
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
    let mut origins = Origins::new(&args.input);
    let fit = Fit::of(&bank);
    let truncated = bank
        .bulk(|load| {
            let mut batch = Vec::with_capacity(INDEX_BATCH);
            let mut records = read_records::<MemoryRecord>(&args.input, args.unknown_fields)?;
            loop {
                let record = records.next().transpose()?;
                let last = record.is_none();
                if let Some(record) = record {
                    check_record(&record, records.line(), fit, &origins)?;
                    origins.push(records.line(), record.id);
                    batch.push(record.into_new_memory());
                }
                if batch.len() == INDEX_BATCH || (last && !batch.is_empty()) {
                    tracing::info!(memories = load.len() + batch.len(), "indexing");
                    load.add_many(std::mem::take(&mut batch))?;
                    origins.commit();
                }
                if last {
                    return Ok(load.truncated());
                }
            }
        })
        .map_err(|e| origins.locate(e))
        .with_context(context)?;
    summarise_unknown_fields();
    if !existed {
        finish_new(&bank, &args.bank, &args.new_bank, args.quiet)?;
    }
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

/// `add`'s one memory from its flags.
fn flag_memory(args: &AddArgs) -> Result<NewMemory> {
    let metadata = match &args.metadata {
        Some(text) => Some(serde_json::from_str(text).context("--metadata is not valid JSON")?),
        None => None,
    };
    let embedding = match &args.embedding {
        Some(text) => Some(
            serde_json::from_str::<Vec<f32>>(text)
                .context("--embedding is not a JSON array of numbers")?,
        ),
        None => None,
    };
    Ok(NewMemory {
        id: args.id,
        intent: args.intent.clone().unwrap_or_default(),
        embedding,
        experience: args.experience.clone().unwrap_or_default(),
        success: args.success,
        q: args.q,
        metadata,
    })
}

pub(crate) fn add(args: &AddArgs) -> Result<()> {
    let (bank, existed) = open(&args.bank, &args.new_bank, &args.model)?;
    let ids = match &args.input {
        None => {
            let memory = flag_memory(args)?;
            if memory.embedding.is_none() && bank.embedder().is_none() {
                bail!("--no-model: give the intent's --embedding");
            }
            bank.add_many(vec![memory])?
        }
        Some(input) => {
            let mut origins = Origins::new(input);
            let fit = Fit::of(&bank);
            let mut memories = Vec::new();
            let mut records = read_records::<MemoryRecord>(input, args.unknown_fields)?;
            while let Some(record) = records.next() {
                let record = record?;
                check_record(&record, records.line(), fit, &origins)?;
                origins.push(records.line(), record.id);
                memories.push(record.into_new_memory());
            }
            summarise_unknown_fields();
            bank.add_many(memories)
                .map_err(|e| origins.locate(e))
                .with_context(|| format!("adding {} to {}", input.display(), args.bank.display()))?
        }
    };
    if !existed {
        finish_new(&bank, &args.bank, &args.new_bank, args.quiet)?;
    }
    warn_checkpoint(&bank);
    if !args.quiet {
        match ids.as_slice() {
            [id] => println!("added memory {id} to {}", args.bank.display()),
            _ => println!(
                "added {} memories to {} ({} in all)",
                ids.len(),
                args.bank.display(),
                bank.len()
            ),
        }
    }
    Ok(())
}
