"""Torture: SIGKILL the applying process in the middle of a long migration.

"In the middle" is always what the server shows (pg_stat_activity, the process list) or,
for SQLite, the database file growing under an open write transaction; never a sleep.
The slow part of each migration reads its length from `slow_flag`, a table made by the
tree's first migration, so the test can make a re-run of the very same file quick.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Database, both_pg_clients, run_cli, write_tree
from test_failures import _wait_until
from torture_support import read_until, spawn

# Migration 2's slow statement, per database; its length comes from slow_flag.s.
SLOW = {
    "postgres": "SELECT pg_sleep(s) FROM slow_flag",
    "mysql": "INSERT INTO big SELECT SLEEP(s) FROM slow_flag",
    # A row generator that runs until killed: s is a row count.
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
    "LIMIT (SELECT s FROM slow_flag)) INSERT INTO big SELECT x FROM c",
}
LONG = {"postgres": 30, "mysql": 3, "sqlite": 10**12}
SHORT = {"postgres": 0, "mysql": 0, "sqlite": 1000}


def _tree(root: Path, dialect: str) -> Path:
    setup = "INSERT INTO big SELECT generate_series(1, 1000);\n" if dialect == "postgres" else ""
    return write_tree(
        root,
        {
            "001_flag.up.sql": "CREATE TABLE slow_flag (s BIGINT);\n"
            f"INSERT INTO slow_flag VALUES ({LONG[dialect]});\n",
            "002_long.up.sql": f"CREATE TABLE big (n INT);\n{setup}{SLOW[dialect]};\n"
            "CREATE TABLE after_big (n INT);\n",
            "003_later.up.sql": "CREATE TABLE later (n INT);\n",
        },
    )


def _slow_statement_running(db: Database) -> bool:
    """True while the server (or the SQLite file) shows migration 2's slow statement."""
    if db.dialect == "postgres":
        # By what it waits on: the query text shown is the round trip's, cut at 1 kB.
        rows = db.query(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND wait_event = 'PgSleep' AND pid <> pg_backend_pid() "
            "AND datname = current_database()"
        )
    elif db.dialect == "mysql":
        rows = db.query(
            "SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s "
            "AND ID <> CONNECTION_ID() AND DB = DATABASE()",
            ("%SLEEP(s) FROM slow_flag%",),
        )
    else:
        # The rows pile up in the file under a write transaction (a hot journal).
        journal = Path(db.name + "-journal")
        return journal.exists() and os.path.getsize(db.name) > 4_000_000
    return bool(rows[0][0])


def _start_long_run(db: Database, tree: Path) -> subprocess.Popen[str]:
    proc = spawn("migrations", "apply", str(tree), "--url", db.url)
    # Not "applying 002_long": on PostgreSQL, small migrations share a round trip and are
    # reported when it is back.
    read_until(proc.stdout, "app: applying ")

    def in_the_middle() -> bool:
        assert proc.poll() is None, "whimbrel finished before it could be killed"
        return _slow_statement_running(db)

    _wait_until(in_the_middle, "migration 2 is in the middle of its slow statement")
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


