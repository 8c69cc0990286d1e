"""Bundles: one deterministic archive of migration sets and their manifest.

A bundle is an uncompressed POSIX (pax) tar archive:

    whimbrel.manifest          the manifest of everything below (always the first member)
    <set>/<migration file>     every migration file, in manifest order

Every member is a regular file with mtime 0, mode 0644, uid/gid 0 and no owner names, so
the same files give the same bytes on any machine, whatever their mtimes, permissions,
owners or creation order. It is not compressed because deflate output differs between
zlib builds (zlib, zlib-ng), which would break "same input, same bytes"; compress it for
transport if you like, and whimbrel reads gzip/bz2/xz-compressed bundles too.

Reading a bundle is strict, as it may come from anywhere: only the layout above is
accepted (no absolute paths, `..`, links, devices, folders or duplicate members), sizes are
capped and checked after extraction, extraction uses tarfile's `data` filter on top of
these checks, and the extracted files must match the embedded manifest before anything
reads them as migrations.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import tarfile
import tempfile
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whimbrel import manifests
from whimbrel.discovery import SAFE_SET_NAME, looks_like_migration, scan_folder
from whimbrel.errors import InvalidManifestError, UsageError

__all__ = ["MANIFEST_NAME", "BundleInfo", "extracted", "is_bundle", "write"]

MANIFEST_NAME = "whimbrel.manifest"
MAX_MEMBERS = 10_000
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 512 * 1024 * 1024
_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.DIRTYPE: "a folder",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}
_COMPRESSED_SUFFIXES = (".gz", ".tgz", ".bz2", ".xz", ".zst", ".zip")


@dataclass(frozen=True)
class BundleInfo:
    path: str
    sha256: str  # of the bundle's bytes
    size: int
    manifest_sha256: str  # of the embedded manifest
    sets: list[str]
    files: int


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether PATH names a file (a bundle) rather than a folder of migrations."""
    return os.path.isfile(path)


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info, io.BytesIO(data)


def write(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    engine: str = "any",
    sets: Sequence[str] | None = None,
) -> BundleInfo:
    """Write the bundle of the sets under `path` to `output` (atomically)."""
    out = Path(output)
    if out.name.lower().endswith(_COMPRESSED_SUFFIXES):
        raise UsageError(
            f"{out}: a bundle is an uncompressed .tar (compressors differ between machines, "
            "so compressed output would not be byte-identical); name it .tar"
        )
    manifest = manifests.build(path, engine, sets)
    text = manifest.text().encode()
    roots = _set_folders(path)
    buffer = io.BytesIO()
    count = 0
    # pax only where a name needs it (long or non-ASCII); no timestamps in pax headers.
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(*_member(MANIFEST_NAME, text))
        for block in manifest.blocks:
            for entry in block.entries:
                data = (roots[block.set_name] / entry.file).read_bytes()
                if hashlib.sha256(data).hexdigest() != entry.sha256:
                    raise UsageError(f"{entry.file} changed while the bundle was being written")
                tar.addfile(*_member(f"{block.set_name}/{entry.file}", data))
                count += 1
    data = buffer.getvalue()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    return BundleInfo(
        path=str(out),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        manifest_sha256=hashlib.sha256(text).hexdigest(),
        sets=[b.set_name for b in manifest.blocks],
        files=count,
    )


def _set_folders(path: str | os.PathLike[str]) -> dict[str, Path]:
    root = Path(path)
    names = manifests.scan_files(root)
    if scan_folder(root)[0]:  # PATH is the set itself
        return dict.fromkeys(names, root)
    return {name: root / name for name in names}


# -- reading ------------------------------------------------------------------------------
@contextlib.contextmanager
def extracted(
    bundle: str | os.PathLike[str], *, dialect: str | None = None
) -> Iterator[tuple[Path, manifests.Manifest, dict[str, list[tuple[str, str]]]]]:
    """Extract a bundle into a temporary folder, verify it; yield (folder, manifest, files).

    Raises InvalidManifestError (exit 11) for an unsafe or corrupt archive and
    ManifestMismatch (exit 10) when its files do not match its manifest.
    """
    source = os.fspath(bundle)
    with tempfile.TemporaryDirectory(prefix="whimbrel-bundle-") as tmp:
        root = Path(tmp) / "sets"
        root.mkdir()
        manifest = _extract(source, root)
        resolved = manifests.resolve(manifest, manifests.ManifestStore(None))
        files = manifests.verify(root, resolved, source=f"embedded in {source}", dialect=dialect)
        yield root, manifest, files


