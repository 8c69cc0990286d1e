"""Torture: a corpus of hostile migration trees, each with the exact error it must give.

Every case runs the real CLI (`apply`) against a database that already holds a table
`y`, the target of the injection-shaped names. A refused tree must change nothing: `y`
survives and no tracking table appears. Cases that must work say exit 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import Database, run_cli, write_tree


@dataclass(frozen=True)
class Link:
    """A symlink to `target` (relative to the link's folder)."""

    target: str


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, str | bytes | Link]
    exit_code: int
    # Every fragment must appear in stderr (stdout for exit 0); {root} is the tree's path.
    fragments: tuple[str, ...]
    dialect: str = "sqlite"
    path: str = "."  # what to pass as PATH, relative to the tree
    args: tuple[str, ...] = ()
    tables_after: frozenset[str] = field(default_factory=frozenset)  # besides `y`


NOT_SAFE = "is not a safe SQL identifier for its tracking table"
MALFORMED = "malformed migration file name: expected VERSION_NAME.up.sql"

CASES = [
    # -- names ----------------------------------------------------------------------------
    Case(
        "name-without-version",
        {"app/init.up.sql": "CREATE TABLE a (id INT);"},
        5,
        ("set 'app': file init.up.sql: " + MALFORMED,),
    ),
    Case(
        "name-without-name",
        {"app/1.up.sql": "CREATE TABLE a (id INT);"},
        5,
        ("set 'app': file 1.up.sql: " + MALFORMED,),
    ),
    Case(
        "version-with-letters",
        {"app/1a_init.up.sql": "CREATE TABLE a (id INT);"},
        5,
        ("set 'app': file 1a_init.up.sql: " + MALFORMED,),
    ),
    Case(
        "uppercase-direction",
        {"app/1_init.UP.sql": "CREATE TABLE a (id INT);"},
        5,
        ("set 'app': file 1_init.UP.sql: " + MALFORMED,),
    ),
    Case(
        "version-beyond-bigint",
        {"app/99999999999999999999_big.up.sql": "CREATE TABLE a (id INT);"},
        5,
        (
            "set 'app': file 99999999999999999999_big.up.sql: version 99999999999999999999 "
            "is larger than 9223372036854775807",
        ),
    ),
    Case(
        "duplicate-version-leading-zeros",
        {
            "app/1_first.up.sql": "CREATE TABLE a (id INT);",
            "app/001_second.up.sql": "CREATE TABLE b (id INT);",
        },
        5,
        ("set 'app': duplicate version 1: 001_second.up.sql and 1_first.up.sql",),
    ),
    Case(
        "duplicate-version-across-formats",
        {
            "app/2_a.up.sql": "CREATE TABLE a (id INT);",
            "app/2_b.sql": "-- migrate:up\nCREATE TABLE b (id INT);\n-- migrate:down\n",
        },
        5,
        ("set 'app': duplicate version 2: 2_a.up.sql and 2_b.sql",),
    ),
    Case(
        "down-without-up",
        {
            "app/1_a.up.sql": "CREATE TABLE a (id INT);",
            "app/2_b.down.sql": "DROP TABLE b;",
        },
        5,
        ("set 'app': file 2_b.down.sql: down migration without an up migration",),
    ),
    # -- contents -------------------------------------------------------------------------
    Case("empty-file", {"app/1_a.up.sql": ""}, 5, ("set 'app': file 1_a.up.sql: file is empty",)),
    Case(
        "whitespace-only-file",
        {"app/1_a.up.sql": "\n  \t\r\n"},
        5,
        ("set 'app': file 1_a.up.sql: file is empty",),
    ),
    Case("empty-dbmate-file", {"app/1_a.sql": ""}, 5, ("set 'app': file 1_a.sql: file is empty",)),
    Case(
        "only-comments",
        {"app/1_a.up.sql": "-- nothing here\n/* nor\n here */\n"},
        5,
        ("set 'app': file 1_a.up.sql: has no SQL statements (only comments or empty ones)",),
    ),
    Case(
        "only-comments-mysql-hash",
        {"app/1_a.up.sql": "# a MySQL comment\n-- and another\n"},
        5,
        ("set 'app': file 1_a.up.sql: has no SQL statements (only comments or empty ones)",),
        dialect="mysql",
    ),
    Case(
        "dbmate-up-section-only-comments",
        {"app/1_a.sql": "-- migrate:up\n-- TODO\n-- migrate:down\nDROP TABLE a;\n"},
        5,
        ("set 'app': file 1_a.sql: has no SQL statements (only comments or empty ones)",),
    ),
    Case(
        "dbmate-without-markers",
        {"app/1_a.sql": "CREATE TABLE a (id INT);\n"},
        5,
        ("set 'app': file 1_a.sql: no '-- migrate:up' section",),
    ),
    Case(
        "dbmate-markers-reversed",
        {
            "app/1_a.sql": "-- migrate:down\nDROP TABLE a;\n"
            "-- migrate:up\nCREATE TABLE a (id INT);\n"
        },
        5,
        ("set 'app': file 1_a.sql, line 1: '-- migrate:down' comes before '-- migrate:up'",),
    ),
    Case(
        "unknown-option",
        {"app/1_a.sql": "-- migrate:up transaction:maybe\nSELECT 1;\n-- migrate:down\n"},
        5,
        ("set 'app': file 1_a.sql, line 1: unknown option 'transaction:maybe'",),
    ),
    Case(
        "non-utf8-latin1",
        {"app/1_a.up.sql": b"CREATE TABLE a (n TEXT);\nINSERT INTO a VALUES ('caf\xe9');\n"},
        5,
        ("set 'app': file 1_a.up.sql, line 2: not valid UTF-8 (byte 0xe9 at offset 51)",),
    ),
    Case(
        "utf16-file",
        {"app/1_a.up.sql": "CREATE TABLE a (id INT);\n".encode("utf-16")},
        5,
        ("set 'app': file 1_a.up.sql, line 1: not valid UTF-8 (byte 0xff at offset 0)",),
    ),
    Case(
        "nul-byte",
        {"app/1_a.up.sql": b"CREATE TABLE a (id INT);\n\x00\n"},
        5,
        ("set 'app': file 1_a.up.sql, line 2: contains a NUL character",),
    ),
    Case(
        "unterminated-quote-names-its-line",
        {"app/1_a.up.sql": "CREATE TABLE a (id INT);\nINSERT INTO a VALUES ('oops);\n"},
        5,
        ("set 'app': file 1_a.up.sql, line 2: unterminated",),
    ),
    # -- DELIMITER misuse -----------------------------------------------------------------
    Case(
        "delimiter-without-argument",
        {"app/1_a.up.sql": "CREATE TABLE a (id INT);\nDELIMITER\nSELECT 1;\n"},
        5,
        (
            "set 'app': file 1_a.up.sql, line 2: DELIMITER must be followed by the new "
            "delimiter (e.g. 'DELIMITER $$')",
        ),
        dialect="mysql",
    ),
    Case(
        "delimiter-inside-a-statement",
        {
            "app/1_a.up.sql": "CREATE TABLE a (id INT)\nDELIMITER $$\n"
            "CREATE PROCEDURE p() BEGIN SELECT 1; END$$\nDELIMITER ;\n"
        },
        5,
        (
            "set 'app': file 1_a.up.sql, line 2: DELIMITER inside an unfinished statement; "
            "end the previous statement with ';' first",
        ),
        dialect="mysql",
    ),
    Case(
        "delimiter-with-backslash",
        {"app/1_a.up.sql": "DELIMITER \\\\\nSELECT 1\\\\\n"},
        5,
        ("set 'app': file 1_a.up.sql, line 1: DELIMITER '\\\\\\\\' is not allowed",),
        dialect="mysql",
    ),
    Case(
        # DELIMITER is the mysql client's, not PostgreSQL's: the server says so, by line.
        "delimiter-on-postgres",
        {"app/1_a.up.sql": "CREATE TABLE a (id INT);\nDELIMITER $$\nSELECT 1$$\n"},
        1,
        (
            "set 'app', 1_a.up.sql, statement 2 of 2 (line 2)",
            'syntax error at or near "DELIMITER"',
            "nothing of 1_a.up.sql was applied",
        ),
        dialect="postgres",
    ),
    # -- folders, links, injection-shaped names -------------------------------------------
    Case(
        "set-folder-named-like-sql-injection",
        {"x; DROP TABLE y--/1_a.up.sql": "CREATE TABLE a (id INT);"},
        5,
        ("folder name 'x; DROP TABLE y--'", NOT_SAFE),
    ),
    Case(
        "set-folder-injection-as-path",
        {"x; DROP TABLE y--/1_a.up.sql": "CREATE TABLE a (id INT);"},
        5,
        ("folder name 'x; DROP TABLE y--'", NOT_SAFE),
        path="x; DROP TABLE y--",
        dialect="postgres",
    ),
    Case(
        "set-folder-quote-injection",
        {"a\"b'c`d/1_a.up.sql": "CREATE TABLE a (id INT);"},
        5,
        ("folder name 'a\"b\\'c`d'", NOT_SAFE),
        dialect="mysql",
    ),
    Case(
        "set-option-named-like-sql-injection",
        {"app/1_a.up.sql": "CREATE TABLE a (id INT);"},
        2,
        ("x; DROP TABLE y--",),
        args=("--set", "x; DROP TABLE y--"),
    ),
    Case(
        "uppercase-set-folder",
        {"App/1_a.up.sql": "CREATE TABLE a (id INT);"},
        5,
        ("folder name 'App'", NOT_SAFE),
    ),
    Case(
        "set-folder-too-long",
        {f"{'s' * 64}/1_a.up.sql": "CREATE TABLE a (id INT);"},
        5,
        (f"folder name '{'s' * 64}'", "it is longer than 63 characters"),
    ),
    Case(
        "symlink-to-itself",
        {"app/1_a.up.sql": Link("1_a.up.sql")},
        5,
        ("cannot read {root}/app/1_a.up.sql: Too many levels of symbolic links",),
    ),
    Case(
        "symlink-loop-of-two",
        {
            "app/1_a.up.sql": Link("2_b.up.sql"),
            "app/2_b.up.sql": Link("1_a.up.sql"),
        },
        5,
        # Whichever link the folder lists first.
        ("cannot read {root}/app/", ".up.sql: Too many levels of symbolic links"),
    ),
    Case(
        "dangling-symlink",
        {"app/1_a.up.sql": Link("gone.sql")},
        5,
        ("cannot read {root}/app/1_a.up.sql: No such file or directory",),
    ),
    Case(
        # A folder linking back to the tree: sets are looked for one level down, so the
        # loop is never followed; the real set applies.
        "folder-symlink-loop-is-not-followed",
        {"app/1_a.up.sql": "CREATE TABLE a (id INT);", "loop": Link(".")},
        0,
        ("app: applying 1_a.up.sql ... applied",),
        tables_after=frozenset({"a", "app"}),
    ),
    Case(
        "migration-file-is-a-folder",
        {"app/1_a.up.sql/inner.txt": "not sql"},
        5,
        ("{root}/app/1_a.up.sql is named like a migration but is not a regular file",),
    ),
    Case(
        "files-and-sets-mixed",
        {"1_a.up.sql": "CREATE TABLE a (id INT);", "app/1_b.up.sql": "CREATE TABLE b (id INT);"},
        5,
        ("holds both migration files and set folders (app): keep one set per folder",),
    ),
    Case(
        "no-migrations-at-all",
        {"README.md": "nothing", "schema.sql": "CREATE TABLE a (id INT);"},
        5,
        ("no migration files found in {root}", "ignored schema.sql"),
    ),
]


