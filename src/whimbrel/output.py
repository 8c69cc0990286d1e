"""Rendering results for people (tables, progress) and machines (JSON).

rich draws the tables when stdout is a terminal; piped output gets plain aligned text,
which also keeps rich's import cost off scripted runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from itertools import repeat
from typing import Any, TextIO

import click

from whimbrel.engine import RunResult, Step, StepOutcome
from whimbrel.errors import MigrationFailed, WhimbrelError
from whimbrel.plan import MigrationState, SetState, Status

_STATUS_COLOURS = {
    "applied": "green",
    "pending": "yellow",
    "modified": "red",
    "missing": "red",
    "dirty": "red",
}


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC, always with six fractional digits."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    if value.year < 1000:  # isoformat pads the year to four digits; strftime does not
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # isoformat() is half the cost of strftime, and an inspect formats one per migration.
    text = value.isoformat()  # ...+00:00, without the fraction when it is 0
    return text[:-6] + "Z" if value.microsecond else text[:19] + ".000000Z"


def inspect_json(states: Sequence[SetState]) -> str:
    """The document of an inspect, as json.dumps(..., indent=2) writes it.

    Written directly: json's indented encoder is pure Python (only its compact one is in
    C), ~130 ms for the 10,000 migrations of an inspect; this is ~4x faster.
    """
    if not states:
        return '{\n  "sets": [],\n  "error": null\n}'
    texts = []
    for state in states:
        late = {m.version for m in state.out_of_order}
        migrations = ",\n".join(
            [_migration_json(m, m.version in late) for m in state.migrations]
            if late
            else map(_migration_json, state.migrations)
        )
        texts.append(
            f'    {{\n      "name": {_str(state.name)},\n      "table": {_str(state.set.table)},'
            f'\n      "path": {_str(str(state.set.path))},\n      "migrations": '
            + (f"[\n{migrations}\n      ]\n    }}" if migrations else "[]\n    }")
        )
    return '{\n  "sets": [\n' + ",\n".join(texts) + '\n  ],\n  "error": null\n}'


_str = json.encoder.encode_basestring_ascii  # how json.dumps writes a string
_KEY = ",\n          "  # between the keys of a migration in inspect_json


def _migration_json(state: MigrationState, out_of_order: bool = False) -> str:
    """A migration's object in inspect_json's document, at its depth there."""
    migration, row = state.migration, state.row
    if migration is not None:
        name, file, sha256 = migration.name, migration.file, migration.sha256
    else:
        assert row is not None
        name, file, sha256 = row.name, row.file, row.sha256
    applied_at = iso(row.applied_at) if row is not None else None
    text = (
        f'        {{\n          "version": "{state.version}"{_KEY}"name": {_str(name)}{_KEY}'
        f'"file": {_str(file)}{_KEY}"status": "{state.status}"{_KEY}"sha256": {_str(sha256)}'
        f'{_KEY}"applied_at": {"null" if applied_at is None else _str(applied_at)}'
    )
    if row is not None:
        duration = row.duration_ms
        text += (
            f'{_KEY}"recorded_sha256": {_str(row.sha256)}{_KEY}"duration_ms": '
            f"{'null' if duration is None else _float(round(duration, 3))}{_KEY}"
            f'"applied_by": {"null" if row.applied_by is None else _str(row.applied_by)}'
        )
        if state.status == "dirty":
            direction = "up" if row.status == "applying" else "down"
            error = "null" if row.error is None else _str(row.error)
            text += (
                f'{_KEY}"dirty": {{\n            "direction": "{direction}",\n            '
                f'"statements_done": {int.__repr__(row.statements_done)},\n            '
                f'"error": {error}\n          }}'
            )
    if out_of_order:
        text += f'{_KEY}"out_of_order": true'
    return text + "\n        }"


def _float(value: float) -> str:
    """A float as json.dumps writes it (allow_nan, its default)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _summary(state: SetState, statuses: Sequence[str] | None = None) -> str:
    """`statuses`: the status of each migration, when the caller has them at hand."""
    if statuses is None:
        statuses = [m.status for m in state.migrations]
    if not statuses:
        return "no migrations"
    applied = statuses.count("applied")  # counted in C: 10,000 rows per run
    if applied == len(statuses):
        return f"up to date ({applied} applied)"
    order = ("applied", "pending", "modified", "missing", "dirty")
    counts = {s: statuses.count(s) for s in order}
    return ", ".join(f"{counts[s]} {s}" for s in order if counts[s])