def _extract(source: str, root: Path) -> manifests.Manifest:
    def bad(message: str) -> InvalidManifestError:
        return InvalidManifestError(f"unsafe or invalid bundle: {message}", source=source)

    manifest: manifests.Manifest | None = None
    seen: set[str] = set()
    total = 0
    opened = False  # the first header parsed: a tar archive, whatever happens next
    try:
        with _open_capped(source) as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            opened = True
            index = 0
            while True:
                member = tar.next()
                if member is None:
                    break
                index += 1
                name = member.name
                if index > MAX_MEMBERS:
                    raise bad(f"more than {MAX_MEMBERS} members")
                _check_name(name, index, manifest is None, bad)
                if not member.isreg() or member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    kind = _KINDS.get(member.type, f"of tar type {member.type!r}")
                    raise bad(f"member {name!r} is {kind}, not a regular file")
                folded = unicodedata.normalize("NFC", name).casefold()
                if folded in seen:
                    raise bad(f"member {name!r} appears twice")
                seen.add(folded)
                if member.size > MAX_FILE_BYTES:
                    raise bad(f"member {name!r} is larger than {MAX_FILE_BYTES} bytes")
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise bad(f"more than {MAX_TOTAL_BYTES} bytes in all")
                if name == MANIFEST_NAME:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    data = handle.read()
                    if len(data) != member.size:
                        raise bad(f"member {name!r} is truncated")
                    manifest = manifests.parse(data, f"{source}:{MANIFEST_NAME}")
                    continue
                tar.extract(member, root, filter="data")
                written = (root / name).stat().st_size
                if written != member.size:
                    raise bad(f"member {name!r} is truncated ({written} of {member.size} bytes)")
    except _TooLarge:
        raise bad(f"more than {MAX_TOTAL_BYTES} bytes in all (counting tar headers)") from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise bad(str(exc)) from None
        if isinstance(exc, tarfile.ReadError) and not opened:
            raise bad(
                "not a tar archive (nor a gzip, bzip2 or xz compressed one); a file PATH is "
                "read as a bundle: to run migration files, pass their folder"
            ) from None
        raise bad(f"cannot read it as a tar archive: {str(exc).splitlines()[0]}") from None
    if manifest is None:
        raise bad(f"no {MANIFEST_NAME} member")
    return manifest


class _TooLarge(Exception):
    pass


class _Capped(io.RawIOBase):
    """A read-only view of a (decompressed) stream that refuses to go past `cap` bytes.

    tarfile reads a pax or GNU long-name header into memory whatever its size, before any
    member is seen: this bounds the whole archive, headers included, so a compressed bomb in
    a header costs at most `cap` bytes.
    """

    def __init__(self, inner: io.BufferedIOBase | io.RawIOBase | Any, cap: int) -> None:
        self._inner = inner
        self._cap = cap

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return int(self._inner.tell())

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = int(self._inner.seek(offset, whence))
        if target > self._cap:
            raise _TooLarge
        return target

    def read(self, size: int | None = -1) -> bytes:
        left = self._cap - self.tell()
        if size is None or size < 0 or size > left:
            size = left + 1  # one byte past the cap tells "too large" from "ends at the cap"
        data: bytes = self._inner.read(size)
        if len(data) > left:
            raise _TooLarge
        return data


@contextlib.contextmanager
def _open_capped(source: str) -> Iterator[_Capped]:
    """The bundle's tar stream, decompressed (gzip, bzip2, xz) if need be, capped in size."""
    cap = MAX_TOTAL_BYTES + (MAX_MEMBERS + 20) * 4 * tarfile.BLOCKSIZE
    with open(source, "rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        inner: Any = raw
        if magic.startswith(b"\x1f\x8b"):
            inner = gzip.GzipFile(fileobj=raw, mode="rb")
        elif magic.startswith(b"BZh"):
            inner = bz2.BZ2File(raw)
        elif magic.startswith(b"\xfd7zXZ\x00"):
            inner = lzma.LZMAFile(raw)  # noqa: SIM115 (closed below)
        with contextlib.closing(inner):
            yield _Capped(inner, cap)


def _check_name(
    name: str, index: int, first: bool, bad: Callable[[str], InvalidManifestError]
) -> None:
    if name == MANIFEST_NAME:
        if not first or index != 1:
            raise bad(f"{MANIFEST_NAME} must be the first member, and appear once")
        return
    if index == 1:
        raise bad(f"the first member must be {MANIFEST_NAME}, not {name!r}")
    parts = name.split("/")
    if (
        name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or len(parts) != 2
        or not SAFE_SET_NAME.fullmatch(parts[0])
        or parts[1] in ("", ".", "..")
        or not looks_like_migration(parts[1])
    ):
        raise bad(f"member {name!r} is not <set>/<migration file>")
