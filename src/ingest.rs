//! Reading memories, queries, outcomes and task corpora from JSON Lines files.
//!
//! Why it lives in the library: the CLI's `index`, `add --input`, `query --input` and `feedback`
//! read these files, and so does any program that loads a bank from the same data; one reader
//! means one set of rules and one set of error messages. Files are streamed line by line (a
//! multi-gigabyte file is never held whole), blank lines are skipped, a UTF-8 byte order mark
//! at the start of the file is skipped, and every problem is an [`Error::Input`] that names the
//! file, the 1-based line and, where one is at fault, the field.
//!
//! Nothing is dropped silently: a field a record type does not know (`"sucess"`, `"Q"`) is an
//! error naming it, with the fields the line may carry and the likeliest one meant.
//! [`Records::warn_unknown_fields`] turns that into a warning handed to the caller, and the line
//! is read without the field. (The one-field reader, [`read_jsonl_field`], takes one field of
//! lines that may hold anything else.)
//!
//! ```no_run
//! use memrl::ingest::{read_jsonl, MemoryRecord};
//! for record in read_jsonl::<MemoryRecord>("memories.jsonl".as_ref())? {
//!     let record = record?; // names file, line and field when a line is wrong
//!     println!("{}", record.intent);
//! }
//! # Ok::<(), memrl::Error>(())
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::learn::Outcome;
use crate::store::NewMemory;

/// One line of a memories file: `{intent, experience, q?, success?, id?, metadata?,
/// embedding?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRecord {
    /// Caller-chosen id; the bank assigns one when absent.
    pub id: Option<u64>,
    /// The task description the memory is filed under (embedded into its intent key).
    pub intent: String,
    /// What the agent should be told.
    pub experience: String,
    /// Initial utility; the bank's `q_init` when absent.
    pub q: Option<f32>,
    /// Whether the episode that produced it succeeded (false when absent).
    pub success: bool,
    /// Free-form user data, kept as given.
    pub metadata: Option<Value>,
    /// The intent's embedding, used instead of embedding `intent` (vectors of another model, or
    /// computed once for many banks): finite numbers, not all zero; the bank checks that it has
    /// its dimension and normalises it.
    pub embedding: Option<Vec<f32>>,
}

impl MemoryRecord {
    /// The bank's input for this record: with no `embedding`, the bank embeds the intent.
    pub fn into_new_memory(self) -> NewMemory {
        NewMemory {
            id: self.id,
            intent: self.intent,
            embedding: self.embedding,
            experience: self.experience,
            success: self.success,
            q: self.q,
            metadata: self.metadata,
        }
    }
}

/// One line of a queries file: `{text?, embedding?, id?}`, with a text, an embedding or both.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRecord {
    /// The query text, embedded like an intent (when there is no `embedding`). Empty when the
    /// line has only an embedding.
    pub text: String,
    /// The query's embedding, used instead of embedding `text`: finite numbers, not all zero.
    pub embedding: Option<Vec<f32>>,
    /// Any JSON value, passed through to the query's results so they can be joined to their
    /// input.
    pub id: Option<Value>,
}

/// One line of a task corpus (the simulation's tasks): `{text, source}`, where `source` names the
/// task family the text comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// The task text.
    pub text: String,
    /// The task family (for BIG-bench, the task name).
    pub source: String,
}

/// A record type that one JSON object per line can be read into.
pub trait Record: Sized {
    /// Every field a line of this type may carry: any other is an unknown field.
    const FIELDS: &'static [&'static str];

    /// Builds the record from one line's object; `Err((field, problem))` names the field at fault.
    fn from_object(object: &Map<String, Value>) -> std::result::Result<Self, (String, String)>;
}