_EXACT_SECONDS = 2.0**33
_Columns = tuple[list[str], list[str], list[str], list[str], list[str]]


def _columns(state: SetState) -> _Columns:
    """The table's columns (version, name, status, applied at, file) of a set's rows.

    Built column by column, each in one comprehension, and the time shown formatted once
    per distinct second: an inspect of 10,000 migrations prints 10,000 rows.
    """
    migrations = state.migrations
    versions = [str(m.version) for m in migrations]
    names = [m.migration.name if m.migration is not None else m.name for m in migrations]
    statuses: list[str] = [m.status for m in migrations]
    files = [m.migration.file if m.migration is not None else m.file for m in migrations]
    shown: dict[float, str] = {}  # whole seconds since the epoch -> the time shown
    applied_column = []
    for m in migrations:
        row = m.row
        applied = row.applied_at if row is not None else None
        if applied is None:
            applied_column.append("-")
            continue
        if applied.tzinfo is None:
            applied = applied.replace(tzinfo=UTC)
        # Within 2**33 s of 1970 (years 1698-2242) a timestamp's float is exact to well
        # under a microsecond, so its floor is the second the table shows.
        timestamp = applied.timestamp()
        second = timestamp // 1 if -_EXACT_SECONDS < timestamp < _EXACT_SECONDS else None
        text = shown.get(second)  # type: ignore[arg-type]
        if text is None:
            text = applied.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
            if second is not None:
                shown[second] = text
        applied_column.append(text)
    return versions, names, statuses, applied_column, files


def _rows(state: SetState) -> list[tuple[str, str, str, str, str]]:
    return list(zip(*_columns(state), strict=True))


_HEADERS = ("VERSION", "NAME", "STATUS", "APPLIED AT (UTC)", "FILE")


