"""pytest plugin: a freshly migrated test database for the whole test session.

Installed with whimbrel (the `pytest11` entry point `whimbrel`), and off unless a server URL
is configured, from the first of:

- `--whimbrel-url URL`, then the `WHIMBREL_TEST_URL` environment variable, then the ini
  setting `whimbrel_url`;

with the migrations PATH from `--whimbrel-migrations`, `WHIMBREL_TEST_MIGRATIONS`, or the ini
setting `whimbrel_migrations` (relative to the ini file). The URL names the server; its
database name is only the base of the test database's name, `<base>_test_<token>` (plus
`_<worker>` under pytest-xdist, so each worker has its own). For SQLite the file is made in
a temporary folder. It is created and migrated before the first test, and dropped at the
end unless `--whimbrel-keep` is given.

Fixtures: `whimbrel_database` (a `MigratedDatabase`: `url`, `name`, `dialect`, `connect()`),
`whimbrel_url` (its URL), `whimbrel_connection` (a DB-API connection to it, closed after
the test) and `whimbrel_clean_db` (a `MigratedDatabase` of its own for one test: empty and
freshly migrated, dropped after the test).

This module is imported by every pytest run where whimbrel is installed, so it imports
nothing but pytest until it is configured.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from whimbrel.urls import DatabaseURL

__all__ = ["MigratedDatabase"]

ENV_URL = "WHIMBREL_TEST_URL"
ENV_MIGRATIONS = "WHIMBREL_TEST_MIGRATIONS"
_NOT_CONFIGURED = (
    "whimbrel: no test database server configured: pass --whimbrel-url URL, set "
    f"{ENV_URL}, or set whimbrel_url in the pytest configuration"
)
# A database name fits PostgreSQL's 63 bytes and MySQL's 64 characters.
_MAX_NAME = 63


@dataclass(frozen=True)
class MigratedDatabase:
    """A test database with every migration applied."""

    url: str
    name: str  # the database's name; for SQLite, the file's path
    dialect: str  # "postgres", "mysql" or "sqlite"

    def connect(self) -> Any:
        """A new DB-API connection (psycopg, PyMySQL or sqlite3), not in autocommit mode."""
        return _connect(self)


@dataclass
class _Settings:
    url: str
    migrations: Path
    keep: bool
    token: str  # shared by the xdist workers of one session
    worker: str | None  # "gw0"... under pytest-xdist
    kept: list[str] = field(default_factory=list)  # redacted URLs, for the summary


_SETTINGS = pytest.StashKey["_Settings | None"]()
_TOKEN = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("whimbrel", "whimbrel: a migrated test database")
    group.addoption(
        "--whimbrel-url",
        metavar="URL",
        help=f"Server to create the test database on (turns the plugin on; also ${ENV_URL}, "
        "ini whimbrel_url). Its database name is the base of the test database's name.",
    )
    group.addoption(
        "--whimbrel-migrations",
        metavar="PATH",
        help=f"Migrations to apply to the test database (also ${ENV_MIGRATIONS}, "
        "ini whimbrel_migrations).",
    )
    group.addoption(
        "--whimbrel-keep",
        action="store_true",
        help="Keep the test database after the session (its URL is printed).",
    )
    parser.addini("whimbrel_url", "whimbrel: server URL for the test database")
    parser.addini("whimbrel_migrations", "whimbrel: migrations PATH, relative to this file")


def pytest_configure(config: pytest.Config) -> None:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    token = workerinput.get("whimbrel_token") if workerinput else None
    config.stash[_TOKEN] = token or uuid.uuid4().hex[:8]
    config.stash[_SETTINGS] = settings = _settings(config, workerinput)
    if settings is not None:
        config.pluginmanager.register(_session_plugin(), "whimbrel-session-database")


def _settings(config: pytest.Config, workerinput: dict[str, Any] | None) -> _Settings | None:
    url = (
        config.getoption("whimbrel_url") or os.environ.get(ENV_URL) or config.getini("whimbrel_url")
    )
    if not url:
        return None  # off: nothing else is read, imported or touched
    migrations = config.getoption("whimbrel_migrations") or os.environ.get(ENV_MIGRATIONS)
    if migrations:
        path = Path(migrations)
    else:
        ini = str(config.getini("whimbrel_migrations") or "")
        if not ini:
            raise pytest.UsageError(
                "whimbrel: a test database URL is configured but no migrations: pass "
                f"--whimbrel-migrations PATH, set {ENV_MIGRATIONS}, or set "
                "whimbrel_migrations in the pytest configuration"
            )
        base = config.inipath.parent if config.inipath else config.rootpath
        path = base / ini
    if not path.is_dir():
        raise pytest.UsageError(f"whimbrel: the migrations folder {path} does not exist")
    return _Settings(
        url=str(url),
        migrations=path.resolve(),
        keep=bool(config.getoption("whimbrel_keep")),
        token=config.stash[_TOKEN],
        worker=workerinput.get("workerid") if workerinput else None,
    )


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, on the controller: give every worker the session's token."""
    node.workerinput["whimbrel_token"] = node.config.stash[_TOKEN]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist, on the controller: collect what the workers kept, for the summary."""
    settings = node.config.stash.get(_SETTINGS, None)
    kept = getattr(node, "workeroutput", {}).get("whimbrel_kept", [])
    if settings is not None:
        settings.kept.extend(kept)


def pytest_report_header(config: pytest.Config) -> str | None:
    settings = config.stash.get(_SETTINGS, None)
    if settings is None:
        return None
    from whimbrel.urls import parse_url

    server = parse_url(settings.url)
    where = server.path if server.dialect == "sqlite" else f"{server.host or 'localhost'}"
    return (
        f"whimbrel: migrations {settings.migrations}, test database on {server.dialect} "
        f"{where} named {_base(server)}_test_{settings.token}*"
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    settings = config.stash.get(_SETTINGS, None)
    if settings is not None and settings.kept:
        for url in settings.kept:
            terminalreporter.write_line(f"whimbrel: kept the test database {url}")


# -- the session's database -----------------------------------------------------------------
def _session_plugin() -> object:
    """Registered only when configured: an autouse fixture that makes the session's database
    before the first test, whether or not that test asks for it (the code under test may
    read the database's URL from the environment)."""

    @pytest.fixture(scope="session", autouse=True)
    def _whimbrel_session_database(whimbrel_database: MigratedDatabase) -> None:
        pass

    # A module, because pytest looks for fixtures of a plugin object on its type.
    plugin = types.ModuleType("whimbrel_session_database")
    plugin._whimbrel_session_database = _whimbrel_session_database  # type: ignore[attr-defined]
    return plugin


def _require(config: pytest.Config) -> _Settings:
    settings = config.stash.get(_SETTINGS, None)
    if settings is None:
        pytest.fail(_NOT_CONFIGURED, pytrace=False)
    return settings


@pytest.fixture(scope="session")
def whimbrel_database(request: pytest.FixtureRequest) -> Iterator[MigratedDatabase]:
    """The session's test database: created and migrated once, dropped at the end."""
    settings = _require(request.config)
    factory = _factory(request.config)
    try:
        database = factory.create()
    except BaseException:
        factory.discard()
        raise
    try:
        yield database
    finally:
        factory.finish(database, keep=settings.keep)
        if settings.keep:
            from whimbrel.urls import redact

            shown = redact(database.url)
            settings.kept.append(shown)
            workeroutput = getattr(request.config, "workeroutput", None)
            if workeroutput is not None:
                workeroutput.setdefault("whimbrel_kept", []).append(shown)


@pytest.fixture(scope="session")
def whimbrel_url(whimbrel_database: MigratedDatabase) -> str:
    """The URL of the session's migrated test database."""
    return whimbrel_database.url


@pytest.fixture
def whimbrel_connection(whimbrel_database: MigratedDatabase) -> Iterator[Any]:
    """A DB-API connection to the session's database, closed (uncommitted work rolled back)
    after the test. What a test commits stays for later tests: use whimbrel_clean_db when a
    test needs a database of its own."""
    conn = whimbrel_database.connect()
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def whimbrel_clean_db(
    request: pytest.FixtureRequest, whimbrel_database: MigratedDatabase
) -> Iterator[MigratedDatabase]:
    """A database of this test's own, empty and freshly migrated; dropped after the test."""
    factory = _factory(request.config)
    database = factory.clean()
    try:
        yield database
    finally:
        factory.drop(database)


_FACTORY = pytest.StashKey["_Factory"]()


def _factory(config: pytest.Config) -> _Factory:
    if _FACTORY not in config.stash:
        config.stash[_FACTORY] = _Factory(_require(config))
    return config.stash[_FACTORY]


# -- creating and dropping ---------------------------------------------------------------------
def _base(server: DatabaseURL) -> str:
    raw = Path(server.path).stem if server.dialect == "sqlite" and server.path else server.database
    base = re.sub(r"[^a-z0-9_]+", "_", (raw or "whimbrel").lower()).strip("_") or "whimbrel"
    return base[:30]


def _with_database(server: DatabaseURL, name: str) -> str:
    """The server's URL naming another database (for SQLite, another file)."""
    from urllib.parse import quote, urlsplit, urlunsplit

    if server.dialect == "sqlite":
        return f"sqlite:///{name}"
    parts = urlsplit(server.raw)
    return urlunsplit(parts._replace(path="/" + quote(name)))


class _Factory:
    """Makes the databases of one process: the session's, and clean ones from a template.

    A clean database is a copy of a pristine template that no test ever touches: PostgreSQL
    copies it with CREATE DATABASE ... TEMPLATE, SQLite copies the file; MySQL has no such
    copy, so there each clean database is created and migrated afresh.
    """

    def __init__(self, settings: _Settings) -> None:
        from whimbrel.urls import parse_url

        self.settings = settings
        self.server = parse_url(settings.url)
        suffix = f"_{settings.worker}" if settings.worker else ""
        self.prefix = f"{_base(self.server)}_test_{settings.token}{suffix}"
        self.counter = 0
        self.template: MigratedDatabase | None = None
        self.folder: Path | None = None
        if self.server.dialect == "sqlite":
            # One folder per process: each removes its own at the end.
            self.folder = Path(tempfile.mkdtemp(prefix=f"whimbrel-pytest-{self.prefix}-"))

    def _database(self, name: str) -> MigratedDatabase:
        assert len(name) <= _MAX_NAME, name
        if self.folder is not None:
            path = str(self.folder / f"{name}.db")
            return MigratedDatabase(_with_database(self.server, path), path, "sqlite")
        return MigratedDatabase(_with_database(self.server, name), name, self.server.dialect)

    def create(self) -> MigratedDatabase:
        return self._migrated(self._database(self.prefix))

    def _migrated(self, database: MigratedDatabase) -> MigratedDatabase:
        from whimbrel import api
        from whimbrel import provisioning as provision
        from whimbrel.errors import WhimbrelError

        created = False
        try:
            created = provision.create_database(database.url)
            api.apply(self.settings.migrations, database.url)
        except WhimbrelError as exc:
            failure = exc.message
        else:
            return database
        if created:  # leave no half-migrated database behind
            with contextlib.suppress(WhimbrelError):
                provision.drop_database(database.url)
        from whimbrel.urls import redact

        pytest.fail(
            f"whimbrel: cannot create the test database {redact(database.url)}: "
            f"{redact(failure, self.server.secrets())}",
            pytrace=False,
        )

    def clean(self) -> MigratedDatabase:
        self.counter += 1
        database = self._database(f"{self.prefix}_c{self.counter}")
        if self.server.dialect == "mysql":
            return self._migrated(database)
        if self.template is None:
            self.template = self._migrated(self._database(f"{self.prefix}_tpl"))
            if self.server.dialect == "postgres":
                # Nothing may connect to a template while it is copied; autovacuum won't.
                self._pg(f'ALTER DATABASE "{self.template.name}" WITH ALLOW_CONNECTIONS false')
        if self.server.dialect == "sqlite":
            shutil.copyfile(self.template.name, database.name)
        else:
            self._pg_copy(self.template.name, database.name)
        return database

    def _pg(self, sql: str) -> None:
        import psycopg

        session = self._database(self.prefix)  # ours, and it exists: run admin SQL there
        with psycopg.connect(session.url, autocommit=True) as conn:
            conn.execute(sql.encode())

    def _pg_copy(self, template: str, name: str) -> None:
        import psycopg

        deadline = time.monotonic() + 10
        while True:
            try:
                self._pg(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
                return
            except psycopg.errors.ObjectInUse:
                # "source database is being accessed by other users": brief, e.g. a
                # connection still closing; anything longer is a real problem.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def drop(self, database: MigratedDatabase) -> None:
        from whimbrel import provisioning as provision

        provision.drop_database(database.url)

    def discard(self) -> None:
        """After a failed start: remove this process's SQLite folder (nothing else exists)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def finish(self, session: MigratedDatabase, *, keep: bool) -> None:
        if self.template is not None:
            self.drop(self.template)
        if not keep:
            self.drop(session)
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)


def _connect(database: MigratedDatabase) -> Any:
    if database.dialect == "sqlite":
        import sqlite3

        return sqlite3.connect(database.name)
    if database.dialect == "postgres":
        import psycopg

        return psycopg.connect(database.url)
    from whimbrel.drivers.mysql import connection_kwargs, open_connection
    from whimbrel.urls import parse_url

    url = parse_url(database.url)
    return open_connection(url, {**connection_kwargs(url), "database": url.database})
