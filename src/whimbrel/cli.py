"""The `whimbrel` command: a thin layer over `whimbrel.api`."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from whimbrel import __version__
from whimbrel.errors import ExitCode, Interrupted, MigrationFailed, UsageError, WhimbrelError
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
  4   inspect: drift (a migration is modified, missing or dirty)
  5   invalid migration files or folders
  6   cannot connect to the database
  7   timed out waiting for the migration lock
  8   refused: unsafe state (dirty, drift, out of order, foreign table, no down section);
      nothing changed
  9   a database error outside any migration (e.g. no permission to create the tracking table)
  130 interrupted (Ctrl-C); 143 terminated (SIGTERM)
"""

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
    return click.argument("path", type=click.Path(file_okay=False, path_type=str))(f)


def output_option(default: str) -> Callable[[F], F]:
    return click.option(
        "--output",
        "-o",
        type=click.Choice(("table", "text", "json")),
        default=default,
        show_default=True,
        help="For people (table and text mean the same) or one JSON document for machines.",
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
    """Inspect, apply and revert migrations."""


@migrations.command(epilog=EXIT_CODES_HELP)
@path_argument
@url_option
@sets_option
@output_option("table")
@timeouts
def inspect(
    path: str, url: str | None, only_sets: tuple[str, ...], output: str, connect_timeout: float
) -> None:
    """Compare the database with the files under PATH; change nothing.

    Each migration is applied, pending, modified (applied, but its file changed), missing
    (recorded, but no file) or dirty (started, not known to have finished).
    """
    from whimbrel import api
    from whimbrel import output as render

    try:
        states = api.inspect(path, _parse(url), sets=only_sets, connect_timeout=connect_timeout)
    except WhimbrelError as exc:
        _fail(exc)
    if output == "json":
        click.echo(render.inspect_json(states))
    else:
        render.print_inspect(states)
    statuses = {m.status for s in states for m in s.migrations}
    if statuses & {"modified", "missing", "dirty"}:
        sys.exit(ExitCode.DRIFT)
    if "pending" in statuses:
        sys.exit(ExitCode.PENDING)


def _run_and_report(
    command: Callable[..., RunResult], output: str, *args: Any, **kwargs: Any
) -> None:
    """Run apply/revert with progress lines (text) or one JSON document, and report."""
    from whimbrel import output as render

    as_json = output == "json"
    reporter = None if as_json else render.ProgressReporter()
    try:
        result = command(*args, reporter=reporter, **kwargs)
    except WhimbrelError as exc:
        if reporter is not None and isinstance(exc, MigrationFailed):
            reporter.failed()
        if as_json:
            # A script still learns what this run did before it failed.
            click.echo(redact(render.run_json(exc.partial, error=exc), _secrets))
        _fail(exc)
    except Interrupted:
        if reporter is not None:
            reporter.failed("INTERRUPTED")
        raise
    if as_json:
        click.echo(render.run_json(result))
    else:
        render.print_run(result)


def _run_options(f: F) -> F:
    f = click.option(
        "--dry-run", is_flag=True, help="Print what would run, in order, and change nothing."
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


@migrations.command(epilog=EXIT_CODES_HELP)
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
    )


@migrations.command(epilog=EXIT_CODES_HELP)
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
    )


@migrations.command(epilog=EXIT_CODES_HELP)
@path_argument
@url_option
@click.option("--set", "set_name", required=True, metavar="NAME", help="The set.")
@click.option("--version", "version", required=True, type=int, help="The migration's version.")
@click.option(
    "--applied/--not-applied",
    required=True,
    default=None,
    help="Record it as applied (without running it) or as not applied.",
)
@lock_timeout
@timeouts
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
    signal.signal(signal.SIGTERM, _stop)
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
