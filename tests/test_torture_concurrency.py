"""Torture: 16 real CLI processes apply one tree of 5 sets at once, on every database.

Each migration has side effects that a second run would show: it appends its tag to
`hits` (no key, so a duplicate would be counted, not refused) and bumps `tally.n`. The
result is compared with a single process applying the same tree to a fresh database.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Database, fresh_database, run_cli, write_tree
from torture_support import schema_dump, spawn

PROCESSES = 16
SETS = ("a_core", "b_billing", "c_search", "d_audit", "e_reports")
PER_SET = 4


def _side_effects(set_name: str, version: int) -> str:
    return f"INSERT INTO hits (tag) VALUES ('{set_name}/{version}');\nUPDATE tally SET n = n + 1;\n"


def _migration(set_name: str, version: int) -> str:
    t = f"{set_name}_t"
    body = {
        1: f"CREATE TABLE {t} (id INT PRIMARY KEY, note VARCHAR(20));\n",
        2: f"ALTER TABLE {t} ADD COLUMN extra INT;\nCREATE INDEX {t}_note ON {t} (note);\n",
        3: f"CREATE VIEW {set_name}_v AS SELECT id, note FROM {t};\n",
        # Plain DML: the atomic path on MySQL too.
        4: f"INSERT INTO {t} (id, note) VALUES ({version}, 'row');\n",
    }[version]
    if set_name == SETS[0] and version == 1:
        # The shared counters, created first (sets run in name order).
        body = (
            "CREATE TABLE hits (tag VARCHAR(40) NOT NULL);\n"
            "CREATE TABLE tally (n INT NOT NULL);\n"
            "INSERT INTO tally VALUES (0);\n" + body
        )
    return body + _side_effects(set_name, version)


def _tree(root: Path) -> Path:
    files: dict[str, str] = {}
    for index, set_name in enumerate(SETS):
        for version in range(1, PER_SET + 1):
            sql = _migration(set_name, version)
            if index % 2:  # every other set in dbmate's format
                files[f"{set_name}/{version:04d}_step{version}.sql"] = (
                    f"-- migrate:up\n{sql}-- migrate:down\n"
                )
            else:
                files[f"{set_name}/{version:03d}_step{version}.up.sql"] = sql
    return write_tree(root, files)


def _state(db: Database) -> dict[str, object]:
    state: dict[str, object] = {
        "schema": schema_dump(db),
        "hits": sorted(db.query("SELECT tag FROM hits")),
        "tally": db.query("SELECT n FROM tally"),
    }
    for set_name in SETS:
        state[set_name] = db.query(
            "SELECT version, name, file, sha256, status, statements_done, statements_sha256, "
            f"error FROM {set_name} ORDER BY version"
        )
        state[f"{set_name}_rows"] = db.query(f"SELECT * FROM {set_name}_t ORDER BY id")
    return state


def test_sixteen_processes_apply_five_sets_exactly_once(db: Database, tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    # No pre-created SQLite file: the racing processes create it themselves.
    procs = [spawn("migrations", "apply", str(tree), "--url", db.url) for _ in range(PROCESSES)]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * PROCESSES, outputs

    total = len(SETS) * PER_SET
    # Each migration is reported applied by exactly one process.
    reported = [line for out, _ in outputs for line in out.splitlines() if "applied in" in line]
    assert len(reported) == total, reported
    assert len(set(reported)) == total

    hits = db.query("SELECT tag, count(*) FROM hits GROUP BY tag")
    assert sorted(hits) == sorted((f"{s}/{v}", 1) for s in SETS for v in range(1, 5))
    assert db.query("SELECT n FROM tally") == [(total,)]
    for set_name in SETS:
        counts = db.query(f"SELECT version, count(*) FROM {set_name} GROUP BY version")
        assert sorted(counts) == [(v, 1) for v in range(1, PER_SET + 1)]
        assert db.query(f"SELECT DISTINCT status FROM {set_name}") == [("applied",)]

    with fresh_database(db.dialect, tmp_path) as single:
        alone = run_cli("migrations", "apply", str(tree), "--url", single.url)
        assert alone.returncode == 0, alone.stderr
        assert _state(db) == _state(single)

    # And everyone agrees that nothing is left to do.
    again = run_cli("migrations", "inspect", str(tree), "--url", db.url)
    assert again.returncode == 0, again.stdout + again.stderr
