"""Discovery: turn a folder of files into migration sets.

PATH is either one set (a folder holding migration files, named after the folder) or a
folder of sets (each sub-folder holding migration files is a set). Every file that looks
like a migration must follow the rules, or discovery fails before anything runs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from whimbrel._fast import builder, paused_gc
from whimbrel.errors import InvalidMigrationsError

Format = Literal["golang-migrate", "dbmate"]

MAX_IDENTIFIER_LENGTH = 63  # PostgreSQL's limit; MySQL allows 64
MAX_VERSION = 2**63 - 1  # stored as a signed 64-bit integer
SAFE_SET_NAME = re.compile(r"[a-z_][a-z0-9_]*")

_GOLANG_NAME = re.compile(r"(?P<version>[0-9]+)_(?P<name>.+)\.(?P<direction>up|down)\.sql")
_DBMATE_NAME = re.compile(r"(?P<version>[0-9]+)(?:_(?P<name>.+))?\.sql")


@functools.cache
def _markers() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """dbmate's -- migrate:up and -- migrate:down, and whimbrel's -- whimbrel: directive;
    compiled when a file's sections are first parsed, which most runs never do."""
    return (
        re.compile(r"^--[ \t]*migrate:up(?=[ \t\r]|$)(?P<options>[^\n]*)$", re.MULTILINE),
        re.compile(r"^--[ \t]*migrate:down(?=[ \t\r]|$)(?P<options>[^\n]*)$", re.MULTILINE),
        re.compile(r"^--[ \t]*whimbrel:(?P<options>[^\n]*)$", re.MULTILINE),
    )


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
    """One migration: its up file (and down file), parsed from its name, and its hash."""

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
    # (10,000 applied files cost a hash each). Holds the text until then, then the sections.
    _parsed: str | tuple[Section, Section | None] = field(default="", repr=False, compare=False)

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
        if isinstance(parsed, str):
            if self.format == "dbmate":
                parsed = _dbmate_sections(self.set_name, self.file, parsed)
            else:
                parsed = _golang_sections(self, parsed)
            object.__setattr__(self, "_parsed", parsed)  # frozen, but this is a cache
        return parsed


# Migration(version, name, file, folder, format, sha256, set_name, down_file, _parsed)
_new_migration = builder(Migration)


@dataclass(frozen=True, slots=True)
class MigrationSet:
    """A folder of migrations, in version order, with its own tracking table."""

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


def discover(
    path: str | os.PathLike[str],
    *,
    lazy: bool = False,
    on_found: Callable[[list[str]], None] | None = None,
) -> list[MigrationSet]:
    """Find and read every migration set under `path`, in name order.

    Every file is read and hashed, and its name checked. With `lazy`, the sections of each
    file (dbmate markers, options, the down file) are parsed when first used, which the
    engine does for every migration it will run before it runs any; otherwise here.
    `on_found` is told the sets' names once the folders are listed, before any file is
    read (so that the database can be read meanwhile).
    """
    with paused_gc():
        sets = _discover(path, on_found)
    if not lazy:
        for migration_set in sets:
            for migration in migration_set.migrations:
                migration.down  # noqa: B018 - parses both sections
    return sets


def _discover(
    path: str | os.PathLike[str], on_found: Callable[[list[str]], None] | None
) -> list[MigrationSet]:
    root = Path(path)
    if not root.exists():
        raise InvalidMigrationsError(f"migrations path {root} does not exist")
    if not root.is_dir():
        raise InvalidMigrationsError(f"migrations path {root} is not a folder")
    folder = os.fspath(root)
    own_files, subfolders, ignored_sql = _scan(folder)
    scans = {d: _scan(d) for d in subfolders}  # each folder is listed once
    set_folders = [d for d in subfolders if scans[d][0]]
    if own_files and set_folders:
        raise InvalidMigrationsError(
            f"{root} holds both migration files and set folders "
            f"({', '.join(map(os.path.basename, set_folders))}): keep one set per folder"
        )
    if own_files:
        name = os.path.basename(_as_spelled(folder))
        if on_found is not None:
            on_found([name])
        return [_load_set(name, root, own_files)]
    if not set_folders:
        hint = ""
        deeper = [
            os.path.basename(d) for d in subfolders if any(_scan(sub)[0] for sub in scans[d][1])
        ]
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
    set_folders.sort(key=os.path.basename)
    if on_found is not None:
        on_found([os.path.basename(d) for d in set_folders])
    return [_load_set(os.path.basename(d), Path(d), scans[d][0]) for d in set_folders]


def _as_spelled(folder: str) -> str:
    """`folder` made absolute without resolving symlinks, from the shell's $PWD where it
    names the working folder: a set folder reached through a link is named after the link,
    whether PATH is `link` or `.` inside it, as sub-folders of a folder of sets are."""
    cwd = os.getcwd()  # symlinks resolved
    logical = os.environ.get("PWD")
    if logical and logical != cwd and os.path.isabs(logical):
        try:
            if os.path.samefile(logical, cwd):
                cwd = logical
        except OSError:
            pass
    return os.path.normpath(os.path.join(cwd, folder))


