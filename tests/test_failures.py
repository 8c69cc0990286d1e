"""Failures halfway, dirty state and its recovery, multi-statement programs, locks, and
connection problems, on the real databases."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Database, both_pg_clients, run_cli, whimbrel_executable, write_tree

BROKEN_THIRD_STATEMENT = """\
CREATE TABLE first_table (id INT);
INSERT INTO first_table VALUES (1);
INSERT INTO no_such_table VALUES (2);
CREATE TABLE never_created (id INT);
"""


def _tree(tmp_path: Path) -> Path:
    return write_tree(
        tmp_path / "app",
        {
            "001_base.up.sql": "CREATE TABLE base (id INT);",
            "001_base.down.sql": "DROP TABLE base;",
            "002_broken.up.sql": BROKEN_THIRD_STATEMENT,
            "002_broken.down.sql": "DROP TABLE IF EXISTS never_created;\nDROP TABLE first_table;",
            "003_later.up.sql": "CREATE TABLE later (id INT);",
        },
    )


@both_pg_clients
def test_error_in_the_third_statement_is_reported_and_stops_the_run(
    db: Database, tmp_path: Path
) -> None:
    tree = _tree(tmp_path)
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr
    assert "set 'app', 002_broken.up.sql, statement 3 of 4 (line 3)" in err
    assert "no_such_table" in err  # the statement, and the database's message
    assert "INSERT INTO no_such_table VALUES (2)" in err
    assert "app: applying 002_broken.up.sql ... FAILED" in result.stdout
    tables = db.tables()
    assert "base" in tables
    assert "later" not in tables and "never_created" not in tables  # later work did not run
    if db.dialect == "mysql":
        # DDL committed: the first two statements stay, and the migration is dirty.
        assert "first_table" in tables
        assert "is now dirty: 2 of its 4 statement(s) completed" in err
        assert db.query("SELECT version, status, statements_done FROM app ORDER BY version") == [
            (1, "applied", 1),
            (2, "applying", 2),
        ]
    else:
        assert "first_table" not in tables
        assert "nothing of 002_broken.up.sql was applied" in err
        assert [r[:2] for r in db.tracking("app")] == [(1, "applied")]


def test_dirty_mysql_migration_refuses_then_resumes(mysql_db: Database, tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    url = mysql_db.url
    assert run_cli("migrations", "apply", str(tree), "--url", url).returncode == 1

    inspect = run_cli("migrations", "inspect", str(tree), "--url", url, "-o", "json")
    assert inspect.returncode == 4
    broken = json.loads(inspect.stdout)["sets"][0]["migrations"][1]
    assert broken["status"] == "dirty"
    assert broken["dirty"]["statements_done"] == 2
    assert "no_such_table" in broken["dirty"]["error"]

    for command in ("apply", "revert"):
        refused = run_cli("migrations", command, str(tree), "--url", url)
        assert refused.returncode == 8, refused.stderr
        assert "002_broken.up.sql) is dirty" in refused.stderr
        assert "--resume" in refused.stderr and "migrations mark" in refused.stderr

    # Fix the failing statement; the two before it are unchanged, so resume continues at 3.
    (tree / "002_broken.up.sql").write_text(
        BROKEN_THIRD_STATEMENT.replace("no_such_table", "first_table")
    )
    resumed = run_cli("migrations", "apply", str(tree), "--url", url, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "applying 002_broken.up.sql from statement 3" in resumed.stdout
    assert mysql_db.query("SELECT id FROM first_table ORDER BY id") == [(1,), (2,)]
    assert {"never_created", "later"} <= mysql_db.tables()
    assert run_cli("migrations", "inspect", str(tree), "--url", url).returncode == 0


def test_resume_refuses_when_completed_statements_changed(
    mysql_db: Database, tmp_path: Path
) -> None:
    tree = _tree(tmp_path)
    url = mysql_db.url
    assert run_cli("migrations", "apply", str(tree), "--url", url).returncode == 1
    (tree / "002_broken.up.sql").write_text(
        BROKEN_THIRD_STATEMENT.replace("VALUES (1)", "VALUES (100)").replace(
            "no_such_table", "first_table"
        )
    )
    result = run_cli("migrations", "apply", str(tree), "--url", url, "--resume")
    assert result.returncode == 8
    assert "already ran have changed" in result.stderr


@pytest.mark.parametrize("outcome", ["--applied", "--not-applied"])
def test_mark_recovers_a_dirty_migration(mysql_db: Database, tmp_path: Path, outcome: str) -> None:
    tree = _tree(tmp_path)
    url = mysql_db.url
    assert run_cli("migrations", "apply", str(tree), "--url", url).returncode == 1
    if outcome == "--applied":
        # Repair by hand: finish what the migration meant to do.
        mysql_db.query("CREATE TABLE never_created (id INT)")
    else:
        mysql_db.query("DROP TABLE first_table")
    marked = run_cli(
        "migrations", "mark", str(tree), "--url", url, "--set", "app", "--version", "2", outcome
    )
    assert marked.returncode == 0, marked.stderr
    applied = run_cli("migrations", "apply", str(tree), "--url", url)
    assert applied.returncode == (0 if outcome == "--applied" else 1), applied.stderr
    if outcome == "--applied":
        assert "later" in mysql_db.tables()
        assert run_cli("migrations", "inspect", str(tree), "--url", url).returncode == 0


@both_pg_clients
def test_transaction_false_failure_is_dirty_on_postgres(
    postgres_db: Database, tmp_path: Path
) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_idx.sql": """
                -- migrate:up transaction:false
                CREATE TABLE t (id INT);
                CREATE INDEX CONCURRENTLY t_id ON t (id);
                CREATE INDEX CONCURRENTLY t_id ON t (id);
                -- migrate:down
                DROP TABLE t;
            """
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", postgres_db.url)
    assert result.returncode == 1
    assert "statement 3 of 3 (line 4)" in result.stderr
    assert "is now dirty" in result.stderr
    assert postgres_db.query("SELECT status, statements_done FROM app") == [("applying", 2)]


@both_pg_clients
def test_transaction_false_runs_any_statement_postgres_refuses_in_a_transaction(
    postgres_db: Database, tmp_path: Path
) -> None:
    # Each statement of a transaction:false section commits with its progress, unless it
    # cannot run in a transaction; a short list knows some, the server's refusal the rest.
    tree = write_tree(
        tmp_path / "app",
        {
            "1_reindex.sql": """
                -- migrate:up transaction:false
                CREATE TABLE t (id INT PRIMARY KEY);
                REINDEX SCHEMA public;
                CREATE TABLE u (id INT);
                -- migrate:down
                DROP TABLE u, t;
            """
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", postgres_db.url)
    assert result.returncode == 0, result.stderr
    assert postgres_db.query("SELECT status, statements_done FROM app") == [("applied", 3)]
    assert {"t", "u"} <= postgres_db.tables()


def test_non_transactional_statement_hint(postgres_db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {"1_idx.up.sql": "CREATE TABLE t (id INT);\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n"},
    )
    result = run_cli("migrations", "apply", str(tree), "--url", postgres_db.url)
    assert result.returncode == 1
    assert "transaction:false" in result.stderr
    directive = "-- whimbrel: transaction:false\n"
    (tree / "1_idx.up.sql").write_text(directive + (tree / "1_idx.up.sql").read_text())
    fixed = run_cli("migrations", "apply", str(tree), "--url", postgres_db.url)
    assert fixed.returncode == 0, fixed.stderr


def test_non_transactional_statement_hint_on_sqlite(sqlite_db: Database, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "app", {"1_v.up.sql": "CREATE TABLE t (id INT);\nVACUUM;\n"})
    result = run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url)
    assert result.returncode == 1
    assert "cannot VACUUM from within a transaction" in result.stderr
    assert "start the file with the line `-- whimbrel: transaction:false`" in result.stderr
    directive = "-- whimbrel: transaction:false\n"
    (tree / "1_v.up.sql").write_text(directive + (tree / "1_v.up.sql").read_text())
    fixed = run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url)
    assert fixed.returncode == 0, fixed.stderr


@both_pg_clients
def test_syntax_error_line_on_postgres(postgres_db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_a.sql": """
                -- migrate:up
                CREATE TABLE a (id INT);

                CREATE TABLE b (id INT,
                    nme TEXT NOT NUL);
                -- migrate:down
                DROP TABLE a;
            """
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", postgres_db.url)
    assert result.returncode == 1
    assert "1_a.sql, statement 2 of 2 (line 5)" in result.stderr
    assert "syntax error" in result.stderr
    assert "a" not in postgres_db.tables()


POSTGRES_FUNCTION = """\
CREATE TABLE audit (id SERIAL PRIMARY KEY, note TEXT);
CREATE FUNCTION add_note(n TEXT) RETURNS INT LANGUAGE plpgsql AS $fn$
DECLARE
    new_id INT;
