"""Database administration: does the database exist, create it, drop it, wait for the server.

The API other parts of whimbrel (watch --reset, the pytest plugin, `provision`) rely on:

- `database_exists(url) -> bool`
- `create_database(url) -> bool`: True when it created the database, False when it already
  existed (also when another process created it at the same moment).
- `drop_database(url) -> bool`: True when it dropped the database, False when there was none.
  Other sessions on it are ended first (PostgreSQL `WITH (FORCE)` on 13+, else
  `pg_terminate_backend`; MySQL/MariaDB `KILL`), so a test's leftover connection cannot
  block it.
- `wait_until_ready(url, timeout, need_database=True) -> Readiness`: retries with backoff
  until the server accepts connections (and, with `need_database`, the database exists);
  raises `ConnectionFailed` (exit 6) naming the redacted URL and the last error on time-out.

`url` is a URL string or a parsed `DatabaseURL`. How each database is reached:

- PostgreSQL: through the maintenance database `postgres` (`template1` when the target is
  `postgres` itself or `postgres` does not exist), with the URL's user, host and options.
  When neither lets the user in (pg_hba.conf, CONNECT revoked) but its own database does,
  that database exists: nothing to create.
- MySQL/MariaDB: a connection without a default database.
- SQLite: the file; creating it makes an empty file (a valid empty database) and dropping it
  removes the file with its `-journal`, `-wal` and `-shm` companions.

Errors: `UsageError` (2) for a URL naming no database, `ConnectionFailed` (6) when the server
cannot be reached, `DatabaseError` (9) when it refuses (e.g. no permission to create a
database). Messages never contain the password.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from whimbrel.errors import ConnectionFailed, DatabaseError, UsageError
from whimbrel.urls import DatabaseURL, parse_url, redact

if TYPE_CHECKING:
    import psycopg
    import pymysql

__all__ = [
    "Readiness",
    "create_database",
    "database_exists",
    "database_name",
    "drop_database",
    "wait_until_ready",
]

# The English server message; used only when the maintenance database is out of reach too.
_PG_MISSING = re.compile(r'database ".*" does not exist')
_MYSQL_UNKNOWN_DATABASE = 1049
_MYSQL_DATABASE_EXISTS = 1007
_MYSQL_NO_SUCH_DATABASE = 1008
_SQLITE_COMPANIONS = ("-journal", "-wal", "-shm")


def _parse(url: str | DatabaseURL) -> DatabaseURL:
    return url if isinstance(url, DatabaseURL) else parse_url(url)


def database_name(url: str | DatabaseURL) -> str:
    """The database the URL names (for SQLite, the file path); UsageError if none."""
    parsed = _parse(url)
    if parsed.dialect == "sqlite":
        assert parsed.path is not None
        return parsed.path
    name = parsed.database
    if parsed.dialect == "postgres":
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        # As libpq: ?dbname=..., the path, $PGDATABASE, else the user name.
        try:
            params = conninfo_to_dict(parsed.raw)
        except psycopg.Error as exc:  # e.g. an unknown ?parameter
            raise UsageError(
                f"the URL {parsed} cannot be used: {redact(str(exc), parsed.secrets())}"
            ) from None
        name = str(params.get("dbname") or "") or name or os.environ.get("PGDATABASE")
        if not name:
            name = str(params.get("user") or "") or os.environ.get("PGUSER") or _os_user()
    if not name:
        raise UsageError(f"the URL {parsed} names no database: add /DBNAME")
    # The server would cut a longer name short, and create or drop another database.
    limit, unit, size = (
        (63, "bytes", len(name.encode()))
        if parsed.dialect == "postgres"
        else (64, "characters", len(name))
    )
    if size > limit:
        raise UsageError(
            f"the database name {name!r} is {size} {unit} long; "
            f"{'PostgreSQL' if parsed.dialect == 'postgres' else 'MySQL'} allows at most {limit}"
        )
    return name


def _os_user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return None


@dataclass(frozen=True)
class Readiness:
    """What `wait_until_ready` found."""

    database_exists: bool
    attempts: int
    waited_s: float


# -- public API ---------------------------------------------------------------------------
def database_exists(url: str | DatabaseURL, *, connect_timeout: float = 10.0) -> bool:
    """Whether the database exists. Raises ConnectionFailed when the server is unreachable."""
    parsed = _parse(url)
    name = database_name(parsed)
    if parsed.dialect == "sqlite":
        return os.path.exists(name)
    if parsed.dialect == "postgres":
        try:
            with _pg_admin(parsed, connect_timeout) as conn:
                return _pg_exists(conn, name)
        except ConnectionFailed:
            if _pg_connects(parsed, connect_timeout):
                return True
            raise
    with _mysql_admin(parsed, connect_timeout) as conn:
        return _mysql_exists(conn, name)


def create_database(url: str | DatabaseURL, *, connect_timeout: float = 10.0) -> bool:
    """Create the database if it does not exist; True when this call created it."""
    parsed = _parse(url)
    name = database_name(parsed)
    if parsed.dialect == "sqlite":
        return _sqlite_create(name)
    if parsed.dialect == "postgres":
        return _pg_create(parsed, name, connect_timeout)
    return _mysql_create(parsed, name, connect_timeout)


def drop_database(url: str | DatabaseURL, *, connect_timeout: float = 10.0) -> bool:
    """Drop the database, ending other sessions on it first; True when it existed."""
    parsed = _parse(url)
    name = database_name(parsed)
    if parsed.dialect == "sqlite":
        return _sqlite_drop(name)
    if parsed.dialect == "postgres":
        return _pg_drop(parsed, name, connect_timeout)
    return _mysql_drop(parsed, name, connect_timeout)


def wait_until_ready(
    url: str | DatabaseURL,
    timeout: float = 60.0,
    *,
    need_database: bool = True,
    connect_timeout: float = 10.0,
    on_retry: Callable[[str], None] | None = None,
) -> Readiness:
    """Retry connecting, with backoff, until the server accepts connections.

    With `need_database` (the default) the database itself must exist; otherwise a server
    that is up but lacks the database is ready too (`database_exists` says which), which is
    what `--create-db --wait` needs. `on_retry` receives each failure's (redacted) message.
    On time-out raises ConnectionFailed naming the URL and the last error.
    """
    parsed = _parse(url)
    database_name(parsed)  # a URL without a database is a usage error, not worth waiting for
    started = time.monotonic()
    deadline = started + timeout
    delay = 0.1
    attempts = 0
    while True:
        attempts += 1
        remaining = deadline - time.monotonic()
        try:
            exists = _probe(parsed, max(1.0, min(connect_timeout, remaining)))
        except ConnectionFailed as exc:
            last = exc.message
        else:
            if exists or not need_database:
                return Readiness(exists, attempts, time.monotonic() - started)
            if parsed.dialect == "sqlite":
                last = f"the SQLite database file {database_name(parsed)} does not exist"
            else:
                last = (
                    f"the server is up, but the database {database_name(parsed)!r} does not "
                    "exist (--create-db creates it; provision does unless --no-create-db)"
                )
        if on_retry is not None:
            on_retry(last)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectionFailed(
                f"gave up after {timeout:g} s ({attempts} attempt{'s' if attempts != 1 else ''}) "
                f"waiting for {parsed} to accept connections; last error: {last}"
            )
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 2.0)


# -- probing ------------------------------------------------------------------------------
def _probe(url: DatabaseURL, connect_timeout: float) -> bool:
    """True: the database accepts connections; False: the server is up, the database missing.

    Raises ConnectionFailed when the server cannot be reached (or refuses us).
    """
    if url.dialect == "sqlite":
        assert url.path is not None
        folder = os.path.dirname(os.path.abspath(url.path))
        if not os.path.isdir(folder):
            raise ConnectionFailed(f"no folder {folder} for the SQLite database {url.path}")
        return os.path.exists(url.path)
    if url.dialect == "postgres":
        return _pg_probe(url, connect_timeout)
    return _mysql_probe(url, connect_timeout)


def _text(url: DatabaseURL, exc: BaseException) -> str:
    args: tuple[object, ...] = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):  # PyMySQL: (code, message)
        return redact(f"ERROR {args[0]}: {args[1]}", url.secrets())
    return redact(str(exc).strip(), url.secrets())


# -- PostgreSQL ---------------------------------------------------------------------------
def _pg_connect(
    url: DatabaseURL, connect_timeout: float, dbname: str | None = None
) -> psycopg.Connection[tuple[Any, ...]]:
    import psycopg
    from psycopg.conninfo import make_conninfo

    extra: dict[str, Any] = {"autocommit": True, "application_name": "whimbrel provision"}
    if "connect_timeout" not in url.params:
        extra["connect_timeout"] = max(2, round(connect_timeout))  # libpq's minimum is 2
    conninfo = url.raw if dbname is None else make_conninfo(url.raw, dbname=dbname)
    return psycopg.connect(conninfo, **extra)


@contextlib.contextmanager
def _pg_admin(
    url: DatabaseURL, connect_timeout: float, avoid: str | None = None
) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A connection to a maintenance database (not `avoid`, the one to drop)."""
    import psycopg

    candidates = [d for d in ("postgres", "template1") if d != avoid]
    error: psycopg.Error | None = None
    conn = None
    for dbname in candidates:
        try:
            conn = _pg_connect(url, connect_timeout, dbname)
            break
        except psycopg.Error as exc:
            error = error or exc
            if not _PG_MISSING.search(str(exc)):
                break
    if conn is None:
        assert error is not None
        raise ConnectionFailed(
            f"cannot connect to the PostgreSQL server of {url} (maintenance database "
            f"{candidates[0]!r}): {_text(url, error)}"
        )
    with conn:
        yield conn


