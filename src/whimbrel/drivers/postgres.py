"""PostgreSQL, through psycopg 3.

A transactional migration travels in one round trip: `BEGIN; <file>; <tracking row>; COMMIT`
as one simple-protocol query. The server returns one result per statement, so the count of
results before the error says which statement failed, and the error position says where.

Two advisory locks guard a run. The run lock lives on a connection of its own, so nothing
a migration does to its session can release it. The work lock is held by the session that
runs the migrations: if whimbrel dies, the server goes on executing what it was sent, and the
next run waits for that, not just for the run lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

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
    from psycopg.pq.abc import PGresult

# One advisory lock per database for every whimbrel run, whatever the sets.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"whimbrel migrations").digest()[:8], "big", signed=True)
WORK_KEY = int.from_bytes(hashlib.sha256(b"whimbrel work").digest()[:8], "big", signed=True)
CLIENT_CHECK_MS = 1000

# Back to the connection's own user and settings (including ?options= of the URL); RESET
# ALL alone leaves a SET ROLE in force.
_RESET_SESSION = "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL"

# Statements PostgreSQL refuses inside a transaction block.
_NO_TRANSACTION = re.compile(
    r"(?:(?:create|drop)\s+(?:unique\s+)?index\s+concurrently"
    r"|reindex\b.*\bconcurrently|vacuum|(?:create|drop)\s+(?:database|tablespace)"
    r"|alter\s+system|alter\s+database\b.*\bset\s+tablespace"
    # A procedure or DO block may COMMIT itself, which it cannot do in our transaction.
    r"|call|do)\b",
    re.IGNORECASE | re.DOTALL,
)


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    # E'' strings read the same whatever standard_conforming_strings says.
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class PostgresDriver(Driver):
    dialect: ClassVar = "postgres"
    transactional_ddl: ClassVar = True

    def __init__(self, url: DatabaseURL, *, connect_timeout: float, application_name: str) -> None:
        super().__init__(url)
        self._connect_kwargs: dict[str, object] = {"autocommit": True, "client_encoding": "utf8"}
        if "connect_timeout" not in url.params:
            self._connect_kwargs["connect_timeout"] = max(2, round(connect_timeout))
        if "application_name" not in url.params:
            self._connect_kwargs["application_name"] = application_name[:63]
        self.conn = self._connect()
        self.lock_conn: psycopg.Connection[tuple[object, ...]] | None = None
        # If whimbrel dies mid-migration, the server would otherwise run what it was sent to
        # its COMMIT; polling the client socket makes it abort instead (PostgreSQL 14+).
        # Set in the same round trip as the schema query, and again after every RESET ALL.
        watch = self.conn.info.server_version >= 140000
        self._watch_client = (
            f"; SET client_connection_check_interval = {CLIENT_CHECK_MS}" if watch else ""
        )
        check = f", set_config('client_connection_check_interval', '{CLIENT_CHECK_MS}', false)"
        schema = self.fetch("SELECT current_schema()" + (check if watch else ""))[0][0]
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

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        import psycopg

        try:
            return psycopg.connect(self.url.raw, **self._connect_kwargs)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise ConnectionFailed(f"cannot connect to {self.url}: {self._text(exc)}") from None

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

    # -- plumbing -----------------------------------------------------------------------
    def _query(
        self,
        sql: str,
        params: Sequence[object],
        conn: psycopg.Connection[tuple[object, ...]] | None = None,
    ) -> list[tuple[object, ...]]:
        import psycopg

        try:
            with (conn or self.conn).cursor() as cur:
                cur.execute(sql.encode(), params or None)
                return cur.fetchall() if cur.description else []
        except psycopg.OperationalError as exc:
            if (conn or self.conn).broken or exc.sqlstate is None:
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

    def _lock(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        key: int,
        timeout: float,
        on_wait: LockWaitCallback,
    ) -> None:
        import psycopg

        if self._query("SELECT pg_try_advisory_lock(%s)", (key,), conn)[0][0]:
            return
        holder = self.lock_holder(key)
        on_wait(holder)
        try:
            conn.execute(f"SET lock_timeout = {max(1, int(timeout * 1000))}".encode())
            conn.execute(b"SELECT pg_advisory_lock(%s)", (key,))
        except psycopg.errors.LockNotAvailable:
            raise LockTimeout(
                f"gave up after {timeout:g} s waiting for the migration lock on {self.url}"
                + (f", held by {self.lock_holder(key) or holder}" if holder else "")
            ) from None
        except psycopg.Error as exc:
            raise DatabaseError(f"waiting for the migration lock: {self._text(exc)}") from None
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute(b"RESET lock_timeout")

    def lock_holder(self, key: int = LOCK_KEY) -> str | None:
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        rows = self.fetch(
            "SELECT a.pid, a.application_name, a.usename, a.client_addr, a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (unsigned >> 32, unsigned & 0xFFFFFFFF),
        )
        if not rows:
            return None
        pid, app, user, addr, backend_start = rows[0]
        started = self.to_datetime(backend_start)
        since = started.strftime("%Y-%m-%d %H:%M:%S %Z") if started is not None else ""
        return f"server pid {pid} ({app or 'no application name'}, user {user}, from " + (
            f"{addr or 'local socket'}, connected {since})"
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
                _literal(client_identity()),
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
            results = self._send(sql[start:end] + "\n;\n")
            if error := self._first_error(results):
                result_index, result = error
                self.rollback()
                position = self._position(result)
                offset = start + position if position is not None else None
                if offset is not None and not start <= offset < end:
                    offset = None
                raise StatementError(
                    self._message(result),
                    index=first + result_index,
                    position=offset,
                    sqlstate=self._sqlstate(result),
                )
        as_ourselves = (
            "SET LOCAL SESSION AUTHORIZATION DEFAULT;\nSET LOCAL ROLE NONE;\n"
            "SET LOCAL synchronous_commit = off;\n"
        )
        results = self._send(as_ourselves + tail)
        if error := self._first_error(results):
            _, result = error
            self.rollback()
            # An index past every statement of the file says: our tracking write failed.
            raise StatementError(
                self._message(result), index=sys.maxsize, sqlstate=self._sqlstate(result)
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
        started_mark = "SELECT set_config('whimbrel.started', clock_timestamp()::text, true);\n"
        started = "current_setting('whimbrel.started')::timestamptz"
        as_ourselves = "SET LOCAL SESSION AUTHORIZATION DEFAULT;\nSET LOCAL ROLE NONE;\n"
        parts: list[str] = []
        offsets: list[int] = []  # where each item's SQL starts in the query
        result_counts: list[int] = []  # results each item produces, its SQL's first
        length = 0
        for item in items:
            tail = "".join(self._render(w, started) + ";\n" for w in item.writes)
            parts.append(started_mark)
            offsets.append(length + len(started_mark))
            chunk = item.sql + "\n;\n" + as_ourselves + tail + self._reset_sql + ";\n"
            parts.append(chunk)
            length += len(started_mark) + len(chunk)
            result_counts.append(item.statement_count + 2 + len(item.writes) + self._reset_results)
        results = self._send("".join(parts))
        del parts
        error = self._first_error(results)
        if error is None:
            return
        result_index, result = error
        self.rollback()
        position = self._position(result)
        number = None
        offset = None
        if position is not None:
            for candidate, start in enumerate(offsets):
                if start <= position < start + len(items[candidate].sql):
                    number, offset = candidate, position - start
                    break
        # Without a position inside a file's SQL, count results: one for the started mark,
        # then the item's.
        remaining = result_index
        index = None
        for candidate, count in enumerate(result_counts):
            remaining -= 1
            if remaining < count:
                if number is None:
                    number = candidate
                index = max(remaining, 0) if candidate == number else None
                break
            remaining -= count
        failure = StatementError(
            self._message(result), index=index, position=offset, sqlstate=self._sqlstate(result)
        )
        failure.item = number if number is not None else len(items) - 1
        raise failure

    def run_tracked(self, sql: str, progress: Progress, *, wrap: bool) -> None:
        if wrap:
            self._run_wrapped(sql, self._render_progress(progress) + ";\n")
            return
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
        results = self._send(prefix + sql + "\n;\n" + as_ourselves + tail + end)
        error = self._first_error(results)
        if error is None:
            return
        result_index, result = error
        self.rollback()
        position = self._position(result)
        offset = position - len(prefix) if position is not None else None
        if offset is not None and not 0 <= offset < len(sql):
            offset = None
        # Results: one for BEGIN (if we sent it), then one per statement of the file, then ours.
        index: int | None = result_index - 1 if own_transaction else result_index
        if index is not None and index < 0:
            index = None
        raise StatementError(
            self._message(result), index=index, position=offset, sqlstate=self._sqlstate(result)
        )

    def run_statement(self, sql: str, index: int = 0) -> None:
        results = self._send(sql)
        error = self._first_error(results)
        if error is None:
            return
        _, result = error
        position = self._position(result)
        raise StatementError(
            self._message(result),
            index=index,
            position=position if position is not None and position < len(sql) else None,
            sqlstate=self._sqlstate(result),
        )

    def can_wrap(self, sql: str) -> bool:
        return _NO_TRANSACTION.match(sql) is None

    def in_transaction(self) -> bool:
        from psycopg import pq

        return self.conn.pgconn.transaction_status != pq.TransactionStatus.IDLE

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

    def _send(self, query: str) -> list[PGresult]:
        import psycopg
        from psycopg import generators, pq

        pgconn = self.conn.pgconn
        try:
            with self.conn.lock:
                pgconn.send_query(query.encode())
                results: list[PGresult] = self.conn.wait(generators.execute(pgconn))
        except psycopg.OperationalError as exc:
            raise ConnectionFailed(
                f"lost the connection to {self.url}: {self._text(exc)}"
            ) from None
        if results and results[-1].status in (
            pq.ExecStatus.COPY_IN,
            pq.ExecStatus.COPY_OUT,
            pq.ExecStatus.COPY_BOTH,
        ):
            # Client-side COPY data is psql's business; prepare() refuses such files, so
            # this is only reached through COPY hidden in a function. Leave a clean state.
            self.conn.close()
            raise StatementError(
                "ERROR: COPY ... FROM STDIN / TO STDOUT needs client-side data, which "
                "migrations cannot carry; the connection was closed",
                index=len(results) - 2,
            )
        return results

    def _first_error(self, results: list[PGresult]) -> tuple[int, PGresult] | None:
        from psycopg import pq

        for index, result in enumerate(results):
            if result.status == pq.ExecStatus.FATAL_ERROR:
                return index, result
        return None

    @staticmethod
    def _field(result: PGresult, name: str) -> str | None:
        from psycopg import pq

        value = result.error_field(getattr(pq.DiagnosticField, name))
        return value.decode("utf-8", "replace") if value is not None else None

    def _position(self, result: PGresult) -> int | None:
        position = self._field(result, "STATEMENT_POSITION")
        return int(position) - 1 if position else None

    def _sqlstate(self, result: PGresult) -> str | None:
        return self._field(result, "SQLSTATE")

    def _message(self, result: PGresult) -> str:
        primary = self._field(result, "MESSAGE_PRIMARY") or result.error_message.decode(
            "utf-8", "replace"
        )
        lines = [f"ERROR: {primary}"]
        if sqlstate := self._sqlstate(result):
            lines[0] += f" (SQLSTATE {sqlstate})"
        for label, name in (("DETAIL", "MESSAGE_DETAIL"), ("HINT", "MESSAGE_HINT")):
            if value := self._field(result, name):
                lines.append(f"{label}: {value}")
        if (context := self._field(result, "CONTEXT")) and "PL/pgSQL" in context:
            lines.append(f"CONTEXT: {context}")
        return redact("\n".join(lines), self.url.secrets())