BEGIN
    INSERT INTO audit (note) VALUES (n) RETURNING id INTO new_id;  -- a ; inside
    RETURN new_id;
END;
$fn$;
CREATE FUNCTION twice(x INT) RETURNS INT LANGUAGE sql
BEGIN ATOMIC
    SELECT x * 2;
END;
SELECT add_note('semi;colon');
"""

MYSQL_WITH_DELIMITER = """\
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT);
DELIMITER $$
CREATE PROCEDURE add_note(IN n TEXT)
BEGIN
    INSERT INTO audit (note) VALUES (n);
    INSERT INTO audit (note) VALUES (CONCAT(n, '; again'));
END$$
CREATE TRIGGER audit_upper BEFORE INSERT ON audit FOR EACH ROW
BEGIN
    IF NEW.note LIKE 'x%' THEN
        SET NEW.note = UPPER(NEW.note);
    END IF;
END$$
DELIMITER ;
CALL add_note('xy');
"""

MYSQL_WITHOUT_DELIMITER = """\
CREATE PROCEDURE add_two(IN n TEXT)
BEGIN
    INSERT INTO audit (note) VALUES (n);
    INSERT INTO audit (note) VALUES (n);
END;
CALL add_two('plain');
"""

SQLITE_TRIGGER = """\
CREATE TABLE audit (id INTEGER PRIMARY KEY, note TEXT, kind TEXT);
CREATE TRIGGER audit_kind AFTER INSERT ON audit
BEGIN
    UPDATE audit SET kind = CASE WHEN NEW.note LIKE '%;%' THEN 'semi' ELSE 'plain' END
    WHERE id = NEW.id;
