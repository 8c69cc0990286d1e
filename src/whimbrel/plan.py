"""Plan: compare what the database recorded with the files, set by set."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from whimbrel._fast import builder
from whimbrel.discovery import Migration, MigrationSet
from whimbrel.drivers.base import APPLIED, TrackingRow

Status = Literal["applied", "pending", "modified", "missing", "dirty"]


@dataclass(frozen=True, slots=True)
class MigrationState:
    """A migration as the files and the tracking table together say it stands."""

    version: int
    status: Status
    migration: Migration | None  # None when the file is missing
    row: TrackingRow | None  # None when pending

    @property
    def name(self) -> str:
        return self.migration.name if self.migration else self.row.name  # type: ignore[union-attr]

    @property
    def file(self) -> str:
        return self.migration.file if self.migration else self.row.file  # type: ignore[union-attr]

    @property
    def sha256(self) -> str:
        """The file's hash; for a missing file, the recorded one."""
        return self.migration.sha256 if self.migration else self.row.sha256  # type: ignore[union-attr]

    @property
    def recorded_sha256(self) -> str | None:
        return self.row.sha256 if self.row else None

    @property
    def applied_at(self) -> datetime | None:
        return self.row.applied_at if self.row else None


@dataclass(frozen=True, slots=True)
class SetState:
    """Every migration of a set, files and tracking rows compared."""

    set: MigrationSet
    table_exists: bool
    migrations: tuple[MigrationState, ...]  # by version

    @property
    def name(self) -> str:
        return self.set.name

    def with_status(self, *statuses: Status) -> list[MigrationState]:
        return [m for m in self.migrations if m.status in statuses]

    @property
    def pending(self) -> list[MigrationState]:
        return self.with_status("pending")

    @property
    def recorded(self) -> list[MigrationState]:
        return [m for m in self.migrations if m.row is not None]

    @property
    def out_of_order(self) -> list[MigrationState]:
        """Pending migrations older than the newest recorded one."""
        recorded = [m.version for m in self.recorded]
        if not recorded:
            return []
        newest = max(recorded)
        return [m for m in self.pending if m.version < newest]

    @property
    def up_to_date(self) -> bool:
        return all(m.status == "applied" for m in self.migrations)


_new_state = builder(MigrationState)  # MigrationState(version, status, migration, row)


def compare(migration_set: MigrationSet, rows: list[TrackingRow] | None) -> SetState:
    """`rows` is None when the set's tracking table does not exist yet."""
    recorded = {row.version: row for row in rows} if rows else {}
    new_state = _new_state
    states = []
    previous = -1
    # Discovery gives the files in version order; a recorded row is taken off as its file
    # comes by, so what is left is the rows without a file. One pass, no property calls:
    # this runs once per migration (10,000 per run).
    for migration in migration_set.migrations:
        version = migration.version
        if version <= previous:  # not from discovery: out of order or a version twice
            return _compare_any_order(migration_set, rows)
        previous = version
        row = recorded.pop(version, None)
        status: Status
        if row is None:
            status = "pending"
        elif row.status != APPLIED:  # row.dirty
            status = "dirty"
        elif migration.sha256 != row.sha256:
            status = "modified"
        else:
            status = "applied"
        states.append(new_state(version, status, migration, row))
    if recorded:
        for version, row in recorded.items():
            states.append(new_state(version, "dirty" if row.dirty else "missing", None, row))
        states.sort(key=_by_version)
    return SetState(set=migration_set, table_exists=rows is not None, migrations=tuple(states))


def _by_version(state: MigrationState) -> int:
    return state.version


def _compare_any_order(migration_set: MigrationSet, rows: list[TrackingRow] | None) -> SetState:
    files = migration_set.by_version()
    recorded = {row.version: row for row in rows or []}
    states = []
    for version in sorted(files.keys() | recorded.keys()):
        migration = files.get(version)
        row = recorded.get(version)
        status: Status
        if row is None:
            status = "pending"
        elif row.dirty:
            status = "dirty"
        elif migration is None:
            status = "missing"
        elif migration.sha256 != row.sha256:
            status = "modified"
        else:
            status = "applied"
        states.append(_new_state(version, status, migration, row))
    return SetState(set=migration_set, table_exists=rows is not None, migrations=tuple(states))
