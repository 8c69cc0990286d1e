"""whimbrel: SQL migrations for PostgreSQL, MySQL/MariaDB and SQLite.

Everything the CLI does is a function here: `inspect`, `apply`, `revert`, `mark`,
`discover`. Importing whimbrel is cheap: database drivers load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ExitCode",
    "WhimbrelError",
    "__version__",
    "apply",
    "discover",
    "inspect",
    "load_sets",
    "mark",
    "revert",
    "watch",
]

_LAZY = {
    "apply": "whimbrel.api",
    "inspect": "whimbrel.api",
    "revert": "whimbrel.api",
    "mark": "whimbrel.api",
    "load_sets": "whimbrel.api",
    "discover": "whimbrel.discovery",
    "ExitCode": "whimbrel.errors",
    "WhimbrelError": "whimbrel.errors",
    "watch": "whimbrel.watcher",  # the module is not named watch: it would shadow this
}

if TYPE_CHECKING:
    from whimbrel.api import apply, inspect, load_sets, mark, revert
    from whimbrel.discovery import discover
    from whimbrel.errors import ExitCode, WhimbrelError
    from whimbrel.watcher import watch


def __dir__() -> list[str]:
    return sorted(__all__)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'whimbrel' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
