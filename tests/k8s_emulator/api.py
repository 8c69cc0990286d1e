"""The API operations (create, get, list, update, patch, delete) with each kind's defaulting,
validation and deletion semantics; the HTTP layer and the controllers both go through here."""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import datetime
import re
import threading
from collections.abc import Callable
from typing import Any

from . import schema
from .store import (
    RESOURCES,
    ApiError,
    Obj,
    Resource,
    Store,
    bad_request,
    conflict,
    forbidden,
    invalid,
    rfc3339,
)

# Go's layout "2006-01-02T15:04:05.000000Z07:00": exactly six fractional digits, then `Z`
# or a ±hh:mm offset.
_MICROTIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
MICROTIME_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"


# --- label and field selectors -------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<nkey>[^\s=!,()]+)"
    r"|(?P<key>[^\s=!,()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*$"
)


def _split_requirements(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


def label_matcher(selector: str | None) -> Callable[[dict[str, str]], bool]:
    """`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma-joined (AND)."""
    checks: list[Callable[[dict[str, str]], bool]] = []
    for part in _split_requirements(selector or ""):
        m = _REQUIREMENT.match(part)
        if m is None:
            raise bad_request(f"unable to parse requirement: {part!r}")
        if m.group("not"):
            key = m.group("nkey")
            checks.append(lambda labels, k=key: k not in labels)
        elif m.group("op"):
            key, value, op = m.group("key"), m.group("value"), m.group("op")
            if op == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif m.group("setop"):
            key = m.group("key")
            values = {v.strip() for v in m.group("values").split(",") if v.strip()}
            if m.group("setop") == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        else:
            key = m.group("key")
            checks.append(lambda labels, k=key: k in labels)
    return lambda labels: all(check(labels) for check in checks)


_FIELDS: dict[str, Callable[[Obj], str]] = {
    "metadata.name": lambda o: str(o["metadata"].get("name", "")),
    "metadata.namespace": lambda o: str(o["metadata"].get("namespace", "")),
}
_POD_FIELDS: dict[str, Callable[[Obj], str]] = {
    "status.phase": lambda o: str((o.get("status") or {}).get("phase", "")),
    "spec.nodeName": lambda o: str(o["spec"].get("nodeName", "")),
    "spec.serviceAccountName": lambda o: str(o["spec"].get("serviceAccountName", "")),
}


def field_matcher(res: Resource, selector: str | None) -> Callable[[Obj], bool]:
    known = dict(_FIELDS)
    if res.plural == "pods":
        known.update(_POD_FIELDS)
    checks: list[Callable[[Obj], bool]] = []
    for part in [p for p in (selector or "").split(",") if p.strip()]:
        m = re.fullmatch(r"\s*([^=!\s]+)\s*(==|=|!=)\s*(\S*)\s*", part)
        if m is None:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{part}'")
        name, op, value = m.groups()
        if name not in known:
            raise bad_request(
                f'"{name}" is not a known field selector: only "metadata.name", '
                '"metadata.namespace"'
            )
        get = known[name]
        if op == "!=":
            checks.append(lambda o, g=get, v=value: g(o) != v)
        else:
            checks.append(lambda o, g=get, v=value: g(o) == v)
    return lambda o: all(check(o) for check in checks)


# --- patches -----------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902: add, remove, replace, test (enough for clients' uses)."""
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op.get("path", ""))
        if not parts:
            raise bad_request("json patch on the whole object is not supported")
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
            if parent is None:
                raise ApiError(422, "Invalid", f"doc is missing path: {op.get('path')}")
        last = parts[-1]
        kind = op.get("op")
        if kind == "test":
            actual = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if actual != op.get("value"):
                raise ApiError(422, "Invalid", f"testing value {op.get('path')} failed")
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            elif last in parent:
                del parent[last]
            else:
                raise ApiError(422, "Invalid", f"unable to remove nonexistent key: {last}")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op.get("value"))
                elif kind == "add":
                    parent.insert(int(last), op.get("value"))
                else:
                    parent[int(last)] = op.get("value")
            else:
                parent[last] = op.get("value")
        else:
            raise bad_request(f"unsupported json patch operation {kind!r}")
    return doc