def _hostile_names() -> list[Case]:
    # File names are data: quotes, backslashes and SQL in a migration's name must be
    # recorded verbatim, on every database, and run nothing but the file.
    names = ["it's; DROP TABLE y; --", 'back\\slash "dq" `bt`', "$$ dollar $q$ ümlaut"]
    files: dict[str, str | bytes | Link] = {
        f"app/{n}_{name}.up.sql": f"CREATE TABLE t{n} (id INT);"
        for n, name in enumerate(names, start=1)
    }
    return [
        Case(
            f"hostile-file-names-{dialect}",
            files,
            0,
            ("Applied 3 migrations in 1 set",),
            dialect=dialect,
            tables_after=frozenset({"app", "t1", "t2", "t3"}),
        )
        for dialect in ("sqlite", "postgres", "mysql")
    ]


ALL_CASES = CASES + _hostile_names()


def _build(root: Path, files: dict[str, str | bytes | Link]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            os.symlink(content.target, path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_hostile_tree(case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    db: Database = request.getfixturevalue(f"{case.dialect}_db")
    db.query("CREATE TABLE y (id INT)")
    root = tmp_path / "tree"
    _build(root, case.files)
    target = root if case.path == "." else root / case.path
    result = run_cli("migrations", "apply", str(target), "--url", db.url, *case.args)
    output = result.stdout if case.exit_code == 0 else result.stderr
    assert result.returncode == case.exit_code, result.stdout + result.stderr
    for fragment in case.fragments:
        assert fragment.replace("{root}", str(root)) in output, output
    assert "Traceback" not in result.stderr
    assert db.tables() == {"y"} | case.tables_after
    if case.exit_code == 0:
        rows = db.query("SELECT version, name FROM app ORDER BY version")
        expected_names = [name for name in case.files if name.startswith("app/")]
        assert [r[1] for r in rows] == [
            n.removeprefix("app/").split("_", 1)[1].removesuffix(".up.sql")
            for n in sorted(expected_names)
        ]


# -- a 50 MB migration ----------------------------------------------------------------------
def _fifty_megabytes(path: Path) -> int:
    """Write a 50 MB migration of multi-row INSERTs (mysqldump-like); return its rows."""
    padding = "x" * 900
    row = 0
    with path.open("w") as out:
        out.write("CREATE TABLE blob_rows (id INT PRIMARY KEY, pad VARCHAR(1000));\n")
        while out.tell() < 50_000_000:
            values = [f"({row + n}, '{padding}')" for n in range(1, 51)]
            row += len(values)
            out.write("INSERT INTO blob_rows VALUES " + ",\n".join(values) + ";\n")
    return row


def test_fifty_megabyte_migration_applies(db: Database, tmp_path: Path) -> None:
    app = write_tree(tmp_path / "app", {"2_after.up.sql": "CREATE TABLE after_blob (id INT);"})
    rows = _fifty_megabytes(app / "1_blob.up.sql")
    result = run_cli("migrations", "apply", str(app), "--url", db.url, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert db.query("SELECT count(*) FROM blob_rows") == [(rows,)]
    assert [r[:2] for r in db.tracking("app")] == [(1, "applied"), (2, "applied")]
