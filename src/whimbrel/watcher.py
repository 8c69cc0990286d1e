"""Watch mode: keep a development database in step with the migration files as you edit them.

`sync` brings the database in line with the files once; `watch` runs it on start and after
every batch of changes to migration files. It is state-based: each cycle re-reads the files
and the tracking tables and acts on what differs, never on the file events themselves, so an
editor's temp files, renames and partial saves cannot confuse it.

Reconciling an applied migration that changed (or was deleted, or a new file older than the
newest applied one) is either

- `revert` (the default): revert the set back to just before it, newest first, each with the
  down section *recorded when it was applied* for a changed or deleted file (that is what
  undoes what actually ran; the file's new down section belongs to its new up section), then
  apply again; or
- `reset`: drop and recreate the whole database, then apply everything.

A dirty migration (a non-transactional one that failed half-way, e.g. DDL on MySQL) is
resumed at the statement that failed in `revert` mode, and is a reason to reset in `reset`
mode.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from whimbrel.discovery import SAFE_SET_NAME, looks_like_migration
from whimbrel.errors import InvalidMigrationsError, RefusedError, UsageError, WhimbrelError

if TYPE_CHECKING:
    from whimbrel.engine import Reporter, RunResult
    from whimbrel.plan import SetState
    from whimbrel.urls import DatabaseURL

__all__ = ["Reconcile", "SyncResult", "Trigger", "WatchEvent", "sync", "watch"]

Mode = Literal["revert", "reset"]
EventKind = Literal["created", "changed", "reconcile", "reverted", "applied", "error", "watching"]


@dataclass(frozen=True)
class Trigger:
    """Why a set must be reconciled: one applied migration no longer matches its file."""

    set_name: str
    version: int
    file: str
    reason: Literal["modified", "missing", "out_of_order", "dirty"]

    def describe(self) -> str:
        what = {
            "modified": "changed since it was applied",
            "missing": "was deleted after it was applied",
            "out_of_order": "is new but older than the newest applied migration",
            "dirty": "is dirty (a failed run left it half-applied)",
        }[self.reason]
        return f"{self.set_name}/{self.file} {what}"


@dataclass
class Reconcile:
    mode: Mode
    triggers: list[Trigger]
    reverted: list[RunResult] = field(default_factory=list)


@dataclass
class SyncResult:
    """What one cycle did: the reconciliation (if any) and the apply run."""

    reconcile: Reconcile | None
    applied: RunResult


@dataclass(frozen=True)
class WatchEvent:
    """Something the watcher did, for a CLI or a component to show.

    kind: `created` (the database did not exist), `changed` (files changed: `files`),
    `reconcile` (the loud announcement before a revert or reset: `reconcile`), `reverted`
    and `applied` (a run finished: `result`), `error` (the cycle failed: `error`; watching
    goes on) and `watching` (idle, waiting for the next save).
    """

    kind: EventKind
    message: str
    files: tuple[str, ...] = ()
    reconcile: Reconcile | None = None
    result: RunResult | None = None
    error: WhimbrelError | None = None


EventHandler = Callable[[WatchEvent], None]


def _ignore(_event: WatchEvent) -> None:
    pass


def _parse(url: str | DatabaseURL | None) -> DatabaseURL:
    from whimbrel.api import _url

    return _url(url)


def _read_states(
    path: str | os.PathLike[str], url: DatabaseURL, sets: Sequence[str] | None, timeout: float
) -> list[SetState]:
    from whimbrel import engine
    from whimbrel.api import load_sets
    from whimbrel.plan import compare

    migration_sets = load_sets(path, sets)
    if url.dialect == "sqlite" and url.path and not os.path.exists(url.path):
        return [compare(s, None) for s in migration_sets]
    with engine.session(url, engine.RunOptions(connect_timeout=timeout), "watch") as driver:
        return engine.read_states(driver, migration_sets)


def triggers(states: Sequence[SetState]) -> list[Trigger]:
    """The applied migrations that no longer match the files, by set and version."""
    found = []
    for state in states:
        late = {m.version for m in state.out_of_order}
        for m in state.migrations:
            reason: Literal["modified", "missing", "out_of_order", "dirty"] | None = None
            if m.status in ("modified", "missing", "dirty"):
                reason = m.status
            elif m.version in late:
                reason = "out_of_order"
            if reason is not None:
                found.append(Trigger(state.name, m.version, m.file, reason))
    return found


def sync(
    path: str | os.PathLike[str],
    url: str | DatabaseURL | None = None,
    *,
    reset: bool = False,
    sets: Sequence[str] | None = None,
    lock_timeout: float = 60.0,
    connect_timeout: float = 10.0,
    reporter: Reporter | None = None,
    on_event: EventHandler | None = None,
) -> SyncResult:
    """Bring the database in line with the files once: reconcile, then apply what is pending.

    Raises the run's `WhimbrelError` when a file is invalid or a statement fails.
    """
    from whimbrel import api

    notify = on_event or _ignore
    db_url = _parse(url)
    states = _read_states(path, db_url, sets, connect_timeout)
    found = triggers(states)
    reconcile = None
    if reset and found:
        reconcile = Reconcile("reset", found)
        notify(
            WatchEvent(
                "reconcile",
                _banner(
                    found,
                    f"RESETTING the database: dropping and recreating "
                    f"{db_url.display_name}, then applying everything",
                ),
                reconcile=reconcile,
            )
        )
        from whimbrel import provisioning as provision

        provision.drop_database(db_url, connect_timeout=connect_timeout)
        provision.create_database(db_url, connect_timeout=connect_timeout)
    else:
        to_revert = [t for t in found if t.reason != "dirty"]  # dirty ones are resumed below
        if to_revert:
            reconcile = Reconcile("revert", found)
            plan = _revert_plan(states, to_revert)
            where = "; ".join(
                f"set {name!r} back to "
                + (f"version {target}" if target is not None else "before its first migration")
                for name, target in plan
            )
            notify(
                WatchEvent(
                    "reconcile",
                    _banner(
                        to_revert,
                        f"REVERTING {where} with the recorded down sections, then applying again",
                    ),
                    reconcile=reconcile,
                )
            )
            for name, target in plan:
                try:
                    result = api.revert(
                        path,
                        db_url,
                        sets=[name],
                        to=target,
                        all=target is None,
                        allow_drift=True,
                        lock_timeout=lock_timeout,
                        connect_timeout=connect_timeout,
                        reporter=reporter,
                    )
                except RefusedError as exc:
                    # Typically an empty recorded down section (dbmate's default).
                    raise RefusedError(
                        f"{exc.message}\nhint: watch cannot revert this; restart it with "
                        "--reset to drop and recreate the database instead"
                    ) from None
                reconcile.reverted.append(result)
                notify(WatchEvent("reverted", _summary(result), result=result))
    applied = api.apply(
        path,
        db_url,
        sets=sets,
        resume=not reset,
        lock_timeout=lock_timeout,
        connect_timeout=connect_timeout,
        reporter=reporter,
    )
    notify(WatchEvent("applied", _summary(applied), result=applied))
    return SyncResult(reconcile, applied)


def _banner(found: Sequence[Trigger], action: str) -> str:
    return "==> " + "; ".join(t.describe() for t in found) + f": {action}"


def _revert_plan(
    states: Sequence[SetState], found: Sequence[Trigger]
) -> list[tuple[str, int | None]]:
    """Per set, the version to revert to (None: everything), sets in reverse name order."""
    plan = []
    for state in reversed(states):
        versions = [t.version for t in found if t.set_name == state.name]
        if not versions:
            continue
        first = min(versions)
        if not any(m.version >= first for m in state.recorded):
            continue  # nothing applied from there on
        below = [m.version for m in state.recorded if m.version < first]
        plan.append((state.name, max(below) if below else None))
    return plan


def _summary(result: RunResult) -> str:
    import io

    from whimbrel.output import print_run

    out = io.StringIO()
    print_run(result, out)
    return out.getvalue().rstrip("\n")


def is_migration_change(path: str) -> bool:
    """Whether a changed path can matter: a migration file, or a folder (a set)."""
    name = os.path.basename(path)
    if name.startswith("."):
        return False
    if looks_like_migration(name):
        return True
    # A set folder created, renamed or deleted (a deleted path's kind is unknown: judge by
    # its name, which rules out vim's "4913" probe file and the like).
    return os.path.isdir(path) or (not os.path.exists(path) and bool(SAFE_SET_NAME.fullmatch(name)))


def watch(
    path: str | os.PathLike[str],
    url: str | DatabaseURL | None = None,
    *,
    reset: bool = False,
    sets: Sequence[str] | None = None,
    stop_event: threading.Event | None = None,
    on_event: EventHandler | None = None,
    reporter: Reporter | None = None,
    lock_timeout: float = 60.0,
    connect_timeout: float = 10.0,
    create: bool = True,
    debounce_ms: int = 1600,
    step_ms: int = 100,
    force_polling: bool | None = None,
) -> None:
    """Apply on start, then after every saved change to a migration file under `path`.

    Runs until `stop_event` is set (or KeyboardInterrupt). Every cycle's outcome goes to
    `on_event`; a failing cycle (an invalid file, a failing statement, a lost connection)
    is reported as an `error` event and watching goes on: the next save retries. With
    `create`, a missing database is created first (an error here is raised: there is
    nothing to watch for).

    `debounce_ms` bounds how long a burst of changes is gathered; a batch is handled once
    no change came for `step_ms` (editors write a temp file, then rename it).
    """
    import watchfiles

    notify = on_event or _ignore
    root = Path(path)
    if not root.is_dir():
        raise InvalidMigrationsError(f"migrations path {root} does not exist or is not a folder")
    db_url = _parse(url)
    if sets:
        from whimbrel.api import load_sets

        try:
            load_sets(path, sets)
        except UsageError:
            raise  # an unknown --set name: a mistake in the command, not in a file
        except WhimbrelError:
            pass  # a broken file: reported by the first cycle, fixed by a save
    if create:
        from whimbrel import provisioning as provision

        if provision.create_database(db_url, connect_timeout=connect_timeout):
            notify(WatchEvent("created", f"created database {db_url.display_name}"))

    def cycle(files: tuple[str, ...]) -> None:
        if files:
            notify(WatchEvent("changed", "changed: " + ", ".join(files), files=files))
        try:
            sync(
                path,
                db_url,
                reset=reset,
                sets=sets,
                lock_timeout=lock_timeout,
                connect_timeout=connect_timeout,
                reporter=reporter,
                on_event=notify,
            )
        except WhimbrelError as exc:
            notify(WatchEvent("error", exc.message, error=exc))

    watching = WatchEvent("watching", f"watching {root} for changes (Ctrl-C to stop)")
    changes = watchfiles.watch(
        root,
        watch_filter=lambda _change, changed: is_migration_change(changed),
        debounce=debounce_ms,
        step=step_ms,
        stop_event=stop_event,
        rust_timeout=250,
        # The first (empty) yield says the watcher is running: only then apply and say
        # "watching", so that no save after that line can be missed.
        yield_on_timeout=True,
        force_polling=force_polling,
    )
    started = False
    for batch in changes:
        if not started:
            started = True
            cycle(_relative(root, batch))
            notify(watching)
        elif batch:
            cycle(_relative(root, batch))
            notify(watching)


def _relative(root: Path, batch: Iterable[tuple[object, str]]) -> tuple[str, ...]:
    names = set()
    for _change, changed in batch:
        try:
            names.add(os.path.relpath(changed, root))
        except ValueError:
            names.add(changed)
    return tuple(sorted(names))
