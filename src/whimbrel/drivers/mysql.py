"""MySQL and MariaDB, through PyMySQL.

DDL commits implicitly here, so a migration is never atomic: the engine records a
migration as `applying` first and advances its statement counter after every statement.
Each statement is sent as `BEGIN; <statement>; <progress>; COMMIT` in one round trip, so
DML and its progress commit together.

Two `GET_LOCK` locks guard a run. The run lock is held on a connection of its own, so that
a migration's `RELEASE_ALL_LOCKS()` cannot free it and the migration connection can be
replaced between migrations. The work lock is held by the migration connection itself: if
whimbrel dies, the server finishes the statement it was sent before that lock frees, and the
next run waits for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import re
import sys
import time
import types
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any, ClassVar

from whimbrel._fast import builder
from whimbrel.drivers.base import (
    APPLYING,
    TRACKING_COLUMNS,
    Driver,
    InsertRow,
    LockWaitCallback,
    Progress,
    StatementError,
    TrackingRow,
    TrackingWrite,
    columns_by_table,
    tracking_row,
)
from whimbrel.errors import ConnectionFailed, DatabaseError, LockTimeout, UsageError
from whimbrel.urls import DatabaseURL, redact

if TYPE_CHECKING:
    import pymysql

    Connection = pymysql.connections.Connection[pymysql.cursors.Cursor]

# Statements that never commit implicitly: a section made only of these is atomic here too.
_NO_IMPLICIT_COMMIT = re.compile(r"(?:insert|update|delete|replace|select|with)\b", re.IGNORECASE)
# Statements that commit implicitly (CREATE/ALTER/DROP/RENAME/TRUNCATE; not the TEMPORARY
# ones): our pending tracking writes can ride on that commit.
_IMPLICIT_COMMIT = re.compile(
    r"(?:create|alter|drop|rename|truncate)\b(?!(?:\s+or\s+replace)?\s+temporary\b)",
    re.IGNORECASE,
)
# MySQL reports "... near '...' at line N", N counted from the statement's first line.
_AT_LINE = re.compile(r" at line (\d+)$")
# Client-side errors: the server went away or could not be reached.
_CONNECTION_ERRORS = {2003, 2006, 2013, 2055}
_NOT_ROLLED_BACK = 1196  # ER_WARNING_NOT_COMPLETE_ROLLBACK
_MAX_LOCK_NAME = 64
# The columns of a tracking table as create_table makes them: (name, DATA_TYPE,
# CHARACTER_SET_NAME) in information_schema.COLUMNS. Only such a table is read as JSON,
# where these types come back exactly as PyMySQL's own conversions give them.
_OUR_COLUMN_TYPES = frozenset(
    {
        ("version", "bigint", None),
        ("name", "varchar", "utf8mb4"),
        ("file", "varchar", "utf8mb4"),
        ("sha256", "char", "utf8mb4"),
        ("status", "varchar", "utf8mb4"),
        ("statements_done", "int", None),
        ("statements_sha256", "char", "utf8mb4"),
        ("error", "text", "utf8mb4"),
        ("down_sql", "longtext", "utf8mb4"),
        ("applied_at", "datetime", None),
        ("duration_ms", "double", None),
        ("applied_by", "varchar", "utf8mb4"),
    }
)
assert {c for c, _, _ in _OUR_COLUMN_TYPES} == set(TRACKING_COLUMNS)
_MARIADB_VERSION = re.compile(r"(\d+)\.(\d+)\.\d+-MariaDB")


class MySQLDriver(Driver):
    dialect: ClassVar = "mysql"
    transactional_ddl: ClassVar = False

    def __init__(self, url: DatabaseURL, *, connect_timeout: float, application_name: str) -> None:
        super().__init__(url)
        import_pymysql()
        from pymysql.constants import CLIENT

        if not url.database:
            raise UsageError(f"the MySQL URL {url} names no database: add /DBNAME")
        self._connect_kwargs: dict[str, object] = {
            **connection_kwargs(url),
            "database": url.database,
            "autocommit": True,
            "client_flag": CLIENT.MULTI_STATEMENTS,
            "connect_timeout": max(1, round(connect_timeout)),
            "program_name": application_name[:32],
        }
        self.conn = self._connect()
        # Whether read_rows_many reads rows as JSON text: on MariaDB 10.5+ (10.11 is tested;
        # MySQL's JSON differs in details, so it keeps the plain rows), with the utf8mb4
        # connection the plain rows are decoded from; and which tables have exactly our
        # column types, as tables_columns last saw them.
        version = _MARIADB_VERSION.search(str(self.conn.server_version))  # type: ignore[attr-defined]
        mariadb = (int(version[1]), int(version[2])) if version else None
        self._json_rows = (
            mariadb is not None
            and mariadb >= (10, 5)
            and str(self._connect_kwargs["charset"]).lower() == "utf8mb4"
        )
        # MariaDB (10.2+ here) runs `BEGIN NOT ATOMIC ... END`: our tracking writes as one
        # statement, so one result to read instead of one per write (see _writes).
        self._compound = mariadb is not None and mariadb >= (10, 2)
        self._json_tables: set[str] = set()
        # Tracking writes that travel with the next statement that commits implicitly, or
        # before anything else this connection sends (_run).
        self._pending: list[str] = []
        self._kept_changes = False  # the last ROLLBACK could not undo everything
        self.lock_conn: Connection | None = None
        self.lock_name = _lock_name("whimbrel", url.database)
        self.work_lock_name = _lock_name("whimbrel-work", url.database)
        self._lock_timeout = 60.0

    def _connect(self) -> Connection:
        import pymysql

        try:
            # PyMySQL bounds only the TCP connect by connect_timeout; waiting for the server's
            # greeting and the login is bounded by read_timeout, so a peer that accepts and
            # stays silent would hang us. Bound them both, then lift it for the statements.
            timeout = self._connect_kwargs["connect_timeout"]
            conn = open_connection(self.url, {**self._connect_kwargs, "read_timeout": timeout})
        except pymysql.MySQLError as exc:
            raise ConnectionFailed(f"cannot connect to {self.url}: {self._describe(exc)}") from None
        conn._read_timeout = None
        if hasattr(conn, "_current_timeout"):  # PyMySQL >= 1.1.1 re-applies it lazily
            conn._current_timeout = None
        conn._sock.settimeout(None)
        return conn  # type: ignore[no-any-return]

    def _describe(self, exc: BaseException) -> str:
        args: tuple[object, ...] = getattr(exc, "args", ())
        if len(args) >= 2 and isinstance(args[0], int):
            text = f"ERROR {args[0]}: {args[1]}"
        else:
            text = str(exc)
        return redact(text, self.url.secrets())

    def close(self) -> None:
        # Every path that ends a run flushes first; this catches one that did not, since
        # held writes would be lost with the session (and leave a finished step dirty).
        with contextlib.suppress(Exception):
            self._flush_pending()
        for conn in (self.conn, self.lock_conn):
            if conn is not None:
                with contextlib.suppress(Exception):  # already gone
                    conn.close()

    # -- plumbing -----------------------------------------------------------------------
    def _run(
        self, sql: str, params: Sequence[object], conn: Connection | None = None
    ) -> list[tuple[object, ...]]:
        """Run SQL (several statements allowed); raw PyMySQL errors propagate."""
        import pymysql

        conn = conn or self.conn
        if self._pending and conn is self.conn:
            self._flush_pending()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, tuple(params) if params else None)
                rows = list(cur.fetchall()) if cur.description else []
                while cur.nextset():
                    pass
                return rows
        except pymysql.OperationalError as exc:
            if exc.args and exc.args[0] in _CONNECTION_ERRORS:
                raise ConnectionFailed(
                    f"lost the connection to {self.url}: {self._describe(exc)}"
                ) from None
            raise
        except KeyboardInterrupt:
            self._kill_running_query(conn)
            raise

    def _kill_running_query(self, conn: Connection) -> None:
        # The server would go on running the statement after we leave; stop it.
        with contextlib.suppress(Exception):
            killer = self._connect()
            try:
                self._run(f"KILL QUERY {int(conn.thread_id())}", (), killer)  # type: ignore[no-untyped-call]
            finally:
                killer.close()

    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        import pymysql

        try:
            return self._run(sql, params)
        except pymysql.MySQLError as exc:
            raise DatabaseError(self._describe(exc)) from None

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        self.fetch(sql, params)

    def quote(self, identifier: str) -> str:
        return "`" + identifier.replace("`", "``") + "`"

    def qualified(self, table: str) -> str:
        assert self.url.database is not None
        return f"{self.quote(self.url.database)}.{self.quote(table)}"

    def now_sql(self) -> str:
        return "UTC_TIMESTAMP(6)"

    def elapsed_ms_sql(self) -> str:
        return "TIMESTAMPDIFF(MICROSECOND, applied_at, UTC_TIMESTAMP(6)) / 1000"

    def to_datetime(self, value: object) -> datetime | None:
        return value.replace(tzinfo=UTC) if isinstance(value, datetime) else None

    # -- lock ---------------------------------------------------------------------------
    def acquire_lock(self, timeout: float, on_wait: LockWaitCallback) -> None:
        self._lock_timeout = timeout
        deadline = time.monotonic() + timeout
        self.lock_conn = self._connect()
        self._lock(self.lock_conn, self.lock_name, timeout, on_wait)
        # Free unless a killed run's last statement is still executing on the server.
        remaining = max(0.001, deadline - time.monotonic())
        self._lock(self.conn, self.work_lock_name, remaining, on_wait)

    def _lock(self, conn: Connection, name: str, timeout: float, on_wait: LockWaitCallback) -> None:
        import pymysql

        try:
            if self._run("SELECT GET_LOCK(%s, 0)", (name,), conn)[0][0] == 1:
                return
            holder = self.lock_holder(name)
            on_wait(holder)
            wait = max(1, math.ceil(timeout))
            got = self._run("SELECT GET_LOCK(%s, %s)", (name, wait), conn)[0][0]
        except pymysql.MySQLError as exc:
            raise DatabaseError(f"waiting for the migration lock: {self._describe(exc)}") from None
        if got != 1:
            raise LockTimeout(
                f"gave up after {timeout:g} s waiting for the migration lock on {self.url}"
                + (f", held by {self.lock_holder(name) or holder}" if holder else "")
            )

    def lock_holder(self, name: str | None = None) -> str | None:
        owner = self.fetch("SELECT IS_USED_LOCK(%s)", (name or self.lock_name,))[0][0]
        if owner is None:
            return None
        rows = self.fetch(
            "SELECT USER, HOST, TIME FROM information_schema.PROCESSLIST WHERE ID = %s", (owner,)
        )
        if not rows:
            return f"connection {owner}"
        user, host, seconds = rows[0]
        return f"connection {owner} ({user}@{host}, connected for {seconds} s)"

    def release_lock(self) -> None:
        with contextlib.suppress(Exception):
            self._run("SELECT RELEASE_LOCK(%s)", (self.work_lock_name,))
        if self.lock_conn is not None:
            with contextlib.suppress(Exception):
                self.lock_conn.close()  # GET_LOCK locks end with their session
            self.lock_conn = None

    # -- tracking tables ----------------------------------------------------------------
    def table_columns(self, table: str) -> set[str] | None:
        rows = self.fetch(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (table,),
        )
        if rows:
            return {str(r[0]).lower() for r in rows}
        exists = self.fetch(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME = %s",
            (table,),
        )
        return set() if exists else None

    def tables_columns(self, tables: Sequence[str]) -> dict[str, set[str]]:
        if not tables:
            return {}
        marks = ", ".join(["%s"] * len(tables))
        # COLUMNS alone, with constants: MariaDB then opens only these tables (a join with
        # TABLES opens every table of the database: 60 ms with 1,000 of them). A table
        # always has a column, so it is there exactly when it has rows here.
        rows = self.fetch(
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME "
            f"FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME IN ({marks})",
            (self.url.database, *tables),
        )
        types: dict[str, set[tuple[str, str, object]]] = {}
        for table, column, data_type, charset in rows:
            types.setdefault(str(table), set()).add(
                (str(column).lower(), str(data_type).lower(), charset)
            )
        self._json_tables = {table for table, found in types.items() if found == _OUR_COLUMN_TYPES}
        # MySQL column names ignore case
        return columns_by_table(((r[0], r[1]) for r in rows), fold_case=True)

    def read_rows_many(self, tables: Sequence[str]) -> dict[str, list[TrackingRow]]:
        """As Driver.read_rows_many, but on MariaDB each row comes as one JSON text: PyMySQL
        then decodes one string per row, not twelve values with a converter each, and one
        json.loads parses them all (10,000 rows: ~0.08 s, not ~0.2 s).

        Only tables with exactly our column types are read so (tables_columns saw them);
        the others, and every table of a query the server refuses, are read the plain
        way, which reports any error as it always has.
        """
        if not self._json_rows:
            return super().read_rows_many(tables)
        result: dict[str, list[TrackingRow]] = {table: [] for table in tables}
        ours = [table for table in tables if table in self._json_tables]
        plain = [table for table in tables if table not in self._json_tables]
        for start in range(0, len(ours), _JSON_TABLES_PER_QUERY):
            chunk = ours[start : start + _JSON_TABLES_PER_QUERY]
            if not self._read_json_rows(chunk, result):
                result.update(super().read_rows_many(chunk))
        if plain:  # apart from ours: a UNION gives all its tables one column type
            result.update(super().read_rows_many(plain))
        return result

    def _read_json_rows(self, tables: Sequence[str], result: dict[str, list[TrackingRow]]) -> bool:
        """Read `tables` into `result` as JSON rows; False if the server refused."""
        import pymysql

        # Each row a JSON array (not JSON_ARRAYAGG: that copies every row through a
        # temporary table with BLOB fields, which costs more than it saves, and is cut at
        # group_concat_max_len). Its first value, where tracking_row expects the table's
        # name, is the table's place in `tables`.
        selects = [
            f"SELECT CONCAT('[{number},', {_JSON_ROW}) FROM {self.qualified(table)}"
            for number, table in enumerate(tables)
        ]
        found: list[list[Any]] = [[] for _ in tables]
        try:
            rows = self._run(" UNION ALL ".join(selects), ())
            for value in json.loads("[" + ",".join([row[0] for row in rows]) + "]"):  # type: ignore[misc]
                found[value[0]].append(value)
        except (pymysql.MySQLError, TypeError, ValueError, IndexError):
            return False
        version = itemgetter(1)
        for table, values in zip(tables, found, strict=True):
            values.sort(key=version)  # in the plain query's order (ORDER BY 1, 2)
            result[table] = _rows_from_json(values)
        return True

    def create_table(self, table: str) -> None:
        comment = f"whimbrel: applied migrations of the set {table}"
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {self.qualified(table)} ("
            "version BIGINT NOT NULL PRIMARY KEY, "
            "name VARCHAR(255) NOT NULL, "
            "file VARCHAR(1024) NOT NULL, "
            "sha256 CHAR(64) NOT NULL, "
            "status VARCHAR(16) NOT NULL, "
            "statements_done INT NOT NULL DEFAULT 0, "
            "statements_sha256 CHAR(64) NULL, "
            "error TEXT NULL, "
            "down_sql LONGTEXT NULL, "
            "applied_at DATETIME(6) NOT NULL, "
            "duration_ms DOUBLE NULL, "
            "applied_by VARCHAR(255) NULL"
            ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT=%s",
            (comment,),
        )

    # -- running migrations -------------------------------------------------------------
    def can_run_atomically(self, statements: Sequence[str]) -> bool:
        # DDL commits implicitly; plain DML on InnoDB can commit with its tracking row.
        return all(_NO_IMPLICIT_COMMIT.match(s) for s in statements)

    def run_tracked(self, sql: str, progress: Progress, *, wrap: bool) -> None:
        if wrap and _IMPLICIT_COMMIT.match(sql):
            self._run_ddl(sql.rstrip().rstrip(";"), progress)
            return
        self._flush_pending()
        if not wrap:
            super().run_tracked(sql, progress, wrap=False)
            return
        sql = sql.rstrip().rstrip(";")  # "stmt;\n;" would be an empty statement, an error here
        update = self._run_sql_params(*self.progress_sql(progress))
        # One round trip; the server stops at the first error, so nothing after it runs.
        try:
            self._statement(f"BEGIN;\n{sql}\n;\n{update};\nCOMMIT", 0, body=sql)
        except BaseException:
            with contextlib.suppress(Exception):
                self.rollback()
            raise

    def _run_ddl(self, sql: str, progress: Progress) -> None:
        """A statement that commits implicitly: `BEGIN; <our pending writes>; <statement>` in
        one round trip. The server commits our writes (the previous statement's progress,
        the previous migration's final status, this migration's `applying` row) as the
        statement starts, so the tracking costs one commit per statement, not two or three;
        this statement's own progress waits for the next round trip (or a flush).
        """
        import pymysql

        pending, self._pending = self._pending, []
        query = self._writes(pending) + sql if pending else sql
        ours = self._results_of_writes(pending)  # results before the statement's
        done = 0
        progress_sql: str | None = None
        try:
            with self.conn.cursor() as cur:
                cur.execute(query)
                done = 1
                if done <= ours:  # our writes' result: the server runs the statement now
                    progress_sql = self._run_sql_params(*self.progress_sql(progress))
                while cur.nextset():
                    done += 1
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] in _CONNECTION_ERRORS:
                raise ConnectionFailed(
                    f"lost the connection to {self.url}: {self._describe(exc)}"
                ) from None
            if done < ours:  # one of our writes failed: nothing of the statement ran
                with contextlib.suppress(Exception):
                    self.rollback()
                raise DatabaseError(self._describe(exc)) from None
            if pending and self.in_transaction():
                # Refused before its implicit commit (a syntax error, say): our writes are
                # still open, and they record finished work.
                self.execute("COMMIT")
            raise self._statement_error(exc, sql, 0, None) from None
        except KeyboardInterrupt:
            self._kill_running_query(self.conn)
            raise
        if pending and self.in_transaction():
            # It did not commit implicitly after all (a TEMPORARY table, say): commit our
            # writes, and the statement with them, now.
            self.execute("COMMIT")
        if progress_sql is None:
            progress_sql = self._run_sql_params(*self.progress_sql(progress))
        self._pending.append(progress_sql)

    def _writes(self, writes: Sequence[str], end: str = "") -> str:
        """Our tracking writes in a transaction (left open unless `end` is COMMIT), as SQL
        to send in front of a statement. On MariaDB they are one compound statement: one
        OK packet for PyMySQL to read instead of one per write and one for BEGIN."""
        if self._compound:
            body = "".join(w + "; " for w in writes) + (end + "; " if end else "")
            return f"BEGIN NOT ATOMIC START TRANSACTION; {body}END;\n"
        return "BEGIN;\n" + "".join(w + ";\n" for w in writes) + (end + ";\n" if end else "")

    def _results_of_writes(self, writes: Sequence[str]) -> int:
        if not writes:
            return 0
        return 1 if self._compound else 1 + len(writes)

    def _run_sql_params(self, sql: str, params: Sequence[object]) -> str:
        """`sql` with its %s filled in, as PyMySQL's mogrify does it (its escaping, which
        follows the session's NO_BACKSLASH_ESCAPES), with less work per value."""
        conn = self.conn
        literals = []
        for value in params:
            if value is None:
                literals.append("NULL")
            elif type(value) is int:
                literals.append(str(value))
            else:
                literals.append(conn.escape(value))
        return sql % tuple(literals)

    def run_statement(self, sql: str, index: int = 0) -> None:
        self._statement(sql, index)

    def write(self, write: TrackingWrite) -> None:
        if isinstance(write, InsertRow) and write.row.status == APPLYING:
            # A migration about to run: its row travels with its first statement.
            self._pending.append(self._run_sql_params(*self.insert_sql(write)))
            return
        super().write(write)

    def flush_tracking(self) -> None:
        self._flush_pending()

    def _flush_pending(self) -> None:
        """Send the tracking writes that wait for the next statement, as one transaction."""
        pending, self._pending = self._pending, []
        if pending:
            self.execute(self._writes(pending, end="COMMIT").removesuffix(";\n"))

    def _statement(self, sql: str, index: int, *, body: str | None = None) -> None:
        import pymysql

        try:
            self._run(sql, ())
        except pymysql.MySQLError as exc:
            raise self._statement_error(exc, sql, index, body) from None

    def _statement_error(
        self, exc: BaseException, sql: str, index: int, body: str | None
    ) -> StatementError:
        message = self._describe(exc)
        position = None
        if match := _AT_LINE.search(message):
            position = _offset_of_line(body if body is not None else sql, int(match[1]))
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        return StatementError(
            message,
            index=index,
            position=position,
            sqlstate=str(code) if code else None,
            relative_to_statement=True,
        )

    def in_transaction(self) -> bool:
        # Every OK packet carries the session's status: no round trip needed. With
        # autocommit off, every statement opens a transaction, so count that as open.
        from pymysql.constants import SERVER_STATUS

        status = int(self.conn.server_status)  # type: ignore[attr-defined]
        in_transaction = bool(status & SERVER_STATUS.SERVER_STATUS_IN_TRANS)
        return in_transaction or not status & SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT

    def rollback(self) -> None:
        # Only after a failure: one more round trip to learn whether it undid everything.
        self._kept_changes = False
        self.execute("ROLLBACK")
        warnings = self.fetch("SHOW WARNINGS")
        self._kept_changes = any(w[1] == _NOT_ROLLED_BACK for w in warnings)

    def rollback_kept_changes(self) -> bool:
        return self._kept_changes

    def reset_session(self) -> None:
        self._flush_pending()
        # MySQL has no statement that resets a session's variables; a new session does.
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = self._connect()
        if self.lock_conn is not None:  # we hold the run lock, so this is free at once
            self._lock(self.conn, self.work_lock_name, self._lock_timeout, lambda _: None)


