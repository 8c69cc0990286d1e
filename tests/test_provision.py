"""Provisioning: create, drop and wait for databases on the real servers, and the CLI on top."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import (
    EXAMPLES,
    MYSQL_URL,
    POSTGRES_URL,
    Database,
    run_cli,
    unreachable,
    write_tree,
)
from whimbrel import provisioning as provision
from whimbrel.errors import ConnectionFailed, ExitCode, UsageError


def _server_url(dialect: str) -> str:
    return POSTGRES_URL if dialect == "postgres" else MYSQL_URL


def _url_for(dialect: str, name: str, tmp_path: Path) -> str:
    if dialect == "sqlite":
        return f"sqlite:///{tmp_path / name}.db"
    base, _, _ = _server_url(dialect).rpartition("/")
    return f"{base}/{quote(name, safe='')}"


@pytest.fixture(params=("sqlite", "postgres", "mysql"))
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(dialect, URL) of a database that does not exist yet; dropped after the test.

    The name needs quoting on every server: uppercase, a space, a dash and a quote.
    """
    dialect = request.param
    name = f'whimbrel T-{uuid.uuid4().hex[:8]} "q'
    if dialect == "mysql":
        name = name.replace('"', "`")  # a backtick must be doubled inside `...`
    url = _url_for(dialect, name, tmp_path)
    if dialect != "sqlite":
        try:
            provision.wait_until_ready(_server_url(dialect), timeout=0, need_database=False)
        except ConnectionFailed as exc:
            unreachable(dialect, exc)
    try:
        yield dialect, url
    finally:
        provision.drop_database(url)


def _close_quietly(conn: object) -> None:
    with contextlib.suppress(Exception):  # the server ended it
        conn.close()  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_create_exists_drop(fresh_url: tuple[str, str]) -> None:
    _, url = fresh_url
    assert provision.database_exists(url) is False
    assert provision.create_database(url) is True
    assert provision.database_exists(url) is True
    assert provision.create_database(url) is False  # already there: not an error
    # whimbrel can migrate the new database.
    applied = run_cli("migrations", "apply", str(EXAMPLES / "ftl/db"), "--url", url)
    assert applied.returncode == 0, applied.stderr
    assert provision.drop_database(url) is True
    assert provision.database_exists(url) is False
    assert provision.drop_database(url) is False


def test_drop_ends_other_sessions(fresh_url: tuple[str, str]) -> None:
    """A test's leftover connection (here inside an open transaction) does not block drop."""
    dialect, url = fresh_url
    provision.create_database(url)
    with contextlib.ExitStack() as stack:
        if dialect == "postgres":
            import psycopg

            conn = psycopg.connect(url)
            stack.callback(_close_quietly, conn)
            conn.execute("CREATE TABLE t (id int)")  # leaves a transaction open
        elif dialect == "mysql":
            import pymysql

            conn2 = pymysql.connect(
                host="127.0.0.1", user="root", database=provision.database_name(url)
            )
            stack.callback(_close_quietly, conn2)
            with conn2.cursor() as cur:
                cur.execute("CREATE TABLE t (id int)")
                cur.execute("BEGIN")
                cur.execute("INSERT INTO t VALUES (1)")  # holds a metadata lock on t
        else:
            import sqlite3

            conn3 = sqlite3.connect(provision.database_name(url))
            stack.callback(conn3.close)
            conn3.execute("CREATE TABLE t (id int)")
        started = time.monotonic()
        assert provision.drop_database(url) is True
        assert time.monotonic() - started < 30
    assert provision.database_exists(url) is False


def test_wait_for_a_closed_port_times_out_with_the_last_error() -> None:
    url = f"postgresql://whim:s3cret-pw@127.0.0.1:{free_port()}/appdb"
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as info:
        provision.wait_until_ready(url, timeout=1.5)
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 10
    message = info.value.message
    assert "gave up after 1.5 s" in message
    assert "127.0.0.1" in message and "appdb" in message
    assert "refused" in message.lower()
    assert "s3cret-pw" not in message
    assert info.value.exit_code == ExitCode.CONNECTION


