//! The subcommands of the `memrl` binary, one module each. They parse arguments, call the
//! library and print; anything a library user would also need (reading JSON Lines, embedding,
//! retrieving, saving) lives in the library.

pub(crate) mod bank;
pub(crate) mod bench;
pub(crate) mod calibrate;
pub(crate) mod config;
pub(crate) mod demo;
pub(crate) mod embed;
pub(crate) mod export;
pub(crate) mod feedback;
pub(crate) mod inspect;
pub(crate) mod model;
pub(crate) mod options;
pub(crate) mod pipe;
pub(crate) mod plot;
pub(crate) mod query;
pub(crate) mod repair;
pub(crate) mod simulate;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use memrl::embed::{Embedder, EmbedderOptions, Precision};
use memrl::ingest::{Record, Records};
use memrl::models::{resolve, Registry, ResolveOptions};
use memrl::{Bank, Device, OpenOptions};

/// Which embedding model to run, and where.
#[derive(Args, Debug, Clone)]
pub(crate) struct ModelArgs {
    /// Registry name, Hugging Face repo id, or a model directory. Default: the bank's own model
    /// when the bank exists, else the registry's default (all-MiniLM-L6-v2).
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Load no embedding model: every memory and query must bring its own `embedding` (a new
    /// bank then needs --dim and --model-id, the model the vectors come from).
    #[arg(long, conflicts_with_all = ["model", "batch_tokens", "allow_unverified", "offline", "precision"])]
    pub(crate) no_model: bool,
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
    /// Arithmetic of the model's linear layers: f32 (the same vectors as sentence-transformers)
    /// or int8 (CPU only, for models the registry lists it for: vectors close to f32's, not equal;
    /// the quantized weights are cached in memrl's cache directory).
    #[arg(long, default_value = "f32")]
    pub(crate) precision: Precision,
}

impl ModelArgs {
    pub(crate) fn device(&self) -> Result<Device> {
        Ok(memrl::parse_device(&self.device)?)
    }

    /// The embedder for the bank at `path` (its own model unless --model says otherwise), or
    /// none with --no-model.
    pub(crate) fn embedder_for(&self, path: &Path, device: &Device) -> Result<Option<Embedder>> {
        if self.no_model {
            return Ok(None);
        }
        Ok(Some(self.embedder(bank_model(path)?.as_deref(), device)?))
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
        let options = EmbedderOptions {
            precision: self.precision,
            ..EmbedderOptions::default()
        };
        let mut embedder = Embedder::load_with(&model, device, &options)
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

/// A JSON object written field by field, in order. (A `serde_json::Value` would sort the
/// keys and write each f32 as the digits of its f64 widening, `0.30000001192092896`; the text
/// serialiser writes structs' fields in their order and an f32 as an f32, `0.3`.)
pub(crate) struct JsonObject(String);

impl JsonObject {
    pub(crate) fn new() -> Self {
        Self("{".to_string())
    }

    /// The fields of `value` (a struct or map), to be followed by more.
    pub(crate) fn of<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<Self> {
        let mut text = serde_json::to_string(value)?;
        if !(text.starts_with('{') && text.ends_with('}')) {
            return Err(serde::ser::Error::custom(format!(
                "{text} is not a JSON object"
            )));
        }
        text.pop();
        Ok(Self(text))
    }

    /// Appends `key: value`.
    pub(crate) fn field<T: serde::Serialize + ?Sized>(
        self,
        key: &str,
        value: &T,
    ) -> serde_json::Result<Self> {
        let value = serde_json::to_string(value)?;
        Ok(self.raw(key, &value))
    }

    /// Appends `key: json`, `json` being JSON text already.
    pub(crate) fn raw(mut self, key: &str, json: &str) -> Self {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        // A key is a string: serialising one cannot fail.
        self.0
            .push_str(&serde_json::to_string(key).unwrap_or_else(|_| format!("\"{key}\"")));
        self.0.push(':');
        self.0.push_str(json);
        self
    }

    /// Appends every field of `other`.
    pub(crate) fn extend(mut self, other: JsonObject) -> Self {
        let fields = &other.0[1..];
        if !fields.is_empty() {
            if self.0.len() > 1 {
                self.0.push(',');
            }
            self.0.push_str(fields);
        }
        self
    }

    pub(crate) fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// What a JSON Lines input's unknown fields are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum UnknownFields {
    /// An error naming file, line and field; nothing is written (the default).
    #[default]
    Error,
    /// A warning on stderr naming file, line and field; the line is read without the field.
    Warn,
}

/// Opens a JSON Lines input of `T` records with the chosen treatment of unknown fields.
pub(crate) fn read_records<T: Record + 'static>(
    path: &Path,
    unknown: UnknownFields,
) -> memrl::Result<Records<T>> {
    let records = memrl::ingest::read_jsonl::<T>(path)?;
    Ok(match unknown {
        UnknownFields::Error => records,
        UnknownFields::Warn => records.warn_unknown_fields(print_unknown_field),
    })
}

/// Warnings shown per unknown field name before they are only counted (a file of a million
/// lines with one extra field would otherwise print a million lines).
const WARNINGS_PER_FIELD: usize = 3;

thread_local! {
    static UNKNOWN_FIELDS: std::cell::RefCell<BTreeMap<String, usize>> =
        const { std::cell::RefCell::new(BTreeMap::new()) };
}

fn print_unknown_field(warning: memrl::Error) {
    let field = match &warning {
        memrl::Error::Input {
            field: Some(field), ..
        } => field.clone(),
        _ => String::new(),
    };
    let seen = UNKNOWN_FIELDS.with(|counts| {
        let mut counts = counts.borrow_mut();
        let n = counts.entry(field).or_default();
        *n += 1;
        *n
    });
    if seen <= WARNINGS_PER_FIELD {
        eprintln!("warning: {warning} (ignored: --unknown-fields warn)");
    }
}

/// After a read with `--unknown-fields warn`: how many warnings were not shown.
pub(crate) fn summarise_unknown_fields() {
    UNKNOWN_FIELDS.with(|counts| {
        for (field, &n) in counts.borrow().iter() {
            if n > WARNINGS_PER_FIELD {
                eprintln!(
                    "warning: field `{field}` was ignored on {n} lines in all ({} not shown)",
                    n - WARNINGS_PER_FIELD
                );
            }
        }
    });
}

/// Where the items of one batch came from (the input's lines, and the explicit memory ids
/// seen so far), to name the file and line of an error the library reports by the item's index
/// in the batch or by a memory id.
pub(crate) struct Origins {
    path: PathBuf,
    /// The line of each item of the current batch.
    lines: Vec<usize>,
    /// The first line of every explicit memory id of the input so far.
    ids: HashMap<u64, usize>,
    /// The line of every explicit memory id of the current batch.
    batch_ids: Vec<(u64, usize)>,
}

impl Origins {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            lines: Vec::new(),
            ids: HashMap::new(),
            batch_ids: Vec::new(),
        }
    }

