"""Bundles: byte-identical archives, applied in place of PATH, and hostile archives refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

import whimbrel
from conftest import EXAMPLES, Database, run_cli
from whimbrel import bundles
from whimbrel.errors import ExitCode

INIT = "20231103205514_init.sql"
SECRETS = "20240704103403_create_module_secrets.sql"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(tree: Path, out: Path, *args: str) -> Path:
    result = run_cli("migrations", "bundle", str(tree), "-o", str(out), *args)
    assert result.returncode == 0, result.stderr
    assert sha(out.read_bytes()) in result.stdout
    return out


def test_same_files_give_the_same_bytes(tmp_path: Path) -> None:
    """Copies with other mtimes, permissions and creation order bundle byte for byte alike."""
    first = tmp_path / "a" / "migrations"
    shutil.copytree(EXAMPLES / "dracon", first)
    second = tmp_path / "b" / "migrations"
    # Created in reverse order, with other permissions and times, plus an ignored file.
    sources = sorted((EXAMPLES / "dracon").rglob("*.sql"), reverse=True)
    for index, source in enumerate(sources):
        target = second / source.relative_to(EXAMPLES / "dracon")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        os.chmod(target, 0o600 if index % 2 else 0o755)
        os.utime(target, (1_000_000 + index * 7919, 2_000_000_000 - index * 104729))
    (second / "enrichments" / "README.md").write_text("not a migration\n")
    one = build(first, tmp_path / "one.tar").read_bytes()
    two = build(second, tmp_path / "two.tar").read_bytes()
    assert one == two
    # Via the API too, and the file name does not matter.
    info = whimbrel.bundle(first, tmp_path / "three.tar")
    assert (tmp_path / "three.tar").read_bytes() == one and info.sha256 == sha(one)

    with tarfile.open(tmp_path / "one.tar") as tar:
        members = tar.getmembers()
    assert members[0].name == bundles.MANIFEST_NAME
    names = [m.name for m in members[1:]]
    assert names[0] == "enrichments/001_init.up.sql"
    assert names[1] == "enrichments/001_init.down.sql"
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    assert all(m.uname == "" and m.gname == "" and m.mode == 0o644 for m in members)
    assert {m.name.split("/")[0] for m in members[1:]} == {"enrichments", "experimental_component"}


def test_compressed_output_names_are_refused(tmp_path: Path) -> None:
    result = run_cli(
        "migrations", "bundle", str(EXAMPLES / "ftl/db"), "-o", str(tmp_path / "b.tgz")
    )
    assert result.returncode == ExitCode.USAGE
    assert "uncompressed .tar" in result.stderr


def test_apply_inspect_revert_a_bundle(db: Database, tmp_path: Path) -> None:
    bundle = build(EXAMPLES / "ftl/db", tmp_path / "app.tar", "--engine", db.dialect)
    applied = run_cli("migrations", "apply", str(bundle), "--url", db.url)
    assert applied.returncode == 0, applied.stderr
    assert "Applied 2 migrations in 1 set" in applied.stdout
    assert {"requests", "module_secrets"} <= db.tables()
    inspected = run_cli("migrations", "inspect", str(bundle), "--url", db.url, "-o", "json")
    assert inspected.returncode == 0, inspected.stderr
    assert [s["name"] for s in json.loads(inspected.stdout)["sets"]] == ["testdb"]
    reverted = run_cli("migrations", "revert", str(bundle), "--url", db.url)
    assert reverted.returncode == 0, reverted.stderr
    assert "module_secrets" not in db.tables()


def test_provision_a_bundle_with_its_reviewed_manifest(db: Database, tmp_path: Path) -> None:
    """FTL's flow: the schema carries the manifest, the deployment carries the bundle."""
    tree = tmp_path / "db"
    shutil.copytree(EXAMPLES / "ftl/db", tree)
    manifest = tmp_path / "schema.manifest"
    manifest.write_text(run_cli("migrations", "manifest", str(tree), "--engine", db.dialect).stdout)
    bundle = build(tree, tmp_path / "app.tar", "--engine", db.dialect)
    result = run_cli(
        "migrations", "provision", str(bundle), "--url", db.url, "--manifest", str(manifest),
        "-o", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [m["source"] for m in doc["manifests"]] == [
        f"{bundle}:{bundles.MANIFEST_NAME}",
        str(manifest),
    ]
    assert doc["manifests"][1]["sha256"] == sha(manifest.read_bytes())
    assert len(doc["migrations"]) == 2 and doc["error"] is None

    # A bundle built from other files than the reviewed manifest is refused.
    (tree / "testdb" / INIT).write_text("-- migrate:up\nDROP TABLE requests;\n-- migrate:down\n")
    other = build(tree, tmp_path / "other.tar", "--engine", db.dialect)
    refused = run_cli(
        "migrations", "provision", str(other), "--url", db.url, "--manifest", str(manifest),
        "-o", "json",
    )  # fmt: skip
    assert refused.returncode == ExitCode.MANIFEST_MISMATCH
    doc = json.loads(refused.stdout)
    assert doc["error"]["exit_code"] == ExitCode.MANIFEST_MISMATCH
    assert f"{INIT} was altered" in doc["error"]["message"]
    assert doc["migrations"] == []
    assert "requests" in db.tables()


def test_a_gzipped_bundle_is_read(sqlite_db: Database, tmp_path: Path) -> None:
    bundle = build(EXAMPLES / "ftl/db", tmp_path / "app.tar")
    zipped = tmp_path / "app.tar.gz"
    zipped.write_bytes(gzip.compress(bundle.read_bytes()))
    result = run_cli("migrations", "apply", str(zipped), "--url", sqlite_db.url)
    assert result.returncode == 0, result.stderr


# -- hostile and broken bundles -----------------------------------------------------------
def _manifest_for(files: dict[str, bytes]) -> bytes:
    lines = ["database any testdb"]
    lines += [f"+migration {name.split('/')[-1]} {sha(data)}" for name, data in files.items()]
    return ("\n".join(lines) + "\n").encode()


MIGRATION = b"-- migrate:up\nCREATE TABLE t (id int);\n-- migrate:down\nDROP TABLE t;\n"


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


GOOD = {"testdb/001_t.sql": MIGRATION}
MANIFEST = (bundles.MANIFEST_NAME, _manifest_for(GOOD))

NOT_SET_FILE = "is not <set>/<migration file>"
HOSTILE: dict[str, tuple[list[tarfile.TarInfo | tuple[str, bytes]], str]] = {
    "absolute path": ([MANIFEST, ("/tmp/001_t.sql", MIGRATION)], NOT_SET_FILE),
    "parent folder": ([MANIFEST, ("../001_t.sql", MIGRATION)], NOT_SET_FILE),
    "nested parent": ([MANIFEST, ("testdb/../../001_t.sql", MIGRATION)], NOT_SET_FILE),
    "deeper path": ([MANIFEST, ("testdb/sub/001_t.sql", MIGRATION)], NOT_SET_FILE),
    "symlink": (
        [MANIFEST, _special("testdb/001_t.sql", tarfile.SYMTYPE, "/etc/passwd")],
        "is a symbolic link, not a regular file",
    ),
    "hardlink": (
        [MANIFEST, _special("testdb/001_t.sql", tarfile.LNKTYPE, "whimbrel.manifest")],
        "is a hard link",
    ),
    "device": ([MANIFEST, _special("testdb/001_t.sql", tarfile.CHRTYPE)], "character device"),
    "fifo": ([MANIFEST, _special("testdb/001_t.sql", tarfile.FIFOTYPE)], "is a FIFO"),
    "folder": ([MANIFEST, _special("testdb", tarfile.DIRTYPE), *GOOD.items()], NOT_SET_FILE),
    "duplicate": ([MANIFEST, *GOOD.items(), *GOOD.items()], "appears twice"),
    "case-only duplicate": (
        [MANIFEST, *GOOD.items(), ("testdb/001_T.sql", MIGRATION)],
        "appears twice",
    ),
    "manifest not first": ([*GOOD.items(), MANIFEST], "the first member must be"),
    "no manifest": (list(GOOD.items()), "the first member must be"),
    "two manifests": ([MANIFEST, MANIFEST, *GOOD.items()], "appear once"),
    "not a migration name": ([MANIFEST, ("testdb/evil.sh", b"rm -rf /\n")], NOT_SET_FILE),
    "unsafe set name": ([MANIFEST, ("Test DB/001_t.sql", MIGRATION)], NOT_SET_FILE),
    "only a manifest": ([MANIFEST], "but not under"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bundles_are_refused(case: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    bundle = work / "evil.tar"
    members, expected = HOSTILE[case]
    bundle.write_bytes(_tar(members))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run_cli(
        "migrations", "apply", str(bundle), "--url", f"sqlite:///{work / 'x.db'}", cwd=work
    )
    code = ExitCode.MANIFEST_MISMATCH if case == "only a manifest" else ExitCode.INVALID_MANIFEST
    assert result.returncode == code, (case, result.stdout, result.stderr)
    assert expected in result.stderr
    if expected != "but not under":
        assert f"{bundle}: unsafe or invalid bundle" in result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/001_t.sql").exists()


def test_members_that_do_not_match_the_embedded_manifest(tmp_path: Path) -> None:
    cases = {
        "altered": [MANIFEST, ("testdb/001_t.sql", MIGRATION.replace(b"t (", b"u ("))],
        "extra": [MANIFEST, *GOOD.items(), ("testdb/002_u.sql", MIGRATION)],
        "missing": [(bundles.MANIFEST_NAME, _manifest_for({**GOOD, "testdb/002_u.sql": b"x"})),
                    *GOOD.items()],
    }  # fmt: skip
    for case, members in cases.items():
        bundle = tmp_path / f"{case}.tar"
        bundle.write_bytes(_tar(members))  # type: ignore[arg-type]
        result = run_cli("migrations", "apply", str(bundle), "--url", f"sqlite:///{tmp_path}/x.db")
        assert result.returncode == ExitCode.MANIFEST_MISMATCH, (case, result.stderr)
        assert f"embedded in {bundle}" in result.stderr
        assert not (tmp_path / "x.db").exists()


def test_truncated_and_corrupt_bundles(tmp_path: Path) -> None:
    good = _tar([MANIFEST, *GOOD.items()])
    # Cut inside the migration's data, inside the manifest's data, and garbage.
    for label, data, message in [
        ("cut in a member", good[: 512 * 3 + 10], "unexpected end of data"),
        ("cut in the manifest", good[: 512 + 20], "unexpected end of data"),
        ("garbage", b"this is not a tar archive at all" * 40, "not a tar archive"),
        ("bad gzip", gzip.compress(good)[:-30], "ended before the end-of-stream"),
    ]:
        bundle = tmp_path / "b.tar"
        bundle.write_bytes(data)
        result = run_cli("migrations", "apply", str(bundle), "--url", f"sqlite:///{tmp_path}/x.db")
        assert result.returncode == ExitCode.INVALID_MANIFEST, (label, result.stderr)
        assert message in result.stderr, label
        assert not (tmp_path / "x.db").exists()


def test_a_member_larger_than_the_limit_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundles, "MAX_FILE_BYTES", 10)
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(_tar([MANIFEST, *GOOD.items()]))
    with pytest.raises(whimbrel.InvalidManifestError, match="larger than 10 bytes"):
        whimbrel.verify_manifest(bundle, tmp_path / "unused")
    monkeypatch.setattr(bundles, "MAX_FILE_BYTES", 1 << 20)
    monkeypatch.setattr(bundles, "MAX_TOTAL_BYTES", len(MANIFEST[1]) + 10)
    with pytest.raises(whimbrel.InvalidManifestError, match="bytes in all"):
        whimbrel.verify_manifest(bundle, tmp_path / "unused")


def test_verify_a_bundle_without_a_database(tmp_path: Path) -> None:
    bundle = build(EXAMPLES / "ftl/db", tmp_path / "app.tar")
    result = run_cli("migrations", "verify", str(bundle))
    assert result.returncode == 0, result.stderr
    assert f"match {bundle}:{bundles.MANIFEST_NAME}" in result.stdout
    checks = whimbrel.verify_manifest(bundle)
    assert [c.source for c in checks] == [f"{bundle}:{bundles.MANIFEST_NAME}"]


def test_an_embedded_manifest_cannot_reference_another(tmp_path: Path) -> None:
    manifest = b"database any testdb\n+migration-reference " + b"e" * 64 + b"\n"
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(_tar([(bundles.MANIFEST_NAME, manifest), *GOOD.items()]))
    result = run_cli("migrations", "verify", str(bundle))
    assert result.returncode == ExitCode.INVALID_MANIFEST
    assert "a bundle's manifest is self-contained" in result.stderr


def test_the_bytes_are_pinned(tmp_path: Path) -> None:
    """The README's bundle of examples/ftl/db, to the byte: a format change must be deliberate."""
    info = whimbrel.bundle(EXAMPLES / "ftl/db", tmp_path / "testdb.tar", engine="postgres")
    readme = (EXAMPLES.parent / "README.md").read_text()
    assert f"sha256 {info.sha256}\n" in readme
    assert f"manifest sha256 {info.manifest_sha256}\n" in readme
    assert info.sha256 == "226c093b8db9656e0d2058aac03e0c89c4be78af015491762d7056c40c737753"


def test_a_migration_file_as_path_says_a_folder_is_wanted(tmp_path: Path) -> None:
    migration = tmp_path / "001_t.sql"
    migration.write_bytes(MIGRATION)
    result = run_cli("migrations", "apply", str(migration), "--url", f"sqlite:///{tmp_path}/x.db")
    assert result.returncode == ExitCode.INVALID_MANIFEST, result.stderr
    assert "a file PATH is read as a bundle: to run migration files, pass their folder" in (
        result.stderr
    )
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("compress", [False, True])
def test_oversized_tar_headers_are_refused_before_reading_them(
    compress: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pax header is read into memory by tarfile whatever its size: a (gzip) bomb in a
    header must hit the archive's size cap, not the machine's memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        manifest = tarfile.TarInfo(MANIFEST[0])
        manifest.size = len(MANIFEST[1])
        tar.addfile(manifest, io.BytesIO(MANIFEST[1]))
        ((name, data),) = GOOD.items()
        member = tarfile.TarInfo(name)
        member.size = len(data)
        member.pax_headers = {"comment": "x" * 1_000_000}
        tar.addfile(member, io.BytesIO(data))
    bundle = tmp_path / ("b.tar.gz" if compress else "b.tar")
    bundle.write_bytes(gzip.compress(buffer.getvalue()) if compress else buffer.getvalue())
    assert whimbrel.verify_manifest(bundle)  # within the real limits: fine
    monkeypatch.setattr(bundles, "MAX_TOTAL_BYTES", 10_000)
    monkeypatch.setattr(bundles, "MAX_MEMBERS", 5)
    with pytest.raises(whimbrel.InvalidManifestError, match="bytes in all"):
        whimbrel.verify_manifest(bundle)


def test_inspect_of_a_bundle_names_the_bundle_not_its_temporary_folder(
    sqlite_db: Database, tmp_path: Path
) -> None:
    bundle = build(EXAMPLES / "ftl/db", tmp_path / "app.tar", "--engine", "sqlite")
    assert run_cli("migrations", "apply", str(bundle), "--url", sqlite_db.url).returncode == 0
    inspected = run_cli("migrations", "inspect", str(bundle), "--url", sqlite_db.url, "-o", "json")
    assert inspected.returncode == 0, inspected.stderr
    (state,) = json.loads(inspected.stdout)["sets"]
    assert state["path"] == f"{bundle}:testdb"