def test_wait_for_a_closed_mysql_port() -> None:
    url = f"mysql://root:s3cret-pw@127.0.0.1:{free_port()}/appdb"
    with pytest.raises(ConnectionFailed) as info:
        provision.wait_until_ready(url, timeout=1)
    assert "2003" in info.value.message  # PyMySQL's "can't connect"
    assert "s3cret-pw" not in info.value.message


def test_wait_retries_until_the_database_appears(fresh_url: tuple[str, str]) -> None:
    """The server is up but the database is missing: ready for --create-db, not otherwise."""
    dialect, url = fresh_url
    ready = provision.wait_until_ready(url, timeout=5, need_database=False)
    assert ready.database_exists is False and ready.attempts == 1
    errors: list[str] = []
    with pytest.raises(ConnectionFailed) as info:
        provision.wait_until_ready(url, timeout=0.5, on_retry=errors.append)
    assert "does not exist" in info.value.message
    if dialect != "sqlite":
        assert "the server is up" in info.value.message
        assert "--create-db creates it" in info.value.message
    assert len(errors) >= 2  # it retried
    provision.create_database(url)
    ready = provision.wait_until_ready(url, timeout=5)
    assert ready.database_exists is True and ready.attempts == 1


def test_url_without_a_database_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="names no database"):
        provision.create_database("mysql://root@127.0.0.1:3306")
    with pytest.raises(UsageError, match="names no database"):
        provision.wait_until_ready("mysql://root@127.0.0.1:3306/", timeout=5)


@pytest.mark.parametrize(
    ("base", "limit", "message"),
    [(POSTGRES_URL, 63, "is 64 bytes long; PostgreSQL allows at most 63"),
     (MYSQL_URL, 64, "is 65 characters long; MySQL allows at most 64")],
)  # fmt: skip
def test_a_database_name_the_server_would_cut_short_is_refused(
    base: str, limit: int, message: str
) -> None:
    # PostgreSQL kept the first 63 bytes: "created database <64 chars>" named another one.
    name = "whimbrel_" + "x" * (limit - 8)
    url = base.rsplit("/", 1)[0] + "/" + name
    result = run_cli(
        "migrations", "apply", str(EXAMPLES / "ftl" / "db"), "--url", url, "--create-db"
    )
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert message in result.stderr
    assert not provision.database_exists(base.rsplit("/", 1)[0] + "/" + name[:limit])


def test_create_database_refused_reports_without_password(postgres_db: Database) -> None:
    """A role without CREATEDB gets exit-9 DatabaseError, and the password stays hidden."""
    role = f"whimbrel_r_{uuid.uuid4().hex[:8]}"
    postgres_db.query(f"CREATE ROLE {role} LOGIN PASSWORD 'r0le-secret'")
    try:
        base = POSTGRES_URL.split("://", 1)[1].split("@", 1)[1].rpartition("/")[0]
        url = f"postgresql://{role}:r0le-secret@{base}/whimbrel_never_{uuid.uuid4().hex[:6]}"
        result = run_cli(
            "migrations", "apply", str(EXAMPLES / "ftl/db"), "--url", url, "--create-db"
        )
        assert result.returncode == ExitCode.DATABASE_ERROR, result.stderr
        assert "cannot create database" in result.stderr
        assert "r0le-secret" not in result.stderr + result.stdout
    finally:
        postgres_db.query(f"DROP ROLE {role}")


