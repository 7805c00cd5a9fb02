//! `memrl calibrate`: the paper's delta and fixed-zsim statistics from a bank or a file.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use memrl::ingest::read_jsonl_field;
use memrl::{calibrate as calibrate_rows, Bank, Calibration, ZSim, DEFAULT_MAX_PAIRS};

use super::{open_bank, read_bank, warn_checkpoint, ModelArgs};

pub(crate) const CALIBRATE_HELP: &str = "\
Calibrate retrieval the way the paper does: delta = the top-20% quantile (80th percentile) of \
the pairwise cosine similarities between intents, and the mean and std of that distribution for \
the `fixed` zsim mode. From a bank (its intent keys) or from a JSON Lines file of intents \
(embedded with --model). Above --max-pairs pairs, that many are sampled with --seed. --write \
stores delta in the bank's retrieval config (and, with --fixed-zsim, switches zsim to fixed with \
the measured mean and std) as one record of the bank's write-ahead log.

Example: memrl calibrate --bank bank.safetensors --write";

/// Arguments of `memrl calibrate`.
#[derive(Args, Debug)]
pub(crate) struct CalibrateArgs {
    /// Calibrate from this bank's intent keys.
    #[arg(long, conflicts_with = "input", required_unless_present = "input")]
    bank: Option<PathBuf>,
    /// Calibrate from a JSON Lines file of intents.
    #[arg(long)]
    input: Option<PathBuf>,
    /// The field of --input holding the intent.
    #[arg(long, default_value = "intent")]
    field: String,
    /// Pairs measured before sampling starts.
    #[arg(long, default_value_t = DEFAULT_MAX_PAIRS)]
    max_pairs: usize,
    /// Seed of the pair sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Store delta in the bank's retrieval config (needs --bank).
    #[arg(long)]
    write: bool,
    /// With --write: also set zsim to fixed with the measured mean and std.
    #[arg(long)]
    fixed_zsim: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

fn report(c: &Calibration, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(c)?);
    } else {
        println!(
            "delta {:.4}  (80th percentile of {} pairwise similarities among {} intents{})",
            c.delta,
            c.pairs,
            c.intents,
            if c.sampled { ", sampled" } else { "" }
        );
        println!("mean  {:.4}  std {:.4}  (for --zsim fixed)", c.mean, c.std);
    }
    Ok(())
}

pub(crate) fn calibrate(args: &CalibrateArgs) -> Result<()> {
    if args.write && args.bank.is_none() {
        bail!("--write stores the calibration in a bank: give --bank");
    }
    if args.fixed_zsim && !args.write {
        bail!("--fixed-zsim goes with --write");
    }
    let device = args.model.device()?;
    if let Some(path) = &args.bank {
        let bank = read_bank(path, &device, None)?;
        let c = bank.calibrate(args.max_pairs, args.seed)?;
        report(&c, args.json)?;
        if args.write {
            drop(bank);
            // One logged record. The config is read again under the writer's lock, so only
            // delta (and zsim) change even if another writer changed the rest meanwhile.
            let bank = open_bank(path, Bank::options().create(false).device(device))?;
            let mut cfg = bank.retrieval_config();
            cfg.delta = c.delta;
            if args.fixed_zsim {
                cfg.zsim = ZSim::Fixed {
                    mean: c.mean,
                    std: c.std,
                };
            }
            bank.set_retrieval_config(cfg)?;
            warn_checkpoint(&bank);
            eprintln!("stored in {}", path.display());
        }
        return Ok(());
    }
    let Some(input) = &args.input else {
        bail!("give --bank or --input");
    };
    let embedder = args.model.embedder(None, &device)?;
    let mut texts = Vec::new();
    for text in read_jsonl_field(input, &args.field)? {
        texts.push(text?);
    }
    let rows = embedder
        .embed(&texts)?
        .vectors
        .flatten_all()?
        .to_vec1::<f32>()?;
    let c = calibrate_rows(&rows, embedder.dim(), args.max_pairs, args.seed)?;
    report(&c, args.json)
}