@both_pg_clients
@pytest.mark.parametrize("engine", ["postgres", "sqlite"])
def test_sigkill_mid_migration_leaves_nothing_and_a_rerun_completes(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db: Database = request.getfixturevalue(f"{engine}_db")
    tree = _tree(tmp_path / "app", engine)
    _kill(_start_long_run(db, tree))

    if engine == "postgres":
        # The server notices the client is gone and rolls back, instead of running the rest
        # of what it was sent (the tracking row and COMMIT included) for 30 s.
        _wait_until(lambda: not _slow_statement_running(db), "the killed migration stops", 10)
    else:
        # Killed in-process: a hot journal is left, which the next connection rolls back.
        assert Path(db.name + "-journal").exists()
    assert db.query("SELECT version, status FROM app ORDER BY version") == [(1, "applied")]
    assert db.tables() & {"big", "after_big", "later"} == set()

    db.query(f"UPDATE slow_flag SET s = {SHORT[engine]}")
    rerun = run_cli("migrations", "apply", str(tree), "--url", db.url, "--lock-timeout", "20")
    assert rerun.returncode == 0, rerun.stderr
    assert "applying 002_long.up.sql ... applied" in rerun.stdout
    assert [r[:2] for r in db.tracking("app")] == [(1, "applied"), (2, "applied"), (3, "applied")]
    expected_rows = 1000 if engine == "postgres" else SHORT[engine]
    assert db.query("SELECT count(*) FROM big") == [(expected_rows,)]


@pytest.mark.parametrize("recovery", ["resume", "mark"])
def test_sigkill_mid_migration_on_mysql_is_dirty_and_recovers(
    mysql_db: Database, tmp_path: Path, recovery: str
) -> None:
    db = mysql_db
    tree = _tree(tmp_path / "app", "mysql")
    _kill(_start_long_run(db, tree))

    # The next run waits for the dead client's statement to end on the server (the work
    # lock), then refuses the dirty migration and says how to recover.
    refused = run_cli("migrations", "apply", str(tree), "--url", db.url, "--lock-timeout", "20")
    assert refused.returncode == 8, refused.stdout + refused.stderr
    assert "set 'app': migration 2 (002_long.up.sql) is dirty" in refused.stderr
    assert "--resume" in refused.stderr and "migrations mark" in refused.stderr
    inspected = run_cli("migrations", "inspect", str(tree), "--url", db.url, "-o", "json")
    assert inspected.returncode == 4
    dirty = json.loads(inspected.stdout)["sets"][0]["migrations"][1]
    assert dirty["status"] == "dirty" and dirty["dirty"]["direction"] == "up"
    done = dirty["dirty"]["statements_done"]
    # Exactly counted: the INSERT ran (done 2, one row) or it did not (done 1, no rows).
    assert done in (1, 2)
    assert db.query("SELECT count(*) FROM big") == [(done - 1,)]
    assert "after_big" not in db.tables()

    if recovery == "resume":
        db.query("UPDATE slow_flag SET s = 0")
        result = run_cli("migrations", "apply", str(tree), "--url", db.url, "--resume")
        assert result.returncode == 0, result.stderr
        assert f"applying 002_long.up.sql from statement {done + 1}" in result.stdout
        assert db.query("SELECT count(*) FROM big") == [(1,)]  # never twice
    else:
        # Repair by hand what the migration did not finish, then record it.
        if done == 1:
            db.query("INSERT INTO big VALUES (0)")
        db.query("CREATE TABLE after_big (n INT)")
        marked = run_cli(
            "migrations", "mark", str(tree), "--url", db.url, "--set", "app", "--version", "2",
            "--applied",
        )  # fmt: skip
        assert marked.returncode == 0, marked.stderr
        result = run_cli("migrations", "apply", str(tree), "--url", db.url)
        assert result.returncode == 0, result.stderr
    assert {"after_big", "later"} <= db.tables()
    assert [r[:2] for r in db.tracking("app")] == [(1, "applied"), (2, "applied"), (3, "applied")]
    assert run_cli("migrations", "inspect", str(tree), "--url", db.url).returncode == 0


def test_killed_lock_holder_frees_the_lock_for_a_waiting_run(db: Database, tmp_path: Path) -> None:
    tree = _tree(tmp_path / "app", db.dialect)
    # Another component's set: it needs the same database-wide lock, nothing else.
    other = write_tree(tmp_path / "other", {"1_o.up.sql": "CREATE TABLE other_t (n INT);"})
    holder = _start_long_run(db, tree)
    waiter = spawn("migrations", "apply", str(other), "--url", db.url, "--lock-timeout", "30")
    try:
        try:
            read_until(waiter.stderr, "waiting for the migration lock")
        except AssertionError:
            raise AssertionError(waiter.communicate(timeout=60)) from None
        _kill(holder)
        killed_at = time.monotonic()
        out, err = waiter.communicate(timeout=60)
        waited = time.monotonic() - killed_at
    finally:
        for proc in (holder, waiter):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert waiter.returncode == 0, out + err
    assert "other: applying 1_o.up.sql ... applied" in out
    assert "other_t" in db.tables()
    # PostgreSQL aborts the dead client's statement at once, not after its 30 s sleep.
    assert waited < 15
    expected = [(1, "applied"), (2, "applying")] if db.dialect == "mysql" else [(1, "applied")]
    assert [r[:2] for r in db.tracking("app")] == expected


@pytest.mark.parametrize("recovery", ["resume", "mark"])
def test_sigkill_after_a_migrations_last_ddl_on_mysql_is_dirty_and_recovers(
    mysql_db: Database, tmp_path: Path, recovery: str
) -> None:
    """The window of held tracking writes: a DDL statement's progress, and for a
    migration's last statement its `applied` status, ride on whimbrel's next round trip.
    Killed before that trip (here: while the server still runs the DDL, which it finishes
    after whimbrel is gone), the migration is dirty and counted one statement short;
    nothing is recorded as applied that did not run, and nothing runs twice."""
    db = mysql_db
    tree = write_tree(
        tmp_path / "app",
        {
            "001_flag.up.sql": "CREATE TABLE slow_flag (s BIGINT);\n"
            "INSERT INTO slow_flag VALUES (3);\n",
            # One DDL statement (it commits by itself), slow on the server.
            "002_ctas.up.sql": "CREATE TABLE big AS SELECT SLEEP(s) FROM slow_flag;\n",
            "003_later.up.sql": "CREATE TABLE later (n INT);\n",
        },
    )
    proc = spawn("migrations", "apply", str(tree), "--url", db.url)
    read_until(proc.stdout, "applying 002_ctas.up.sql")

    def running() -> bool:
        assert proc.poll() is None, "whimbrel finished before it could be killed"
        return _slow_statement_running(db)

    _wait_until(running, "migration 2's CREATE TABLE ... SELECT SLEEP runs")
    _kill(proc)
    # The server finishes the DDL the dead client sent, and commits it.
    _wait_until(lambda: "big" in db.tables(), "the orphaned DDL finishes on the server")

    inspected = run_cli("migrations", "inspect", str(tree), "--url", db.url, "-o", "json")
    assert inspected.returncode == 4, inspected.stdout + inspected.stderr
    migrations = json.loads(inspected.stdout)["sets"][0]["migrations"]
    assert [m["status"] for m in migrations] == ["applied", "dirty", "pending"]
    # Recorded as started, never as applied: its progress was still held by whimbrel.
    assert migrations[1]["dirty"]["statements_done"] == 0
    refused = run_cli("migrations", "apply", str(tree), "--url", db.url, "--lock-timeout", "20")
    assert refused.returncode == 8, refused.stdout + refused.stderr
    assert "set 'app': migration 2 (002_ctas.up.sql) is dirty" in refused.stderr

    if recovery == "resume":
        # --resume re-runs the DDL: it fails loudly (the table exists), it never runs twice.
        resumed = run_cli("migrations", "apply", str(tree), "--url", db.url, "--resume")
        assert resumed.returncode != 0, resumed.stdout
        assert "already exists" in resumed.stderr
        assert db.query("SELECT count(*) FROM big") == [(1,)]
        assert "later" not in db.tables()
    marked = run_cli(
        "migrations", "mark", str(tree), "--url", db.url, "--set", "app", "--version", "2",
        "--applied",
    )  # fmt: skip
    assert marked.returncode == 0, marked.stderr
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 0, result.stderr
    assert "later" in db.tables()
    assert [r[:2] for r in db.tracking("app")] == [(1, "applied"), (2, "applied"), (3, "applied")]
    assert run_cli("migrations", "inspect", str(tree), "--url", db.url).returncode == 0
