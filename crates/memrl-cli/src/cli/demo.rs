//! `memrl demo`: the first thing a new user runs. A small run of the learning benchmark
//! (`memrl simulate`: real corpus texts, the real embedding model, the simulated world of
//! [`memrl_bench::simulate`]), then a snapshot round trip of the bank MemRL learned.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use memrl::Bank;

use super::simulate::{print_locations, write_outputs, SimArgs};

pub(crate) const DEMO_HELP: &str = "\
Run a small learning benchmark (one world of 300 tasks, 10 epochs) and a snapshot round trip.

This is `memrl simulate` at demo size: real BIG-bench sentences embedded by the default model \
(fetched through the model registry on first use), a simulated agent whose success odds depend on \
hidden effects of the memories it is given (no LLM runs), and the policies No memory, RAG, MemP, \
MemRL and an oracle on the same world. It prints the table, writes the learning curves, then saves \
the bank MemRL learned to <OUT>/bank.safetensors and loads it back. See `memrl simulate --help` \
for the world's model.";

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Tasks in the world.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    tasks: u64,
    /// Passes over the task set.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    epochs: u64,
    /// Seed of the world.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    shared: SimArgs,
    /// Output directory (created if missing).
    #[arg(long, default_value = "memrl-demo")]
    out: PathBuf,
}

pub(crate) fn demo(args: &DemoArgs) -> Result<()> {
    let start = Instant::now();
    let config = args
        .shared
        .config(args.tasks, args.epochs, vec![args.seed])?;
    let simulation = args.shared.run(&config)?;
    let table = write_outputs(&simulation.report, &args.out)?;
    println!("{table}");
    print_locations(&args.out);

    let Some((_, bank)) = simulation
        .first_seed_banks
        .iter()
        .find(|(name, _)| name == "MemRL")
    else {
        bail!("the simulation returned no MemRL bank");
    };
    let path = args.out.join("bank.safetensors");
    // The demo's own output of an earlier run gives way to this run's.
    for old in [path.clone(), args.out.join("bank.safetensors.wal")] {
        if old.exists() {
            std::fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    bank.save_as(&path)
        .with_context(|| format!("saving {}", path.display()))?;
    let loaded = Bank::options()
        .read_only(true)
        .open(&path)
        .with_context(|| format!("loading {}", path.display()))?;
    if loaded.memories() != bank.memories() || loaded.config() != bank.config() {
        bail!(
            "the reloaded bank differs from the saved one ({} vs {} memories)",
            loaded.len(),
            bank.len()
        );
    }
    println!(
        "saved the bank MemRL learned ({} memories, {} intent keys) to {} and loaded it back",
        loaded.len(),
        loaded.num_intents(),
        path.display()
    );
    println!("done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
