//! `memrl pipe`: a long-running JSON Lines loop on stdin and stdout, keeping the model and the
//! bank open, so an agent loop in any language drives memrl through a pipe instead of starting
//! a process (and loading a model) per step.
//!
//! One request per line, one answer per request, in order, flushed as it is written. A request
//! that fails gets an error answer and the loop goes on: nothing a client sends ends it but the
//! end of its input.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use memrl::ingest::{parse_object, unknown_field, MemoryRecord};
use memrl::{
    Bank, ErrorKind, LearningConfig, OutOfRange, Outcome, Queries, RetrievalConfig, RetrievalId,
    RewardRange, SyncPolicy, ZSim, DEFAULT_MAX_PAIRS,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::bank::{bank_options, configure_new, NewBankArgs};
use super::export::memory_json;
use super::{open_bank, JsonObject, ModelArgs};

pub(crate) const PIPE_HELP: &str = "\
A long-running loop for an agent: JSON Lines requests on stdin, one JSON line per answer on \
stdout, in order, with the model and the bank kept open (writes go to the bank's write-ahead \
log, synced per --sync, before the answer is written). Ends at the end of stdin, exit 0.

Every request is an object with `op` and an optional `id` (any JSON value, echoed in the \
answer). An answer is {\"id\": ..., \"ok\": true, ...} or {\"id\": ..., \"ok\": false, \"error\": \
{\"kind\": \"invalid_input\", \"message\": \"...\", \"line\": N}}, `kind` one of invalid_input, \
not_found, conflict, overloaded, corrupt, io, internal. A failed request changes nothing and \
never ends the loop; an unknown field is an error naming it.

  retrieve    {\"text\": \"...\"} | {\"texts\": [...]} | {\"embedding\": [...]} | {\"embeddings\": [[...]]},
              any retrieval option (k1, k2, delta, lambda, zsim (\"pool\" or {\"mean\", \"std\"}),
              z_clip, clip_zsim, q_min (null: off), epsilon, seed, thompson, ucb, sim_margin (null: off))
              for this request
              -> {\"retrieval\": \"R\", \"hits\": [...]} (one query) or {\"results\": [{\"retrieval\", \"hits\"}, ...]}
  feedback    {\"retrieval\": \"R\", \"reward\": 1} | {\"memory_ids\": [3, 17], \"reward\": 1}
              | {\"rewards\": [{\"retrieval\", \"reward\"}, ...]} | {\"outcomes\": [{\"memory_ids\", \"reward\"}, ...]},
              alpha, reward_range ({\"min\", \"max\", \"out_of_range\": \"clamp\"|\"reject\"} or null)
              and baseline_rate (null: off) for this batch -> {\"outcomes\", \"updates\", \"memories\", \"clamped\", \"skipped\"}
  add         {\"memory\": {...}} | {\"memories\": [{...}, ...]} (objects as `memrl index` lines) -> {\"ids\": [...]}
  get         {\"memory_id\": 3} | {\"memory_ids\": [...]} -> {\"memory\": {...}} | {\"memories\": [...]}
  remove      {\"memory_id\": 3} -> {\"removed\": {...}}
  stats       {\"bins\"?, \"top\"?} -> {\"memories\", \"intents\", \"summary\": {...}}
  config      -> {\"retrieval\": {...}, \"learning\": {...}}
  set_config  {\"retrieval\": {...}, \"learning\": {...}} (fields to change) -> the new configs
  calibrate   {\"max_pairs\"?, \"seed\"?, \"write\"?, \"fixed_zsim\"?} -> {\"delta\", \"mean\", \"std\", ...}
  checkpoint  -> {} (snapshot written, log emptied)

Retrieval ids are strings (64-bit values do not survive every JSON parser as numbers); a \
retrieval's feedback is accepted once, within the bank's retention (100,000 retrievals, one \
hour). The bank is locked for writing while the loop runs (--read-only: no lock, writes refused).

Example:
  printf '%s\\n' '{\"op\": \"retrieve\", \"id\": 1, \"text\": \"book a flight\"}' | memrl pipe --bank bank.safetensors";

/// When `pipe` syncs its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyncArg(SyncPolicy);

fn parse_sync(text: &str) -> Result<SyncArg, String> {
    match text {
        "every-batch" => Ok(SyncArg(SyncPolicy::EveryBatch)),
        "never" => Ok(SyncArg(SyncPolicy::Never)),
        _ => match text.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms > 0 => Ok(SyncArg(SyncPolicy::Interval(Duration::from_millis(ms)))),
            _ => Err(format!(
                "expected every-batch, never or interval:MS (MS >= 1), got `{text}`"
            )),
        },
    }
}

/// Arguments of `memrl pipe`.
#[derive(Args, Debug)]
pub(crate) struct PipeArgs {
    /// The bank file (.safetensors); created if missing (empty, with the options below).
    #[arg(long)]
    bank: PathBuf,
    /// Open the bank for reading only: no lock, every write refused.
    #[arg(long)]
    read_only: bool,
    /// When writes are synced to disk: every-batch (before each answer; the default), never (a
    /// process crash loses nothing, a power loss may), or interval:MS.
    #[arg(long, value_parser = parse_sync, value_name = "every-batch|never|interval:MS")]
    sync: Option<SyncArg>,
    #[command(flatten)]
    new_bank: NewBankArgs,
    #[command(flatten)]
    model: ModelArgs,
}

/// A request's failure: its kind (`ErrorKind::as_str`) and message.
struct Failure {
    kind: &'static str,
    message: String,
}

impl From<memrl::Error> for Failure {
    fn from(e: memrl::Error) -> Self {
        Failure {
            kind: e.kind().as_str(),
            message: e.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast_ref::<memrl::Error>() {
            Some(inner) => Failure {
                kind: inner.kind().as_str(),
                message: format!("{e:#}"),
            },
            None => invalid(format!("{e:#}")),
        }
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure {
        kind: ErrorKind::InvalidInput.as_str(),
        message: message.into(),
    }
}

/// A request's answer: its fields (the loop adds `id` and `ok`).
type Answer = std::result::Result<JsonObject, Failure>;

/// Refuses fields `op` does not take.
fn known(op: &str, request: &Map<String, Value>, fields: &[&'static str]) -> Result<(), Failure> {
    match unknown_field(request, fields) {
        Some((field, problem)) => Err(invalid(format!("{op}: field `{field}`: {problem}"))),
        None => Ok(()),
    }
}

/// Field `field` of `request` as a `T`, if present (null counts as absent).
fn field<T: DeserializeOwned>(
    request: &Map<String, Value>,
    name: &str,
) -> Result<Option<T>, Failure> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| invalid(format!("field `{name}`: {e}"))),
    }
}

fn required<T: DeserializeOwned>(request: &Map<String, Value>, name: &str) -> Result<T, Failure> {
    field(request, name)?.ok_or_else(|| invalid(format!("field `{name}`: missing")))
}

/// A retrieval id, sent as a string (or a number).
fn retrieval_id(value: &Value, name: &str) -> Result<RetrievalId, Failure> {
    let parsed = match value {
        Value::String(s) => s.parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    parsed.map(RetrievalId).ok_or_else(|| {
        invalid(format!(
            "field `{name}`: expected a retrieval id (a string of digits), found {value}"
        ))
    })
}

const RETRIEVAL_FIELDS: [&str; 13] = [
    "k1",
    "k2",
    "delta",
    "lambda",
    "zsim",
    "z_clip",
    "clip_zsim",
    "q_min",
    "epsilon",
    "seed",
    "thompson",
    "ucb",
    "sim_margin",
];

/// `base` with the retrieval options of `request` applied, validated.
fn retrieval_config(
    request: &Map<String, Value>,
    base: &RetrievalConfig,
) -> Result<RetrievalConfig, Failure> {
    let mut cfg = base.clone();
    cfg.k1 = field(request, "k1")?.unwrap_or(cfg.k1);
    cfg.k2 = field(request, "k2")?.unwrap_or(cfg.k2);
    cfg.delta = field(request, "delta")?.unwrap_or(cfg.delta);
    cfg.lambda = field(request, "lambda")?.unwrap_or(cfg.lambda);
    cfg.z_clip = field(request, "z_clip")?.unwrap_or(cfg.z_clip);
    cfg.clip_zsim = field(request, "clip_zsim")?.unwrap_or(cfg.clip_zsim);
    cfg.epsilon = field(request, "epsilon")?.unwrap_or(cfg.epsilon);
    cfg.seed = field(request, "seed")?.unwrap_or(cfg.seed);
    cfg.thompson = field(request, "thompson")?.unwrap_or(cfg.thompson);
    cfg.ucb = field(request, "ucb")?.unwrap_or(cfg.ucb);
    if request.contains_key("q_min") {
        cfg.q_min = field(request, "q_min")?;
    }
    if request.contains_key("sim_margin") {
        cfg.sim_margin = field(request, "sim_margin")?;
    }
    match request.get("zsim") {
        None => {}
        Some(Value::String(s)) if s == "pool" => cfg.zsim = ZSim::Pool,
        Some(Value::Object(stats)) => {
            known("zsim", stats, &["mean", "std", "mode"])?;
            if stats.get("mode").is_some_and(|m| m != "fixed") {
                return Err(invalid(
                    "field `zsim`: `mode` of a {mean, std} object is fixed",
                ));
            }
            cfg.zsim = ZSim::Fixed {
                mean: required(stats, "mean")?,
                std: required(stats, "std")?,
            };
        }
        Some(other) => {
            return Err(invalid(format!(
                "field `zsim`: expected \"pool\" or {{\"mean\": M, \"std\": S}}, found {other}"
            )))
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `base` with `alpha`, `reward_range`, `q_init`, `baseline_rate` and `q_init_failure` of
/// `request` applied (null turns the last two off), validated.
fn learning_config(
    request: &Map<String, Value>,
    base: &LearningConfig,
) -> Result<LearningConfig, Failure> {
    let mut cfg = base.clone();
    cfg.alpha = field(request, "alpha")?.unwrap_or(cfg.alpha);
    cfg.q_init = field(request, "q_init")?.unwrap_or(cfg.q_init);
    if request.contains_key("baseline_rate") {
        cfg.baseline_rate = field(request, "baseline_rate")?;
    }
    if request.contains_key("q_init_failure") {
        cfg.q_init_failure = field(request, "q_init_failure")?;
    }
    match request.get("reward_range") {
        None => {}
        Some(Value::Null) => cfg.reward_range = None,
        Some(Value::Object(range)) => {
            known("reward_range", range, &["min", "max", "out_of_range"])?;
            let out_of_range = match field::<String>(range, "out_of_range")?.as_deref() {
                None | Some("clamp") => OutOfRange::Clamp,
                Some("reject") => OutOfRange::Reject,
                Some(other) => {
                    return Err(invalid(format!(
                        "field `out_of_range`: expected \"clamp\" or \"reject\", found \"{other}\""
                    )))
                }
            };
            cfg.reward_range = Some(RewardRange {
                min: required(range, "min")?,
                max: required(range, "max")?,
                out_of_range,
            });
        }
        Some(other) => {
            return Err(invalid(format!(
                "field `reward_range`: expected {{\"min\", \"max\", \"out_of_range\"}} or null, found {other}"
            )))
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

/// One retrieval's fields: its id (a string) and hits.
fn retrieval_answer(r: &memrl::Retrieval) -> Answer {
    JsonObject::new()
        .field("retrieval", &r.id.0.to_string())
        .and_then(|o| o.field("hits", &r.hits))
        .map_err(internal)
}

fn internal(e: serde_json::Error) -> Failure {
    Failure {
        kind: ErrorKind::Internal.as_str(),
        message: format!("writing the answer: {e}"),
    }
}

/// A serialisable struct's fields as the answer.
fn fields_of<T: serde::Serialize>(value: &T) -> Answer {
    JsonObject::of(value).map_err(internal)
}

/// An answer of one field.
fn one<T: serde::Serialize + ?Sized>(key: &str, value: &T) -> Answer {
    JsonObject::new().field(key, value).map_err(internal)
}

fn retrieve(bank: &Bank, request: &Map<String, Value>) -> Answer {
    let mut fields = vec!["text", "texts", "embedding", "embeddings"];
    fields.extend(RETRIEVAL_FIELDS);
    known("retrieve", request, &fields)?;
    let cfg = retrieval_config(request, &bank.retrieval_config())?;
    let given: Vec<&str> = ["text", "texts", "embedding", "embeddings"]
        .into_iter()
        .filter(|f| request.get(*f).is_some_and(|v| !v.is_null()))
        .collect();
    let (one, retrievals) = match given.as_slice() {
        ["text"] => {
            let text: String = required(request, "text")?;
            (true, bank.retrieve_with(&text, &cfg)?)
        }
        ["texts"] => {
            let texts: Vec<String> = required(request, "texts")?;
            (false, bank.retrieve_with(&texts, &cfg)?)
        }
        ["embedding"] => {
            let v: Vec<f32> = required(request, "embedding")?;
            (true, bank.retrieve_with(&[v][..], &cfg)?)
        }
        ["embeddings"] => {
            let v: Vec<Vec<f32>> = required(request, "embeddings")?;
            (false, bank.retrieve_with(Queries::Vectors(&v), &cfg)?)
        }
        [] => {
            return Err(invalid(
                "retrieve: give text, texts, embedding or embeddings",
            ))
        }
        several => {
            return Err(invalid(format!(
                "retrieve: give one of text, texts, embedding, embeddings (got {})",
                several.join(", ")
            )))
        }
    };
    if one {
        return match retrievals.first() {
            Some(r) => retrieval_answer(r),
            None => Err(invalid("internal: no retrieval for the query")),
        };
    }
    let results = retrievals
        .iter()
        .map(|r| retrieval_answer(r).map(JsonObject::finish))
        .collect::<Result<Vec<String>, Failure>>()?;
    Ok(JsonObject::new().raw("results", &format!("[{}]", results.join(","))))
}

fn feedback(bank: &Bank, request: &Map<String, Value>) -> Answer {
    known(
        "feedback",
        request,
        &[
            "retrieval",
            "memory_ids",
            "reward",
            "rewards",
            "outcomes",
            "alpha",
            "reward_range",
            "baseline_rate",
        ],
    )?;
    let config = learning_config(request, &bank.learning_config())?;
    let has = |f: &str| request.get(f).is_some_and(|v| !v.is_null());
    let report = match (has("retrieval"), has("memory_ids"), has("rewards"), has("outcomes")) {
        (true, false, false, false) => {
            let id = retrieval_id(&request["retrieval"], "retrieval")?;
            let reward: f32 = required(request, "reward")?;
            bank.feedback_many_with(&[(id, reward)], &config)?
        }
        (false, true, false, false) => {
            let memory_ids: Vec<u64> = required(request, "memory_ids")?;
            let reward: f32 = required(request, "reward")?;
            bank.apply_outcomes_with(&[Outcome { memory_ids, reward }], &config)?
        }
        (false, false, true, false) => {
            if has("reward") {
                return Err(invalid("feedback: `rewards` carries each reward; drop `reward`"));
            }
            let Some(Value::Array(items)) = request.get("rewards") else {
                return Err(invalid("field `rewards`: expected an array"));
            };
            let mut rewards = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Value::Object(item) = item else {
                    return Err(invalid(format!("rewards[{i}]: expected an object")));
                };
                known(&format!("rewards[{i}]"), item, &["retrieval", "reward"])?;
                let id = retrieval_id(item.get("retrieval").unwrap_or(&Value::Null), &format!("rewards[{i}].retrieval"))?;
                rewards.push((id, required(item, "reward")?));
            }
            bank.feedback_many_with(&rewards, &config)?
        }
        (false, false, false, true) => {
            if has("reward") {
                return Err(invalid("feedback: `outcomes` carries each reward; drop `reward`"));
            }
            let Some(Value::Array(items)) = request.get("outcomes") else {
                return Err(invalid("field `outcomes`: expected an array"));
            };
            let mut outcomes = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Value::Object(item) = item else {
                    return Err(invalid(format!("outcomes[{i}]: expected an object")));
                };
                let outcome: Outcome = parse_object(item)
                    .map_err(|(f, p)| invalid(format!("outcomes[{i}]: field `{f}`: {p}")))?;
                outcomes.push(outcome);
            }
            bank.apply_outcomes_with(&outcomes, &config)?
        }
        _ => {
            return Err(invalid(
                "feedback: give one of retrieval (with reward), memory_ids (with reward), rewards, outcomes",
            ))
        }
    };
    fields_of(&report)
}

fn add(bank: &Bank, request: &Map<String, Value>) -> Answer {
    known("add", request, &["memory", "memories"])?;
    let objects: Vec<&Value> = match (request.get("memory"), request.get("memories")) {
        (Some(one), None) => vec![one],
        (None, Some(Value::Array(many))) => many.iter().collect(),
        (None, Some(_)) => return Err(invalid("field `memories`: expected an array")),
        _ => return Err(invalid("add: give memory or memories")),
    };
    let mut memories = Vec::with_capacity(objects.len());
    for (i, object) in objects.into_iter().enumerate() {
        let Value::Object(object) = object else {
            return Err(invalid(format!("memory {i}: expected an object")));
        };
        let record: MemoryRecord = parse_object(object)
            .map_err(|(f, p)| invalid(format!("memory at index {i}: field `{f}`: {p}")))?;
        memories.push(record.into_new_memory());
    }
    let ids = bank.add_many(memories)?;
    one("ids", &ids)
}

fn get(bank: &Bank, request: &Map<String, Value>) -> Answer {
    known("get", request, &["memory_id", "memory_ids"])?;
    let single: Option<u64> = field(request, "memory_id")?;
    let many: Option<Vec<u64>> = field(request, "memory_ids")?;
    let memory = |id: u64| -> Result<String, Failure> {
        let m = bank.get(id).ok_or(memrl::Error::NotFound(id))?;
        Ok(memory_json(bank, &m, false)?)
    };
    match (single, many) {
        (Some(id), None) => Ok(JsonObject::new().raw("memory", &memory(id)?)),
        (None, Some(ids)) => {
            let all = ids.into_iter().map(memory).collect::<Result<Vec<_>, _>>()?;
            Ok(JsonObject::new().raw("memories", &format!("[{}]", all.join(","))))
        }
        _ => Err(invalid("get: give memory_id or memory_ids")),
    }
}

fn remove(bank: &Bank, request: &Map<String, Value>) -> Answer {
    known("remove", request, &["memory_id"])?;
    let id: u64 = required(request, "memory_id")?;
    let removed = bank.remove(id)?;
    Ok(JsonObject::new().raw("removed", &memory_json(bank, &removed, false)?))
}

fn stats(bank: &Bank, request: &Map<String, Value>) -> Answer {
    known("stats", request, &["bins", "top"])?;
    let bins: usize = field(request, "bins")?.unwrap_or(10);
    let top: usize = field(request, "top")?.unwrap_or(5);
    if !(1..=100).contains(&bins) {
        return Err(invalid(format!("field `bins`: {bins} is not in 1..=100")));
    }
    let summary = bank.stats(bins, top.min(bank.len()));
    JsonObject::new()
        .field("memories", &bank.len())
        .and_then(|o| o.field("intents", &bank.num_intents()))
        .and_then(|o| o.field("summary", &summary))
        .map_err(internal)
}

fn configs(bank: &Bank) -> Answer {
    JsonObject::new()
        .field("retrieval", &bank.retrieval_config())
        .and_then(|o| o.field("learning", &bank.learning_config()))
        .map_err(internal)
}

fn set_config(bank: &Bank, request: &Map<String, Value>) -> Answer {
    known("set_config", request, &["retrieval", "learning"])?;
    let object = |name: &str| -> Result<Option<&Map<String, Value>>, Failure> {
        match request.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(invalid(format!(
                "field `{name}`: expected an object, found {other}"
            ))),
        }
    };
    // Both validated before either is stored.
    let retrieval = match object("retrieval")? {
        Some(r) => {
            known("retrieval", r, &RETRIEVAL_FIELDS)?;
            Some(retrieval_config(r, &bank.retrieval_config())?)
        }
        None => None,
    };
    let learning = match object("learning")? {
        Some(l) => {
            known(
                "learning",
                l,
                &[
                    "alpha",
                    "q_init",
                    "reward_range",
                    "baseline_rate",
                    "q_init_failure",
                ],
            )?;
            Some(learning_config(l, &bank.learning_config())?)
        }
        None => None,
    };
    if let Some(r) = retrieval {
        bank.set_retrieval_config(r)?;
    }
    if let Some(l) = learning {
        bank.set_learning_config(l)?;
    }
    configs(bank)
}

fn calibrate(bank: &Bank, request: &Map<String, Value>) -> Answer {
    known(
        "calibrate",
        request,
        &["max_pairs", "seed", "write", "fixed_zsim"],
    )?;
    let max_pairs = field(request, "max_pairs")?.unwrap_or(DEFAULT_MAX_PAIRS);
    let seed = field(request, "seed")?.unwrap_or(0);
    let write: bool = field(request, "write")?.unwrap_or(false);
    let fixed_zsim: bool = field(request, "fixed_zsim")?.unwrap_or(false);
    if fixed_zsim && !write {
        return Err(invalid("calibrate: fixed_zsim goes with write"));
    }
    let c = bank.calibrate(max_pairs, seed)?;
    if write {
        let mut cfg = bank.retrieval_config();
        cfg.delta = c.delta;
        if fixed_zsim {
            cfg.zsim = ZSim::Fixed {
                mean: c.mean,
                std: c.std,
            };
        }
        bank.set_retrieval_config(cfg)?;
    }
    fields_of(&c)
}

/// One request: its op, dispatched.
fn answer(bank: &Bank, op: &str, request: &Map<String, Value>) -> Answer {
    let nothing = |op: &str| known(op, request, &[]);
    let result = match op {
        "retrieve" => retrieve(bank, request),
        "feedback" => feedback(bank, request),
        "add" => add(bank, request),
        "get" => get(bank, request),
        "remove" => remove(bank, request),
        "stats" => stats(bank, request),
        "config" => nothing(op).and_then(|()| configs(bank)),
        "set_config" => set_config(bank, request),
        "calibrate" => calibrate(bank, request),
        "checkpoint" => nothing(op).and_then(|()| {
            bank.checkpoint()?;
            Ok(JsonObject::new())
        }),
        other => Err(invalid(format!(
            "unknown op `{other}` (ops: retrieve, feedback, add, get, remove, stats, config, set_config, calibrate, checkpoint)"
        ))),
    };
    super::warn_checkpoint(bank);
    result
}

/// An error answer.
fn error_line(id: &Value, failure: &Failure, line: usize) -> String {
    let answer = JsonObject::new()
        .field("kind", failure.kind)
        .and_then(|o| o.field("message", &failure.message))
        .and_then(|o| o.field("line", &line))
        .and_then(|error| {
            Ok(JsonObject::new()
                .field("id", id)?
                .field("ok", &false)?
                .raw("error", &error.finish()))
        });
    match answer {
        Ok(answer) => answer.finish(),
        Err(e) => format!(
            "{{\"id\":null,\"ok\":false,\"error\":{{\"kind\":\"internal\",\"message\":{},\"line\":{line}}}}}",
            serde_json::Value::from(format!("writing the answer: {e}"))
        ),
    }
}

/// The answer to one line of input.
fn handle(bank: &Bank, text: &str, line: usize) -> String {
    let parsed: std::result::Result<Value, String> =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"));
    let (id, result) = match parsed {
        Ok(Value::Object(mut request)) => {
            let id = request.remove("id").unwrap_or(Value::Null);
            let result = match request.remove("op") {
                Some(Value::String(op)) => answer(bank, &op, &request),
                Some(other) => Err(invalid(format!(
                    "field `op`: expected a string, found {other}"
                ))),
                None => Err(invalid("field `op`: missing")),
            };
            (id, result)
        }
        Ok(other) => (
            Value::Null,
            Err(invalid(format!("expected a JSON object, found {other}"))),
        ),
        Err(problem) => (Value::Null, Err(invalid(problem))),
    };
    let answer = result.and_then(|fields| {
        JsonObject::new()
            .field("id", &id)
            .and_then(|o| o.field("ok", &true))
            .map(|o| o.extend(fields).finish())
            .map_err(internal)
    });
    match answer {
        Ok(answer) => answer,
        Err(failure) => error_line(&id, &failure, line),
    }
}

/// Reads one line of at most `limit` bytes into `buffer` (without its newline); a longer line is
/// consumed whole and reported as too long. `Ok(false)` at the end of input.
fn read_line(
    input: &mut impl BufRead,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Result<bool, usize>> {
    buffer.clear();
    let mut total = 0usize;
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            return Ok(if total > limit {
                Err(total)
            } else {
                Ok(total > 0)
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], Some(end + 1)),
            None => (available, None),
        };
        total += chunk.len();
        if total <= limit {
            buffer.extend_from_slice(chunk);
        }
        let used = done.unwrap_or(available.len());
        input.consume(used);
        if done.is_some() {
            return Ok(if total > limit { Err(total) } else { Ok(true) });
        }
    }
}

pub(crate) fn pipe(args: &PipeArgs) -> Result<()> {
    let (mut options, existed) = bank_options(&args.bank, &args.new_bank, &args.model)?;
    if let Some(SyncArg(policy)) = args.sync {
        options = options.sync(policy);
    }
    let bank = if args.read_only {
        if !existed {
            bail!(
                "{}: no such bank (--read-only opens an existing one)",
                args.bank.display()
            );
        }
        open_bank(&args.bank, options.read_only(true))?
    } else {
        let bank = open_bank(&args.bank, options)?;
        if !existed {
            configure_new(&bank, &args.new_bank)?;
            let delta = bank.retrieval_config().delta;
            match args.new_bank.delta_given() {
                true => eprintln!("new bank {}: delta {delta} (--delta)", args.bank.display()),
                false => eprintln!(
                    "new bank {}: delta {delta} (the paper's default; once it holds memories, {{\"op\": \"calibrate\", \"write\": true}} calibrates it)",
                    args.bank.display()
                ),
            }
        }
        bank
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut buffer = Vec::new();
    let mut line = 0usize;
    loop {
        let read = match read_line(&mut input, &mut buffer, memrl::ingest::MAX_LINE_BYTES) {
            Ok(read) => read,
            Err(e) => bail!("reading stdin: {e}"),
        };
        line += 1;
        let answer = match read {
            Ok(false) => return Ok(()),
            Err(bytes) => error_line(
                &Value::Null,
                &invalid(format!(
                    "the line is {bytes} bytes, longer than the limit of {}",
                    memrl::ingest::MAX_LINE_BYTES
                )),
                line,
            ),
            Ok(true) => {
                let bytes = match buffer.strip_prefix("\u{feff}".as_bytes()) {
                    Some(rest) if line == 1 => rest,
                    _ => &buffer[..],
                };
                match std::str::from_utf8(bytes) {
                    Ok(text) if text.trim().is_empty() => continue,
                    Ok(text) => handle(&bank, text.trim(), line),
                    Err(e) => error_line(
                        &Value::Null,
                        &invalid(format!("not valid UTF-8 (byte {})", e.valid_up_to())),
                        line,
                    ),
                }
            }
        };
        // A client that has gone away ends the loop; there is nobody left to answer.
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_consumed_whole_and_reported() {
        let mut input = std::io::Cursor::new(b"short\nthis one is long\n\nlast".to_vec());
        let mut buffer = Vec::new();
        assert_eq!(read_line(&mut input, &mut buffer, 8).unwrap(), Ok(true));
        assert_eq!(buffer, b"short");
        assert_eq!(read_line(&mut input, &mut buffer, 8).unwrap(), Err(16));
        assert_eq!(read_line(&mut input, &mut buffer, 8).unwrap(), Ok(true));
        assert!(buffer.is_empty());
        assert_eq!(read_line(&mut input, &mut buffer, 8).unwrap(), Ok(true));
        assert_eq!(buffer, b"last");
        assert_eq!(read_line(&mut input, &mut buffer, 8).unwrap(), Ok(false));
    }

    #[test]
    fn sync_policies_parse() {
        assert_eq!(parse_sync("never"), Ok(SyncArg(SyncPolicy::Never)));
        assert_eq!(
            parse_sync("interval:50"),
            Ok(SyncArg(SyncPolicy::Interval(Duration::from_millis(50))))
        );
        for bad in ["interval:0", "interval:-1", "always", ""] {
            assert!(parse_sync(bad).is_err(), "{bad}");
        }
    }
}