def _pg_exists(conn: psycopg.Connection[tuple[Any, ...]], name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    )


def _pg_probe(url: DatabaseURL, connect_timeout: float) -> bool:
    import psycopg

    try:
        _pg_connect(url, connect_timeout).close()
        return True
    except psycopg.Error as exc:
        first = exc
    # The server gives no SQLSTATE at connection time: ask a maintenance database instead.
    try:
        with _pg_admin(url, connect_timeout) as conn:
            exists = _pg_exists(conn, database_name(url))
    except (ConnectionFailed, psycopg.Error):
        if _PG_MISSING.search(str(first)):
            return False
        raise ConnectionFailed(f"cannot connect to {url}: {_text(url, first)}") from None
    if not exists:
        return False
    raise ConnectionFailed(f"cannot connect to {url}: {_text(url, first)}")


def _pg_connects(url: DatabaseURL, connect_timeout: float) -> bool:
    """Whether the URL's own database accepts us (so it exists)."""
    import psycopg

    try:
        _pg_connect(url, connect_timeout).close()
    except psycopg.Error:
        return False
    return True


def _pg_create(url: DatabaseURL, name: str, connect_timeout: float) -> bool:
    import psycopg
    from psycopg import sql

    with contextlib.ExitStack() as stack:
        try:
            conn = stack.enter_context(_pg_admin(url, connect_timeout, avoid=name))
        except ConnectionFailed:
            # A user of just this database may not reach the maintenance databases
            # (pg_hba.conf, CONNECT revoked): if its own database lets it in, it exists.
            if _pg_connects(url, connect_timeout):
                return False
            raise
        if _pg_exists(conn, name):
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            return False  # created by someone else in the meantime
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot create database {name!r}: {_text(url, exc)}") from None
    return True


