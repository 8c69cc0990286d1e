"""Discovery: folders and file names into sets and migrations, and every way to get it wrong."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from conftest import EXAMPLES, write_tree
from whimbrel.discovery import discover
from whimbrel.errors import InvalidMigrationsError


def test_dracon_tree_is_one_set_per_folder_in_name_order() -> None:
    sets = discover(EXAMPLES / "dracon")
    assert [s.name for s in sets] == ["enrichments", "experimental_component"]
    assert [s.table for s in sets] == ["enrichments", "experimental_component"]
    enrichments = sets[0]
    assert [(m.version, m.name) for m in enrichments.migrations] == [
        (1, "init"),
        (2, "varchar_to_text"),
        (3, "add_cve_column"),
    ]
    first = enrichments.migrations[0]
    assert first.format == "golang-migrate"
    assert first.file == "001_init.up.sql"
    assert first.down_file == "001_init.down.sql"
    assert first.down is not None and "DROP TABLE" in first.down.sql
    data = (EXAMPLES / "dracon/enrichments/001_init.up.sql").read_bytes()
    assert first.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("suffix", ["", "/"])
def test_a_folder_of_files_is_one_set_named_after_it(suffix: str) -> None:
    sets = discover(str(EXAMPLES / "dracon/enrichments") + suffix)
    assert [s.name for s in sets] == ["enrichments"]


def test_dot_path_takes_the_real_folder_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLES / "dracon/experimental_component")
    assert [s.name for s in discover(".")] == ["experimental_component"]


def test_ftl_dbmate_tree() -> None:
    (testdb,) = discover(EXAMPLES / "ftl/db")
    assert testdb.name == "testdb"
    first = testdb.migrations[0]
    assert (first.version, first.name, first.format) == (20231103205514, "init", "dbmate")
    assert "CREATE TABLE requests" in first.up.sql
    assert "DROP TABLE requests" not in first.up.sql
    assert first.down is not None and "DROP TABLE requests" in first.down.sql
    # Section lines are file lines: the up marker is line 1, CREATE TABLE is line 2.
    assert first.up.line_offset == 0
    assert first.down.line_offset == first.up.sql.count("\n")


def test_dbmate_transaction_option_and_golang_directive(tmp_path: Path) -> None:
    write_tree(
        tmp_path / "s",
        {
            "1_a.sql": """
                -- a comment is fine before the up marker
                -- migrate:up transaction:false
                CREATE INDEX CONCURRENTLY i ON t (c);
                -- migrate:down
                DROP INDEX i;
            """,
            "2_b.up.sql": "-- whimbrel: transaction:false\nVACUUM;\n",
            "3_c.up.sql": "SELECT 1;\n",
        },
    )
    (s,) = discover(tmp_path / "s")
    a, b, c = s.migrations
    assert (a.up.transaction, a.down and a.down.transaction) == (False, True)
    assert b.up.transaction is False
    assert c.up.transaction is True and c.down is None


def test_versions_compare_as_integers(tmp_path: Path) -> None:
    write_tree(
        tmp_path / "s",
        {
            "9_nine.up.sql": "SELECT 9;",
            "10_ten.up.sql": "SELECT 10;",
            "0002_two.up.sql": "SELECT 2;",
        },
    )
    (s,) = discover(tmp_path / "s")
    assert [m.version for m in s.migrations] == [2, 9, 10]


def test_non_migration_files_are_ignored(tmp_path: Path) -> None:
    write_tree(
        tmp_path / "s",
        {
            "001_init.up.sql": "SELECT 1;",
            "README.md": "# docs",
            ".hidden.sql": "nope",
            "schema.sql": "-- dbmate's schema dump",
            "notes.txt": "x",
        },
    )
    (tmp_path / "s" / ".git").mkdir()
    (s,) = discover(tmp_path / "s")
    assert [m.file for m in s.migrations] == ["001_init.up.sql"]


def test_sub_folders_without_migrations_are_not_sets(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a/001_x.up.sql": "SELECT 1;", "docs/README.md": "x"})
    assert [s.name for s in discover(tmp_path)] == ["a"]


def _error(tmp_path: Path, files: dict[str, str], folder: str = "s") -> InvalidMigrationsError:
    write_tree(tmp_path / folder, files)
    with pytest.raises(InvalidMigrationsError) as info:
        discover(tmp_path / folder)
    return info.value


@pytest.mark.parametrize(
    "name",
    ["001-init.sql", "1a_init.sql", "001_init.UP.sql", "init.up.sql", "001_.down.sql.up.sql"],
)
def test_malformed_names_are_errors(tmp_path: Path, name: str) -> None:
    error = _error(tmp_path, {"001_ok.up.sql": "SELECT 1;", name: "SELECT 2;"})
    assert error.set_name == "s"
    assert error.file == name or "duplicate" in error.message
    assert "set 's'" in str(error)


def test_duplicate_versions_are_errors(tmp_path: Path) -> None:
    error = _error(tmp_path, {"001_a.up.sql": "SELECT 1;", "1_b.up.sql": "SELECT 2;"})
    assert "duplicate version 1" in error.message
    assert "001_a.up.sql" in error.message and "1_b.up.sql" in error.message


def test_duplicate_version_across_formats(tmp_path: Path) -> None:
    error = _error(
        tmp_path,
        {"1_a.up.sql": "SELECT 1;", "1_a.sql": "-- migrate:up\nSELECT 1;\n-- migrate:down\n"},
    )
    assert "duplicate version 1" in error.message


def test_down_without_up(tmp_path: Path) -> None:
    error = _error(tmp_path, {"001_a.up.sql": "SELECT 1;", "002_b.down.sql": "SELECT 2;"})
    assert error.file == "002_b.down.sql"
    assert "without an up" in error.message


def test_up_and_down_names_must_match(tmp_path: Path) -> None:
    error = _error(tmp_path, {"001_a.up.sql": "SELECT 1;", "001_b.down.sql": "SELECT 2;"})
    assert "different names" in error.message


def test_dbmate_marker_followed_by_a_note(tmp_path: Path) -> None:
    # dbmate ignores words without a colon after a marker; options still count.
    write_tree(
        tmp_path / "s",
        {
            "20240101000000_x.sql": "-- migrate:up create the users table transaction:false\n"
            "CREATE TABLE users (id int);\n-- migrate:down drop it again\nDROP TABLE users;\n"
        },
    )
    (migration,) = discover(tmp_path / "s")[0].migrations
    assert migration.up.transaction is False and "CREATE TABLE users" in migration.up.sql
    assert migration.down is not None and migration.down.transaction is True


@pytest.mark.parametrize(
    ("content", "expected", "line"),
    [
        ("CREATE TABLE t (a int);\n", "no '-- migrate:up' section", None),
        ("-- migrate:up\nCREATE TABLE t (a int);\n", "no '-- migrate:down' section", None),
        ("-- migrate:down\nDROP TABLE t;\n-- migrate:up\nSELECT 1;\n", "comes before", 1),
        ("SELECT 1;\n-- migrate:up\nSELECT 2;\n-- migrate:down\n", "SQL before", 1),
        ("-- migrate:up transaction:flase\nSELECT 1;\n-- migrate:down\n", "unknown option", 1),
        ("-- migrate:up transaction=false\nSELECT 1;\n-- migrate:down\n", "unknown option", 1),
        ("-- migrate:up notes\nSELECT 1;\n-- migrate:down Transaction\n", "unknown option", 3),
        ("-- migrate:up\nSELECT 1;\n-- migrate:up\n-- migrate:down\n", "second", 3),
        ("-- migrate:up\n\n-- migrate:down\nDROP TABLE t;\n", "section is empty", 1),
        ("", "file is empty", None),
    ],
)
def test_bad_dbmate_files(tmp_path: Path, content: str, expected: str, line: int | None) -> None:
    path = tmp_path / "s" / "20240101000000_x.sql"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(InvalidMigrationsError) as info:
        discover(tmp_path / "s")
    assert expected in info.value.message
    assert info.value.file == "20240101000000_x.sql"
    assert info.value.line == line


def test_empty_golang_file(tmp_path: Path) -> None:
    error = _error(tmp_path, {"001_a.up.sql": "  \n"})
    assert (error.file, error.reason) == ("001_a.up.sql", "file is empty")


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "001_a.up.sql").write_bytes(b"SELECT 1;\nSELECT '\xff';\n")
    with pytest.raises(InvalidMigrationsError) as info:
        discover(folder)
    assert info.value.line == 2
    assert "not valid UTF-8" in info.value.message


def test_nul_byte_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "001_a.up.sql").write_bytes(b"SELECT 1;\n\x00\n")
    with pytest.raises(InvalidMigrationsError, match="NUL"):
        discover(folder)


@pytest.mark.parametrize(
    "folder",
    [
        "my-component",
        "Enrichments",
        "1st",
        "robert'); DROP TABLE students;--",
        "sqlite_stuff",
        "x" * 64,
    ],
)
def test_unsafe_folder_names_are_refused(tmp_path: Path, folder: str) -> None:
    write_tree(tmp_path / "root", {f"{folder}/001_a.up.sql": "SELECT 1;"})
    with pytest.raises(InvalidMigrationsError) as info:
        discover(tmp_path / "root")
    assert "not a safe SQL identifier" in info.value.message
    assert repr(folder) in info.value.message


def test_files_and_set_folders_together_are_ambiguous(tmp_path: Path) -> None:
    write_tree(tmp_path / "root", {"001_a.up.sql": "SELECT 1;", "sub/001_b.up.sql": "SELECT 1;"})
    with pytest.raises(InvalidMigrationsError, match="both migration files and set folders"):
        discover(tmp_path / "root")


def test_no_migrations_hints_at_the_naming_rule(tmp_path: Path) -> None:
    write_tree(tmp_path / "s", {"V1__init.sql": "SELECT 1;"})
    with pytest.raises(InvalidMigrationsError) as info:
        discover(tmp_path / "s")
    assert "no migration files found" in info.value.message
    assert "V1__init.sql" in info.value.message


def test_missing_path_and_file_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidMigrationsError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "f.sql").write_text("x")
    with pytest.raises(InvalidMigrationsError, match="not a folder"):
        discover(tmp_path / "f.sql")


def test_dangling_symlink_is_an_error(tmp_path: Path) -> None:
    write_tree(tmp_path / "s", {"001_a.up.sql": "SELECT 1;"})
    os.symlink(tmp_path / "gone.sql", tmp_path / "s" / "002_b.up.sql")
    with pytest.raises(InvalidMigrationsError, match="cannot read"):
        discover(tmp_path / "s")


def test_symlink_loop_is_an_error_not_a_hang(tmp_path: Path) -> None:
    write_tree(tmp_path / "root", {"a/001_a.up.sql": "SELECT 1;"})
    os.symlink(tmp_path / "root" / "loop", tmp_path / "root" / "loop")
    with pytest.raises(InvalidMigrationsError, match="cannot read"):
        discover(tmp_path / "root")


def test_a_set_reached_through_a_link_is_named_after_the_link_however_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `.` inside the link once took the real folder's name: a second set, applied twice.
    write_tree(tmp_path / "releases" / "v1" / "billing_v1", {"001_a.up.sql": "SELECT 1;"})
    os.symlink(tmp_path / "releases" / "v1" / "billing_v1", tmp_path / "billing")
    assert [s.name for s in discover(tmp_path / "billing")] == ["billing"]
    monkeypatch.chdir(tmp_path / "billing")
    monkeypatch.setenv("PWD", str(tmp_path / "billing"))  # as the shell keeps it
    assert [s.name for s in discover(".")] == ["billing"]
    monkeypatch.setenv("PWD", str(tmp_path))  # stale: not the working folder
    assert [s.name for s in discover(".")] == ["billing_v1"]


def test_version_larger_than_bigint(tmp_path: Path) -> None:
    error = _error(tmp_path, {"99999999999999999999_a.up.sql": "SELECT 1;"})
    assert "larger than" in error.message


def test_a_folder_named_like_a_migration_is_an_error(tmp_path: Path) -> None:
    write_tree(tmp_path / "s", {"001_a.up.sql": "SELECT 1;"})
    (tmp_path / "s" / "002_b.up.sql").mkdir()
    with pytest.raises(InvalidMigrationsError, match="not a regular file"):
        discover(tmp_path / "s")


def test_sets_come_in_name_order_whatever_the_directory_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(tmp_path, {f"{name}/001_a.up.sql": "SELECT 1;" for name in ("b", "c", "a")})
    real_scandir = os.scandir
    monkeypatch.setattr(
        "whimbrel.discovery.os.scandir",
        lambda path: sorted(real_scandir(path), key=lambda e: e.name, reverse=True),
    )
    assert [s.name for s in discover(tmp_path)] == ["a", "b", "c"]