/// The field of `known` most likely meant by the unknown `field`: the same name in another case,
/// or one a typo away (`sucess`, `rewrd`): one edit, two for names of six letters or more.
fn likely_meant(field: &str, known: &[&'static str]) -> Option<&'static str> {
    if let Some(&k) = known.iter().find(|k| k.eq_ignore_ascii_case(field)) {
        return Some(k);
    }
    let allowed = if field.chars().count() >= 6 { 2 } else { 1 };
    known
        .iter()
        .map(|&k| (edit_distance(field, k), k))
        .filter(|&(d, _)| d <= allowed)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars (names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The problem of an unknown field, for the error or the warning.
fn unknown_field_problem(field: &str, known: &[&'static str]) -> String {
    let hint = likely_meant(field, known)
        .map(|k| format!("; did you mean `{k}`?"))
        .unwrap_or_default();
    format!(
        "unknown field (the known ones: {}){hint}",
        known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn field_error(field: &str, problem: impl Into<String>) -> (String, String) {
    (field.to_string(), problem.into())
}

fn required_string(object: &Map<String, Value>, field: &str) -> Result<String, (String, String)> {
    match object.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(field_error(
            field,
            format!("expected a string, found {}", kind(other)),
        )),
        None => Err(field_error(field, "missing")),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn optional_f32(object: &Map<String, Value>, field: &str) -> Result<Option<f32>, (String, String)> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if x.is_finite() && (x as f32).is_finite() => Ok(Some(x as f32)),
            _ => Err(field_error(field, format!("{n} is not a finite f32"))),
        },
        Some(other) => Err(field_error(
            field,
            format!("expected a number, found {}", kind(other)),
        )),
    }
}

/// An optional embedding: an array of finite f32 values, not empty and not all zero.
fn optional_embedding(
    object: &Map<String, Value>,
    field: &str,
) -> Result<Option<Vec<f32>>, (String, String)> {
    let values = match object.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(values)) => values,
        Some(other) => {
            return Err(field_error(
                field,
                format!("expected an array of numbers, found {}", kind(other)),
            ))
        }
    };
    if values.is_empty() {
        return Err(field_error(field, "is empty"));
    }
    let mut vector = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        match v.as_f64() {
            Some(x) if x.is_finite() && (x as f32).is_finite() => vector.push(x as f32),
            Some(_) => {
                return Err(field_error(
                    field,
                    format!("component {i} ({v}) is not a finite f32"),
                ))
            }
            None => {
                return Err(field_error(
                    field,
                    format!("component {i} is {}, not a number", kind(v)),
                ))
            }
        }
    }
    if vector.iter().all(|&x| x == 0.0) {
        return Err(field_error(
            field,
            "every component is 0: the vector has no direction",
        ));
    }
    Ok(Some(vector))
}

fn id_value(value: &Value, field: &str) -> Result<u64, (String, String)> {
    value.as_u64().ok_or_else(|| {
        field_error(
            field,
            format!("expected a non-negative integer id, found {value}"),
        )
    })
}

impl Record for MemoryRecord {
    const FIELDS: &'static [&'static str] = &[
        "intent",
        "experience",
        "q",
        "success",
        "id",
        "metadata",
        "embedding",
    ];

    fn from_object(object: &Map<String, Value>) -> std::result::Result<Self, (String, String)> {
        let intent = required_string(object, "intent")?;
        let experience = required_string(object, "experience")?;
        let q = optional_f32(object, "q")?;
        let success = match object.get("success") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(field_error(
                    "success",
                    format!("expected true or false, found {}", kind(other)),
                ))
            }
        };
        let id = match object.get("id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(id_value(v, "id")?),
        };
        Ok(Self {
            id,
            intent,
            experience,
            q,
            success,
            metadata: object.get("metadata").filter(|v| !v.is_null()).cloned(),
            embedding: optional_embedding(object, "embedding")?,
        })
    }
}

impl Record for QueryRecord {
    const FIELDS: &'static [&'static str] = &["text", "embedding", "id"];

    fn from_object(object: &Map<String, Value>) -> std::result::Result<Self, (String, String)> {
        let embedding = optional_embedding(object, "embedding")?;
        let text = match (object.get("text"), &embedding) {
            (None | Some(Value::Null), Some(_)) => String::new(),
            (None, None) => {
                return Err(field_error(
                    "text",
                    "missing (a query needs a text or an embedding)",
                ))
            }
            _ => required_string(object, "text")?,
        };
        Ok(Self {
            text,
            embedding,
            id: object.get("id").cloned(),
        })
    }
}