def _pg_drop(url: DatabaseURL, name: str, connect_timeout: float) -> bool:
    import psycopg
    from psycopg import sql

    with _pg_admin(url, connect_timeout, avoid=name) as conn:
        if not _pg_exists(conn, name):
            return False
        ident = sql.Identifier(name)
        try:
            if conn.info.server_version >= 130000:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            else:  # pragma: no cover - the test server is newer
                # Refuse new sessions, end the others, then drop.
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot drop database {name!r}: {_text(url, exc)}") from None
    return True


# -- MySQL / MariaDB ----------------------------------------------------------------------
def _mysql_connect(
    url: DatabaseURL, connect_timeout: float, *, database: bool
) -> pymysql.connections.Connection[Any]:
    from whimbrel.drivers.mysql import connection_kwargs, import_pymysql, open_connection

    import_pymysql()  # without the cryptography it does not need
    kwargs: dict[str, Any] = {
        **connection_kwargs(url),  # the migration connection's, checked the same way
        "autocommit": True,
        "connect_timeout": max(1, round(connect_timeout)),
        "program_name": "whimbrel provision",
    }
    if database:
        kwargs["database"] = database_name(url)
    return open_connection(url, kwargs)  # type: ignore[no-any-return]


@contextlib.contextmanager
def _mysql_admin(
    url: DatabaseURL, connect_timeout: float
) -> Iterator[pymysql.connections.Connection[Any]]:
    import pymysql

    try:
        conn = _mysql_connect(url, connect_timeout, database=False)
    except pymysql.MySQLError as exc:
        raise ConnectionFailed(
            f"cannot connect to the MySQL server of {url}: {_text(url, exc)}"
        ) from None
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _mysql_query(
    conn: pymysql.connections.Connection[Any], sql: str, params: tuple[object, ...] = ()
) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, params or None)
        return list(cur.fetchall()) if cur.description else []


