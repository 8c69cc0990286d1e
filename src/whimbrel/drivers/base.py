"""The small interface every database driver implements.

Modelled on golang-migrate's Lock/Run/SetVersion and dbmate's one-file-per-database drivers:
a driver knows how to connect, lock, keep its tracking tables, and run SQL. Everything
else (what to run, in which order, what is refused) lives in the engine.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from operator import attrgetter
from typing import ClassVar, NamedTuple

from whimbrel._fast import builder
from whimbrel.errors import DatabaseError
from whimbrel.urls import DatabaseURL, Dialect

# Columns of a tracking table, in order. A table with a different set of columns is not ours.
TRACKING_COLUMNS = (
    "version",
    "name",
    "file",
    "sha256",
    "status",
    "statements_done",
    "statements_sha256",
    "error",
    "down_sql",
    "applied_at",
    "duration_ms",
    "applied_by",
)

APPLIED = "applied"
APPLYING = "applying"  # started, not known to have finished: dirty
REVERTING = "reverting"  # revert started, not known to have finished: dirty

LockWaitCallback = Callable[[str | None], None]

# SQLite allows 500 SELECTs in one compound query.
_TABLES_PER_QUERY = 200
_version_of = attrgetter("version")


@dataclass(frozen=True, slots=True)
class TrackingRow:
    """A row of a tracking table, as read."""

    version: int
    name: str
    file: str
    sha256: str
    status: str
    statements_done: int
    statements_sha256: str | None
    error: str | None
    has_down_sql: bool
    applied_at: datetime | None
    duration_ms: float | None
    applied_by: str | None

    @property
    def dirty(self) -> bool:
        return self.status != APPLIED


@dataclass(frozen=True, slots=True)
class RowValues:
    """A tracking row to insert or overwrite."""

    version: int
    name: str
    file: str
    sha256: str
    status: str
    statements_done: int
    statements_sha256: str | None
    down_sql: str | None
    duration_ms: float | None


@dataclass(frozen=True, slots=True)
class InsertRow:
    """Write `row` into `table`."""

    table: str
    row: RowValues


@dataclass(frozen=True, slots=True)
class DeleteRow:
    """Delete the row of `version` from `table`."""

    table: str
    version: int


TrackingWrite = InsertRow | DeleteRow


def with_duration(writes: Sequence[TrackingWrite], seconds: float) -> list[TrackingWrite]:
    """Fill in the duration of inserted rows that the caller could not time itself."""
    return [
        InsertRow(w.table, replace(w.row, duration_ms=seconds * 1000))
        if isinstance(w, InsertRow) and w.row.duration_ms is None
        else w
        for w in writes
    ]


class FastPathUnavailable(Exception):
    """A read-only shortcut (drivers.libpq) cannot answer; the caller uses the full driver."""


class Progress(NamedTuple):
    table: str
    version: int
    statements_done: int
    statements_sha256: str
    # On an up migration's last statement: the file's sha256. The same write then marks the
    # row applied (its duration counted on the server from applied_at, set when it
    # started), so finishing a migration costs no write, round trip or commit of its own.
    finished_sha256: str | None = None


class StatementError(Exception):
    """The database refused a statement.

    `index` is the 0-based statement that failed when the driver knows it; `position` is a
    0-based character offset into the SQL it was given (or, with `relative_to_statement`,
    into the failing statement), when the database reports one.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        position: int | None = None,
        sqlstate: str | None = None,
        relative_to_statement: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.position = position
        self.sqlstate = sqlstate
        self.relative_to_statement = relative_to_statement
        self.item = 0  # of run_many_in_transaction: which migration failed


class AtomicItem(NamedTuple):
    """One migration for `run_atomic` and `run_many_in_transaction`."""

    sql: str
    statements: Iterable[str] | None  # None where the driver sends `sql` whole
    statement_count: int
    writes: Sequence[TrackingWrite]
    # Where a driver that sends `sql` whole should cut it instead, for a big section:
    # (start, end, index of the first statement) of consecutive slices of whole statements.
    pieces: Sequence[tuple[int, int, int]] | None = None