# --- per-kind defaulting and validation ------------------------------------------------------


def _default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in spec.get("containers") or []:
        image = str(container.get("image", ""))
        tagged = ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
        container.setdefault(
            "imagePullPolicy", "IfNotPresent" if tagged or "@" in image else "Always"
        )
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})


def _validate_pod_spec(res: Resource, name: str, spec: Any, prefix: str) -> None:
    if not isinstance(spec, dict):
        raise invalid(res, name, prefix, "Required value", "FieldValueRequired")
    containers = spec.get("containers")
    if not containers or not isinstance(containers, list):
        raise invalid(res, name, f"{prefix}.containers", "Required value", "FieldValueRequired")
    seen: set[str] = set()
    for i, container in enumerate(containers):
        if not container.get("name"):
            raise invalid(
                res, name, f"{prefix}.containers[{i}].name", "Required value", "FieldValueRequired"
            )
        if not container.get("image"):
            raise invalid(
                res, name, f"{prefix}.containers[{i}].image", "Required value", "FieldValueRequired"
            )
        if container["name"] in seen:
            raise invalid(
                res,
                name,
                f"{prefix}.containers[{i}].name",
                f'Duplicate value: "{container["name"]}"',
                "FieldValueDuplicate",
            )
        seen.add(container["name"])
        for j, var in enumerate(container.get("env") or []):
            if not var.get("name"):
                raise invalid(
                    res,
                    name,
                    f"{prefix}.containers[{i}].env[{j}].name",
                    "Required value",
                    "FieldValueRequired",
                )


def _check_microtime(res: Resource, spec: dict[str, Any]) -> None:
    for field in ("acquireTime", "renewTime"):
        value = spec.get(field)
        if value is None:
            continue
        parsed = None
        if isinstance(value, str) and _MICROTIME.match(value):
            with contextlib.suppress(ValueError):
                parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed is None:
            # The apiserver fails decoding the MicroTime before any validation: 400.
            raise bad_request(
                f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                f'parsing time "{value}" as "{MICROTIME_LAYOUT}": cannot parse "{value}" as '
                f'"{MICROTIME_LAYOUT}"'
            )
        # stored and answered in UTC, as MicroTime marshals
        utc = parsed.astimezone(datetime.UTC)
        spec[field] = utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond:06d}Z"


def _validate_lease(res: Resource, obj: Obj) -> None:
    name = obj["metadata"].get("name", "")
    spec = obj.get("spec")
    if spec is None:
        obj["spec"] = spec = {}
    if not isinstance(spec, dict):
        raise bad_request(
            f'{res.kind} in version "v1" cannot be handled as a {res.kind}: spec must be an object'
        )
    _check_microtime(res, spec)
    for field in ("leaseDurationSeconds", "leaseTransitions"):
        value = spec.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad_request(
                f'{res.kind} in version "v1" cannot be handled as a {res.kind}: json: cannot '
                f"unmarshal {type(value).__name__} into Go struct field "
                f"LeaseSpec.spec.{field} of type int32"
            )
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        raise invalid(
            res,
            name,
            "spec.leaseDurationSeconds",
            f"Invalid value: {duration}: must be greater than 0",
        )
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        raise invalid(
            res,
            name,
            "spec.leaseTransitions",
            f"Invalid value: {transitions}: must be greater than or equal to 0",
        )
    holder = spec.get("holderIdentity")
    if holder is not None and not isinstance(holder, str):
        raise bad_request(
            f'{res.kind} in version "v1" cannot be handled as a {res.kind}: holderIdentity '
            "must be a string"
        )


