"""The object store: resource kinds, metadata, resourceVersions and the API's error Statuses."""

from __future__ import annotations

import copy
import datetime
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    plural: str
    group: str
    version: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]
    status_subresource: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """`leases.coordination.k8s.io`, or `pods` in the core group, as the server's messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_qualified(self) -> str:
        """`Lease.coordination.k8s.io`, or `Pod`, as in an Invalid Status message."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


_CRUD = ("create", "get", "list", "update", "patch", "delete")
RESOURCES: dict[str, Resource] = {
    r.plural: r
    for r in (
        Resource("namespaces", "", "v1", "Namespace", False, ("create", "get", "list")),
        Resource("pods", "", "v1", "Pod", True, (*_CRUD,), status_subresource=True),
        Resource("secrets", "", "v1", "Secret", True, _CRUD),
        Resource("serviceaccounts", "", "v1", "ServiceAccount", True, _CRUD),
        Resource("jobs", "batch", "v1", "Job", True, _CRUD, status_subresource=True),
        Resource("leases", "coordination.k8s.io", "v1", "Lease", True, _CRUD),
        Resource("roles", "rbac.authorization.k8s.io", "v1", "Role", True, _CRUD),
        Resource("rolebindings", "rbac.authorization.k8s.io", "v1", "RoleBinding", True, _CRUD),
        Resource("clusterroles", "rbac.authorization.k8s.io", "v1", "ClusterRole", False, _CRUD),
        Resource(
            "clusterrolebindings",
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            False,
            _CRUD,
        ),
    )
}


def resource_for(group: str, version: str, plural: str) -> Resource | None:
    res = RESOURCES.get(plural)
    if res is None or res.group != group or res.version != version:
        return None
    return res


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def rfc3339(t: datetime.datetime | None = None) -> str:
    """A metav1.Time: whole seconds, `Z`."""
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


