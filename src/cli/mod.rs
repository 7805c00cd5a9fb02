//! The subcommands of the `memrl` binary, one module each. They parse arguments, call the
//! library and print; anything a library user would also need (reading JSON Lines, embedding,
//! retrieving, saving) lives in the library.

pub(crate) mod bank;
pub(crate) mod bench;
pub(crate) mod calibrate;
pub(crate) mod demo;
pub(crate) mod embed;
pub(crate) mod inspect;
pub(crate) mod model;
pub(crate) mod plot;
pub(crate) mod query;
pub(crate) mod simulate;

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;
use memrl::embed::Embedder;
use memrl::models::{resolve, Registry, ResolveOptions};
use memrl::wal;
use memrl::{Bank, Device, Engine, LoadOptions, OpenOptions};

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
        Ok(memrl::device::parse_device(&self.device)?)
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

/// Loads the bank at `path` (its snapshot, then its write-ahead log) if the file exists, for
/// reading: no file is changed.
pub(crate) fn load_bank(path: &Path, device: &Device) -> Result<Option<Bank>> {
    if !path.exists() {
        return Ok(None);
    }
    let (bank, recovery) = wal::recover(path, device, &LoadOptions::default())
        .with_context(|| format!("loading bank {}", path.display()))?;
    if let Some(tail) = &recovery.tail {
        // A reader takes no lock: the tail may also be a write in progress.
        eprintln!(
            "warning: {}: ignored the last {} bytes of its log ({}): a write cut short by a crash, or one still in progress",
            path.display(),
            tail.bytes,
            tail.reason
        );
    }
    Ok(Some(bank))
}

/// Opens the bank at `path` for writing (locks its log, replays it, cuts a torn tail).
pub(crate) fn open_engine(path: &Path, device: &Device) -> Result<Engine> {
    let (engine, recovery) = Engine::open(path, device, &OpenOptions::default())
        .with_context(|| format!("opening bank {}", path.display()))?;
    if let Some(tail) = &recovery.tail {
        eprintln!(
            "warning: {}: dropped the last {} bytes of its log ({}); everything before them is kept",
            path.display(),
            tail.bytes,
            tail.reason
        );
    }
    Ok(engine)
}

/// After a logged change: checkpoint (rewrite the snapshot, empty the log) once the log has
/// grown past the snapshot, when replaying it would cost more than loading the bank again.
pub(crate) fn settle(engine: &Engine, path: &Path) -> Result<()> {
    let log = engine.log_bytes().unwrap_or(0);
    let snapshot = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if log > snapshot {
        engine
            .checkpoint()
            .with_context(|| format!("checkpointing {}", path.display()))?;
    }
    Ok(())
}

/// Refuses an embedder that does not match the bank's keys.
pub(crate) fn check_model(bank: &Bank, embedder: &Embedder, path: &Path) -> Result<()> {
    let config = bank.config();
    if config.model_id != embedder.name() || config.dim != embedder.dim() {
        bail!(
            "{} holds keys of model `{}` (dim {}); the model given is `{}` (dim {})",
            path.display(),
            config.model_id,
            config.dim,
            embedder.name(),
            embedder.dim()
        );
    }
    Ok(())
}
