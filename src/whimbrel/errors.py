"""Exceptions and the exit codes they map to.

Every failure a user can meet is a `WhimbrelError` whose `exit_code` is part of the
documented contract (README, "Exit codes").
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    MIGRATION_FAILED = 1
    USAGE = 2
    PENDING = 3
    DRIFT = 4
    INVALID_MIGRATIONS = 5
    CONNECTION = 6
    LOCK_TIMEOUT = 7
    REFUSED = 8
    DATABASE_ERROR = 9
    MANIFEST_MISMATCH = 10
    INVALID_MANIFEST = 11
    # --as-k8s-job / --in-cluster (whimbrel.kube):
    K8S_JOB_FAILED = 12  # the Job failed: its pods failed backoffLimit + 1 times, or a deadline
    K8S_TIMEOUT = 13  # --timeout passed before a pod of the Job succeeded
    K8S_API = 14  # the Kubernetes API refused or could not be reached (RBAC, kubeconfig)
    INTERRUPTED = 130


class WhimbrelError(Exception):
    exit_code: ExitCode = ExitCode.MIGRATION_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # What a run did before it failed (a whimbrel.engine.RunResult), for reports.
        self.partial: object | None = None

    def __str__(self) -> str:
        return self.message


class UsageError(WhimbrelError):
    """Bad options or URL: nothing was touched."""

    exit_code = ExitCode.USAGE


class InvalidMigrationsError(WhimbrelError):
    """A migration file or folder breaks the rules: nothing was touched."""

    exit_code = ExitCode.INVALID_MIGRATIONS

    def __init__(
        self,
        message: str,
        *,
        set_name: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        where = []
        if set_name is not None:
            where.append(f"set {set_name!r}")
        if file is not None:
            where.append(f"file {file}" + (f", line {line}" if line is not None else ""))
        super().__init__(f"{': '.join(where)}: {message}" if where else message)
        self.reason = message
        self.set_name = set_name
        self.file = file
        self.line = line


class ConnectionFailed(WhimbrelError):
    exit_code = ExitCode.CONNECTION


class LockTimeout(WhimbrelError):
    exit_code = ExitCode.LOCK_TIMEOUT


class RefusedError(WhimbrelError):
    """The database is not in a state where the command can run safely; nothing changed."""

    exit_code = ExitCode.REFUSED


class DatabaseError(WhimbrelError):
    """The database refused whimbrel's own work (permissions, timeouts), outside any migration."""

    exit_code = ExitCode.DATABASE_ERROR


class KubeError(WhimbrelError):
    """The Kubernetes API refused a request, or could not be reached or configured."""

    exit_code = ExitCode.K8S_API


class JobFailed(WhimbrelError):
    """The migration Job failed for good (BackoffLimitExceeded, DeadlineExceeded, deleted)."""

    exit_code = ExitCode.K8S_JOB_FAILED


class JobTimeout(WhimbrelError):
    """No pod of the migration Job succeeded within --timeout."""

    exit_code = ExitCode.K8S_TIMEOUT


class MigrationFailed(WhimbrelError):
    """A statement failed while applying or reverting a migration."""

    exit_code = ExitCode.MIGRATION_FAILED

    def __init__(
        self,
        message: str,
        *,
        set_name: str,
        file: str,
        statement_index: int | None,
        statement_count: int | None,
        line: int | None,
        statement: str | None,
        database_message: str,
        rolled_back: bool,
    ) -> None:
        super().__init__(message)
        self.set_name = set_name
        self.file = file
        self.statement_index = statement_index
        self.statement_count = statement_count
        self.line = line
        self.statement = statement
        self.database_message = database_message
        self.rolled_back = rolled_back


class ManifestMismatch(WhimbrelError):
    """The migration files differ from the manifest (added, missing, altered): nothing ran."""

    exit_code = ExitCode.MANIFEST_MISMATCH


class InvalidManifestError(WhimbrelError):
    """A manifest or bundle cannot be used: malformed, unresolvable reference, unsafe archive."""

    exit_code = ExitCode.INVALID_MANIFEST

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        where = source + (f", line {line}" if line is not None else "") if source else None
        super().__init__(f"{where}: {message}" if where else message)
        self.reason = message
        self.source = source
        self.line = line


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a migration, with what that left behind.

    A KeyboardInterrupt, not a WhimbrelError, so that `except Exception` never swallows it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