class ApiError(Exception):
    """An error the API server answers with a Status object."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(res: Resource, name: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": res.plural}
    if name:
        details["name"] = name
    if res.group:
        details["group"] = res.group
    return details


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', _details(res, name))


def already_exists(res: Resource, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{res.qualified} "{name}" already exists', _details(res, name)
    )


def conflict(res: Resource, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        _details(res, name),
    )


def invalid(
    res: Resource, name: str, field: str, detail: str, kind: str = "FieldValueInvalid"
) -> ApiError:
    details = _details(res, name)
    details["kind"] = res.kind
    details["causes"] = [{"reason": kind, "message": f"{field}: {detail}", "field": field}]
    return ApiError(
        422, "Invalid", f'{res.kind_qualified} "{name}" is invalid: {field}: {detail}', details
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(res: Resource | None, name: str | None, message: str) -> ApiError:
    return ApiError(403, "Forbidden", message, _details(res, name) if res else None)


_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's: no vowels, no 0/1/3
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def random_suffix(n: int = 5) -> str:
    return "".join(random.choice(_GENERATE_ALPHABET) for _ in range(n))


def validate_name(res: Resource, name: str) -> None:
    limit = 63 if res.plural in {"jobs", "namespaces"} else 253
    if res.plural in {"roles", "rolebindings", "clusterroles", "clusterrolebindings"}:
        # RBAC names are path segments only
        if "/" in name or "%" in name or name in {".", ".."}:
            raise invalid(
                res, name, "metadata.name", f'Invalid value: "{name}": may not contain "/"'
            )
        return
    if len(name) > limit:
        raise invalid(
            res,
            name,
            "metadata.name",
            f'Invalid value: "{name}": must be no more than {limit} characters',
        )
    if not _DNS1123_SUBDOMAIN.match(name):
        raise invalid(
            res,
            name,
            "metadata.name",
            f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
            "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
            "character (e.g. 'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        )


Key = tuple[str, str, str]  # plural, namespace ("" when cluster-scoped), name


class Store:
    """Every object, one global resourceVersion counter, and a Condition notified on change."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._objects: dict[Key, Obj] = {}
        self._rv = 1000

    @property
    def resource_version(self) -> str:
        with self.lock:
            return str(self._rv)

    def _bump(self) -> str:
        self._rv += 1
        self.changed.notify_all()
        return str(self._rv)

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            obj = self._objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def require(self, res: Resource, namespace: str, name: str) -> Obj:
        obj = self.get(res.plural, namespace, name)
        if obj is None:
            raise not_found(res, name)
        return obj

    def list(self, plural: str, namespace: str | None = None) -> list[Obj]:
        """Sorted by namespace and name, as etcd returns them; namespace None means all."""
        with self.lock:
            return [
                copy.deepcopy(obj)
                for key, obj in sorted(self._objects.items())
                if key[0] == plural and (namespace is None or key[1] == namespace)
            ]

    def all_objects(self) -> Iterator[tuple[Key, Obj]]:
        with self.lock:
            return iter([(k, copy.deepcopy(v)) for k, v in self._objects.items()])

    def create(
        self,
        res: Resource,
        namespace: str,
        obj: Obj,
        prepare: Callable[[Obj], None] | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """Fill in the server-side metadata and store (unless `dry_run`); `prepare` sees the
        object once it has its name and uid (a Job's selector needs the uid)."""
        with self.lock:
            meta = obj.setdefault("metadata", {})
            if not meta.get("name"):
                prefix = meta.get("generateName")
                if not prefix:
                    raise invalid(
                        res,
                        "",
                        "metadata.name",
                        "Required value: name or generateName is required",
                        "FieldValueRequired",
                    )
                for _ in range(10):
                    candidate = prefix[: 63 - 5] + random_suffix()
                    if (res.plural, namespace, candidate) not in self._objects:
                        break
                meta["name"] = candidate
            name = meta["name"]
            validate_name(res, name)
            if (res.plural, namespace, name) in self._objects:
                raise already_exists(res, name)
            if res.namespaced:
                meta["namespace"] = namespace
            else:
                meta.pop("namespace", None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = rfc3339()
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
                meta.pop(field, None)
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            if prepare is not None:
                prepare(obj)
            if dry_run:  # a dry run has no resourceVersion: nothing was written
                meta.pop("resourceVersion", None)
                return copy.deepcopy(obj)
            meta["resourceVersion"] = self._bump()
            self._objects[(res.plural, namespace, name)] = obj
            return copy.deepcopy(obj)

    def replace(
        self,
        res: Resource,
        namespace: str,
        name: str,
        obj: Obj,
        expect_rv: str | None,
        dry_run: bool = False,
    ) -> Obj:
        """Store a new version; `expect_rv` (when given) must be the current resourceVersion."""
        with self.lock:
            key = (res.plural, namespace, name)
            current = self._objects.get(key)
            if current is None:
                raise not_found(res, name)
            if expect_rv is not None and expect_rv != current["metadata"]["resourceVersion"]:
                raise conflict(res, name)
            meta = obj.setdefault("metadata", {})
            for field in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ):
                if field in current["metadata"]:
                    meta[field] = current["metadata"][field]
                else:
                    meta.pop(field, None)
            meta["name"] = name
            if res.namespaced:
                meta["namespace"] = namespace
            if "generation" in current["metadata"]:
                gen = current["metadata"]["generation"]
                meta["generation"] = gen + 1 if obj.get("spec") != current.get("spec") else gen
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            if dry_run:
                meta["resourceVersion"] = current["metadata"]["resourceVersion"]
                return copy.deepcopy(obj)
            meta["resourceVersion"] = self._bump()
            self._objects[key] = obj
            return copy.deepcopy(obj)

    def mutate(
        self, res: Resource, namespace: str, name: str, change: Callable[[Obj], None]
    ) -> Obj | None:
        """Apply a controller's change to the current object (None if it is gone)."""
        with self.lock:
            key = (res.plural, namespace, name)
            current = self._objects.get(key)
            if current is None:
                return None
            updated = copy.deepcopy(current)
            change(updated)
            if updated == current:
                return copy.deepcopy(current)
            updated["metadata"]["resourceVersion"] = self._bump()
            self._objects[key] = updated
            return copy.deepcopy(updated)

    def remove(self, res: Resource, namespace: str, name: str) -> Obj | None:
        with self.lock:
            obj = self._objects.pop((res.plural, namespace, name), None)
            if obj is not None:
                obj["metadata"]["resourceVersion"] = self._bump()
            return obj

    def find_uid(self, uid: str) -> tuple[Key, Obj] | None:
        with self.lock:
            for key, obj in self._objects.items():
                if obj["metadata"].get("uid") == uid:
                    return key, copy.deepcopy(obj)
            return None

    def uids(self) -> set[str]:
        with self.lock:
            return {obj["metadata"]["uid"] for obj in self._objects.values()}

    def wait(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)