END;
INSERT INTO audit (note) VALUES ('a;b');
"""


def test_multi_statement_programs(db: Database, tmp_path: Path) -> None:
    files = {
        "postgres": {"1_fn.up.sql": POSTGRES_FUNCTION},
        "mysql": {
            "1_proc.up.sql": MYSQL_WITH_DELIMITER,
            "2_proc.up.sql": MYSQL_WITHOUT_DELIMITER,
        },
        "sqlite": {"1_trigger.up.sql": SQLITE_TRIGGER},
    }[db.dialect]
    tree = write_tree(tmp_path / "app", files)
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 0, result.stderr
    notes = db.query("SELECT note FROM audit ORDER BY id")
    expected = {
        "postgres": [("semi;colon",)],
        "mysql": [("XY",), ("XY; AGAIN",), ("plain",), ("plain",)],
        "sqlite": [("a;b",)],
    }[db.dialect]
    assert notes == expected
    if db.dialect == "sqlite":
        assert db.query("SELECT kind FROM audit") == [("semi",)]


def test_mysql_error_inside_delimiter_block_names_its_line(
    mysql_db: Database, tmp_path: Path
) -> None:
    broken = MYSQL_WITH_DELIMITER.replace("SET NEW.note = UPPER(NEW.note);", "SET NEW.note = ;")
    tree = write_tree(tmp_path / "app", {"1_proc.up.sql": broken})
    result = run_cli("migrations", "apply", str(tree), "--url", mysql_db.url)
    assert result.returncode == 1
    assert "statement 3 of 4" in result.stderr
    assert "(line 11)" in result.stderr


def test_file_with_its_own_transaction_runs_as_written(db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {"1_tx.up.sql": "BEGIN;\nCREATE TABLE t (id INT);\nINSERT INTO t VALUES (1);\nCOMMIT;\n"},
    )
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 0, result.stderr
    assert db.query("SELECT id FROM t") == [(1,)]
    assert db.query("SELECT status, statements_done FROM app") == [("applied", 4)]


# -- concurrency --------------------------------------------------------------------------
def _many_migrations(root: Path, count: int = 12) -> Path:
    files = {}
    for set_name in ("alpha", "beta"):
        for n in range(1, count + 1):
            # CREATE TABLE fails if it ever runs twice.
            files[f"{set_name}/{n:03d}_t{n}.up.sql"] = (
                f"CREATE TABLE {set_name}_t{n} (id INT);\n"
                f"INSERT INTO {set_name}_t{n} VALUES ({n});\n"
            )
    return write_tree(root, files)


def test_eight_concurrent_appliers_apply_each_migration_once(db: Database, tmp_path: Path) -> None:
    tree = _many_migrations(tmp_path / "m")
    if db.dialect == "sqlite":
        # The file must exist for the lock file beside it; every process would create it.
        Path(db.name).touch()
    procs = [
        subprocess.Popen(
            [*whimbrel_executable(), "migrations", "apply", str(tree), "--url", db.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0] * 8, outputs
    applied_lines = sum(out.count("applied in") for out, _ in outputs)
    assert applied_lines == 24  # each migration reported applied by exactly one process
    for set_name in ("alpha", "beta"):
        rows = db.query(f"SELECT version, count(*) FROM {set_name} GROUP BY version")
        assert sorted(rows) == [(n, 1) for n in range(1, 13)]
        assert db.query(f"SELECT id FROM {set_name}_t12") == [(12,)]


def _hold_lock(db: Database) -> subprocess.Popen[str]:
    """Another whimbrel run holding the lock: a migration that sleeps."""
    sleep = {
        "postgres": "SELECT pg_sleep(30);",
        "mysql": "SELECT SLEEP(30);",
        "sqlite": None,
    }[db.dialect]
    if sleep is None:
        # A process holding the SQLite lock file, as a whimbrel run does.
        code = (
            "import fcntl, os, sys, time\n"
            f"fd = os.open({db.name + '.whimbrel-lock'!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, b'holder-process pid 4242')\n"
            "print('locked', flush=True)\n"
            "time.sleep(30)\n"
        )
        import sys

        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc
    raise AssertionError("use _hold_server_lock")


@both_pg_clients
def test_lock_timeout_says_who_holds_the_lock(db: Database, tmp_path: Path) -> None:
    tree = _many_migrations(tmp_path / "m", count=1)
    if db.dialect == "sqlite":
        Path(db.name).touch()
        holder = _hold_lock(db)
        expected = "holder-process pid 4242"
    else:
        slow = write_tree(
            tmp_path / "slow",
            {
                "1_sleep.up.sql": "SELECT pg_sleep(20);"
                if db.dialect == "postgres"
                else "SELECT SLEEP(20);"
            },
        )
        holder = subprocess.Popen(
            [*whimbrel_executable(), "migrations", "apply", str(slow), "--url", db.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        # The holder prints the migration's name once it holds the lock and runs it.
        line = holder.stdout.read(len("slow: applying"))
        assert line == "slow: applying"
        expected = "whimbrel apply" if db.dialect == "postgres" else "connection"
    try:
        started = time.monotonic()
        result = run_cli("migrations", "apply", str(tree), "--url", db.url, "--lock-timeout", "1")
        elapsed = time.monotonic() - started
        assert result.returncode == 7, result.stderr
        assert "waiting for the migration lock" in result.stderr
        assert expected in result.stderr
        assert elapsed < 15
    finally:
        holder.kill()
        holder.wait()


# -- connections and secrets --------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("scheme", ["postgres", "mysql"])
def test_unreachable_host_fails_fast_with_password_hidden(scheme: str, tmp_path: Path) -> None:
    tree = _many_migrations(tmp_path / "m", count=1)
    url = f"{scheme}://admin:Sup3rSecret@127.0.0.1:{_free_port()}/db"
    for command in ("inspect", "apply", "revert"):
        result = run_cli("migrations", command, str(tree), "--url", url, "--connect-timeout", "3")
        assert result.returncode == 6, result.stderr
        assert "cannot connect" in result.stderr
        assert "Sup3rSecret" not in result.stdout + result.stderr
        assert "admin:***@127.0.0.1" in result.stderr


def test_wrong_password_is_a_clear_error_without_the_password(
    mysql_db: Database, tmp_path: Path
) -> None:
    tree = _many_migrations(tmp_path / "m", count=1)
    url = mysql_db.url.replace("root@", "nobody_here:Wr0ngPassw0rd@")
    result = run_cli("migrations", "apply", str(tree), "--url", url)
    assert result.returncode == 6
    assert "Access denied" in result.stderr
    assert "Wr0ngPassw0rd" not in result.stdout + result.stderr


@both_pg_clients
def test_password_never_printed_on_sql_errors(postgres_db: Database, tmp_path: Path) -> None:
    # The server trusts local connections, so any password is accepted: a real login.
    url = postgres_db.url.replace("postgres@", "postgres:Hunter2Secret@")
    tree = write_tree(tmp_path / "app", {"1_a.up.sql": "SELECT 'Hunter2Secret' + ;"})
    applied = run_cli("migrations", "apply", str(tree), "--url", url)
    assert applied.returncode == 1
    assert "syntax error" in applied.stderr
    inspected = run_cli("migrations", "inspect", str(tree), "--url", url, "-o", "json")
    assert inspected.returncode == 3
    for result in (applied, inspected):
        assert "Hunter2Secret" not in result.stdout + result.stderr


@both_pg_clients
def test_failing_revert(db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_a.up.sql": "CREATE TABLE a (id INT);\nCREATE TABLE b (id INT);\n",
            "1_a.down.sql": "DROP TABLE b;\nDROP TABLE no_such_table;\nDROP TABLE a;\n",
        },
    )
    assert run_cli("migrations", "apply", str(tree), "--url", db.url).returncode == 0
    result = run_cli("migrations", "revert", str(tree), "--url", db.url)
    assert result.returncode == 1
    assert "reverting failed: set 'app', 1_a.down.sql, statement 2 of 3 (line 2)" in result.stderr
    if db.dialect != "mysql":
        assert "nothing of 1_a.down.sql was reverted" in result.stderr
        assert {"a", "b"} <= db.tables()
        assert db.query("SELECT status FROM app") == [("applied",)]
        return
    assert "b" not in db.tables()
    assert db.query("SELECT status, statements_done FROM app") == [("reverting", 1)]
    assert run_cli("migrations", "inspect", str(tree), "--url", db.url).returncode == 4
    refused = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert refused.returncode == 8 and "reverting it did not finish" in refused.stderr
    (tree / "1_a.down.sql").write_text(
        "DROP TABLE b;\nDROP TABLE IF EXISTS no_such_table;\nDROP TABLE a;\n"
    )
    resumed = run_cli("migrations", "revert", str(tree), "--url", db.url, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "from statement 2" in resumed.stdout
    assert "a" not in db.tables()
    assert db.query("SELECT count(*) FROM app") == [(0,)]


def _wait_until(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    """Poll a real, observable condition (bounded), e.g. what the server shows running."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def _wait_for_running_sleep(db: Database, seconds: int = 30) -> None:
    """Block until the server shows the migration's sleep running."""
    query = {
        "postgres": "SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
        f"'%pg_sleep({seconds})%' AND state = 'active' AND pid <> pg_backend_pid() "
        "AND datname = current_database()",
        "mysql": "SELECT count(*) FROM information_schema.PROCESSLIST "
        f"WHERE INFO LIKE '%SLEEP({seconds})%' AND ID <> CONNECTION_ID() AND DB = DATABASE()",
    }[db.dialect]
    _wait_until(lambda: db.query(query)[0][0], "the slow statement runs")


