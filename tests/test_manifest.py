"""Manifests: `migrations manifest`, and --manifest verification before anything runs."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import whimbrel
from conftest import EXAMPLES, Database, run_cli, write_tree
from whimbrel import manifests
from whimbrel.errors import ExitCode, InvalidManifestError, ManifestMismatch

INIT = "20231103205514_init.sql"
SECRETS = "20240704103403_create_module_secrets.sql"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ftl_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "db"
    shutil.copytree(EXAMPLES / "ftl/db", tree)
    return tree


def manifest_of(tree: Path, *args: str) -> str:
    result = run_cli("migrations", "manifest", str(tree), *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def save(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_manifest_is_ftl_schema_metadata_with_sha256sum(tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    testdb = tree / "testdb"
    expected = (
        "database mysql testdb\n"
        f"+migration {INIT} {sha(testdb / INIT)}\n"
        f"+migration {SECRETS} {sha(testdb / SECRETS)}\n"
    )
    assert manifest_of(tree, "--engine", "mysql") == expected
    # The set folder itself gives the same; the engine may come from a URL (no password shown).
    assert manifest_of(testdb, "--url", "mariadb://u:pw-1@h/testdb") == expected
    assert manifest_of(tree).startswith("database any testdb\n")
    doc = json.loads(manifest_of(tree, "--engine", "postgres", "-o", "json"))
    assert doc["sets"] == [
        {
            "engine": "postgres",
            "name": "testdb",
            "reference": None,
            "migrations": [
                {"file": INIT, "sha256": sha(testdb / INIT)},
                {"file": SECRETS, "sha256": sha(testdb / SECRETS)},
            ],
        }
    ]
    text = manifest_of(tree, "--engine", "postgres")
    assert doc["manifest_sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_manifest_lists_up_and_down_files_of_every_set_in_run_order(tmp_path: Path) -> None:
    tree = tmp_path / "m"
    shutil.copytree(EXAMPLES / "dracon", tree)
    lines = manifest_of(tree, "--engine", "sqlite").splitlines()
    assert lines[0] == "database sqlite enrichments"
    files = [line.split()[1] for line in lines if line.startswith("+migration ")]
    enrichments = sorted(p.name for p in (tree / "enrichments").glob("*.sql"))
    assert files[: len(enrichments)] == sorted(
        enrichments, key=lambda n: (int(n.split("_")[0]), n.endswith(".down.sql"))
    )
    assert "database sqlite experimental_component" in lines
    assert files[len(enrichments)] == "001_init.up.sql"


def test_manifest_of_invalid_files_fails_like_discovery(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "s", {"app/001_x.sql": "SELECT 1;\n"})
    result = run_cli("migrations", "manifest", str(tree))
    assert result.returncode == ExitCode.INVALID_MIGRATIONS
    assert "migrate:up" in result.stderr


def test_apply_with_a_matching_manifest(db: Database, tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    manifest = save(tmp_path, "m.txt", manifest_of(tree, "--engine", db.dialect))
    applied = run_cli(
        "migrations", "apply", str(tree), "--url", db.url, "--manifest", str(manifest)
    )
    assert applied.returncode == 0, applied.stderr
    assert {"requests", "module_secrets"} <= db.tables()
    inspected = run_cli(
        "migrations", "inspect", str(tree), "--url", db.url, "--manifest", str(manifest)
    )
    assert inspected.returncode == 0, inspected.stderr


def test_tampered_file_is_refused_before_anything_runs(db: Database, tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    manifest = save(tmp_path, "m.txt", manifest_of(tree))
    original = sha(tree / "testdb" / SECRETS)
    with (tree / "testdb" / SECRETS).open("a") as f:
        f.write("-- an innocent-looking comment\n")
    result = run_cli("migrations", "apply", str(tree), "--url", db.url, "--manifest", str(manifest))
    assert result.returncode == ExitCode.MANIFEST_MISMATCH, result.stderr
    assert f"set 'testdb': {SECRETS} was altered" in result.stderr
    assert original in result.stderr and sha(tree / "testdb" / SECRETS) in result.stderr
    assert f"{manifest}, line 3" in result.stderr
    assert "nothing was run" in result.stderr
    if db.dialect == "sqlite":
        assert not Path(db.name).exists()  # not even the database file was created
    else:
        assert db.tables() == set()


def test_added_and_missing_files_are_listed_together(tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    manifest = save(tmp_path, "m.txt", manifest_of(tree))
    (tree / "testdb" / INIT).unlink()
    extra = tree / "testdb" / "20250101000000_extra.sql"
    extra.write_text("-- migrate:up\nCREATE TABLE extra (id int);\n-- migrate:down\n")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = run_cli("migrations", "apply", str(tree), "--url", url, "--manifest", str(manifest))
    assert result.returncode == ExitCode.MANIFEST_MISMATCH
    assert f"{extra.name} is not in the manifest (added; file sha256 {sha(extra)})" in (
        result.stderr
    )
    assert f"{INIT} is in the manifest" in result.stderr and "but missing" in result.stderr


def test_verification_comes_before_connecting(tmp_path: Path) -> None:
    """A mismatch is reported at once, even when the database is unreachable."""
    tree = ftl_tree(tmp_path)
    manifest = save(tmp_path, "m.txt", manifest_of(tree))
    (tree / "testdb" / INIT).write_text("-- migrate:up\nDROP TABLE users;\n-- migrate:down\n")
    started = time.monotonic()
    result = run_cli(
        "migrations", "apply", str(tree), "--url", "postgresql://u:p@127.0.0.1:1/x",
        "--manifest", str(manifest), "--wait", "--wait-timeout", "30",
    )  # fmt: skip
    assert result.returncode == ExitCode.MANIFEST_MISMATCH, result.stderr
    assert time.monotonic() - started < 15


def test_revert_and_inspect_verify_too(sqlite_db: Database, tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    manifest = save(tmp_path, "m.txt", manifest_of(tree))
    assert run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url).returncode == 0
    (tree / "testdb" / SECRETS).write_text(
        "-- migrate:up\nSELECT 1;\n-- migrate:down\nDROP TABLE requests;\n"
    )
    for command in ("revert", "inspect"):
        result = run_cli(
            "migrations", command, str(tree), "--url", sqlite_db.url, "--manifest", str(manifest)
        )
        assert result.returncode == ExitCode.MANIFEST_MISMATCH, (command, result.stderr)
    assert {"requests", "module_secrets"} <= sqlite_db.tables()


def test_manifest_for_another_engine_is_refused(sqlite_db: Database, tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    manifest = save(tmp_path, "m.txt", manifest_of(tree, "--engine", "mysql"))
    result = run_cli(
        "migrations", "apply", str(tree), "--url", sqlite_db.url, "--manifest", str(manifest)
    )
    assert result.returncode == ExitCode.MANIFEST_MISMATCH
    assert "listed for engine mysql, but the database is sqlite" in result.stderr


def test_sets_not_in_the_manifest(sqlite_db: Database, tmp_path: Path) -> None:
    tree = tmp_path / "m"
    shutil.copytree(EXAMPLES / "dracon", tree)
    only_one = save(tmp_path, "m.txt", manifest_of(tree, "--set", "enrichments"))
    result = run_cli(
        "migrations", "apply", str(tree), "--url", sqlite_db.url, "--manifest", str(only_one)
    )
    assert result.returncode == ExitCode.MANIFEST_MISMATCH
    assert "set 'experimental_component' is not in the manifest" in result.stderr
    # Selecting the set the manifest covers is fine.
    result = run_cli(
        "migrations", "apply", str(tree), "--url", sqlite_db.url, "--manifest", str(only_one),
        "--set", "enrichments",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("+migration 001_a.sql " + "a" * 64 + "\n", 1, "before any 'database"),
        ("database mysql testdb\n+migration 001_a.sql abc\n", 2, "64 hex digits"),
        ("database mysql testdb\n\n+migraton 001_a.sql " + "a" * 64 + "\n", 3, "unexpected"),
        ("database oracle testdb\n", 1, "unknown engine"),
        ("database mysql Test-DB\n", 1, "not a valid set name"),
        ("database mysql t\n+migration ../x.sql " + "a" * 64 + "\n", 2, "not a migration file"),
        (
            "database mysql t\n+migration 001_a.sql " + "a" * 64 + "\n"
            "+migration 001_a.sql " + "b" * 64 + "\n",
            3,
            "listed twice (also on line 2)",
        ),
        (
            "database mysql t\n+migration 001_a.sql " + "a" * 64 + "\n"
            "+migration-reference " + "c" * 64 + "\n",
            3,
            "must come before",
        ),
        ("database mysql t\ndatabase mysql t\n", 2, "a second 'database' block"),
    ],
)
def test_malformed_manifest_names_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    tree = ftl_tree(tmp_path)
    manifest = save(tmp_path, "bad.manifest", text)
    result = run_cli(
        "migrations", "apply", str(tree), "--url", f"sqlite:///{tmp_path / 'x.db'}",
        "--manifest", str(manifest),
    )  # fmt: skip
    assert result.returncode == ExitCode.INVALID_MANIFEST, result.stderr
    assert f"{manifest}, line {line}: " in result.stderr
    assert message in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_empty_or_binary_manifest(tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    for name, data in (("empty", b""), ("binary", b"database mysql t\n\xff\xfe\n")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InvalidManifestError, match=name):
            whimbrel.verify_manifest(tree, path)
    with pytest.raises(InvalidManifestError, match="cannot read the manifest"):
        whimbrel.verify_manifest(tree, tmp_path / "nope")


# -- references ---------------------------------------------------------------------------
def test_references_resolve_through_a_store(db: Database, tmp_path: Path) -> None:
    """v1 lists two files; v2 references v1 and adds one; v3 references v2 and adds one."""
    tree = ftl_tree(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    v1 = save(store, "v1.manifest", manifest_of(tree, "--engine", db.dialect))
    write_tree(
        tree / "testdb",
        {
            "20250101000000_audit.sql": """
                -- migrate:up
                CREATE TABLE audit (id INTEGER PRIMARY KEY);
                -- migrate:down
                DROP TABLE audit;
            """
        },
    )
    v2_text = manifest_of(tree, "--engine", db.dialect, "--reference", str(v1))
    assert v2_text.splitlines() == [
        f"database {db.dialect} testdb",
        f"+migration-reference {sha(v1)}",
        f"+migration 20250101000000_audit.sql {sha(tree / 'testdb/20250101000000_audit.sql')}",
    ]
    v2 = save(store, "some-name.txt", v2_text)
    write_tree(
        tree / "testdb",
        {
            "20250202000000_more.sql": """
                -- migrate:up
                CREATE TABLE more_things (id INTEGER PRIMARY KEY);
                -- migrate:down
                DROP TABLE more_things;
            """
        },
    )
    v3 = save(tmp_path, "v3.manifest", manifest_of(tree, "--reference", str(v2),
                                                   "--engine", db.dialect))  # fmt: skip
    assert len(v3.read_text().splitlines()) == 3

    # Without the store (the default is v3's own folder) the reference is unknown.
    unknown = run_cli("migrations", "apply", str(tree), "--url", db.url, "--manifest", str(v3))
    assert unknown.returncode == ExitCode.INVALID_MANIFEST
    assert f"+migration-reference {sha(v2)}: no manifest with this SHA-256" in unknown.stderr
    assert f"{v3}, line 2" in unknown.stderr

    applied = run_cli(
        "migrations", "apply", str(tree), "--url", db.url, "--manifest", str(v3),
        "--manifest-store", str(store),
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert {"requests", "module_secrets", "audit", "more_things"} <= db.tables()

    # A file listed two references back is still checked, and named with its manifest.
    with (tree / "testdb" / INIT).open("a") as f:
        f.write("-- changed\n")
    result = run_cli(
        "migrations", "inspect", str(tree), "--url", db.url, "--manifest", str(v3),
        "--manifest-store", str(store),
    )  # fmt: skip
    assert result.returncode == ExitCode.MANIFEST_MISMATCH
    assert f"{INIT} was altered" in result.stderr and f"{v1}, line 2" in result.stderr


def test_reference_problems(tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    other = save(tmp_path, "other.manifest", "database any othername\n")
    ref = save(
        tmp_path, "ref.manifest", f"database any testdb\n+migration-reference {sha(other)}\n"
    )
    with pytest.raises(InvalidManifestError, match="no 'database' block for the set 'testdb'"):
        whimbrel.verify_manifest(tree, ref)
    mysql = save(tmp_path, "mysql.manifest", manifest_of(tree, "--engine", "mysql"))
    pg = save(
        tmp_path, "pg.manifest", f"database postgres testdb\n+migration-reference {sha(mysql)}\n"
    )
    with pytest.raises(InvalidManifestError, match="for engine mysql, this one for postgres"):
        whimbrel.verify_manifest(tree, pg)
    # A reference that repeats a file of the manifest it names.
    v1 = save(tmp_path, "v1.manifest", manifest_of(tree))
    dup = save(
        tmp_path,
        "dup.manifest",
        f"database any testdb\n+migration-reference {sha(v1)}\n"
        f"+migration {INIT} {sha(tree / 'testdb' / INIT)}\n",
    )
    with pytest.raises(InvalidManifestError, match=f"{INIT} is listed twice"):
        whimbrel.verify_manifest(tree, dup)


def test_reference_cycle_is_detected() -> None:
    """Content hashes make a real cycle infeasible to build; a store that lies must not loop."""
    a_sha, b_sha = "a" * 64, "b" * 64
    a = manifests.parse(f"database any s\n+migration-reference {b_sha}\n".encode(), "a")
    b = manifests.parse(f"database any s\n+migration-reference {a_sha}\n".encode(), "b")
    a.sha256, b.sha256 = a_sha, b_sha

    class LyingStore:
        def get(self, sha256: str, *, wanted_by: str) -> manifests.Manifest:
            return {a_sha: a, b_sha: b}[sha256]

    with pytest.raises(InvalidManifestError, match="reference cycle") as info:
        manifests.resolve(a, LyingStore())
    assert info.value.exit_code == ExitCode.INVALID_MANIFEST


def test_a_changed_stored_manifest_no_longer_matches_its_reference(tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    v1 = save(tmp_path, "v1.manifest", manifest_of(tree))
    v2 = save(tmp_path, "v2.manifest", manifest_of(tree, "--reference", str(v1)))
    assert whimbrel.verify_manifest(tree, v2)[0].sha256 == sha(v2)
    v1.write_text(v1.read_text() + "# edited\n")
    with pytest.raises(InvalidManifestError, match="no manifest with this SHA-256"):
        whimbrel.verify_manifest(tree, v2)


def test_python_api(tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    built = whimbrel.manifest(tree, engine="mysql")
    assert [b.set_name for b in built.blocks] == ["testdb"]
    assert [e.file for e in built.blocks[0].entries] == [INIT, SECRETS]
    path = save(tmp_path, "m.txt", built.text())
    checks = whimbrel.verify_manifest(tree, path, url="mysql://root@127.0.0.1/testdb")
    assert checks[0].sets["testdb"][0] == (INIT, sha(tree / "testdb" / INIT))
    (tree / "testdb" / INIT).write_text("-- migrate:up\nSELECT 2;\n-- migrate:down\n")
    with pytest.raises(ManifestMismatch) as info:
        whimbrel.verify_manifest(tree, path)
    assert info.value.exit_code == ExitCode.MANIFEST_MISMATCH


def test_verify_command_connects_to_nothing(tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    manifest = save(tmp_path, "m.txt", manifest_of(tree, "--engine", "postgres"))
    ok = run_cli("migrations", "verify", str(tree), "--manifest", str(manifest))
    assert ok.returncode == 0, ok.stderr
    assert f"OK: 2 files in 1 set match {manifest} (sha256 {sha(manifest)})" in ok.stdout
    doc = json.loads(
        run_cli("migrations", "verify", str(tree), "--manifest", str(manifest), "-o", "json").stdout
    )
    assert doc["manifests"][0]["sets"]["testdb"][1] == {
        "file": SECRETS,
        "sha256": sha(tree / "testdb" / SECRETS),
    }
    other_engine = run_cli(
        "migrations", "verify", str(tree), "--manifest", str(manifest), "--url", "mysql://h/x"
    )
    assert other_engine.returncode == ExitCode.MANIFEST_MISMATCH
    no_manifest = run_cli("migrations", "verify", str(tree))
    assert no_manifest.returncode == ExitCode.USAGE
    assert "name the manifest" in no_manifest.stderr
    missing_path = run_cli(
        "migrations", "verify", str(tmp_path / "nope"), "--manifest", str(manifest)
    )
    assert missing_path.returncode == ExitCode.INVALID_MIGRATIONS
    assert "does not exist" in missing_path.stderr


def test_parse_tolerates_whitespace_comments_and_uppercase_hashes() -> None:
    text = (
        "# reviewed by ops\n"
        "database\tMySQL  testdb\n"
        "\n"
        "  +migration\t001_a b.sql\t" + "A" * 64 + "\n"
        "+migration 002_c.sql " + "b" * 64 + "   \n"
    )
    parsed = manifests.parse(text.encode(), "x")
    (block,) = parsed.blocks
    assert (block.engine, block.set_name) == ("mysql", "testdb")
    assert [(e.file, e.sha256, e.line) for e in block.entries] == [
        ("001_a b.sql", "a" * 64, 4),
        ("002_c.sql", "b" * 64, 5),
    ]
    assert parsed.sha256 == hashlib.sha256(text.encode()).hexdigest()


def test_a_missing_manifest_store(tmp_path: Path) -> None:
    tree = ftl_tree(tmp_path)
    v1 = save(tmp_path, "v1.manifest", manifest_of(tree))
    v2 = save(tmp_path, "v2.manifest", manifest_of(tree, "--reference", str(v1)))
    result = run_cli("migrations", "verify", str(tree), "--manifest", str(v2),
                     "--manifest-store", str(tmp_path / "nowhere"))  # fmt: skip
    assert result.returncode == ExitCode.INVALID_MANIFEST
    assert f"cannot read the manifest store {tmp_path / 'nowhere'}" in result.stderr
    assert f"{v2}, line 2" in result.stderr


def test_parse_tolerates_a_byte_order_mark_and_crlf() -> None:
    """A manifest saved by a Windows editor: UTF-8 with a BOM, CRLF line ends."""
    text = "database any testdb\r\n+migration 001_a.sql " + "c" * 64 + "\r\n"
    data = b"\xef\xbb\xbf" + text.encode()
    parsed = manifests.parse(data, "x")
    assert [(b.engine, b.set_name) for b in parsed.blocks] == [("any", "testdb")]
    assert [(e.file, e.line) for e in parsed.blocks[0].entries] == [("001_a.sql", 2)]
    assert parsed.sha256 == hashlib.sha256(data).hexdigest()  # of the bytes, BOM included


def test_a_file_changed_between_verification_and_parsing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What runs is what was verified: a file altered after its hash was checked (and before
    it was read to be parsed) is refused, not run."""
    from whimbrel import api

    tree = ftl_tree(tmp_path)
    manifest = save(tmp_path, "m.manifest", manifest_of(tree))
    real = api.load_sets

    def altered_meanwhile(path: object, only: object = None, **options: Any) -> object:
        target = tree / "testdb" / SECRETS
        target.write_text(target.read_text() + "\n-- altered meanwhile\n")
        return real(path, only, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(api, "load_sets", altered_meanwhile)
    with pytest.raises(ManifestMismatch, match=f"{SECRETS} changed after it was verified"):
        whimbrel.apply(tree, f"sqlite:///{tmp_path}/x.db", manifest=manifest)
    assert not (tmp_path / "x.db").exists()