# -- the CLI ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["apply", "provision"])
def test_a_tree_that_would_be_refused_creates_no_database(
    fresh_url: tuple[str, str], tmp_path: Path, command: str
) -> None:
    # Checks that need the database's dialect ran only after the database was created:
    # a refused tree left an empty database behind.
    tree = write_tree(
        tmp_path / "t",
        {
            "s/001_a.up.sql": "CREATE TABLE a (id INT);",
            "s/002_b.up.sql": "CREATE TABLE s (id INT);",
        },
    )
    _, url = fresh_url
    extra = ["--create-db"] if command == "apply" else []
    result = run_cli("migrations", command, str(tree), "--url", url, *extra)
    assert result.returncode == ExitCode.INVALID_MIGRATIONS, result.stderr
    assert "002_b.up.sql, line 1: creates a table or view named 's'" in result.stderr
    assert "created database" not in result.stderr
    assert not provision.database_exists(url)


def test_provision_json_says_how_long_it_waited_when_the_wait_timed_out(tmp_path: Path) -> None:
    result = run_cli(
        "migrations", "provision", str(EXAMPLES / "ftl/db"), "-o", "json", "--wait-timeout",
        "1", "--url", "postgresql://app@127.0.0.1:1/testdb",
    )  # fmt: skip
    assert result.returncode == ExitCode.CONNECTION, result.stderr
    assert json.loads(result.stdout)["database"]["waited_s"] >= 1.0


def test_apply_create_db_and_wait(fresh_url: tuple[str, str]) -> None:
    dialect, url = fresh_url
    missing = run_cli(
        "migrations",
        "apply",
        str(EXAMPLES / "ftl/db"),
        "--url",
        url,
        "--wait",
        "--wait-timeout",
        "1",
    )
    if dialect == "sqlite":
        # apply always creates a missing SQLite file; --wait waits only for its folder.
        assert missing.returncode == 0, missing.stderr
        provision.drop_database(url)
    else:
        assert missing.returncode == ExitCode.CONNECTION, missing.stderr
        assert "does not exist" in missing.stderr and "--create-db" in missing.stderr
    created = run_cli(
        "migrations",
        "apply",
        str(EXAMPLES / "ftl/db"),
        "--url",
        url,
        "--create-db",
        "--wait",
        "--wait-timeout",
        "10",
    )
    assert created.returncode == 0, created.stderr
    assert "created database" in created.stderr
    assert "Applied 2 migrations" in created.stdout
    again = run_cli("migrations", "apply", str(EXAMPLES / "ftl/db"), "--url", url, "--create-db")
    assert again.returncode == 0, again.stderr
    assert "created database" not in again.stderr
    assert "Nothing to apply" in again.stdout


def test_cli_wait_on_a_closed_port_exits_6() -> None:
    url = f"postgresql://postgres:pw-XYZ@127.0.0.1:{free_port()}/appdb"
    started = time.monotonic()
    result = run_cli(
        "migrations",
        "apply",
        str(EXAMPLES / "ftl/db"),
        "--url",
        url,
        "--wait",
        "--wait-timeout",
        "1",
    )
    assert result.returncode == ExitCode.CONNECTION
    assert time.monotonic() - started < 20
    assert "gave up after 1 s" in result.stderr and "waiting for" in result.stderr
    assert "pw-XYZ" not in result.stderr


