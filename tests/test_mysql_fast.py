"""The MySQL driver's shortcuts. MariaDB reads tracking rows as JSON text (read_rows_many):
exactly the rows the plain query gives, whatever the values hold. PyMySQL is imported
without `cryptography` until an RSA password exchange needs it."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import pymysql
import pytest

from conftest import Database, _mysql_kwargs, run_cli, write_tree
from whimbrel.drivers.base import Driver
from whimbrel.drivers.mysql import MySQLDriver
from whimbrel.errors import DatabaseError
from whimbrel.urls import parse_url

NASTY = [
    "",
    "plain",
    'it\'s "quoted"',
    "back\\slash \\\\ \\n \\u0041 \\",
    "nul\x00byte",
    "controls \x01\x02\x08\x0b\x0c\x1b\x1f\x7f",
    "tab\tnewline\ncarriage\r",
    "é ü ß 日本語 😀 \U0001f9ea",
    "separators \u2028 \u2029 \ufeff",
    "</script><!-- ]] }",
    '["json", {"looking": true}, null]',
    "null",
    "  padded  ",
    "".join(chr(c) for c in range(1, 128)),
]


def _driver(db: Database) -> MySQLDriver:
    return MySQLDriver(parse_url(db.url), connect_timeout=5, application_name="test")


def _insert(
    db: Database, table: str, rows: list[tuple[Any, ...]], sql_mode: str | None = None
) -> None:
    conn = pymysql.connect(**_mysql_kwargs(db.url), autocommit=True, charset="utf8mb4")
    quoted = "`" + table.replace("`", "``") + "`"
    try:
        with conn.cursor() as cur:
            if sql_mode is not None:
                cur.execute("SET SESSION sql_mode = %s", (sql_mode,))
            cur.executemany(
                f"INSERT INTO {quoted} (version, name, file, sha256, status, statements_done, "
                "statements_sha256, error, down_sql, applied_at, duration_ms, applied_by) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
    finally:
        conn.close()


def _nasty_rows() -> list[tuple[Any, ...]]:
    rng = random.Random(20261121)
    durations: list[float | None] = [None, 0.0, 1.0, 3.438, 1e20, 1e-20, 0.1, 2 / 3, 5e-324]
    durations += [1.7976931348623157e308, 123456789.123456789, -12.5]
    durations += [rng.uniform(0, 100_000) for _ in range(40)]
    for _ in range(40):
        value = struct.unpack("d", rng.randbytes(8))[0]
        if value == value and abs(value) != float("inf"):
            durations.append(value)
    rows = []
    version = 2**62
    for i in range(max(len(NASTY), len(durations))):
        text = NASTY[i % len(NASTY)]
        version -= rng.randint(1, 10**12)  # inserted in descending order
        rows.append(
            (
                version,
                text,
                f"{version}_{text}.sql",
                text[:64] + " " * (i % 3),  # CHAR(64): trailing spaces do not survive
                ["applied", "applying", "reverting", text[:16]][i % 4],
                i,
                None if i % 5 == 0 else (text * 3)[:60],
                None if i % 2 else text * 20,
                None if i % 3 else text + " -- down",
                f"2026-11-21 10:{i % 60:02d}:{(i * 7) % 60:02d}.{(i * 7919) % 1_000_000:06d}",
                durations[i % len(durations)],
                None if i % 7 == 0 else text,
            )
        )
    return rows


def test_json_rows_are_the_plain_rows(mysql_db: Database) -> None:
    driver = _driver(mysql_db)
    try:
        if not driver._json_rows:
            pytest.skip("the JSON rows need MariaDB 10.5 or later")
        tables = ["nasty", "empty", "zero_dates", "`odd` name ü"]
        for table in tables:
            driver.create_table(table)
        _insert(mysql_db, "nasty", _nasty_rows())
        _insert(mysql_db, "`odd` name ü", _nasty_rows()[:5])
        # A zero date (which PyMySQL leaves a string, so applied_at None) among valid ones.
        zero = [(*r[:9], "0000-00-00 00:00:00", *r[10:]) for r in _nasty_rows()[:3]]
        _insert(mysql_db, "zero_dates", _nasty_rows()[3:6] + zero, sql_mode="")

        columns = driver.tables_columns([*tables, "missing"])
        assert set(columns) == set(tables)
        assert driver._json_tables == set(tables)
        read: dict[str, Any] = {table: [] for table in tables}
        assert driver._read_json_rows(tables, read)  # the JSON way was taken
        plain = Driver.read_rows_many(driver, tables)
        assert read == plain
        assert driver.read_rows_many(tables) == plain

        rows = plain["nasty"]
        assert len(rows) == len(_nasty_rows()) and rows == sorted(rows, key=lambda r: r.version)
        assert {r.name for r in rows} == set(NASTY)
        fast_durations = [repr(r.duration_ms) for r in read["nasty"]]
        assert fast_durations == [repr(r.duration_ms) for r in rows]  # exact, not only ==
        assert all(r.applied_at is not None and r.applied_at.tzinfo == UTC for r in rows)
        assert [r.applied_at for r in read["zero_dates"]].count(None) == 3
        assert read["empty"] == []

        # Whatever the session's SQL mode (CHAR padding, quotes, backslashes).
        driver.execute("SET SESSION sql_mode = 'ANSI,NO_BACKSLASH_ESCAPES,PAD_CHAR_TO_FULL_LENGTH'")
        again: dict[str, Any] = {table: [] for table in tables}
        assert driver._read_json_rows(tables, again)
        assert again == plain == Driver.read_rows_many(driver, tables)
    finally:
        driver.close()


def test_tables_of_other_column_types_are_read_the_plain_way(mysql_db: Database) -> None:
    driver = _driver(mysql_db)
    try:
        driver.create_table("ours")
        driver.create_table("theirs")
        # applied_at as text: PyMySQL gives a string, which is no datetime (None); the JSON
        # text would be indistinguishable from a DATETIME's, so it must not be used.
        driver.execute("ALTER TABLE theirs MODIFY applied_at VARCHAR(64) NOT NULL")
        rows = _nasty_rows()[:4]
        _insert(mysql_db, "ours", rows)
        _insert(mysql_db, "theirs", rows)
        # Our types, but a NULL where create_table says NOT NULL: its JSON row is NULL.
        driver.create_table("nullable")
        driver.execute("ALTER TABLE nullable MODIFY applied_at DATETIME(6) NULL")
        _insert(mysql_db, "nullable", rows)
        driver.execute("UPDATE nullable SET applied_at = NULL WHERE version = %s", (rows[1][0],))
        tables = ["ours", "theirs", "nullable"]
        driver.tables_columns(tables)
        assert driver._json_tables == {"ours", "nullable"}
        read = driver.read_rows_many(tables)
        # Table by table: in one UNION the VARCHAR would make every table's applied_at text.
        for table in tables:
            assert read[table] == Driver.read_rows_many(driver, [table])[table]
        assert [r.applied_at for r in read["theirs"]] == [None] * 4
        assert all(r.applied_at is not None for r in read["ours"])
        assert [r.applied_at is None for r in read["nullable"]].count(True) == 1
        assert not driver._read_json_rows(["nullable"], {})
    finally:
        driver.close()


def test_a_refused_json_query_falls_back_to_the_plain_error(mysql_db: Database) -> None:
    driver = _driver(mysql_db)
    try:
        driver.create_table("gone")
        driver.tables_columns(["gone"])
        driver.execute("DROP TABLE gone")  # after tables_columns saw it
        with pytest.raises(DatabaseError, match="doesn't exist"):
            driver.read_rows_many(["gone"])
        driver.fetch("SELECT 1")  # the session is still usable
    finally:
        driver.close()


def test_pymysql_defers_cryptography_until_an_rsa_password_exchange() -> None:
    """import_pymysql leaves out the ~15 ms of `cryptography` PyMySQL's auth module loads
    for MySQL 8's RSA password exchange; that exchange still works, on first use."""
    script = """
import sys
from whimbrel.drivers.mysql import import_pymysql
import_pymysql()
from pymysql import _auth
loaded = sorted(m for m in sys.modules if m.startswith("cryptography.hazmat.primitives."))
assert loaded == ["cryptography.hazmat.primitives.asymmetric"], loaded
assert "cryptography.hazmat.bindings._rust" not in sys.modules
assert _auth._have_cryptography
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from whimbrel.drivers.mysql import _Deferred
assert not isinstance(serialization, _Deferred)  # the real one, for everyone else
assert isinstance(_auth.serialization, _Deferred)
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pem = key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
encrypted = _auth.sha2_rsa_encrypt(b"secret", b"0123456789abcdefghij", pem)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
plain = key.decrypt(encrypted, oaep)
assert plain == _auth._xor_password(b"secret\\0", b"0123456789abcdefghij"), plain
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_refused_tracking_write_stops_the_ddl_it_travels_with(
    mysql_db: Database, tmp_path: Path
) -> None:
    """Our writes travel in front of a DDL statement in one round trip (on MariaDB as one
    compound statement): when the server refuses one, the statement never runs."""
    trigger = (
        "DELIMITER //\nCREATE TRIGGER no_two BEFORE INSERT ON app FOR EACH ROW BEGIN\n"
        "  IF NEW.version = 2 THEN\n"
        "    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'tracking refused';\n"
        "  END IF;\nEND//\nDELIMITER ;"
    )
    tree = write_tree(
        tmp_path / "app",
        {
            "1_trigger.sql": f"-- migrate:up\n{trigger}\n-- migrate:down\nDROP TRIGGER no_two;\n",
            "2_table.up.sql": "CREATE TABLE two (id INT);",
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", mysql_db.url)
    assert result.returncode == 9, result.stdout + result.stderr  # a database error
    assert "recording 2_table.up.sql in the tracking table 'app'" in result.stderr
    assert "tracking refused" in result.stderr
    assert "two" not in mysql_db.tables()
    assert [r[0] for r in mysql_db.tracking("app")] == [1]
    assert mysql_db.query("SELECT @@GLOBAL.read_only")  # the server is fine


def test_literals_are_pymysqls(mysql_db: Database) -> None:
    driver = _driver(mysql_db)
    try:
        values = (None, 0, -5, 2**70, True, 1.5, 1e-7, "", 'it\'s \\ "x"\x00\n\x1a ü 😀')
        sql = " ".join(["%s"] * len(values))
        for mode in ("", "NO_BACKSLASH_ESCAPES"):
            driver.execute("SET SESSION sql_mode = %s", (mode,))
            assert driver._run_sql_params(sql, values) == driver.conn.cursor().mogrify(sql, values)
            (echo,) = driver.fetch("SELECT " + driver._run_sql_params("%s", (values[-1],)))
            assert echo == (values[-1],)
    finally:
        driver.close()