_JSON_TABLES_PER_QUERY = 200
# A tracking row as the rest of a JSON array: JSON_QUOTE for the text (exact for any
# character), numbers and the DATETIME(6) as the server writes them. CONCAT of JSON_QUOTEs
# costs the server ~10% less than one JSON_ARRAY of all twelve. A NULL where our table has
# NOT NULL makes the row NULL, and the table is read the plain way.
_JSON_ROW = (
    "version, ',', JSON_QUOTE(name), ',', JSON_QUOTE(file), ',', JSON_QUOTE(sha256), ',', "
    "JSON_QUOTE(status), ',', statements_done, ',', IFNULL(JSON_QUOTE(statements_sha256), "
    "'null'), ',', IFNULL(JSON_QUOTE(error), 'null'), ',', down_sql IS NOT NULL, ',\"', "
    "applied_at, '\",', IFNULL(duration_ms, 'null'), ',', IFNULL(JSON_QUOTE(applied_by), "
    "'null'), ']'"
)


_new_row = builder(TrackingRow)


def _rows_from_json(values: list[list[Any]]) -> list[TrackingRow]:
    """TrackingRows from the JSON arrays [number, version, ..., applied_by] of a table with
    our column types, as tracking_row makes them from the plain rows."""
    iso = datetime.fromisoformat
    try:
        # The values already have their types: no int() or str() to call 10,000 times.
        return [
            _new_row(
                v[1],
                v[2],
                v[3],
                v[4].strip(),
                v[5],
                v[6],
                None if v[7] is None else v[7].strip(),
                v[8],
                bool(v[9]),
                iso(v[10] + "+00:00"),  # a DATETIME(6), in UTC
                None if v[11] is None else float(v[11]),
                v[12],
            )
            for v in values
        ]
    except (TypeError, ValueError, AttributeError):  # a zero or invalid date, say
        return [tracking_row(v, _json_datetime) for v in values]


