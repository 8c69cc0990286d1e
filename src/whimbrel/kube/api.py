"""lightkube clients for both sides, and Kubernetes API failures as WhimbrelErrors."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, cast

import httpx2
import yaml
from lightkube import ApiError, Client, ConfigError, KubeConfig

from whimbrel.errors import KubeError
from whimbrel.kube import SERVICEACCOUNT_DIR, SERVICEACCOUNT_DIR_ENV

# Every request is bounded: a hung API server must not hang whimbrel past its timeouts.
_REQUEST_TIMEOUT = httpx2.Timeout(10.0)


def from_kubeconfig(
    kubeconfig: str | None, context: str | None, namespace: str | None
) -> tuple[Client, str]:
    """A client as the user's kubeconfig says, and the namespace to use (option, or context's)."""
    name, loaded = _load_kubeconfig(kubeconfig)
    with _kubeconfig_errors(name):
        config = loaded.get(context_name=context)
    assert config is not None  # get() without a default raises instead of returning None
    ns = namespace or config.namespace
    with _kubeconfig_errors(f"{name}, context {config.context_name}"):
        client = Client(config, namespace=ns, timeout=_REQUEST_TIMEOUT, field_manager="whimbrel")
    return client, ns


@contextlib.contextmanager
def _kubeconfig_errors(name: object) -> Iterator[None]:
    """A kubeconfig that cannot be used, as a KubeError naming it."""
    try:
        yield
    except ConfigError as exc:
        raise KubeError(f"kubeconfig {name}: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise KubeError(f"cannot read the kubeconfig {name}: {exc}") from None


def _load_kubeconfig(kubeconfig: str | None) -> tuple[str, KubeConfig]:
    """--kubeconfig's file; else every existing file of $KUBECONFIG, merged as kubectl
    does; else ~/.kube/config. Returns how to name it in errors, and the config."""
    listed = (
        [] if kubeconfig else [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    )
    if listed:
        name = f"$KUBECONFIG ({os.pathsep.join(listed)})"
        # kubectl skips the missing files of a list.
        files = [f for f in (Path(p).expanduser() for p in listed) if f.is_file()]
        if not files:
            raise KubeError(f"kubeconfig {name}: none of its files exists")
    else:
        name = kubeconfig or str(Path("~/.kube/config").expanduser())
        files = [Path(name).expanduser()]
        if not files[0].is_file():
            problem = "is not a file" if files[0].exists() else "not found"
            raise KubeError(f"kubeconfig {name}: {problem}")
    documents = []
    for file in files:
        with _kubeconfig_errors(file):
            documents.append((file, yaml.safe_load(file.read_text(encoding="utf-8"))))
    with _kubeconfig_errors(name):
        return name, KubeConfig.from_dict(merge_kubeconfigs(documents), fname=files[0])


_NAMED_LISTS = {"clusters": "cluster", "contexts": "context", "users": "user"}
# Paths kubectl resolves against the file that holds them (clientcmd's ResolvePaths).
_PATH_FIELDS = {
    "cluster": ("certificate-authority",),
    "user": ("client-certificate", "client-key", "tokenFile"),
}


def merge_kubeconfigs(documents: list[tuple[Path, Any]]) -> dict[str, Any]:
    """kubectl's merge of a KUBECONFIG list: the first file to set a value or to name a
    cluster, context or user wins; relative paths stay relative to their own file."""
    merged: dict[str, Any] = {"apiVersion": "v1", "kind": "Config"}
    for key in _NAMED_LISTS:
        merged[key] = []
    names: dict[str, set[str]] = {key: set() for key in _NAMED_LISTS}
    for file, document in documents:
        if document is None:  # an empty file
            continue
        if not isinstance(document, dict):
            raise KubeError(f"kubeconfig {file}: not a kubeconfig (a YAML mapping)")
        if document.get("current-context") and "current-context" not in merged:
            merged["current-context"] = document["current-context"]
        for key, field in _NAMED_LISTS.items():
            for entry in document.get(key) or []:
                if not isinstance(entry, dict) or str(entry.get("name")) in names[key]:
                    continue
                names[key].add(str(entry.get("name")))
                merged[key].append(_with_absolute_paths(entry, field, file.parent))
    return merged


def _with_absolute_paths(entry: dict[str, Any], field: str, folder: Path) -> dict[str, Any]:
    body = entry.get(field)
    if not isinstance(body, dict):
        return entry
    body = dict(body)
    for name in _PATH_FIELDS.get(field, ()):
        value = body.get(name)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            body[name] = str(folder / value)
    plugin = body.get("exec") if field == "user" else None
    command = plugin.get("command") if isinstance(plugin, dict) else None
    # A bare command name is looked up on PATH; a relative path is the file's.
    if isinstance(command, str) and "/" in command and not Path(command).is_absolute():
        body["exec"] = {**cast(dict[str, Any], plugin), "command": str(folder / command)}
    return {**entry, field: body}


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
