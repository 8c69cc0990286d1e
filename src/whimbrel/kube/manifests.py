"""The Kubernetes objects whimbrel creates or asks an operator to create, as plain dicts.

Plain dicts, not client models: what `--dry-run` prints, what the tests validate against
the official schemas and what is sent to the API server are the same objects. Nothing here
imports a Kubernetes client.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from whimbrel.errors import ExitCode, UsageError

Manifest = dict[str, Any]

# The alphabet Kubernetes uses for generateName suffixes: no vowels, no look-alikes.
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Labels whimbrel sets itself; a --label may not replace them.
APP_LABELS = {"app.kubernetes.io/name": "whimbrel", "app.kubernetes.io/component": "migrations"}
COMMAND_LABEL = "whimbrel.dev/command"
# Exit codes a new pod would meet again: usage, invalid migration files, refused (dirty,
# drift, out of order). A failed migration (1) or a lock timeout (7) may pass next time.
NOT_RETRIED = (
    ExitCode.USAGE,
    ExitCode.INVALID_MIGRATIONS,
    ExitCode.REFUSED,
    ExitCode.MANIFEST_MISMATCH,
    ExitCode.INVALID_MANIFEST,
)
# The user id of the image's non-root user (Dockerfile: USER 10001).
IMAGE_UID = 10001


def unique_job_name(command: str) -> str:
    """`whimbrel-apply-x7k2p`: a new name per run, so a run never follows an older Job's pods."""
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
    return f"whimbrel-{command}-{suffix}"


def check_name(value: str, what: str) -> str:
    """A DNS-1123 label (namespaces, Secrets and Jobs in practice), or a UsageError."""
    if not _DNS_LABEL.match(value):
        raise UsageError(
            f"{what} {value!r} is not a valid Kubernetes name: lowercase letters, digits and "
            "'-', starting and ending with a letter or digit, at most 63 characters"
        )
    return value


def parse_labels(pairs: Iterable[str]) -> dict[str, str]:
    """`--label k=v` values as a dict; a malformed or reserved label is a UsageError."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--label {pair!r}: write KEY=VALUE")
        prefix, slash, name = key.rpartition("/")
        if (
            not _LABEL_NAME.match(name)
            or (slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))
            or (value and not _LABEL_NAME.match(value))
        ):
            raise UsageError(
                f"--label {pair!r} is not a valid Kubernetes label: the name and the value "
                "are at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
                "letter or digit (the value may be empty); a key may have a DNS prefix/"
            )
        if key in APP_LABELS or key == COMMAND_LABEL or key in _JOB_CONTROLLER_LABELS:
            raise UsageError(f"--label {key}: whimbrel or the Job controller sets that label")
        labels[key] = value
    return labels


_JOB_CONTROLLER_LABELS = {
    "job-name",
    "controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/controller-uid",
}


def parse_url_secret(value: str) -> tuple[str, str]:
    """`--url-secret NAME[:KEY]` as (name, key); the key defaults to `url`."""
    from whimbrel.kube import DEFAULT_SECRET_KEY

    name, _, key = value.partition(":")
    check_name(name, "--url-secret")
    key = key or DEFAULT_SECRET_KEY
    if not re.match(r"^[-._a-zA-Z0-9]+$", key):
        raise UsageError(f"--url-secret key {key!r}: letters, digits, '-', '_' or '.' only")
    return name, key


@dataclass(frozen=True)
class JobSettings:
    name: str
    namespace: str
    command: str  # inspect, apply, revert, mark
    image: str
    args: Sequence[str]
    service_account: str
    backoff_limit: int
    ttl_seconds_after_finished: int
    secret_name: str
    secret_key: str
    labels: Mapping[str, str] = field(default_factory=dict)


def _labels(settings: JobSettings) -> dict[str, str]:
    return {**settings.labels, **APP_LABELS, COMMAND_LABEL: settings.command}


def job_manifest(settings: JobSettings) -> Manifest:
    """A batch/v1 Job running `whimbrel <args>` once; the URL comes from a Secret."""
    labels = _labels(settings)
    container: Manifest = {
        "name": "whimbrel",
        "image": settings.image,
        # args, not command: the image's ENTRYPOINT (whimbrel) runs them, as in `docker run`.
        "args": list(settings.args),
        "env": [
            {
                "name": "DATABASE_URL",
                "valueFrom": {
                    "secretKeyRef": {"name": settings.secret_name, "key": settings.secret_key}
                },
            },
            # Unbuffered, so the log (and so the CLI following it) sees each line as it happens.
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": settings.name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "backoffLimit": settings.backoff_limit,
            # A failure no retry can fix fails the Job at once; an eviction is not a failure.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "whimbrel",
                            "operator": "In",
                            "values": sorted(int(code) for code in NOT_RETRIED),
                        },
                    },
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": settings.service_account,
                    "restartPolicy": "Never",
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                },
            },
        },
    }


def secret_manifest(
    settings: JobSettings, url: str, owner_uid: str | None, *, show_url: bool = True
) -> Manifest:
    """The Secret holding the database URL, owned by the Job so it goes when the Job goes."""
    metadata: Manifest = {
        "name": settings.secret_name,
        "namespace": settings.namespace,
        "labels": _labels(settings),
    }
    if owner_uid is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": settings.name,
                "uid": owner_uid,
                "blockOwnerDeletion": False,
                "controller": False,
            }
        ]
    value = url if show_url else "<the database URL>"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": {settings.secret_key: base64.b64encode(value.encode()).decode("ascii")},
    }


def rbac_manifests(
    namespace: str, service_account: str, role_name: str, lease_name: str
) -> list[Manifest]:
    """What the Job's pods need, and no more: get, create and update on one Lease.

    `create` cannot be narrowed by resourceNames (the name is not known to RBAC when an
    object is created), so it is a rule of its own; get and update name the Lease.
    """
    labels = dict(APP_LABELS)
    meta = {"namespace": namespace, "labels": labels}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": service_account, **meta},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": role_name, **meta},
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["create"],
                },
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "resourceNames": [lease_name],
                    "verbs": ["get", "update"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": role_name, **meta},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": role_name,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
            ],
        },
    ]


def to_yaml(documents: Sequence[Manifest], header: str = "") -> str:
    """Multi-document YAML, as `kubectl apply -f` reads it."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # no &id001 anchors: each document stands alone, as people write them

    body = yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return f"{comment}---\n{body}"