class FoundFile(NamedTuple):
    """A file found in a folder: plain strings, as pathlib costs microseconds a file."""

    name: str
    path: str


def scan_folder(folder: Path) -> tuple[list[FoundFile], list[Path], list[str]]:
    """Return (migration-looking files, sub-folders, other .sql files) of `folder`."""
    names, folders, other_sql = _scan(os.fspath(folder))
    join = os.path.join
    files = [FoundFile(name, join(folder, name)) for name in names]
    return files, [Path(d) for d in folders], other_sql


def _scan(folder: str) -> tuple[list[str], list[str], list[str]]:
    """Return (names of migration-looking files, paths of sub-folders, names of other .sql
    files) of `folder`: names only, the least a file costs (10,000 files per run)."""
    files: list[str] = []
    folders: list[str] = []
    other_sql: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise InvalidMigrationsError(f"cannot read folder {folder}: {exc.strerror}") from exc
    for entry in entries:
        name = entry.name
        if name[0] == ".":
            continue
        try:
            if entry.is_symlink():
                os.stat(entry.path)  # a dangling or looping link is an error, not a skip
            is_file = entry.is_file()
            is_dir = not is_file and entry.is_dir()
        except OSError as exc:
            raise InvalidMigrationsError(
                f"cannot read {entry.path}: {exc.strerror or exc}"
            ) from exc
        lower = name.lower()
        # looks_like_migration(), inline: it runs once per file.
        sql = lower.endswith(".sql")
        if sql and (name[0].isdigit() or lower.endswith(_GOLANG_SUFFIXES)):
            if not is_file:
                raise InvalidMigrationsError(
                    f"{entry.path} is named like a migration but is not a regular file"
                )
            files.append(name)
        elif is_dir:
            folders.append(entry.path)
        elif is_file and sql:
            other_sql.append(name)
    return files, folders, other_sql


_GOLANG_SUFFIXES = (".up.sql", ".down.sql")
_MALFORMED = (
    "malformed migration file name: expected VERSION_NAME.up.sql / VERSION_NAME.down.sql "
    "(golang-migrate) or VERSION_NAME.sql with -- migrate:up (dbmate), where VERSION is digits"
)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
# Files are opened relative to their folder where the OS allows it: the kernel then walks
# one name per file, not the whole path.
_OPEN_IN_FOLDER = os.open in os.supports_dir_fd


def _load_set(name: str, folder: Path, filenames: Iterable[str]) -> MigrationSet:
    """Check the names of a set's files, then read and hash each, in version order.

    Both loops run once per file (10,000 per run): plain loops, without a helper call or a
    path object per file.
    """
    validate_set_name(name, folder)
    # version -> (migration name, file name, format) of up files; (name, file name) of downs
    ups: dict[int, tuple[str, str, Format]] = {}
    downs: dict[int, tuple[str, str]] = {}
    golang_name = _GOLANG_NAME.fullmatch
    dbmate_name = _DBMATE_NAME.fullmatch
    for filename in sorted(filenames):
        # golang-migrate's names end in .up.sql/.down.sql (as written); a dbmate name must
        # not end in them in any case, so the suffix says which of the two it can be.
        if filename.lower().endswith(_GOLANG_SUFFIXES):
            match = golang_name(filename)
            if match is None:
                raise InvalidMigrationsError(_MALFORMED, set_name=name, file=filename)
            version = _parse_version(match["version"], name, filename)
            if match["direction"] == "up":
                other = ups.get(version)
                if other is not None:
                    raise InvalidMigrationsError(
                        f"duplicate version {version}: {other[1]} and {filename}", set_name=name
                    )
                ups[version] = (match["name"], filename, "golang-migrate")
            else:
                if version in downs:
                    raise InvalidMigrationsError(
                        f"duplicate version {version}: {downs[version][1]} and {filename}",
                        set_name=name,
                    )
                downs[version] = (match["name"], filename)
            continue
        match = dbmate_name(filename)
        if match is None:
            raise InvalidMigrationsError(_MALFORMED, set_name=name, file=filename)
        digits, migration_name = match.groups()
        version = int(digits)
        if version > MAX_VERSION:
            _parse_version(digits, name, filename)  # raises
        other = ups.get(version)
        if other is not None:
            raise InvalidMigrationsError(
                f"duplicate version {version}: {other[1]} and {filename}", set_name=name
            )
        ups[version] = (migration_name or "", filename, "dbmate")

    for version, (down_name, down_file) in downs.items():
        up = ups.get(version)
        if up is None:
            raise InvalidMigrationsError(
                f"down migration without an up migration (expected "
                f"{down_file.removesuffix('.down.sql')}.up.sql)",
                set_name=name,
                file=down_file,
            )
        if up[2] == "dbmate":
            raise InvalidMigrationsError(
                f"duplicate version {version}: {up[1]} and {down_file}", set_name=name
            )
        if up[0] != down_name:
            raise InvalidMigrationsError(
                f"up and down files of version {version} have different names: "
                f"{up[1]} and {down_file}",
                set_name=name,
            )

    migrations = []
    new_migration = _new_migration
    sha256 = hashlib.sha256
    os_open, os_read, os_close = os.open, os.read, os.close
    folder_fd = _open_folder(folder)
    try:
        for version in sorted(ups):
            migration_name, filename, fmt = ups[version]
            # _read_bytes and read_text, inline.
            try:
                if folder_fd is None:
                    fd = os_open(os.path.join(folder, filename), _READ_FLAGS)
                else:
                    fd = os_open(filename, _READ_FLAGS, dir_fd=folder_fd)
                try:
                    data = os_read(fd, _SMALL)
                    if len(data) >= _SMALL:
                        data = _read_rest(fd, data)
                finally:
                    os_close(fd)
            except OSError as exc:
                raise InvalidMigrationsError(
                    f"cannot read: {exc.strerror or exc}", set_name=name, file=filename
                ) from exc
            digest = sha256(data).hexdigest()
            try:
                text = data.decode()  # UTF-8, without naming it: a little faster
            except UnicodeDecodeError:
                text = _decode(data, name, filename)  # raises, naming the line
            del data
            if text[:1] == "\ufeff":
                text = text[1:]
            if "\x00" in text:
                _check_no_nul(text, name, filename)  # raises
            if not text or text.isspace():
                raise InvalidMigrationsError("file is empty", set_name=name, file=filename)
            down = downs.get(version)
            migrations.append(
                new_migration(
                    version,
                    migration_name,
                    filename,
                    folder,
                    fmt,
                    digest,
                    name,
                    down and down[1],
                    text,
                )
            )
    finally:
        if folder_fd is not None:
            os_close(folder_fd)
    return MigrationSet(name=name, path=folder, migrations=tuple(migrations))


