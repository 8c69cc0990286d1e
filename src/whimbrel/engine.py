"""Engine: run migrations under the database-wide lock.

Every run that changes anything holds one lock from start to finish, re-reads the tracking
tables once it holds it, refuses unsafe states before running anything, checks every file
it will run, and only then executes. A migration is atomic (one transaction with its
tracking row) where the database allows; otherwise it is recorded as `applying` first and
its statement counter advances after every statement, so a failure can be resumed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, Protocol, overload

from whimbrel._fast import paused_gc
from whimbrel.discovery import SAFE_SET_NAME, Migration, MigrationSet, Section
from whimbrel.drivers import Driver, connect
from whimbrel.drivers.base import (
    APPLIED,
    APPLYING,
    REVERTING,
    TRACKING_COLUMNS,
    AtomicItem,
    DeleteRow,
    FastPathUnavailable,
    InsertRow,
    Progress,
    RowValues,
    StatementError,
    TrackingRow,
    client_identity,
)
from whimbrel.errors import (
    ConnectionFailed,
    DatabaseError,
    Interrupted,
    InvalidMigrationsError,
    MigrationFailed,
    RefusedError,
    UsageError,
    WhimbrelError,
)
from whimbrel.plan import MigrationState, SetState, compare
from whimbrel.urls import DatabaseURL, Dialect, redact

if TYPE_CHECKING:
    from whimbrel.drivers.libpq import LibpqReader
    from whimbrel.sqlsplit import Statement

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class RunOptions:
    """How a run behaves: timeouts, what it may accept, and dry run."""

    lock_timeout: float = 60.0
    connect_timeout: float = 10.0
    allow_drift: bool = False
    allow_out_of_order: bool = False
    resume: bool = False
    dry_run: bool = False
    # apply: every pending migration of the run in one transaction, all or nothing.
    single_transaction: bool = False
    # How to spell the command in recovery hints, e.g. "whimbrel migrations apply db/ --url URL".
    hint_path: str = "PATH"


class Reporter(Protocol):
    def lock_waiting(self, holder: str | None) -> None: ...
    def step_started(self, step: Step) -> None: ...
    def step_finished(self, step: Step, outcome: StepOutcome) -> None: ...


class NullReporter:
    def lock_waiting(self, holder: str | None) -> None:
        pass

    def step_started(self, step: Step) -> None:
        pass

    def step_finished(self, step: Step, outcome: StepOutcome) -> None:
        pass


@dataclass(frozen=True)
class Step:
    """One migration to run in one direction."""

    set_name: str
    direction: Direction
    version: int
    name: str
    file: str
    section: Section
    migration: Migration | None
    resume_from: int = 0
    resuming: bool = False  # continues a dirty row instead of starting a new one
    statements: Sequence[Statement] = ()
    atomic: bool = True
    own_transactions: bool = False  # the file says BEGIN/COMMIT itself: run it as written
    control: frozenset[int] = frozenset()  # indexes of its transaction-control statements
    changes_session: bool = False  # SET, USE, PRAGMA...: reset the session afterwards

    @property
    def table(self) -> str:
        return self.set_name


@dataclass(frozen=True)
class StepOutcome:
    """What became of one step of a run."""

    set_name: str
    version: int
    name: str
    file: str
    direction: Direction
    status: Literal["applied", "reverted", "planned"]
    duration_ms: float | None
    statements: int
    atomic: bool
    resumed_from: int = 0


@dataclass
class RunResult:
    """What an apply or revert run did, step by step."""

    command: str
    dry_run: bool
    sets: list[str]
    steps: list[StepOutcome] = field(default_factory=list)
    # Set by `apply(create_db=True)`: whether this run created the database.
    database_created: bool | None = None


def application_name(command: str) -> str:
    return f"whimbrel {command} {client_identity()}"[:63]


@contextmanager
def session(
    url: DatabaseURL, options: RunOptions, command: str, *, create: bool = False
) -> Iterator[Driver]:
    driver = connect(
        url,
        create=create,
        connect_timeout=options.connect_timeout,
        busy_timeout=options.lock_timeout,
        application_name=application_name(command),
    )
    try:
        yield driver
    finally:
        driver.close()


@contextmanager
def locked(driver: Driver, options: RunOptions, reporter: Reporter) -> Iterator[None]:
    driver.acquire_lock(options.lock_timeout, reporter.lock_waiting)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the connection is gone, and the lock with it
            driver.release_lock()


def read_states(
    driver: Driver, sets: Sequence[MigrationSet], early: _Tables | None = None
) -> list[SetState]:
    """Every set's state in two round trips, whatever the number of sets: one for which
    tracking tables exist (and their columns), one for all their rows (unless `early`
    holds them: see EarlyRead)."""
    with paused_gc():  # a row and a state per migration, 10,000 of each: see paused_gc
        return _read_states(driver, sets, early)


def _read_states(
    driver: Driver, sets: Sequence[MigrationSet], early: _Tables | None
) -> list[SetState]:
    tables = [s.table for s in sets]
    if early is not None:
        columns = {t: c for t, c in early.columns.items() if t in tables}
    else:
        with _context("reading the tracking tables"):
            columns = driver.tables_columns(tables)
    for migration_set in sets:
        found = columns.get(migration_set.table)
        if found is not None and found != set(TRACKING_COLUMNS):
            raise RefusedError(
                f"set {migration_set.name!r}: the table {migration_set.table!r} exists but is "
                "not a whimbrel tracking table"
                + (f" (its columns: {', '.join(sorted(found))})" if found else "")
                + "; whimbrel will not touch it. Rename the set's folder or that table."
            )
    if early is not None and early.rows is not None:
        rows = early.rows
    else:
        with _context("reading the tracking tables"):
            rows = driver.read_rows_many([t for t in tables if t in columns])
    secrets = driver.url.secrets()
    states = []
    for migration_set in sets:
        if migration_set.table not in columns:
            states.append(compare(migration_set, None))
            continue
        recorded = [
            replace(row, error=redact(row.error, secrets)) if row.error else row
            for row in rows[migration_set.table]
        ]
        states.append(compare(migration_set, recorded))
    return states


@contextmanager
def _context(what: str) -> Iterator[None]:
    try:
        yield
    except DatabaseError as exc:
        raise DatabaseError(f"{what}: {exc.message}") from None


def _statements_hash(statements: Sequence[Statement]) -> str:
    digest = hashlib.sha256()
    for statement in statements:
        _feed(digest, statement)
    return digest.hexdigest()


# -- refusing unsafe states -------------------------------------------------------------
def _recover_hint(set_name: str, version: int, options: RunOptions, direction: str) -> str:
    path = options.hint_path
    return (
        f"  To recover, either fix the file and continue where it stopped:\n"
        f"    whimbrel migrations {'apply' if direction == 'apply' else 'revert'} {path} "
        f"--url URL --set {set_name} --resume\n"
        f"  or repair the database by hand, then record the outcome:\n"
        f"    whimbrel migrations mark {path} --url URL --set {set_name} --version {version} "
        "--applied   (or --not-applied)"
    )


def describe_dirty(state: MigrationState) -> str:
    row = state.row
    assert row is not None
    action = "applying" if row.status == APPLYING else "reverting"
    text = (
        f"migration {state.version} ({state.file}) is dirty: {action} it did not finish; "
        f"{row.statements_done} statement(s) completed"
    )
    if row.error:
        text += f"; it failed with: {row.error.splitlines()[0]}"
    return text


def check_safe(
    states: Sequence[SetState], options: RunOptions, command: Literal["apply", "revert"]
) -> None:
    problems: list[str] = []
    for state in states:
        for dirty in state.with_status("dirty"):
            assert dirty.row is not None
            direction = "apply" if dirty.row.status == APPLYING else "revert"
            if options.resume and direction == command:
                continue
            problems.append(
                f"set {state.name!r}: {describe_dirty(dirty)}\n"
                + _recover_hint(state.name, dirty.version, options, direction)
            )
        if not options.allow_drift:
            for changed in state.with_status("modified"):
                problems.append(
                    f"set {state.name!r}: {changed.file} was modified after it was applied "
                    f"(recorded sha256 {changed.recorded_sha256}, file sha256 {changed.sha256}). "
                    "Restore the file; if the change is on purpose, record the file as it is "
                    f"(`whimbrel migrations mark ... --set {state.name} --version "
                    f"{changed.version} --applied`); or pass --allow-drift to go on anyway."
                )
            for missing in state.with_status("missing"):
                problems.append(
                    f"set {state.name!r}: migration {missing.version} ({missing.file}) is "
                    "recorded as applied but its file is missing. Restore the file, or pass "
                    "--allow-drift to go on anyway."
                )
        if command == "apply" and not options.allow_out_of_order:
            late = state.out_of_order
            if late:
                newest = max(m.version for m in state.recorded)
                problems.append(
                    f"set {state.name!r}: {', '.join(m.file for m in late)} "
                    f"{'is' if len(late) == 1 else 'are'} older than the newest applied "
                    f"migration ({newest}) but not applied (out of order). Renumber "
                    f"{'it' if len(late) == 1 else 'them'} after {newest}, or pass "
                    "--allow-out-of-order to apply anyway."
                )
    if problems:
        raise RefusedError(
            "refusing to " + command + "; nothing was changed:\n" + "\n".join(problems)
        )


# -- preparing steps --------------------------------------------------------------------
# Statements whimbrel cannot run faithfully, refused before anything runs.
_UNSUPPORTED: dict[str, tuple[str, int, str]] = {
    "postgres": (
        r"copy\b.*\b(?:from\s+stdin|to\s+stdout)\b",
        re.IGNORECASE | re.DOTALL,
        "COPY ... FROM STDIN / TO STDOUT needs psql's client-side data handling; "
        "use INSERT, or COPY from a file on the server",
    ),
    "mysql": (
        r"(?:/\*M?!\d*\s*)?lock\s+tables?\b",
        re.IGNORECASE,
        "LOCK TABLES would lock whimbrel out of its own tracking table; remove LOCK and "
        "UNLOCK TABLES (a migration already runs alone, under whimbrel's lock)",
    ),
}
# CREATE TABLE/VIEW of an unqualified name, to catch a set creating its own tracking table.
_CREATES_RELATION = (
    r"create\s+(?:or\s+replace\s+)?(?:(?:global|local)\s+)?(?:temp(?:orary)?\s+|unlogged\s+)?"
    r"(?:table|view|materialized\s+view)\s+(?:if\s+not\s+exists\s+)?"
    r"(?P<name>[`\"\[]?\w+[`\"\]]?)(?!\s*\.)"
)
# Statements that may change the session for the migrations after them (mysqldump writes
# them as executable comments: /*!40101 SET NAMES utf8 */), temporary objects and prepared
# statements included: the next migration starts without them, however a run groups them.
_DUMP_COMMENT = r"(?:/\*M?!\d*\s*)?"
_SETTINGS = r"set|reset|use|pragma|attach|detach|call"
_SESSION_STATEMENT = (
    rf"{_DUMP_COMMENT}(?:{_SETTINGS}|prepare|create\s+(?:(?:global|local)\s+)?temp(?:orary)?)\b"
)
_SETTING_STATEMENT = re.compile(rf"{_DUMP_COMMENT}(?:{_SETTINGS})\b", re.IGNORECASE)


def _changes_settings(step: Step) -> bool:
    """Of the statements that change the session, those that change more than its
    temporary objects and prepared statements."""
    return any(_SETTING_STATEMENT.match(s.text) for s in step.statements)


_Checks = tuple[re.Pattern[str], re.Pattern[str], tuple[re.Pattern[str], str] | None]


@functools.cache
def _checks(dialect: str) -> _Checks:
    """prepare()'s regexes for `dialect`: (creates a relation, changes the session,
    (unsupported, why) or None), compiled when it first runs rather than at every start."""
    unsupported = _UNSUPPORTED.get(dialect)
    return (
        re.compile(_CREATES_RELATION, re.IGNORECASE),
        re.compile(_SESSION_STATEMENT, re.IGNORECASE),
        (re.compile(unsupported[0], unsupported[1]), unsupported[2]) if unsupported else None,
    )


class StatementList(Sequence["Statement"]):
    """A section's statements as offsets into its SQL, each text sliced when asked for: a
    50 MB migration is held once (its SQL), not twice (plus every statement's text)."""

    __slots__ = ("_bounds", "_sql")

    def __init__(self, sql: str) -> None:
        self._sql = sql
        self._bounds = array("q")  # start, end, line of each statement

    def append(self, statement: Statement) -> None:
        self._bounds.extend((statement.start, statement.end, statement.line))

    def __len__(self) -> int:
        return len(self._bounds) // 3

    @overload
    def __getitem__(self, index: int) -> Statement: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Statement]: ...

    def __getitem__(self, index: int | slice) -> Statement | Sequence[Statement]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        from whimbrel.sqlsplit import Statement

        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end, line = self._bounds[3 * index : 3 * index + 3]
        return Statement(self._sql[start:end], line, start, end)

    def __iter__(self) -> Iterator[Statement]:
        for index in range(len(self)):
            yield self[index]

    def pieces(self, limit: int) -> list[tuple[int, int, int]]:
        """Consecutive statements grouped into slices of the SQL of about `limit`
        characters: (start, end, index of the first statement) each."""
        result = []
        bounds = self._bounds
        first = 0
        for index in range(len(self)):
            start = bounds[3 * first]
            end = bounds[3 * index + 1]
            if end - start >= limit or index == len(self) - 1:
                result.append((start, end, first))
                first = index + 1
        return result


