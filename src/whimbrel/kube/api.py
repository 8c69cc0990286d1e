"""lightkube clients for both sides, and Kubernetes API failures as WhimbrelErrors."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NoReturn

import httpx2
from lightkube import ApiError, Client, ConfigError, KubeConfig

from whimbrel.errors import KubeError
from whimbrel.kube import SERVICEACCOUNT_DIR, SERVICEACCOUNT_DIR_ENV

# Every request is bounded: a hung API server must not hang whimbrel past its timeouts.
_REQUEST_TIMEOUT = httpx2.Timeout(10.0)


def from_kubeconfig(
    kubeconfig: str | None, context: str | None, namespace: str | None
) -> tuple[Client, str]:
    """A client as the user's kubeconfig says, and the namespace to use (option, or context's)."""
    path = kubeconfig or _first_kubeconfig()
    try:
        config = KubeConfig.from_file(path).get(context_name=context)
    except ConfigError as exc:
        raise KubeError(f"kubeconfig {path}: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KubeError(f"cannot read the kubeconfig {path}: {exc}") from None
    assert config is not None  # get() without a default raises instead of returning None
    ns = namespace or config.namespace
    try:
        client = Client(config, namespace=ns, timeout=_REQUEST_TIMEOUT, field_manager="whimbrel")
    except ConfigError as exc:
        raise KubeError(f"kubeconfig {path}, context {config.context_name}: {exc}") from None
    return client, ns


def _first_kubeconfig() -> str:
    # kubectl merges a KUBECONFIG list; whimbrel reads its first existing file.
    for candidate in os.environ.get("KUBECONFIG", "").split(os.pathsep):
        if candidate and Path(candidate).expanduser().is_file():
            return candidate
    return str(Path("~/.kube/config").expanduser())


def service_account_dir() -> Path:
    return Path(os.environ.get(SERVICEACCOUNT_DIR_ENV) or SERVICEACCOUNT_DIR)


def in_cluster() -> tuple[Client, str]:
    """A client authenticated as the pod's service account, and the pod's namespace."""
    folder = service_account_dir()
    missing = [
        v for v in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT") if v not in os.environ
    ]
    if missing:
        raise KubeError(
            f"--in-cluster: {' and '.join(missing)} not set: this is not a Kubernetes pod "
            "(run from your machine with --as-k8s-job instead)"
        )
    try:
        config = KubeConfig.from_service_account(service_account=folder)
    except ConfigError as exc:
        raise KubeError(
            f"--in-cluster: cannot read the service account in {folder}: {exc} "
            "(is automountServiceAccountToken off?)"
        ) from None
    single = config.get()
    assert single is not None
    namespace = single.namespace.strip()
    client = Client(single, namespace=namespace, timeout=_REQUEST_TIMEOUT, field_manager="whimbrel")
    return client, namespace


def describe(exc: Exception) -> str:
    """What went wrong, in words, for an error from the API or on the way to it."""
    if isinstance(exc, ApiError):
        status = exc.status
        return f"{status.code} {status.reason or ''}: {status.message or exc}".replace(" :", ":")
    if isinstance(exc, httpx2.HTTPError):
        target = ""
        with contextlib.suppress(RuntimeError):  # no request attached
            target = f" at {exc.request.url.scheme}://{exc.request.url.netloc.decode()}"
        return f"cannot reach the Kubernetes API{target}: {exc or type(exc).__name__}"
    return str(exc)


def fail(action: str, exc: Exception) -> NoReturn:
    """Raise KubeError for a failed API call, naming the missing permission on 403."""
    message = f"{action}: {describe(exc)}"
    if isinstance(exc, ApiError) and exc.status.code == 403:
        message += " (a missing RBAC permission: see `whimbrel k8s manifests` and the README)"
    if isinstance(exc, ApiError) and exc.status.code == 401:
        message += " (the credentials were refused: log in again, or check the kubeconfig)"
    raise KubeError(message) from None


def status_code(exc: Exception) -> int | None:
    return exc.status.code if isinstance(exc, ApiError) else None
