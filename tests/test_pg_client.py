"""The PostgreSQL client: libpq through ctypes by default, so that no command imports
psycopg; psycopg where libpq cannot be loaded or WHIMBREL_PG_CLIENT=psycopg; the same
behaviour through either. (Tests marked `both_pg_clients` elsewhere run through both.)"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from conftest import (
    Database,
    both_pg_clients,
    fresh_database,
    run_cli,
    whimbrel_executable,
    write_tree,
)
from whimbrel import drivers
from whimbrel.drivers.base import TrackingRow
from whimbrel.drivers.libpq import LibpqDriver, LibpqReader, libpq_available
from whimbrel.drivers.postgres import PostgresDriver
from whimbrel.errors import UsageError
from whimbrel.urls import parse_url

# The library API, in a fresh interpreter: every PostgreSQL command, then which client
# drove them and whether psycopg was imported.
_EVERY_COMMAND = """
import sys, whimbrel
from whimbrel import drivers
from whimbrel.urls import parse_url
tree, url = sys.argv[1], sys.argv[2]
whimbrel.apply(tree, url, sets=["one"])
whimbrel.apply(tree, url, single_transaction=True)
whimbrel.apply(tree, url)
whimbrel.inspect(tree, url)
whimbrel.revert(tree, url, sets=["two"], all=True)
whimbrel.mark(tree, url, set="two", version=1, applied=True)
whimbrel.apply(tree, url, dry_run=True)
driver = drivers.connect(parse_url(url))
driver.close()
print(type(driver).__name__, any(m.split(".")[0] == "psycopg" for m in sys.modules))
"""


def _two_sets(tmp_path: Path) -> Path:
    return write_tree(
        tmp_path / "db",
        {
            "one/1_a.up.sql": "CREATE TABLE a (id INT);",
            "one/1_a.down.sql": "DROP TABLE a;",
            "two/1_b.up.sql": "CREATE TABLE b (id INT);\nDROP TABLE IF EXISTS nothing_here;",
            "two/1_b.down.sql": "DROP TABLE b;",
            "two/2_c.up.sql": "CREATE TABLE c (id INT);",
            "two/2_c.down.sql": "DROP TABLE c;",
        },
    )


def _run_python(code: str, *args: str, client: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "WHIMBREL_PG_CLIENT"}
    if client is not None:
        env["WHIMBREL_PG_CLIENT"] = client
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "NOTICE" not in done.stderr  # psycopg drops notices; so must libpq
    return done.stdout.strip()


def test_libpq_is_loadable_here() -> None:
    # Else every test "through libpq" would quietly test psycopg.
    assert libpq_available()


def test_no_command_imports_psycopg(postgres_db: Database, tmp_path: Path) -> None:
    tree = _two_sets(tmp_path)
    assert _run_python(_EVERY_COMMAND, str(tree), postgres_db.url) == "LibpqDriver False"
    assert postgres_db.query("SELECT version, status FROM two ORDER BY version") == [(1, "applied")]
    assert "b" not in postgres_db.tables()  # reverted, then only marked applied


def test_the_cli_does_not_import_psycopg(postgres_db: Database, tmp_path: Path) -> None:
    tree = _two_sets(tmp_path)
    for extra in ([], ["--single-transaction"]):
        if extra:
            run_cli("migrations", "revert", str(tree), "--url", postgres_db.url, "--all")
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "whimbrel", "migrations", "apply",
             str(tree), "--url", postgres_db.url, *extra],
            capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                 if k != "WHIMBREL_PG_CLIENT"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Applied 3 migrations" in done.stdout
        imported = re.findall(r"\|\s+(\S+)$", done.stderr, re.MULTILINE)
        assert "whimbrel.drivers.libpq" in imported
        assert not [m for m in imported if m.startswith("psycopg")], done.stderr


def test_psycopg_when_chosen(postgres_db: Database, tmp_path: Path) -> None:
    tree = _two_sets(tmp_path)
    out = _run_python(_EVERY_COMMAND, str(tree), postgres_db.url, client="psycopg")
    assert out == "PostgresDriver True"
    assert postgres_db.query("SELECT version, status FROM two ORDER BY version") == [(1, "applied")]


def test_the_choice_of_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = parse_url("postgresql://postgres@127.0.0.1:5432/test")
    for value, expected in (("", LibpqDriver), ("libpq", LibpqDriver), ("PSYCOPG", PostgresDriver)):
        monkeypatch.setenv("WHIMBREL_PG_CLIENT", value)
        try:
            driver = drivers.connect(url, connect_timeout=5)
        except Exception as exc:  # the server is not there
            pytest.skip(f"PostgreSQL is unreachable: {exc}")
        driver.close()
        assert type(driver) is expected
    monkeypatch.setenv("WHIMBREL_PG_CLIENT", "odbc")
    with pytest.raises(UsageError, match="WHIMBREL_PG_CLIENT='odbc': choose one of auto, libpq"):
        libpq_available()
    tree = write_tree(tmp_path / "app", {"1_a.up.sql": "SELECT 1;"})
    refused = run_cli("migrations", "apply", str(tree), "--url", str(url.raw))
    assert refused.returncode == 2, refused.stderr
    assert "WHIMBREL_PG_CLIENT='odbc'" in refused.stderr


# -- the same behaviour through both ----------------------------------------------------
_FAILURES = {
    "syntax": {
        "1_a.up.sql": "CREATE TABLE a (id INT);\nCREATE TABLE b (id INT,\n  x TEXT NOT NUL);"
    },
    "detail": {
        "1_a.up.sql": "CREATE TABLE a (id INT PRIMARY KEY);\nINSERT INTO a VALUES (1);\n"
        "INSERT INTO a VALUES (1);"
    },
    "hint_and_unicode": {"1_é.up.sql": "CREATE TABLE \"é\" (id INT);\nSELECT nope('ü', 1);"},
    "plpgsql": {
        "1_a.up.sql": "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'boom %', 42 USING DETAIL = 'det', HINT = 'hin'; END $$;\nSELECT f();"
    },
    "dirty": {
        "1_a.up.sql": "CREATE TABLE a (id INT);",
        "2_b.sql": "-- migrate:up transaction:false\nCREATE TABLE b (id INT);\n"
        "INSERT INTO nowhere VALUES (1);\n-- migrate:down\nDROP TABLE b;\n",
    },
}


def _normalized(text: str) -> str:
    text = re.sub(r"\d+(\.\d+)? ms", "N ms", text)
    text = re.sub(r"whimbrel_t_\w+", "DB", text)
    text = re.sub(r"pid \d+", "pid N", text)
    text = re.sub(r'"duration_ms": [\d.e-]+', '"duration_ms": 0', text)
    text = re.sub(r'"applied_at": "[^"]*"', '"applied_at": "T"', text)
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "T", text)


def test_errors_and_reports_are_the_same_through_both_clients(tmp_path: Path) -> None:
    seen: dict[str, list[tuple[int, str, str]]] = {}
    for client in ("libpq", "psycopg"):
        for name, files in _FAILURES.items():
            tree = write_tree(tmp_path / name / "app", files)
            with fresh_database("postgres", tmp_path) as db:
                url = db.url.replace("postgres@", "postgres:S3cret@")
                outputs = []
                for command in (
                    ["apply", str(tree), "--url", url],
                    ["apply", str(tree), "--url", url, "-o", "json", "--single-transaction"],
                    ["inspect", str(tree), "--url", url, "-o", "json"],
                    ["revert", str(tree), "--url", url, "--all"],
                ):
                    done = run_cli("migrations", *command, env={"WHIMBREL_PG_CLIENT": client})
                    outputs.append(
                        (done.returncode, _normalized(done.stdout), _normalized(done.stderr))
                    )
                seen[f"{client} {name}"] = outputs
    for name in _FAILURES:
        assert seen[f"libpq {name}"] == seen[f"psycopg {name}"], name
    applied = seen["libpq plpgsql"][0]
    assert applied[0] == 1
    assert (
        "ERROR: boom 42 (SQLSTATE P0001)\n  DETAIL: det\n  HINT: hin\n"
        "  CONTEXT: PL/pgSQL function f() line 1 at RAISE\n  statement:\n    SELECT f()"
    ) in applied[2]
    assert "statement 2 of 2 (line 3)" in seen["libpq syntax"][0][2]
    assert "DETAIL: Key (id)=(1) already exists." in seen["libpq detail"][0][2]
    assert "HINT: No function matches" in seen["libpq hint_and_unicode"][0][2]
    dirty = json.loads(seen["libpq dirty"][2][1])["sets"][0]["migrations"][1]["dirty"]
    assert dirty["error"] == 'ERROR: relation "nowhere" does not exist (SQLSTATE 42P01)'
    assert "S3cret" not in str(seen)


def _wait_for_sleep(db: Database) -> None:
    deadline = time.monotonic() + 30
    while not _still_running(db):
        assert time.monotonic() < deadline, "the slow statement never ran"
        time.sleep(0.05)


def _interrupt_while_sleeping(
    db: Database, *args: str, signal_number: int = signal.SIGINT
) -> tuple[int, str, str, float]:
    """Run `whimbrel migrations *args`, signal it once its pg_sleep runs: its exit code,
    stdout, stderr, and how long it took to stop after the signal."""
    proc = subprocess.Popen(
        [*whimbrel_executable(), "migrations", *args, "--url", db.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_sleep(db)
        sent = time.monotonic()
        proc.send_signal(signal_number)
        out, err = proc.communicate(timeout=20)
        stopping = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, out, err, stopping


def _still_running(db: Database) -> int:
    # By what it waits on: pg_stat_activity shows a round trip's text, cut at 1 kB.
    count: int = db.query(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
        "AND state = 'active' AND pid <> pg_backend_pid() AND datname = current_database()"
    )[0][0]
    return count


@both_pg_clients
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_during_single_transaction_cancels_and_keeps_nothing(
    postgres_db: Database, tmp_path: Path, signal_name: str
) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_a.up.sql": "CREATE TABLE a (id INT);",
            "2_slow.up.sql": "CREATE TABLE s (id INT);\nSELECT pg_sleep(30);",
            "3_c.up.sql": "CREATE TABLE c (id INT);",
        },
    )
    number = getattr(signal, signal_name)
    returncode, _, err, stopping = _interrupt_while_sleeping(
        postgres_db, "apply", str(tree), "--single-transaction", signal_number=number
    )
    assert stopping < 10
    assert returncode == 128 + number, err
    assert "interrupted while applying" in err and "the whole run was rolled back" in err
    assert _still_running(postgres_db) == 0  # cancelled on the server
    assert not {"a", "s", "c", "app"} & postgres_db.tables()


@both_pg_clients
def test_ctrl_c_during_a_revert_cancels_and_reverts_nothing(
    postgres_db: Database, tmp_path: Path
) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_a.up.sql": "CREATE TABLE a (id INT);",
            "1_a.down.sql": "DROP TABLE a;\nSELECT pg_sleep(30);",
        },
    )
    assert run_cli("migrations", "apply", str(tree), "--url", postgres_db.url).returncode == 0
    returncode, _, err, _ = _interrupt_while_sleeping(postgres_db, "revert", str(tree))
    assert returncode == 130, err
    assert "nothing of it was reverted" in err
    assert _still_running(postgres_db) == 0
    assert "a" in postgres_db.tables()
    assert postgres_db.query("SELECT version, status FROM app") == [(1, "applied")]


# -- reading tracking rows -------------------------------------------------------------------
_NASTY = [
    "",
    "plain",
    "tab\there",
    "new\nline",
    "cr\rhere",
    "\\",
    "\\N",
    "\\\\N",
    "ends with \\",
    "\t\\N\t",
    "\b\f\v\x1c\x1d\x1e\x1f\x7f",
    "".join(chr(c) for c in range(1, 32)),
    "é ü ß 𝄞 \u2028 \u200f עברית",
    "'quotes' \"double\" $$dollar$$",
]


def test_tracking_rows_read_the_same_through_libpq_whatever_they_hold(
    postgres_db: Database, tmp_path: Path
) -> None:
    tree = write_tree(tmp_path / "app", {"1_a.up.sql": "CREATE TABLE a (id INT);"})
    assert run_cli("migrations", "apply", str(tree), "--url", postgres_db.url).returncode == 0
    times = [
        "1970-01-01 00:00:00+00",
        "1969-12-31 23:59:59.999999+00",
        "0001-01-01 00:00:00+00",
        "9999-12-31 18:29:59.999999+00",  # the latest a session in Asia/Kolkata can show
        "2026-11-21 10:02:11.123456+05:30",
        "2026-03-29 02:30:00.000001+00",
    ]
    durations = [None, 0.1, -0.0, 1e-300, 1.7976931348623157e308, math.inf, -math.inf, math.nan]
    with psycopg.connect(postgres_db.url, autocommit=True) as conn:
        for number, value in enumerate(_NASTY):
            conn.execute(
                "INSERT INTO app (version, name, file, sha256, status, statements_done, "
                "statements_sha256, error, down_sql, applied_at, duration_ms, applied_by) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    10 + number,
                    value,
                    value[::-1],
                    value[:64],
                    "applying" if number % 2 else value,
                    number,
                    None if number % 3 else value[:64],
                    None if number % 2 else value + "!",
                    None if number % 4 else value,
                    times[number % len(times)],
                    durations[number % len(durations)],
                    None if number % 5 == 0 else value,
                ),
            )
        conn.execute(
            "INSERT INTO app (version, name, file, sha256, status) "
            "VALUES (9223372036854775807, 'max', 'max', '', 'applied'), "
            "(-1, 'negative', 'negative', 'x', 'applied')"
        )
    url = parse_url(postgres_db.url)
    # An odd DateStyle and time zone: applied_at must not depend on them.
    odd = parse_url(
        postgres_db.url + "?options=-c%20DateStyle%3DSQL,DMY%20-c%20TimeZone%3DAsia/Kolkata"
    )
    full = PostgresDriver(url, connect_timeout=5, application_name="test")
    reader = LibpqReader(odd, connect_timeout=5, application_name="test")
    driver = LibpqDriver(odd, connect_timeout=5, application_name="test")
    try:
        expected = full.read_rows_many(["app"])["app"]
        for read in (reader.read_rows_many(["app"])["app"], driver.read_rows_many(["app"])["app"]):
            assert len(read) == len(_NASTY) + 3
            assert _comparable(read) == _comparable(expected)
    finally:
        for session in (full, reader, driver):
            session.close()
    assert datetime(1, 1, 1, tzinfo=UTC) in {row.applied_at for row in expected}


def _comparable(rows: list[TrackingRow]) -> list[tuple[object, ...]]:
    # NaN is not equal to itself; the instant of applied_at is what counts.
    return sorted(
        (
            row.version,
            row.name,
            row.file,
            row.sha256,
            row.status,
            row.statements_done,
            row.statements_sha256,
            row.error,
            row.has_down_sql,
            row.applied_at.astimezone(UTC) if row.applied_at else None,
            "nan"
            if row.duration_ms is not None and math.isnan(row.duration_ms)
            else row.duration_ms,
            row.applied_by,
        )
        for row in rows
    )


@both_pg_clients
@pytest.mark.parametrize("command", ["apply", "revert"])
def test_ctrl_c_while_connecting_to_a_silent_server_stops_at_once(
    command: str, tmp_path: Path
) -> None:
    """A server that accepts the connection and never answers: Ctrl-C must not wait for
    --connect-timeout (libpq connects in C, where Python's signal handlers cannot run)."""
    import socket
    import threading

    tree = write_tree(tmp_path / "app", {"1_a.up.sql": "SELECT 1;", "1_a.down.sql": "SELECT 1;"})
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])  # and then silence

    threading.Thread(target=serve, daemon=True).start()
    url = f"postgresql://app:S3cret@127.0.0.1:{listener.getsockname()[1]}/db"
    proc = subprocess.Popen(
        [*whimbrel_executable(), "migrations", command, str(tree), "--url", url,
         "--connect-timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not accepted:
            assert time.monotonic() < deadline, "whimbrel never connected"
            time.sleep(0.01)
        time.sleep(0.2)  # well inside the connection attempt
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        listener.close()
        for conn in accepted:
            conn.close()
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 5
    assert "S3cret" not in err


@both_pg_clients
def test_ctrl_c_in_a_first_run_leaves_no_tracking_table(
    postgres_db: Database, tmp_path: Path
) -> None:
    """The cancelled migration's transaction is rolled back at once, so the clean-up after
    it works: the session is reset, and the tracking table this run created, which
    recorded nothing, is dropped."""
    tree = write_tree(
        tmp_path / "app", {"1_slow.up.sql": "CREATE TABLE s (id INT);\nSELECT pg_sleep(30);"}
    )
    returncode, _, err, _ = _interrupt_while_sleeping(postgres_db, "apply", str(tree))
    assert returncode == 130, err
    assert "nothing of it was applied" in err
    assert _still_running(postgres_db) == 0
    assert not {"s", "app"} & postgres_db.tables()


def test_tracking_rows_come_by_version(postgres_db: Database, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "app", {"3_c.up.sql": "CREATE TABLE c (id INT);"})
    assert run_cli("migrations", "apply", str(tree), "--url", postgres_db.url).returncode == 0
    write_tree(tree, {"1_a.up.sql": "CREATE TABLE a (id INT);", "2_b.up.sql": "SELECT 1;"})
    applied = run_cli(
        "migrations", "apply", str(tree), "--url", postgres_db.url, "--allow-out-of-order"
    )
    assert applied.returncode == 0, applied.stderr
    # The heap holds them in the order they were applied: 3, 1, 2.
    url = parse_url(postgres_db.url)
    for open_session in (LibpqDriver, LibpqReader, PostgresDriver):
        session = open_session(url, connect_timeout=5, application_name="test")
        try:
            assert [row.version for row in session.read_rows_many(["app"])["app"]] == [1, 2, 3]
        finally:
            session.close()
