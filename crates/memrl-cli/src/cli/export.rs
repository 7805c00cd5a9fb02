//! `memrl export`: every memory of a bank as JSON Lines.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use memrl::{Bank, Memory};

use super::{read_bank, JsonObject};

pub(crate) const EXPORT_HELP: &str = "\
Write every memory of a bank as JSON Lines, in id order, one object per memory:
  {\"id\", \"intent\", \"experience\", \"q\", \"visits\", \"last_reward\", \"success\", \"created_ms\", \
\"updated_ms\", \"metadata\"}
and with --embeddings its unit intent key (`embedding`, as f32) and the ids of the memories \
filed under the same key (`shared_with`). Reads the bank without locking it (snapshot plus log, \
as every reader does). To stdout, or to --out, which appears only once it is complete and is \
never an existing file.

Example: memrl export --bank bank.safetensors --out memories.jsonl";

/// Arguments of `memrl export`.
#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    /// The bank file (.safetensors).
    #[arg(long)]
    bank: PathBuf,
    /// Output file (default: stdout). Must not exist.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Add each memory's intent key and the memories sharing it.
    #[arg(long)]
    embeddings: bool,
}

/// One memory's line: its fields in order (id, intent, experience, q, visits, last_reward,
/// success, created_ms, updated_ms, metadata), then with `embeddings` its intent key and the
/// memories sharing it.
pub(crate) fn memory_json(bank: &Bank, memory: &Memory, embeddings: bool) -> Result<String> {
    let mut line = JsonObject::of(memory)?;
    if embeddings {
        let id = memory.id;
        let shared: Vec<u64> = bank
            .intent_members(id)?
            .into_iter()
            .filter(|&other| other != id)
            .collect();
        line = line
            .field("embedding", &bank.intent_key(id)?)?
            .field("shared_with", &shared)?;
    }
    Ok(line.finish())
}

fn write_all(bank: &Bank, embeddings: bool, out: &mut impl Write) -> Result<usize> {
    let memories = bank.memories();
    let n = memories.len();
    for memory in &memories {
        writeln!(out, "{}", memory_json(bank, memory, embeddings)?)?;
    }
    out.flush()?;
    Ok(n)
}

/// Writes through a temporary file beside `path`, renamed into place once complete.
fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<std::fs::File>) -> Result<usize>,
) -> Result<usize> {
    if path.exists() {
        bail!("{} exists: export writes a new file only", path.display());
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let partial = path.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let mut out = BufWriter::new(file);
        let n = write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        // No clobbering: a link fails if something appeared at `path` meanwhile.
        std::fs::hard_link(&partial, path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(n)
    })();
    let _ = std::fs::remove_file(&partial);
    result
}

pub(crate) fn export(args: &ExportArgs) -> Result<()> {
    let bank = read_bank(&args.bank, &memrl::Device::Cpu, None)?;
    match &args.out {
        None => {
            let stdout = std::io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            write_all(&bank, args.embeddings, &mut out)?;
        }
        Some(path) => {
            let n = write_file(path, |out| write_all(&bank, args.embeddings, out))?;
            eprintln!("exported {n} memories to {}", path.display());
        }
    }
    Ok(())
}