def _json_datetime(value: object) -> datetime | None:
    """applied_at, a DATETIME(6) as the server writes it: the naive UTC datetime PyMySQL
    makes of it, with its zone; None where PyMySQL gives up (a zero or invalid date)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value + "+00:00")
    except ValueError:
        return None


# What PyMySQL's auth module imports from `cryptography`, used only for MySQL 8's RSA
# password exchange (caching_sha2_password or sha256_password without TLS).
_DEFERRED_MODULES = (
    "cryptography.hazmat.primitives.hashes",
    "cryptography.hazmat.primitives.serialization",
    "cryptography.hazmat.primitives.asymmetric.padding",
)


class _Deferred(types.ModuleType):
    """Stands for a module until one of its attributes is used, then imports it."""

    def __getattr__(self, attribute: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attribute)


def import_pymysql() -> None:
    """`import pymysql`, minus ~15 ms: its auth module imports three modules of
    `cryptography` (and through them the OpenSSL bindings) for MySQL 8's RSA password
    exchange, which MariaDB and most MySQL setups never use. It gets stand-ins that import
    them on first use; everything else imports them as usual.
    """
    if "pymysql" in sys.modules:
        return
    stand_ins: dict[str, types.ModuleType] = {}
    if "cryptography" not in sys.modules:  # else it is paid for already
        stand_ins = {name: _Deferred(name) for name in _DEFERRED_MODULES}
    sys.modules.update(stand_ins)
    try:
        import pymysql  # noqa: F401
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


_CONNECTION_CLASS: type[Connection] | None = None


def _connection_class() -> type[Connection]:
    """PyMySQL's Connection, minus 26 ms per connection.

    Without TLS options PyMySQL tries TLS if the server offers it, unverified (CERT_NONE),
    but builds that context with ssl.create_default_context(), which loads the system's CA
    certificates it will never check. This builds the same unverified context without
    them. With TLS options (?ssl=true, ?ssl_ca=...) PyMySQL's own context is used.
    """
    global _CONNECTION_CLASS
    if _CONNECTION_CLASS is None:
        import ssl

        import pymysql

        class _Connection(pymysql.connections.Connection):
            def _create_ssl_ctx(self, sslp: dict[str, object]) -> ssl.SSLContext:
                if sslp:
                    return super()._create_ssl_ctx(sslp)  # type: ignore[misc, no-any-return]
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                return context

        _CONNECTION_CLASS = _Connection
    return _CONNECTION_CLASS


def connection_kwargs(url: DatabaseURL) -> dict[str, object]:
    """PyMySQL's keyword arguments for where and as whom the URL connects, its ?options
    checked (url_options); the database is the caller's to add."""
    return {
        "host": url.host or "localhost",
        "port": url.port or 3306,
        "user": url.user or "root",
        "password": url.password or "",
        **url_options(url),
    }