    /// The next item of the batch comes from `line` (and gives memory id `id`, if it does).
    pub(crate) fn push(&mut self, line: usize, id: Option<u64>) {
        self.lines.push(line);
        if let Some(id) = id {
            self.batch_ids.push((id, line));
        }
    }

    /// The batch went in: its explicit ids are in the bank now.
    pub(crate) fn commit(&mut self) {
        self.lines.clear();
        for (id, line) in self.batch_ids.drain(..) {
            self.ids.entry(id).or_insert(line);
        }
    }

    /// An error at `line`, as the reader's are.
    pub(crate) fn at(&self, line: usize, field: &str, problem: String) -> memrl::Error {
        memrl::Error::Input {
            path: self.path.clone(),
            line,
            field: Some(field.to_string()),
            problem,
        }
    }

    /// `err` with the file and line of the item it is about, when it names one.
    pub(crate) fn locate(&self, err: memrl::Error) -> anyhow::Error {
        use memrl::Error as E;
        let line_of = |index: usize| self.lines.get(index).copied();
        let located = match &err {
            E::TextTooLong {
                what,
                index,
                limit,
                got,
            } => line_of(*index).map(|line| {
                let field = what.split(' ').next().unwrap_or(what);
                self.at(
                    line,
                    field,
                    format!("{got} bytes{}, above the bank's limit of {limit}", {
                        if field == "metadata" {
                            " as JSON"
                        } else {
                            ""
                        }
                    }),
                )
            }),
            E::InvalidEmbedding { index, problem, .. } => {
                line_of(*index).map(|line| self.at(line, "embedding", problem.clone()))
            }
            E::InvalidReward {
                outcome,
                reward,
                problem,
            } => line_of(*outcome)
                .map(|line| self.at(line, "reward", format!("{reward} is {problem}"))),
            E::UnknownMemory { outcome, id } => line_of(*outcome).map(|line| {
                self.at(
                    line,
                    "memory_ids",
                    format!(
                        "unknown memory id {id} (the whole file was rejected, nothing changed)"
                    ),
                )
            }),
            E::DuplicateId(id) => {
                let in_batch: Vec<usize> = self
                    .batch_ids
                    .iter()
                    .filter(|(i, _)| i == id)
                    .map(|&(_, line)| line)
                    .collect();
                // The line at fault, and an earlier line of this input with the same id.
                let (line, earlier) = match (self.ids.get(id), in_batch.as_slice()) {
                    (Some(&first), [line, ..]) => (Some(*line), Some(first)),
                    (None, [first, line, ..]) => (Some(*line), Some(*first)),
                    (None, [line]) => (Some(*line), None),
                    _ => (None, None),
                };
                line.map(|line| {
                    let problem = match earlier {
                        Some(first) => format!("duplicate memory id {id}: line {first} has it too"),
                        None => format!("duplicate memory id {id}: the bank already holds it"),
                    };
                    self.at(line, "id", problem)
                })
            }
            _ => None,
        };
        match located {
            Some(located) => located.into(),
            None => err.into(),
        }
    }
}
