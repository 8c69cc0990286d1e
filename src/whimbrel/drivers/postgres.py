"""PostgreSQL, through psycopg 3.

A transactional migration travels in one round trip: `BEGIN; <file>; <tracking row>; COMMIT`
as one simple-protocol query. The server returns one result per statement, so the count of
results before the error says which statement failed, and the error position says where.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from whimbrel.drivers.base import (
    DeleteRow,
    Driver,
    InsertRow,
    LockWaitCallback,
    StatementError,
    TrackingWrite,
    client_identity,
)
from whimbrel.errors import ConnectionFailed, LockTimeout, RefusedError
from whimbrel.urls import DatabaseURL, redact

if TYPE_CHECKING:
    import psycopg
    from psycopg.pq.abc import PGresult

# One advisory lock per database for every whimbrel run, whatever the sets.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"whimbrel migrations").digest()[:8], "big", signed=True)


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
        import psycopg

        kwargs: dict[str, object] = {"autocommit": True, "client_encoding": "utf8"}
        if "connect_timeout" not in url.params:
            kwargs["connect_timeout"] = max(2, round(connect_timeout))
        if "application_name" not in url.params:
            kwargs["application_name"] = application_name[:63]
        try:
            self.conn: psycopg.Connection[tuple[object, ...]] = psycopg.connect(
                url.raw,
                **kwargs,  # type: ignore[arg-type]
            )
        except psycopg.Error as exc:
            raise ConnectionFailed(
                f"cannot connect to {url}: {redact(str(exc).strip(), url.secrets())}"
            ) from None
        schema = self.fetch("SELECT current_schema()")[0][0]
        if schema is None:
            self.conn.close()
            raise RefusedError(
                f"{url}: the search_path names no existing schema to keep tracking tables in"
            )
        self.schema = str(schema)

    def close(self) -> None:
        self.conn.close()

    # -- plumbing -----------------------------------------------------------------------
    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql.encode(), params or None)
            return cur.fetchall() if cur.description else []

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        self.conn.execute(sql.encode(), params or None)

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
        import psycopg

        if self.fetch("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))[0][0]:
            return
        holder = self.lock_holder()
        on_wait(holder)
        try:
            self.execute(f"SET lock_timeout = {max(1, int(timeout * 1000))}")
            self.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        except psycopg.errors.LockNotAvailable:
            raise LockTimeout(
                f"gave up after {timeout:g} s waiting for the migration lock on {self.url}"
                + (f", held by {self.lock_holder() or holder}" if holder else "")
            ) from None
        finally:
            self.execute("RESET lock_timeout")

    def lock_holder(self) -> str | None:
        unsigned = LOCK_KEY & 0xFFFFFFFFFFFFFFFF
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
        pid, app, user, addr, started = rows[0]
        since = started.strftime("%Y-%m-%d %H:%M:%S %Z") if isinstance(started, datetime) else ""
        return f"server pid {pid} ({app or 'no application name'}, user {user}, from " + (
            f"{addr or 'local socket'}, connected {since})"
        )

    def release_lock(self) -> None:
        self.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))

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
    def _render(self, write: TrackingWrite) -> str:
        if isinstance(write, DeleteRow):
            return f"DELETE FROM {self.qualified(write.table)} WHERE version = {write.version}"
        assert isinstance(write, InsertRow)
        row = write.row
        duration = (
            _literal(row.duration_ms)
            if row.duration_ms is not None
            else "EXTRACT(EPOCH FROM clock_timestamp() - now()) * 1000"
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

    def run_atomic(
        self, sql: str, statements: Sequence[str] | None, writes: Sequence[TrackingWrite]
    ) -> None:
        prefix = "BEGIN;\n"
        tail = "\n;\n" + "".join(self._render(w) + ";\n" for w in writes) + "COMMIT"
        results = self._send(prefix + sql + tail)
        error = self._first_error(results)
        if error is None:
            return
        result_index, result = error
        self._rollback_if_needed()
        position = self._position(result)
        offset = position - len(prefix) if position is not None else None
        if offset is not None and not 0 <= offset < len(sql):
            offset = None
        # Results: one for BEGIN, then one per statement of the file, then ours.
        index = result_index - 1 if result_index >= 1 else None
        raise StatementError(
            self._message(result), index=index, position=offset, sqlstate=self._sqlstate(result)
        )

    def run_statement(self, sql: str) -> None:
        results = self._send(sql)
        error = self._first_error(results)
        if error is None:
            return
        _, result = error
        position = self._position(result)
        raise StatementError(
            self._message(result),
            index=0,
            position=position if position is not None and position < len(sql) else None,
            sqlstate=self._sqlstate(result),
        )

    def _send(self, query: str) -> list[PGresult]:
        import psycopg
        from psycopg import generators

        pgconn = self.conn.pgconn
        try:
            with self.conn.lock:
                pgconn.send_query(query.encode())
                results: list[PGresult] = self.conn.wait(generators.execute(pgconn))
        except psycopg.OperationalError as exc:
            raise ConnectionFailed(
                f"lost the connection to {self.url}: {redact(str(exc).strip(), self.url.secrets())}"
            ) from None
        if results and results[-1].status in (_copy_statuses()):
            pgconn.put_copy_end(b"whimbrel does not support COPY ... FROM STDIN in migrations")
            results += self.conn.wait(generators.fetch_many(pgconn))
        return results

    def _first_error(self, results: list[PGresult]) -> tuple[int, PGresult] | None:
        from psycopg import pq

        for index, result in enumerate(results):
            if result.status == pq.ExecStatus.FATAL_ERROR:
                return index, result
        return None

    def _rollback_if_needed(self) -> None:
        from psycopg import pq

        if self.conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            self.execute("ROLLBACK")

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
        return "\n".join(lines)


def _copy_statuses() -> tuple[int, ...]:
    from psycopg import pq

    return (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_BOTH)
