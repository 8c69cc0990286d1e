"""A read-only PostgreSQL session straight through libpq (ctypes), for start-up-bound runs.

`import psycopg` costs about 120 ms, more than a whole no-op run of the peers. `inspect`,
and `apply` checking whether anything is pending, only read the tracking tables: two
queries. This reader loads the libpq that psycopg's binary package ships (or the system's),
connects with the same connection string and options as `PostgresDriver`, and asks the
server for each result as one JSON document, so a 10,000-row result costs one C call and
one `json.loads`, not 130,000 ctypes calls.

Anything it cannot do (no libpq, a query error) raises `Unavailable`, and the caller falls
back to `PostgresDriver`, which reports errors as it always has. A connection that fails is
reported at once (`ConnectionFailed`), so an unreachable server is not tried twice.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from whimbrel.drivers.base import FastPathUnavailable as Unavailable
from whimbrel.drivers.base import LockWaitCallback, TrackingRow, tracking_row
from whimbrel.drivers.postgres import LOCK_KEY, PostgresDriver, _literal
from whimbrel.errors import ConnectionFailed, LockTimeout
from whimbrel.urls import DatabaseURL, redact

_CONNECTION_OK = 0
_COMMAND_OK = 1
_TUPLES_OK = 2
_DIAG_SQLSTATE = ord("C")
_LOCK_SLICE_MS = 200  # how long a signal may wait while a queued run waits for the lock


class _LockNotAvailable(Exception):
    pass


_libpq: Any = None


def _load() -> Any:
    global _libpq
    if _libpq is not None:
        return _libpq
    import importlib.util

    candidates: list[str] = []
    spec = importlib.util.find_spec("psycopg_binary")
    if spec is not None and spec.submodule_search_locations:
        # auditwheel puts the bundled libpq (and what it links) beside the package.
        libs = os.path.join(
            os.path.dirname(next(iter(spec.submodule_search_locations))), "psycopg_binary.libs"
        )
        if os.path.isdir(libs):
            candidates += sorted(
                os.path.join(libs, name) for name in os.listdir(libs) if name.startswith("libpq")
            )
    candidates += ["libpq.so.5", "libpq.dylib"]
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            break
        except OSError:
            continue
    else:
        raise Unavailable("no libpq")
    p, s, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for name, restype, argtypes in (
        ("PQconnectdbParams", p, [ctypes.POINTER(s), ctypes.POINTER(s), i]),
        ("PQstatus", i, [p]),
        ("PQerrorMessage", s, [p]),
        ("PQfinish", None, [p]),
        ("PQexec", p, [p, s]),
        ("PQresultStatus", i, [p]),
        ("PQresultErrorField", s, [p, i]),
        ("PQntuples", i, [p]),
        ("PQgetvalue", ctypes.c_void_p, [p, i, i]),
        ("PQgetlength", i, [p, i, i]),
        ("PQgetisnull", i, [p, i, i]),
        ("PQclear", None, [p]),
    ):
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    _libpq = lib
    return lib


class LibpqReader(PostgresDriver):
    """Reads like PostgresDriver (same queries, same row values); runs nothing."""

    read_only: ClassVar[bool] = True

    def __init__(self, url: DatabaseURL, *, connect_timeout: float, application_name: str) -> None:
        self.url = url
        self._pq = _load()
        options: dict[str, str] = {"dbname": url.raw}
        if "connect_timeout" not in url.params:
            options["connect_timeout"] = str(max(2, round(connect_timeout)))
        if "application_name" not in url.params:
            options["application_name"] = application_name[:63]
        options["client_encoding"] = "UTF8"
        keys = (ctypes.c_char_p * (len(options) + 1))(*[k.encode() for k in options], None)
        values = (ctypes.c_char_p * (len(options) + 1))(
            *[v.encode() for v in options.values()], None
        )
        self._conn = self._pq.PQconnectdbParams(keys, values, 1)  # 1: dbname is a URL
        if not self._conn:
            raise Unavailable("out of memory")
        if self._pq.PQstatus(self._conn) != _CONNECTION_OK:
            message = (self._pq.PQerrorMessage(self._conn) or b"").decode("utf-8", "replace")
            self.close()
            raise ConnectionFailed(
                f"cannot connect to {url}: {redact(message.strip(), url.secrets())}"
            )
        self.lock_conn = None
        self.run_lock_holder = None
        self._session_reset = False
        schema = self.fetch("SELECT current_schema()")[0][0]
        if schema is None:
            self.close()
            raise Unavailable("no schema")  # PostgresDriver says why
        self.schema = str(schema)

    def close(self) -> None:
        if self._conn:
            self._pq.PQfinish(self._conn)
            self._conn = None

    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        if params:
            sql = sql % tuple(_param(value) for value in params)
        # One JSON document for the whole result: one value to fetch and one C-speed parse.
        rows = self._json(f"SELECT coalesce(json_agg(q), '[]') FROM ({sql}) q")
        return [tuple(row.values()) for row in rows]

    def _json(self, query: str) -> Any:
        """The one JSON value that `query` returns, parsed."""
        result = self._pq.PQexec(self._conn, query.encode())
        try:
            if self._pq.PQresultStatus(result) != _TUPLES_OK or self._pq.PQntuples(result) != 1:
                raise Unavailable("query failed")
            length = self._pq.PQgetlength(result, 0, 0)
            text = ctypes.string_at(self._pq.PQgetvalue(result, 0, 0), length)
        finally:
            self._pq.PQclear(result)
        return json.loads(text)

    def read_rows_many(self, tables: Sequence[str]) -> dict[str, list[TrackingRow]]:
        # Each row as a JSON array: a third of the text of json_agg(q)'s objects.
        result: dict[str, list[TrackingRow]] = {table: [] for table in tables}
        for start in range(0, len(tables), 200):
            selects = [
                f"SELECT json_build_array({_literal(table)}, version, name, file, sha256, "
                "status, statements_done, statements_sha256, error, down_sql IS NOT NULL, "
                f"applied_at, duration_ms, applied_by) AS r FROM {self.qualified(table)}"
                for table in tables[start : start + 200]
            ]
            query = f"SELECT coalesce(json_agg(r), '[]') FROM ({' UNION ALL '.join(selects)}) q"
            to_datetime = self.to_datetime
            for r in self._json(query):
                result[r[0]].append(tracking_row(r, to_datetime))
        return result

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        raise Unavailable("read-only")

    def acquire_run_lock(self, timeout: float, on_wait: LockWaitCallback) -> None:
        """Take the run lock on this connection, waiting as PostgresDriver does.

        The runs queued behind another one wait here, without psycopg; most then find that
        it did their work and never import psycopg at all. The one that has work left hands
        this connection, lock held, to PostgresDriver (`adopt_run_lock`).
        """
        if self._scalar(f"SELECT pg_try_advisory_lock({LOCK_KEY})"):
            return
        holder = self.lock_holder(LOCK_KEY)
        on_wait(holder)
        # A ctypes call blocks Python's signal handlers: wait in short slices, so that
        # Ctrl-C and SIGTERM stop a queued run at once, as they do on PostgresDriver.
        deadline = time.monotonic() + timeout
        self._command(f"SET lock_timeout = {_LOCK_SLICE_MS}")
        try:
            while True:
                try:
                    self._command(f"SELECT pg_advisory_lock({LOCK_KEY})")
                    return
                except _LockNotAvailable:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(
                            f"gave up after {timeout:g} s waiting for the migration lock on "
                            f"{self.url}"
                            + (
                                f", held by {self.lock_holder(LOCK_KEY) or holder}"
                                if holder
                                else ""
                            )
                        ) from None
        finally:
            self._command("RESET lock_timeout")

    def _scalar(self, sql: str) -> object:
        return self._json(f"SELECT to_json(({sql}))")

    def _command(self, sql: str) -> None:
        result = self._pq.PQexec(self._conn, sql.encode())
        try:
            if self._pq.PQresultStatus(result) not in (_COMMAND_OK, _TUPLES_OK):
                sqlstate = self._pq.PQresultErrorField(result, _DIAG_SQLSTATE)
                if sqlstate == b"55P03":
                    raise _LockNotAvailable
                raise Unavailable("command failed")
        finally:
            self._pq.PQclear(result)

    def to_datetime(self, value: object) -> datetime | None:
        # json_agg writes timestamptz as ISO 8601 with its offset.
        return datetime.fromisoformat(value) if isinstance(value, str) else None


def _param(value: object) -> str:
    if isinstance(value, list | tuple):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]::text[]"
    return _literal(value)


def open_reader(
    url: DatabaseURL, *, connect_timeout: float, application_name: str
) -> LibpqReader | None:
    """A LibpqReader, or None when the fast path is unavailable here."""
    try:
        return LibpqReader(url, connect_timeout=connect_timeout, application_name=application_name)
    except Unavailable:
        return None
