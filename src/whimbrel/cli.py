"""The `whimbrel` command: a thin layer over `whimbrel.api`."""

from __future__ import annotations

import functools
import gc
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from whimbrel import __version__, kube
from whimbrel.errors import ExitCode, Interrupted, UsageError, WhimbrelError
from whimbrel.kube.options import KUBE_HELP, KubeCommand, kube_options
from whimbrel.urls import DatabaseURL, parse_url, redact

if TYPE_CHECKING:
    from whimbrel.engine import RunResult

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = """\b
Exit codes:
  0   success (inspect: every set applied, no drift)
  1   a migration failed
  2   usage error (bad option, URL or set name)
  3   inspect: migrations are pending
  4   inspect: drift (a migration is modified, missing or dirty, or pending out of order)
  5   invalid migration files or folders
  6   cannot connect to the database (or --wait timed out)
  7   timed out waiting for the migration lock
  8   refused: unsafe state (dirty, drift, out of order, foreign table, no down section);
      nothing changed
  9   a database error outside any migration (e.g. no permission to create the tracking table)
  10  --manifest/bundle: files added, missing or altered, or another engine; nothing ran
  11  --manifest/bundle: malformed manifest, unknown reference or cycle, unsafe bundle
  12  --as-k8s-job: the Job failed (its pods failed backoffLimit + 1 times)
  13  --as-k8s-job: --timeout passed before a pod succeeded (the Job is deleted)
  14  Kubernetes API error: unreachable, bad kubeconfig, or a missing RBAC permission
  130 interrupted (Ctrl-C); 143 terminated (SIGTERM)
"""

COMMAND_HELP = EXIT_CODES_HELP + "\n" + KUBE_HELP

# Secrets of the URL in use, so that every message printed can be scrubbed of them.
_secrets: list[str] = []


def _parse(url: str | None) -> DatabaseURL:
    parsed = parse_url(url or "")
    _secrets[:] = parsed.secrets()
    return parsed


def _fail(error: WhimbrelError) -> NoReturn:
    click.echo(redact(f"error: {error.message}", _secrets), err=True)
    sys.exit(int(error.exit_code))


def url_option(f: F) -> F:
    return click.option(
        "--url",
        envvar="DATABASE_URL",
        metavar="URL",
        help="Database URL (default: $DATABASE_URL): postgres://, mysql://, mariadb://, "
        "sqlite:///relative.db, sqlite:////absolute.db or sqlite:path.",
    )(f)


def sets_option(f: F) -> F:
    return click.option(
        "--set",
        "only_sets",
        multiple=True,
        metavar="NAME",
        help="Only this set (repeat for more). Default: every set under PATH.",
    )(f)


def timeouts(f: F) -> F:
    f = click.option(
        "--connect-timeout",
        type=click.FloatRange(min=1),
        default=10.0,
        show_default=True,
        help="Seconds to wait for the database to answer.",
    )(f)
    return f


def lock_timeout(f: F) -> F:
    return click.option(
        "--lock-timeout",
        type=click.FloatRange(min=0),
        default=60.0,
        show_default=True,
        help="Seconds to wait for another run's migration lock before giving up.",
    )(f)


def path_argument(f: F) -> F:
    # A file is a bundle (`whimbrel migrations bundle`); a folder holds sets.
    return click.argument("path", type=click.Path(path_type=str))(f)


# -- options shared by apply, inspect, revert (and watch): manifests and provisioning ----
def manifest_options(f: F) -> F:
    """--manifest FILE and --manifest-store DIR: parameters `manifest`, `manifest_store`."""
    f = click.option(
        "--manifest-store",
        type=click.Path(file_okay=False, path_type=str),
        metavar="DIR",
        help="Folder of earlier manifests that +migration-reference lines name by SHA-256 "
        "(default: the manifest's own folder).",
    )(f)
    f = click.option(
        "--manifest",
        type=click.Path(dir_okay=False, path_type=str),
        metavar="FILE",
        help="Verify every migration file against this manifest before anything runs; "
        "added, missing or altered files are refused (exit 10).",
    )(f)
    return f