def _normalize_secret(res: Resource, obj: Obj) -> None:
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        raise bad_request(
            'Secret in version "v1" cannot be handled as a Secret: data must be an object'
        )
    for key, value in data.items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise bad_request(
                'Secret in version "v1" cannot be handled as a Secret: illegal base64 data '
                f"in data[{key!r}]"
            ) from exc
    for key, value in (obj.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        obj["data"] = data
    else:
        obj.pop("data", None)
    obj.setdefault("type", "Opaque")
    for key in data:
        if not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
            raise invalid(
                res,
                obj["metadata"].get("name", ""),
                f"data[{key}]",
                f'Invalid value: "{key}": a valid config key must consist of alphanumeric '
                "characters, '-', '_' or '.'",
            )


def _validate_job(res: Resource, obj: Obj) -> None:
    name = obj["metadata"].get("name") or obj["metadata"].get("generateName", "")
    spec = obj.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("template"), dict):
        raise invalid(
            res, name, "spec.template.spec.containers", "Required value", "FieldValueRequired"
        )
    template = spec["template"]
    tspec = template.get("spec")
    _validate_pod_spec(res, name, tspec, "spec.template.spec")
    policy = tspec.get("restartPolicy")
    if policy not in ("Never", "OnFailure"):
        detail = (
            f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"'
            if policy
            else 'Required value: valid values: "OnFailure", "Never"'
        )
        raise invalid(
            res, name, "spec.template.spec.restartPolicy", detail, "FieldValueNotSupported"
        )
    if spec.get("podFailurePolicy") is not None:
        _validate_pod_failure_policy(res, name, spec, tspec)
    for field in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        value = spec.get(field)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise invalid(
                res,
                name,
                f"spec.{field}",
                f"Invalid value: {value}: must be greater than or equal to 0",
            )


def _validate_pod_failure_policy(
    res: Resource, name: str, spec: dict[str, Any], tspec: dict[str, Any]
) -> None:
    """The apiserver's checks of spec.podFailurePolicy (batch validation.go)."""
    policy = tspec.get("restartPolicy")
    if policy != "Never":
        raise invalid(
            res,
            name,
            "spec.template.spec.restartPolicy",
            f'Invalid value: "{policy}": only "Never" is supported when podFailurePolicy '
            "is specified",
        )
    names = {
        c.get("name") for c in (tspec.get("containers") or []) + (tspec.get("initContainers") or [])
    }
    rules = spec["podFailurePolicy"].get("rules") or []
    if len(rules) > 20:
        raise invalid(
            res,
            name,
            "spec.podFailurePolicy.rules",
            f"Too many: {len(rules)}: must have at most 20 items",
            "FieldValueTooMany",
        )
    for i, rule in enumerate(rules):
        at = f"spec.podFailurePolicy.rules[{i}]"
        action = rule.get("action")
        if action not in ("FailJob", "FailIndex", "Ignore", "Count"):
            raise invalid(
                res,
                name,
                f"{at}.action",
                f'Unsupported value: "{action}": supported values: '
                '"Count", "FailIndex", "FailJob", "Ignore"',
                "FieldValueNotSupported",
            )
        if action == "FailIndex" and spec.get("completionMode") != "Indexed":
            raise invalid(
                res,
                name,
                f"{at}.action",
                'Invalid value: "FailIndex": The action is only valid for Indexed Jobs',
            )
        exit_codes, conditions = rule.get("onExitCodes"), rule.get("onPodConditions")
        if exit_codes is not None and conditions:
            raise invalid(
                res,
                name,
                at,
                "Invalid value: specifying both OnExitCodes and OnPodConditions is not supported",
            )
        if exit_codes is None and not conditions:
            raise invalid(
                res,
                name,
                at,
                "Invalid value: specifying one of OnExitCodes and OnPodConditions is required",
            )
        if exit_codes is not None:
            container = exit_codes.get("containerName")
            if container is not None and container not in names:
                raise invalid(
                    res,
                    name,
                    f"{at}.onExitCodes.containerName",
                    f'Invalid value: "{container}": must be one of the container or '
                    "initContainer names in the pod template",
                )
            operator = exit_codes.get("operator")
            if operator not in ("In", "NotIn"):
                raise invalid(
                    res,
                    name,
                    f"{at}.onExitCodes.operator",
                    f'Unsupported value: "{operator}": supported values: "In", "NotIn"',
                    "FieldValueNotSupported",
                )
            values = exit_codes.get("values") or []
            if not values:
                raise invalid(
                    res,
                    name,
                    f"{at}.onExitCodes.values",
                    "Required value: at least one value is required",
                    "FieldValueRequired",
                )
            for j, value in enumerate(values):
                where = f"{at}.onExitCodes.values[{j}]"
                if operator == "In" and value == 0:
                    raise invalid(
                        res, name, where, "Invalid value: 0: must not be 0 for the In operator"
                    )
                if j > 0 and value == values[j - 1]:
                    raise invalid(
                        res, name, where, f"Duplicate value: {value}", "FieldValueDuplicate"
                    )
                if j > 0 and value < values[j - 1]:
                    raise invalid(res, name, where, f"Invalid value: {value}: must be ordered")
        for j, pattern in enumerate(conditions or []):
            if not pattern.get("type"):
                raise invalid(
                    res,
                    name,
                    f"{at}.onPodConditions[{j}].type",
                    "Required value",
                    "FieldValueRequired",
                )
            if pattern.get("status", "True") not in ("True", "False", "Unknown"):
                raise invalid(
                    res,
                    name,
                    f"{at}.onPodConditions[{j}].status",
                    f'Unsupported value: "{pattern.get("status")}": supported values: '
                    '"False", "True", "Unknown"',
                    "FieldValueNotSupported",
                )


