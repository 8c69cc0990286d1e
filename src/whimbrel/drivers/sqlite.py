"""SQLite, through the standard sqlite3 module.

SQLite has no session locks that outlive a transaction, so the run lock is an exclusive
flock(2) on a file beside the database (`<db>.whimbrel-lock`); the kernel drops it when the
holding process dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import ClassVar

from whimbrel.drivers.base import (
    Driver,
    FastPathUnavailable,
    LockWaitCallback,
    StatementError,
    client_identity,
    columns_by_table,
)
from whimbrel.errors import ConnectionFailed, DatabaseError, LockTimeout
from whimbrel.urls import DatabaseURL

LOCK_SUFFIX = ".whimbrel-lock"
_NO_TRANSACTION = re.compile(r"(?:vacuum|pragma)\b", re.IGNORECASE)


class SQLiteDriver(Driver):
    dialect: ClassVar = "sqlite"
    transactional_ddl: ClassVar = True
    begin_sql: ClassVar = "BEGIN IMMEDIATE"  # take the write lock before the first statement

    def __init__(self, url: DatabaseURL, *, create: bool, busy_timeout: float) -> None:
        super().__init__(url)
        assert url.path is not None
        self.path = url.path
        self._busy_timeout = busy_timeout
        if not create and not os.path.exists(self.path):
            raise ConnectionFailed(f"SQLite database file {self.path} does not exist")
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise ConnectionFailed(f"cannot create SQLite database {self.path}: no folder {folder}")
        self.conn = self._connect()
        self._lock_fd: int | None = None

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=0)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
            except sqlite3.OperationalError as exc:
                # Locked by a writer (another run's long migration): it is a database. Do not
                # wait here; the run lock's wait comes next and says who holds it.
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
            conn.execute(f"PRAGMA busy_timeout = {round(self._busy_timeout * 1000)}")
        except sqlite3.Error as exc:
            raise ConnectionFailed(f"cannot open SQLite database {self.path}: {exc}") from None
        # A query runs in C; calling back into Python now and then lets Ctrl-C through.
        conn.set_progress_handler(_let_signals_in, 100_000)
        return conn

    def close(self) -> None:
        self.conn.close()
        self.release_lock()

    @contextlib.contextmanager
    def without_waiting(self) -> Iterator[None]:
        # Another run's migration may hold SQLite's lock for long; the run lock is the
        # place to wait for it, with a message saying who holds it.
        self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            yield
        except DatabaseError as exc:
            raise FastPathUnavailable(str(exc)) from None
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {round(self._busy_timeout * 1000)}")

    # -- plumbing -----------------------------------------------------------------------
    @property
    def placeholder(self) -> str:
        return "?"

    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        try:
            return list(self.conn.execute(sql, tuple(params)).fetchall())
        except sqlite3.Error as exc:
            raise DatabaseError(f"{self.path}: {exc}") from None

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        self.fetch(sql, params)

    def quote(self, identifier: str) -> str:
        return '"' + identifier.replace('"', '""') + '"'

    def qualified(self, table: str) -> str:
        return f'"main".{self.quote(table)}'

    def now_sql(self) -> str:
        return "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

    def to_datetime(self, value: object) -> datetime | None:
        if not isinstance(value, str):
            return None
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    # -- lock ---------------------------------------------------------------------------
    def acquire_lock(self, timeout: float, on_wait: LockWaitCallback) -> None:
        import fcntl

        # Keyed on the real file, so that two names for one database share one lock.
        lock_path = os.path.realpath(self.path) + LOCK_SUFFIX
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        delay = 0.005
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    on_wait(self._holder(fd))
                    waited = True
                if time.monotonic() >= deadline:
                    holder = self._holder(fd)
                    os.close(fd)
                    raise LockTimeout(
                        f"gave up after {timeout:g} s waiting for the migration lock "
                        f"{lock_path}" + (f", held by {holder}" if holder else "")
                    ) from None
                # flock has no timed wait; poll with a short, growing interval.
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{client_identity()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        self._lock_fd = fd

    @staticmethod
    def _holder(fd: int) -> str | None:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
        return text or None

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    # -- tracking tables ----------------------------------------------------------------
    def table_columns(self, table: str) -> set[str] | None:
        exists = self.fetch(
            "SELECT 1 FROM sqlite_master WHERE name = ? AND type IN ('table', 'view')", (table,)
        )
        if not exists:
            return None
        return {str(r[1]) for r in self.fetch(f"PRAGMA main.table_info({self.quote(table)})")}

    def tables_columns(self, tables: Sequence[str]) -> dict[str, set[str]]:
        if not tables:
            return {}
        marks = ", ".join("?" * len(tables))
        rows = self.fetch(
            "SELECT m.name, p.name FROM sqlite_master m "
            "LEFT JOIN pragma_table_info(m.name, 'main') p "
            f"WHERE m.type IN ('table', 'view') AND m.name IN ({marks})",
            tuple(tables),
        )
        return columns_by_table(rows)

    def create_table(self, table: str) -> None:
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {self.qualified(table)} ("
            "version INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL, "
            "file TEXT NOT NULL, "
            "sha256 TEXT NOT NULL, "
            "status TEXT NOT NULL, "
            "statements_done INTEGER NOT NULL DEFAULT 0, "
            "statements_sha256 TEXT, "
            "error TEXT, "
            "down_sql TEXT, "
            "applied_at TEXT NOT NULL, "
            "duration_ms REAL, "
            "applied_by TEXT)"
        )

    # -- running migrations -------------------------------------------------------------
    def can_wrap(self, sql: str) -> bool:
        # VACUUM fails in a transaction, and some PRAGMAs silently do nothing there.
        return _NO_TRANSACTION.match(sql) is None

    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def reset_session(self) -> None:
        # PRAGMAs and ATTACHed databases belong to the connection: start a new one.
        self.conn.close()
        self.conn = self._connect()

    def run_statement(self, sql: str, index: int = 0) -> None:
        try:
            self.conn.execute(sql)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_INTERRUPT:
                raise KeyboardInterrupt from None
            name = getattr(exc, "sqlite_errorname", None)
            raise StatementError(f"ERROR: {exc}", index=index, sqlstate=name) from None


def _let_signals_in() -> int:
    # A KeyboardInterrupt raised here aborts the query with SQLITE_INTERRUPT.
    return 0
