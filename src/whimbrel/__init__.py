"""whimbrel: SQL migrations for PostgreSQL, MySQL/MariaDB and SQLite.

Everything the CLI does is a function here: `inspect`, `apply`, `revert`, `mark`,
`discover`, `watch`, `manifest`, `verify_manifest`, `bundle`, `provision`, and the
database primitives `database_exists`, `create_database`, `drop_database`,
`wait_until_ready`. Importing whimbrel is cheap: database drivers load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ExitCode",
    "InvalidManifestError",
    "ManifestMismatch",
    "ProvisionResult",
    "WhimbrelError",
    "__version__",
    "apply",
    "bundle",
    "create_database",
    "database_exists",
    "discover",
    "drop_database",
    "inspect",
    "load_sets",
    "manifest",
    "mark",
    "provision",
    "revert",
    "verify_manifest",
    "wait_until_ready",
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
    # Likewise the modules are manifests, bundles and provisioning, not manifest...
    "manifest": "whimbrel.api",
    "verify_manifest": "whimbrel.api",
    "bundle": "whimbrel.api",
    "provision": "whimbrel.api",
    "ProvisionResult": "whimbrel.api",
    "ManifestMismatch": "whimbrel.errors",
    "InvalidManifestError": "whimbrel.errors",
    "create_database": "whimbrel.provisioning",
    "drop_database": "whimbrel.provisioning",
    "database_exists": "whimbrel.provisioning",
    "wait_until_ready": "whimbrel.provisioning",
}

if TYPE_CHECKING:
    from whimbrel.api import (
        ProvisionResult,
        apply,
        bundle,
        inspect,
        load_sets,
        manifest,
        mark,
        provision,
        revert,
        verify_manifest,
    )
    from whimbrel.discovery import discover
    from whimbrel.errors import ExitCode, InvalidManifestError, ManifestMismatch, WhimbrelError
    from whimbrel.provisioning import (
        create_database,
        database_exists,
        drop_database,
        wait_until_ready,
    )
    from whimbrel.watcher import watch


def __dir__() -> list[str]:
    return sorted(__all__)


# Submodules the documentation names as `whimbrel.<module>.<name>` (e.g.
# `whimbrel.watcher.sync`): reachable after a plain `import whimbrel`, loaded on first use.
_SUBMODULES = frozenset(
    ("api", "bundles", "discovery", "errors", "manifests", "provisioning", "urls", "watcher")
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name in _SUBMODULES:
            import importlib

            return importlib.import_module(f"whimbrel.{name}")
        raise AttributeError(f"module 'whimbrel' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