def _open_folder(folder: Path) -> int | None:
    """A descriptor of `folder` to open its files relative to, or None to use paths."""
    if not _OPEN_IN_FOLDER:
        return None
    try:
        return os.open(folder, _DIR_FLAGS)
    except OSError:
        return None  # each file then fails (or not) on its own, as it would by path


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
    a FileIO and a buffer per file, and one read for a small file."""
    fd = os.open(path, _READ_FLAGS)
    try:
        data = os.read(fd, _SMALL)
        return data if len(data) < _SMALL else _read_rest(fd, data)
    finally:
        os.close(fd)


def _read_rest(fd: int, start: bytes) -> bytes:
    """The whole file, of which `start` is the first read: a big file is read again in one
    piece of its size, not gathered in chunks and joined."""
    size = os.fstat(fd).st_size
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, size + 1)
    while more := os.read(fd, _SMALL):  # it grew meanwhile
        data += more
    return data


def read_text(path: str | os.PathLike[str], set_name: str) -> tuple[str, str]:
    """Return (sha256 hex of the exact bytes, text) of a migration file."""
    filename = os.path.basename(path)
    try:
        data = _read_bytes(path)
    except OSError as exc:
        raise InvalidMigrationsError(
            f"cannot read: {exc.strerror or exc}", set_name=set_name, file=filename
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = _decode(data, set_name, filename)
    del data
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        _check_no_nul(text, set_name, filename)
    return digest, text


def _decode(data: bytes, set_name: str, filename: str) -> str:
    """`data` as UTF-8, or an error naming the line of the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidMigrationsError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            set_name=set_name,
            file=filename,
            line=line,
        ) from None


def _check_no_nul(text: str, set_name: str, filename: str) -> None:
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise InvalidMigrationsError(
            "contains a NUL character; is it a binary file?",
            set_name=set_name,
            file=filename,
            line=line,
        )


def _parse_options(
    raw: str, set_name: str, filename: str, line: int, *, notes: bool = False
) -> bool:
    """Parse `key:value` options after a marker; return the `transaction` flag. With
    `notes` (dbmate's markers), words without a colon are a note, which dbmate ignores
    too, unless they look like a misspelt option (`transaction=false`)."""
    transaction = True
    for item in raw.split():
        key, sep, value = item.partition(":")
        if (
            not sep
            and notes
            and "=" not in item
            and not item.lower().startswith(tuple(_KNOWN_OPTIONS))
        ):
            continue
        allowed = _KNOWN_OPTIONS.get(key)
        if allowed is None or value not in allowed:
            raise InvalidMigrationsError(
                f"unknown option {item!r}: the only option is transaction:false",
                set_name=set_name,
                file=filename,
                line=line,
            )
        transaction = value == "true"
    return transaction


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
    match = _markers()[2].search(text)
    if match is None:
        return True
    line = text.count("\n", 0, match.start()) + 1
    return _parse_options(match["options"], set_name, filename, line)


def _dbmate_sections(set_name: str, filename: str, text: str) -> tuple[Section, Section]:
    up_regex, down_regex, _ = _markers()
    ups = list(up_regex.finditer(text))
    downs = list(down_regex.finditer(text))
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
    up_transaction = _parse_options(up_marker["options"], set_name, filename, up_line, notes=True)
    down_transaction = _parse_options(
        down_marker["options"], set_name, filename, down_line, notes=True
    )
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