def wait_options(f: F) -> F:
    """--wait and --wait-timeout SECONDS, passed on as one parameter `wait`: None or seconds."""

    @functools.wraps(f)
    def combined(*args: Any, wait: bool, wait_timeout: float | None, **kwargs: Any) -> Any:
        seconds = wait_timeout if wait_timeout is not None else (60.0 if wait else None)
        return f(*args, wait=seconds, **kwargs)

    command = click.option(
        "--wait-timeout",
        type=click.FloatRange(min=0),
        metavar="SECONDS",
        help="How long --wait waits (default 60; implies --wait).",
    )(combined)
    command = click.option(
        "--wait",
        is_flag=True,
        help="First wait until the database accepts connections (retrying with backoff), "
        "then go on; give up after --wait-timeout seconds (exit 6).",
    )(command)
    return command  # type: ignore[return-value]


def create_db_option(f: F) -> F:
    """--create-db: parameter `create_db`."""
    return click.option(
        "--create-db",
        is_flag=True,
        help="Create the database if it does not exist (PostgreSQL, MySQL/MariaDB; for "
        "SQLite, the file), then go on.",
    )(f)


def output_option(
    default: str,
    help: str = "For people (table and text mean the same) or one JSON document for machines.",
) -> Callable[[F], F]:
    return click.option(
        "--output",
        "-o",
        type=click.Choice(("table", "text", "json")),
        default=default,
        show_default=True,
        help=help,
        callback=lambda _ctx, _param, value: "json" if value == "json" else "text",
    )


class _Root(click.Group):
    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name in {"inspect", "apply", "revert", "mark"} and self.get_command(ctx, name) is None:
            raise click.UsageError(
                f"no command {name!r}; did you mean 'whimbrel migrations {name}'?"
            )
        return super().resolve_command(ctx, args)


@click.group(
    cls=_Root,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="whimbrel")
def main() -> None:
    """Apply, inspect and revert SQL migrations on PostgreSQL, MySQL/MariaDB and SQLite.

    Each folder of migration files is one set with its own tracking table, named after the
    folder, so several components can share one database.
    """


@main.group()
def migrations() -> None:
    """Inspect, apply and revert migrations; manifests, bundles and provisioning; watch."""


@migrations.command(cls=KubeCommand, epilog=COMMAND_HELP)
@path_argument
@url_option
@sets_option
@output_option("table")
@timeouts
@manifest_options
@wait_options
@kube_options("inspect", own_dry_run=True, parse=_parse, secrets=lambda: _secrets)
def inspect(
    path: str,
    url: str | None,
    only_sets: tuple[str, ...],
    output: str,
    connect_timeout: float,
    manifest: str | None,
    manifest_store: str | None,
    wait: float | None,
) -> None:
    """Compare the database with the files under PATH; change nothing.

    Each migration is applied, pending, modified (applied, but its file changed), missing
    (recorded, but no file) or dirty (started, not known to have finished).
    """
    from whimbrel import api
    from whimbrel import output as render

    try:
        states = api.inspect(
            path,
            _parse(url),
            sets=only_sets,
            connect_timeout=connect_timeout,
            manifest=manifest,
            manifest_store=manifest_store,
            wait=False if wait is None else wait,
        )
    except WhimbrelError as exc:
        if output == "json":  # the document's shape, with no sets and the error
            import json

            doc = {"sets": [], "error": json.loads(render.run_json(None, exc))["error"]}
            click.echo(redact(json.dumps(doc, indent=2), _secrets))
        _fail(exc)
    if output == "json":
        click.echo(render.inspect_json(states))
    else:
        render.print_inspect(states)
    statuses = {m.status for s in states for m in s.migrations}
    if statuses & {"modified", "missing", "dirty"} or any(s.out_of_order for s in states):
        sys.exit(ExitCode.DRIFT)
    if "pending" in statuses:
        sys.exit(ExitCode.PENDING)


