//! `memrl repair`: cuts a bank's write-ahead log at the damage, on request.
//!
//! A log damaged in the middle (a frame that fails its checksum with intact records after it)
//! makes every open of the bank an error that names the offset, and nothing is changed. This
//! command is the explicit way out: it opens the bank for writing with
//! `OpenOptions::truncate_corrupt_log`, which keeps the snapshot and the records before the
//! damage, saves the cut bytes beside the log and cuts it there, and prints what was dropped.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use memrl::Bank;

pub(crate) const REPAIR_HELP: &str = "\
Repair a bank whose write-ahead log is damaged in the middle: keep the snapshot and every \
record before the damage, cut the log there, and save the cut bytes beside it \
(<bank>.wal.cut-<unix ms>). The records after the damage are lost to the bank: this runs only \
when asked, and says how many it dropped. A bank whose log is intact (or ends in a torn tail, \
which every writer drops anyway) is opened and left as it is.

Example: memrl repair --bank bank.safetensors";

/// Arguments of `memrl repair`.
#[derive(Args, Debug)]
pub(crate) struct RepairArgs {
    /// The bank file (.safetensors); it must exist.
    #[arg(long)]
    bank: PathBuf,
}

pub(crate) fn repair(args: &RepairArgs) -> Result<()> {
    let bank = Bank::options()
        .create(false)
        .truncate_corrupt_log(true)
        .open(&args.bank)
        .with_context(|| format!("repairing bank {}", args.bank.display()))?;
    let recovery = bank.recovery();
    let path = args.bank.display();
    match &recovery.tail {
        Some(tail) if recovery.repaired => {
            let saved = recovery
                .saved_tail
                .as_ref()
                .map_or_else(String::new, |p| format!("; the cut bytes are in {}", p.display()));
            println!(
                "{path}: cut the log at byte {} ({}): dropped {} bytes holding {} intact records{saved}; the bank holds {} memories up to record {}",
                tail.offset,
                tail.reason,
                tail.bytes,
                tail.records,
                bank.len(),
                bank.log_seq()
            );
        }
        Some(tail) => println!(
            "{path}: dropped a torn tail of {} bytes at byte {} ({}): a write cut short, never acknowledged; {} records replayed",
            tail.bytes, tail.offset, tail.reason, recovery.replayed
        ),
        None => println!(
            "{path}: the log is intact ({} records replayed); nothing to repair",
            recovery.replayed
        ),
    }
    Ok(())
}
