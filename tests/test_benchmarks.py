"""benchmarks/run.py stays runnable: its help, and its self-check (small trees applied with
whimbrel on SQLite; no server, no peers, nothing timed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def test_help() -> None:
    result = subprocess.run(
        [sys.executable, str(RUN), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout and "--self-check" in result.stdout


def test_self_check() -> None:
    result = subprocess.run(
        [sys.executable, str(RUN), "--self-check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-check: OK" in result.stdout
