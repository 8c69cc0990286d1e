"""Property-based tests (hypothesis) of the file-name and section parsers, and the splitter.

Parsing anything either works or raises the documented error type
(InvalidMigrationsError for files, SplitError for SQL text); valid names and sections
round-trip. Example counts are bounded so that the module runs in a few seconds, and the
examples are derandomized so CI is repeatable; WHIMBREL_HYPOTHESIS_EXAMPLES=2000 explores
further.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from whimbrel.discovery import MAX_VERSION, discover, looks_like_migration
from whimbrel.errors import InvalidMigrationsError, UsageError
from whimbrel.sqlsplit import SplitError, split_statements
from whimbrel.urls import parse_url, redact

EXAMPLES = int(os.environ.get("WHIMBREL_HYPOTHESIS_EXAMPLES", "150"))
BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Anything Linux allows in a file name: no '/', no NUL, at most 255 bytes.
file_name_chars = st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",))
any_file_name = (
    st.text(file_name_chars, min_size=1, max_size=60)
    .filter(lambda n: n not in {".", ".."})
    .filter(lambda n: len(n.encode()) <= 255)
)
# Names people write: printable, no line breaks; may hold dots, spaces, dashes, unicode.
name_chars = st.characters(
    blacklist_characters="/\x00\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
    blacklist_categories=("Cs", "Cc"),
)
migration_names = st.text(name_chars, min_size=1, max_size=40).filter(
    lambda n: len(n.encode()) <= 200
)
versions = st.integers(min_value=0, max_value=MAX_VERSION)


@contextmanager
def _folder() -> Iterator[Path]:
    # A fresh folder per example (hypothesis reruns the body; tmp_path is per test).
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "app"
        app.mkdir()
        yield app


def _digits(version: int, width: int) -> str:
    return str(version).zfill(width)


def _format_golang(version: str, name: str, direction: str) -> str:
    return f"{version}_{name}.{direction}.sql"


def _format_dbmate(version: str, name: str) -> str:
    return f"{version}_{name}.sql" if name else f"{version}.sql"


# -- file names ------------------------------------------------------------------------
@BOUNDED
@given(name=any_file_name, content=st.binary(max_size=200))
def test_any_file_name_and_content_parse_or_fail_with_the_documented_error(
    name: str, content: bytes
) -> None:
    with _folder() as app:
        (app / "000_anchor.up.sql").write_text("SELECT 1;")
        (app / name).write_bytes(content)
        try:
            sets = discover(app)
        except InvalidMigrationsError as exc:
            assert exc.exit_code == 5
            assert str(exc).startswith("set 'app'")  # names the set (and the file, below)
            if exc.file is not None:
                assert exc.file in {name, "000_anchor.up.sql"} or exc.file.startswith(
                    name.removesuffix(".down.sql")
                )
            return
        files = {m.file for m in sets[0].migrations}
        # A file that looks like a migration is never silently skipped.
        if looks_like_migration(name):
            downs = {m.down_file for m in sets[0].migrations}
            assert name in files | downs
        else:
            assert files == {"000_anchor.up.sql"}


@BOUNDED
@given(
    version=versions,
    width=st.integers(min_value=1, max_value=20),
    name=migration_names,
    direction=st.sampled_from(["up", "down"]),
)
def test_golang_names_round_trip(version: int, width: int, name: str, direction: str) -> None:
    digits = _digits(version, width)
    up_file = _format_golang(digits, name, "up")
    with _folder() as app:
        (app / up_file).write_text("SELECT 1;\n")
        if direction == "down":
            (app / _format_golang(digits, name, "down")).write_text("SELECT 2;\n")
        (migration,) = discover(app)[0].migrations
    assert (migration.version, migration.name, migration.format) == (
        version,
        name,
        "golang-migrate",
    )
    # Formatting the parsed parts gives back the exact file name(s).
    assert _format_golang(digits, migration.name, "up") == migration.file == up_file
    if direction == "down":
        assert migration.down_file == _format_golang(digits, migration.name, "down")
    else:
        assert migration.down is None and migration.down_file is None


@BOUNDED
@given(
    version=versions,
    width=st.integers(min_value=1, max_value=20),
    name=st.one_of(st.just(""), migration_names),
)
def test_dbmate_names_round_trip(version: int, width: int, name: str) -> None:
    # A name ending in .up/.down makes a golang-migrate file name instead.
    assume(not name.lower().endswith((".up", ".down")))
    digits = _digits(version, width)
    filename = _format_dbmate(digits, name)
    with _folder() as app:
        (app / filename).write_text("-- migrate:up\nSELECT 1;\n-- migrate:down\n")
        (migration,) = discover(app)[0].migrations
    assert (migration.version, migration.name, migration.format) == (version, name, "dbmate")
    assert _format_dbmate(digits, migration.name) == migration.file == filename


@BOUNDED
@given(version=st.integers(min_value=MAX_VERSION + 1, max_value=10**30), name=migration_names)
def test_versions_beyond_bigint_are_refused(version: int, name: str) -> None:
    filename = _format_golang(str(version), name, "up")
    with _folder() as app:
        (app / filename).write_text("SELECT 1;")
        try:
            discover(app)
        except InvalidMigrationsError as exc:
            assert exc.file == filename and "is larger than" in exc.reason
        else:
            raise AssertionError(f"{filename} was accepted")


# -- dbmate sections ---------------------------------------------------------------------
_MARKER = re.compile(r"--[ \t]*migrate:(?:up|down)(?:[ \t\r].*)?")
sql_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "CREATE TABLE t (id INT);",
                "-- a comment",
                "-- migrate:upgrade is not a marker",
                "--migrate:downtime neither",
                "  -- migrate:up (indented: not a marker)",
                "INSERT INTO t VALUES ('-- migrate:down');",
                "",
                "/* block",
                "*/",
                "\t",
                "ümlaut 🦆",
            ]
        ),
        st.text(name_chars, max_size=30),
    ),
    max_size=8,
)


@BOUNDED
@given(
    header=st.lists(st.sampled_from(["-- a header comment", "", "--", "  -- x"]), max_size=3),
    up=sql_lines,
    down=sql_lines,
    up_options=st.sampled_from(["", " transaction:false", " transaction:true", "\t"]),
    down_options=st.sampled_from(["", " transaction:false"]),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_dbmate_sections_round_trip(
    header: list[str],
    up: list[str],
    down: list[str],
    up_options: str,
    down_options: str,
    newline: str,
) -> None:
    assume(not any(_MARKER.fullmatch(line.rstrip("\r")) for line in up + down))
    assume("".join(up).strip())  # an empty up section is an error (tested elsewhere)
    up_body = "".join(line + newline for line in up)
    down_body = "".join(line + newline for line in down)
    head = "".join(line + newline for line in header)
    text = (
        f"{head}-- migrate:up{up_options}{newline}{up_body}"
        f"-- migrate:down{down_options}{newline}{down_body}"
    )
    with _folder() as app:
        (app / "1_x.sql").write_bytes(text.encode())
        (migration,) = discover(app)[0].migrations
    assert migration.down is not None
    # Each section is what follows its marker line, up to the next marker (a CRLF's "\r"
    # stays with the marker line).
    assert migration.up.sql == "\n" + up_body
    assert migration.down.sql == "\n" + down_body
    assert migration.up.line_offset == len(header)
    assert migration.down.line_offset == len(header) + 1 + len(up)
    assert migration.up.transaction is ("false" not in up_options)
    assert migration.down.transaction is ("false" not in down_options)
    rebuilt = (
        f"{head}-- migrate:up{up_options}{newline[:-1]}{migration.up.sql}"
        f"-- migrate:down{down_options}{newline[:-1]}{migration.down.sql}"
    )
    assert rebuilt == text


# -- statement splitting -----------------------------------------------------------------
sql_tokens = st.lists(
    st.one_of(
        st.sampled_from(
            [
                ";",
                "'",
                '"',
                "`",
                "$$",
                "$tag$",
                "--",
                "#",
                "/*",
                "*/",
                "\n",
                " ",
                "BEGIN",
                "END",
                "CREATE TRIGGER t",
                "CREATE PROCEDURE p()",
                "DELIMITER $$",
                "\nDELIMITER ;\n",
                "\nDELIMITER //\n",
                "IF",
                "THEN",
                "END IF",
                "CASE",
                "BEGIN ATOMIC",
                "E'\\''",
                "\\",
                "/*!50003",
                "SELECT 1",
                "x",
                "(",
                ")",
            ]
        ),
        st.text(max_size=5),
    ),
    max_size=30,
)


@BOUNDED
@given(tokens=sql_tokens, dialect=st.sampled_from(["postgres", "mysql", "sqlite"]))
def test_splitting_never_crashes_and_statements_point_into_the_text(
    tokens: list[str], dialect: str
) -> None:
    sql = "".join(tokens)
    try:
        statements = split_statements(sql, dialect, line_offset=3)  # type: ignore[arg-type]
    except SplitError as exc:
        assert 4 <= exc.line <= 4 + sql.count("\n")
        return
    previous_end = 0
    for statement in statements:
        assert sql[statement.start : statement.end] == statement.text
        assert statement.text.strip() == statement.text and statement.text
        assert statement.start >= previous_end
        previous_end = statement.end
        assert statement.line == 4 + sql.count("\n", 0, statement.start)


# -- passwords in URLs -------------------------------------------------------------------
passwords = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=8, max_size=30
)
URL_PARTS = "postgres://app_user:@db.example.internal:5432/app_db?sslmode=disable"


@BOUNDED
@given(password=passwords, scheme=st.sampled_from(["postgres", "mysql"]), encode=st.booleans())
def test_passwords_never_show_in_urls_or_errors(password: str, scheme: str, encode: bool) -> None:
    assume(password not in URL_PARTS and "***" not in password)
    written = quote(password, safe="") if encode else password
    raw = f"{scheme}://app_user:{written}@db.example.internal:5432/app_db?sslmode=disable"
    try:
        url = parse_url(raw)
    except UsageError as exc:
        # Unencoded '/', '?', '#' or '@' can make the URL unreadable: say so without it.
        assert not encode
        assert password not in exc.message and written not in exc.message
        return
    shown = str(url)
    assert password not in shown and written not in shown
    if encode:
        assert url.password == password
        assert shown.startswith(f"{scheme}://app_user:***@db.example.internal:5432/app_db")
    # Unencoded '?', '#' or '/' end the user-info early (the URL means something else);
    # otherwise a driver's message quoting the password in any spelling is redacted too.
    assume(url.password == password)
    message = f"FATAL: password {password!r} for {raw} ({written}) refused"
    cleaned = redact(message, url.secrets())
    assert password not in cleaned and written not in cleaned