impl Record for TaskRecord {
    const FIELDS: &'static [&'static str] = &["text", "source"];

    fn from_object(object: &Map<String, Value>) -> std::result::Result<Self, (String, String)> {
        Ok(Self {
            text: required_string(object, "text")?,
            source: required_string(object, "source")?,
        })
    }
}

impl Record for Outcome {
    const FIELDS: &'static [&'static str] = &["memory_ids", "reward"];

    /// `{memory_ids: [...], reward}`.
    fn from_object(object: &Map<String, Value>) -> std::result::Result<Self, (String, String)> {
        let memory_ids = match object.get("memory_ids") {
            Some(Value::Array(ids)) => ids
                .iter()
                .enumerate()
                .map(|(i, v)| id_value(v, &format!("memory_ids[{i}]")))
                .collect::<std::result::Result<Vec<u64>, _>>()?,
            Some(other) => {
                return Err(field_error(
                    "memory_ids",
                    format!("expected an array of ids, found {}", kind(other)),
                ))
            }
            None => return Err(field_error("memory_ids", "missing")),
        };
        let reward = optional_f32(object, "reward")?.ok_or(field_error("reward", "missing"))?;
        Ok(Self { memory_ids, reward })
    }
}

/// Streams the records of a JSON Lines file (see the module docs). The file is opened here, so
/// a missing file is an error at once; each later item is one non-blank line.
pub fn read_jsonl<T: Record + 'static>(path: &Path) -> Result<Records<T>> {
    Ok(open_records(path, Box::new(T::from_object))?.known_fields(T::FIELDS))
}

/// Streams one string field of every line of a JSON Lines file (`memrl embed --field`), e.g. the
/// `text` of `{"text": ..., "source": ...}`. [`Records::line`] tells which line each came from.
pub fn read_jsonl_field(path: &Path, field: &str) -> Result<Records<String>> {
    let field = field.to_string();
    open_records(
        path,
        Box::new(move |object| required_string(object, &field)),
    )
}

/// [`read_jsonl`] over any buffered reader; `name` stands for the source in errors.
pub fn read_jsonl_from<T: Record + 'static>(
    reader: impl BufRead + 'static,
    name: &Path,
) -> Records<T> {
    records(Box::new(reader), name, Box::new(T::from_object)).known_fields(T::FIELDS)
}

/// Parses one JSON object (a line of a JSON Lines file, or an object nested in a request) as a
/// `T`, refusing fields `T` does not know. `Err((field, problem))` names the field at fault.
pub fn parse_object<T: Record>(
    object: &Map<String, Value>,
) -> std::result::Result<T, (String, String)> {
    if let Some(unknown) = unknown_field(object, T::FIELDS) {
        return Err(unknown);
    }
    T::from_object(object)
}

/// The first field of `object` (in name order) that is not in `known`, with the problem to
/// report: the fields that are known, and the one most likely meant (`sucess` -> `success`).
/// What the readers use, for callers that check objects of their own (a request of a protocol).
pub fn unknown_field(
    object: &Map<String, Value>,
    known: &[&'static str],
) -> Option<(String, String)> {
    object
        .keys()
        .find(|k| !known.contains(&k.as_str()))
        .map(|field| (field.clone(), unknown_field_problem(field, known)))
}

/// The longest line a reader accepts by default (64 MiB): a longer one is an error naming its
/// line, never an unbounded allocation. [`Records::max_line_bytes`] changes it.
pub const MAX_LINE_BYTES: usize = 64 << 20;

type Parser<T> = Box<dyn Fn(&Map<String, Value>) -> std::result::Result<T, (String, String)>>;

/// Where warnings about unknown fields go, when they are warnings.
type WarningSink = Box<dyn FnMut(Error)>;

fn open_records<T>(path: &Path, parse: Parser<T>) -> Result<Records<T>> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(records(Box::new(BufReader::new(file)), path, parse))
}