def print_inspect(states: Sequence[SetState], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if out.isatty():
        _print_inspect_rich(states)
        return
    for index, state in enumerate(states):
        if index:
            out.write("\n")
        columns = _columns(state)
        out.write(f"{state.name} (table {state.set.table}): {_summary(state, columns[2])}\n")
        if not columns[0]:
            continue
        # Each column padded to its width in one C-level pass (str.ljust over the column),
        # the rows joined likewise; one write per set.
        padded: list[Iterable[str]] = [repeat("")]  # the two spaces that start each line
        for header, column in zip(_HEADERS[:-1], columns[:-1], strict=True):
            width = max(len(header), max(map(len, column)))
            padded.append(map(str.ljust, (header, *column), repeat(width)))
        padded.append((_HEADERS[-1], *columns[-1]))
        lines = map(str.rstrip, map("  ".join, zip(*padded, strict=False)))
        out.write("\n".join(lines) + "\n")
        if any(status in _PROBLEMS for status in set(columns[2])):
            for m in state.with_status(*_PROBLEMS):
                out.write(f"  ! {_problem(m)}\n")
        late = state.out_of_order
        if late:
            newest = max(r.version for r in state.recorded)
            out.write("".join(f"  ! {_out_of_order(m, newest)}\n" for m in late))


_PROBLEMS: tuple[Status, ...] = ("dirty", "modified")


def _out_of_order(m: MigrationState, newest: int) -> str:
    return (
        f"{m.file}: pending, but older than the newest applied migration ({newest}): "
        "apply refuses it (out of order) unless --allow-out-of-order"
    )


def _problem(m: MigrationState) -> str:
    if m.status == "modified":
        return f"{m.file}: file sha256 {m.sha256} differs from applied {m.recorded_sha256}"
    from whimbrel.engine import describe_dirty

    return describe_dirty(m)


def _print_inspect_rich(states: Sequence[SetState]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for state in states:
        table = Table(
            title=f"{state.name} [dim](table {state.set.table})[/dim]: {_summary(state)}",
            title_justify="left",
        )
        table.add_column("Version", justify="right", no_wrap=True)
        table.add_column("Name", overflow="fold")
        table.add_column("Status", no_wrap=True)
        table.add_column("Applied at (UTC)", no_wrap=True)
        table.add_column("File", overflow="fold")
        for row in _rows(state):
            colour = _STATUS_COLOURS[row[2]]
            table.add_row(row[0], row[1], f"[{colour}]{row[2]}[/{colour}]", row[3], row[4])
        console.print(table)
        for m in state.with_status("dirty", "modified"):
            console.print(f"  [red]![/red] {_problem(m)}", highlight=False)
        late = state.out_of_order
        if late:
            newest = max(r.version for r in state.recorded)
            for m in late:
                console.print(f"  [red]![/red] {_out_of_order(m, newest)}", highlight=False)


def run_json(result: object, error: WhimbrelError | None = None) -> str:
    """The JSON document of an apply/revert run; with `error`, of the part that ran. The
    same keys whatever happened: `error` is null after a success."""
    doc: dict[str, Any] = {}
    if isinstance(result, RunResult):
        doc = {
            "command": result.command,
            "dry_run": result.dry_run,
            "sets": result.sets,
            "migrations": [_outcome_json(o) for o in result.steps],
        }
        if result.database_created is not None:
            doc["database_created"] = result.database_created
        doc["error"] = None
    if error is not None:
        doc["error"] = {"exit_code": int(error.exit_code), "message": error.message}
        if isinstance(error, MigrationFailed):
            doc["error"].update(
                set=error.set_name,
                file=error.file,
                statement=error.statement_index + 1 if error.statement_index is not None else None,
                line=error.line,
                rolled_back=error.rolled_back,
            )
    return json.dumps(doc, indent=2)


def _outcome_json(outcome: StepOutcome) -> dict[str, Any]:
    return {
        "set": outcome.set_name,
        "version": str(outcome.version),
        "name": outcome.name,
        "file": outcome.file,
        "direction": outcome.direction,
        "status": outcome.status,
        "duration_ms": round(outcome.duration_ms, 3) if outcome.duration_ms is not None else None,
        "statements": outcome.statements,
        "transaction": outcome.atomic,
        "resumed_from_statement": outcome.resumed_from + 1 if outcome.resumed_from else None,
    }


def _format_ms(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


class ProgressReporter:
    """Prints one line per migration as it runs, with its time."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.colour = self.out.isatty()
        self._line_open = False  # a step's line awaits its outcome

    def _style(self, text: str, colour: str) -> str:
        return click.style(text, fg=colour) if self.colour else text

    def note(self, message: str) -> None:
        """A line about the run itself (waiting for the server, creating the database)."""
        self.err.write(message + "\n")
        self.err.flush()

    def lock_waiting(self, holder: str | None) -> None:
        who = f"held by {holder}" if holder else "held by another run"
        self.err.write(f"waiting for the migration lock ({who}) ...\n")
        self.err.flush()

    def step_started(self, step: Step) -> None:
        verb = "applying" if step.direction == "up" else "reverting"
        resumed = f" from statement {step.resume_from + 1}" if step.resume_from else ""
        self.out.write(f"{step.set_name}: {verb} {step.file}{resumed} ... ")
        self.out.flush()
        self._line_open = True

    def step_finished(self, step: Step, outcome: StepOutcome) -> None:
        assert outcome.duration_ms is not None
        word = "applied" if step.direction == "up" else "reverted"
        self.out.write(f"{self._style(word, 'green')} in {_format_ms(outcome.duration_ms)}\n")
        self.out.flush()
        self._line_open = False

    def failed(self, word: str = "FAILED") -> None:
        """End the running step's line; nothing when no step is running."""
        if not self._line_open:
            return
        self.out.write(self._style(word, "red") + "\n")
        self.out.flush()
        self._line_open = False


def print_run(result: RunResult, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if result.dry_run:
        verb = "apply" if result.command == "apply" else "revert"
        if not result.steps:
            out.write(f"Nothing to {verb}.\n")
        else:
            out.write(f"Would {verb}, in this order:\n")
            for step in result.steps:
                mode = "in a transaction" if step.atomic else "statement by statement"
                count = f"{step.statements} statement{'s' if step.statements != 1 else ''}"
                resumed = (
                    f", resuming at statement {step.resumed_from + 1}" if step.resumed_from else ""
                )
                out.write(f"  {step.set_name}: {step.file} ({count}, {mode}{resumed})\n")
        out.write("Dry run: nothing was changed.\n")
        return
    total = sum(s.duration_ms or 0 for s in result.steps)
    sets = sorted({s.set_name for s in result.steps})
    if not result.steps:
        if result.command == "apply":
            out.write("Nothing to apply: every set is up to date.\n")
        else:
            out.write("Nothing to revert.\n")
        return
    word = "Applied" if result.command == "apply" else "Reverted"
    n = len(result.steps)
    out.write(
        f"{word} {n} migration{'s' if n != 1 else ''} in {len(sets)} set"
        f"{'s' if len(sets) != 1 else ''} ({_format_ms(total)}).\n"
    )
