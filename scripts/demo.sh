#!/usr/bin/env bash
# Install whimbrel into .venv and run it on a throw-away SQLite database with the
# example migrations in examples/dracon (two components sharing one database).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e .
db="$(mktemp -d)/demo.db"
run() { echo "\$ whimbrel $*"; .venv/bin/whimbrel "$@" || echo "(exit code $?)"; echo; }
run migrations apply examples/dracon --url "sqlite:///$db" --dry-run
run migrations apply examples/dracon --url "sqlite:///$db"
run migrations inspect examples/dracon --url "sqlite:///$db"
run migrations revert examples/dracon --url "sqlite:///$db" --set enrichments
run migrations inspect examples/dracon --url "sqlite:///$db"
echo "The demo database is $db; try: .venv/bin/whimbrel migrations --help"
