"""Fixtures: a fresh, real database per test on every engine, and the CLI as a subprocess.

PostgreSQL and MariaDB are the servers on this machine (override with
WHIMBREL_TEST_POSTGRES_URL / WHIMBREL_TEST_MYSQL_URL). Under CI=true an unreachable server
fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from k8s_emulator.fixture import k8s_cluster  # noqa: F401  (the Kubernetes emulator)

POSTGRES_URL = os.environ.get(
    "WHIMBREL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("WHIMBREL_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ENGINES = ("sqlite", "postgres", "mysql")


def unreachable(what: str, exc: BaseException) -> None:
    message = f"{what} is unreachable: {exc}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a server the tests need must be running)")
    pytest.skip(message)


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


@dataclass
class Database:
    """A fresh database, plus a plain connection of the test's own to check what whimbrel did."""

    dialect: str
    url: str
    name: str

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.dialect == "sqlite":
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            try:
                return list(conn.execute(sql, params).fetchall())
            finally:
                conn.close()
        if self.dialect == "postgres":
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as pg:
                cur = pg.execute(sql, params or None)
                return list(cur.fetchall()) if cur.description else []
        import pymysql

        conn = pymysql.connect(**_mysql_kwargs(self.url), autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params or None)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def tables(self) -> set[str]:
        if self.dialect == "sqlite":
            rows = self.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        elif self.dialect == "postgres":
            rows = self.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        else:
            rows = self.query("SHOW TABLES")
        return {r[0] for r in rows}

    def tracking(self, table: str) -> list[tuple[Any, ...]]:
        return self.query(f"SELECT version, status, sha256 FROM {table} ORDER BY version")


def _mysql_kwargs(url: str) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return {
        "host": parts.hostname,
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
        "database": parts.path.lstrip("/"),
    }


def _fresh_name() -> str:
    return f"whimbrel_t_{uuid.uuid4().hex[:12]}"


@contextmanager
def fresh_database(dialect: str, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty database of this kind, dropped afterwards (SQLite: a file to be)."""
    name = _fresh_name()
    if dialect == "sqlite":
        path = tmp_path / f"{name}.db"
        yield Database("sqlite", f"sqlite:///{path}", str(path))
        return
    if dialect == "postgres":
        import psycopg

        try:
            admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
        with admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield Database("postgres", _with_database(POSTGRES_URL, name), name)
        finally:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    import pymysql

    try:
        conn = pymysql.connect(**_mysql_kwargs(MYSQL_URL), connect_timeout=5, autocommit=True)
    except pymysql.MySQLError as exc:
        unreachable(f"MariaDB/MySQL at {MYSQL_URL}", exc)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        yield Database("mysql", _with_database(MYSQL_URL, name), name)
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


# -- the PostgreSQL client --------------------------------------------------------------
# whimbrel talks to PostgreSQL through libpq (ctypes) by default, through psycopg where libpq
# cannot be loaded or WHIMBREL_PG_CLIENT=psycopg. Tests marked `pg_clients` run twice:
# `auto` (the default, libpq here) and `psycopg`, the fallback; run_cli passes the
# environment on, so the CLI they start uses that client.
PG_CLIENTS = ("auto", "psycopg")


F = TypeVar("F", bound=Callable[..., Any])


def both_pg_clients(test: F) -> F:
    """Run this test through each PostgreSQL client (its other engines, once)."""
    return pytest.mark.pg_clients(pytest.mark.usefixtures("pg_client")(test))  # type: ignore[no-any-return]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("pg_clients"):
        metafunc.parametrize("pg_client", PG_CLIENTS, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The psycopg variant of a test parametrized over engines only on PostgreSQL.
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        engine = params.get("db", params.get("engine", "postgres"))
        psycopg_elsewhere = params.get("pg_client") == "psycopg" and engine != "postgres"
        (drop if psycopg_elsewhere else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def pg_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    client: str = getattr(request, "param", "auto")
    monkeypatch.setenv("WHIMBREL_PG_CLIENT", client)
    return client


@pytest.fixture
def postgres_db(tmp_path: Path) -> Iterator[Database]:
    with fresh_database("postgres", tmp_path) as database:
        yield database


@pytest.fixture
def mysql_db(tmp_path: Path) -> Iterator[Database]:
    with fresh_database("mysql", tmp_path) as database:
        yield database


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    path = tmp_path / "test.db"
    return Database("sqlite", f"sqlite:///{path}", str(path))


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest) -> Database:
    """The same test on SQLite, PostgreSQL and MariaDB."""
    return request.getfixturevalue(f"{request.param}_db")  # type: ignore[no-any-return]


# -- the CLI ---------------------------------------------------------------------------
def whimbrel_executable() -> list[str]:
    script = Path(sys.executable).with_name("whimbrel")
    if script.exists():
        return [str(script)]
    found = shutil.which("whimbrel")
    return [found] if found else [sys.executable, "-m", "whimbrel"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    full_env.update(env or {})
    return subprocess.run(
        [*whimbrel_executable(), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.fixture
def cli() -> Any:
    return run_cli


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Create files (relative path -> text, dedented) under root and return root."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
