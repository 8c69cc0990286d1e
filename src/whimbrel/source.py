"""Where a run's migrations come from: a folder or a bundle, verified against manifests.

`open_sets` is what apply, revert, inspect and provision share: it extracts a bundle (and
checks it against its embedded manifest), checks the files against `--manifest` when one is
given, and only then discovers (parses) the sets. Nothing connects to a database before
this has passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from whimbrel.discovery import MigrationSet
from whimbrel.errors import UsageError

__all__ = ["ManifestCheck", "Source", "open_sets", "verify_manifest"]


@dataclass(frozen=True)
class ManifestCheck:
    """A manifest the files were verified against."""

    source: str
    sha256: str  # of the manifest file's bytes
    sets: dict[str, list[tuple[str, str]]]  # set -> [(file, sha256)] compared


@dataclass
class Source:
    """The sets of a run, where they were found, and the manifests they passed."""

    sets: list[MigrationSet]
    root: Path  # the folder discovered (a temporary one for a bundle)
    bundle: str | None = None
    # Manifests checked, with the SHA-256 of each: the bundle's embedded one, then --manifest.
    verified: list[ManifestCheck] = field(default_factory=list)


def verify_manifest(
    path: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    *,
    store: str | os.PathLike[str] | None = None,
    sets: Sequence[str] | None = None,
    dialect: str | None = None,
) -> ManifestCheck:
    """Check the files under the folder `path` against a manifest file (and its references).

    The store of earlier manifests defaults to the manifest's own folder. Raises
    ManifestMismatch (exit 10) or InvalidManifestError (exit 11).
    """
    from whimbrel import manifests

    loaded = manifests.load(manifest)
    folder = store if store is not None else Path(os.path.abspath(manifest)).parent
    resolved = manifests.resolve(loaded, manifests.ManifestStore(folder))
    if sets:
        known = manifests.scan_files(path)
        unknown = [name for name in sets if name not in known]
        if unknown:
            raise UsageError(
                f"no set named {', '.join(map(repr, unknown))} in {path} "
                f"(sets: {', '.join(sorted(known))})"
            )
    files = manifests.verify(path, resolved, source=os.fspath(manifest), dialect=dialect, only=sets)
    return ManifestCheck(os.fspath(manifest), loaded.sha256, files)


@contextlib.contextmanager
def open_sets(
    path: str | os.PathLike[str],
    *,
    sets: Sequence[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    manifest_store: str | os.PathLike[str] | None = None,
    dialect: str | None = None,
    on_found: Callable[[list[str]], None] | None = None,
) -> Iterator[Source]:
    """Yield the selected sets of a folder or bundle, verified; a bundle's files live until exit."""
    from whimbrel.api import load_sets

    with contextlib.ExitStack() as stack:
        root = Path(path)
        bundle_path = None
        verified: list[ManifestCheck] = []
        if root.is_file():
            from whimbrel import bundles as bundle

            root, embedded, files = stack.enter_context(bundle.extracted(path, dialect=dialect))
            bundle_path = os.fspath(path)
            source = f"{bundle_path}:{bundle.MANIFEST_NAME}"
            verified.append(ManifestCheck(source, embedded.sha256, files))
        if manifest is not None:
            verified.append(
                verify_manifest(root, manifest, store=manifest_store, sets=sets, dialect=dialect)
            )
        # The run checks what it will run; on_found hears of the sets once verified.
        loaded = load_sets(root, sets, lazy=True, on_found=on_found)
        _unchanged_since_verified(loaded, verified)
        if bundle_path is not None:
            # Reports name where the sets come from, not the temporary folder they are in.
            loaded = [dataclasses.replace(s, path=Path(f"{bundle_path}:{s.name}")) for s in loaded]
        yield Source(loaded, root, bundle_path, verified)


def _unchanged_since_verified(
    loaded: Sequence[MigrationSet], verified: Sequence[ManifestCheck]
) -> None:
    """Discovery reads the files again: what it parsed must be what was verified.

    Compares the SHA-256 discovery computed of the bytes it parsed (the up file, or the
    dbmate file) with the verified one, so a file altered in between is refused, not run.
    """
    from whimbrel.errors import ManifestMismatch

    for check in verified:
        for migration_set in loaded:
            hashes = dict(check.sets.get(migration_set.name, ()))
            for migration in migration_set.migrations:
                expected = hashes.get(migration.file)
                if expected is not None and expected != migration.sha256:
                    raise ManifestMismatch(
                        f"set {migration_set.name!r}: {migration.file} changed after it was "
                        f"verified against {check.source} (sha256 {expected}, now "
                        f"{migration.sha256}); nothing was run"
                    )