fn records<T>(reader: Box<dyn BufRead>, path: &Path, parse: Parser<T>) -> Records<T> {
    Records {
        path: path.to_path_buf(),
        reader,
        line: 0,
        buffer: Vec::new(),
        max_line_bytes: MAX_LINE_BYTES,
        done: false,
        parse,
        known: None,
        warn: None,
    }
}

/// The iterator of [`read_jsonl`] and [`read_jsonl_field`]. After the first error it yields
/// nothing more.
pub struct Records<T> {
    path: PathBuf,
    reader: Box<dyn BufRead>,
    line: usize,
    buffer: Vec<u8>,
    max_line_bytes: usize,
    done: bool,
    parse: Parser<T>,
    /// The fields a line may carry (`None`: any, for the one-field reader).
    known: Option<&'static [&'static str]>,
    /// `Some`: unknown fields are warnings handed here, not errors.
    warn: Option<WarningSink>,
}

impl<T> Records<T> {
    /// The 1-based line of the item last returned (blank lines are skipped, so rows and lines
    /// can differ).
    pub fn line(&self) -> usize {
        self.line
    }

    /// The path errors name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuse lines longer than `bytes` (default [`MAX_LINE_BYTES`]).
    pub fn max_line_bytes(mut self, bytes: usize) -> Self {
        self.max_line_bytes = bytes;
        self
    }

    /// Makes an unknown field a warning instead of an error: `sink` receives an
    /// [`Error::Input`] naming the file, line and field, and the line is read without it.
    pub fn warn_unknown_fields(mut self, sink: impl FnMut(Error) + 'static) -> Self {
        self.warn = Some(Box::new(sink));
        self
    }

    fn known_fields(mut self, fields: &'static [&'static str]) -> Self {
        self.known = Some(fields);
        self
    }

    fn error(&mut self, field: Option<String>, problem: String) -> Option<Result<T>> {
        self.done = true;
        Some(Err(Error::Input {
            path: self.path.clone(),
            line: self.line,
            field,
            problem,
        }))
    }
}

