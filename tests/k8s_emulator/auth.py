"""Bearer tokens and RBAC evaluated from the Roles and RoleBindings in the store."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from .store import Obj, Store

ADMIN_USER = "kubernetes-admin"


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...]
    service_account: tuple[str, str] | None = None  # namespace, name
    pod: tuple[str, str, str] | None = None  # namespace, name, uid of the pod a token is bound to

    @property
    def is_admin(self) -> bool:
        return "system:masters" in self.groups


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str
    subresource: str
    name: str
    namespace: str


@dataclass
class Authenticator:
    store: Store
    _tokens: dict[str, Identity] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, identity: Identity) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = identity
        return token

    def issue_admin(self) -> str:
        return self.issue(Identity(ADMIN_USER, ("system:masters", "system:authenticated")))

    def issue_service_account(
        self, namespace: str, name: str, pod: tuple[str, str, str] | None = None
    ) -> str:
        user = f"system:serviceaccount:{namespace}:{name}"
        groups = (
            "system:serviceaccounts",
            f"system:serviceaccounts:{namespace}",
            "system:authenticated",
        )
        return self.issue(Identity(user, groups, (namespace, name), pod))

    def authenticate(self, header: str | None) -> Identity | None:
        """The identity of an `Authorization: Bearer` header, or None (401)."""
        if not header or not header.startswith("Bearer "):
            return None
        with self._lock:
            identity = self._tokens.get(header[len("Bearer ") :].strip())
        if identity is None:
            return None
        # A service-account token is only valid while its account (and bound pod) exist.
        if identity.service_account is not None:
            ns, name = identity.service_account
            if self.store.get("serviceaccounts", ns, name) is None:
                return None
        if identity.pod is not None:
            ns, name, uid = identity.pod
            pod = self.store.get("pods", ns, name)
            if pod is None or pod["metadata"]["uid"] != uid:
                return None
        return identity


def _subject_matches(subject: dict[str, Any], identity: Identity, binding_ns: str) -> bool:
    kind = subject.get("kind")
    if kind == "ServiceAccount" and identity.service_account is not None:
        return (
            subject.get("namespace") or binding_ns,
            subject.get("name"),
        ) == identity.service_account
    if kind == "User":
        return subject.get("name") == identity.user
    if kind == "Group":
        return subject.get("name") in identity.groups
    return False


def _rule_allows(rule: dict[str, Any], attrs: Attributes) -> bool:
    verbs = rule.get("verbs") or []
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attrs.group not in groups:
        return False
    wanted = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = rule.get("resources") or []
    if not (
        "*" in resources
        or wanted in resources
        or (attrs.subresource and f"*/{attrs.subresource}" in resources)
    ):
        return False
    names = rule.get("resourceNames") or []
    return not names or (bool(attrs.name) and attrs.name in names)


def _role_rules(store: Store, role_ref: dict[str, Any], binding_ns: str) -> list[dict[str, Any]]:
    if role_ref.get("apiGroup") != "rbac.authorization.k8s.io":
        return []
    role: Obj | None
    if role_ref.get("kind") == "Role":
        role = store.get("roles", binding_ns, role_ref.get("name", ""))
    elif role_ref.get("kind") == "ClusterRole":
        role = store.get("clusterroles", "", role_ref.get("name", ""))
    else:
        return []
    return list((role or {}).get("rules") or [])


def authorize(store: Store, identity: Identity, attrs: Attributes) -> bool:
    if identity.is_admin:
        return True
    bindings: list[tuple[Obj, str]] = [(b, "") for b in store.list("clusterrolebindings")]
    if attrs.namespace:
        bindings += [(b, attrs.namespace) for b in store.list("rolebindings", attrs.namespace)]
    for binding, ns in bindings:
        if not any(_subject_matches(s, identity, ns) for s in binding.get("subjects") or []):
            continue
        if any(
            _rule_allows(rule, attrs)
            for rule in _role_rules(store, binding.get("roleRef") or {}, ns)
        ):
            return True
    return False


def forbidden_message(identity: Identity, attrs: Attributes, qualified: str) -> str:
    """The apiserver's wording, e.g. `leases.coordination.k8s.io "x" is forbidden: ...`."""
    target = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    where = f' in the namespace "{attrs.namespace}"' if attrs.namespace else " at the cluster scope"
    return (
        f'{target} is forbidden: User "{identity.user}" cannot {attrs.verb} resource '
        f'"{resource}" in API group "{attrs.group}"{where}'
    )