def open_connection(url: DatabaseURL, kwargs: dict[str, object]) -> Any:
    """A PyMySQL connection with `kwargs` (url_options' among them). TLS options that
    cannot be set up are a UsageError, TLS asked for and not used a ConnectionFailed;
    PyMySQL's own errors pass through."""
    try:
        conn = _connection_class()(**kwargs)  # type: ignore[call-overload]
    except (ValueError, OSError) as exc:  # building the TLS context: a CA that is no CA...
        raise UsageError(f"the MySQL URL {url}: its TLS options cannot be used: {exc}") from None
    if kwargs.get("ssl") and not hasattr(conn._sock, "cipher"):  # not an SSLSocket
        # PyMySQL < 1.2 falls back to plain text when the server offers no TLS.
        conn.close()
        raise ConnectionFailed(
            f"cannot connect to {url}: the URL asks for TLS, which the server does not offer"
        )
    return conn


_URL_OPTIONS = (
    "charset, socket (or unix_socket), ssl=true|false, ssl_ca, ssl_capath, ssl_cert, ssl_key, "
    "ssl_cipher, ssl_verify_cert, ssl_verify_identity, tls=true|false|skip-verify|preferred"
)
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def url_options(url: DatabaseURL) -> dict[str, object]:
    """PyMySQL's keyword arguments for the URL's ?options, checked: an unknown or misspelt
    option is refused, not ignored, and asking for TLS means TLS or no connection.

    `tls` takes dbmate's (go-sql-driver's) values: true verifies the server's certificate
    with the system's CAs, skip-verify encrypts without checking it. `ssl=true` is
    skip-verify; `ssl_ca` (or `ssl_capath`) verifies against those CAs. With none of them
    TLS is used if the server offers it, unverified."""
    import ssl

    from pymysql.charset import charset_by_name

    def fail(problem: str) -> UsageError:
        return UsageError(f"the MySQL URL {url}: {problem}")

    def boolean(key: str) -> bool:
        value = _BOOLEANS.get(url.params[key].lower())
        if value is None:
            raise fail(f"?{key}= takes true or false, not {url.params[key]!r}")
        return value

    options: dict[str, object] = {"charset": url.params.get("charset", "utf8mb4")}
    context: dict[str, object] = {}
    verify = False  # tls=true: the certificate and the host name
    for key, value in url.params.items():
        if key == "charset":
            if charset_by_name(value) is None:
                raise fail(f"unknown charset {value!r}")
        elif key in ("socket", "unix_socket"):
            options["unix_socket"] = value
        elif key in ("ssl_ca", "ssl_capath", "ssl_cert", "ssl_key"):
            if not os.path.exists(value):
                raise fail(f"?{key}= names {value!r}, which does not exist")
            context[key.removeprefix("ssl_")] = value
        elif key == "ssl_cipher":
            context["cipher"] = value
        elif key == "ssl_verify_cert":
            context["verify_mode"] = boolean(key)
        elif key == "ssl_verify_identity":
            context["check_hostname"] = boolean(key)
        elif key == "ssl":
            if boolean(key):
                context.setdefault("verify_mode", False)
            else:
                options["ssl_disabled"] = True
        elif key == "tls":
            mode = value.lower()
            if mode in ("true", "1"):
                verify = True
            elif mode == "skip-verify":
                context.setdefault("verify_mode", False)
            elif mode in ("false", "0"):
                options["ssl_disabled"] = True
            elif mode != "preferred":
                raise fail(f"?tls= takes true, false, skip-verify or preferred, not {value!r}")
        else:
            raise fail(f"unknown option {key!r} (known: {_URL_OPTIONS})")
    if (context or verify) and options.get("ssl_disabled"):
        raise fail("TLS options given with ssl=false or tls=false")
    has_ca = "ca" in context or "capath" in context
    if context.get("verify_mode") is False:
        # PyMySQL checks the host name whenever it has a CA, even of a certificate it is
        # told not to verify, which ssl refuses (a ValueError): no check means neither.
        context["check_hostname"] = False
    elif verify and has_ca:
        context.update(verify_mode=True, check_hostname=context.get("check_hostname", True))
    elif not has_ca and (
        verify or True in (context.get("verify_mode"), context.get("check_hostname"))
    ):
        # Checks asked for without a CA: PyMySQL would quietly check nothing. Use the
        # system's CAs, as Go's tls=true does.
        tls = ssl.create_default_context()
        tls.check_hostname = bool(context.get("check_hostname", True))
        if "cert" in context:
            tls.load_cert_chain(str(context["cert"]), context.get("key"))  # type: ignore[arg-type]
        if "cipher" in context:
            tls.set_ciphers(str(context["cipher"]))
        options["ssl"] = tls
    if context and "ssl" not in options:
        options["ssl"] = context
    return options


def _lock_name(prefix: str, database: str) -> str:
    # GET_LOCK names are server-wide and at most 64 characters.
    name = f"{prefix}:{database}"
    if len(name) > _MAX_LOCK_NAME:
        name = f"{prefix}:" + hashlib.sha256(database.encode()).hexdigest()[:40]
    return name


def _offset_of_line(text: str, line: int) -> int | None:
    offset = 0
    for _ in range(line - 1):
        offset = text.find("\n", offset) + 1
        if offset == 0:
            return None
    return offset
