"""The start-up shortcuts: the read-only libpq session (no psycopg import) reads exactly what
PostgresDriver reads, and an up-to-date apply returns without waiting for the lock."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from conftest import Database, both_pg_clients, run_cli, whimbrel_executable, write_tree
from whimbrel.drivers.libpq import open_reader
from whimbrel.drivers.postgres import LOCK_KEY, PostgresDriver
from whimbrel.urls import parse_url


def test_libpq_reader_reads_what_psycopg_reads(postgres_db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_a.up.sql": "CREATE TABLE a (id INT);",
            "1_a.down.sql": "DROP TABLE a;",
            "2_b.sql": "-- migrate:up transaction:false\nCREATE TABLE b (id INT);\n"
            "INSERT INTO nowhere VALUES ('it''s \\\\ \"odd\" ü');\n-- migrate:down\n",
        },
    )
    assert run_cli("migrations", "apply", str(tree), "--url", postgres_db.url).returncode == 1
    url = parse_url(postgres_db.url)
    reader = open_reader(url, connect_timeout=5, application_name="test")
    assert reader is not None
    full = PostgresDriver(url, connect_timeout=5, application_name="test")
    try:
        tables = ["app", "no_such_set"]
        assert reader.tables_columns(tables) == full.tables_columns(tables)
        fast_rows = reader.read_rows_many(["app"])
        assert fast_rows == full.read_rows_many(["app"])
        assert [r.status for r in fast_rows["app"]] == ["applied", "applying"]
        assert fast_rows["app"][1].error and "nowhere" in fast_rows["app"][1].error
    finally:
        reader.close()
        full.close()
    inspected = run_cli("migrations", "inspect", str(tree), "--url", postgres_db.url, "-o", "json")
    assert inspected.returncode == 4
    assert '"statements_done": 1' in inspected.stdout


@both_pg_clients
def test_up_to_date_apply_does_not_wait_for_the_lock(postgres_db: Database, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "app", {"1_a.up.sql": "CREATE TABLE a (id INT);"})
    assert run_cli("migrations", "apply", str(tree), "--url", postgres_db.url).returncode == 0
    with psycopg.connect(postgres_db.url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        started = time.monotonic()
        result = run_cli(
            "migrations", "apply", str(tree), "--url", postgres_db.url, "--lock-timeout", "5"
        )
        assert result.returncode == 0, result.stderr
        assert "Nothing to apply" in result.stdout
        assert time.monotonic() - started < 4
        # With something to do, it waits for the lock as before.
        write_tree(tree, {"2_b.up.sql": "CREATE TABLE b (id INT);"})
        result = run_cli(
            "migrations", "apply", str(tree), "--url", postgres_db.url, "--lock-timeout", "1"
        )
        assert result.returncode == 7, result.stderr


@pytest.mark.parametrize("engine", ["sqlite", "mysql"])
def test_up_to_date_apply_reads_once_elsewhere(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db: Database = request.getfixturevalue(f"{engine}_db")
    tree = write_tree(tmp_path / "app", {"1_a.up.sql": "CREATE TABLE a (id INT);"})
    assert run_cli("migrations", "apply", str(tree), "--url", db.url).returncode == 0
    again = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert again.returncode == 0 and "Nothing to apply" in again.stdout
    # Modified after it was applied: the locked path refuses, as before.
    write_tree(tree, {"1_a.up.sql": "CREATE TABLE a (id INT, more INT);"})
    refused = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert refused.returncode == 8 and "was modified after it was applied" in refused.stderr
    assert "--set app --version 1 --applied`); or pass --allow-drift" in refused.stderr


def test_a_run_queued_behind_another_finds_its_work_done(
    postgres_db: Database, tmp_path: Path
) -> None:
    tree = write_tree(
        tmp_path / "app", {"1_slow.up.sql": "SELECT pg_sleep(2);\nCREATE TABLE a (id INT);"}
    )
    command = [*whimbrel_executable(), "migrations", "apply", str(tree), "--url", postgres_db.url]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None
        assert first.stdout.read(len("app: applying")) == "app: applying"  # holds the lock
        second = run_cli("migrations", "apply", str(tree), "--url", postgres_db.url)
        assert second.returncode == 0, second.stderr
        assert "waiting for the migration lock" in second.stderr
        assert "Nothing to apply" in second.stdout
        assert first.wait(30) == 0
    finally:
        first.kill()
        first.wait()
    assert postgres_db.query("SELECT version, status FROM app") == [(1, "applied")]


@both_pg_clients
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_queued_run_stops_at_once_on_a_signal(
    postgres_db: Database, tmp_path: Path, signal_name: str
) -> None:
    """The queued run waits for the lock in libpq (ctypes), where Python's signal handlers
    cannot run: Ctrl-C and SIGTERM must still stop it at once, not at --lock-timeout."""
    import signal

    slow = write_tree(tmp_path / "slow", {"1_slow.up.sql": "SELECT pg_sleep(30);"})
    other = write_tree(tmp_path / "other", {"1_t.up.sql": "CREATE TABLE t (id INT);"})
    command = [*whimbrel_executable(), "migrations", "apply"]
    holder = subprocess.Popen(
        [*command, str(slow), "--url", postgres_db.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.read(len("slow: applying")) == "slow: applying"  # holds the lock
    queued = subprocess.Popen(
        [*command, str(other), "--url", postgres_db.url, "--lock-timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert queued.stderr is not None
        assert "waiting for the migration lock" in queued.stderr.readline()
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'SELECT pg_advisory_lock(%%'"
        )
        deadline = time.monotonic() + 20
        while not postgres_db.query(waiting)[0][0]:  # blocked inside libpq, on the server
            assert time.monotonic() < deadline, "the queued run never waited on the server"
            time.sleep(0.05)
        sent = time.monotonic()
        queued.send_signal(getattr(signal, signal_name))
        queued.wait(20)
        assert time.monotonic() - sent < 5
        assert queued.returncode == 128 + getattr(signal, signal_name)
    finally:
        for proc in (holder, queued):
            proc.kill()
            proc.wait()
    assert "t" not in postgres_db.tables()