def _run_and_report(
    command: Callable[..., RunResult], output: str, *args: Any, **kwargs: Any
) -> None:
    """Run apply/revert with progress lines (text) or one JSON document, and report."""
    from whimbrel import output as render
    from whimbrel.engine import RunResult

    as_json = output == "json"
    reporter = None if as_json else render.ProgressReporter()
    # What a refusal before the run (drift, a lock time-out, a bad path) reports: no run.
    nothing = RunResult(command=command.__name__, dry_run=bool(kwargs.get("dry_run")), sets=[])
    try:
        result = command(*args, reporter=reporter, **kwargs)
    except WhimbrelError as exc:
        if reporter is not None:  # also a lost connection or a refused tracking write
            reporter.failed()
        if as_json:
            # A script still learns what this run did before it failed.
            ran = exc.partial if isinstance(exc.partial, RunResult) else nothing
            click.echo(redact(render.run_json(ran, error=exc), _secrets))
        _fail(exc)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
        if reporter is not None:
            reporter.failed("INTERRUPTED")
        if as_json:  # automation gets its document on an interruption too
            import json

            partial = getattr(exc, "partial", None)
            doc = json.loads(
                render.run_json(partial if isinstance(partial, RunResult) else nothing)
            )
            signum = _signal_received[0] if _signal_received else signal.SIGINT
            message = exc.message if isinstance(exc, Interrupted) else "interrupted"
            doc["error"] = {"exit_code": 128 + signum, "message": message}
            click.echo(redact(json.dumps(doc, indent=2), _secrets))
        raise
    if as_json:
        click.echo(render.run_json(result))
    else:
        render.print_run(result)


def _run_options(f: F) -> F:
    f = click.option(
        "--dry-run",
        is_flag=True,
        help="Print what would run, in order, and change nothing. With --as-k8s-job: print "
        "the Job and Secret as YAML and create nothing.",
    )(f)
    f = click.option(
        "--allow-drift",
        is_flag=True,
        help="Go on although an applied migration's file was modified or is missing.",
    )(f)
    f = click.option(
        "--resume",
        is_flag=True,
        help="Continue a dirty migration at the statement that failed, if the statements "
        "before it are unchanged.",
    )(f)
    return f


@migrations.command(cls=KubeCommand, epilog=COMMAND_HELP)
@path_argument
@url_option
@sets_option
@_run_options
@click.option(
    "--allow-out-of-order",
    is_flag=True,
    help="Apply pending migrations older than the newest applied one.",
)
@click.option(
    "--single-transaction",
    is_flag=True,
    help="Apply all pending migrations in one transaction: all or nothing. PostgreSQL and "
    "SQLite; on MySQL/MariaDB only migrations of plain DML (DDL commits implicitly there), "
    "else it refuses before running anything.",
)
@output_option("text")
@lock_timeout
@timeouts
@manifest_options
@create_db_option
@wait_options
@kube_options("apply", own_dry_run=False, parse=_parse, secrets=lambda: _secrets)
def apply(
    path: str,
    url: str | None,
    only_sets: tuple[str, ...],
    dry_run: bool,
    allow_drift: bool,
    resume: bool,
    allow_out_of_order: bool,
    single_transaction: bool,
    output: str,
    lock_timeout: float,
    connect_timeout: float,
    manifest: str | None,
    manifest_store: str | None,
    create_db: bool,
    wait: float | None,
) -> None:
    """Apply every pending migration under PATH, set by set in name order.

    One run holds a database-wide lock from start to finish. Each migration runs in its
    own transaction together with its tracking row where the database allows it
    (PostgreSQL, SQLite; on MySQL, migrations of plain DML); elsewhere progress is
    recorded statement by statement, so a failure can be resumed with --resume.
    """
    from whimbrel import api

    _run_and_report(
        api.apply,
        output,
        path,
        _parse(url),
        sets=only_sets,
        dry_run=dry_run,
        allow_drift=allow_drift,
        allow_out_of_order=allow_out_of_order,
        resume=resume,
        single_transaction=single_transaction,
        lock_timeout=lock_timeout,
        connect_timeout=connect_timeout,
        manifest=manifest,
        manifest_store=manifest_store,
        create_db=create_db,
        wait=False if wait is None else wait,
    )


