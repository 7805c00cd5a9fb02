//! The subcommands of the `memrl` binary, one module each. They parse arguments, call the
//! library and print; anything a library user would also need (reading JSON Lines, embedding,
//! retrieving, saving) lives in the library.

pub(crate) mod bank;
pub(crate) mod bench;
pub(crate) mod calibrate;
pub(crate) mod demo;
pub(crate) mod embed;
pub(crate) mod feedback;
pub(crate) mod inspect;
pub(crate) mod model;
pub(crate) mod plot;
pub(crate) mod query;
pub(crate) mod simulate;

use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;
use memrl::embed::Embedder;
use memrl::models::{resolve, Registry, ResolveOptions};
use memrl::{Bank, Device, OpenOptions};

/// Which embedding model to run, and where.
#[derive(Args, Debug, Clone)]
pub(crate) struct ModelArgs {
    /// Registry name, Hugging Face repo id, or a model directory. Default: the bank's own model
    /// when the bank exists, else the registry's default (all-MiniLM-L6-v2).
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Device for the model and the bank: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
    /// Tokens per forward pass of the embedder (padded to each chunk's longest text).
    #[arg(long)]
    pub(crate) batch_tokens: Option<usize>,
    /// Accept model files the registry has no sha256 for.
    #[arg(long)]
    pub(crate) allow_unverified: bool,
    /// Only use model copies already on disk (no hub, no mirror).
    #[arg(long)]
    pub(crate) offline: bool,
}

impl ModelArgs {
    pub(crate) fn device(&self) -> Result<Device> {
        Ok(memrl::parse_device(&self.device)?)
    }

    /// Resolves and loads the model: `--model`, else `fallback` (a bank's model), else the
    /// registry's default.
    pub(crate) fn embedder(&self, fallback: Option<&str>, device: &Device) -> Result<Embedder> {
        let name = match (&self.model, fallback) {
            (Some(name), _) => name.clone(),
            (None, Some(name)) => name.to_string(),
            (None, None) => Registry::builtin()?.default_model().name.clone(),
        };
        let mut options = ResolveOptions {
            allow_unverified: self.allow_unverified,
            ..ResolveOptions::default()
        };
        if self.offline {
            options.hub = false;
            options.mirror = false;
        }
        let model = resolve(&name, &options, &mut |line| eprintln!("{line}"))?;
        let mut embedder = Embedder::load(&model, device)
            .with_context(|| format!("loading model {}", model.dir.display()))?;
        if let Some(tokens) = self.batch_tokens {
            embedder.set_batch_tokens(tokens)?;
        }
        Ok(embedder)
    }
}

/// Opens the bank at `path` for reading (no lock, no file changed), with `embedder` when
/// given.
pub(crate) fn read_bank(path: &Path, device: &Device, embedder: Option<Embedder>) -> Result<Bank> {
    let mut options = Bank::options().read_only(true).device(device.clone());
    if let Some(embedder) = embedder {
        options = options.embedder(embedder);
    }
    open_bank(path, options)
}

/// Opens `options` at `path` (for writing, it locks the log, replays it, cuts a torn tail, and
/// creates the bank when the options allow), warning about a torn tail: a writer drops it; to a
/// reader it may also be a write still in progress.
pub(crate) fn open_bank(path: &Path, options: OpenOptions) -> Result<Bank> {
    let bank = options
        .open(path)
        .with_context(|| format!("opening bank {}", path.display()))?;
    if let Some(tail) = &bank.recovery().tail {
        let (bytes, reason) = (tail.bytes, &tail.reason);
        let what = if bank.is_read_only() {
            format!("ignored the last {bytes} bytes of its log ({reason}): a write cut short by a crash, or one still in progress")
        } else {
            format!("dropped the last {bytes} bytes of its log ({reason}); everything before them is kept")
        };
        eprintln!("warning: {}: {what}", path.display());
    }
    Ok(bank)
}

/// After a write: a checkpoint that failed does not fail the write (it is safe in the log),
/// but the user hears of it.
pub(crate) fn warn_checkpoint(bank: &Bank) {
    if let Some(problem) = bank.last_checkpoint_error() {
        eprintln!(
            "warning: the write is safe in the bank's log, but rewriting its snapshot failed ({problem}); the next write tries again"
        );
    }
}

/// The model id recorded in the snapshot at `path`, if a bank is there.
pub(crate) fn bank_model(path: &Path) -> Result<Option<String>> {
    if !path.exists() {
        return Ok(None);
    }
    let config = Bank::peek_config(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(config.model_id))
}
