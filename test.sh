#!/usr/bin/env bash
# Every test suite of the project, Rust and Python: a fresh virtual environment with the pinned
# test tools (python/requirements.txt; the MCP test of `cargo test` uses its `mcp` client), then
# `cargo test` (every crate's unit and integration tests), then the Python package as a new user
# gets it: `pip install ./python` (maturin builds the wheel in release mode, reusing the engine
# `cargo build --release` compiled when the target directory already has it), and its pytest
# suite.
#
# usage: ./test.sh                 (from anywhere; needs a Rust toolchain and python3 >= 3.10)
# env:   CARGO_TARGET_DIR          shared by the tests, the wheel and the binary (default ./target)
#        MEMRL_TEST_VENV           the virtual environment (default $CARGO_TARGET_DIR/python-venv,
#                                  made anew on every run)
#        PYTEST_ARGS               extra pytest arguments (e.g. "-k langgraph -x")
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
venv="${MEMRL_TEST_VENV:-$CARGO_TARGET_DIR/python-venv}"
start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start ))s)"; }

step "Python: a fresh virtual environment ($venv)"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade "pip==26.3"
"$venv/bin/python" -m pip install --quiet -r python/requirements.txt

step "Rust: cargo test (the MCP test's client is the environment's mcp package)"
MEMRL_TEST_PYTHON="$venv/bin/python" cargo test

step "Python: pip install ./python (builds the abi3 wheel)"
"$venv/bin/python" -m pip install --quiet ./python

step "Python: pytest (memrl.Client's tests run the release memrl binary as their server)"
cargo build --release -p memrl-cli
# Run from outside the source tree so that `import memrl` is the installed wheel.
(cd python/tests && MEMRL_BIN="$CARGO_TARGET_DIR/release/memrl" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} .)

step "done"
