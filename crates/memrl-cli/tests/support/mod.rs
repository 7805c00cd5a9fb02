//! What the CLI's test files share: a temporary folder with the tiny model the tests build (no
//! download), and running the real `memrl` binary in it.
#![allow(dead_code)]

#[path = "../../../../tests/common/mod.rs"]
pub mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::tiny_model::{self, TinyPooling};

pub const MEMORIES: &str = r#"{"intent": "parse the date", "experience": "use the iso format", "q": 0.5, "success": true}
{"intent": "fix the bug in the test", "experience": "read the failing assertion first"}

{"intent": "hello world", "experience": "print it", "id": 100, "metadata": {"source": "tests"}}
"#;

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub model: PathBuf,
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

impl Setup {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny-model");
        tiny_model::write(&model, TinyPooling::Mean, Some(24), 42);
        Self { dir, model }
    }

    /// `memrl index --input INPUT --bank BANK`, which must succeed; returns its stdout.
    pub fn index(&self, input: &Path, bank: &Path, with_model: bool) -> String {
        ok(&self.run(
            &["index", "--input", s(input), "--bank", s(bank)],
            with_model,
        ))
    }

    /// `memrl query --bank BANK ARGS` (the bank's own model), which must succeed.
    pub fn query(&self, bank: &Path, args: &[&str]) -> String {
        let mut all = vec!["query", "--bank", s(bank)];
        all.extend_from_slice(args);
        ok(&self.run(&all, false))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// `memrl ARGS` in the folder, with `--model` pointing at the tiny model where the command
    /// takes one.
    pub fn command(&self, args: &[&str], with_model: bool) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memrl"));
        cmd.args(args).current_dir(self.dir.path());
        if with_model {
            cmd.arg("--model").arg(&self.model);
        }
        cmd
    }

    /// Runs `memrl ARGS` (see [`Setup::command`]), stdin empty.
    pub fn run(&self, args: &[&str], with_model: bool) -> Output {
        self.command(args, with_model)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `memrl ARGS` with `input` on its stdin.
    pub fn run_with_input(&self, args: &[&str], with_model: bool, input: &[u8]) -> Output {
        let mut child = self
            .command(args, with_model)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// The bank's files as they are on disk (snapshot, log), to check a failure changed nothing.
    pub fn files(&self, bank: &Path) -> (Vec<u8>, Vec<u8>) {
        let log = PathBuf::from(format!("{}.wal", bank.display()));
        (
            std::fs::read(bank).unwrap(),
            std::fs::read(log).unwrap_or_default(),
        )
    }

    /// Every memory of the bank, through `memrl export`.
    pub fn export(&self, bank: &Path) -> Vec<serde_json::Value> {
        ok(&self.run(&["export", "--bank", s(bank)], false))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The stderr of a command that must have failed cleanly: exit 1 (an error) or 2 (a usage
/// error), never a panic (101) or a signal, printing nothing to stdout.
pub fn failed(out: &Output) -> String {
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "expected exit 1 or 2, got {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "a failure printed to stdout");
    String::from_utf8(out.stderr.clone()).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
