"""The Python API: each command as one function over the library objects.

    >>> import whimbrel
    >>> result = whimbrel.apply("migrations/", "sqlite:///app.db")  # doctest: +SKIP

The CLI is a thin layer over these functions; they take the same options.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from whimbrel import engine
from whimbrel.discovery import MigrationSet, discover
from whimbrel.engine import Reporter, RunOptions, RunResult
from whimbrel.errors import UsageError
from whimbrel.plan import SetState
from whimbrel.urls import DatabaseURL, parse_url

__all__ = ["apply", "inspect", "load_sets", "mark", "revert"]


def load_sets(
    path: str | os.PathLike[str], only: Sequence[str] | None = None
) -> list[MigrationSet]:
    """Discover the sets under `path`; `only` keeps the named ones (unknown names are an error)."""
    sets = discover(path, lazy=True)  # a file's sections are parsed when it runs
    if not only:
        return sets
    names = {s.name for s in sets}
    unknown = [name for name in only if name not in names]
    if unknown:
        raise UsageError(
            f"no set named {', '.join(map(repr, unknown))} in {path} "
            f"(sets: {', '.join(sorted(names))})"
        )
    return [s for s in sets if s.name in set(only)]


def _url(url: str | DatabaseURL | None) -> DatabaseURL:
    if isinstance(url, DatabaseURL):
        return url
    return parse_url(url or os.environ.get("DATABASE_URL", ""))


def inspect(
    path: str | os.PathLike[str],
    url: str | DatabaseURL | None = None,
    *,
    sets: Sequence[str] | None = None,
    connect_timeout: float = 10.0,
) -> list[SetState]:
    """Compare the database with the files; changes nothing."""
    options = RunOptions(connect_timeout=connect_timeout)
    return engine.inspect(load_sets(path, sets), _url(url), options)


def apply(
    path: str | os.PathLike[str],
    url: str | DatabaseURL | None = None,
    *,
    sets: Sequence[str] | None = None,
    dry_run: bool = False,
    allow_drift: bool = False,
    allow_out_of_order: bool = False,
    resume: bool = False,
    single_transaction: bool = False,
    lock_timeout: float = 60.0,
    connect_timeout: float = 10.0,
    reporter: Reporter | None = None,
) -> RunResult:
    """Apply every pending migration, set by set in name order.

    With `single_transaction`, all of them run in one transaction: all or nothing
    (PostgreSQL, SQLite; on MySQL only when every migration is plain DML).
    """
    options = RunOptions(
        lock_timeout=lock_timeout,
        connect_timeout=connect_timeout,
        allow_drift=allow_drift,
        allow_out_of_order=allow_out_of_order,
        resume=resume,
        single_transaction=single_transaction,
        dry_run=dry_run,
        hint_path=os.fspath(path),
    )
    return engine.apply(load_sets(path, sets), _url(url), options, reporter)


def revert(
    path: str | os.PathLike[str],
    url: str | DatabaseURL | None = None,
    *,
    steps: int | None = None,
    to: int | None = None,
    all: bool = False,
    sets: Sequence[str] | None = None,
    dry_run: bool = False,
    allow_drift: bool = False,
    resume: bool = False,
    lock_timeout: float = 60.0,
    connect_timeout: float = 10.0,
    reporter: Reporter | None = None,
) -> RunResult:
    """Revert the newest migration of each set, or `steps` of them, down to `to`, or `all`."""
    options = RunOptions(
        lock_timeout=lock_timeout,
        connect_timeout=connect_timeout,
        allow_drift=allow_drift,
        resume=resume,
        dry_run=dry_run,
        hint_path=os.fspath(path),
    )
    return engine.revert(
        load_sets(path, sets),
        _url(url),
        options,
        reporter,
        steps=steps,
        to_version=to,
        everything=all,
    )


def mark(
    path: str | os.PathLike[str],
    url: str | DatabaseURL | None = None,
    *,
    set: str,
    version: int,
    applied: bool,
    lock_timeout: float = 60.0,
    connect_timeout: float = 10.0,
) -> str:
    """Record a migration as applied or not applied without running it (recovery)."""
    options = RunOptions(lock_timeout=lock_timeout, connect_timeout=connect_timeout)
    return engine.mark(
        load_sets(path), _url(url), options, set_name=set, version=version, applied=applied
    )