def _default_job(obj: Obj) -> None:
    spec = obj["spec"]
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", None)
    if spec.get("manualSelector") is None:
        spec.pop("manualSelector")
    # with a podFailurePolicy, a pod is replaced only once it is fully terminal
    spec.setdefault(
        "podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
    )
    for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
        for pattern in rule.get("onPodConditions") or []:
            pattern.setdefault("status", "True")
    template = spec["template"]
    template.setdefault("metadata", {})
    _default_pod_spec(template["spec"])
    obj.setdefault("status", {})


def _label_job(obj: Obj) -> None:
    """Once the Job has its uid: the selector and the labels its pods carry."""
    meta, spec = obj["metadata"], obj["spec"]
    uid, name = meta["uid"], meta["name"]
    template_labels = spec["template"]["metadata"].setdefault("labels", {})
    if not meta.get("labels"):
        meta["labels"] = dict(template_labels)
    system = {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    template_labels.update(system)
    meta["labels"].update(system)
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    meta["generation"] = 1


def _default_pod(obj: Obj) -> None:
    spec = obj["spec"]
    _default_pod_spec(spec)
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec["serviceAccount"] = spec["serviceAccountName"]
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}


def _default_namespace(obj: Obj) -> None:
    obj["spec"] = {"finalizers": ["kubernetes"]}
    obj["status"] = {"phase": "Active"}


def _validate_binding(res: Resource, obj: Obj) -> None:
    ref = obj.get("roleRef")
    name = obj["metadata"].get("name", "")
    if not isinstance(ref, dict) or not ref.get("name"):
        raise invalid(res, name, "roleRef.name", "Required value", "FieldValueRequired")
    if ref.get("kind") not in ("Role", "ClusterRole") or (
        res.plural == "clusterrolebindings" and ref.get("kind") != "ClusterRole"
    ):
        raise invalid(
            res,
            name,
            "roleRef.kind",
            f'Unsupported value: "{ref.get("kind")}"',
            "FieldValueNotSupported",
        )
    if ref.get("apiGroup") != "rbac.authorization.k8s.io":
        raise invalid(
            res,
            name,
            "roleRef.apiGroup",
            f'Unsupported value: "{ref.get("apiGroup")}": supported values: '
            '"rbac.authorization.k8s.io"',
            "FieldValueNotSupported",
        )
    for i, subject in enumerate(obj.get("subjects") or []):
        if subject.get("kind") not in ("ServiceAccount", "User", "Group"):
            raise invalid(
                res, name, f"subjects[{i}].kind", f'Unsupported value: "{subject.get("kind")}"'
            )
        if not subject.get("name"):
            raise invalid(res, name, f"subjects[{i}].name", "Required value", "FieldValueRequired")


