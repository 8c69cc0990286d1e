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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
