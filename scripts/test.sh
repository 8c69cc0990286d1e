#!/usr/bin/env bash
# Install whimbrel with its test tools into .venv, then lint, type-check and run the tests
# against the PostgreSQL and MariaDB servers of this machine (see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
.venv/bin/pytest -n 2 "$@"