def test_provision_command_json(fresh_url: tuple[str, str]) -> None:
    dialect, url = fresh_url
    tree = EXAMPLES / "ftl/db"
    result = run_cli("migrations", "provision", str(tree), "--url", url, "-o", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["database"]["created"] is True
    assert doc["database"]["engine"] == dialect
    assert doc["sets"] == ["testdb"]
    assert [m["file"] for m in doc["migrations"]] == [
        "20231103205514_init.sql",
        "20240704103403_create_module_secrets.sql",
    ]
    assert doc["error"] is None
    again = json.loads(
        run_cli("migrations", "provision", str(tree), "--url", url, "-o", "json").stdout
    )
    assert again["database"]["created"] is False and again["migrations"] == []


def test_postgres_database_name_follows_libpq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGDATABASE", raising=False)
    assert provision.database_name("postgres://u@h/app") == "app"
    assert provision.database_name("postgres://u@h/app?dbname=other") == "other"
    assert provision.database_name("postgres://alice@h") == "alice"  # libpq's default
    monkeypatch.setenv("PGDATABASE", "fromenv")
    assert provision.database_name("postgres://alice@h") == "fromenv"
    assert provision.database_name("sqlite:///some/file.db") == "some/file.db"


def test_provision_json_on_failure_has_the_same_keys(tmp_path: Path) -> None:
    url = f"postgresql://postgres:pw-XYZ@127.0.0.1:{free_port()}/appdb"
    result = run_cli(
        "migrations", "provision", str(EXAMPLES / "ftl/db"), "--url", url,
        "--wait-timeout", "0.5", "-o", "json",
    )  # fmt: skip
    assert result.returncode == ExitCode.CONNECTION
    doc = json.loads(result.stdout)
    assert set(doc) == {"database", "manifests", "sets", "migrations", "error"}
    assert doc["database"]["name"] == "appdb" and doc["database"]["created"] is False
    assert doc["sets"] == ["testdb"] and doc["migrations"] == []
    assert doc["error"]["exit_code"] == ExitCode.CONNECTION
    assert "gave up after 0.5 s" in doc["error"]["message"]
    assert "pw-XYZ" not in result.stdout + result.stderr
    bad = run_cli("migrations", "provision", str(EXAMPLES / "ftl/db"), "--url", "oracle://x",
                  "-o", "json")  # fmt: skip
    assert bad.returncode == ExitCode.USAGE
    assert set(json.loads(bad.stdout)) == set(doc)


def test_dry_run_with_create_db_creates_nothing(fresh_url: tuple[str, str]) -> None:
    _, url = fresh_url
    result = run_cli("migrations", "apply", str(EXAMPLES / "ftl/db"), "--url", url,
                     "--create-db", "--dry-run", "-o", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["database_created"] is False
    assert [m["status"] for m in doc["migrations"]] == ["planned", "planned"]
    assert provision.database_exists(url) is False
    text = run_cli("migrations", "apply", str(EXAMPLES / "ftl/db"), "--url", url,
                   "--create-db", "--dry-run")  # fmt: skip
    assert "would create database" in text.stderr and "Would apply" in text.stdout


def test_inspect_and_revert_wait_too(postgres_db: Database) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    for command in ("inspect", "revert"):
        result = run_cli("migrations", command, str(EXAMPLES / "ftl/db"), "--url", closed,
                         "--wait-timeout", "0.5")  # fmt: skip
        assert result.returncode == ExitCode.CONNECTION, result.stderr
        assert "gave up after 0.5 s" in result.stderr
    tree = str(EXAMPLES / "ftl/db")
    assert run_cli("migrations", "apply", tree, "--url", postgres_db.url).returncode == 0
    reverted = run_cli("migrations", "revert", tree, "--url", postgres_db.url, "--wait")
    assert reverted.returncode == 0, reverted.stderr
    inspected = run_cli("migrations", "inspect", tree, "--url", postgres_db.url, "--wait")
    assert inspected.returncode == ExitCode.PENDING, inspected.stderr


def test_concurrent_provisioners_create_once_and_apply_once(fresh_url: tuple[str, str]) -> None:
    """Replicas starting together: one creates the database, each migration runs once."""
    import subprocess

    from conftest import whimbrel_executable

    _, url = fresh_url
    command = [*whimbrel_executable(), "migrations", "provision", str(EXAMPLES / "ftl/db"),
               "--url", url, "-o", "json"]  # fmt: skip
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]  # fmt: skip
    docs = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        docs.append(json.loads(out))
    assert sum(d["database"]["created"] for d in docs) == 1
    applied = [m["file"] for d in docs for m in d["migrations"]]
    assert sorted(applied) == [
        "20231103205514_init.sql",
        "20240704103403_create_module_secrets.sql",
    ]


def test_provision_text_failure_is_a_clean_error() -> None:
    """Text output: a failure is an error line with its exit code, never a traceback."""
    url = f"postgresql://postgres:pw-XYZ@127.0.0.1:{free_port()}/appdb"
    result = run_cli("migrations", "provision", str(EXAMPLES / "ftl/db"), "--url", url,
                     "--wait-timeout", "0.5")  # fmt: skip
    assert result.returncode == ExitCode.CONNECTION, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: gave up after 0.5 s" in result.stderr
    assert "pw-XYZ" not in result.stdout + result.stderr


def test_provision_no_create_db_requires_the_database(fresh_url: tuple[str, str]) -> None:
    """--no-create-db: a missing database (a SQLite file too) is exit 6, and stays missing."""
    _, url = fresh_url
    result = run_cli("migrations", "provision", str(EXAMPLES / "ftl/db"), "--url", url,
                     "--no-create-db", "--wait-timeout", "0.5")  # fmt: skip
    assert result.returncode == ExitCode.CONNECTION, result.stdout + result.stderr
    assert "does not exist" in result.stderr
    assert provision.database_exists(url) is False


def test_an_unusable_postgres_url_is_a_usage_error_not_a_traceback() -> None:
    url = "postgresql://u:pw-XYZ@127.0.0.1:1/appdb?nosuchoption=1"
    for args in (("provision", "--wait-timeout", "0.5"), ("apply", "--create-db")):
        command, *options = args
        result = run_cli("migrations", command, str(EXAMPLES / "ftl/db"), "--url", url, *options)
        assert result.returncode == ExitCode.USAGE, result.stderr
        assert "Traceback" not in result.stderr
        assert 'invalid URI query parameter: "nosuchoption"' in result.stderr
        assert "pw-XYZ" not in result.stdout + result.stderr


def test_postgres_without_access_to_the_maintenance_database(
    postgres_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user of just its own database (pg_hba.conf allows nothing else): --create-db and
    provision go on when that database exists, and still fail clearly when it does not."""

    @contextlib.contextmanager
    def refused(url: object, *args: object, **kwargs: object) -> Iterator[None]:
        raise ConnectionFailed('no pg_hba.conf entry for database "postgres"')
        yield  # pragma: no cover

    monkeypatch.setattr(provision, "_pg_admin", refused)
    assert provision.create_database(postgres_db.url) is False
    assert provision.database_exists(postgres_db.url) is True
    missing = postgres_db.url.rpartition("/")[0] + f"/whimbrel_never_{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConnectionFailed, match="pg_hba"):
        provision.create_database(missing)
    with pytest.raises(ConnectionFailed, match="pg_hba"):
        provision.database_exists(missing)


def test_provision_json_when_terminated_mid_run(postgres_db: Database, tmp_path: Path) -> None:
    """SIGTERM (Kubernetes) during a migration: the JSON document still comes, with what was
    applied before, and the error, exit code 143."""
    import signal
    import subprocess

    from conftest import whimbrel_executable, write_tree

    tree = write_tree(tmp_path / "db", {
        "app/001_fast.sql": "-- migrate:up\nCREATE TABLE fast (id INT);\n-- migrate:down\n",
        "app/002_slow.sql": "-- migrate:up\nSELECT pg_sleep(60);\n-- migrate:down\n",
    })  # fmt: skip
    command = [*whimbrel_executable(), "migrations", "provision", str(tree),
               "--url", postgres_db.url, "-o", "json"]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not postgres_db.query(
            "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' "
            "AND pid <> pg_backend_pid()"
        ):
            assert time.monotonic() < deadline and run.poll() is None, run.communicate()
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 143, err
    doc = json.loads(out)
    assert set(doc) == {"database", "manifests", "sets", "migrations", "error"}
    assert [(m["file"], m["status"]) for m in doc["migrations"]] == [("001_fast.sql", "applied")]
    assert doc["error"]["exit_code"] == 143
    assert "002_slow.sql" in doc["error"]["message"]
