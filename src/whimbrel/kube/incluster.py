"""Inside the Job's pod (`--in-cluster`): take the Lease, run the command, report.

The command's stdout is shown in the log as it is written and also kept, so the last log
line can carry it to the CLI that follows the Job (see `whimbrel.kube.result`).
"""

from __future__ import annotations

import io
import os
import socket
import sys
from collections.abc import Callable
from typing import TextIO

import click

from whimbrel.errors import ExitCode, Interrupted, WhimbrelError
from whimbrel.kube.result import PodResult, format_line


class _Tee(io.TextIOBase):
    """stdout for the command: written to the log at once, and kept for the result line."""

    def __init__(self, real: TextIO) -> None:
        self.real = real
        self.kept = io.StringIO()

    def write(self, text: str) -> int:
        self.real.write(text)
        self.real.flush()
        return self.kept.write(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return False  # plain text: the log and the CLI's stdout are not terminals


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    return 1


def run(
    command: str,
    call: Callable[[], None],
    *,
    lease_name: str,
    lock_timeout: float,
    secrets: Callable[[], list[str]],
) -> None:
    """Run `call` (the local command) under the Lease and end the log with the result line.

    `inspect` takes no Lease, as it takes no database lock: it only reads. Its exit codes
    3 (pending) and 4 (drift) are reports, not failures, so the pod exits 0 with the code
    in the result line; a failing pod would make the Job retry.
    """
    from whimbrel.urls import redact

    real_stdout = sys.stdout
    tee = _Tee(real_stdout)
    error_capture = _ErrorCapture(sys.stderr)
    code = 0
    lock = None
    try:
        if command != "inspect":
            lock = _take_lease(lease_name, lock_timeout)
        sys.stdout, sys.stderr = tee, error_capture
        try:
            call()
        except SystemExit as exc:
            code = _exit_code(exc)
        finally:
            sys.stdout, sys.stderr = real_stdout, error_capture.real
    except WhimbrelError as exc:
        code = int(exc.exit_code)
        message = redact(f"error: {exc.message}", secrets())
        click.echo(message, err=True)
        error_capture.messages.append(message)
    except (KeyboardInterrupt, Interrupted):
        # SIGTERM (the Job deleted, the CLI's Ctrl-C): release the Lease, then exit 143/130.
        if lock is not None:
            _release(lock)
        raise
    if lock is not None:
        _release(lock)
    report = code
    if command == "inspect" and code in (ExitCode.PENDING, ExitCode.DRIFT):
        code = 0
    error = "\n".join(error_capture.messages) or None
    line = format_line(PodResult(exit_code=report, stdout=tee.kept.getvalue(), error=error))
    real_stdout.write(redact(line, secrets()) + "\n")
    real_stdout.flush()
    sys.exit(code)


class _ErrorCapture(io.TextIOBase):
    """stderr for the command: passed through, and the `error: ...` message kept.

    The CLI prints an error as one write (`click.echo`), however many lines it has.
    """

    def __init__(self, real: TextIO) -> None:
        self.real = real
        self.messages: list[str] = []

    def write(self, text: str) -> int:
        self.real.write(text)
        self.real.flush()
        if text.startswith("error: "):
            self.messages.append(text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        self.real.flush()


def _take_lease(lease_name: str, lock_timeout: float) -> object:
    from whimbrel.kube import api
    from whimbrel.kube.lease import LeaseLock

    client, namespace = api.in_cluster()
    holder = os.environ.get("HOSTNAME") or socket.gethostname()
    lock = LeaseLock(client, lease_name, namespace, holder)

    def waiting(other: str) -> None:
        click.echo(
            f'waiting for the Lease "{lease_name}" (held by {other}), up to {lock_timeout:g} s ...',
            err=True,
        )

    lock.acquire(lock_timeout, waiting)
    click.echo(f'holding the Lease "{lease_name}" in namespace "{namespace}" as {holder}', err=True)

    def lost(why: str) -> None:
        click.echo(f'warning: the Lease "{lease_name}": {why}', err=True)

    lock.start_renewing(lost)
    return lock


def _release(lock: object) -> None:
    from whimbrel.kube.lease import LeaseLock

    assert isinstance(lock, LeaseLock)
    try:
        lock.release()
        click.echo(f'released the Lease "{lock.name}"', err=True)
    except WhimbrelError as exc:
        click.echo(f"warning: could not release the Lease: {exc.message}", err=True)
