"""PostgreSQL: the SQL whimbrel sends, and psycopg 3 as one way of sending it.

A transactional migration travels in one round trip: `BEGIN; <file>; <tracking row>; COMMIT`
as one simple-protocol query. The server returns one result per statement, so the count of
results before the error says which statement failed, and the error position says where.

Two advisory locks guard a run. The run lock lives on a connection of its own, so nothing
a migration does to its session can release it. The work lock is held by the session that
runs the migrations: if whimbrel dies, the server goes on executing what it was sent, and the
next run waits for that, not just for the run lock.

`PostgresDriver` talks to the server through psycopg. `drivers.libpq.LibpqDriver` sends the
same SQL straight through libpq (ctypes), without importing psycopg; it overrides only the
plumbing at the end of this class: connecting, `_query`, `_wait_for_lock`, `_exchange`,
`in_transaction`. A query's first error reaches the shared code as a `Failure`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol, cast

from whimbrel.drivers.base import (
    AtomicItem,
    DeleteRow,
    Driver,
    InsertRow,
    LockWaitCallback,
    Progress,
    StatementError,
    TrackingWrite,
    client_identity,
    columns_by_table,
)
from whimbrel.errors import ConnectionFailed, DatabaseError, LockTimeout, RefusedError
from whimbrel.urls import DatabaseURL, redact

if TYPE_CHECKING:
    import psycopg

# One advisory lock per database for every whimbrel run, whatever the sets.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"whimbrel migrations").digest()[:8], "big", signed=True)
WORK_KEY = int.from_bytes(hashlib.sha256(b"whimbrel work").digest()[:8], "big", signed=True)
CLIENT_CHECK_MS = 1000

# Back to the connection's own user and settings (including ?options= of the URL), without
# the temporary tables a migration made; RESET ALL alone leaves a SET ROLE in force.
_RESET_SESSION = "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; DISCARD TEMP"

# Statements PostgreSQL refuses inside a transaction block.
_NO_TRANSACTION = re.compile(
    r"(?:(?:create|drop)\s+(?:unique\s+)?index\s+concurrently"
    r"|reindex\b.*\bconcurrently|vacuum|(?:create|drop)\s+(?:database|tablespace)"
    r"|alter\s+system|alter\s+database\b.*\bset\s+tablespace"
    # A procedure or DO block may COMMIT itself, which it cannot do in our transaction.
    r"|call|do)\b",
    re.IGNORECASE | re.DOTALL,
)


_DISCARD_ALL = re.compile(r"discard\s+all\b", re.IGNORECASE)


# libpq's codes (libpq-fe.h, postgres_ext.h), so that the shared code needs no psycopg.pq.
FATAL_ERROR = 7  # ExecStatusType PGRES_FATAL_ERROR
COPY_STATUSES = frozenset({3, 4, 8})  # PGRES_COPY_OUT, PGRES_COPY_IN, PGRES_COPY_BOTH
TRANSACTION_IDLE = 0  # PGTransactionStatusType PQTRANS_IDLE
TRANSACTION_INERROR = 3  # PQTRANS_INERROR: in a transaction that failed
DIAG_SEVERITY = ord("S")  # PG_DIAG_SEVERITY
DIAG_SQLSTATE = ord("C")
DIAG_MESSAGE_PRIMARY = ord("M")
DIAG_MESSAGE_DETAIL = ord("D")
DIAG_MESSAGE_HINT = ord("H")
DIAG_STATEMENT_POSITION = ord("P")
DIAG_CONTEXT = ord("W")


class Connection(Protocol):
    """A connection to the server: psycopg's, or drivers.libpq's session."""

    def close(self) -> None: ...


class Failure(NamedTuple):
    """The first error result of a query, and how many results came before it."""

    result_index: int  # how many results came before it
    primary: str  # the message, without its severity
    sqlstate: str | None
    position: int | None  # 0-based offset into the query
    detail: str | None
    hint: str | None
    context: str | None
    message: str  # libpq's whole message without its severity, as psycopg's str(error)


def failure_from(
    index: int, field: Callable[[int], bytes | None], error_message: bytes | None
) -> Failure:
    """A Failure from an error result's fields (`field` is PQresultErrorField)."""

    def text(code: int) -> str | None:
        value = field(code)
        return value.decode("utf-8", "replace") if value is not None else None

    whole = (error_message or b"").decode("utf-8", "replace")
    message = whole
    if (severity := text(DIAG_SEVERITY)) and message.startswith(severity + ":"):
        message = message[len(severity) + 1 :]
    position = text(DIAG_STATEMENT_POSITION)
    return Failure(
        index,
        text(DIAG_MESSAGE_PRIMARY) or whole,
        text(DIAG_SQLSTATE),
        int(position) - 1 if position else None,
        text(DIAG_MESSAGE_DETAIL),
        text(DIAG_MESSAGE_HINT),
        text(DIAG_CONTEXT),
        message.strip() or "no error details available",
    )


