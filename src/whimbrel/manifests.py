"""Manifests: every migration file of every set with its SHA-256, in FTL's schema syntax.

    database mysql testdb
    +migration 20231103205514_init.sql 42014f0e0bf2f238566d1607727b865a8909421146ed45...
    +migration 20240704103403_create_module_secrets.sql 8cc04c75ab7967eb2ec82e11e886...

`database <engine> <set>` opens a block: the engine is `postgres`, `mysql`, `sqlite` or
`any`, the set is the folder name (FTL's database name). Each `+migration <file> <sha256>`
names one migration file (for golang-migrate, the up and the down file each get a line) in
run order: by version, up before down. The hash is what `sha256sum` prints for the file.

`+migration-reference <sha256>` (at most one per block, before its `+migration` lines)
names an earlier manifest by the SHA-256 of its bytes. The effective list is that
manifest's list for the same set, recursively, followed by this block's own lines. Earlier
manifests are looked up in a store: a folder of manifest files, any names.

Verification compares the files on disk with a manifest before any of them is parsed or
run, so a tampered file is reported as tampered (exit 10), not as whatever it now breaks.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whimbrel.discovery import looks_like_migration, scan_folder
from whimbrel.errors import InvalidManifestError, InvalidMigrationsError, ManifestMismatch
from whimbrel.urls import SCHEMES

__all__ = [
    "ENGINES",
    "Manifest",
    "ManifestBlock",
    "ManifestEntry",
    "ManifestStore",
    "ResolvedSet",
    "build",
    "load",
    "parse",
    "resolve",
    "scan_files",
    "verify",
]

ENGINES = ("postgres", "mysql", "sqlite", "any")
_ENGINE_ALIASES: dict[str, str] = {**SCHEMES, "any": "any"}
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_FILE_AND_HASH = re.compile(r"(?P<file>.+?)\s+(?P<sha>\S+)")
_SET_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_VERSION = re.compile(r"[0-9]+")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # larger files in a store are not manifests


@dataclass(frozen=True)
class ManifestEntry:
    file: str
    sha256: str
    source: str = ""  # the manifest it comes from, for messages
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source}, line {self.line}" if self.source else ""


@dataclass
class ManifestBlock:
    engine: str
    set_name: str
    entries: list[ManifestEntry] = field(default_factory=list)
    reference: str | None = None
    line: int = 0
    reference_line: int = 0


@dataclass
class Manifest:
    blocks: list[ManifestBlock]
    source: str = "<manifest>"
    sha256: str = ""  # of the manifest's bytes; what a +migration-reference names

    def block(self, set_name: str) -> ManifestBlock | None:
        return next((b for b in self.blocks if b.set_name == set_name), None)

    def text(self) -> str:
        lines = []
        for block in self.blocks:
            lines.append(f"database {block.engine} {block.set_name}")
            if block.reference:
                lines.append(f"+migration-reference {block.reference}")
            lines += [f"+migration {e.file} {e.sha256}" for e in block.entries]
        return "".join(line + "\n" for line in lines)

    def to_json(self) -> dict[str, Any]:
        text = self.text()
        return {
            "manifest_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "sets": [
                {
                    "engine": b.engine,
                    "name": b.set_name,
                    "reference": b.reference,
                    "migrations": [{"file": e.file, "sha256": e.sha256} for e in b.entries],
                }
                for b in self.blocks
            ],
        }


@dataclass(frozen=True)
class ResolvedSet:
    """A set's effective list: its references' entries, then its own."""

    engine: str
    set_name: str
    entries: tuple[ManifestEntry, ...]


# -- the files on disk --------------------------------------------------------------------
def _order(filename: str) -> tuple[int, int, str]:
    match = _VERSION.match(filename)
    version = int(match[0]) if match else -1
    return version, 1 if filename.lower().endswith(".down.sql") else 0, filename


def scan_files(path: str | os.PathLike[str]) -> dict[str, list[tuple[str, str]]]:
    """Every migration-looking file of every set under `path` with its SHA-256, in run order.

    Sets are found as discovery finds them, but files are only hashed, not parsed: this is
    what a manifest describes and what verification compares.
    """
    root = Path(path)
    if not root.exists():
        raise InvalidMigrationsError(f"migrations path {root} does not exist")
    if not root.is_dir():
        raise InvalidMigrationsError(f"migrations path {root} is not a folder")
    own, subfolders, _ = scan_folder(root)
    if own:
        folders = {Path(os.path.abspath(root)).name: own}
    else:
        folders = {}
        for folder in sorted(subfolders, key=lambda p: p.name):
            files = scan_folder(folder)[0]
            if files:
                folders[folder.name] = files
    result: dict[str, list[tuple[str, str]]] = {}
    for name, files in folders.items():
        listed = []
        for file in sorted(files, key=lambda p: _order(p.name)):
            try:
                digest = hashlib.sha256(Path(file.path).read_bytes()).hexdigest()
            except OSError as exc:
                raise InvalidMigrationsError(
                    f"cannot read: {exc.strerror or exc}", set_name=name, file=file.name
                ) from None
            listed.append((file.name, digest))
        result[name] = listed
    return result


def build(
    path: str | os.PathLike[str],
    engine: str = "any",
    sets: Sequence[str] | None = None,
    *,
    reference: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
) -> Manifest:
    """The manifest of the sets under `path` (validated by discovery first).

    With `reference`, sets listed in that earlier manifest name it by its SHA-256 and list
    only the files added since; the files it lists must be unchanged.
    """
    from whimbrel.api import load_sets

    engine = normalize_engine(engine)
    names = [s.name for s in load_sets(path, sets)]  # every file must be a valid migration
    files = scan_files(path)
    earlier: Manifest | None = None
    resolved: dict[str, ResolvedSet] = {}
    if reference is not None:
        earlier = load(reference)
        folder = store if store is not None else Path(os.path.abspath(reference)).parent
        resolved = resolve(earlier, ManifestStore(folder))
        common = [name for name in names if name in resolved]
        source = os.fspath(reference)
        for name in common:
            if resolved[name].engine != engine:
                raise InvalidManifestError(
                    f"lists the set {name!r} for engine {resolved[name].engine}, not {engine}",
                    source=source,
                )
        # What the earlier manifest lists must still be there, unchanged.
        present = {}
        for name in common:
            listed = {e.file for e in resolved[name].entries}
            present[name] = [f for f in files[name] if f[0] in listed]
        problems: list[str] = []
        _compare(present, resolved, common, os.fspath(path), problems)
        if problems:
            raise ManifestMismatch(
                f"the files changed since the referenced manifest {source}:\n"
                + "\n".join(f"  {p}" for p in problems)
            )
    blocks = []
    for name in names:
        entries = []
        known = {e.file for e in resolved[name].entries} if name in resolved else set()
        for filename, digest in files[name]:
            if filename in known:
                continue
            if any(ch in filename for ch in "\r\n") or filename != filename.strip():
                raise InvalidMigrationsError(
                    "a file name with line breaks or surrounding spaces cannot be listed in a "
                    "manifest",
                    set_name=name,
                    file=filename,
                )
            entries.append(ManifestEntry(filename, digest))
        block = ManifestBlock(engine=engine, set_name=name, entries=entries)
        if earlier is not None and name in resolved:
            block.reference = earlier.sha256
        blocks.append(block)
    manifest = Manifest(blocks, source="<generated>")
    manifest.sha256 = hashlib.sha256(manifest.text().encode()).hexdigest()
    return manifest


def normalize_engine(engine: str) -> str:
    normal = _ENGINE_ALIASES.get(engine.lower())
    if normal is None:
        raise ValueError(f"unknown engine {engine!r}: use {', '.join(ENGINES)}")
    return normal


# -- reading manifests --------------------------------------------------------------------
def parse(data: bytes, source: str) -> Manifest:
    """Parse a manifest; errors name `source` and the line."""
    try:
        text = data.decode("utf-8-sig")  # a BOM (Windows editors) is not content
    except UnicodeDecodeError as exc:
        at = data.count(b"\n", 0, exc.start) + 1
        raise InvalidManifestError("not valid UTF-8", source=source, line=at) from None
    blocks: list[ManifestBlock] = []
    current: ManifestBlock | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, *tail = line.split(None, 1)
        rest = tail[0].strip() if tail else ""

        def fail(message: str, number: int = number) -> InvalidManifestError:
            return InvalidManifestError(message, source=source, line=number)

        if keyword == "database":
            parts = rest.split()
            if len(parts) != 2:
                raise fail("expected 'database <engine> <set>'")
            engine, set_name = parts
            if engine.lower() not in _ENGINE_ALIASES:
                raise fail(f"unknown engine {engine!r}: use {', '.join(ENGINES)}")
            if not _SET_NAME.fullmatch(set_name):
                raise fail(f"{set_name!r} is not a valid set name")
            if any(b.set_name == set_name for b in blocks):
                raise fail(f"a second 'database' block for the set {set_name!r}")
            current = ManifestBlock(normalize_engine(engine), set_name, line=number)
            blocks.append(current)
        elif keyword == "+migration":
            if current is None:
                raise fail("'+migration' before any 'database <engine> <set>' line")
            match = _FILE_AND_HASH.fullmatch(rest)
            filename, digest = (match["file"], match["sha"]) if match else ("", "")
            if not filename or not _SHA256.fullmatch(digest):
                raise fail("expected '+migration <file> <sha256>' (64 hex digits)")
            if "/" in filename or "\\" in filename or not looks_like_migration(filename):
                raise fail(f"{filename!r} is not a migration file name")
            for earlier in current.entries:
                if earlier.file == filename:
                    raise fail(f"{filename} is listed twice (also on line {earlier.line})")
            current.entries.append(ManifestEntry(filename, digest.lower(), source, number))
        elif keyword == "+migration-reference":
            if current is None:
                raise fail("'+migration-reference' before any 'database <engine> <set>' line")
            if not _SHA256.fullmatch(rest):
                raise fail("expected '+migration-reference <sha256>' (64 hex digits)")
            if current.reference is not None:
                first = current.reference_line
                raise fail(f"a second '+migration-reference' (first on line {first})")
            if current.entries:
                raise fail("'+migration-reference' must come before the block's '+migration' lines")
            current.reference = rest.lower()
            current.reference_line = number
        else:
            raise fail(
                f"unexpected {line[:40]!r}: expected 'database <engine> <set>', "
                "'+migration <file> <sha256>' or '+migration-reference <sha256>'"
            )
    if not blocks:
        raise InvalidManifestError(
            "no 'database <engine> <set>' line: not a manifest", source=source
        )
    return Manifest(blocks, source=source, sha256=hashlib.sha256(data).hexdigest())


def load(path: str | os.PathLike[str]) -> Manifest:
    try:
        if Path(path).stat().st_size > MAX_MANIFEST_BYTES:
            raise InvalidManifestError(
                f"larger than {MAX_MANIFEST_BYTES} bytes: not a manifest", source=os.fspath(path)
            )
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidManifestError(
            f"cannot read the manifest: {exc.strerror or exc}", source=os.fspath(path)
        ) from None
    return parse(data, os.fspath(path))


class ManifestStore:
    """A folder of earlier manifests, found by the SHA-256 of their bytes (names are free)."""

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._index: dict[str, Path] | None = None

    def _scan(self, wanted_by: str) -> dict[str, Path]:
        if self._index is not None:
            return self._index
        index: dict[str, Path] = {}
        if self.folder is not None:
            try:
                entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
            except OSError as exc:
                raise InvalidManifestError(
                    f"cannot read the manifest store {self.folder}: {exc.strerror or exc}",
                    source=wanted_by,
                ) from None
            for entry in entries:
                try:
                    if not entry.is_file() or entry.stat().st_size > MAX_MANIFEST_BYTES:
                        continue
                    digest = hashlib.sha256(Path(entry.path).read_bytes()).hexdigest()
                except OSError:  # unreadable, or gone meanwhile: not a candidate
                    continue
                index.setdefault(digest, Path(entry.path))
        self._index = index
        return index

    def get(self, sha256: str, *, wanted_by: str) -> Manifest:
        path = self._scan(wanted_by).get(sha256)
        if path is None:
            if self.folder is None:
                where = "there is no manifest store here (a bundle's manifest is self-contained)"
            else:
                where = (
                    f"no manifest with this SHA-256 in the manifest store {self.folder} "
                    "(--manifest-store DIR names the folder of earlier manifests)"
                )
            raise InvalidManifestError(f"+migration-reference {sha256}: {where}", source=wanted_by)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:  # changed since it was indexed
            raise InvalidManifestError(
                f"+migration-reference {sha256}: {path} changed while being read",
                source=wanted_by,
            )
        return parse(data, str(path))


def resolve(manifest: Manifest, store: ManifestStore | Any) -> dict[str, ResolvedSet]:
    """The effective list of every set: referenced manifests first, then the block's lines.

    `store` is anything with `get(sha256, wanted_by=...) -> Manifest`.
    """
    resolved = {}
    for block in manifest.blocks:
        chain: list[tuple[Manifest, ManifestBlock]] = [(manifest, block)]
        seen = {manifest.sha256}
        while chain[-1][1].reference is not None:
            owner, current = chain[-1]
            reference = current.reference
            assert reference is not None
            wanted_by = f"{owner.source}, line {current.reference_line}"
            if reference in seen:
                raise InvalidManifestError(
                    f"+migration-reference {reference} leads back to a manifest already in "
                    f"the chain (a reference cycle): "
                    + " -> ".join(m.sha256[:12] for m, _ in chain)
                    + f" -> {reference[:12]}",
                    source=wanted_by,
                )
            seen.add(reference)
            earlier = store.get(reference, wanted_by=wanted_by)
            earlier_block = earlier.block(block.set_name)
            if earlier_block is None:
                raise InvalidManifestError(
                    f"+migration-reference {reference}: that manifest ({earlier.source}) has "
                    f"no 'database' block for the set {block.set_name!r}",
                    source=wanted_by,
                )
            if earlier_block.engine != block.engine:
                raise InvalidManifestError(
                    f"+migration-reference {reference}: that manifest lists the set "
                    f"{block.set_name!r} for engine {earlier_block.engine}, this one for "
                    f"{block.engine}",
                    source=wanted_by,
                )
            chain.append((earlier, earlier_block))
        entries: list[ManifestEntry] = []
        by_file: dict[str, ManifestEntry] = {}
        for _, part in reversed(chain):
            for entry in part.entries:
                earlier_entry = by_file.get(entry.file)
                if earlier_entry is not None:
                    raise InvalidManifestError(
                        f"{entry.file} is listed twice in set {block.set_name!r} "
                        f"(also in {earlier_entry.where})",
                        source=entry.source,
                        line=entry.line,
                    )
                by_file[entry.file] = entry
                entries.append(entry)
        resolved[block.set_name] = ResolvedSet(block.engine, block.set_name, tuple(entries))
    return resolved


# -- verification -------------------------------------------------------------------------
def verify(
    path: str | os.PathLike[str],
    resolved: dict[str, ResolvedSet],
    *,
    source: str,
    dialect: str | None = None,
    only: Iterable[str] | None = None,
) -> dict[str, list[tuple[str, str]]]:
    """Compare the files under `path` with a resolved manifest; raise ManifestMismatch.

    Every problem is listed at once. With `only`, just those sets are compared (each must
    be in the manifest); without it, every set on disk must be in the manifest and every
    set in the manifest on disk. Returns the files compared, per set.
    """
    on_disk = scan_files(path)
    selected = list(only) if only else None
    problems: list[str] = []
    names = selected if selected is not None else sorted(set(on_disk) | set(resolved))
    _compare(on_disk, resolved, names, os.fspath(path), problems, dialect)
    if problems:
        raise ManifestMismatch(
            f"the migration files do not match the manifest {source}; nothing was run:\n"
            + "\n".join(f"  {p}" for p in problems)
        )
    return {name: on_disk[name] for name in names}


def _compare(
    on_disk: dict[str, list[tuple[str, str]]],
    resolved: dict[str, ResolvedSet],
    names: Sequence[str],
    path: str,
    problems: list[str],
    dialect: str | None = None,
) -> None:
    for name in names:
        listed = resolved.get(name)
        files = on_disk.get(name)
        if listed is None:
            problems.append(f"set {name!r} is not in the manifest")
            continue
        if files is None:
            problems.append(
                f"set {name!r} is in the manifest ({len(listed.entries)} files) but not "
                f"under {path}"
            )
            continue
        if dialect is not None and listed.engine not in ("any", dialect):
            problems.append(
                f"set {name!r} is listed for engine {listed.engine}, but the database is {dialect}"
            )
        expected = {e.file: e for e in listed.entries}
        actual = dict(files)
        for filename, digest in files:
            entry = expected.get(filename)
            if entry is None:
                problems.append(
                    f"set {name!r}: {filename} is not in the manifest (added; file sha256 {digest})"
                )
            elif entry.sha256 != digest:
                problems.append(
                    f"set {name!r}: {filename} was altered: manifest sha256 {entry.sha256} "
                    f"({entry.where}), file sha256 {digest}"
                )
        for entry in listed.entries:
            if entry.file not in actual:
                problems.append(
                    f"set {name!r}: {entry.file} is in the manifest (sha256 {entry.sha256}, "
                    f"{entry.where}) but missing"
                )