@migrations.command(cls=KubeCommand, epilog=COMMAND_HELP)
@path_argument
@url_option
@sets_option
@click.option("--steps", type=click.IntRange(min=1), help="Revert the newest N of each set.")
@click.option(
    "--to",
    "to_version",
    type=int,
    metavar="VERSION",
    help="Revert everything newer than VERSION; VERSION stays applied. Needs one set.",
)
@click.option("--all", "everything", is_flag=True, help="Revert every applied migration.")
@_run_options
@output_option("text")
@lock_timeout
@timeouts
@manifest_options
@wait_options
@kube_options("revert", own_dry_run=False, parse=_parse, secrets=lambda: _secrets)
def revert(
    path: str,
    url: str | None,
    only_sets: tuple[str, ...],
    steps: int | None,
    to_version: int | None,
    everything: bool,
    dry_run: bool,
    allow_drift: bool,
    resume: bool,
    output: str,
    lock_timeout: float,
    connect_timeout: float,
    manifest: str | None,
    manifest_store: str | None,
    wait: float | None,
) -> None:
    """Revert migrations under PATH with their down sections, newest first.

    With no option, reverts the single newest migration of each selected set.
    """
    from whimbrel import api

    _run_and_report(
        api.revert,
        output,
        path,
        _parse(url),
        steps=steps,
        to=to_version,
        all=everything,
        sets=only_sets,
        dry_run=dry_run,
        allow_drift=allow_drift,
        resume=resume,
        lock_timeout=lock_timeout,
        connect_timeout=connect_timeout,
        manifest=manifest,
        manifest_store=manifest_store,
        wait=False if wait is None else wait,
    )


def _one_of_the_pair(applied: bool | None) -> bool:
    # click 8.2+ no longer enforces required=True on a boolean flag pair.
    if applied is None:
        raise click.UsageError("pass --applied or --not-applied: which is the outcome?")
    return applied


@migrations.command(cls=KubeCommand, epilog=COMMAND_HELP)
@path_argument
@url_option
@click.option("--set", "set_name", required=True, metavar="NAME", help="The set.")
@click.option("--version", "version", required=True, type=int, help="The migration's version.")
@click.option(
    "--applied/--not-applied",
    required=True,
    default=None,
    callback=lambda _ctx, _param, value: _one_of_the_pair(value),
    help="Record it as applied (without running it) or as not applied.",
)
@lock_timeout
@timeouts
@kube_options("mark", own_dry_run=True, parse=_parse, secrets=lambda: _secrets)
def mark(
    path: str,
    url: str | None,
    set_name: str,
    version: int,
    applied: bool,
    lock_timeout: float,
    connect_timeout: float,
) -> None:
    """Record a migration as applied or not applied, without running it.

    The recovery tool for a dirty migration: repair the database by hand, then record
    the outcome. On an applied migration whose file you changed on purpose, --applied
    records the file's new SHA-256 and keeps when it was applied.
    """
    from whimbrel import api

    try:
        message = api.mark(
            path,
            _parse(url),
            set=set_name,
            version=version,
            applied=applied,
            lock_timeout=lock_timeout,
            connect_timeout=connect_timeout,
        )
    except WhimbrelError as exc:
        _fail(exc)
    click.echo(message)


# -- manifests, bundles and provisioning -------------------------------------------------
def _engine_option(f: F) -> F:
    f = click.option(
        "--url",
        "engine_url",
        metavar="URL",
        help="Take the engine from this URL's scheme (only the scheme is used; "
        "$DATABASE_URL is not read).",
    )(f)
    return click.option(
        "--engine",
        type=click.Choice(("postgres", "mysql", "sqlite", "any")),
        help="The engine on each 'database <engine> <set>' line. Default: the --url's, "
        "else 'any' (verifies against every engine).",
    )(f)