def _validate_owner_references(res: Resource, obj: Obj) -> None:
    name = obj["metadata"].get("name") or obj["metadata"].get("generateName", "")
    refs = obj["metadata"].get("ownerReferences") or []
    field = "metadata.ownerReferences"
    for ref in refs:
        for key in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(key):
                value = ref.get(key, "")
                raise invalid(
                    res,
                    name,
                    f"{field}.{key}",
                    f'Invalid value: "{value}": {key} must not be empty',
                )
    if sum(1 for ref in refs if ref.get("controller")) > 1:
        raise invalid(
            res, name, field, "Invalid value: only one reference can have Controller set to true"
        )


def _validate_role(res: Resource, obj: Obj) -> None:
    name = obj["metadata"].get("name", "")
    for i, rule in enumerate(obj.get("rules") or []):
        if not rule.get("verbs"):
            raise invalid(
                res,
                name,
                f"rules[{i}].verbs",
                "Required value: verbs must contain at least one value",
                "FieldValueRequired",
            )


# --- the operations ----------------------------------------------------------------------------


class Api:
    def __init__(self, store: Store, on_pod_delete: Callable[[Obj, float], None]) -> None:
        self.store = store
        self._on_pod_delete = on_pod_delete  # the kubelet's SIGTERM
        self._request = threading.local()  # per request: fieldValidation and warnings

    def begin_request(self, field_validation: str | None, dry_run: bool = False) -> None:
        self._request.strict = (field_validation or "").lower() == "strict"
        self._request.warnings = []
        self._request.dry_run = dry_run

    def _dry_run(self) -> bool:
        return bool(getattr(self._request, "dry_run", False))

    def warnings(self) -> list[str]:
        return list(getattr(self._request, "warnings", []))

    def _check_body(self, res: Resource, namespace: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request(
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json"
            )
        if body.get("kind") not in (None, "", res.kind) or body.get("apiVersion") not in (
            None,
            "",
            res.api_version,
        ):
            raise bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                "expected "
                f"API version ({res.api_version})"
                if body.get("apiVersion") != res.api_version
                else f"the kind in the data ({body.get('kind')}) does not match the expected "
                f"kind ({res.kind})"
            )
        warnings = schema.decode(res, body, getattr(self._request, "strict", False))
        if hasattr(self._request, "warnings"):
            self._request.warnings.extend(warnings)
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request(
                f'{res.kind} in version "v1" cannot be handled as a {res.kind}: metadata must '
                "be an object"
            )
        for field in ("labels", "annotations"):
            values = meta.get(field)
            if values is not None and (
                not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values())
            ):
                raise bad_request(
                    f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                    f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{field} "
                    "of type string"
                )
        if res.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        return body

    def _validate(self, res: Resource, obj: Obj, creating: bool) -> None:
        _validate_owner_references(res, obj)
        if res.plural == "leases":
            _validate_lease(res, obj)
        elif res.plural == "secrets":
            _normalize_secret(res, obj)
        elif res.plural == "jobs" and creating:
            _validate_job(res, obj)
        elif res.plural == "pods" and creating:
            _validate_pod_spec(res, obj["metadata"].get("name", ""), obj.get("spec"), "spec")
        elif res.plural in ("rolebindings", "clusterrolebindings"):
            _validate_binding(res, obj)
        elif res.plural in ("roles", "clusterroles"):
            _validate_role(res, obj)

    def create(self, res: Resource, namespace: str, body: Any) -> Obj:
        obj = copy.deepcopy(self._check_body(res, namespace, body))
        if res.namespaced and self.store.get("namespaces", "", namespace) is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        obj.pop("status", None)
        self._validate(res, obj, creating=True)
        prepare: Callable[[Obj], None] | None = None
        if res.plural == "jobs":
            _default_job(obj)
            prepare = _label_job
        elif res.plural == "pods":
            _default_pod(obj)
            sa = obj["spec"]["serviceAccountName"]
            if self.store.get("serviceaccounts", namespace, sa) is None:
                # The ServiceAccount admission plugin.
                name = obj["metadata"].get("name") or obj["metadata"].get("generateName", "")
                raise forbidden(
                    res,
                    name,
                    f'pods "{name}" is forbidden: error looking up service account '
                    f"{namespace}/{sa}: "
                    f'serviceaccount "{sa}" not found',
                )
            obj["metadata"]["generation"] = 1
        elif res.plural == "namespaces":
            _default_namespace(obj)
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj[
                "metadata"
            ].get("name", "")
        return self.store.create(res, namespace, obj, prepare, self._dry_run())

    def get(self, res: Resource, namespace: str, name: str) -> Obj:
        return self.store.require(res, namespace, name)

    def list(
        self,
        res: Resource,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Obj:
        labels_ok = label_matcher(label_selector)
        fields_ok = field_matcher(res, field_selector)
        with self.store.lock:
            items = self.store.list(res.plural, namespace)
            rv = self.store.resource_version
        items = [o for o in items if labels_ok(o["metadata"].get("labels") or {}) and fields_ok(o)]
        for item in items:  # list items carry no apiVersion/kind
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return {
            "apiVersion": res.api_version,
            "kind": f"{res.kind}List",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    def _update(
        self, res: Resource, namespace: str, name: str, obj: Obj, expect_rv: str | None
    ) -> Obj:
        obj = copy.deepcopy(obj)
        self._validate(res, obj, creating=False)
        with self.store.lock:
            current = self.store.require(res, namespace, name)
            if res.status_subresource:
                # Status changes go through /status; the main resource keeps the stored status.
                if "status" in current:
                    obj["status"] = current["status"]
                else:
                    obj.pop("status", None)
            if res.plural in ("jobs", "pods") and obj.get("spec") != current.get("spec"):
                obj["spec"] = self._merge_mutable_spec(res, name, current, obj)
            return self.store.replace(res, namespace, name, obj, expect_rv, self._dry_run())

    @staticmethod
    def _merge_mutable_spec(res: Resource, name: str, current: Obj, obj: Obj) -> Any:
        """Pod specs and Job templates are immutable; reject the change as the server does."""
        spec = obj.get("spec") or {}
        old = current.get("spec") or {}
        if res.plural == "jobs":
            if spec.get("template") != old.get("template") or spec.get("selector") != old.get(
                "selector"
            ):
                raise invalid(res, name, "spec.template", "Invalid value: field is immutable")
            return spec
        raise invalid(
            res,
            name,
            "spec",
            "Forbidden: pod updates may not change fields other than image",
            "FieldValueForbidden",
        )

    def update(self, res: Resource, namespace: str, name: str, body: Any) -> Obj:
        obj = self._check_body(res, namespace, body)
        meta = obj["metadata"]
        if meta.get("name") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({name})"
            )
        rv = meta.get("resourceVersion") or None
        if rv is None and res.plural == "leases":
            # Leases do not allow unconditional updates.
            raise invalid(
                res,
                name,
                "metadata.resourceVersion",
                "Invalid value: 0x0: must be specified for an update",
            )
        return self._update(res, namespace, name, obj, rv)

    def patch(self, res: Resource, namespace: str, name: str, content_type: str, patch: Any) -> Obj:
        for _ in range(10):  # retried on a concurrent change, as the server does
            current = self.store.require(res, namespace, name)
            rv = current["metadata"]["resourceVersion"]
            if content_type == "application/json-patch+json":
                result = json_patch(current, patch)
            elif content_type in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                if not isinstance(patch, dict):
                    raise bad_request("the body of the request was not a JSON object")
                result = merge_patch(current, patch)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    "include: application/json-patch+json, application/merge-patch+json, "
                    "application/strategic-merge-patch+json",
                )
            if not isinstance(result, dict):
                raise bad_request("the patched object is not an object")
            result = self._check_body(res, namespace, result)
            meta = result["metadata"]
            if meta.get("name") != name:
                raise bad_request(
                    f"the name of the object ({meta.get('name')}) does not match the name on "
                    f"the URL ({name})"
                )
            sent_rv = meta.get("resourceVersion")
            if sent_rv and sent_rv != rv:
                raise conflict(res, name)
            try:
                return self._update(res, namespace, name, result, rv)
            except ApiError as exc:
                if exc.reason != "Conflict" or sent_rv:
                    raise
        raise conflict(res, name)

    def delete(
        self,
        res: Resource,
        namespace: str,
        name: str,
        propagation: str | None,
        grace: int | None = None,
        preconditions: dict[str, Any] | None = None,
    ) -> Obj:
        # One step under the store lock: the garbage collector never sees the owner gone
        # while its orphans still name it.
        with self.store.lock:
            return self._delete(res, namespace, name, propagation, grace, preconditions)

    def _delete(
        self,
        res: Resource,
        namespace: str,
        name: str,
        propagation: str | None,
        grace: int | None,
        preconditions: dict[str, Any] | None,
    ) -> Obj:
        obj = self.store.require(res, namespace, name)
        meta = obj["metadata"]
        if preconditions:
            if preconditions.get("uid") not in (None, meta["uid"]):
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {preconditions['uid']}, UID "
                    f"in object meta: {meta['uid']}",
                    {"name": name, "kind": res.plural},
                )
            if preconditions.get("resourceVersion") not in (None, meta["resourceVersion"]):
                raise conflict(res, name)
        if propagation not in (None, "Orphan", "Background", "Foreground"):
            raise invalid(
                res,
                name,
                "propagationPolicy",
                f'Unsupported value: "{propagation}"',
                "FieldValueNotSupported",
            )
        if meta.get("deletionTimestamp") or self._dry_run():
            return obj
        if propagation is None:
            # batch/v1 Jobs orphan by default (the REST strategy's legacy default).
            propagation = "Orphan" if res.plural == "jobs" else "Background"
        uid = meta["uid"]
        if propagation == "Orphan":
            self._orphan(uid)
        if propagation == "Foreground":

            def mark(o: Obj) -> None:
                o["metadata"]["deletionTimestamp"] = rfc3339()
                o["metadata"]["deletionGracePeriodSeconds"] = 0
                finalizers = o["metadata"].setdefault("finalizers", [])
                if "foregroundDeletion" not in finalizers:
                    finalizers.append("foregroundDeletion")

            return self.store.mutate(res, namespace, name, mark) or obj
        if res.plural == "pods":
            seconds = (
                grace if grace is not None else obj["spec"].get("terminationGracePeriodSeconds", 30)
            )

            def terminating(o: Obj) -> None:
                o["metadata"]["deletionTimestamp"] = rfc3339()
                o["metadata"]["deletionGracePeriodSeconds"] = seconds

            updated = self.store.mutate(res, namespace, name, terminating) or obj
            self._on_pod_delete(updated, float(seconds))
            return updated
        self.store.remove(res, namespace, name)
        details: dict[str, Any] = {"name": name, "kind": res.plural, "uid": uid}
        if res.group:
            details["group"] = res.group
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    def _orphan(self, uid: str) -> None:
        for (plural, ns, name), obj in self.store.all_objects():
            refs = obj["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):

                def strip(o: Obj, u: str = uid) -> None:
                    kept = [
                        r for r in o["metadata"].get("ownerReferences") or [] if r.get("uid") != u
                    ]
                    if kept:
                        o["metadata"]["ownerReferences"] = kept
                    else:
                        o["metadata"].pop("ownerReferences", None)

                self.store.mutate(RESOURCES[plural], ns, name, strip)