def columns_by_table(
    rows: Iterable[tuple[object, ...]], *, fold_case: bool = False
) -> dict[str, set[str]]:
    """(table, column) rows, a column None for a table without any, as table -> columns."""
    found: dict[str, set[str]] = {}
    for table, column in rows:
        columns = found.setdefault(str(table), set())
        if column is not None:
            columns.add(str(column).lower() if fold_case else str(column))
    return found


_IDENTITY: tuple[int, str] | None = None  # (pid, identity): a fork gets its own


def client_identity() -> str:
    """Who is applying: shown to other processes waiting for the lock and stored per row."""
    global _IDENTITY
    pid = os.getpid()
    if _IDENTITY is None or _IDENTITY[0] != pid:
        # Looked up once per process: the user database lookup (getpwuid) is ~15 us, once
        # per tracking row.
        try:
            user = getpass.getuser()
        except Exception:  # no user name in some containers
            user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
        _IDENTITY = (pid, f"{user}@{_hostname()} pid {pid}")
    return _IDENTITY[1]


def _hostname() -> str:
    # What socket.gethostname() returns, without importing socket (~3 ms) where uname has it.
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def tracking_row(
    r: Sequence[object], to_datetime: Callable[[object], datetime | None]
) -> TrackingRow:
    """A TrackingRow from (table, version, name, ..., applied_by) as read_rows_many selects."""
    return _new_row(
        int(r[1]),  # type: ignore[call-overload]
        str(r[2]),
        str(r[3]),
        str(r[4]).strip(),
        str(r[5]),
        int(r[6]),  # type: ignore[call-overload]
        str(r[7]).strip() if r[7] is not None else None,
        str(r[8]) if r[8] is not None else None,
        bool(r[9]),
        to_datetime(r[10]),
        float(r[11]) if r[11] is not None else None,  # type: ignore[arg-type]
        str(r[12]) if r[12] is not None else None,
    )


# TrackingRow(version, name, file, sha256, status, statements_done, statements_sha256,
# error, has_down_sql, applied_at, duration_ms, applied_by), 10,000 times over.
_new_row = builder(TrackingRow)


