"""The examples in examples/python run (offline) and say what they did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

EXAMPLES = REPO / "examples" / "python"


def run(script: str, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_agent_loop(tmp_path: Path) -> None:
    out = run(
        "agent_loop.py", "--episodes", "60", "--bank", str(tmp_path / "a.safetensors"), cwd=tmp_path
    )
    assert "success rate" in out


def test_bulk_index(tmp_path: Path) -> None:
    out = run(
        "bulk_index.py", "--limit", "300", "--bank", str(tmp_path / "c.safetensors"), cwd=tmp_path
    )
    assert "300 memories" in out


def test_langgraph_store(tmp_path: Path) -> None:
    out = run("langgraph_store.py", "--root", str(tmp_path / "store"), cwd=tmp_path)
    assert "after feedback" in out