@migrations.command(epilog=EXIT_CODES_HELP)
@path_argument
@_engine_option
@sets_option
@click.option(
    "--reference",
    "reference",
    type=click.Path(dir_okay=False, path_type=str),
    metavar="FILE",
    help="An earlier manifest: print '+migration-reference <its sha256>' and only the files "
    "added since (the earlier files must be unchanged).",
)
@click.option(
    "--manifest-store",
    type=click.Path(file_okay=False, path_type=str),
    metavar="DIR",
    help="Where --reference's own references are looked up (default: its folder).",
)
@output_option("text", help="The manifest itself, or one JSON document.")
def manifest(
    path: str,
    engine: str | None,
    engine_url: str | None,
    only_sets: tuple[str, ...],
    reference: str | None,
    manifest_store: str | None,
    output: str,
) -> None:
    """Print the manifest of PATH: each migration file of each set with its SHA-256.

    \b
    For each set, in FTL's schema syntax:
      database <engine> <set>
      +migration <file> <sha256>      (one per file, in run order)
    The hash is what sha256sum prints. Save it, review it, and pass it to
    apply/revert/inspect --manifest FILE, which refuse files that differ (exit 10).
    """
    from whimbrel import api

    try:
        built = api.manifest(
            path,
            engine=engine,
            url=_parse(engine_url) if engine_url else None,
            sets=only_sets,
            reference=reference,
            store=manifest_store,
        )
    except WhimbrelError as exc:
        _fail(exc)
    if output == "json":
        import json

        click.echo(json.dumps(built.to_json(), indent=2))
    else:
        click.echo(built.text(), nl=False)


@migrations.command(epilog=EXIT_CODES_HELP)
@path_argument
@manifest_options
@sets_option
@click.option(
    "--url",
    "engine_url",
    metavar="URL",
    help="Also refuse a manifest written for another engine than this URL's (only the "
    "scheme is used; nothing connects).",
)
@output_option("text", help="A line per manifest checked, or one JSON document.")
def verify(
    path: str,
    manifest: str | None,
    manifest_store: str | None,
    only_sets: tuple[str, ...],
    engine_url: str | None,
    output: str,
) -> None:
    """Verify the files under PATH (or a bundle) against a manifest; connect to nothing.

    A bundle is checked against its embedded manifest, and against --manifest FILE if
    given; a folder needs --manifest. Exit 10 when a file was added, is missing or was
    altered, 11 when the manifest or bundle cannot be used.
    """
    from whimbrel import api

    try:
        checks = api.verify_manifest(
            path,
            manifest,
            store=manifest_store,
            sets=only_sets,
            url=_parse(engine_url) if engine_url else None,
        )
    except WhimbrelError as exc:
        _fail(exc)
    if output == "json":
        import json

        doc = {
            "manifests": [
                {
                    "source": c.source,
                    "sha256": c.sha256,
                    "sets": {
                        name: [{"file": f, "sha256": h} for f, h in files]
                        for name, files in c.sets.items()
                    },
                }
                for c in checks
            ]
        }
        click.echo(json.dumps(doc, indent=2))
        return
    for check in checks:
        files = sum(len(f) for f in check.sets.values())
        click.echo(
            f"OK: {files} file{'s' if files != 1 else ''} in {len(check.sets)} "
            f"set{'s' if len(check.sets) != 1 else ''} match {check.source} "
            f"(sha256 {check.sha256})"
        )