class Driver(ABC):
    dialect: ClassVar[Dialect]
    # Whether DDL and the tracking row can commit together.
    transactional_ddl: ClassVar[bool]

    def __init__(self, url: DatabaseURL) -> None:
        self.url = url

    # -- connection -------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None: ...

    @contextlib.contextmanager
    def without_waiting(self) -> Iterator[None]:
        """Reads in here raise FastPathUnavailable rather than wait for another session's
        locks: for peeks that have a locked way to fall back on."""
        yield

    # -- the run lock -----------------------------------------------------------------
    @abstractmethod
    def acquire_lock(self, timeout: float, on_wait: LockWaitCallback) -> None:
        """Block until this session holds the database-wide migration lock, or raise LockTimeout."""

    @abstractmethod
    def release_lock(self) -> None: ...

    # -- tracking tables --------------------------------------------------------------
    @abstractmethod
    def quote(self, identifier: str) -> str: ...

    @abstractmethod
    def qualified(self, table: str) -> str:
        """The table's name qualified with the schema/database it lives in."""

    @abstractmethod
    def table_columns(self, table: str) -> set[str] | None:
        """Column names of `table`, or None when there is no such table."""

    @abstractmethod
    def create_table(self, table: str) -> None: ...

    @abstractmethod
    def fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]: ...

    @abstractmethod
    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        """Run one statement of ours in autocommit mode."""

    @abstractmethod
    def to_datetime(self, value: object) -> datetime | None: ...

    @property
    def placeholder(self) -> str:
        return "%s"

    def tables_columns(self, tables: Sequence[str]) -> dict[str, set[str]]:
        """Column names of each of `tables` that exists, in one query (absent: not there)."""
        found = {}
        for table in tables:
            columns = self.table_columns(table)
            if columns is not None:
                found[table] = columns
        return found

    def read_rows(self, table: str) -> list[TrackingRow]:
        return self.read_rows_many([table])[table]

    def read_rows_many(self, tables: Sequence[str]) -> dict[str, list[TrackingRow]]:
        """The rows of every table, by version: one query (UNION ALL) per 200 tables, so
        reading 100 sets costs one round trip, not 100."""
        result: dict[str, list[TrackingRow]] = {table: [] for table in tables}
        for start in range(0, len(tables), _TABLES_PER_QUERY):
            chunk = tables[start : start + _TABLES_PER_QUERY]
            selects = [
                f"SELECT {self.placeholder} AS set_table, version, name, file, sha256, status, "
                "statements_done, statements_sha256, error, down_sql IS NOT NULL, applied_at, "
                f"duration_ms, applied_by FROM {self.qualified(table)}"
                for table in chunk
            ]
            # No ORDER BY: the database would sort every row (~15 ms for 10,000 on SQLite);
            # a table's rows come in the order of its primary key, the version, or nearly.
            rows = self.fetch(" UNION ALL ".join(selects), chunk)
            to_datetime = self.to_datetime
            for r in rows:
                result[str(r[0])].append(tracking_row(r, to_datetime))
        for recorded in result.values():
            recorded.sort(key=_version_of)  # one pass when already in order
        return result

    def read_down_sql(self, table: str, version: int) -> str | None:
        rows = self.fetch(
            f"SELECT down_sql FROM {self.qualified(table)} WHERE version = {self.placeholder}",
            (version,),
        )
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    # -- tracking writes outside a migration's own transaction ---------------------------
    def now_sql(self) -> str:
        return "CURRENT_TIMESTAMP"

    def insert_sql(self, write: InsertRow) -> tuple[str, tuple[object, ...]]:
        p = self.placeholder
        row = write.row
        sql = (
            f"INSERT INTO {self.qualified(write.table)} (version, name, file, sha256, status, "
            "statements_done, statements_sha256, error, down_sql, applied_at, duration_ms, "
            f"applied_by) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, NULL, {p}, {self.now_sql()},"
            f" {p}, {p})"
        )
        params = (
            row.version,
            row.name,
            row.file,
            row.sha256,
            row.status,
            row.statements_done,
            row.statements_sha256,
            row.down_sql,
            row.duration_ms,
            client_identity(),
        )
        return sql, params

    def write(self, write: TrackingWrite) -> None:
        if isinstance(write, InsertRow):
            self.execute(*self.insert_sql(write))
        else:
            self.execute(
                f"DELETE FROM {self.qualified(write.table)} WHERE version = {self.placeholder}",
                (write.version,),
            )

    def elapsed_ms_sql(self) -> str:
        """SQL for the milliseconds since the row's applied_at."""
        return "(julianday('now') - julianday(applied_at)) * 86400000.0"

    def progress_sql(self, progress: Progress) -> tuple[str, tuple[object, ...]]:
        p = self.placeholder
        sets = f"statements_done = {p}, statements_sha256 = {p}"
        params: list[object] = [progress.statements_done, progress.statements_sha256]
        if progress.finished_sha256 is not None:
            # duration first: it reads applied_at before applied_at is set to now.
            sets += (
                f", duration_ms = {self.elapsed_ms_sql()}, applied_at = {self.now_sql()}, "
                f"status = {p}, error = NULL, sha256 = {p}"
            )
            params += [APPLIED, progress.finished_sha256]
        params.append(progress.version)
        return (
            f"UPDATE {self.qualified(progress.table)} SET {sets} WHERE version = {p}",
            tuple(params),
        )

    def update_progress(self, progress: Progress) -> None:
        self.execute(*self.progress_sql(progress))

    def set_status(
        self,
        table: str,
        version: int,
        *,
        status: str,
        error: str | None = None,
        sha256: str | None = None,
        duration_ms: float | None = None,
        reset_progress: bool = False,
    ) -> None:
        p = self.placeholder
        sets = [f"status = {p}", f"error = {p}"]
        params: list[object] = [status, error]
        if sha256 is not None:
            sets.append(f"sha256 = {p}")
            params.append(sha256)
        if duration_ms is not None:
            sets += [f"duration_ms = {p}", f"applied_at = {self.now_sql()}"]
            params.append(duration_ms)
        if reset_progress:
            sets += ["statements_done = 0", "statements_sha256 = NULL"]
        params.append(version)
        self.execute(
            f"UPDATE {self.qualified(table)} SET {', '.join(sets)} WHERE version = {p}",
            tuple(params),
        )

    # -- running migrations -----------------------------------------------------------
    begin_sql: ClassVar[str] = "BEGIN"

    def run_atomic(
        self,
        sql: str,
        statements: Iterable[str] | None,
        writes: Sequence[TrackingWrite],
        pieces: Sequence[tuple[int, int, int]] | None = None,
    ) -> None:
        """Run `sql` and the tracking `writes` in one transaction; all or nothing.

        `statements` is `sql` split into statements; this default sends them one by one.
        A driver that sends `sql` whole may receive None. Raises StatementError.
        """
        self.execute(self.begin_sql)
        try:
            self.run_in_transaction(sql, statements, writes)
            self.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                self.rollback()
            raise

    def run_in_transaction(
        self, sql: str, statements: Iterable[str] | None, writes: Sequence[TrackingWrite]
    ) -> None:
        """Run `sql` and its tracking `writes` inside the transaction already open (one
        migration of `run_atomic`, or of a --single-transaction run); no COMMIT.

        Raises StatementError; rolling back is the caller's business.
        """
        assert statements is not None
        started = time.perf_counter()
        count = 0
        for index, statement in enumerate(statements):
            self.run_statement(statement, index)
            count = index + 1
        try:
            for write in with_duration(writes, time.perf_counter() - started):
                self.write(write)
        except DatabaseError as exc:  # e.g. a trigger the migration put on our table
            raise StatementError(exc.message, index=count) from None

    def run_many_in_transaction(self, items: Sequence[AtomicItem]) -> None:
        """Several migrations inside the transaction already open (--single-transaction).

        A StatementError says which one failed in `item`. This default runs them one by
        one; a driver may send them in fewer round trips.
        """
        for number, item in enumerate(items):
            try:
                self.run_in_transaction(item.sql, item.statements, item.writes)
            except StatementError as exc:
                exc.item = number
                raise

    # Whether run_many_atomic sends several migrations in one round trip.
    batches_atomic: ClassVar[bool] = False

    def run_many_atomic(self, items: Sequence[AtomicItem]) -> None:
        """Several migrations, each in a transaction of its own with its tracking writes and
        the session reset after it, in one round trip, stopping at the first failure: a
        StatementError says which in `item`; those before it are committed. Only for a
        driver with `batches_atomic`."""
        raise NotImplementedError

    @abstractmethod
    def run_statement(self, sql: str, index: int = 0) -> None:
        """Run one statement of a migration; a StatementError carries `index`."""

    def can_wrap(self, sql: str) -> bool:
        """Whether this statement may run inside a transaction of ours."""
        return True

    def can_run_atomically(self, statements: Sequence[str]) -> bool:
        """Whether these statements and their tracking row can commit as one transaction."""
        return self.transactional_ddl

    def run_tracked(self, sql: str, progress: Progress, *, wrap: bool) -> None:
        """Run one statement of a non-atomic migration, then record that it is done.

        With `wrap`, the statement and its progress commit together, so a crash can never
        leave it done but not counted (short of DDL that commits implicitly on MySQL).
        """
        if not wrap:
            self.run_statement(sql)
            self.update_progress(progress)
            return
        self.execute(self.begin_sql)
        try:
            self.run_statement(sql)
            self.update_progress(progress)
            self.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                self.rollback()
            raise

    @abstractmethod
    def in_transaction(self) -> bool:
        """Whether a transaction is open on the migration connection (one a file left open)."""

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    def rollback_kept_changes(self) -> bool:
        """Whether the last rollback left changes behind (MySQL's tables without
        transactions: MyISAM, Aria, MEMORY...)."""
        return False

    @abstractmethod
    def reset_session(self) -> None:
        """Undo session settings a migration made (SET, USE, PRAGMA) before the next one."""

    def flush_tracking(self) -> None:  # noqa: B027 - most drivers hold nothing back
        """Send tracking writes a driver holds back to send with its next statement."""

    def after_migration(self, changed_session: bool) -> None:
        """Called after every migration; `changed_session` says it has SET, USE, PRAGMA..."""
        if changed_session:
            self.reset_session()
