//! `memrl config`: a bank's stored retrieval and learning configuration, shown or changed.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use memrl::Bank;

use super::options::{LearningArgs, RetrievalArgs};
use super::{open_bank, read_bank, warn_checkpoint, JsonObject};

pub(crate) const CONFIG_HELP: &str = "\
Show a bank's stored retrieval and learning configuration (what `query`, `feedback` and `pipe` \
use when not told otherwise), or change it: each option given replaces its field, the result is \
validated (an invalid value names its field and changes nothing), and each config that changed \
is one record of the bank's write-ahead log, synced before the command returns.

Examples:
  memrl config --bank bank.safetensors
  memrl config --bank bank.safetensors --alpha 0 --lambda 0.5     # MemP: Q never moves
  memrl config --bank bank.safetensors --reward-range -1,1 --out-of-range reject";

/// Arguments of `memrl config`.
#[derive(Args, Debug)]
pub(crate) struct ConfigArgs {
    /// The bank file (.safetensors).
    #[arg(long)]
    bank: PathBuf,
    #[command(flatten)]
    retrieval: RetrievalArgs,
    #[command(flatten)]
    learning: LearningArgs,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn config(args: &ConfigArgs) -> Result<()> {
    let changing = !args.retrieval.given().is_empty() || !args.learning.given().is_empty();
    let bank = if changing {
        let bank = open_bank(&args.bank, Bank::options().create(false))?;
        // Both validated before either is stored.
        let retrieval = args.retrieval.apply(&bank.retrieval_config())?;
        let learning = args.learning.apply(&bank.learning_config())?;
        if retrieval != bank.retrieval_config() {
            bank.set_retrieval_config(retrieval)?;
        }
        if learning != bank.learning_config() {
            bank.set_learning_config(learning)?;
        }
        warn_checkpoint(&bank);
        bank
    } else {
        read_bank(&args.bank, &memrl::Device::Cpu, None)?
    };
    let (retrieval, learning) = (bank.retrieval_config(), bank.learning_config());
    if args.json {
        let line = JsonObject::new()
            .field("retrieval", &retrieval)?
            .field("learning", &learning)?
            .finish();
        println!("{line}");
    } else {
        println!("retrieval   {retrieval:?}");
        println!("learning    {learning:?}");
    }
    Ok(())
}
