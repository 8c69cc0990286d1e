"""Decoding checks against the official OpenAPI schemas (from kubernetes-validate, offline).

The real API server decodes a request body into Go structs: a value of the wrong JSON type
is a 400, and an unknown field is dropped (fieldValidation=Warn, the default) or a 400
(fieldValidation=Strict). Required fields and value ranges are validation (422), checked by
api.py per kind.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

import jsonschema
import referencing
from kubernetes_validate import utils

from .store import Obj, Resource, bad_request

SCHEMA_VERSION = "1.31"
_DIR = "kubernetes-json-schema/v1.31.0-local-strict"
_lock = threading.Lock()

_GO_TYPES = {
    "integer": "int32",
    "string": "string",
    "boolean": "bool",
    "object": "object",
    "array": "array",
}
_JSON_TYPES = {
    str: "string",
    int: "number",
    float: "number",
    bool: "bool",
    list: "array",
    dict: "object",
}


@cache
def _definitions() -> Any:
    return utils.schema_contents(f"{_DIR}/_definitions.json", SCHEMA_VERSION)


def _file(res: Resource) -> str:
    group = res.group.split(".")[0]
    return (
        f"{res.kind.lower()}-{group}-{res.version}.json"
        if group
        else f"{res.kind.lower()}-{res.version}.json"
    )


@cache
def _validator(res: Resource) -> jsonschema.protocols.Validator:
    schema = utils.schema_contents(f"{_DIR}/{_file(res)}", SCHEMA_VERSION)
    registry = referencing.Resource.from_contents(_definitions()) @ (
        referencing.Resource.from_contents(schema) @ referencing.Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def decode(res: Resource, obj: Obj, strict_fields: bool) -> list[str]:
    """Raise 400 for a wrongly typed value; drop unknown fields (400 when `strict_fields`).
    Returns the warnings the server would send for the dropped fields."""
    with _lock:  # the first use loads ~1 MB of JSON; later ones are cached
        validator = _validator(res)
    unknown: list[tuple[dict[str, Any], list[str], str]] = []
    for error in validator.iter_errors(obj):
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "type":
            expected = error.validator_value
            expected = (
                next((t for t in expected if t != "null"), "")
                if isinstance(expected, list)
                else expected
            )
            got = _JSON_TYPES.get(type(error.instance), "value")
            raise bad_request(
                f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: json: '
                f"cannot unmarshal {got} into Go struct field {path or res.kind} of type "
                f"{_GO_TYPES.get(str(expected), expected)}"
            )
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set((error.schema.get("properties") or {}).keys())
            extras = [k for k in error.instance if k not in known]
            unknown.append((error.instance, extras, path))
    warnings: list[str] = []
    for instance, extras, path in unknown:
        for key in extras:
            field = f"{path}.{key}" if path else key
            if strict_fields:
                raise bad_request(f'strict decoding error: unknown field "{field}"')
            warnings.append(f'unknown field "{field}"')
            instance.pop(key, None)
    return warnings