def _rows_in_filled(db: Database, proc: subprocess.Popen[bytes], at_least: int) -> None:
    def filled() -> bool:
        assert proc.poll() is None, "whimbrel finished before it could be killed"
        return "filled" in db.tables() and db.query("SELECT count(*) FROM filled")[0][0] > at_least

    _wait_until(filled, f"more than {at_least} rows are in 'filled'")


@both_pg_clients
def test_ctrl_c_stops_cleanly(db: Database, tmp_path: Path) -> None:
    import signal

    sleep = {
        "postgres": "SELECT pg_sleep(30);",
        "mysql": "SELECT SLEEP(30);",
        # A recursive query that runs for a long time, in-process.
        "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT count(*) FROM c;",
    }[db.dialect]
    tree = write_tree(
        tmp_path / "app",
        {
            "1_a.up.sql": "CREATE TABLE a (id INT);",
            "2_slow.up.sql": f"CREATE TABLE s (id INT);\n{sleep}\n",
        },
    )
    proc = subprocess.Popen(
        [*whimbrel_executable(), "migrations", "apply", str(tree), "--url", db.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if db.dialect == "postgres":
        # Both go in one round trip: 1_a is reported once it is back.
        assert proc.stdout.read(len("app: applying 1_a")) == "app: applying 1_a"
    else:
        expected = "app: applying 1_a.up.sql ... applied in"
        assert proc.stdout.read(len(expected)) == expected
        proc.stdout.readline()
        assert proc.stdout.read(len("app: applying 2_slow")) == "app: applying 2_slow"
    if db.dialect != "sqlite":
        _wait_for_running_sleep(db)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    if db.dialect == "postgres":
        assert "applied in" in out.splitlines()[0], out  # the rest of 1_a's line
        assert "app: applying 2_slow.up.sql ... INTERRUPTED" in out
    if db.dialect != "sqlite":  # only there do we know the statement was running
        assert "INTERRUPTED" in out
        assert "interrupted while applying 2_slow.up.sql of set 'app'" in err
        assert "Migrations after it did not run." in err
        if db.dialect == "mysql":
            assert "it is now dirty" in err and "--resume" in err
        else:
            assert "nothing of it was applied" in err
    if db.dialect == "mysql":
        # Not atomic: the interrupted migration is dirty, and says so.
        assert db.query("SELECT version, status FROM app ORDER BY version") == [
            (1, "applied"),
            (2, "applying"),
        ]
    else:
        assert db.query("SELECT version, status FROM app") == [(1, "applied")]
        assert "s" not in db.tables()


@pytest.mark.parametrize("single_transaction", [False, True], ids=["each", "single"])
def test_interrupted_json_run_still_prints_its_document(
    postgres_db: Database, tmp_path: Path, single_transaction: bool
) -> None:
    import signal

    tree = write_tree(
        tmp_path / "app",
        {
            "1_a.up.sql": "CREATE TABLE a (id INT);",
            "2_slow.up.sql": "CREATE TABLE s (id INT);\nSELECT pg_sleep(30);\n",
        },
    )
    extra = ["--single-transaction"] if single_transaction else []
    args = ["migrations", "apply", str(tree), "--url", postgres_db.url, "-o", "json", *extra]
    proc = subprocess.Popen(
        [*whimbrel_executable(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_running_sleep(postgres_db)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err
    doc = json.loads(out)
    assert doc["error"]["exit_code"] == 143
    running = (
        "one of 2 migrations sent together (1_a.up.sql to 2_slow.up.sql of set 'app')"
        if single_transaction
        else "2_slow.up.sql of set 'app'"
    )
    assert f"interrupted while applying {running}" in doc["error"]["message"]
    # Only what committed is listed: with --single-transaction, nothing did.
    applied = [] if single_transaction else ["1_a.up.sql"]
    assert [m["file"] for m in doc["migrations"]] == applied
    assert doc["command"] == "apply"


# -- exactly once, even when interrupted ---------------------------------------------------
def test_interrupted_statement_is_not_run_twice_on_resume(
    mysql_db: Database, tmp_path: Path
) -> None:
    import signal

    tree = write_tree(
        tmp_path / "app",
        {
            "1_counter.up.sql": "CREATE TABLE counter (n INT);",
            # The DDL makes the migration non-atomic on MySQL: it runs statement by statement.
            "2_fill.up.sql": (
                "CREATE TABLE marker (x INT);\n"
                "INSERT INTO counter SELECT 100000 + SLEEP(30);\n"
                "INSERT INTO counter VALUES (200000);\n"
            ),
        },
    )
    proc = subprocess.Popen(
        [*whimbrel_executable(), "migrations", "apply", str(tree), "--url", mysql_db.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_running_sleep(mysql_db)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 130
    # The statement was stopped on the server and rolled back with its progress.
    assert mysql_db.query("SELECT count(*) FROM counter") == [(0,)]
    assert mysql_db.query("SELECT status, statements_done FROM app WHERE version = 2") == [
        ("applying", 1)
    ]
    fixed = (
        "CREATE TABLE marker (x INT);\nINSERT INTO counter SELECT 100000;\n"
        "INSERT INTO counter VALUES (200000);\n"
    )
    (tree / "2_fill.up.sql").write_text(fixed)
    resumed = run_cli("migrations", "apply", str(tree), "--url", mysql_db.url, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert mysql_db.query("SELECT n FROM counter ORDER BY n") == [(100000,), (200000,)]


def test_killed_run_records_exactly_what_was_done(mysql_db: Database, tmp_path: Path) -> None:
    inserts = "".join(f"INSERT INTO filled VALUES ({n});\n" for n in range(1, 3001))
    tree = write_tree(
        tmp_path / "app",
        {
            "1_table.up.sql": "CREATE TABLE filled (n INT);",
            # The DDL makes the migration non-atomic on MySQL: it runs statement by statement.
            "2_fill.up.sql": "CREATE TABLE fill_marker (x INT);\n" + inserts,
        },
    )
    proc = subprocess.Popen(
        [*whimbrel_executable(), "migrations", "apply", str(tree), "--url", mysql_db.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _rows_in_filled(mysql_db, proc, 0)
    proc.kill()
    proc.wait()
    rows = mysql_db.query("SELECT count(*) FROM filled")[0][0]
    done = mysql_db.query("SELECT statements_done FROM app WHERE version = 2")[0][0]
    assert rows == done - 1  # every INSERT commits with its progress (after the DDL)
    resumed = run_cli("migrations", "apply", str(tree), "--url", mysql_db.url, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert mysql_db.query("SELECT count(*), count(DISTINCT n) FROM filled") == [(3000, 3000)]


@pytest.mark.parametrize(
    "dialect_files",
    [
        ("sqlite", "BEGIN;\nCREATE TABLE t1 (id INT);\n"),
        ("postgres", "BEGIN;\nCREATE TABLE t1 (id INT);\n"),
        ("mysql", "CREATE TABLE t1 (id INT);\nSET autocommit = 0;\nINSERT INTO t1 VALUES (1);\n"),
    ],
)
def test_a_transaction_left_open_is_a_failure(
    dialect_files: tuple[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    dialect, sql = dialect_files
    db: Database = request.getfixturevalue(f"{dialect}_db")
    tree = write_tree(
        tmp_path / "app", {"1_open.up.sql": sql, "2_next.up.sql": "CREATE TABLE t2 (id INT);"}
    )
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "left a transaction open" in result.stderr
    assert "t2" not in db.tables()
    assert db.query("SELECT status FROM app") == [("applying",)]
    assert run_cli("migrations", "inspect", str(tree), "--url", db.url).returncode == 4


def test_own_transaction_failing_rolls_back_and_says_so(db: Database, tmp_path: Path) -> None:
    divide = "SELECT 1/0" if db.dialect == "postgres" else "INSERT INTO nope VALUES (1)"
    tree = write_tree(
        tmp_path / "app",
        {"1_tx.up.sql": f"BEGIN;\nCREATE TABLE t1 (id INT);\n{divide};\nCOMMIT;\n"},
    )
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 1, result.stderr
    assert "statement 3 of 4 (line 3)" in result.stderr
    assert "Traceback" not in result.stderr
    if db.dialect != "mysql":  # MySQL's CREATE TABLE commits the transaction at once
        assert "0 of its 4 statement(s) completed" in result.stderr
        assert "t1" not in db.tables()
    row = db.query("SELECT status, error FROM app")[0]
    assert row[0] == "applying" and row[1]


def test_copy_from_stdin_is_refused_before_anything_runs(
    postgres_db: Database, tmp_path: Path
) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_a.up.sql": "CREATE TABLE a (id INT);",
            "2_copy.up.sql": "CREATE TABLE t (id INT);\nCOPY (SELECT 1) TO STDOUT;\nSELECT 1/0;\n",
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", postgres_db.url)
    assert result.returncode == 5
    assert "2_copy.up.sql, line 2: COPY ... FROM STDIN / TO STDOUT" in result.stderr
    assert "a" not in postgres_db.tables()


def test_a_file_only_psql_can_run_is_run_by_hand_then_marked(
    postgres_db: Database, tmp_path: Path
) -> None:
    # The documented way out: run it with psql, then `mark` it. mark refused it as apply
    # does, so every later run of the tree stayed blocked.
    copy = "CREATE TABLE cp (id INT);\nCOPY cp FROM stdin;\n1\n2\n\\.\n"
    tree = write_tree(tmp_path / "app", {"1_copy.up.sql": copy})
    assert run_cli("migrations", "apply", str(tree), "--url", postgres_db.url).returncode == 5
    by_hand = subprocess.run(
        ["psql", "-v", "ON_ERROR_STOP=1", "-q", postgres_db.url, "-f", str(tree / "1_copy.up.sql")],
        capture_output=True,
        text=True,
    )
    assert by_hand.returncode == 0, by_hand.stderr
    args = ("--url", postgres_db.url, "--set", "app", "--version", "1", "--applied")
    marked = run_cli("migrations", "mark", str(tree), *args)
    assert marked.returncode == 0, marked.stderr
    assert run_cli("migrations", "inspect", str(tree), "--url", postgres_db.url).returncode == 0
    assert postgres_db.query("SELECT status FROM app") == [("applied",)]
    assert postgres_db.query("SELECT id FROM cp ORDER BY id") == [(1,), (2,)]


@both_pg_clients
def test_session_settings_do_not_leak_into_the_next_migration(db: Database, tmp_path: Path) -> None:
    first = {
        "postgres": (
            "CREATE SCHEMA other;\nSET search_path = other;\nSET client_encoding = 'LATIN1';\n"
        ),
        "mysql": f"CREATE DATABASE {db.name}_other;\nUSE {db.name}_other;\nSET NAMES latin1;\n",
        "sqlite": "ATTACH DATABASE ':memory:' AS other;\nPRAGMA foreign_keys = ON;\n",
    }[db.dialect]
    tree = write_tree(
        tmp_path / "app",
        {
            "1_session.up.sql": first,
            "2_table.up.sql": (
                "CREATE TABLE c5 (note VARCHAR(20));\nINSERT INTO c5 VALUES ('café');\n"
            ),
        },
    )
    try:
        result = run_cli("migrations", "apply", str(tree), "--url", db.url)
        assert result.returncode == 0, result.stderr
        assert "c5" in db.tables()  # in the connection's own schema/database
        assert db.query("SELECT note FROM c5") == [("café",)]
    finally:
        if db.dialect == "mysql":
            db.query(f"DROP DATABASE IF EXISTS {db.name}_other")


@both_pg_clients
def test_temporary_tables_do_not_leak_into_the_next_migration(db: Database, tmp_path: Path) -> None:
    # Each migration starts as a fresh session would, however a run groups them: here the
    # second CREATE TEMPORARY TABLE failed, and the third copied rows of the first two.
    def scratch(value: int, into: str) -> str:
        return (
            f"CREATE TEMPORARY TABLE scratch (id INT);\nINSERT INTO scratch VALUES ({value});\n"
            f"INSERT INTO {into} SELECT id FROM scratch;\n"
        )

    tree = write_tree(
        tmp_path / "app",
        {
            "1_a.up.sql": "CREATE TABLE keep1 (id INT);\n" + scratch(1, "keep1"),
            "2_b.up.sql": "CREATE TABLE keep2 (id INT);\n" + scratch(2, "keep2"),
            "3_c.up.sql": scratch(3, "keep2"),  # no DDL: atomic on every database
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 0, result.stderr
    assert db.query("SELECT id FROM keep1") == [(1,)]
    assert sorted(db.query("SELECT id FROM keep2")) == [(2,), (3,)]


@both_pg_clients
def test_database_errors_outside_migrations_are_clear(
    postgres_db: Database, tmp_path: Path
) -> None:
    import uuid

    import psycopg

    role = f"whimbrel_ro_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_db.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    try:
        url = postgres_db.url.replace("postgres@", f"{role}@")
        tree = write_tree(tmp_path / "app", {"1_a.up.sql": "CREATE TABLE a (id INT);"})
        result = run_cli("migrations", "apply", str(tree), "--url", url)
        assert result.returncode == 9, result.stderr
        assert "set 'app': creating its tracking table: permission denied for schema public" in (
            result.stderr
        )
        assert "Traceback" not in result.stderr
    finally:
        with psycopg.connect(postgres_db.url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


def test_empty_down_section_cannot_be_reverted(db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_a.up.sql": "CREATE TABLE e1 (id INT);",
            "1_a.down.sql": "-- nothing to see\n",
            "2_b.sql": "-- migrate:up\nCREATE TABLE e2 (id INT);\n-- migrate:down\n",
        },
    )
    assert run_cli("migrations", "apply", str(tree), "--url", db.url).returncode == 0
    result = run_cli("migrations", "revert", str(tree), "--url", db.url, "--all")
    assert result.returncode == 8
    assert "the down section of 2_b.sql is empty" in result.stderr
    assert [r[0] for r in db.tracking("app")] == [1, 2]
    # The down section written afterwards: the recorded one is still empty, and the way
    # out is to record the file as it is now.
    (tree / "2_b.sql").write_text(
        "-- migrate:up\nCREATE TABLE e2 (id INT);\n-- migrate:down\nDROP TABLE e2;\n"
    )
    drifted = run_cli("migrations", "revert", str(tree), "--url", db.url, "--allow-drift")
    assert drifted.returncode == 8
    assert "the down section recorded when 2_b.sql was applied is empty" in drifted.stderr
    marked = run_cli(
        "migrations", "mark", str(tree), "--url", db.url, "--set", "app", "--version", "2",
        "--applied",
    )  # fmt: skip
    assert marked.returncode == 0, marked.stderr
    reverted = run_cli("migrations", "revert", str(tree), "--url", db.url)
    assert reverted.returncode == 0, reverted.stderr
    assert "e2" not in db.tables()


def test_resume_after_switching_to_a_transaction(sqlite_db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_a.sql": "-- migrate:up transaction:false\nCREATE TABLE a1 (id INT);\n"
            "INSERT INTO nope VALUES (1);\n-- migrate:down\nDROP TABLE a1;\n",
        },
    )
    assert run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url).returncode == 1
    (tree / "1_a.sql").write_text(
        "-- migrate:up\nCREATE TABLE a1 (id INT);\nINSERT INTO a1 VALUES (1);\n"
        "-- migrate:down\nDROP TABLE a1;\n"
    )
    result = run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url, "--resume")
    assert result.returncode == 0, result.stderr
    assert sqlite_db.query("SELECT id FROM a1") == [(1,)]
    assert sqlite_db.query("SELECT status, statements_done FROM app") == [("applied", 2)]


def test_sqlite_lock_follows_symlinks(sqlite_db: Database, tmp_path: Path) -> None:
    real = Path(sqlite_db.name)
    real.touch()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    holder = _hold_lock(sqlite_db)
    try:
        tree = write_tree(tmp_path / "app", {"1_a.up.sql": "CREATE TABLE a (id INT);"})
        result = run_cli(
            "migrations", "apply", str(tree), "--url", f"sqlite:///{link}", "--lock-timeout", "1"
        )
        assert result.returncode == 7, result.stderr
    finally:
        holder.kill()
        holder.wait()


# -- the lock outlives a killed client's last statement -------------------------------------
@both_pg_clients
def test_killed_revert_is_not_run_twice(postgres_db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "bank",
        {
            "1_acct.up.sql": "CREATE TABLE acct (bal INT);\nINSERT INTO acct VALUES (1000);\n",
            "1_acct.down.sql": "DROP TABLE acct;",
            "2_bonus.up.sql": "UPDATE acct SET bal = bal + 100;",
            "2_bonus.down.sql": "SELECT pg_sleep(3);\nUPDATE acct SET bal = bal - 100;\n",
        },
    )
    url = postgres_db.url
    assert run_cli("migrations", "apply", str(tree), "--url", url).returncode == 0
    first = subprocess.Popen(
        [*whimbrel_executable(), "migrations", "revert", str(tree), "--url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_running_sleep(postgres_db, 3)
    first.kill()
    first.wait()
    # The server notices the dead client within client_connection_check_interval and rolls
    # the revert back; until then the work lock keeps the second run waiting. Either way
    # the revert happens exactly once.
    second = run_cli("migrations", "revert", str(tree), "--url", url, "--set", "bank", "--to", "1")
    assert second.returncode == 0, second.stderr
    assert postgres_db.query("SELECT bal FROM acct") == [(1000,)]
    assert [r[0] for r in postgres_db.tracking("bank")] == [1]


@pytest.mark.parametrize("engine", ["mysql", "postgres"])
def test_statements_outside_a_files_own_transaction_are_counted_exactly(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db: Database = request.getfixturevalue(f"{engine}_db")
    inserts = "".join(f"INSERT INTO filled VALUES ({n});\n" for n in range(1, 2001))
    tree = write_tree(
        tmp_path / "app",
        {
            "1_table.up.sql": "CREATE TABLE filled (n INT);",
            "2_fill.up.sql": inserts + "BEGIN;\nSELECT 1;\nCOMMIT;\n",
        },
    )
    proc = subprocess.Popen(
        [*whimbrel_executable(), "migrations", "apply", str(tree), "--url", db.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _rows_in_filled(db, proc, 50)
    proc.kill()
    proc.wait()
    rows = db.query("SELECT count(*) FROM filled")[0][0]
    assert db.query("SELECT statements_done FROM app WHERE version = 2") == [(rows,)]
    resumed = run_cli("migrations", "apply", str(tree), "--url", db.url, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert db.query("SELECT count(*), count(DISTINCT n) FROM filled") == [(2000, 2000)]


def test_autocommit_turned_off_anywhere_is_caught(mysql_db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_ac.up.sql": "SET foreign_key_checks = 0, autocommit = 0;\n"
            "CREATE TABLE acm_x (id INT);\nINSERT INTO acm_x VALUES (1);\n"
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", mysql_db.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "left a transaction open" in result.stderr


@both_pg_clients
def test_set_role_does_not_leak_or_block_tracking(postgres_db: Database, tmp_path: Path) -> None:
    import uuid

    import psycopg

    role = f"whimbrel_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_db.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    try:
        tree = write_tree(
            tmp_path / "app",
            {
                "1_owned.up.sql": f"SET ROLE {role};\nCREATE TABLE app_owned (id INT);\n",
                "2_admin.up.sql": "CREATE TABLE admin_owned (id INT);\n",
                "3_stepwise.sql": f"-- migrate:up transaction:false\nSET ROLE {role};\n"
                "CREATE TABLE app_owned_too (id INT);\n-- migrate:down\n",
            },
        )
        result = run_cli("migrations", "apply", str(tree), "--url", postgres_db.url)
        assert result.returncode == 0, result.stderr
        owners = dict(
            postgres_db.query(
                "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
            )
        )
        assert owners["app_owned"] == role and owners["app_owned_too"] == role
        assert owners["admin_owned"] == "postgres"
    finally:
        with psycopg.connect(postgres_db.url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_dump_style_session_settings_do_not_leak(mysql_db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_dump.up.sql": "/*!40014 SET FOREIGN_KEY_CHECKS=0 */;\nCREATE TABLE d (id INT);\n",
            "2_check.up.sql": "CREATE TABLE fk AS SELECT @@foreign_key_checks AS v;\n",
        },
    )
    assert run_cli("migrations", "apply", str(tree), "--url", mysql_db.url).returncode == 0
    assert mysql_db.query("SELECT v FROM fk") == [(1,)]


def test_lock_tables_is_refused_up_front(mysql_db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_items.up.sql": "CREATE TABLE items (id INT);",
            "2_fill.up.sql": "LOCK TABLES items WRITE;\nINSERT INTO items VALUES (1);\n"
            "UNLOCK TABLES;\n",
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", mysql_db.url)
    assert result.returncode == 5
    assert "2_fill.up.sql, line 1: LOCK TABLES would lock whimbrel out" in result.stderr
    assert "items" not in mysql_db.tables()


def test_procedure_that_commits_runs_without_a_transaction(
    postgres_db: Database, tmp_path: Path
) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_backfill.sql": """
                -- migrate:up transaction:false
                CREATE TABLE batches (n INT);
                CREATE PROCEDURE backfill() LANGUAGE plpgsql AS $$
                BEGIN
                    FOR i IN 1..3 LOOP
                        INSERT INTO batches VALUES (i);
                        COMMIT;
                    END LOOP;
                END $$;
                CALL backfill();
                -- migrate:down
                DROP TABLE batches;
            """
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", postgres_db.url)
    assert result.returncode == 0, result.stderr
    assert postgres_db.query("SELECT count(*) FROM batches") == [(3,)]


def test_busy_sqlite_database_is_a_clear_error(sqlite_db: Database, tmp_path: Path) -> None:
    import sys

    Path(sqlite_db.name).touch()
    code = (
        "import sqlite3, time\n"
        f"c = sqlite3.connect({sqlite_db.name!r}, isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        tree = write_tree(tmp_path / "app", {"1_a.up.sql": "CREATE TABLE a (id INT);"})
        result = run_cli(
            "migrations", "apply", str(tree), "--url", sqlite_db.url, "--lock-timeout", "1"
        )
        assert result.returncode == 9, result.stderr
        assert "database is locked" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        holder.kill()
        holder.wait()


@both_pg_clients
def test_sigterm_cancels_like_ctrl_c(postgres_db: Database, tmp_path: Path) -> None:
    import signal

    tree = write_tree(
        tmp_path / "app",
        {"1_slow.up.sql": "CREATE TABLE s (id INT);\nSELECT pg_sleep(30);\n"},
    )
    proc = subprocess.Popen(
        [*whimbrel_executable(), "migrations", "apply", str(tree), "--url", postgres_db.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_running_sleep(postgres_db)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err
    still_running = (
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' "
        "AND state = 'active' AND pid <> pg_backend_pid() AND datname = current_database()"
    )
    assert postgres_db.query(still_running)[0][0] == 0  # cancelled on the server
    assert "s" not in postgres_db.tables()


def test_dml_only_migration_is_atomic_on_mysql(mysql_db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "1_t.up.sql": "CREATE TABLE t (id INT PRIMARY KEY);",
            "2_rows.up.sql": "INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2);\n"
            "INSERT INTO t VALUES (1);\n",
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", mysql_db.url)
    assert result.returncode == 1
    assert "2_rows.up.sql, statement 3 of 3 (line 3)" in result.stderr
    assert "It ran in a transaction: nothing of 2_rows.up.sql was applied." in result.stderr
    assert mysql_db.query("SELECT count(*) FROM t") == [(0,)]
    assert [r[:2] for r in mysql_db.tracking("app")] == [(1, "applied")]
    (tree / "2_rows.up.sql").write_text("INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2);\n")
    assert run_cli("migrations", "apply", str(tree), "--url", mysql_db.url).returncode == 0
    assert mysql_db.query("SELECT id FROM t ORDER BY id") == [(1,), (2,)]


def test_atomic_migration_on_a_table_without_transactions_is_left_dirty_on_mysql(
    mysql_db: Database, tmp_path: Path
) -> None:
    # ROLLBACK cannot undo the MyISAM insert: "nothing was applied" would be a lie, and a
    # re-run would insert it again.
    tree = write_tree(
        tmp_path / "app",
        {
            "1_t.up.sql": "CREATE TABLE mi (id INT) ENGINE=MyISAM;\n"
            "CREATE TABLE uq (id INT PRIMARY KEY);",
            "2_rows.up.sql": "INSERT INTO mi VALUES (1);\nINSERT INTO uq VALUES (1);\n"
            "INSERT INTO uq VALUES (1);\n",
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", mysql_db.url)
    assert result.returncode == 1
    assert "2_rows.up.sql, statement 3 of 3 (line 3)" in result.stderr
    assert "could not roll back its changes to tables without transactions" in result.stderr
    assert "2_rows.up.sql is now dirty" in result.stderr
    assert "nothing of 2_rows.up.sql was applied" not in result.stderr
    assert mysql_db.query("SELECT count(*) FROM mi") == [(1,)]
    assert mysql_db.query("SELECT count(*) FROM uq") == [(0,)]
    rows = mysql_db.query("SELECT version, status, statements_done, error FROM app")
    assert [r[:3] for r in rows] == [(1, "applied", 2), (2, "applying", 0)]
    assert "Duplicate entry" in str(rows[1][3])
    again = run_cli("migrations", "apply", str(tree), "--url", mysql_db.url)
    assert again.returncode == 8, again.stderr  # dirty: refused until repaired
    assert "except its changes to tables without transactions, which stay" in again.stderr
    assert mysql_db.query("SELECT count(*) FROM mi") == [(1,)]


def test_sqlite_lock_file_names_the_holder(sqlite_db: Database, tmp_path: Path) -> None:
    from whimbrel.drivers import connect
    from whimbrel.urls import parse_url

    driver = connect(parse_url(sqlite_db.url), create=True)
    try:
        driver.acquire_lock(1, lambda holder: None)
        holder = Path(sqlite_db.name + ".whimbrel-lock").read_text()
        assert f"pid {os.getpid()}" in holder
        tree = write_tree(tmp_path / "app", {"1_a.up.sql": "CREATE TABLE a (id INT);"})
        result = run_cli(
            "migrations", "apply", str(tree), "--url", sqlite_db.url, "--lock-timeout", "1"
        )
        assert result.returncode == 7
        assert f"pid {os.getpid()}" in result.stderr
    finally:
        driver.close()