@migrations.command(epilog=EXIT_CODES_HELP)
@path_argument
@click.option(
    "--output",
    "-o",
    "output_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    metavar="FILE",
    help="The bundle to write (an uncompressed .tar).",
)
@_engine_option
@sets_option
def bundle(
    path: str,
    output_file: str,
    engine: str | None,
    engine_url: str | None,
    only_sets: tuple[str, ...],
) -> None:
    """Write one deterministic archive of the sets under PATH plus their manifest.

    The same files give the same bytes on any machine: entries are sorted, with fixed
    times, modes and owners. apply, revert, inspect and provision take the bundle in place
    of PATH, and verify every file against the embedded manifest before anything runs.
    """
    from whimbrel import api

    try:
        info = api.bundle(
            path,
            output_file,
            engine=engine,
            url=_parse(engine_url) if engine_url else None,
            sets=only_sets,
        )
    except WhimbrelError as exc:
        _fail(exc)
    sets = ", ".join(info.sets)
    click.echo(
        f"wrote {info.path}: {info.files} file{'s' if info.files != 1 else ''} in "
        f"{len(info.sets)} set{'s' if len(info.sets) != 1 else ''} ({sets}), {info.size} bytes\n"
        f"sha256 {info.sha256}\n"
        f"manifest sha256 {info.manifest_sha256}"
    )


@migrations.command(epilog=EXIT_CODES_HELP)
@path_argument
@url_option
@sets_option
@manifest_options
@click.option(
    "--create-db/--no-create-db",
    default=True,
    show_default=True,
    help="Create the database if it does not exist.",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the server to accept connections.",
)
@output_option("text")
@lock_timeout
@timeouts
def provision(
    path: str,
    url: str | None,
    only_sets: tuple[str, ...],
    manifest: str | None,
    manifest_store: str | None,
    create_db: bool,
    wait_timeout: float,
    output: str,
    lock_timeout: float,
    connect_timeout: float,
) -> None:
    """Deploy PATH (a folder or a bundle) to a database in one step, as FTL's provisioner.

    \b
    1. verify the files: against the bundle's embedded manifest, and --manifest FILE;
    2. wait until the server accepts connections (--wait-timeout);
    3. create the database if it does not exist (--no-create-db to require it);
    4. apply every pending migration (drift, dirty and out-of-order are refused).
    With -o json, prints one document, also on failure: database (created?), manifests,
    sets, migrations applied, error.
    """
    import json

    from whimbrel import api
    from whimbrel import output as render

    as_json = output == "json"
    reporter = None if as_json else render.ProgressReporter()
    parsed: DatabaseURL | None = None
    try:
        parsed = _parse(url)
        result = api.provision(
            path,
            parsed,
            manifest=manifest,
            manifest_store=manifest_store,
            sets=only_sets,
            create_db=create_db,
            wait_timeout=wait_timeout,
            lock_timeout=lock_timeout,
            connect_timeout=connect_timeout,
            reporter=reporter,
        )
    except WhimbrelError as exc:
        if reporter is not None:  # ends a running step's line; nothing otherwise
            reporter.failed()
        if as_json:
            partial = exc.partial if isinstance(exc.partial, api.ProvisionResult) else None
            doc = _provision_doc(partial, parsed, exc)
            click.echo(redact(json.dumps(doc, indent=2), _secrets))
        _fail(exc)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
        if reporter is not None:
            reporter.failed("INTERRUPTED")
        if as_json:  # automation gets its document on an interruption too
            partial = getattr(exc, "partial", None)
            doc = _provision_doc(
                partial if isinstance(partial, api.ProvisionResult) else None, parsed, None
            )
            signum = _signal_received[0] if _signal_received else signal.SIGINT
            message = exc.message if isinstance(exc, Interrupted) else "interrupted"
            doc["error"] = {"exit_code": 128 + signum, "message": message}
            click.echo(redact(json.dumps(doc, indent=2), _secrets))
        raise
    if as_json:
        click.echo(redact(json.dumps(_provision_doc(result, parsed, None), indent=2), _secrets))
        return
    assert result.run is not None
    render.print_run(result.run)