impl<T> Iterator for Records<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        while !self.done {
            self.buffer.clear();
            let limit = self.max_line_bytes.saturating_add(1) as u64;
            match (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut self.buffer)
            {
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.line += 1;
                    return self.error(None, format!("cannot read: {e}"));
                }
            }
            self.line += 1;
            if self.buffer.len() > self.max_line_bytes {
                let problem = format!(
                    "the line is longer than {} bytes (the reader's limit)",
                    self.max_line_bytes
                );
                return self.error(None, problem);
            }
            // A byte order mark some editors write at the start of a UTF-8 file.
            let bytes = match self.buffer.strip_prefix("\u{feff}".as_bytes()) {
                Some(rest) if self.line == 1 => rest,
                _ => &self.buffer[..],
            };
            let text = match std::str::from_utf8(bytes) {
                Ok(text) => text.trim(),
                Err(e) => {
                    let problem = format!("not valid UTF-8 (byte {})", e.valid_up_to());
                    return self.error(None, problem);
                }
            };
            if text.is_empty() {
                continue;
            }
            let value: Value = match serde_json::from_str(text) {
                Ok(value) => value,
                Err(e) => return self.error(None, format!("not valid JSON: {e}")),
            };
            let Value::Object(mut object) = value else {
                let problem = format!("expected a JSON object, found {}", kind(&value));
                return self.error(None, problem);
            };
            if let Some(known) = self.known {
                let unknown: Vec<String> = object
                    .keys()
                    .filter(|k| !known.contains(&k.as_str()))
                    .cloned()
                    .collect();
                for field in unknown {
                    let problem = unknown_field_problem(&field, known);
                    let Some(sink) = self.warn.as_mut() else {
                        return self.error(Some(field), problem);
                    };
                    object.remove(&field);
                    sink(Error::Input {
                        path: self.path.clone(),
                        line: self.line,
                        field: Some(field),
                        problem,
                    });
                }
            }
            return match (self.parse)(&object) {
                Ok(record) => Some(Ok(record)),
                Err((field, problem)) => self.error(Some(field), problem),
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_over_the_limit_is_an_error_naming_it() {
        let text = "{\"text\": \"short\"}\n{\"text\": \"a much longer line\"}\n";
        let mut records =
            read_jsonl_from::<QueryRecord>(std::io::Cursor::new(text), Path::new("q"))
                .max_line_bytes(20);
        assert_eq!(records.next().unwrap().unwrap().text, "short");
        let err = records.next().unwrap().unwrap_err();
        assert!(
            err.to_string()
                .contains("q:2: the line is longer than 20 bytes"),
            "{err}"
        );
        assert!(records.next().is_none());
    }

    fn write(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    fn input_error<T: Record + std::fmt::Debug + 'static>(
        content: &[u8],
    ) -> (usize, Option<String>, String) {
        let (_dir, path) = write(content);
        let err = read_jsonl::<T>(&path)
            .unwrap()
            .collect::<Result<Vec<T>>>()
            .unwrap_err();
        match err {
            Error::Input {
                path: p,
                line,
                field,
                problem,
            } => {
                assert_eq!(p, path);
                (line, field, problem)
            }
            other => panic!("expected an input error, got {other}"),
        }
    }

    #[test]
    fn memories_parse_with_defaults_and_blank_lines() {
        let (_dir, path) = write(
            b"{\"intent\": \"a\", \"experience\": \"x\"}\n\n  \n\
              {\"intent\": \"b\", \"experience\": \"y\", \"q\": 0.5, \"success\": true, \"id\": 7, \"metadata\": {\"k\": 1}}\n",
        );
        let got: Vec<MemoryRecord> = read_jsonl(&path).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].id, got[0].q, got[0].success, &got[0].metadata),
            (None, None, false, &None)
        );
        assert_eq!(
            (got[1].id, got[1].q, got[1].success),
            (Some(7), Some(0.5), true)
        );
        assert_eq!(got[1].metadata, Some(serde_json::json!({"k": 1})));
    }

    #[test]
    fn errors_name_line_and_field() {
        let ok = b"{\"intent\": \"a\", \"experience\": \"x\"}\n";
        let cases: Vec<(Vec<u8>, usize, Option<&str>, &str)> = vec![
            (
                [&ok[..], b"{\"intent\": \"a\"}\n"].concat(),
                2,
                Some("experience"),
                "missing",
            ),
            (
                [&ok[..], b"\n{\"intent\": 3, \"experience\": \"x\"}"].concat(),
                3,
                Some("intent"),
                "a number",
            ),
            (
                [
                    &ok[..],
                    b"{\"intent\": \"a\", \"experience\": \"x\", \"q\": \"high\"}",
                ]
                .concat(),
                2,
                Some("q"),
                "a string",
            ),
            (
                [
                    &ok[..],
                    b"{\"intent\": \"a\", \"experience\": \"x\", \"q\": 1e300}",
                ]
                .concat(),
                2,
                Some("q"),
                "finite",
            ),
            (
                [
                    &ok[..],
                    b"{\"intent\": \"a\", \"experience\": \"x\", \"id\": -1}",
                ]
                .concat(),
                2,
                Some("id"),
                "non-negative",
            ),
            (
                [
                    &ok[..],
                    b"{\"intent\": \"a\", \"experience\": \"x\", \"success\": 1}",
                ]
                .concat(),
                2,
                Some("success"),
                "true or false",
            ),
            (
                [&ok[..], b"{\"intent\": \"a\", "].concat(),
                2,
                None,
                "not valid JSON",
            ),
            ([&ok[..], b"[1, 2]"].concat(), 2, None, "JSON object"),
            (
                [&ok[..], b"{\"intent\": \"\xff\", \"experience\": \"x\"}"].concat(),
                2,
                None,
                "UTF-8",
            ),
        ];
        for (content, line, field, needle) in cases {
            let (l, f, problem) = input_error::<MemoryRecord>(&content);
            assert_eq!((l, f.as_deref()), (line, field), "{problem}");
            assert!(problem.contains(needle), "{problem} lacks {needle}");
        }
    }

    #[test]
    fn outcomes_and_queries() {
        let (_dir, path) = write(
            b"{\"memory_ids\": [1, 2], \"reward\": 1}\n{\"memory_ids\": [], \"reward\": -1.0}\n",
        );
        let got: Vec<Outcome> = read_jsonl(&path).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(got[0].memory_ids, vec![1, 2]);
        assert_eq!(got[1].reward, -1.0);
        let (line, field, _) =
            input_error::<Outcome>(b"{\"memory_ids\": [1, \"x\"], \"reward\": 1}");
        assert_eq!((line, field.as_deref()), (1, Some("memory_ids[1]")));
        let (_, field, _) = input_error::<Outcome>(b"{\"memory_ids\": [1]}");
        assert_eq!(field.as_deref(), Some("reward"));
        let (_, field, problem) = input_error::<QueryRecord>(b"{\"query\": \"a\"}");
        assert_eq!(field.as_deref(), Some("query"), "{problem}");
        let (_, field, _) = input_error::<QueryRecord>(b"{\"id\": 3}");
        assert_eq!(field.as_deref(), Some("text"));
        // A query of an embedding alone, and an id of any JSON passed through.
        let (_dir, path) = write(
            b"{\"embedding\": [0.5, 0.5], \"id\": {\"run\": 1}}\n{\"text\": \"t\", \"id\": 9}\n",
        );
        let got: Vec<QueryRecord> = read_jsonl(&path).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(
            (
                got[0].text.as_str(),
                got[0].embedding.as_deref(),
                &got[0].id
            ),
            (
                "",
                Some(&[0.5f32, 0.5][..]),
                &Some(serde_json::json!({"run": 1}))
            )
        );
        assert_eq!(
            (got[1].text.as_str(), &got[1].id),
            ("t", &Some(serde_json::json!(9)))
        );
    }

    #[test]
    fn every_unknown_field_of_every_record_type_is_named() {
        // One misspelling per record type, each on line 2 after a good line.
        fn check<T: Record + std::fmt::Debug + 'static>(
            good: &str,
            bad: &str,
            field: &str,
            meant: Option<&str>,
        ) {
            let content = format!("{good}\n{bad}\n");
            let (line, f, problem) = input_error::<T>(content.as_bytes());
            assert_eq!((line, f.as_deref()), (2, Some(field)), "{problem}");
            assert!(problem.contains("unknown field"), "{problem}");
            match meant {
                Some(m) => assert!(
                    problem.contains(&format!("did you mean `{m}`")),
                    "{problem}"
                ),
                None => assert!(!problem.contains("did you mean"), "{problem}"),
            }
        }
        let memory = r#"{"intent": "a", "experience": "x"}"#;
        check::<MemoryRecord>(
            memory,
            r#"{"intent": "a", "experience": "x", "sucess": true}"#,
            "sucess",
            Some("success"),
        );
        check::<MemoryRecord>(
            memory,
            r#"{"intent": "a", "experience": "x", "Q": 0.9}"#,
            "Q",
            Some("q"),
        );
        check::<MemoryRecord>(
            memory,
            r#"{"intent": "a", "experience": "x", "note": 1}"#,
            "note",
            None,
        );
        check::<MemoryRecord>(
            memory,
            r#"{"intent": "a", "experience": "x", "embeding": [1]}"#,
            "embeding",
            Some("embedding"),
        );
        let outcome = r#"{"memory_ids": [1], "reward": 1}"#;
        check::<Outcome>(
            outcome,
            r#"{"memory_ids": [1], "reward": 1, "rewrd": 2}"#,
            "rewrd",
            Some("reward"),
        );
        check::<Outcome>(
            outcome,
            r#"{"memory_id": [1], "reward": 1, "memory_ids": [1]}"#,
            "memory_id",
            Some("memory_ids"),
        );
        let query = r#"{"text": "a"}"#;
        check::<QueryRecord>(query, r#"{"text": "a", "k2": 3}"#, "k2", None);
        check::<QueryRecord>(query, r#"{"txt": "a"}"#, "txt", Some("text"));
        let task = r#"{"text": "a", "source": "s"}"#;
        check::<TaskRecord>(
            task,
            r#"{"text": "a", "source": "s", "sources": "t"}"#,
            "sources",
            Some("source"),
        );
    }

    #[test]
    fn unknown_fields_can_be_warnings_instead() {
        let (_dir, path) = write(
            b"{\"intent\": \"a\", \"experience\": \"x\", \"sucess\": true, \"Q\": 1}\n{\"intent\": \"b\", \"experience\": \"y\"}\n",
        );
        let warnings = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = warnings.clone();
        let got: Vec<MemoryRecord> = read_jsonl(&path)
            .unwrap()
            .warn_unknown_fields(move |w| sink.borrow_mut().push(w.to_string()))
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(got.len(), 2);
        assert!(!got[0].success && got[0].q.is_none());
        let warnings = warnings.borrow();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(":1: field `sucess`: unknown field")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(":1: field `Q`: unknown field")),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped_and_only_there() {
        let (_dir, path) = write(b"\xef\xbb\xbf{\"text\": \"a\"}\n{\"text\": \"b\"}\n");
        let got: Vec<QueryRecord> = read_jsonl(&path).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 2);
        let (line, _, problem) =
            input_error::<QueryRecord>(b"{\"text\": \"a\"}\n\xef\xbb\xbf{\"text\": \"b\"}\n");
        assert_eq!(line, 2, "{problem}");
    }

    #[test]
    fn embeddings_are_checked_where_they_are_read() {
        let ok = r#"{"intent": "a", "experience": "x", "embedding": [0.25, -1, 3e-3]}"#;
        let (_dir, path) = write(ok.as_bytes());
        let got: Vec<MemoryRecord> = read_jsonl(&path).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(got[0].embedding, Some(vec![0.25, -1.0, 3e-3]));
        assert_eq!(got[0].clone().into_new_memory().embedding, got[0].embedding);
        for (bad, needle) in [
            (r#""embedding": []"#, "empty"),
            (r#""embedding": [0, 0]"#, "no direction"),
            (r#""embedding": [1, "x"]"#, "component 1 is a string"),
            (r#""embedding": [1, 1e39]"#, "component 1"),
            (r#""embedding": "1,2""#, "expected an array"),
        ] {
            let line = format!(r#"{{"intent": "a", "experience": "x", {bad}}}"#);
            let (l, f, problem) = input_error::<MemoryRecord>(line.as_bytes());
            assert_eq!((l, f.as_deref()), (1, Some("embedding")), "{problem}");
            assert!(problem.contains(needle), "{problem} lacks {needle}");
        }
    }

    #[test]
    fn a_field_reader_reports_lines() {
        let (_dir, path) =
            write(b"{\"text\": \"a\"}\n\n{\"text\": \"b\", \"x\": 1}\n{\"body\": \"c\"}\n");
        let mut records = read_jsonl_field(&path, "text").unwrap();
        assert_eq!(records.next().unwrap().unwrap(), "a");
        assert_eq!(records.line(), 1);
        assert_eq!(records.next().unwrap().unwrap(), "b");
        assert_eq!(records.line(), 3);
        match records.next() {
            Some(Err(Error::Input {
                line: 4,
                field: Some(f),
                ..
            })) => assert_eq!(f, "text"),
            other => panic!("expected line 4's missing field, got {other:?}"),
        }
        assert!(records.next().is_none());
    }

    #[test]
    fn a_missing_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.jsonl");
        match read_jsonl::<QueryRecord>(&path) {
            Err(Error::Io { path: p, .. }) => assert_eq!(p, path),
            Err(other) => panic!("expected an I/O error, got {other}"),
            Ok(_) => panic!("a missing file opened"),
        }
    }

    #[test]
    fn input_errors_display_file_line_and_field() {
        let err = Error::Input {
            path: "m.jsonl".into(),
            line: 3,
            field: Some("q".into()),
            problem: "expected a number, found a string".into(),
        };
        assert_eq!(
            err.to_string(),
            "m.jsonl:3: field `q`: expected a number, found a string"
        );
    }
}