class Exchange(NamedTuple):
    """What a query sent by `_exchange` returned."""

    results: int  # how many results the server sent (up to a COPY)
    failure: Failure | None  # the first error
    copy: bool  # the last result started a COPY


def _literal(value: object) -> str:
    if type(value) is str:  # the common case first: a tracking row is mostly text
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        # repr() spells infinities and NaN as Python does; PostgreSQL reads them quoted.
        return repr(value) if math.isfinite(value) else f"'{value!r}'::float8"
    text = str(value)
    # E'' strings read the same whatever standard_conforming_strings says.
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


_identity_literal = functools.lru_cache(maxsize=4)(_literal)  # the same for every row


def connection_options(
    url: DatabaseURL, *, connect_timeout: float, application_name: str
) -> dict[str, str]:
    """libpq connection keywords whimbrel adds to the URL's (which win where given)."""
    options = {"client_encoding": "UTF8"}
    if "connect_timeout" not in url.params:
        options["connect_timeout"] = str(max(2, round(connect_timeout)))
    if "application_name" not in url.params:
        options["application_name"] = application_name[:63]
    return options


class PostgresDriver(Driver):
    dialect: ClassVar = "postgres"
    transactional_ddl: ClassVar = True
    batches_atomic: ClassVar = True

    def __init__(self, url: DatabaseURL, *, connect_timeout: float, application_name: str) -> None:
        super().__init__(url)
        self._options = connection_options(
            url, connect_timeout=connect_timeout, application_name=application_name
        )
        self.conn: Connection = self._connect()
        self.lock_conn: Connection | None = None
        # If whimbrel dies mid-migration, the server would otherwise run what it was sent to
        # its COMMIT; polling the client socket makes it abort instead (PostgreSQL 14+).
        # Set in the same round trip as the schema query, and again after every RESET ALL.
        watch = self._server_version() >= 140000
        self._watch_client = (
            f"; SET client_connection_check_interval = {CLIENT_CHECK_MS}" if watch else ""
        )
        check = f", set_config('client_connection_check_interval', '{CLIENT_CHECK_MS}', false)"
        try:
            schema = self.fetch("SELECT current_schema()" + (check if watch else ""))[0][0]
        except BaseException:
            self.conn.close()
            raise
        # The session reset that ends every migration, watch setting included.
        self._reset_sql = _RESET_SESSION + self._watch_client
        self._reset_results = self._reset_sql.count(";") + 1  # for counting results
        self.run_lock_holder: Driver | None = None  # see adopt_run_lock
        self._session_reset = False
        if schema is None:
            self.conn.close()
            raise RefusedError(
                f"{url}: the search_path names no existing schema to keep tracking tables in"
            )
        self.schema = str(schema)

    # -- plumbing: psycopg here, libpq in drivers.libpq.LibpqDriver ----------------------
    def _connect(self) -> Connection:
        import psycopg

        try:
            return psycopg.connect(self.url.raw, autocommit=True, **self._options)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise ConnectionFailed(f"cannot connect to {self.url}: {self._text(exc)}") from None

    @staticmethod
    def _psycopg(conn: Connection) -> psycopg.Connection[tuple[object, ...]]:
        return cast("psycopg.Connection[tuple[object, ...]]", conn)

    def _server_version(self) -> int:
        return self._psycopg(self.conn).info.server_version

    def _text(self, exc: BaseException) -> str:
        return redact(str(exc).strip(), self.url.secrets())

    def close(self) -> None:
        self.conn.close()
        if self.lock_conn is not None:
            self.lock_conn.close()
        if self.run_lock_holder is not None:
            self.run_lock_holder.close()
            self.run_lock_holder = None

    def adopt_run_lock(self, holder: Driver) -> None:
        """Use `holder`'s session, which already holds the run lock, as the lock session."""
        self.run_lock_holder = holder

    def _query(
        self, sql: str, params: Sequence[object], conn: Connection | None = None
    ) -> list[tuple[object, ...]]:
        import psycopg

        connection = self._psycopg(conn or self.conn)
        try:
            with connection.cursor() as cur:
                cur.execute(sql.encode(), params or None)
                return cur.fetchall() if cur.description else []
        except psycopg.OperationalError as exc:
            if connection.broken or exc.sqlstate is None:
                raise ConnectionFailed(
                    f"lost the connection to {self.url}: {self._text(exc)}"
                ) from None
            raise DatabaseError(self._text(exc)) from None
        except psycopg.Error as exc:
            raise DatabaseError(self._text(exc)) from None

    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        return self._query(sql, params)

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        self._query(sql, params)

    def quote(self, identifier: str) -> str:
        return '"' + identifier.replace('"', '""') + '"'

    def qualified(self, table: str) -> str:
        return f"{self.quote(self.schema)}.{self.quote(table)}"

    def now_sql(self) -> str:
        return "clock_timestamp()"

    def to_datetime(self, value: object) -> datetime | None:
        return value if isinstance(value, datetime) else None

    # -- lock ---------------------------------------------------------------------------
    def acquire_lock(self, timeout: float, on_wait: LockWaitCallback) -> None:
        deadline = time.monotonic() + timeout
        if self.run_lock_holder is None:
            self.lock_conn = self._connect()
            self._lock(self.lock_conn, LOCK_KEY, timeout, on_wait)
        # Free unless a killed run's last statement is still executing on the server.
        self._lock(self.conn, WORK_KEY, max(0.001, deadline - time.monotonic()), on_wait)

    def _lock(self, conn: Connection, key: int, timeout: float, on_wait: LockWaitCallback) -> None:
        if self._query("SELECT pg_try_advisory_lock(%s)", (key,), conn)[0][0]:
            return
        holder = self.lock_holder(key)
        on_wait(holder)
        if not self._wait_for_lock(conn, key, max(1, int(timeout * 1000))):
            raise LockTimeout(
                f"gave up after {timeout:g} s waiting for the migration lock on {self.url}"
                + (f", held by {self.lock_holder(key) or holder}" if holder else "")
            )

    def _wait_for_lock(self, conn: Connection, key: int, timeout_ms: int) -> bool:
        """Wait for advisory lock `key` on `conn`: True once held, False at the timeout."""
        import psycopg

        connection = self._psycopg(conn)
        try:
            connection.execute(f"SET lock_timeout = {timeout_ms}".encode())
            connection.execute(b"SELECT pg_advisory_lock(%s)", (key,))
        except psycopg.errors.LockNotAvailable:
            return False
        except psycopg.Error as exc:
            raise DatabaseError(f"waiting for the migration lock: {self._text(exc)}") from None
        finally:
            with contextlib.suppress(psycopg.Error):
                connection.execute(b"RESET lock_timeout")
        return True

    def lock_holder(self, key: int = LOCK_KEY) -> str | None:
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        # The start time as text from the server, in the session's time zone: the same
        # whichever client reads it.
        rows = self.fetch(
            "SELECT a.pid, a.application_name, a.usename, a.client_addr, "
            "to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ') "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (unsigned >> 32, unsigned & 0xFFFFFFFF),
        )
        if not rows:
            return None
        pid, app, user, addr, since = rows[0]
        return f"server pid {pid} ({app or 'no application name'}, user {user}, from " + (
            f"{addr or 'local socket'}, connected {since or ''})"
        )

    def release_lock(self) -> None:
        if self.lock_conn is not None or self.run_lock_holder is not None:
            with contextlib.suppress(Exception):
                # A transaction with an ID commits synchronously, flushing the WAL up to
                # here: every commit this run made without waiting is durable from now on.
                self.execute("SELECT txid_current()")
            with contextlib.suppress(Exception):
                self.execute("SELECT pg_advisory_unlock_all()")
            # The sessions' advisory locks go with them.
            if self.lock_conn is not None:
                self.lock_conn.close()
                self.lock_conn = None
            if self.run_lock_holder is not None:
                self.run_lock_holder.close()
                self.run_lock_holder = None

    # -- tracking tables ----------------------------------------------------------------
    def table_columns(self, table: str) -> set[str] | None:
        rows = self.fetch(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (self.schema, table),
        )
        if rows:
            return {str(r[0]) for r in rows}
        exists = self.fetch(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (self.schema, table),
        )
        return set() if exists else None

    def tables_columns(self, tables: Sequence[str]) -> dict[str, set[str]]:
        rows = self.fetch(
            "SELECT c.relname, a.attname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
            "AND NOT a.attisdropped "
            "WHERE n.nspname = %s AND c.relname = ANY(%s)",
            (self.schema, list(tables)),
        )
        return columns_by_table(rows)

    def create_table(self, table: str) -> None:
        qualified = self.qualified(table)
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {qualified} ("
            "version BIGINT PRIMARY KEY, "
            "name TEXT NOT NULL, "
            "file TEXT NOT NULL, "
            "sha256 CHAR(64) NOT NULL, "
            "status TEXT NOT NULL, "
            "statements_done INTEGER NOT NULL DEFAULT 0, "
            "statements_sha256 CHAR(64), "
            "error TEXT, "
            "down_sql TEXT, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), "
            "duration_ms DOUBLE PRECISION, "
            "applied_by TEXT)"
        )
        self.execute(
            f"COMMENT ON TABLE {qualified} IS "
            + _literal(f"whimbrel: applied migrations of the set {table}")
        )

    # -- running migrations -------------------------------------------------------------
    def _render(self, write: TrackingWrite, started: str = "statement_timestamp()") -> str:
        if isinstance(write, DeleteRow):
            return f"DELETE FROM {self.qualified(write.table)} WHERE version = {write.version}"
        assert isinstance(write, InsertRow)
        row = write.row
        duration = (
            _literal(row.duration_ms)
            if row.duration_ms is not None
            else f"EXTRACT(EPOCH FROM clock_timestamp() - {started}) * 1000"
        )
        values = ", ".join(
            [
                _literal(row.version),
                _literal(row.name),
                _literal(row.file),
                _literal(row.sha256),
                _literal(row.status),
                _literal(row.statements_done),
                _literal(row.statements_sha256),
                "NULL",
                _literal(row.down_sql),
                "clock_timestamp()",
                duration,
                _identity_literal(client_identity()),
            ]
        )
        return (
            f"INSERT INTO {self.qualified(write.table)} (version, name, file, sha256, status, "
            "statements_done, statements_sha256, error, down_sql, applied_at, duration_ms, "
            f"applied_by) VALUES ({values})"
        )

    def elapsed_ms_sql(self) -> str:
        return "EXTRACT(EPOCH FROM clock_timestamp() - applied_at) * 1000"

    def _render_progress(self, progress: Progress) -> str:
        sql, params = self.progress_sql(progress)
        return sql % tuple(_literal(value) for value in params)

    def run_atomic(
        self,
        sql: str,
        statements: Iterable[str] | None,
        writes: Sequence[TrackingWrite],
        pieces: Sequence[tuple[int, int, int]] | None = None,
    ) -> None:
        tail = "".join(self._render(w) + ";\n" for w in writes)
        if pieces is not None and len(pieces) > 1:
            self._send("BEGIN")
            self._run_pieces(sql, pieces, tail + "COMMIT;\n" + self._reset_sql)
        else:
            self._run_wrapped(sql, tail, reset_after=True)
        self._session_reset = True  # after_migration has nothing left to do

    def run_in_transaction(
        self, sql: str, statements: Iterable[str] | None, writes: Sequence[TrackingWrite]
    ) -> None:
        tail = "".join(self._render(w) + ";\n" for w in writes)
        self._run_wrapped(sql, tail, own_transaction=False)

    def _run_pieces(self, sql: str, pieces: Sequence[tuple[int, int, int]], tail: str) -> None:
        """A big section inside the open transaction, one slice of whole statements per
        round trip, then our tail; only one slice is ever encoded and buffered at a time."""
        for start, end, first in pieces:
            if failure := self._send(sql[start:end] + "\n;\n"):
                self.rollback()
                position = failure.position
                offset = start + position if position is not None else None
                if offset is not None and not start <= offset < end:
                    offset = None
                raise StatementError(
                    self._message(failure),
                    index=first + failure.result_index,
                    position=offset,
                    sqlstate=failure.sqlstate,
                )
        as_ourselves = (
            "SET LOCAL SESSION AUTHORIZATION DEFAULT;\nSET LOCAL ROLE NONE;\n"
            "SET LOCAL synchronous_commit = off;\n"
        )
        if failure := self._send(as_ourselves + tail):
            self.rollback()
            # An index past every statement of the file says: our tracking write failed.
            raise StatementError(
                self._message(failure), index=sys.maxsize, sqlstate=failure.sqlstate
            )

    def run_many_in_transaction(self, items: Sequence[AtomicItem]) -> None:
        """All the migrations in one round trip, each followed by its tracking rows and a
        session reset; the count of results before an error (or its position) names the
        migration and the statement that failed. A big one (alone in its batch) goes in
        pieces."""
        pieces = items[0].pieces if len(items) == 1 else None
        if pieces is not None and len(pieces) > 1:
            item = items[0]
            tail = "".join(self._render(w) + ";\n" for w in item.writes)
            try:
                self._run_pieces(item.sql, pieces, tail + self._reset_sql)
            except StatementError as exc:
                exc.item = 0
                raise
            return
        self._run_many(items, own_transactions=False)

    def run_many_atomic(self, items: Sequence[AtomicItem]) -> None:
        # Each in its own transaction, committed without waiting for the WAL flush (see
        # _run_wrapped), all in one round trip: the server stops at the first error.
        self._run_many(items, own_transactions=True)

    def _run_many(self, items: Sequence[AtomicItem], *, own_transactions: bool) -> None:
        started_mark = "SELECT set_config('whimbrel.started', clock_timestamp()::text, true);\n"
        started = "current_setting('whimbrel.started')::timestamptz"
        begin = "BEGIN;\n" + started_mark if own_transactions else started_mark
        as_ourselves = "SET LOCAL SESSION AUTHORIZATION DEFAULT;\nSET LOCAL ROLE NONE;\n"
        commit = "COMMIT;\n" if own_transactions else ""
        if own_transactions:
            as_ourselves += "SET LOCAL synchronous_commit = off;\n"
        ours = as_ourselves.count(";") + bool(commit) + self._reset_results  # results
        ahead = begin.count(";")  # results before an item's first statement
        parts: list[str] = []
        offsets: list[int] = []  # where each item's SQL starts in the query
        result_counts: list[int] = []  # results each item produces, its SQL's first
        length = 0
        for item in items:
            tail = "".join(self._render(w, started) + ";\n" for w in item.writes)
            parts.append(begin)
            offsets.append(length + len(begin))
            chunk = item.sql + "\n;\n" + as_ourselves + tail + commit + self._reset_sql + ";\n"
            parts.append(chunk)
            length += len(begin) + len(chunk)
            result_counts.append(item.statement_count + len(item.writes) + ours)
        failure = self._send("".join(parts))
        del parts
        if failure is None:
            return
        self.rollback()
        position = failure.position
        number = None
        offset = None
        if position is not None:
            for candidate, start in enumerate(offsets):
                if start <= position < start + len(items[candidate].sql):
                    number, offset = candidate, position - start
                    break
        # Without a position inside a file's SQL, count results: those of BEGIN and the
        # started mark, then the item's.
        remaining = failure.result_index
        index = None
        for candidate, count in enumerate(result_counts):
            remaining -= ahead
            if remaining < count:
                if number is None:
                    number = candidate
                index = max(remaining, 0) if candidate == number else None
                break
            remaining -= count
        error = StatementError(
            self._message(failure), index=index, position=offset, sqlstate=failure.sqlstate
        )
        error.item = number if number is not None else len(items) - 1
        if own_transactions and failure.result_index == 0 and error.item > 0:
            # PostgreSQL parses the whole query before it runs any of it: a syntax error
            # in one migration stopped those before it too. Run them, then report it.
            self._run_many(items[: error.item], own_transactions=True)
        raise error

    def run_tracked(self, sql: str, progress: Progress, *, wrap: bool) -> None:
        if wrap:
            try:
                self._run_wrapped(sql, self._render_progress(progress) + ";\n")
                return
            except StatementError as exc:
                # Refused inside a transaction block (rolled back, nothing ran), and
                # _NO_TRANSACTION did not know it (REINDEX SCHEMA, a SUBSCRIPTION...).
                # Not DISCARD ALL: alone, it would release whimbrel's advisory locks.
                if exc.sqlstate != "25001" or _DISCARD_ALL.match(sql):
                    raise
        # Alone, so that statements such as CREATE INDEX CONCURRENTLY can run.
        self.run_statement(sql)
        self.update_progress(progress)

    def _run_wrapped(
        self, sql: str, tail: str, *, own_transaction: bool = True, reset_after: bool = False
    ) -> None:
        """`BEGIN; sql; tail COMMIT` in one round trip; the statement count names a failure.

        The tail (our tracking writes) runs as the connecting user, whatever role the
        migration switched to; SET LOCAL ends with the transaction. Without
        `own_transaction`, the caller opened the transaction and commits it. With
        `reset_after`, the session reset after a migration travels in the same round trip.

        The commit does not wait for the WAL flush (synchronous_commit off, for this
        transaction only): one transaction per migration would otherwise cost a disk flush
        each. A server crash can then lose the last few commits, but only whole ones, newest
        first, migration and tracking row together: as if the run had stopped earlier.
        `release_lock` makes everything durable before the lock is freed.
        """
        prefix = "BEGIN;\n" if own_transaction else ""
        as_ourselves = (
            "SET LOCAL SESSION AUTHORIZATION DEFAULT;\nSET LOCAL ROLE NONE;\n"
            "SET LOCAL synchronous_commit = off;\n"
        )
        end = "COMMIT" if own_transaction else ""
        if reset_after:
            end += ";\n" + self._reset_sql
        failure = self._send(prefix + sql + "\n;\n" + as_ourselves + tail + end)
        if failure is None:
            return
        self.rollback()
        position = failure.position
        offset = position - len(prefix) if position is not None else None
        if offset is not None and not 0 <= offset < len(sql):
            offset = None
        # Results: one for BEGIN (if we sent it), then one per statement of the file, then ours.
        index: int | None = failure.result_index - 1 if own_transaction else failure.result_index
        if index is not None and index < 0:
            index = None
        raise StatementError(
            self._message(failure), index=index, position=offset, sqlstate=failure.sqlstate
        )

    def run_statement(self, sql: str, index: int = 0) -> None:
        failure = self._send(sql)
        if failure is None:
            return
        position = failure.position
        raise StatementError(
            self._message(failure),
            index=index,
            position=position if position is not None and position < len(sql) else None,
            sqlstate=failure.sqlstate,
        )

    def can_wrap(self, sql: str) -> bool:
        return _NO_TRANSACTION.match(sql) is None

    def rollback(self) -> None:
        if self.in_transaction():
            self.execute("ROLLBACK")

    def reset_session(self) -> None:
        self.execute(self._reset_sql)

    def after_migration(self, changed_session: bool) -> None:
        # Cheap enough to do always: catches SETs hidden in DO blocks and functions.
        if self._session_reset:  # run_atomic sent the reset with the migration
            self._session_reset = False
            return
        self.reset_session()

    def _send(self, query: str) -> Failure | None:
        """Send `query` (any number of statements) in one round trip: its first error."""
        exchange = self._exchange(query)
        if exchange.copy:
            # Client-side COPY data is psql's business; prepare() refuses such files, so
            # this is only reached through COPY hidden in a function. Leave a clean state.
            self.conn.close()
            raise StatementError(
                "ERROR: COPY ... FROM STDIN / TO STDOUT needs client-side data, which "
                "migrations cannot carry; the connection was closed",
                index=exchange.results - 2,
            )
        return exchange.failure

    def _message(self, failure: Failure) -> str:
        lines = [f"ERROR: {failure.primary}"]
        if failure.sqlstate:
            lines[0] += f" (SQLSTATE {failure.sqlstate})"
        for label, value in (("DETAIL", failure.detail), ("HINT", failure.hint)):
            if value:
                lines.append(f"{label}: {value}")
        if failure.context and "PL/pgSQL" in failure.context:
            lines.append(f"CONTEXT: {failure.context}")
        return redact("\n".join(lines), self.url.secrets())

    # -- plumbing, continued ------------------------------------------------------------
    def in_transaction(self) -> bool:
        return self._psycopg(self.conn).pgconn.transaction_status != TRANSACTION_IDLE

    def _exchange(self, query: str) -> Exchange:
        """Send `query` and wait for all its results, whatever they are (errors included)."""
        import psycopg
        from psycopg import generators

        conn = self._psycopg(self.conn)
        pgconn = conn.pgconn
        try:
            with conn.lock:
                pgconn.send_query(query.encode())
                # On Ctrl-C, psycopg cancels the query on the server and drains its results.
                results = conn.wait(generators.execute(pgconn))
        except psycopg.OperationalError as exc:
            raise ConnectionFailed(
                f"lost the connection to {self.url}: {self._text(exc)}"
            ) from None
        except (KeyboardInterrupt, SystemExit):
            # Then roll back the transaction the cancel aborted (as LibpqDriver does), so
            # that the clean-up after it (session reset, dropping an empty tracking table
            # this run created) can run.
            if pgconn.transaction_status == TRANSACTION_INERROR:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(b"ROLLBACK")
            raise
        failure = next(
            (
                failure_from(index, result.error_field, result.error_message)
                for index, result in enumerate(results)
                if result.status == FATAL_ERROR
            ),
            None,
        )
        return Exchange(
            len(results), failure, bool(results) and results[-1].status in COPY_STATUSES
        )