def prepare(
    step: Step,
    dialect: Dialect,
    atomic_possible: Callable[[Sequence[str]], bool],
    *,
    to_run: bool = True,
) -> Step:
    """Split and check a step's SQL for this database, before anything runs.

    Statements are checked one at a time as the splitter finds them, and only their
    offsets are kept (`StatementList`). Without `to_run` (`mark`: someone ran the file
    by hand), statements whimbrel cannot run itself, such as COPY FROM STDIN, pass.
    """
    from whimbrel.sqlsplit import SplitError, is_transaction_control, iter_statements

    section = step.section
    statements = StatementList(section.sql)
    control = set()
    atomic = section.transaction
    changes_session = False
    creates_relation_regex, session_statement_regex, refusal = _checks(dialect)
    if not to_run:
        refusal = None
    creates_relation = creates_relation_regex.match
    session_statement = session_statement_regex.match
    try:
        for index, statement in enumerate(
            iter_statements(section.sql, dialect, line_offset=section.line_offset)
        ):
            text = statement.text
            created = creates_relation(text)
            if created and created["name"].strip('`"[]').lower() == step.set_name:
                raise InvalidMigrationsError(
                    f"creates a table or view named {step.set_name!r}, which is the name of "
                    "the set's own tracking table (a set's tracking table is named after its "
                    "folder). Rename the set's folder",
                    set_name=step.set_name,
                    file=section.file,
                    line=statement.line,
                )
            if refusal and refusal[0].match(text):
                raise InvalidMigrationsError(
                    refusal[1], set_name=step.set_name, file=section.file, line=statement.line
                )
            if is_transaction_control(statement, dialect):
                control.add(index)
            # `atomic_possible` holds for a list when it holds for each statement of it.
            atomic = atomic and atomic_possible([text])
            changes_session = changes_session or bool(
                session_statement(text) or "set_config" in text.lower()
            )
            statements.append(statement)
    except SplitError as exc:
        raise InvalidMigrationsError(
            exc.message, set_name=step.set_name, file=section.file, line=exc.line
        ) from None
    if not statements and step.direction == "up":
        raise InvalidMigrationsError(
            "has no SQL statements (only comments or empty ones)",
            set_name=step.set_name,
            file=section.file,
        )
    own_transactions = bool(control)
    return replace(
        step,
        statements=statements,
        atomic=atomic and not own_transactions,
        own_transactions=own_transactions,
        control=frozenset(control),
        changes_session=changes_session,
    )


