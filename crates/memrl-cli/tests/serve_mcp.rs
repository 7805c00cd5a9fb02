//! MCP with a real client: the official Python SDK (`mcp` from PyPI, pinned) drives `memrl mcp`
//! over stdio and `memrl serve` over streamable HTTP (`tests/mcp_client.py`), on the tiny model.
//!
//! The SDK's version is pinned once, in `python/requirements.txt` (the project's Python test
//! environment). `./test.sh` makes that environment before `cargo test` and names its
//! interpreter in `MEMRL_TEST_PYTHON`; a bare `cargo test` makes a virtual environment of its own
//! under cargo's target directory on the first run (`python3 -m venv`, then `pip install` of the
//! pinned `mcp`). Without Python, PyPI or the package the test fails: it never skips.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod server;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tiny_model::{self, TinyPooling};
use server::Server;

/// The pinned SDK requirement (`mcp==X.Y.Z`) of the project's Python test environment.
fn mcp_requirement() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/requirements.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .find(|line| line.starts_with("mcp=="))
        .unwrap_or_else(|| panic!("{}: no `mcp==` pin", path.display()))
        .to_string()
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An interpreter with the `mcp` package.
fn python() -> PathBuf {
    let requirement = mcp_requirement();
    if let Ok(python) = std::env::var("MEMRL_TEST_PYTHON") {
        // The environment must have exactly the pinned SDK: fail, never skip, otherwise.
        let version = requirement.trim_start_matches("mcp==");
        run(Command::new(&python).args([
            "-c",
            &format!("import importlib.metadata as m, mcp; v = m.version('mcp'); assert v == '{version}', v"),
        ]));
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{requirement}-venv"));
    let python = venv.join("bin").join("python");
    let ready = python.is_file()
        && Command::new(&python)
            .args(["-c", "import mcp"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &requirement,
        ]));
    }
    python
}

#[test]
fn the_python_sdk_runs_the_agent_loop_over_stdio_and_http() {
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client.py");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-model");
    tiny_model::write(&model, TinyPooling::Mean, Some(24), 42);

    // stdio: the SDK spawns `memrl mcp` itself.
    let out = run(Command::new(&python)
        .arg(&script)
        .arg("stdio")
        .arg(env!("CARGO_BIN_EXE_memrl"))
        .arg(dir.path().join("stdio-data"))
        .arg(&model));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mcp stdio: ok"));

    // Streamable HTTP on a server with keys.
    let keys = dir.path().join("keys.txt");
    std::fs::write(
        &keys,
        "agent-one-key-0123456789 one\nagent-two-key-0123456789 two\n",
    )
    .unwrap();
    let model_arg = model.display().to_string();
    let keys_arg = keys.display().to_string();
    let server = Server::start(
        &dir.path().join("http-data"),
        &["--model", &model_arg, "--keys", &keys_arg],
        &[],
    );
    let url = format!("http://{}/mcp", server.addr);
    let out = run(Command::new(&python).arg(&script).args([
        "http",
        &url,
        "agent-one-key-0123456789",
        "agent-two-key-0123456789",
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mcp http: ok"));
    // What the HTTP client did is in namespace `one`, through the same banks as the JSON routes.
    let mut http = server.http();
    let stats = http.ok(
        "GET",
        "/v1/namespaces/one/stats",
        Some("agent-one-key-0123456789"),
        None,
    );
    assert_eq!(stats["memories"], 1);
}