def _provision_doc(
    result: Any, url: DatabaseURL | None, error: WhimbrelError | None
) -> dict[str, Any]:
    """The JSON document of `provision`: stable keys, present on success and failure."""
    import json

    from whimbrel import output as render
    from whimbrel.api import ProvisionResult

    doc: dict[str, Any] = {
        "database": {
            "url": str(url) if url else None,
            "engine": url.dialect if url else None,
            "name": None,
            "created": False,
            "waited_s": 0.0,
        },
        "manifests": [],
        "sets": [],
        "migrations": [],
        "error": None,
    }
    if isinstance(result, ProvisionResult):
        doc["database"].update(
            name=result.database, created=result.created, waited_s=round(result.waited_s, 3)
        )
        doc["manifests"] = [{"source": m.source, "sha256": m.sha256} for m in result.manifests]
        if result.run is not None:
            doc["sets"] = result.run.sets
            doc["migrations"] = [render._outcome_json(o) for o in result.run.steps]
    if error is not None:
        doc["error"] = json.loads(render.run_json(None, error))["error"]
    return doc


# -- watch (development) ----------------------------------------------------------------
WATCH_EXIT_CODES_HELP = """\b
Exit codes:
  0   stopped with Ctrl-C (or SIGTERM) while watching
  2   usage error (bad option, URL or set name)
  5   PATH does not exist or is not a folder
  6   cannot connect to the database at start
  9   the database could not be created at start
  130 Ctrl-C interrupted a running migration (reported as apply does)
A failing cycle (invalid file, failing statement, lost connection) never ends watching.
"""


@migrations.command(epilog=WATCH_EXIT_CODES_HELP)
@path_argument
@url_option
@sets_option
@click.option(
    "--reset",
    is_flag=True,
    help="When an applied migration changed: drop and recreate the whole database, then "
    "apply everything (default: revert back to just before it, then apply again).",
)
@lock_timeout
@timeouts
def watch(
    path: str,
    url: str | None,
    only_sets: tuple[str, ...],
    reset: bool,
    lock_timeout: float,
    connect_timeout: float,
) -> None:
    """Development: apply, then re-apply as migration files under PATH are saved.

    Creates the database if it does not exist. A new migration is applied as soon as it is
    saved. When an applied migration's file changes (or is deleted, or a new file is older
    than the newest applied one), the set is reverted to just before it with the down
    sections recorded when each was applied, then applied again; with --reset, the database
    is dropped and recreated instead. Each reconciliation is announced on a line starting
    with "==>". A broken file is reported and the next save retries. Not for production.
    """
    from whimbrel import output as render
    from whimbrel.watcher import WatchEvent
    from whimbrel.watcher import watch as run_watch

    reporter = render.ProgressReporter()
    colour = sys.stdout.isatty()

    def show(event: WatchEvent) -> None:
        if event.kind == "error":
            reporter.failed()  # ends a running step's line; nothing otherwise
            click.echo(redact(f"error: {event.message}", _secrets), err=True)
            click.echo("(still watching: fix the file and save it to retry)", err=True)
        elif event.kind == "reconcile":
            click.echo(
                click.style(event.message, fg="yellow", bold=True) if colour else event.message
            )
        else:
            click.echo(redact(event.message, _secrets))

    try:
        run_watch(
            path,
            _parse(url),
            reset=reset,
            sets=only_sets or None,
            on_event=show,
            reporter=reporter,
            lock_timeout=lock_timeout,
            connect_timeout=connect_timeout,
        )
    except WhimbrelError as exc:
        _fail(exc)
    except Interrupted:
        raise  # a migration was running: report it as apply does (exit 130)
    except KeyboardInterrupt:
        click.echo("stopped watching")
        sys.exit(ExitCode.OK)


@main.group()
def k8s() -> None:
    """Kubernetes: what a cluster needs to run migrations as Jobs (--as-k8s-job)."""