def _mysql_exists(conn: pymysql.connections.Connection[Any], name: str) -> bool:
    return bool(
        _mysql_query(
            conn, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,)
        )
    )


def _mysql_quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _mysql_probe(url: DatabaseURL, connect_timeout: float) -> bool:
    import pymysql

    try:
        _mysql_connect(url, connect_timeout, database=True).close()
        return True
    except pymysql.MySQLError as exc:
        if exc.args and exc.args[0] == _MYSQL_UNKNOWN_DATABASE:
            return False
        raise ConnectionFailed(f"cannot connect to {url}: {_text(url, exc)}") from None


def _mysql_create(url: DatabaseURL, name: str, connect_timeout: float) -> bool:
    import pymysql

    with _mysql_admin(url, connect_timeout) as conn:
        try:
            # Plain CREATE: error 1007 tells "already there" apart, even in a race.
            _mysql_query(conn, f"CREATE DATABASE {_mysql_quote(name)}")
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] == _MYSQL_DATABASE_EXISTS:
                return False
            raise DatabaseError(f"cannot create database {name!r}: {_text(url, exc)}") from None
    return True


def _mysql_drop(url: DatabaseURL, name: str, connect_timeout: float) -> bool:
    import pymysql

    with _mysql_admin(url, connect_timeout) as conn:
        try:
            # A session inside the database (an idle transaction) would block DROP on its
            # metadata lock: end those first, as PostgreSQL's WITH (FORCE) does.
            others = _mysql_query(
                conn,
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s "
                "AND ID <> CONNECTION_ID()",
                (name,),
            )
            for (session_id,) in others:
                with contextlib.suppress(pymysql.MySQLError):  # it may have ended already
                    _mysql_query(conn, f"KILL {int(session_id)}")
            _mysql_query(conn, f"DROP DATABASE {_mysql_quote(name)}")
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] == _MYSQL_NO_SUCH_DATABASE:
                return False
            raise DatabaseError(f"cannot drop database {name!r}: {_text(url, exc)}") from None
    return True


# -- SQLite -------------------------------------------------------------------------------
def _sqlite_create(path: str) -> bool:
    try:
        # An empty file is a valid, empty SQLite database; O_EXCL settles races.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise DatabaseError(
            f"cannot create SQLite database {path}: {exc.strerror or exc}"
        ) from None
    os.close(fd)
    return True


def _sqlite_drop(path: str) -> bool:
    existed = False
    for candidate in (path, *(path + suffix for suffix in _SQLITE_COMPANIONS)):
        try:
            os.remove(candidate)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                raise UsageError(f"SQLite database {candidate} is a folder") from None
            raise DatabaseError(
                f"cannot remove SQLite database {candidate}: {exc.strerror or exc}"
            ) from None
        existed = existed or candidate == path
    return existed