def _check_resume(step: Step, state: MigrationState) -> Step:
    row = state.row
    assert row is not None
    done = row.statements_done
    if done > len(step.statements):
        raise RefusedError(
            f"set {step.set_name!r}: cannot resume {step.file}: {done} statement(s) completed "
            f"but the file now has only {len(step.statements)}"
        )
    if done and row.statements_sha256 != _statements_hash(step.statements[:done]):
        raise RefusedError(
            f"set {step.set_name!r}: cannot resume {step.file}: the {done} statement(s) that "
            "already ran have changed since. Repair by hand and use "
            "`whimbrel migrations mark`."
        )
    # The row exists and statements before `done` are applied: only stepwise can continue.
    return replace(step, resume_from=done, resuming=True, atomic=False)


# -- executing steps --------------------------------------------------------------------
def _failure(
    step: Step,
    exc: StatementError,
    *,
    rolled_back: bool,
    done: int = 0,
    after: str | None = None,
) -> MigrationFailed:
    statements = step.statements
    index = exc.index
    line = None
    position_known = exc.position is not None
    tracking_failed = index is not None and index >= len(statements)
    if tracking_failed:
        # Every statement of the file ran; our own tracking write failed.
        index = None
        position_known = False
    if step.atomic and position_known and not exc.relative_to_statement:
        # The position is an offset into the whole section; find its statement.
        from whimbrel.sqlsplit import line_at, statement_index_at

        assert exc.position is not None
        line = line_at(step.section.sql, exc.position, line_offset=step.section.line_offset)
        index = statement_index_at(statements, exc.position)
    elif index is not None and 0 <= index < len(statements):
        statement = statements[index]
        line = statement.line
        if position_known:
            assert exc.position is not None
            line += statement.text.count("\n", 0, exc.position)
    statement_text = (
        statements[index].text if index is not None and index < len(statements) else None
    )
    where = f"set {step.set_name!r}, {step.file}"
    if index is not None:
        where += f", statement {index + 1} of {len(statements)}"
    if line is not None:
        where += f" (line {line})"
    if tracking_failed:
        where += ", recording it in the tracking table"
    verb = "applying" if step.direction == "up" else "reverting"
    if after is None and rolled_back:
        done_word = "applied" if step.direction == "up" else "reverted"
        after = f"It ran in a transaction: nothing of {step.file} was {done_word}."
    elif after is None:
        after = (
            f"{step.file} is now dirty: {done} of its {len(statements)} statement(s) completed "
            "and stay applied (it does not run in one transaction). Fix the file, then "
            "continue with --resume, or repair by hand and record the outcome with "
            "`whimbrel migrations mark`."
        )
    message = f"{verb} failed: {where}:\n{_indent(exc.message)}"
    if statement_text is not None:
        message += "\n  statement:\n" + _indent(_clip(statement_text), "    ")
    # PostgreSQL's SQLSTATEs; SQLite says "cannot VACUUM from within a transaction".
    if exc.sqlstate in ("25001", "2D000") or "from within a transaction" in exc.message:
        how = (
            "start the file with the line `-- whimbrel: transaction:false`"
            if step.migration is not None and step.migration.format == "golang-migrate"
            else "mark the section with `transaction:false` (`-- migrate:up transaction:false`)"
        )
        message += (
            "\n  hint: this statement cannot run inside a transaction (or commits itself); " + how
        )
    message += "\n" + after
    return MigrationFailed(
        message,
        set_name=step.set_name,
        file=step.file,
        statement_index=index,
        statement_count=len(statements),
        line=line,
        statement=statement_text,
        database_message=exc.message,
        rolled_back=rolled_back,
    )


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _clip(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


def _row(migration: Migration, status: str, done: int, done_sha: str | None) -> RowValues:
    return RowValues(
        version=migration.version,
        name=migration.name,
        file=migration.file,
        sha256=migration.sha256,
        status=status,
        statements_done=done,
        statements_sha256=done_sha,
        down_sql=recorded_down(migration.down),
        duration_ms=None,
    )


def execute_step(driver: Driver, step: Step) -> StepOutcome:
    started = time.perf_counter()
    try:
        if step.atomic:
            _run_atomic(driver, step)
            driver.after_migration(step.changes_session)
        else:
            _run_stepwise(driver, step)  # resets the session before its final write
    except ConnectionFailed as exc:
        raise ConnectionFailed(f"{exc.message}\n{_while(step)}") from None
    except DatabaseError as exc:
        _reset_quietly(driver, step)
        raise DatabaseError(
            f"recording {step.file} in the tracking table {step.table!r}: {exc.message}\n"
            + _while(step)
        ) from None
    except KeyboardInterrupt:
        _reset_quietly(driver, step)
        raise Interrupted(_interrupted(step)) from None
    except BaseException:
        _reset_quietly(driver, step)
        raise
    return _outcome(step, (time.perf_counter() - started) * 1000)


def _outcome(step: Step, duration_ms: float) -> StepOutcome:
    return StepOutcome(
        set_name=step.set_name,
        version=step.version,
        name=step.name,
        file=step.file,
        direction=step.direction,
        status="applied" if step.direction == "up" else "reverted",
        duration_ms=duration_ms,
        statements=len(step.statements),
        atomic=step.atomic,
        resumed_from=step.resume_from,
    )


def _interrupted(step: Step) -> str:
    verb, done = ("applying", "applied") if step.direction == "up" else ("reverting", "reverted")
    text = f"interrupted while {verb} {step.file} of set {step.set_name!r}: "
    if step.atomic:
        text += f"it ran in a transaction, so nothing of it was {done}"
    else:
        text += (
            "it does not run in one transaction, so it is now dirty; `whimbrel migrations "
            "inspect` shows how far it got. Continue with --resume, or repair by hand and "
            "record the outcome with `whimbrel migrations mark`"
        )
    return text + ". Migrations after it did not run."


def _reset_quietly(driver: Driver, step: Step) -> None:
    # After a failure, leave the session as clean as we can; the real error matters more.
    with contextlib.suppress(Exception):
        driver.after_migration(step.changes_session)


def _while(step: Step) -> str:
    outcome = (
        "it ran in a transaction, which the database rolls back unless the connection "
        "broke during COMMIT"
        if step.atomic
        else "it may be dirty"
    )
    outcome += "; `whimbrel migrations inspect` shows where it stands"
    return f"while running {step.file} of set {step.set_name!r}: {outcome}"


def _atomic_item(driver: Driver, step: Step) -> AtomicItem:
    writes: list[InsertRow | DeleteRow]
    if step.direction == "up":
        assert step.migration is not None
        done_sha = _statements_hash(step.statements)
        row = _row(step.migration, APPLIED, len(step.statements), done_sha)
        writes = [InsertRow(step.table, row)]
    else:
        writes = [DeleteRow(step.table, step.version)]
    # PostgreSQL sends the section whole (a big one in pieces); the others statement by
    # statement, each text sliced only when it is sent.
    statements = step.statements
    if driver.dialect == "postgres":
        pieces = None
        if len(step.section.sql) > _PIECE_CHARS and isinstance(statements, StatementList):
            pieces = statements.pieces(_PIECE_CHARS)
        return AtomicItem(step.section.sql, None, len(statements), writes, pieces)
    texts = (s.text for s in statements)
    return AtomicItem(step.section.sql, texts, len(statements), writes)


# A bigger section goes to PostgreSQL in pieces of about this size, inside its transaction,
# so the query string, its encoding and libpq's copy stay small.
_PIECE_CHARS = 4 << 20


def _run_atomic(driver: Driver, step: Step) -> None:
    item = _atomic_item(driver, step)
    try:
        driver.run_atomic(item.sql, item.statements, item.writes, item.pieces)
    except StatementError as exc:
        if driver.rollback_kept_changes():
            raise _partly_rolled_back(driver, step, exc) from None
        raise _failure(step, exc, rolled_back=True) from None


def _partly_rolled_back(driver: Driver, step: Step, exc: StatementError) -> MigrationFailed:
    """An atomic step whose rollback left changes behind (MySQL tables without
    transactions): recorded as dirty, as a step that never ran in a transaction is."""
    error = redact(exc.message, driver.url.secrets()) + (
        " (rolled back, except its changes to tables without transactions, which stay)"
    )
    if step.direction == "up":
        assert step.migration is not None
        driver.write(InsertRow(step.table, _row(step.migration, APPLYING, 0, None)))
        driver.flush_tracking()  # MySQL holds an `applying` row back for the next statement
        driver.set_status(step.table, step.version, status=APPLYING, error=error)
    else:
        driver.set_status(
            step.table, step.version, status=REVERTING, reset_progress=True, error=error
        )
    after = (
        f"It ran in a transaction, but the database could not roll back its changes to "
        f"tables without transactions (MyISAM, Aria, MEMORY...): they stay, so {step.file} "
        "is now dirty. Repair by hand, then record the outcome with `whimbrel migrations "
        "mark` (--resume would run its statements again from the first)."
    )
    return _failure(step, exc, rolled_back=False, after=after)


def _run_stepwise(driver: Driver, step: Step) -> None:
    statements = step.statements
    start = step.resume_from
    started = time.perf_counter()
    if step.direction == "up":
        assert step.migration is not None
        if step.resuming:
            driver.set_status(step.table, step.version, status=APPLYING)
        else:
            driver.write(InsertRow(step.table, _row(step.migration, APPLYING, 0, None)))
    else:
        driver.set_status(
            step.table, step.version, status=REVERTING, reset_progress=not step.resuming
        )
    done_hash = hashlib.sha256()
    for index in range(start):
        _feed(done_hash, statements[index])
    finished = False  # the last statement's progress marked the row applied
    for index in range(start, len(statements)):
        statement = statements[index]
        _feed(done_hash, statement)
        last = step.direction == "up" and index == len(statements) - 1
        assert step.migration is not None or not last
        progress = Progress(
            step.table,
            step.version,
            index + 1,
            done_hash.hexdigest(),
            finished_sha256=step.migration.sha256 if last and step.migration else None,
        )
        # Each statement commits together with its progress, unless it is transaction
        # control, runs inside a transaction the file opened, or refuses transactions.
        wrap = (
            index not in step.control
            and driver.can_wrap(statement.text)
            and not (step.own_transactions and driver.in_transaction())
        )
        try:
            driver.run_tracked(statement.text, progress, wrap=wrap)
        except StatementError as exc:
            exc.index = index
            raise _stepwise_failure(driver, step, exc) from None
        finished = last
    if driver.in_transaction():
        raise _stepwise_failure(
            driver,
            step,
            StatementError(
                "ERROR: the file left a transaction open (a BEGIN without COMMIT, or "
                "autocommit turned off); whimbrel rolled it back"
            ),
        )
    # Our final write runs as ourselves, outside whatever SET ROLE the migration made.
    driver.after_migration(step.changes_session)
    duration_ms = (time.perf_counter() - started) * 1000
    if finished:
        pass  # the last statement's progress marked the row applied
    elif step.direction == "up":
        assert step.migration is not None
        driver.set_status(
            step.table,
            step.version,
            status=APPLIED,
            sha256=step.migration.sha256,
            duration_ms=duration_ms,
        )
    else:
        driver.write(DeleteRow(step.table, step.version))


def _feed(digest: hashlib._Hash, statement: Statement) -> None:
    digest.update(statement.text.encode())
    digest.update(b"\0")


def _stepwise_failure(driver: Driver, step: Step, exc: StatementError) -> MigrationFailed:
    """Record a failed non-atomic step as dirty, saying truly how far it got."""
    driver.rollback()  # a transaction the file opened; its progress updates go with it
    driver.after_migration(step.changes_session)
    rows = driver.fetch(
        f"SELECT statements_done FROM {driver.qualified(step.table)} "
        f"WHERE version = {driver.placeholder}",
        (step.version,),
    )
    done = int(rows[0][0]) if rows else 0  # type: ignore[call-overload]
    status = APPLYING if step.direction == "up" else REVERTING
    error = redact(exc.message, driver.url.secrets())
    driver.set_status(step.table, step.version, status=status, error=error)
    return _failure(step, exc, rolled_back=False, done=done)


# -- commands -----------------------------------------------------------------------------
def _sqlite_missing(url: DatabaseURL) -> bool:
    return url.dialect == "sqlite" and url.path is not None and not os.path.exists(url.path)


@dataclass
class _Tables:
    """What EarlyRead read: the tracking tables' columns, and their rows unless one of them
    is not a tracking table (read_states then refuses it)."""

    columns: dict[str, set[str]]
    rows: dict[str, list[TrackingRow]] | None


class EarlyRead:
    """Reads the tracking tables in a thread while discovery reads and hashes the files.

    Started with the sets' names once their folders are listed (and any manifest is
    verified), so an inspect of 10,000 files waits for the server's answer while hashing,
    not after. Everything else goes the usual way: `take` gives None when the early read
    did not happen or did not succeed, and the caller reads again (reporting any error as
    always), except a refused connection, which is reported as is rather than tried twice.
    """

    def __init__(self, url: DatabaseURL, options: RunOptions) -> None:
        self.url = url
        self.options = options
        self._tables: list[str] = []
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self._outcome: tuple[Driver, _Tables] | ConnectionFailed | None = None
        self._abandoned = False

    def start(self, names: list[str]) -> None:
        if self.url.dialect == "sqlite" or self._thread is not None:
            return  # a local file: nothing to overlap
        if not all(SAFE_SET_NAME.fullmatch(name) for name in names):
            return  # discovery refuses the set; no query is built from its name
        self._tables = list(names)
        self._thread = threading.Thread(target=self._read, name="whimbrel-early-read")
        self._thread.daemon = True  # Ctrl-C or an invalid file ends the run without it
        self._thread.start()

    def _read(self) -> None:
        outcome: tuple[Driver, _Tables] | ConnectionFailed | None = None
        driver: Driver | None = None
        try:
            if self.url.dialect == "postgres":
                driver = _fast_reader(self.url, self.options, "inspect")
            else:
                driver = connect(
                    self.url,
                    connect_timeout=self.options.connect_timeout,
                    application_name=application_name("inspect"),
                )
            if driver is not None:
                columns = driver.tables_columns(self._tables)
                ours = all(found == set(TRACKING_COLUMNS) for found in columns.values())
                rows = driver.read_rows_many(list(columns)) if ours else None
                outcome = (driver, _Tables(columns, rows))
        except ConnectionFailed as exc:
            outcome = exc
        except Exception:  # read again the usual way, which reports it
            outcome = None
        with self._guard:
            keep = not self._abandoned and isinstance(outcome, tuple)
            if keep or isinstance(outcome, ConnectionFailed):
                self._outcome = outcome
        if not keep and driver is not None:
            driver.close()

    def take(self, sets: Sequence[MigrationSet]) -> tuple[Driver, _Tables] | None:
        """The session and what it read, when it read every set of `sets`."""
        if self._thread is None:
            return None
        self._thread.join()
        with self._guard:
            outcome, self._outcome = self._outcome, None
        if isinstance(outcome, ConnectionFailed):
            raise outcome
        if outcome is not None and not {s.table for s in sets} <= set(self._tables):
            outcome[0].close()
            return None
        return outcome

    def abandon(self) -> None:
        """Close what was read and not taken; a read still running closes its own."""
        with self._guard:
            self._abandoned = True
            outcome, self._outcome = self._outcome, None
        if isinstance(outcome, tuple):
            outcome[0].close()


def inspect(
    sets: Sequence[MigrationSet],
    url: DatabaseURL,
    options: RunOptions,
    *,
    early: EarlyRead | None = None,
) -> list[SetState]:
    """Read the state of every set; a pending file that apply would reject is an error too."""
    taken = early.take(sets) if early is not None else None
    if taken is not None:
        driver, tables = taken
        try:
            return _inspect(driver, sets, tables)
        except FastPathUnavailable:
            pass  # read again below
        finally:
            driver.close()
    reader = _fast_reader(url, options, "inspect")
    if reader is not None:
        try:
            return _inspect(reader, sets)
        except FastPathUnavailable:
            pass  # the full driver reads again, and reports any error as it always has
        finally:
            reader.close()
    with session(url, options, "inspect") as driver:
        return _inspect(driver, sets)


def _inspect(
    driver: Driver, sets: Sequence[MigrationSet], early: _Tables | None = None
) -> list[SetState]:
    states = read_states(driver, sets, early)
    for step, _ in _up_steps(states, RunOptions()):
        prepare(step, driver.dialect, driver.can_run_atomically)
    return states


def _fast_reader(url: DatabaseURL, options: RunOptions, command: str) -> LibpqReader | None:
    """On PostgreSQL, a read-only libpq session (drivers.libpq), unless psycopg is the
    client."""
    if url.dialect != "postgres":
        return None
    from whimbrel.drivers.libpq import open_reader

    return open_reader(
        url,
        connect_timeout=options.connect_timeout,
        application_name=application_name(command),
    )


def _nothing_to_apply(driver: Driver, sets: Sequence[MigrationSet]) -> bool:
    """Whether every migration is applied, read without the lock.

    A row says `applied` only once its migration has committed, so when every file has
    one, there is nothing for this run to do, whatever other runs are doing: a no-op
    apply needs no lock (and, on PostgreSQL, no second session). Anything else (pending,
    dirty, drift) goes the locked way, which re-reads under the lock.
    """
    try:
        with driver.without_waiting():
            return all(state.up_to_date for state in read_states(driver, sets))
    except FastPathUnavailable:
        return False


def _up_steps(states: Sequence[SetState], options: RunOptions) -> list[tuple[Step, MigrationState]]:
    steps = []
    for state in states:
        if options.resume:
            for dirty in state.with_status("dirty"):
                assert dirty.row is not None
                if dirty.row.status != APPLYING:
                    continue
                if dirty.migration is None:
                    raise RefusedError(
                        f"set {state.name!r}: cannot resume migration {dirty.version}: its file "
                        "is missing"
                    )
                steps.append((_step(state.name, "up", dirty.migration, dirty.migration.up), dirty))
        for pending in state.pending:
            assert pending.migration is not None
            migration = pending.migration
            steps.append((_step(state.name, "up", migration, migration.up), pending))
    return steps


def check_all(sets: Sequence[MigrationSet], dialect: Dialect) -> None:
    """Check every migration's SQL for this database, as a run checks those it will run:
    for a database about to be created, that is all of them (nothing is created for a
    tree that would be refused)."""
    for migration_set in sets:
        for migration in migration_set.migrations:
            step = _step(migration_set.name, "up", migration, migration.up)
            prepare(step, dialect, lambda _statements: True)


def _step(set_name: str, direction: Direction, migration: Migration, section: Section) -> Step:
    # Discovery parses sections lazily: check the whole file (its down section is recorded
    # with it) now, before anything runs.
    migration.down  # noqa: B018
    return Step(
        set_name=set_name,
        direction=direction,
        version=migration.version,
        name=migration.name,
        file=section.file,
        section=section,
        migration=migration,
    )


def apply(
    sets: Sequence[MigrationSet],
    url: DatabaseURL,
    options: RunOptions,
    reporter: Reporter | None = None,
) -> RunResult:
    reporter = reporter or NullReporter()
    result = RunResult(command="apply", dry_run=options.dry_run, sets=[s.name for s in sets])
    if _sqlite_missing(url):
        # Check every file before creating the database file, so a refused run leaves none.
        states = [compare(s, None) for s in sets]
        steps = [prepare(step, "sqlite", lambda _: True) for step, _ in _up_steps(states, options)]
        if options.dry_run:
            result.steps = [_planned(step) for step in steps]
            return result
    run_lock: LibpqReader | None = None  # a libpq session holding the run lock already
    if not options.dry_run:
        reader = _fast_reader(url, options, "apply")
        if reader is not None:
            try:
                if _nothing_to_apply(reader, sets):
                    return result
                # Wait for the lock here, in the reader's session: the run ahead of this one
                # may do all of its work. Then hand the lock on to the full driver.
                started = time.monotonic()
                reader.acquire_run_lock(options.lock_timeout, reporter.lock_waiting)
                if _nothing_to_apply(reader, sets):
                    return result
                left = max(0.0, options.lock_timeout - (time.monotonic() - started))
                options = replace(options, lock_timeout=left)
                run_lock = reader
            except FastPathUnavailable:
                pass
            finally:
                if run_lock is None:
                    reader.close()  # frees the lock if it holds it
    try:
        with session(url, options, "apply", create=not options.dry_run) as driver:
            adopted = run_lock is not None
            if run_lock is not None:
                from whimbrel.drivers.postgres import PostgresDriver

                assert isinstance(driver, PostgresDriver)
                driver.adopt_run_lock(run_lock)
                run_lock = None
            # Without a libpq session (elsewhere, or PostgreSQL through psycopg), the same
            # check runs in the main session, before it takes the lock.
            if not options.dry_run and not adopted and _nothing_to_apply(driver, sets):
                return result
            return _apply_locked(driver, sets, options, reporter, result)
    finally:
        if run_lock is not None:  # the full session never started
            run_lock.close()


def _apply_locked(
    driver: Driver,
    sets: Sequence[MigrationSet],
    options: RunOptions,
    reporter: Reporter,
    result: RunResult,
) -> RunResult:
    with _maybe_locked(driver, options, reporter):
        states = read_states(driver, sets)
        check_safe(states, options, "apply")
        planned = _prepare_all(driver, _up_steps(states, options))
        if options.single_transaction:
            _check_single_transaction(driver, planned)
        if options.dry_run:
            result.steps = [_planned(s) for s in planned]
            return result
        created = []
        for state in states:
            if not state.table_exists and any(s.set_name == state.name for s in planned):
                with _context(f"set {state.name!r}: creating its tracking table"):
                    driver.create_table(state.set.table)
                created.append(state.set.table)
        try:
            if options.single_transaction:
                _execute_in_one_transaction(driver, planned, result, reporter)
            else:
                _execute_all(driver, planned, result, reporter)
        except BaseException:
            _drop_if_empty(driver, created)
            raise
    return result


def _check_single_transaction(driver: Driver, planned: Sequence[Step]) -> None:
    """--single-transaction: refuse up front unless every migration can join one transaction."""
    problems = []
    for step in planned:
        why = None
        if step.resuming:
            why = "it is dirty and can only be resumed statement by statement"
        elif not step.section.transaction:
            why = "it is marked transaction:false"
        elif step.own_transactions:
            why = "it manages its own transactions (BEGIN/COMMIT)"
        elif not step.atomic:
            why = "it has DDL or other statements that commit implicitly on MySQL/MariaDB"
        elif step.changes_session and driver.dialect != "postgres" and _changes_settings(step):
            # Resetting the session means a new connection here, which would end the run's
            # transaction. Temporary tables stay for the run: it is one unit.
            why = "it changes the session (SET, USE, PRAGMA, ATTACH, CALL)"
        if why:
            problems.append(f"set {step.set_name!r}: {step.file}: {why}")
    if problems:
        raise RefusedError(
            "refusing to apply with --single-transaction; nothing was changed: these "
            "migrations cannot run inside one transaction:\n  "
            + "\n  ".join(problems)
            + "\nApply without --single-transaction (each migration then gets a transaction "
            "of its own where the database allows it)."
        )


def _execute_in_one_transaction(
    driver: Driver, planned: Sequence[Step], result: RunResult, reporter: Reporter
) -> None:
    """--single-transaction: every step inside one transaction, committed at the end.

    Steps are reported only once the transaction has committed: until then nothing of the
    run is applied.
    """
    outcomes: list[tuple[Step, StepOutcome]] = []
    if not planned:
        return
    kept = False  # the rollback after a failure left changes behind
    step = planned[0]
    running = _running([step])
    try:
        driver.execute(driver.begin_sql)
        for batch in _batches(planned):
            step = batch[0]
            running = _running(batch)
            started = time.perf_counter()
            try:
                driver.run_many_in_transaction([_atomic_item(driver, s) for s in batch])
            except StatementError as exc:
                step = batch[exc.item]
                outcomes += [(s, _outcome(s, 0.0)) for s in batch[: exc.item]]
                _rollback_quietly(driver)
                kept = driver.rollback_kept_changes()
                after = _KEPT_BY_THE_RUN.format(ran=len(outcomes)) if kept else None
                raise _failure(step, exc, rolled_back=not kept, after=after) from None
            # Several migrations shared a round trip: each gets its share of the time.
            share = (time.perf_counter() - started) * 1000 / len(batch)
            outcomes += [(s, _outcome(s, share)) for s in batch]
            step = batch[-1]
            running = _running([step])
        driver.execute("COMMIT")
    except MigrationFailed as exc:
        _rollback_quietly(driver)
        if not kept:
            exc.message += (
                "\n--single-transaction: the whole run was rolled back; no migration of this "
                f"run was applied ({len(outcomes)} ran before this one)."
            )
        exc.partial = result
        raise
    except ConnectionFailed as exc:
        raise ConnectionFailed(
            f"{exc.message}\nwhile running {running} in "
            "--single-transaction mode: the database rolls the run back unless the connection "
            "broke during COMMIT; `whimbrel migrations inspect` shows where it stands"
        ) from None
    except DatabaseError as exc:
        _rollback_quietly(driver)
        raise DatabaseError(
            f"recording {step.file} in the tracking table {step.table!r}: {exc.message}\n"
            "--single-transaction: the whole run was rolled back."
        ) from None
    except KeyboardInterrupt:
        _rollback_quietly(driver)
        interrupted = Interrupted(
            f"interrupted while applying {running} with "
            "--single-transaction: the whole run was rolled back, so no migration of it was "
            "applied."
        )
        interrupted.partial = result  # type: ignore[attr-defined]
        raise interrupted from None
    except BaseException:
        _rollback_quietly(driver)
        raise
    for step, outcome in outcomes:
        reporter.step_started(step)
        result.steps.append(outcome)
        reporter.step_finished(step, outcome)


# --single-transaction sends migrations in batches of about this much SQL (PostgreSQL sends
# a batch in one round trip): few round trips, and a bounded query string.
_BATCH_CHARS = 1 << 20


def _batches(planned: Sequence[Step]) -> Iterator[list[Step]]:
    return _grouped(planned, _BATCH_CHARS, len(planned), lambda step: False)


def _grouped(
    planned: Sequence[Step], chars: int, most: int, alone: Callable[[Step], bool]
) -> Iterator[list[Step]]:
    """Consecutive steps in groups of at most `most` steps and `chars` of SQL (a bigger
    step makes a group of its own), in order; a step for which `alone` holds is alone."""
    group: list[Step] = []
    size = 0
    for step in planned:
        length = len(step.section.sql)
        if group and (alone(step) or size + length > chars or len(group) == most):
            yield group
            group, size = [], 0
        group.append(step)
        size += length
        if alone(step):
            yield group
            group, size = [], 0
    if group:
        yield group


_KEPT_BY_THE_RUN = (
    "--single-transaction: the run was rolled back, except its changes to tables without "
    "transactions (MyISAM, Aria, MEMORY...), which stay. No migration of this run is recorded "
    "({ran} ran before this one): repair those tables by hand before running it again."
)


def _rollback_quietly(driver: Driver) -> None:
    with contextlib.suppress(Exception):
        driver.rollback()


def _drop_if_empty(driver: Driver, tables: Sequence[str]) -> None:
    """After a failed run, remove the tracking tables it created that recorded nothing."""
    for table in tables:
        with contextlib.suppress(Exception):
            if not driver.fetch(f"SELECT 1 FROM {driver.qualified(table)}"):
                driver.execute(f"DROP TABLE {driver.qualified(table)}")


def _prepare_all(driver: Driver, steps: Sequence[tuple[Step, MigrationState]]) -> list[Step]:
    """Check every step for this database before the first one runs."""
    planned = []
    for step, state in steps:
        prepared = prepare(step, driver.dialect, driver.can_run_atomically)
        if step.direction == "down" and not prepared.statements:
            mark = f"`whimbrel migrations mark ... --set {step.set_name} --version {step.version}"
            if step.section.file.endswith(_RECORDED) and state.migration is None:
                raise RefusedError(
                    f"refusing to revert; nothing was changed: set {step.set_name!r}: the down "
                    f"section recorded when {state.file} was applied is empty, and the file is "
                    "gone, so reverting it would undo nothing. Restore the file with the SQL "
                    "that undoes it, or if there truly is nothing to undo, record that "
                    f"({mark} --not-applied`)."
                )
            if step.section.file.endswith(_RECORDED):  # the file changed
                raise RefusedError(
                    f"refusing to revert; nothing was changed: set {step.set_name!r}: the down "
                    f"section recorded when {state.file} was applied is empty, so reverting it "
                    "would undo nothing. If the file's down section now holds the SQL that "
                    f"undoes it, record the file as it is first ({mark} --applied`), then "
                    f"revert; if there truly is nothing to undo, record that ({mark} "
                    "--not-applied`)."
                )
            raise RefusedError(
                f"refusing to revert; nothing was changed: set {step.set_name!r}: the down "
                f"section of {state.file} is empty, so reverting it would undo nothing. Write "
                "the SQL that undoes it, or if there truly is nothing to undo, record that "
                f"with {mark} --not-applied`."
            )
        if state.status == "dirty":
            prepared = _check_resume(prepared, state)
        planned.append(prepared)
    return planned


def _running(batch: Sequence[Step]) -> str:
    """What was running, when all we know is the round trip: one step, or one of several."""
    first, last = batch[0], batch[-1]
    if len(batch) == 1:
        return f"{first.file} of set {first.set_name!r}"
    where = (
        f"set {first.set_name!r}"
        if first.set_name == last.set_name
        else f"sets {first.set_name!r} to {last.set_name!r}"
    )
    return f"one of {len(batch)} migrations sent together ({first.file} to {last.file} of {where})"


def _execute_all(
    driver: Driver, planned: Sequence[Step], result: RunResult, reporter: Reporter
) -> None:
    try:
        for trip in _round_trips(driver, planned):
            if len(trip) > 1:
                _execute_round_trip(driver, trip, result, reporter)
                continue
            step = trip[0]
            reporter.step_started(step)
            outcome = execute_step(driver, step)
            result.steps.append(outcome)
            reporter.step_finished(step, outcome)
        with _context("recording the last migration in its tracking table"):
            driver.flush_tracking()
    except WhimbrelError as exc:
        exc.partial = result
        raise
    except KeyboardInterrupt as exc:  # -o json still reports what ran before it
        exc.partial = result  # type: ignore[attr-defined]
        raise


# Small migrations that each run in a transaction go to PostgreSQL several per round trip,
# up to this much SQL or this many: a round trip costs more than a small migration.
_TRIP_CHARS = 64 << 10
_TRIP_STEPS = 50


def _round_trips(driver: Driver, planned: Sequence[Step]) -> Iterator[list[Step]]:
    if not driver.batches_atomic:
        return _grouped(planned, 0, 1, lambda step: True)
    # A step run statement by statement, or sent in pieces, goes alone.
    limit = min(_TRIP_CHARS, _PIECE_CHARS)
    return _grouped(
        planned, _TRIP_CHARS, _TRIP_STEPS, lambda s: not s.atomic or len(s.section.sql) > limit
    )


def _execute_round_trip(
    driver: Driver, trip: Sequence[Step], result: RunResult, reporter: Reporter
) -> None:
    """Several atomic steps in one round trip, each in its own transaction. A step is
    reported once the round trip is back: only then is it known to be done."""
    reporter.step_started(trip[0])
    started = time.perf_counter()
    done = len(trip)
    failure: WhimbrelError | Interrupted | None = None
    try:
        driver.run_many_atomic([_atomic_item(driver, step) for step in trip])
    except StatementError as exc:
        done = exc.item
        _reset_quietly(driver, trip[done])
        failure = _failure(trip[done], exc, rolled_back=True)
    except ConnectionFailed as exc:
        raise ConnectionFailed(f"{exc.message}\n{_while_trip(trip)}") from None
    except DatabaseError as exc:
        _reset_quietly(driver, trip[0])
        raise DatabaseError(f"{exc.message}\n{_while_trip(trip)}") from None
    except KeyboardInterrupt:
        _reset_quietly(driver, trip[0])
        committed = _committed(driver, trip)
        if committed is None:
            verb = "applying" if trip[0].direction == "up" else "reverting"
            raise Interrupted(
                f"interrupted while {verb} {_running(trip)}: each of them runs in a "
                "transaction of its own, so each is done whole or not at all; `whimbrel "
                "migrations inspect` shows which. Migrations after them did not run."
            ) from None
        done = committed
        failure = Interrupted(
            _interrupted(trip[done])
            if done < len(trip)
            else f"interrupted after {_running(trip)}. Migrations after them did not run."
        )
    # They shared a round trip: each gets its share of the time.
    share = (time.perf_counter() - started) * 1000 / len(trip)
    for number, step in enumerate(trip[:done]):
        if number:
            reporter.step_started(step)
        outcome = _outcome(step, share)
        result.steps.append(outcome)
        reporter.step_finished(step, outcome)
    if failure is not None:
        if 0 < done < len(trip):
            reporter.step_started(trip[done])
        raise failure


def _committed(driver: Driver, trip: Sequence[Step]) -> int | None:
    """After an interrupted round trip: how many of its steps committed, read back from
    their tracking tables (they run in order, each whole or not at all); None if the
    session cannot tell."""
    count = 0
    try:
        for step in trip:
            recorded = driver.fetch(
                f"SELECT 1 FROM {driver.qualified(step.table)} WHERE version = "
                f"{driver.placeholder}",
                (step.version,),
            )
            if bool(recorded) != (step.direction == "up"):
                break
            count += 1
    except Exception:  # the connection did not survive the interrupt
        return None
    return count


def _while_trip(trip: Sequence[Step]) -> str:
    return (
        f"while running {_running(trip)}: each of them runs in a transaction of its own, "
        "which the database rolls back unless the connection broke during its COMMIT; "
        "`whimbrel migrations inspect` shows where they stand"
    )


@contextmanager
def _maybe_locked(driver: Driver, options: RunOptions, reporter: Reporter) -> Iterator[None]:
    if options.dry_run:
        yield
        return
    with locked(driver, options, reporter):
        yield


def _planned(step: Step) -> StepOutcome:
    return StepOutcome(
        set_name=step.set_name,
        version=step.version,
        name=step.name,
        file=step.file,
        direction=step.direction,
        status="planned",
        duration_ms=None,
        statements=len(step.statements),
        atomic=step.atomic,
        resumed_from=step.resume_from,
    )


def revert(
    sets: Sequence[MigrationSet],
    url: DatabaseURL,
    options: RunOptions,
    reporter: Reporter | None = None,
    *,
    steps: int | None = None,
    to_version: int | None = None,
    everything: bool = False,
) -> RunResult:
    """Revert the newest `steps` migrations of each set (default 1), down to `to_version`
    (which stays applied), or `everything`."""
    chosen_options = sum(x is not None and x is not False for x in (steps, to_version, everything))
    if chosen_options > 1:
        raise UsageError("choose one of --steps, --to and --all")
    if steps is not None and steps < 1:
        raise UsageError("--steps must be at least 1")
    if to_version is not None and len(sets) != 1:
        raise UsageError(
            "--to VERSION names a version of one set; choose the set with --set "
            f"(sets here: {', '.join(s.name for s in sets)})"
        )
    reporter = reporter or NullReporter()
    result = RunResult(command="revert", dry_run=options.dry_run, sets=[s.name for s in sets])
    with session(url, options, "revert") as driver, _maybe_locked(driver, options, reporter):
        states = read_states(driver, sets)
        check_safe(states, options, "revert")
        steps_down = [
            pair
            for state in reversed(states)
            for pair in _down_steps(state, driver, options, steps, to_version, everything)
        ]
        planned = _prepare_all(driver, steps_down)
        if options.dry_run:
            result.steps = [_planned(s) for s in planned]
            return result
        _execute_all(driver, planned, result, reporter)
    return result


def _down_steps(
    state: SetState,
    driver: Driver,
    options: RunOptions,
    steps: int | None,
    to_version: int | None,
    everything: bool,
) -> list[tuple[Step, MigrationState]]:
    recorded = sorted(state.recorded, key=lambda m: m.version, reverse=True)
    if to_version is not None:
        if to_version not in {m.version for m in recorded}:
            raise UsageError(
                f"set {state.name!r}: --to {to_version} is not an applied version "
                f"(applied: {', '.join(str(m.version) for m in reversed(recorded)) or 'none'})"
            )
        chosen = [m for m in recorded if m.version > to_version]
    elif everything:
        chosen = recorded
    else:
        chosen = recorded[: steps or 1]
    result = []
    for target in chosen:
        section = _down_section(state, target, driver)
        if section is None:
            expected = ""
            if target.migration is not None and target.file.endswith(".up.sql"):
                expected = f" (no {target.file.removesuffix('.up.sql')}.down.sql beside it)"
            raise RefusedError(
                f"refusing to revert; nothing was changed: set {state.name!r}: "
                f"{target.file} has no down migration{expected}, so it cannot be reverted"
            )
        step = Step(
            set_name=state.name,
            direction="down",
            version=target.version,
            name=target.name,
            file=section.file,
            section=section,
            migration=target.migration,
        )
        result.append((step, target))
    return result


def _down_section(state: SetState, target: MigrationState, driver: Driver) -> Section | None:
    migration = target.migration
    if migration is not None and target.status in ("applied", "dirty"):
        return migration.down
    # Modified or missing: undo what was applied, as recorded when it was applied.
    assert target.row is not None
    recorded = (
        driver.read_down_sql(state.set.table, target.version) if target.row.has_down_sql else None
    )
    if recorded is not None:
        transaction = not recorded.startswith(_RECORDED_NO_TRANSACTION)
        if transaction and migration is not None and migration.down is not None:
            transaction = migration.down.transaction  # recorded before the option was
        return Section(
            file=target.file + _RECORDED,
            sql=recorded.removeprefix(_RECORDED_NO_TRANSACTION),
            line_offset=0,
            transaction=transaction,
        )
    return migration.down if migration is not None else None


_RECORDED = " (down section recorded when applied)"
# Heads a recorded down section that runs outside a transaction: reverting a migration whose
# file is gone (or changed) needs the option as much as its SQL.
_RECORDED_NO_TRANSACTION = "-- whimbrel recorded: transaction:false\n"


def recorded_down(down: Section | None) -> str | None:
    """A down section as the tracking table keeps it: its SQL, and its options."""
    if down is None:
        return None
    return down.sql if down.transaction else _RECORDED_NO_TRANSACTION + down.sql


def mark(
    sets: Sequence[MigrationSet],
    url: DatabaseURL,
    options: RunOptions,
    *,
    set_name: str,
    version: int,
    applied: bool,
    reporter: Reporter | None = None,
) -> str:
    """Record a migration as applied or not applied without running it (recovery)."""
    reporter = reporter or NullReporter()
    selected = [s for s in sets if s.name == set_name]
    if not selected:
        raise UsageError(f"no set named {set_name!r} (sets: {', '.join(s.name for s in sets)})")
    with session(url, options, "mark", create=False) as driver, locked(driver, options, reporter):
        (state,) = read_states(driver, selected)
        target = next((m for m in state.migrations if m.version == version), None)
        if target is None:
            raise UsageError(f"set {set_name!r} has no migration {version}")
        table = state.set.table
        if not applied:
            if target.row is None:
                return f"set {set_name!r}: migration {version} was not recorded; nothing to do"
            driver.write(DeleteRow(table, version))
            return f"set {set_name!r}: migration {version} ({target.file}) marked as not applied"
        migration = target.migration
        if migration is None:
            raise RefusedError(
                f"set {set_name!r}: migration {version} has no file; cannot mark it applied"
            )
        up = _step(set_name, "up", migration, migration.up)
        prepared = prepare(up, driver.dialect, driver.can_run_atomically, to_run=False)
        statements = prepared.statements
        if not state.table_exists:
            driver.create_table(table)
        if target.row is not None:
            # Accept the file as it is now, keeping when it was first applied.
            p = driver.placeholder
            driver.execute(
                f"UPDATE {driver.qualified(table)} SET status = {p}, error = NULL, "
                f"sha256 = {p}, statements_done = {p}, statements_sha256 = {p}, "
                f"down_sql = {p} WHERE version = {p}",
                (
                    APPLIED,
                    migration.sha256,
                    len(statements),
                    _statements_hash(statements),
                    recorded_down(migration.down),
                    version,
                ),
            )
            return (
                f"set {set_name!r}: migration {version} ({migration.file}) marked as applied, "
                f"sha256 {migration.sha256}"
            )
        driver.write(
            InsertRow(
                table,
                RowValues(
                    version=version,
                    name=migration.name,
                    file=migration.file,
                    sha256=migration.sha256,
                    status=APPLIED,
                    statements_done=len(statements),
                    statements_sha256=_statements_hash(statements),
                    down_sql=recorded_down(migration.down),
                    duration_ms=0.0,
                ),
            )
        )
        return f"set {set_name!r}: migration {version} ({migration.file}) marked as applied"
