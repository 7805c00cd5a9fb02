//! `memrl query`: two-phase retrieval for query texts (or vectors), as a table or as JSON Lines.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use memrl::ingest::QueryRecord;
use memrl::{Bank, Hit, Queries, RetrievalConfig};

use super::options::RetrievalArgs;
use super::{
    open_bank, read_bank, read_records, summarise_unknown_fields, warn_checkpoint, JsonObject,
    ModelArgs, Origins, UnknownFields,
};

/// Queries embedded and retrieved per step.
const QUERY_BATCH: usize = 256;

pub(crate) const QUERY_HELP: &str = "\
Retrieve memories for one query (--text) or for every line of a JSON Lines file (--input, lines \
{\"text\": \"...\", \"id\": ..., \"embedding\": [...]}: a text, an embedding or both; `id` is any \
JSON value, passed through to the result). The query is embedded with the bank's model (unless \
it brings its embedding), Phase A keeps the k1 intents most similar to it (at or above delta), \
Phase B ranks their memories by (1 - lambda) * z(similarity) + lambda * z(Q), exact ties by \
higher similarity then lower id, and returns the best k2. Unset options take the bank's stored \
retrieval config; --write stores the given ones in the bank (one record of its write-ahead log).

Output: a table per query, or with --json one line per query: {\"id\": ..., \"line\": N, \
\"query\": ..., \"hits\": [{id, intent, experience, success, metadata, q, sim, zsim, zq, score}, \
...]} (`id` when the input line has one, `line` with --input).

Example: memrl query --bank bank.safetensors --text \"book a flight\" --k2 3";

/// Arguments of `memrl query`.
#[derive(Args, Debug)]
pub(crate) struct QueryArgs {
    /// The bank file (.safetensors).
    #[arg(long)]
    bank: PathBuf,
    /// One query text.
    #[arg(long, conflicts_with = "input", required_unless_present = "input")]
    text: Option<String>,
    /// JSON Lines file of queries.
    #[arg(long)]
    input: Option<PathBuf>,
    /// A field no query line takes: `error` (the default) or `warn`.
    #[arg(long, value_enum, default_value_t)]
    unknown_fields: UnknownFields,
    #[command(flatten)]
    retrieval: RetrievalArgs,
    /// Store the given retrieval options as the bank's (opens it for writing).
    #[arg(long)]
    write: bool,
    /// One JSON line per query instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// One query of a batch: where it came from and what it is.
struct Query {
    line: Option<usize>,
    id: Option<serde_json::Value>,
    text: String,
    embedding: Option<Vec<f32>>,
}

fn print_table(out: &mut impl Write, query: &Query, hits: &[Hit]) -> std::io::Result<()> {
    match query.line {
        Some(line) => writeln!(out, "query (line {line}): {}", query.text)?,
        None => writeln!(out, "query: {}", query.text)?,
    }
    if hits.is_empty() {
        return writeln!(out, "  (no memory passes the similarity gate)");
    }
    writeln!(
        out,
        "  {:>4} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7}  experience",
        "rank", "id", "score", "sim", "q", "zsim", "zq"
    )?;
    for (rank, h) in hits.iter().enumerate() {
        writeln!(
            out,
            "  {:>4} {:>8} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3}  {}",
            rank + 1,
            h.id,
            h.score,
            h.sim,
            h.q,
            h.zsim,
            h.zq,
            h.experience
        )?;
    }
    Ok(())
}

/// One query's JSON line: `id` (when the input line has one), `line` (with --input), `query`,
/// `hits`.
fn json_line(query: &Query, hits: &[Hit]) -> serde_json::Result<String> {
    let mut line = JsonObject::new();
    if let Some(id) = &query.id {
        line = line.field("id", id)?;
    }
    if let Some(n) = query.line {
        line = line.field("line", &n)?;
    }
    Ok(line
        .field("query", &query.text)?
        .field("hits", hits)?
        .finish())
}

/// The rows of a batch: each query's own embedding, or its text embedded.
fn rows(bank: &Bank, batch: &[Query]) -> memrl::Result<Vec<f32>> {
    let texts: Vec<&str> = batch
        .iter()
        .filter(|q| q.embedding.is_none())
        .map(|q| q.text.as_str())
        .collect();
    let embedded = if texts.is_empty() {
        Vec::new()
    } else {
        bank.embed_rows(&texts, "a text query")?
    };
    let dim = bank.config().dim;
    let mut flat = Vec::with_capacity(batch.len() * dim);
    let mut next = 0;
    for q in batch {
        match &q.embedding {
            Some(e) => flat.extend_from_slice(e),
            None => {
                flat.extend_from_slice(&embedded[next * dim..(next + 1) * dim]);
                next += 1;
            }
        }
    }
    Ok(flat)
}

fn run_batch(
    bank: &Bank,
    cfg: &RetrievalConfig,
    batch: &[Query],
    json: bool,
    origins: &mut Origins,
) -> Result<()> {
    let flat = rows(bank, batch)?;
    let retrievals = bank
        .retrieve_with(Queries::Rows(&flat), cfg)
        .map_err(|e| origins.locate(e))?;
    origins.commit();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (query, retrieval) in batch.iter().zip(&retrievals) {
        if json {
            writeln!(out, "{}", json_line(query, &retrieval.hits)?)?;
        } else {
            print_table(&mut out, query, &retrieval.hits)?;
        }
    }
    Ok(())
}

pub(crate) fn query(args: &QueryArgs) -> Result<()> {
    let device = args.model.device()?;
    let embedder = args.model.embedder_for(&args.bank, &device)?;
    if args.text.is_some() && embedder.is_none() {
        bail!("--no-model: a query text needs a model to embed it; give queries with an `embedding` through --input");
    }
    let bank = if args.write {
        if args.retrieval.given().is_empty() {
            bail!("--write stores the retrieval options given, and none was");
        }
        let mut options = Bank::options().create(false).device(device);
        if let Some(embedder) = embedder {
            options = options.embedder(embedder);
        }
        open_bank(&args.bank, options)?
    } else {
        read_bank(&args.bank, &device, embedder)?
    };
    let cfg = args.retrieval.apply(&bank.retrieval_config())?;
    if args.write {
        bank.set_retrieval_config(cfg.clone())?;
        warn_checkpoint(&bank);
        eprintln!(
            "stored {} in {}",
            args.retrieval.given().join(", "),
            args.bank.display()
        );
    }
    let dim = bank.config().dim;
    let has_model = bank.embedder().is_some();
    match (&args.text, &args.input) {
        (Some(text), _) => {
            let query = Query {
                line: None,
                id: None,
                text: text.clone(),
                embedding: None,
            };
            let mut origins = Origins::new(std::path::Path::new("--text"));
            origins.push(1, None);
            run_batch(&bank, &cfg, &[query], args.json, &mut origins)
        }
        (None, Some(input)) => {
            let context = || format!("querying {}", input.display());
            let mut origins = Origins::new(input);
            let mut batch = Vec::with_capacity(QUERY_BATCH);
            let mut records = read_records::<QueryRecord>(input, args.unknown_fields)?;
            while let Some(record) = records.next() {
                let record = record?;
                let line = records.line();
                match &record.embedding {
                    Some(e) if e.len() != dim => {
                        return Err(origins
                            .at(
                                line,
                                "embedding",
                                format!("{} components; the bank's dimension is {dim}", e.len()),
                            )
                            .into())
                    }
                    None if !has_model => return Err(origins
                        .at(
                            line,
                            "embedding",
                            "missing, and there is no model to embed the text with (--no-model)"
                                .into(),
                        )
                        .into()),
                    _ => {}
                }
                origins.push(line, None);
                batch.push(Query {
                    line: Some(line),
                    id: record.id,
                    text: record.text,
                    embedding: record.embedding,
                });
                if batch.len() == QUERY_BATCH {
                    run_batch(&bank, &cfg, &batch, args.json, &mut origins)
                        .with_context(context)?;
                    batch.clear();
                }
            }
            summarise_unknown_fields();
            if !batch.is_empty() {
                run_batch(&bank, &cfg, &batch, args.json, &mut origins).with_context(context)?;
            }
            Ok(())
        }
        (None, None) => bail!("give --text or --input"),
    }
}
