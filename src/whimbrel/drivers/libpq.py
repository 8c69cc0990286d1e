"""PostgreSQL straight through libpq (ctypes), without psycopg.

`import psycopg` costs about 120 ms, more than a whole no-op run of the peers, and most of
the client CPU a run of a thousand migrations spends beyond psql's. `LibpqDriver` loads the
libpq that psycopg's binary package ships (or the system's) with ctypes and sends exactly
the SQL `PostgresDriver` sends: it overrides only the plumbing (connecting, `_query`,
`_wait_for_lock`, `_exchange`, `in_transaction`).

- Waiting never blocks signals: a query is sent in nonblocking mode and its results are
  awaited with poll() on the socket, so Ctrl-C, and SIGTERM (which cli.py turns into
  KeyboardInterrupt), interrupt the wait. As psycopg does, the running statement is then
  cancelled on the server and its results drained (for up to 5 s, else the connection is
  closed); a transaction the cancel aborted is rolled back; then the interrupt goes on.
- Rows come as one JSON document per query (one value to fetch, one `json.loads`), which
  the server escapes whatever the values hold; parameters are rendered as literals.
- NOTICEs are dropped, as psycopg drops them when no handler is registered.
- Connecting is libpq's blocking PQconnectdbParams (connect_timeout applies to each host,
  as libpq and psql apply it), in a thread, so that a signal interrupts the wait too.

`LibpqReader` is the same driver, read-only, for `inspect` and for `apply` deciding whether
anything is pending (and waiting for the run lock): anything it cannot do raises
`Unavailable`, and the caller falls back to the full driver, which reports errors as it
always has. A connection that fails is reported at once (`ConnectionFailed`), so an
unreachable server is not tried twice.

`WHIMBREL_PG_CLIENT` chooses: `auto` (the default: libpq if it can be loaded, else
psycopg), `libpq` (fail if it cannot be loaded) or `psycopg` (never load libpq this way).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import operator
import os
import select
import time
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any, ClassVar, NoReturn

from whimbrel.drivers.base import (
    Driver,
    LockWaitCallback,
    TrackingRow,
    tracking_row,
)
from whimbrel.drivers.base import FastPathUnavailable as Unavailable
from whimbrel.drivers.postgres import (
    COPY_STATUSES,
    FATAL_ERROR,
    LOCK_KEY,
    TRANSACTION_IDLE,
    TRANSACTION_INERROR,
    Connection,
    Exchange,
    Failure,
    PostgresDriver,
    _literal,
    connection_options,
    failure_from,
)
from whimbrel.errors import ConnectionFailed, DatabaseError, UsageError, WhimbrelError
from whimbrel.urls import DatabaseURL, redact

CLIENT_VARIABLE = "WHIMBREL_PG_CLIENT"
_CLIENTS = ("auto", "libpq", "psycopg")

# libpq-fe.h
_CONNECTION_OK = 0
_COMMAND_OK = 1
_TUPLES_OK = 2
_TRANS_ACTIVE = 1
_TRANS_UNKNOWN = 4
_LOCK_NOT_AVAILABLE = "55P03"
_CANCEL_WAIT_S = 5.0  # as psycopg: how long the cancelled statement may take to stop


class _Lost(Exception):
    """The connection is gone (or never was)."""


class _Timeout(Exception):
    pass


_libpq: Any = None
# PQnoticeProcessor that drops the message (psycopg drops NOTICEs without a handler).
_NOTICE_PROCESSOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)
_ignore_notice = _NOTICE_PROCESSOR(lambda arg, message: None)


def _load() -> Any:
    global _libpq
    if _libpq is not None:
        return _libpq
    if not hasattr(select, "poll"):  # Windows: psycopg waits there
        raise Unavailable("no poll()")
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
    try:
        for name, restype, argtypes in (
            ("PQconnectdbParams", p, [ctypes.POINTER(s), ctypes.POINTER(s), i]),
            ("PQstatus", i, [p]),
            ("PQerrorMessage", s, [p]),
            ("PQfinish", None, [p]),
            ("PQsetnonblocking", i, [p, i]),
            ("PQsetNoticeProcessor", p, [p, _NOTICE_PROCESSOR, p]),
            ("PQserverVersion", i, [p]),
            ("PQsocket", i, [p]),
            ("PQtransactionStatus", i, [p]),
            ("PQsendQuery", i, [p, s]),
            ("PQflush", i, [p]),
            ("PQconsumeInput", i, [p]),
            ("PQisBusy", i, [p]),
            ("PQgetResult", p, [p]),
            ("PQresultStatus", i, [p]),
            ("PQresultErrorField", s, [p, i]),
            ("PQresultErrorMessage", s, [p]),
            ("PQntuples", i, [p]),
            ("PQgetvalue", p, [p, i, i]),
            ("PQgetlength", i, [p, i, i]),
            ("PQclear", None, [p]),
            ("PQgetCancel", p, [p]),
            ("PQcancel", i, [p, s, i]),
            ("PQfreeCancel", None, [p]),
        ):
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
    except AttributeError as exc:  # a libpq too old for us
        raise Unavailable(str(exc)) from None
    _libpq = lib
    return lib


def client() -> str:
    """The PostgreSQL client chosen by WHIMBREL_PG_CLIENT: auto, libpq or psycopg."""
    value = os.environ.get(CLIENT_VARIABLE, "").strip().lower() or "auto"
    if value not in _CLIENTS:
        raise UsageError(
            f"{CLIENT_VARIABLE}={value!r}: choose one of {', '.join(_CLIENTS)} (default auto)"
        )
    return value


def libpq_available() -> bool:
    """Whether to talk to PostgreSQL through libpq rather than psycopg."""
    choice = client()
    if choice == "psycopg":
        return False
    try:
        _load()
    except Unavailable as exc:
        if choice == "libpq":
            raise UsageError(
                f"{CLIENT_VARIABLE}=libpq, but libpq cannot be loaded: {exc}"
            ) from None
        return False
    return True


def _connectdb(pq: Any, keys: Any, values: Any) -> int | None:
    """PQconnectdbParams (blocking, with libpq's own connect_timeout for each host), in a
    thread of its own: the main thread waits in Thread.join(), which a signal interrupts,
    as it interrupts psycopg's connect. A connection abandoned so is closed once made."""
    import threading

    made: list[int | None] = []
    abandoned: list[bool] = []
    guard = threading.Lock()

    def connect() -> None:
        conn = pq.PQconnectdbParams(keys, values, 1)  # the GIL is released meanwhile
        with guard:
            if abandoned:
                pq.PQfinish(conn)
            else:
                made.append(conn)

    thread = threading.Thread(target=connect, name="whimbrel-connect", daemon=True)
    thread.start()
    try:
        thread.join()
    except BaseException:
        with guard:
            abandoned.append(True)
            if made:
                pq.PQfinish(made.pop())
        raise
    if not made:
        raise Unavailable("PQconnectdbParams failed")
    return made[0]


class _Session:
    """One libpq connection: a query in, its results out, without blocking signals."""

    def __init__(self, pq: Any, url: DatabaseURL, options: dict[str, str]) -> None:
        self._pq = pq
        keywords = {"dbname": url.raw, **options}  # expanded: the URL's own settings first
        keys = (ctypes.c_char_p * (len(keywords) + 1))(*[k.encode() for k in keywords], None)
        values = (ctypes.c_char_p * (len(keywords) + 1))(
            *[v.encode() for v in keywords.values()], None
        )
        self._conn: int | None = _connectdb(pq, keys, values)
        if not self._conn:
            raise Unavailable("out of memory")
        if pq.PQstatus(self._conn) != _CONNECTION_OK:
            message = self.error_message()
            self.close()
            raise ConnectionFailed(
                f"cannot connect to {url}: {redact(message.strip(), url.secrets())}"
            )
        pq.PQsetNoticeProcessor(self._conn, _ignore_notice, None)
        pq.PQsetnonblocking(self._conn, 1)
        self._socket = pq.PQsocket(self._conn)
        self._readable = select.poll()  # the usual wait, made once
        self._readable.register(self._socket, select.POLLIN)

    def close(self) -> None:
        if self._conn:
            self._pq.PQfinish(self._conn)
            self._conn = None

    def error_message(self) -> str:
        message = self._pq.PQerrorMessage(self._conn) if self._conn else None
        return (message or b"the connection is closed").decode("utf-8", "replace").strip()

    @property
    def broken(self) -> bool:
        return not self._conn or self._pq.PQstatus(self._conn) != _CONNECTION_OK

    @property
    def server_version(self) -> int:
        return int(self._pq.PQserverVersion(self._conn))

    @property
    def transaction_status(self) -> int:
        return int(self._pq.PQtransactionStatus(self._conn)) if self._conn else _TRANS_UNKNOWN

    # -- queries ------------------------------------------------------------------------
    def exchange(self, query: str, *, value: bool = False) -> tuple[Exchange, bytes | None]:
        """Send `query` and wait for all its results: how many, the first error, and (with
        `value`) the first value of the last result with rows. Raises _Lost."""
        self._send(query)
        try:
            return self._results(value)
        except (KeyboardInterrupt, SystemExit):
            self._cancel()
            raise

    def _send(self, query: str) -> None:
        data = query.encode()
        if b"\0" in data:  # libpq would cut the query there
            raise DatabaseError("refusing to send a query that contains a NUL character")
        if not self._conn or not self._pq.PQsendQuery(self._conn, data):
            raise _Lost(self.error_message())
        try:
            self._flush()
        except (KeyboardInterrupt, SystemExit):
            self._cancel()
            raise

    def _flush(self, deadline: float | None = None) -> None:
        pq, conn = self._pq, self._conn
        while True:
            flushed = pq.PQflush(conn)
            if flushed == 0:
                return
            if flushed < 0:
                raise _Lost(self.error_message())
            if self._wait(select.POLLIN | select.POLLOUT, deadline) & select.POLLIN:
                self._consume()

    def _wait(self, events: int, deadline: float | None = None) -> int:
        """Wait for the socket (Python's poll(): a signal's handler runs, and may raise)."""
        if events == select.POLLIN:
            poller = self._readable
        else:
            poller = select.poll()
            poller.register(self._socket, events)
        while True:
            timeout = (
                None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            )
            ready = poller.poll(timeout)
            if ready:
                return ready[0][1]
            if deadline is not None and time.monotonic() >= deadline:
                raise _Timeout

    def _consume(self) -> None:
        if not self._pq.PQconsumeInput(self._conn):
            raise _Lost(self.error_message())

    def _next_result(self, deadline: float | None = None) -> int | None:
        pq, conn = self._pq, self._conn
        while pq.PQisBusy(conn):
            self._wait(select.POLLIN, deadline)
            self._consume()
        result: int | None = pq.PQgetResult(conn)
        return result

    def _results(self, value: bool) -> tuple[Exchange, bytes | None]:
        # A batch of a thousand migrations has ten thousand results: the common ones
        # (commands that succeeded) take three C calls and no Python call.
        pq, conn = self._pq, self._conn
        is_busy, get_result, status_of, clear = (
            pq.PQisBusy,
            pq.PQgetResult,
            pq.PQresultStatus,
            pq.PQclear,
        )
        count = 0
        failure: Failure | None = None
        found: bytes | None = None
        while True:
            if is_busy(conn):
                try:
                    while True:
                        self._wait(select.POLLIN)
                        self._consume()
                        if not is_busy(conn):
                            break
                except _Lost:
                    # As psycopg: an error the server sent before hanging up is the answer.
                    if failure is not None:
                        break
                    raise
            result = get_result(conn)
            if not result:
                break
            count += 1
            status = status_of(result)
            if status == _COMMAND_OK:
                clear(result)
                continue
            try:
                if status == FATAL_ERROR:
                    if failure is None:
                        failure = self._failure(count - 1, result)
                elif status in COPY_STATUSES:
                    # After a COPY starts, libpq returns it again and again: stop here.
                    return Exchange(count, failure, True), None
                elif value and status == _TUPLES_OK and pq.PQntuples(result):
                    length = pq.PQgetlength(result, 0, 0)
                    found = ctypes.string_at(pq.PQgetvalue(result, 0, 0), length)
            finally:
                clear(result)
        return Exchange(count, failure, False), found

    def _failure(self, index: int, result: int) -> Failure:
        return failure_from(
            index,
            partial(self._pq.PQresultErrorField, result),
            self._pq.PQresultErrorMessage(result),
        )

    # -- Ctrl-C -------------------------------------------------------------------------
    def _cancel(self) -> None:
        """After an interrupt, as psycopg's Connection.wait does: cancel the running
        statement on the server and drain its results, or close the connection if that
        does not work out; then roll back a transaction the cancel aborted."""
        if self.transaction_status != _TRANS_ACTIVE:
            return
        pq = self._pq
        try:
            cancel = pq.PQgetCancel(self._conn)
            if cancel:
                try:
                    error = ctypes.create_string_buffer(256)
                    pq.PQcancel(cancel, error, len(error))
                finally:
                    pq.PQfreeCancel(cancel)
            deadline = time.monotonic() + _CANCEL_WAIT_S
            self._drain(deadline)
            if self.transaction_status == TRANSACTION_INERROR:
                if not pq.PQsendQuery(self._conn, b"ROLLBACK"):
                    raise _Lost(self.error_message())
                self._flush(deadline)
                self._drain(deadline)
        except BaseException as exc:
            # Not stopped in time, interrupted again, or lost: the connection is in an
            # unknown state. Let a new interruption go on, not an error.
            self.close()
            if not isinstance(exc, Exception):
                raise

    def _drain(self, deadline: float) -> None:
        pq = self._pq
        self._flush(deadline)
        while result := self._next_result(deadline):
            status = pq.PQresultStatus(result)
            pq.PQclear(result)
            if status in COPY_STATUSES:  # a COPY (in a function): give up on this session
                raise _Lost("COPY")


class LibpqDriver(PostgresDriver):
    """PostgresDriver's SQL, sent through libpq."""

    def __init__(self, url: DatabaseURL, *, connect_timeout: float, application_name: str) -> None:
        self._pq = _load()
        super().__init__(url, connect_timeout=connect_timeout, application_name=application_name)

    # -- plumbing -----------------------------------------------------------------------
    def _connect(self) -> Connection:
        return _Session(self._pq, self.url, self._options)

    @staticmethod
    def _session(conn: Connection) -> _Session:
        assert isinstance(conn, _Session)
        return conn

    def _server_version(self) -> int:
        return self._session(self.conn).server_version

    def in_transaction(self) -> bool:
        return self._session(self.conn).transaction_status != TRANSACTION_IDLE

    def _raise(self, error: WhimbrelError) -> NoReturn:
        raise error

    def _lost(self, exc: _Lost) -> NoReturn:
        message = redact(str(exc), self.url.secrets())
        self._raise(ConnectionFailed(f"lost the connection to {self.url}: {message}"))

    def _run(self, sql: str, conn: Connection | None = None, *, value: bool = False) -> Any:
        """Run our own SQL; with `value`, return the first value of its last row set.
        Errors as PostgresDriver._query raises them."""
        session = self._session(conn or self.conn)
        try:
            exchange, found = session.exchange(sql, value=value)
        except _Lost as exc:
            self._lost(exc)
        if exchange.failure is not None:
            text = redact(exchange.failure.message, self.url.secrets())
            if session.broken or exchange.failure.sqlstate is None:
                self._raise(ConnectionFailed(f"lost the connection to {self.url}: {text}"))
            self._raise(DatabaseError(text))
        if value and found is None:
            self._raise(DatabaseError("the server returned no rows"))
        return found

    def _query(
        self, sql: str, params: Sequence[object], conn: Connection | None = None
    ) -> list[tuple[object, ...]]:
        if params:
            sql = sql % tuple(_param(value) for value in params)
        # One JSON document for the whole result: one value to fetch and one C-speed parse.
        # Each row object becomes the tuple of its values, in column order.
        document = self._run(f"SELECT coalesce(json_agg(q), '[]') FROM ({sql}) q", conn, value=True)
        rows: list[tuple[object, ...]] = json.loads(document, object_pairs_hook=_values)
        return rows

    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        return self._query(sql, params)

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        if params:
            sql = sql % tuple(_param(value) for value in params)
        self._run(sql)

    def _wait_for_lock(self, conn: Connection, key: int, timeout_ms: int) -> bool:
        session = self._session(conn)
        try:
            self._run(f"SET lock_timeout = {timeout_ms}", conn)
            exchange, _ = session.exchange(f"SELECT pg_advisory_lock({key})")
            if exchange.failure is not None:
                if exchange.failure.sqlstate == _LOCK_NOT_AVAILABLE:
                    return False
                text = redact(exchange.failure.message, self.url.secrets())
                self._raise(DatabaseError(f"waiting for the migration lock: {text}"))
        except _Lost as exc:
            text = redact(str(exc), self.url.secrets())
            self._raise(DatabaseError(f"waiting for the migration lock: {text}"))
        except ConnectionFailed as exc:
            self._raise(DatabaseError(f"waiting for the migration lock: {exc.message}"))
        finally:
            with contextlib.suppress(Exception):
                self._run("RESET lock_timeout", conn)
        return True

    def _exchange(self, query: str) -> Exchange:
        try:
            exchange, _ = self._session(self.conn).exchange(query)
        except _Lost as exc:
            self._lost(exc)
        return exchange

    def to_datetime(self, value: object) -> datetime | None:
        if isinstance(value, datetime):
            return value
        # JSON writes timestamptz as ISO 8601 with its offset.
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    # -- reading the tracking tables ----------------------------------------------------
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
            for r in json.loads(self._run(query, value=True)):
                result[r[0]].append(tracking_row(r, to_datetime))
        for recorded in result.values():
            recorded.sort(key=_version)  # by version, as Driver.read_rows_many returns them
        return result


_version = operator.attrgetter("version")


def _values(pairs: list[tuple[str, Any]]) -> tuple[Any, ...]:
    return tuple(value for _, value in pairs)


class LibpqReader(LibpqDriver):
    """Reads like PostgresDriver (same queries, same row values); runs nothing."""

    read_only: ClassVar[bool] = True

    def __init__(self, url: DatabaseURL, *, connect_timeout: float, application_name: str) -> None:
        Driver.__init__(self, url)
        self._pq = _load()
        self._options = connection_options(
            url, connect_timeout=connect_timeout, application_name=application_name
        )
        self.conn = self._connect()
        self.lock_conn = None
        self.run_lock_holder = None
        self._session_reset = False
        try:
            schema = self.fetch("SELECT current_schema()")[0][0]
        except BaseException:
            self.close()
            raise
        if schema is None:
            self.close()
            raise Unavailable("no schema")  # the full driver says why
        self.schema = str(schema)

    def _raise(self, error: WhimbrelError) -> NoReturn:
        raise Unavailable(error.message)

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        raise Unavailable("read-only")

    def acquire_run_lock(self, timeout: float, on_wait: LockWaitCallback) -> None:
        """Take the run lock on this connection, waiting as PostgresDriver does.

        The runs queued behind another one wait here; most then find that it did their
        work and stop. The one that has work left hands this connection, lock held, to the
        full driver (`adopt_run_lock`).
        """
        self._lock(self.conn, LOCK_KEY, timeout, on_wait)


def _param(value: object) -> str:
    if isinstance(value, list | tuple):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]::text[]"
    return _literal(value)


def open_reader(
    url: DatabaseURL, *, connect_timeout: float, application_name: str
) -> LibpqReader | None:
    """A LibpqReader, or None when the fast path is unavailable here."""
    try:
        if not libpq_available():
            return None
        return LibpqReader(url, connect_timeout=connect_timeout, application_name=application_name)
    except Unavailable:
        return None