@k8s.command()
@click.option(
    "--namespace",
    default="default",
    show_default=True,
    metavar="NAME",
    help="Namespace of the Jobs (and so of the Lease).",
)
@click.option(
    "--service-account",
    default=kube.DEFAULT_SERVICE_ACCOUNT,
    show_default=True,
    metavar="NAME",
    help="Name of the ServiceAccount (--service-account of --as-k8s-job).",
)
@click.option(
    "--role-name",
    default=kube.DEFAULT_ROLE_NAME,
    show_default=True,
    metavar="NAME",
    help="Name of the Role and the RoleBinding.",
)
@click.option(
    "--lease-name",
    default=kube.DEFAULT_LEASE_NAME,
    show_default=True,
    metavar="NAME",
    help="The Lease the pods take (--lease-name of --as-k8s-job).",
)
def manifests(namespace: str, service_account: str, role_name: str, lease_name: str) -> None:
    """Print the ServiceAccount, Role and RoleBinding the migration Jobs need, as YAML.

    Least privilege: get, create and update on one Lease (coordination.k8s.io), nothing
    else. Apply with `whimbrel k8s manifests | kubectl apply -f -`, or put it in a chart.
    """
    from whimbrel.kube import manifests as kube_manifests

    for value, what in (
        (namespace, "--namespace"),
        (service_account, "--service-account"),
        (role_name, "--role-name"),
        (lease_name, "--lease-name"),
    ):
        kube_manifests.check_name(value, what)
    docs = kube_manifests.rbac_manifests(namespace, service_account, role_name, lease_name)
    header = (
        "RBAC for `whimbrel migrations ... --as-k8s-job`: the Job's pods hold the Lease\n"
        f'"{lease_name}" while they migrate. Apply: whimbrel k8s manifests | kubectl apply -f -'
    )
    click.echo(kube_manifests.to_yaml(docs, header), nl=False)


_signal_received: list[int] = []


def _stop(signum: int, frame: object) -> None:
    # SIGTERM (Kubernetes, systemd) takes the same path as Ctrl-C: the running statement is
    # cancelled on the server and the transaction rolled back before whimbrel exits.
    _signal_received.append(signum)
    raise KeyboardInterrupt


def _interrupted(message: str | None) -> NoReturn:
    click.echo(redact(f"error: {message}", _secrets) if message else "interrupted", err=True)
    signum = _signal_received[0] if _signal_received else signal.SIGINT
    sys.exit(128 + signum)


def run() -> None:
    """Entry point: maps every failure to its documented exit code."""
    try:
        _run()
    finally:
        # The process ends next. Frozen, the objects of the imports and of the run (~100,000)
        # are left to the OS rather than walked and freed by the interpreter's last garbage
        # collections: ~6 ms off every command.
        gc.freeze()


class _StreamWhoseReaderMayLeave:
    """sys.stdout (or stderr), except that once its reader has gone (`whimbrel ... | head
    -1`) the rest is dropped: the run goes on to the end and exits as it would have, rather
    than stopping between two migrations on a BrokenPipeError."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return int(self._stream.write(text))
            except BrokenPipeError:
                self._leave()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._leave()

    def _leave(self) -> None:
        import os

        self._gone = True
        # The interpreter flushes stdout once more as it exits: let that go nowhere too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _run() -> None:
    signal.signal(signal.SIGTERM, _stop)
    if sys.stdout is not None and not isinstance(sys.stdout, _StreamWhoseReaderMayLeave):
        sys.stdout = _StreamWhoseReaderMayLeave(sys.stdout)
    if sys.stderr is not None and not isinstance(sys.stderr, _StreamWhoseReaderMayLeave):
        sys.stderr = _StreamWhoseReaderMayLeave(sys.stderr)  # `2>&1 | head` shares the pipe
    try:
        main(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # pragma: no cover - click >= 8.2
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(ExitCode.USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        cause = exc if isinstance(exc, Interrupted) else exc.__cause__ or exc.__context__
        _interrupted(cause.message if isinstance(cause, Interrupted) else None)
    except UsageError as exc:
        _fail(exc)
    except WhimbrelError as exc:
        _fail(exc)
