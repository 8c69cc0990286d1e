"""Discovery: turn a folder of files into migration sets.

PATH is either one set (a folder holding migration files, named after the folder) or a
folder of sets (each sub-folder holding migration files is a set). Every file that looks
like a migration must follow the rules, or discovery fails before anything runs.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from whimbrel._fast import builder
from whimbrel.errors import InvalidMigrationsError

Format = Literal["golang-migrate", "dbmate"]

MAX_IDENTIFIER_LENGTH = 63  # PostgreSQL's limit; MySQL allows 64
MAX_VERSION = 2**63 - 1  # stored as a signed 64-bit integer
SAFE_SET_NAME = re.compile(r"[a-z_][a-z0-9_]*")

_GOLANG_NAME = re.compile(r"(?P<version>[0-9]+)_(?P<name>.+)\.(?P<direction>up|down)\.sql")
_DBMATE_NAME = re.compile(r"(?P<version>[0-9]+)(?:_(?P<name>.+))?\.sql")
_UP_MARKER = re.compile(r"^--[ \t]*migrate:up(?=[ \t\r]|$)(?P<options>[^\n]*)$", re.MULTILINE)
_DOWN_MARKER = re.compile(r"^--[ \t]*migrate:down(?=[ \t\r]|$)(?P<options>[^\n]*)$", re.MULTILINE)
_WHIMBREL_DIRECTIVE = re.compile(r"^--[ \t]*whimbrel:(?P<options>[^\n]*)$", re.MULTILINE)
_KNOWN_OPTIONS = {"transaction": {"true", "false"}}


@dataclass(frozen=True, slots=True)
class Section:
    """The SQL of one direction of a migration, with where it sits in its file."""

    file: str
    sql: str
    line_offset: int  # lines of the file before the section's first line
    transaction: bool  # False when the file says `transaction:false`


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    file: str  # the up file (golang-migrate) or the only file (dbmate)
    folder: Path  # the set's folder (one Path for all of a set's migrations: cheaper)
    format: Format
    sha256: str  # of the exact bytes of `file`, as `sha256sum` prints it
    set_name: str = ""
    down_file: str | None = None
    # The sections are parsed on first use, from the text read with the hash: a run needs
    # the sections of the migrations it runs, but only the name and hash of the others
    # (10,000 applied files cost a hash each). Holds [text] until then, then [sections].
    _parsed: list[object] = field(default_factory=list, repr=False, compare=False)

    @property
    def path(self) -> Path:
        return self.folder / self.file

    @property
    def up(self) -> Section:
        return self._sections()[0]

    @property
    def down(self) -> Section | None:  # None: irreversible
        return self._sections()[1]

    def _sections(self) -> tuple[Section, Section | None]:
        parsed = self._parsed
        if isinstance(parsed[0], str):
            if self.format == "dbmate":
                parsed[0] = _dbmate_sections(self.set_name, self.file, parsed[0])
            else:
                parsed[0] = _golang_sections(self, parsed[0])
        return parsed[0]  # type: ignore[return-value]


# Migration(version, name, file, folder, format, sha256, set_name, down_file, _parsed)
_new_migration = builder(Migration)


@dataclass(frozen=True, slots=True)
class MigrationSet:
    name: str  # also the tracking table's name
    path: Path
    migrations: tuple[Migration, ...]

    @property
    def table(self) -> str:
        return self.name

    def by_version(self) -> dict[int, Migration]:
        return {m.version: m for m in self.migrations}


def looks_like_migration(filename: str) -> bool:
    lower = filename.lower()
    if filename.startswith(".") or not lower.endswith(".sql"):
        return False
    return filename[0].isdigit() or lower.endswith((".up.sql", ".down.sql"))


def validate_set_name(name: str, path: Path | str) -> None:
    problem = None
    if not SAFE_SET_NAME.fullmatch(name):
        problem = "use lowercase letters, digits and underscores, starting with a letter or '_'"
    elif len(name) > MAX_IDENTIFIER_LENGTH:
        problem = f"it is longer than {MAX_IDENTIFIER_LENGTH} characters"
    elif name.startswith("sqlite_"):
        problem = "names starting with 'sqlite_' are reserved by SQLite"
    if problem:
        raise InvalidMigrationsError(
            f"folder name {name!r} ({path}) is not a safe SQL identifier for its tracking "
            f"table: {problem}"
        )


def discover(path: str | os.PathLike[str], *, lazy: bool = False) -> list[MigrationSet]:
    """Find and read every migration set under `path`, in name order.

    Every file is read and hashed, and its name checked. With `lazy`, the sections of each
    file (dbmate markers, options, the down file) are parsed when first used, which the
    engine does for every migration it will run before it runs any; otherwise here.
    """
    sets = _discover(path)
    if not lazy:
        for migration_set in sets:
            for migration in migration_set.migrations:
                migration.down  # noqa: B018 - parses both sections
    return sets


def _discover(path: str | os.PathLike[str]) -> list[MigrationSet]:
    root = Path(path)
    if not root.exists():
        raise InvalidMigrationsError(f"migrations path {root} does not exist")
    if not root.is_dir():
        raise InvalidMigrationsError(f"migrations path {root} is not a folder")
    own_files, subfolders, ignored_sql = scan_folder(root)
    scans = {d: scan_folder(d) for d in subfolders}  # each folder is listed once
    set_folders = [d for d in subfolders if scans[d][0]]
    if own_files and set_folders:
        raise InvalidMigrationsError(
            f"{root} holds both migration files and set folders "
            f"({', '.join(d.name for d in set_folders)}): keep one set per folder"
        )
    if own_files:
        name = Path(os.path.abspath(root)).name
        return [_load_set(name, root, own_files)]
    if not set_folders:
        hint = ""
        deeper = [d.name for d in subfolders if any(scan_folder(sub)[0] for sub in scans[d][1])]
        if deeper:
            verb = "holds" if len(deeper) == 1 else "hold"
            hint = (
                f" (sets are looked for one level down only; {', '.join(sorted(deeper))} "
                f"{verb} sets: pass that folder as PATH)"
            )
        elif ignored_sql:
            hint = (
                f" (ignored {', '.join(sorted(ignored_sql)[:5])}: a migration file name starts "
                "with its version number, like 001_init.up.sql or 20231103205514_init.sql)"
            )
        raise InvalidMigrationsError(f"no migration files found in {root}{hint}")
    sets = [_load_set(d.name, d, scans[d][0]) for d in sorted(set_folders, key=lambda d: d.name)]
    return sets


class FoundFile(NamedTuple):
    """A file found in a folder: plain strings, as pathlib costs microseconds a file."""

    name: str
    path: str


def scan_folder(folder: Path) -> tuple[list[FoundFile], list[Path], list[str]]:
    """Return (migration-looking files, sub-folders, other .sql files) of `folder`."""
    files: list[FoundFile] = []
    folders: list[Path] = []
    other_sql: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise InvalidMigrationsError(f"cannot read folder {folder}: {exc.strerror}") from exc
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
            is_file = entry.is_file()
            if entry.is_symlink():
                os.stat(entry.path)  # a dangling or looping link is an error, not a skip
        except OSError as exc:
            raise InvalidMigrationsError(
                f"cannot read {entry.path}: {exc.strerror or exc}"
            ) from exc
        migration_like = looks_like_migration(entry.name)
        if migration_like and not is_file:
            raise InvalidMigrationsError(
                f"{entry.path} is named like a migration but is not a regular file"
            )
        if is_dir:
            folders.append(Path(entry.path))
        elif is_file and migration_like:
            files.append(FoundFile(entry.name, entry.path))
        elif is_file and entry.name.lower().endswith(".sql"):
            other_sql.append(entry.name)
    return files, folders, other_sql


def _load_set(name: str, folder: Path, files: Iterable[FoundFile]) -> MigrationSet:
    validate_set_name(name, folder)
    ups: dict[int, tuple[str, FoundFile, Format]] = {}
    downs: dict[int, tuple[str, FoundFile]] = {}

    def claim(version: int, label: str) -> None:
        other = ups.get(version)
        if other is not None:
            raise InvalidMigrationsError(
                f"duplicate version {version}: {other[1].name} and {label}", set_name=name
            )

    for file in sorted(files, key=lambda p: p.name):
        filename = file.name
        golang = _GOLANG_NAME.fullmatch(filename)
        if golang:
            version = _parse_version(golang["version"], name, filename)
            if golang["direction"] == "up":
                claim(version, filename)
                ups[version] = (golang["name"], file, "golang-migrate")
            else:
                if version in downs:
                    raise InvalidMigrationsError(
                        f"duplicate version {version}: {downs[version][1].name} and {filename}",
                        set_name=name,
                    )
                downs[version] = (golang["name"], file)
            continue
        dbmate = _DBMATE_NAME.fullmatch(filename)
        if dbmate and not filename.lower().endswith((".up.sql", ".down.sql")):
            version = _parse_version(dbmate["version"], name, filename)
            claim(version, filename)
            ups[version] = (dbmate["name"] or "", file, "dbmate")
            continue
        raise InvalidMigrationsError(
            "malformed migration file name: expected VERSION_NAME.up.sql / VERSION_NAME.down.sql "
            "(golang-migrate) or VERSION_NAME.sql with -- migrate:up (dbmate), "
            "where VERSION is digits",
            set_name=name,
            file=filename,
        )

    for version, (down_name, down_path) in downs.items():
        up = ups.get(version)
        if up is None:
            raise InvalidMigrationsError(
                f"down migration without an up migration (expected "
                f"{down_path.name.removesuffix('.down.sql')}.up.sql)",
                set_name=name,
                file=down_path.name,
            )
        if up[2] == "dbmate":
            raise InvalidMigrationsError(
                f"duplicate version {version}: {up[1].name} and {down_path.name}", set_name=name
            )
        if up[0] != down_name:
            raise InvalidMigrationsError(
                f"up and down files of version {version} have different names: "
                f"{up[1].name} and {down_path.name}",
                set_name=name,
            )

    migrations = []
    for version in sorted(ups):
        migration_name, path, fmt = ups[version]
        down = downs.get(version)
        if fmt == "golang-migrate":
            migrations.append(
                _load_golang(name, folder, version, migration_name, path, down and down[1])
            )
        else:
            migrations.append(_load_dbmate(name, folder, version, migration_name, path))
    return MigrationSet(name=name, path=folder, migrations=tuple(migrations))


def _parse_version(digits: str, set_name: str, filename: str) -> int:
    version = int(digits)
    if version > MAX_VERSION:
        raise InvalidMigrationsError(
            f"version {digits} is larger than {MAX_VERSION}", set_name=set_name, file=filename
        )
    return version


_SMALL = 1 << 16


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes through os.open/os.read: a third of the cost of open(), which builds
    a FileIO and a buffer per file (10,000 files per run), and one read for a small file.
    A big one is read in one piece of its size, not gathered in chunks and joined."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        data = os.read(fd, _SMALL)
        if len(data) < _SMALL:
            return data
        size = os.fstat(fd).st_size
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, size + 1)
        while more := os.read(fd, _SMALL):  # it grew meanwhile
            data += more
        return data
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike[str], set_name: str) -> tuple[str, str]:
    """Return (sha256 hex of the exact bytes, text) of a migration file."""
    try:
        data = _read_bytes(path)
    except OSError as exc:
        raise InvalidMigrationsError(
            f"cannot read: {exc.strerror or exc}", set_name=set_name, file=os.path.basename(path)
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidMigrationsError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            set_name=set_name,
            file=os.path.basename(path),
            line=line,
        ) from None
    del data
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise InvalidMigrationsError(
            "contains a NUL character; is it a binary file?",
            set_name=set_name,
            file=os.path.basename(path),
            line=line,
        )
    return digest, text


def _parse_options(raw: str, set_name: str, filename: str, line: int) -> bool:
    """Parse `key:value` options after a marker; return the `transaction` flag."""
    transaction = True
    for item in raw.split():
        key, sep, value = item.partition(":")
        allowed = _KNOWN_OPTIONS.get(key)
        if not sep or allowed is None or value not in allowed:
            raise InvalidMigrationsError(
                f"unknown option {item!r}: the only option is transaction:false",
                set_name=set_name,
                file=filename,
                line=line,
            )
        transaction = value == "true"
    return transaction


def _require_sql(text: str, set_name: str, filename: str) -> None:
    if not text.strip():
        raise InvalidMigrationsError("file is empty", set_name=set_name, file=filename)


def _load_golang(
    set_name: str,
    folder: Path,
    version: int,
    name: str,
    up_path: FoundFile,
    down_path: FoundFile | None,
) -> Migration:
    digest, up_text = read_text(up_path.path, set_name)
    _require_sql(up_text, set_name, up_path.name)
    down_file = down_path.name if down_path else None
    return _new_migration(
        version,
        name,
        up_path.name,
        folder,
        "golang-migrate",
        digest,
        set_name,
        down_file,
        [up_text],
    )


def _golang_sections(migration: Migration, up_text: str) -> tuple[Section, Section | None]:
    set_name = migration.set_name
    down = None
    if migration.down_file is not None:
        _, down_text = read_text(migration.folder / migration.down_file, set_name)
        down = Section(
            file=migration.down_file,
            sql=down_text,
            line_offset=0,
            transaction=_directive_transaction(down_text, set_name, migration.down_file),
        )
    up = Section(
        file=migration.file,
        sql=up_text,
        line_offset=0,
        transaction=_directive_transaction(up_text, set_name, migration.file),
    )
    return up, down


def _directive_transaction(text: str, set_name: str, filename: str) -> bool:
    # golang-migrate has no per-file options; whimbrel reads `-- whimbrel: transaction:false`.
    match = _WHIMBREL_DIRECTIVE.search(text)
    if match is None:
        return True
    line = text.count("\n", 0, match.start()) + 1
    return _parse_options(match["options"], set_name, filename, line)


def _load_dbmate(
    set_name: str, folder: Path, version: int, name: str, path: FoundFile
) -> Migration:
    digest, text = read_text(path.path, set_name)
    if not text.strip():
        raise InvalidMigrationsError("file is empty", set_name=set_name, file=path.name)
    return _new_migration(
        version, name, path.name, folder, "dbmate", digest, set_name, None, [text]
    )


def _dbmate_sections(set_name: str, filename: str, text: str) -> tuple[Section, Section]:
    ups = list(_UP_MARKER.finditer(text))
    downs = list(_DOWN_MARKER.finditer(text))
    if not ups:
        raise InvalidMigrationsError(
            "no '-- migrate:up' section (a dbmate migration needs '-- migrate:up' and "
            "'-- migrate:down')",
            set_name=set_name,
            file=filename,
        )
    if not downs:
        raise InvalidMigrationsError(
            "no '-- migrate:down' section (dbmate requires one; it may be empty)",
            set_name=set_name,
            file=filename,
        )
    for markers, label in ((ups, "up"), (downs, "down")):
        if len(markers) > 1:
            line = text.count("\n", 0, markers[1].start()) + 1
            raise InvalidMigrationsError(
                f"a second '-- migrate:{label}' marker",
                set_name=set_name,
                file=filename,
                line=line,
            )
    up_marker, down_marker = ups[0], downs[0]
    up_line = text.count("\n", 0, up_marker.start()) + 1
    down_line = text.count("\n", up_marker.start(), down_marker.start()) + up_line
    if down_marker.start() < up_marker.start():
        down_line = text.count("\n", 0, down_marker.start()) + 1
        raise InvalidMigrationsError(
            "'-- migrate:down' comes before '-- migrate:up'",
            set_name=set_name,
            file=filename,
            line=down_line,
        )
    for number, line_text in enumerate(text[: up_marker.start()].splitlines(), start=1):
        stripped = line_text.strip()
        if stripped and not stripped.startswith("--"):
            raise InvalidMigrationsError(
                "SQL before '-- migrate:up': everything must be inside a section",
                set_name=set_name,
                file=filename,
                line=number,
            )
    up_transaction = _parse_options(up_marker["options"], set_name, filename, up_line)
    down_transaction = _parse_options(down_marker["options"], set_name, filename, down_line)
    up_sql = text[up_marker.end() : down_marker.start()]
    if not up_sql.strip():
        raise InvalidMigrationsError(
            "the '-- migrate:up' section is empty", set_name=set_name, file=filename, line=up_line
        )
    # Sections start right after their marker, so their first line is the marker's line.
    return (
        Section(filename, up_sql, up_line - 1, up_transaction),
        Section(filename, text[down_marker.end() :], down_line - 1, down_transaction),
    )
