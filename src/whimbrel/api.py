"""The Python API: each command as one function over the library objects.

    >>> import whimbrel
    >>> result = whimbrel.apply("migrations/", "sqlite:///app.db")  # doctest: +SKIP

The CLI is a thin layer over these functions; they take the same options.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from whimbrel import engine
from whimbrel.discovery import MigrationSet, discover
from whimbrel.engine import Reporter, RunOptions, RunResult
from whimbrel.errors import UsageError, WhimbrelError
from whimbrel.plan import SetState
from whimbrel.source import ManifestCheck, open_sets
from whimbrel.urls import DatabaseURL, parse_url

if TYPE_CHECKING:
    from whimbrel.bundles import BundleInfo
    from whimbrel.manifests import Manifest

__all__ = [
    "ProvisionResult",
    "apply",
    "bundle",
    "inspect",
    "load_sets",
    "manifest",
    "mark",
    "provision",
    "revert",
    "verify_manifest",
]


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _one_name_is_a_list(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """`sets="billing"` means the set billing, not the sets b, i, l, l, i, n and g."""

    @functools.wraps(func)
    def with_set_names(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if isinstance(kwargs.get("sets"), str):
            kwargs["sets"] = [kwargs["sets"]]
        return func(*args, **kwargs)

    return with_set_names


def load_sets(
    path: str | os.PathLike[str],
    only: Sequence[str] | None = None,
    *,
    lazy: bool = False,
    on_found: Callable[[list[str]], None] | None = None,
) -> list[MigrationSet]:
    """Discover the sets under `path`; `only` keeps the named ones (unknown names are an error).

    Every file is checked, unless `lazy`: then a file's sections are parsed when first used,
    which a run does for every migration it will run before it runs any. `on_found` is
    told the names of the sets to be loaded before their files are read.
    """
    if isinstance(only, str):
        only = [only]
    found = on_found
    if on_found is not None and only:
        found = lambda names: on_found([n for n in names if n in only])  # noqa: E731
    sets = discover(path, lazy=lazy, on_found=found)
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


@_one_name_is_a_list
def inspect(
    path: str | os.PathLike[str],
    url: str | DatabaseURL | None = None,
    *,
    sets: Sequence[str] | None = None,
    connect_timeout: float = 10.0,
    manifest: str | os.PathLike[str] | None = None,
    manifest_store: str | os.PathLike[str] | None = None,
    wait: bool | float = False,
) -> list[SetState]:
    """Compare the database with the files; changes nothing.

    `path` may be a bundle; `manifest` verifies the files first; `wait` (True, or seconds)
    waits for the database to accept connections.
    """
    options = RunOptions(connect_timeout=connect_timeout)
    parsed = _url(url)
    # The tracking tables are read while the files are (not when waiting for the server).
    early = engine.EarlyRead(parsed, options) if not wait else None
    try:
        with open_sets(
            path,
            sets=sets,
            manifest=manifest,
            manifest_store=manifest_store,
            dialect=parsed.dialect,
            on_found=early.start if early is not None else None,
        ) as source:
            _ready(parsed, wait=wait, create_db=False, connect_timeout=connect_timeout)
            return engine.inspect(source.sets, parsed, options, early=early)
    finally:
        if early is not None:
            early.abandon()


@_one_name_is_a_list
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
    manifest: str | os.PathLike[str] | None = None,
    manifest_store: str | os.PathLike[str] | None = None,
    create_db: bool = False,
    wait: bool | float = False,
) -> RunResult:
    """Apply every pending migration, set by set in name order.

    `path` may be a bundle; `manifest` verifies the files first (before connecting);
    `wait` (True for 60 s, or seconds) waits for the server; `create_db` creates a missing
    database first (not with `dry_run`, which then plans every migration).
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
    parsed = _url(url)
    with open_sets(
        path, sets=sets, manifest=manifest, manifest_store=manifest_store, dialect=parsed.dialect
    ) as source:
        _note_verified(reporter, source.verified)
        created, exists = _ready(
            parsed,
            wait=wait,
            create_db=create_db,
            connect_timeout=connect_timeout,
            dry_run=dry_run,
            reporter=reporter,
            # apply creates a missing SQLite file itself: wait only for its folder.
            need_database=not create_db and parsed.dialect != "sqlite",
            sets=source.sets,
        )
        if not exists:
            result = _plan_for_missing_database(source.sets, parsed)
        else:
            try:
                result = engine.apply(source.sets, parsed, options, reporter)
            except WhimbrelError as exc:
                if create_db and isinstance(exc.partial, RunResult):
                    exc.partial.database_created = created  # JSON keeps its keys
                raise
        if create_db:
            result.database_created = created
        return result


