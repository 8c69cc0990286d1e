"""The pytest plugin, proven on the example project run by pytest as a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

from conftest import EXAMPLES, MYSQL_URL, POSTGRES_URL, unreachable

PROJECT = EXAMPLES / "pytest-project"


def run_pytest(
    *args: str, cwd: Path = PROJECT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WHIMBREL_TEST_URL", "WHIMBREL_TEST_MIGRATIONS", "PYTEST_"))
        and k != "DATABASE_URL"
    }
    clean["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in the example
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def server_url(engine: str, base: str) -> str:
    if engine == "sqlite":
        return f"sqlite:///{base}.db"
    server = POSTGRES_URL if engine == "postgres" else MYSQL_URL
    return f"{server.rpartition('/')[0]}/{base}"


def databases_named(engine: str, prefix: str) -> list[str]:
    """The test databases on the server (SQLite: folders) whose names start with `prefix`."""
    if engine == "sqlite":
        return sorted(
            p.name for p in Path(tempfile.gettempdir()).glob(f"whimbrel-pytest-{prefix}*")
        )
    if engine == "postgres":
        import psycopg

        try:
            conn = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            unreachable("PostgreSQL", exc)
        with conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)
            ).fetchall()
        return sorted(r[0] for r in rows)
    from conftest import Database

    rows = Database("mysql", MYSQL_URL, "").query("SHOW DATABASES LIKE %s", (prefix + "%",))
    return sorted(r[0] for r in rows)


def drop(engine: str, names: list[str]) -> None:
    from whimbrel.provisioning import drop_database

    for name in names:
        drop_database(server_url(engine, name))


@pytest.mark.parametrize("engine", ["sqlite", "postgres", "mysql"])
def test_example_project_passes_and_drops_its_database(engine: str) -> None:
    base = f"wbex{uuid.uuid4().hex[:10]}"
    url = server_url(engine, base)
    databases_named(engine, base)  # skips when the server is unreachable
    # The URL by option, or (MariaDB) by environment variable.
    if engine == "mysql":
        result = run_pytest(env={"WHIMBREL_TEST_URL": url})
    else:
        result = run_pytest("--whimbrel-url", url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b3 passed\b", result.stdout), result.stdout
    header = re.search(
        rf"whimbrel: migrations .*db, test database on \w+ .* named ({base}_test_\w+)\*",
        result.stdout,
    )
    assert header, result.stdout
    assert databases_named(engine, base) == []


def test_keep_keeps_each_xdist_workers_database() -> None:
    base = f"wbex{uuid.uuid4().hex[:10]}"
    databases_named("postgres", base)
    result = run_pytest(
        "-n", "2", "--whimbrel-url", server_url("postgres", base), "--whimbrel-keep"
    )
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        kept = re.findall(r"whimbrel: kept the test database \S+/(\S+)", result.stdout)
        assert sorted(kept) == databases_named("postgres", base)
        # One database per worker, both named after the same session.
        assert len(kept) == 2 and {k.rsplit("_", 1)[1] for k in kept} == {"gw0", "gw1"}
        assert len({k.rsplit("_", 1)[0] for k in kept}) == 1
        from conftest import Database

        migrated = [
            Database("postgres", server_url("postgres", name), name).tracking("shopdb")
            for name in kept
        ]
        assert all(
            [row[:2] for row in rows] == [(20240101120000, "applied"), (20240215093000, "applied")]
            for rows in migrated
        )
    finally:
        drop("postgres", databases_named("postgres", base))


def test_keep_keeps_the_sqlite_file() -> None:
    base = f"wbex{uuid.uuid4().hex[:10]}"
    result = run_pytest("--whimbrel-url", server_url("sqlite", base), "--whimbrel-keep")
    folders = databases_named("sqlite", base)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        (kept,) = re.findall(r"whimbrel: kept the test database sqlite:///(\S+)", result.stdout)
        assert Path(kept).is_file() and len(folders) == 1
        import sqlite3

        with sqlite3.connect(kept) as conn:
            # What the session's tests committed is there to look at.
            assert conn.execute("SELECT name FROM products").fetchall() == [("coffee",)]
    finally:
        import shutil

        for folder in folders:
            shutil.rmtree(Path(tempfile.gettempdir()) / folder)


def test_unconfigured_the_plugin_is_loaded_but_touches_nothing(tmp_path: Path) -> None:
    (tmp_path / "test_idle.py").write_text(
        textwrap.dedent(
            """
            import sys

            def test_idle(pytestconfig):
                assert pytestconfig.pluginmanager.has_plugin("whimbrel")
                heavy = {"psycopg", "pymysql", "sqlite3", "watchfiles", "rich", "click",
                         "whimbrel.api", "whimbrel.engine", "whimbrel.provisioning",
                         "whimbrel.urls"}
                assert sorted(heavy & set(sys.modules)) == []
            """
        )
    )
    result = run_pytest("-p", "no:xdist", "-p", "no:hypothesispytest", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "whimbrel:" not in result.stdout  # no report header either


def test_fixtures_without_a_server_fail_clearly() -> None:
    result = run_pytest()
    assert result.returncode == 1
    assert "whimbrel: no test database server configured: pass --whimbrel-url URL" in (
        result.stdout
    )
    assert re.search(r"\b3 errors?\b", result.stdout), result.stdout


def test_url_without_migrations_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    result = run_pytest("--whimbrel-url", "sqlite:///x.db", cwd=tmp_path)
    assert result.returncode == 4  # pytest's usage error
    assert "no migrations: pass --whimbrel-migrations PATH" in result.stderr
    result = run_pytest(
        "--whimbrel-url", "sqlite:///x.db", "--whimbrel-migrations", "nowhere", cwd=tmp_path
    )
    assert result.returncode == 4
    assert "the migrations folder nowhere does not exist" in result.stderr


def test_an_unreachable_server_is_reported_without_its_password() -> None:
    result = run_pytest("--whimbrel-url", "postgresql://nobody:s3cret@127.0.0.1:1/shop")
    assert result.returncode == 1
    assert "whimbrel: cannot create the test database postgresql://nobody:***@127.0.0.1:1/" in (
        result.stdout
    )
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_failing_migration_leaves_no_database_behind(engine: str, tmp_path: Path) -> None:
    base = f"wbex{uuid.uuid4().hex[:10]}"
    databases_named(engine, base)  # skips when the server is unreachable
    set_folder = tmp_path / "db" / "app"
    set_folder.mkdir(parents=True)
    (set_folder / "001_a.sql").write_text(
        "-- migrate:up\nCREATE TABLE a (id INT);\nCREATE TABLE a (id INT);\n-- migrate:down\n"
    )
    (tmp_path / "test_a.py").write_text("def test_a(whimbrel_connection):\n    pass\n")
    result = run_pytest(
        "--whimbrel-url", server_url(engine, base), "--whimbrel-migrations", "db", cwd=tmp_path
    )
    leftovers = databases_named(engine, base)
    if engine == "postgres":
        drop(engine, leftovers)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "whimbrel: cannot create the test database" in result.stdout
    assert "001_a.sql" in result.stdout
    assert leftovers == []
