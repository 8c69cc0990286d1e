"""Fast constructors for the frozen dataclasses built by the ten thousand."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def builder(cls: type[T]) -> Callable[..., T]:
    """A constructor for frozen slots dataclass `cls` taking every field, in order, by
    position or name, without defaults or checks.

    A frozen dataclass's __init__ sets each field through object.__setattr__, about 3 µs
    for a dozen fields; this sets the slots directly, about a third of that. Discovery,
    reading tracking rows and comparing them build one of each per migration.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    # Helper names start with "__", which no field name does here: no clash with parameters.
    namespace: dict[str, Any] = {"__new": object.__new__, "__cls": cls}
    for name in names:
        namespace[f"__set_{name}"] = cls.__dict__[name].__set__
    body = "".join(f"    __set_{name}(__o, {name})\n" for name in names)
    source = f"def build({', '.join(names)}):\n    __o = __new(__cls)\n{body}    return __o\n"
    exec(source, namespace)
    return namespace["build"]  # type: ignore[no-any-return]