@_one_name_is_a_list
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
    manifest: str | os.PathLike[str] | None = None,
    manifest_store: str | os.PathLike[str] | None = None,
    wait: bool | float = False,
) -> RunResult:
    """Revert the newest migration of each set, or `steps` of them, down to `to`, or `all`.

    `path` may be a bundle; `manifest` and `wait` work as for `apply`.
    """
    options = RunOptions(
        lock_timeout=lock_timeout,
        connect_timeout=connect_timeout,
        allow_drift=allow_drift,
        resume=resume,
        dry_run=dry_run,
        hint_path=os.fspath(path),
    )
    parsed = _url(url)
    with open_sets(
        path, sets=sets, manifest=manifest, manifest_store=manifest_store, dialect=parsed.dialect
    ) as source:
        _ready(parsed, wait=wait, create_db=False, connect_timeout=connect_timeout)
        return engine.revert(
            source.sets,
            parsed,
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


# -- manifests, bundles and provisioning ----------------------------------------------------
DEFAULT_WAIT = 60.0


def _wait_seconds(wait: bool | float | None) -> float | None:
    if wait is True:
        return DEFAULT_WAIT
    if wait is False or wait is None:
        return None
    return float(wait)


def _note(reporter: object, message: str) -> None:
    note = getattr(reporter, "note", None)  # optional: ProgressReporter prints it
    if callable(note):
        note(message)


def _note_verified(reporter: object, checks: Sequence[ManifestCheck]) -> None:
    for check in checks:
        files = sum(len(f) for f in check.sets.values())
        noun = "file" if files == 1 else "files"
        _note(reporter, f"verified {files} {noun} against {check.source} (sha256 {check.sha256})")


def _wait_notes(reporter: object, url: DatabaseURL, seconds: float) -> Any:
    """An on_retry callback that says once that, and why, it is waiting."""
    said: list[bool] = []

    def on_retry(error: str) -> None:
        if not said:
            said.append(True)
            _note(reporter, f"waiting up to {seconds:g} s for {url}: {error}")

    return on_retry


def _ready(
    url: DatabaseURL,
    *,
    wait: bool | float | None,
    create_db: bool,
    connect_timeout: float,
    dry_run: bool = False,
    reporter: object = None,
    need_database: bool = True,
    sets: Sequence[MigrationSet] = (),
) -> tuple[bool, bool]:
    """Wait for the server and create the database as asked; return (created, exists).

    `exists` is False only for a dry run that would have created the database. Before
    creating it, every migration of `sets` is checked.
    """
    seconds = _wait_seconds(wait)
    if seconds is None and not create_db:
        return False, True
    from whimbrel import provisioning as prov

    if seconds is not None:
        prov.wait_until_ready(
            url,
            seconds,
            need_database=need_database,
            connect_timeout=connect_timeout,
            on_retry=_wait_notes(reporter, url, seconds),
        )
    if not create_db:
        return False, True
    name = prov.database_name(url)
    if dry_run:
        if prov.database_exists(url, connect_timeout=connect_timeout):
            return False, True
        _note(reporter, f"would create database {name!r}")
        return False, False
    created = _create_checked(url, sets, connect_timeout)
    if created:
        _note(reporter, f"created database {name!r}")
    return created, True


def _create_checked(url: DatabaseURL, sets: Sequence[MigrationSet], connect_timeout: float) -> bool:
    from whimbrel import provisioning as prov

    if sets and not prov.database_exists(url, connect_timeout=connect_timeout):
        engine.check_all(sets, url.dialect)
    return prov.create_database(url, connect_timeout=connect_timeout)


def _plan_for_missing_database(sets: Sequence[MigrationSet], url: DatabaseURL) -> RunResult:
    """A dry run's plan for a database that does not exist yet: every migration."""
    from whimbrel.plan import compare

    atomic_possible: Any = lambda _statements: True  # noqa: E731
    if url.dialect == "mysql":
        from whimbrel.drivers.mysql import _NO_IMPLICIT_COMMIT

        def atomic_possible(statements: Sequence[str]) -> bool:
            return all(_NO_IMPLICIT_COMMIT.match(s) for s in statements)

    states = [compare(s, None) for s in sets]
    steps = [
        engine.prepare(step, url.dialect, atomic_possible)
        for step, _ in engine._up_steps(states, RunOptions())
    ]
    result = RunResult(command="apply", dry_run=True, sets=[s.name for s in sets])
    result.steps = [engine._planned(step) for step in steps]
    result.database_created = False
    return result


def _engine_name(engine_name: str | None, url: str | DatabaseURL | None) -> str:
    if engine_name:
        return engine_name
    if url:
        return _url(url).dialect
    return "any"


@_one_name_is_a_list
def manifest(
    path: str | os.PathLike[str],
    *,
    engine: str | None = None,
    url: str | DatabaseURL | None = None,
    sets: Sequence[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
) -> Manifest:
    """The manifest of the sets under `path`: every file with its SHA-256, in run order.

    The engine on each `database` line is `engine`, else the URL's database (`postgres`,
    `mysql`, `sqlite`), else `any`. `.text()` is the manifest file, `.to_json()` the JSON.
    With `reference` (an earlier manifest file), each set it lists gets a
    `+migration-reference` line and only the files added since; the earlier files must be
    unchanged (else ManifestMismatch). Its own references are looked up in `store`
    (default: its folder).
    """
    from whimbrel import manifests

    try:
        return manifests.build(
            path, _engine_name(engine, url), sets, reference=reference, store=store
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@_one_name_is_a_list
def verify_manifest(
    path: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | None = None,
    *,
    store: str | os.PathLike[str] | None = None,
    sets: Sequence[str] | None = None,
    url: str | DatabaseURL | None = None,
) -> list[ManifestCheck]:
    """Verify a folder or bundle (`path`) against a manifest file; connects to nothing.

    A bundle is always verified against its embedded manifest; `manifest` may then be None.
    Returns each manifest checked, with its SHA-256 and the files compared.

    Raises `ManifestMismatch` (exit 10) when files were added, removed or altered, and
    `InvalidManifestError` (exit 11) for a malformed manifest, an unresolvable reference or
    an unsafe bundle. With `url`, a manifest for another engine is a mismatch too.
    """
    dialect = _url(url).dialect if url else None
    if manifest is None and not os.path.isfile(path):
        raise UsageError(
            f"{path} is a folder: name the manifest to verify it against (--manifest FILE)"
        )
    with open_sets(
        path, sets=sets, manifest=manifest, manifest_store=store, dialect=dialect
    ) as source:
        return source.verified


@_one_name_is_a_list
def bundle(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    engine: str | None = None,
    url: str | DatabaseURL | None = None,
    sets: Sequence[str] | None = None,
) -> BundleInfo:
    """Write one deterministic tar archive of the sets under `path` plus their manifest."""
    from whimbrel import bundles

    try:
        return bundles.write(path, output, engine=_engine_name(engine, url), sets=sets)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@dataclass
class ProvisionResult:
    """What `provision` did; on failure, the error's `partial` holds the part that ran."""

    url: str  # redacted
    engine: str
    database: str
    created: bool = False
    waited_s: float = 0.0
    manifests: list[ManifestCheck] = field(default_factory=list)
    run: RunResult | None = None


class _Recording:
    """A reporter that passes events on and keeps the outcome of every finished step, so
    that an interrupted provision can still say what it applied."""

    def __init__(self, inner: Reporter | None, into: list[Any]) -> None:
        self.inner = inner
        self.into = into

    def lock_waiting(self, holder: str | None) -> None:
        if self.inner is not None:
            self.inner.lock_waiting(holder)

    def step_started(self, step: Any) -> None:
        if self.inner is not None:
            self.inner.step_started(step)

    def step_finished(self, step: Any, outcome: Any) -> None:
        self.into.append(outcome)
        if self.inner is not None:
            self.inner.step_finished(step, outcome)

    def note(self, message: str) -> None:
        _note(self.inner, message)


@_one_name_is_a_list
def provision(
    path: str | os.PathLike[str],
    url: str | DatabaseURL | None = None,
    *,
    manifest: str | os.PathLike[str] | None = None,
    manifest_store: str | os.PathLike[str] | None = None,
    sets: Sequence[str] | None = None,
    create_db: bool = True,
    wait_timeout: float = DEFAULT_WAIT,
    lock_timeout: float = 60.0,
    connect_timeout: float = 10.0,
    reporter: Reporter | None = None,
) -> ProvisionResult:
    """What FTL's provisioner does: verify, wait for the server, create the database, apply.

    The files (a folder or a bundle) are verified first, before anything connects, so a
    deployment that does not match its manifest creates nothing. Then it waits up to
    `wait_timeout` seconds for the server, creates the database if missing (`create_db`),
    and applies every pending migration strictly (no drift, no out-of-order).
    """
    from whimbrel import provisioning as prov

    parsed = _url(url)
    result = ProvisionResult(
        url=str(parsed), engine=parsed.dialect, database=prov.database_name(parsed)
    )
    finished: list[Any] = []  # step outcomes, for an interrupted run
    try:
        with open_sets(
            path,
            sets=sets,
            manifest=manifest,
            manifest_store=manifest_store,
            dialect=parsed.dialect,
        ) as source:
            result.manifests = source.verified
            names = [s.name for s in source.sets]
            result.run = RunResult(command="apply", dry_run=False, sets=names)
            started = time.monotonic()
            _note_verified(reporter, source.verified)
            try:
                prov.wait_until_ready(
                    parsed,
                    wait_timeout,
                    # Without create_db the database must exist, a SQLite file too:
                    # provision never creates what it was told not to.
                    need_database=not create_db,
                    connect_timeout=connect_timeout,
                    on_retry=_wait_notes(reporter, parsed, wait_timeout),
                )
            finally:
                result.waited_s = time.monotonic() - started
            if create_db:
                result.created = _create_checked(parsed, source.sets, connect_timeout)
                if result.created:
                    _note(reporter, f"created database {result.database!r}")
            options = RunOptions(
                lock_timeout=lock_timeout,
                connect_timeout=connect_timeout,
                hint_path=os.fspath(path),
            )
            result.run = engine.apply(source.sets, parsed, options, _Recording(reporter, finished))
    except WhimbrelError as exc:
        if isinstance(exc.partial, RunResult):
            result.run = exc.partial
        exc.partial = result
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM: say what was done all the same
        if result.run is not None:
            result.run.steps = list(finished)
        exc.partial = result  # type: ignore[attr-defined]
        raise
    return result
