//! Reading memories, queries, outcomes and task corpora from JSON Lines files.
//!
//! Why it lives in the library: the CLI's `index`, `query --input` and `feedback` read these
//! files, and so does any program that loads a bank from the same data; one reader means one set
//! of rules and one set of error messages. Files are streamed line by line (a multi-gigabyte file
//! is never held whole), blank lines are skipped, and every problem is an [`Error::Input`] that
//! names the file, the 1-based line and, where one is at fault, the field.
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

/// One line of a memories file: `{intent, experience, q?, success?, id?, metadata?}`.
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
}

impl MemoryRecord {
    /// The bank's input for this record; `embedding: None` lets the bank embed the intent.
    pub fn into_new_memory(self, embedding: Option<Vec<f32>>) -> NewMemory {
        NewMemory {
            id: self.id,
            intent: self.intent,
            embedding,
            experience: self.experience,
            success: self.success,
            q: self.q,
            metadata: self.metadata,
        }
    }
}

/// One line of a queries file: `{text}` (any other fields are ignored).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRecord {
    /// The query text, embedded like an intent.
    pub text: String,
}

/// One line of a task corpus (the simulation's tasks): `{text, source}`, where `source` names the
/// task family the text comes from (any other fields are ignored).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// The task text.
    pub text: String,
    /// The task family (for BIG-bench, the task name).
    pub source: String,
}

/// A record type that one JSON object per line can be read into.
pub trait Record: Sized {
    /// Builds the record from one line's object; `Err((field, problem))` names the field at fault.
    fn from_object(object: &Map<String, Value>) -> std::result::Result<Self, (String, String)>;
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

fn id_value(value: &Value, field: &str) -> Result<u64, (String, String)> {
    value.as_u64().ok_or_else(|| {
        field_error(
            field,
            format!("expected a non-negative integer id, found {value}"),
        )
    })
}

impl Record for MemoryRecord {
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
        })
    }
}

impl Record for QueryRecord {
    fn from_object(object: &Map<String, Value>) -> std::result::Result<Self, (String, String)> {
        Ok(Self {
            text: required_string(object, "text")?,
        })
    }
}

impl Record for TaskRecord {
    fn from_object(object: &Map<String, Value>) -> std::result::Result<Self, (String, String)> {
        Ok(Self {
            text: required_string(object, "text")?,
            source: required_string(object, "source")?,
        })
    }
}

impl Record for Outcome {
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
    open_records(path, Box::new(T::from_object))
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
    records(Box::new(reader), name, Box::new(T::from_object))
}

/// The longest line a reader accepts by default (64 MiB): a longer one is an error naming its
/// line, never an unbounded allocation. [`Records::max_line_bytes`] changes it.
pub const MAX_LINE_BYTES: usize = 64 << 20;

type Parser<T> = Box<dyn Fn(&Map<String, Value>) -> std::result::Result<T, (String, String)>>;

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
}

impl<T> Records<T> {
    /// The 1-based line of the item last returned (blank lines are skipped, so rows and lines
    /// can differ).
    pub fn line(&self) -> usize {
        self.line
    }

    /// Refuse lines longer than `bytes` (default [`MAX_LINE_BYTES`]).
    pub fn max_line_bytes(mut self, bytes: usize) -> Self {
        self.max_line_bytes = bytes;
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
            let text = match std::str::from_utf8(&self.buffer) {
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
            let Value::Object(object) = value else {
                let problem = format!("expected a JSON object, found {}", kind(&value));
                return self.error(None, problem);
            };
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
        let (_, field, _) = input_error::<QueryRecord>(b"{\"query\": \"a\"}");
        assert_eq!(field.as_deref(), Some("text"));
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
