"""Torture: a hostile environment. Wrong passwords, hosts that never answer or answer
nonsense, read-only users, and a database that disappears while a migration runs.

Each must give a clear error, never print the password, and leave the tracking table
telling the truth (inspected afterwards).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Database, both_pg_clients, run_cli, write_tree
from test_failures import _wait_until
from torture_support import read_until, spawn
from whimbrel.urls import parse_url

SECRET = "Tr0ub4dor&3-secret"
QUOTED_SECRET = "Tr0ub4dor%263-secret"  # as it is written in a URL


def _assert_hidden(result: subprocess.CompletedProcess[str] | str) -> None:
    text = result if isinstance(result, str) else result.stdout + result.stderr
    assert SECRET not in text and QUOTED_SECRET not in text, text
    assert "Traceback" not in text, text


def _with_user(url: str, user: str, password: str = QUOTED_SECRET) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[1]}"


def _tree(tmp_path: Path) -> Path:
    return write_tree(
        tmp_path / "app",
        {
            "1_a.up.sql": "CREATE TABLE env_a (id INT);\nINSERT INTO env_a VALUES (1);\n",
            "2_b.up.sql": "CREATE TABLE env_b (id INT);\n",
        },
    )


# -- wrong password -------------------------------------------------------------------------
def test_wrong_password_for_a_real_mysql_user(mysql_db: Database, tmp_path: Path) -> None:
    user = f"wb_pw_{uuid.uuid4().hex[:8]}"
    mysql_db.query(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (SECRET,))
    mysql_db.query(f"GRANT ALL ON `{mysql_db.name}`.* TO '{user}'@'%'")
    try:
        tree = _tree(tmp_path)
        wrong = _with_user(mysql_db.url, user, QUOTED_SECRET + "x")
        for command in ("inspect", "apply", "revert"):
            result = run_cli("migrations", command, str(tree), "--url", wrong)
            assert result.returncode == 6, result.stderr
            assert f"cannot connect to mysql://{user}:***@127.0.0.1" in result.stderr
            assert f"Access denied for user '{user}'" in result.stderr
            _assert_hidden(result)
        assert "app" not in mysql_db.tables()
        # The right password works: it was the password, not the user, that was refused.
        right = run_cli("migrations", "apply", str(tree), "--url", _with_user(mysql_db.url, user))
        assert right.returncode == 0, right.stderr
        _assert_hidden(right)
    finally:
        mysql_db.query(f"DROP USER IF EXISTS '{user}'@'%'")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sslmode=require", "unknown option 'sslmode' (known: charset, socket"),
        ("password=x", "unknown option 'password'"),
        ("ssl=yes", "?ssl= takes true or false, not 'yes'"),
        ("tls=maybe", "?tls= takes true, false, skip-verify or preferred, not 'maybe'"),
        ("ssl_ca=/nonexistent/ca.pem", "?ssl_ca= names '/nonexistent/ca.pem', which does not"),
        ("charset=bogus", "unknown charset 'bogus'"),
        ("ssl=false&ssl_ca=/", "TLS options given with ssl=false or tls=false"),
    ],
)
def test_mysql_url_options_are_checked_not_ignored(
    mysql_db: Database, tmp_path: Path, query: str, message: str
) -> None:
    # They were ignored (a plain-text connection) or ended in a traceback.
    url = _with_user(mysql_db.url, "root") + "?" + query
    result = run_cli("migrations", "apply", str(_tree(tmp_path)), "--url", url)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    _assert_hidden(result)
    assert "app" not in mysql_db.tables()


@pytest.mark.parametrize("query", ["ssl=true", "tls=skip-verify", "tls=true"])
def test_mysql_url_asking_for_tls_gets_tls_or_no_connection(
    mysql_db: Database, tmp_path: Path, query: str
) -> None:
    offered = mysql_db.query("SHOW VARIABLES LIKE 'have_ssl'")[0][1] == "YES"
    result = run_cli(
        "migrations", "inspect", str(_tree(tmp_path)), "--url", f"{mysql_db.url}?{query}"
    )
    if offered:  # a server with TLS: it is used (tls=true also checks its certificate)
        assert result.returncode in (3, 6), result.stderr
        assert result.returncode == 3 or "certificate verify failed" in result.stderr
    else:  # it was a silent fall-back to plain text
        assert result.returncode == 6, result.stderr
        assert "SSL is required but the server doesn't support it" in result.stderr or (
            "the URL asks for TLS, which the server does not offer" in result.stderr
        )


# A self-signed certificate, as a CA file: only loaded, never used to connect.
_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIDFzCCAf+gAwIBAgIUPUI0QG19RDjDys9xJsk9kJwyjqIwDQYJKoZIhvcNAQEL
BQAwGzEZMBcGA1UEAwwQd2hpbWJyZWwgdGVzdCBDQTAeFw0yNjExMjExNjU0NDha
Fw0zNjExMTgxNjU0NDhaMBsxGTAXBgNVBAMMEHdoaW1icmVsIHRlc3QgQ0EwggEi
MA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQD2iEYf0isk5Td4JCwh7zjiVYjG
/V46vxMN0jqMUVt84zMYKSVaasLSPMtHxkOEWQ9DGZ7BZffFNcokynwStEyFZOgU
c79mZPA8causgRF+SFJuSFN7SSSjwxTb9oCgGcY/V4FVdBkLMmkuo2pXcO3AUCyb
sHcPsbesJOGOtifjZuxn/uvBVi97+exh39BYPdMZRiv7GIqW5IYZusSN3RULE6v2
c/zPK/UNJrEsiimeXu7XzdvMOEQhVJQtqK6Vr7BWLbs7gLHTvZ5wuahifKlm1Ed+
iYXcuED8puvmk7ZmKOoR9oV8uj6nGgjziTWLXQ3lwzoMj4/xzhAWP0BdP9ttAgMB
AAGjUzBRMB0GA1UdDgQWBBTLBX85MCJ/KVub5/1t7uSuSEz/iDAfBgNVHSMEGDAW
gBTLBX85MCJ/KVub5/1t7uSuSEz/iDAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3
DQEBCwUAA4IBAQBWqUPiQlLX+ghOdfHOSt2N9gWkMMkXbeXlV7fBEjOkZu3VT8PW
kvohr68mFeEkkg/wkMIyUU5Os7OUU6+NWiUx8UZR+vfEyYA1b6kj7rGX6bmGaeG+
5fSCbgZ9O0ryyZ+3L2rrDResj91ppICpD/lyt6IxZfllCDj1twTEHoalEEdpjUx0
jKmnySIALaLHAaboTRFDRUvx9aWBxtGOM6mch1Mz2UPzJ6/YjoF/NYohcUe3PosU
ACb5WiQZnHAmkA8l5mdSY5AfVvPaOsDeiOzIoGKC1X/prqxTjRz5GmBMHdpvdZ3l
wz3c2HhDLGjLlyrxsnx18i7VZrB5l2z4ex7T
-----END CERTIFICATE-----
"""


def _pymysql_context(query: str) -> ssl.SSLContext | None:
    """The TLS context PyMySQL builds from the URL's options, without connecting."""
    import pymysql

    from whimbrel.drivers.mysql import url_options

    options = url_options(parse_url(f"mysql://root@127.0.0.1:3306/db?{query}"))
    conn = pymysql.connections.Connection(defer_connect=True, **options)  # type: ignore[arg-type]
    return conn.ctx if conn.ssl else None  # type: ignore[no-any-return]


def test_mysql_tls_options_build_the_context_they_promise(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(_CA_PEM)
    # A CA without verification: PyMySQL turned the host-name check on, and ssl refused
    # to turn verification off under it (a ValueError, a traceback).
    relaxed = _pymysql_context(f"ssl_ca={ca}&ssl_verify_cert=false")
    assert relaxed is not None
    assert relaxed.verify_mode == ssl.CERT_NONE and not relaxed.check_hostname
    # Checks asked for without a CA: PyMySQL quietly checked nothing; the system's CAs.
    for query in ("ssl_verify_identity=true", "tls=true"):
        strict = _pymysql_context(query)
        assert strict is not None, query
        assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname, query
    with_ca = _pymysql_context(f"ssl_ca={ca}")
    assert with_ca is not None and with_ca.verify_mode == ssl.CERT_REQUIRED
    unverified = _pymysql_context("ssl=true")
    assert unverified is not None and unverified.verify_mode == ssl.CERT_NONE


def test_mysql_tls_options_that_cannot_be_used_are_a_usage_error(
    mysql_db: Database, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    url = f"{mysql_db.url}?ssl_ca={junk}"
    result = run_cli("migrations", "inspect", str(_tree(tmp_path)), "--url", url)
    assert result.returncode == 2, result.stderr
    assert "its TLS options cannot be used" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("query", "code"), [("sslmode=require", 2), ("tls=true", 6)])
def test_provisioning_checks_mysql_url_options_before_creating(
    mysql_db: Database, tmp_path: Path, query: str, code: int
) -> None:
    # Its admin connection read the options its own way: plain text, then "created".
    if mysql_db.query("SHOW VARIABLES LIKE 'have_ssl'")[0][1] == "YES" and code == 6:
        pytest.skip("this server offers TLS: tls=true would connect")
    name = f"{mysql_db.name}_new"
    url = mysql_db.url.rsplit("/", 1)[0] + f"/{name}?{query}"
    result = run_cli(
        "migrations", "provision", str(_tree(tmp_path)), "--url", url, "--wait-timeout", "1"
    )
    assert result.returncode == code, result.stderr
    assert "created database" not in result.stderr
    assert mysql_db.query("SHOW DATABASES LIKE %s", (name,)) == []


class _FakePostgres:
    """A server that asks for a cleartext password and refuses it, as PostgreSQL does with
    `password` auth. (The test server trusts 127.0.0.1, so a real role's wrong password
    would be accepted there.)"""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the client hung up
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        import struct

        def read_startup() -> bytes:
            length = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))[0]
            return conn.recv(length - 4, socket.MSG_WAITALL)

        body = read_startup()
        if body[:4] in (struct.pack("!I", 80877103), struct.pack("!I", 80877104)):
            conn.sendall(b"N")  # no SSL, no GSS encryption
            body = read_startup()
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        kind = conn.recv(1, socket.MSG_WAITALL)
        length = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))[0]
        self.received += kind + conn.recv(length - 4, socket.MSG_WAITALL)
        fields = b'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "app"\0\0'
        conn.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        self.sock.close()


@pytest.fixture
def fake_postgres() -> Iterator[_FakePostgres]:
    server = _FakePostgres()
    try:
        yield server
    finally:
        server.close()


@both_pg_clients
def test_wrong_password_on_postgres(fake_postgres: _FakePostgres, tmp_path: Path) -> None:
    url = f"postgres://app:{QUOTED_SECRET}@127.0.0.1:{fake_postgres.port}/db?sslmode=disable"
    for command in ("inspect", "apply"):
        result = run_cli("migrations", command, str(_tree(tmp_path)), "--url", url)
        assert result.returncode == 6, result.stderr
        assert "cannot connect to postgres://app:***@127.0.0.1" in result.stderr
        assert 'password authentication failed for user "app"' in result.stderr
        _assert_hidden(result)
    assert SECRET.encode() in fake_postgres.received  # the password did reach the server


@both_pg_clients
def test_unencoded_at_sign_in_a_postgres_password(
    fake_postgres: _FakePostgres, tmp_path: Path
) -> None:
    # libpq splits the user-info at the first "@": it took "3xyzSecretTail@127.0.0.1" for
    # the host, and printed it in its error.
    password = "Tr0ub4dor@3xyzSecretTail"
    url = f"postgres://app:{password}@127.0.0.1:{fake_postgres.port}/db?sslmode=disable"
    result = run_cli("migrations", "inspect", str(_tree(tmp_path)), "--url", url)
    assert result.returncode == 6, result.stderr
    assert 'password authentication failed for user "app"' in result.stderr
    assert "SecretTail" not in result.stdout + result.stderr
    assert "Tr0ub4dor" not in result.stdout + result.stderr
    assert password.encode() in fake_postgres.received  # the whole password reached it


def test_postgres_role_that_may_not_log_in(postgres_db: Database, tmp_path: Path) -> None:
    # The real server's own refusal of a login, with a password in the URL.
    role = f"wb_nologin_{uuid.uuid4().hex[:8]}"
    postgres_db.query(f"CREATE ROLE {role} NOLOGIN PASSWORD '{SECRET}'")
    try:
        url = _with_user(postgres_db.url, role)
        result = run_cli("migrations", "apply", str(_tree(tmp_path)), "--url", url)
        assert result.returncode == 6, result.stderr
        assert f"cannot connect to postgresql://{role}:***@127.0.0.1" in result.stderr
        assert f'role "{role}" is not permitted to log in' in result.stderr
        _assert_hidden(result)
        assert "app" not in postgres_db.tables()
    finally:
        postgres_db.query(f"DROP ROLE {role}")


# -- hosts that never answer, or answer nonsense ------------------------------------------
class _Listener:
    """A local TCP port that accepts connections and then stays silent, or talks nonsense."""

    def __init__(self, reply: bytes | None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)  # kept open: a silent peer, not a closed one
            if self.reply is not None:
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        self.sock.close()
        for conn in self.conns:
            conn.close()


CONNECT_TIMEOUT = 2


@pytest.mark.parametrize("scheme", ["postgres", "mysql"])
@pytest.mark.parametrize("peer", ["silent", "nonsense", "closed", "blackhole"])
def test_unreachable_server_fails_within_the_connect_timeout(
    scheme: str, peer: str, tmp_path: Path
) -> None:
    host = "127.0.0.1"
    if peer == "blackhole":
        # Unroutable on a real network (the connect times out); this sandbox's network
        # answers it instead. Either way the error must come within the timeout.
        host, port = "10.255.255.1", 5432 if scheme == "postgres" else 3306
        listener: _Listener | socket.socket = socket.socket()
    elif peer == "closed":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))  # reserved, but not listening: refused at once
        port = listener.getsockname()[1]
    else:
        reply = None if peer == "silent" else b"HTTP/1.1 400 Bad Request\r\n\r\n"
        listener = _Listener(reply)
        port = listener.port
    url = f"{scheme}://app:{QUOTED_SECRET}@{host}:{port}/db"
    try:
        started = time.monotonic()
        result = run_cli(
            "migrations", "apply", str(_tree(tmp_path)), "--url", url,
            "--connect-timeout", str(CONNECT_TIMEOUT), timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert result.returncode == 6, result.stderr
    assert f"cannot connect to {scheme}://app:***@{host}:{port}/db" in result.stderr
    _assert_hidden(result)
    # Within the timeout (plus interpreter start-up on a busy machine), never hanging.
    assert elapsed < CONNECT_TIMEOUT + 4, (elapsed, result.stderr)
    if peer == "silent":
        assert elapsed >= CONNECT_TIMEOUT * 0.9  # it was the timeout that ended it
        assert "timeout" in result.stderr.lower() or "timed out" in result.stderr.lower()


# -- read-only users ------------------------------------------------------------------------
def test_read_only_postgres_user(postgres_db: Database, tmp_path: Path) -> None:
    import psycopg

    tree = _tree(tmp_path)
    (tree / "2_b.up.sql").rename(tmp_path / "2_b.up.sql")  # pending later
    assert run_cli("migrations", "apply", str(tree), "--url", postgres_db.url).returncode == 0
    (tmp_path / "2_b.up.sql").rename(tree / "2_b.up.sql")
    role = f"wb_ro_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_db.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    url = _with_user(postgres_db.url, role)
    try:
        inspected = run_cli("migrations", "inspect", str(tree), "--url", url)
        assert inspected.returncode == 3, inspected.stderr  # reading is all it needs
        assert "1 applied, 1 pending" in inspected.stdout
        applied = run_cli("migrations", "apply", str(tree), "--url", url)
        assert applied.returncode == 1, applied.stderr
        assert "set 'app', 2_b.up.sql, statement 1 of 1 (line 1)" in applied.stderr
        assert "permission denied for schema public" in applied.stderr
        assert "nothing of 2_b.up.sql was applied" in applied.stderr
        for result in (inspected, applied):
            _assert_hidden(result)
        # May create, may not record: the migration rolls back with its tracking row.
        with psycopg.connect(postgres_db.url, autocommit=True) as conn:
            conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
        unrecorded = run_cli("migrations", "apply", str(tree), "--url", url)
        assert unrecorded.returncode == 1, unrecorded.stderr
        assert "2_b.up.sql, recording it in the tracking table" in unrecorded.stderr
        assert "permission denied for table app" in unrecorded.stderr
        _assert_hidden(unrecorded)
        assert "env_b" not in postgres_db.tables()
        assert [r[:2] for r in postgres_db.tracking("app")] == [(1, "applied")]
    finally:
        with psycopg.connect(postgres_db.url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_read_only_mysql_user(mysql_db: Database, tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "2_b.up.sql").rename(tmp_path / "2_b.up.sql")
    assert run_cli("migrations", "apply", str(tree), "--url", mysql_db.url).returncode == 0
    (tmp_path / "2_b.up.sql").rename(tree / "2_b.up.sql")
    user = f"wb_ro_{uuid.uuid4().hex[:8]}"
    mysql_db.query(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (SECRET,))
    mysql_db.query(f"GRANT SELECT ON `{mysql_db.name}`.* TO '{user}'@'%'")
    url = _with_user(mysql_db.url, user)
    try:
        inspected = run_cli("migrations", "inspect", str(tree), "--url", url)
        assert inspected.returncode == 3, inspected.stderr
        applied = run_cli("migrations", "apply", str(tree), "--url", url)
        assert applied.returncode == 9, applied.stderr
        assert "recording 2_b.up.sql in the tracking table 'app'" in applied.stderr
        assert f"INSERT command denied to user '{user}'" in applied.stderr
        for result in (inspected, applied):
            _assert_hidden(result)
        assert "env_b" not in mysql_db.tables()
        assert [r[:2] for r in mysql_db.tracking("app")] == [(1, "applied")]
    finally:
        mysql_db.query(f"DROP USER IF EXISTS '{user}'@'%'")


# -- the database disappears mid-run ----------------------------------------------------------
SLEEP = {"postgres": "pg_sleep", "mysql": "SLEEP"}


def _start_sleepy_run(
    db: Database, tmp_path: Path, seconds: int = 30
) -> tuple[Path, subprocess.Popen[str], str]:
    sleepy = (
        f"CREATE TABLE env_b (id INT);\nSELECT {SLEEP[db.dialect]}({seconds});\n"
        "CREATE TABLE env_c (id INT);\n"
    )
    tree = write_tree(
        tmp_path / "app", {"1_a.up.sql": "CREATE TABLE env_a (id INT);", "2_sleepy.up.sql": sleepy}
    )
    url = _with_user(db.url, "postgres" if db.dialect == "postgres" else "root", QUOTED_SECRET)
    if db.dialect == "mysql":
        url = db.url  # root has no password here; the secret would be refused
    proc = spawn("migrations", "apply", str(tree), "--url", url)
    seen = read_until(proc.stdout, "app: applying ")
    return tree, proc, seen


# PostgreSQL gets both small migrations in one round trip: the run knows only that it was
# running one of them when the connection broke.
RUNNING = {
    "postgres": (
        "app: applying 1_a.up.sql ... FAILED\n",
        "while running one of 2 migrations sent together (1_a.up.sql to 2_sleepy.up.sql of "
        "set 'app'): each of them runs in a transaction of its own",
    ),
    "mysql": (
        "app: applying 1_a.up.sql ... applied in",
        "while running 2_sleepy.up.sql of set 'app'",
    ),
}


def _migration_backend(db: Database, seconds: int = 30) -> int:
    if db.dialect == "postgres":
        sql = (
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND "
            f"query LIKE '%pg_sleep({seconds})%' AND pid <> pg_backend_pid() "
            "AND datname = current_database()"
        )
    else:
        sql = (
            f"SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP({seconds})%' "
            "AND ID <> CONNECTION_ID() AND DB = DATABASE()"
        )
    found: list[int] = []

    def running() -> bool:
        found[:] = [row[0] for row in db.query(sql)]
        return bool(found)

    _wait_until(running, "the migration's sleep runs on the server")
    return found[0]


@both_pg_clients
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_connection_killed_mid_migration(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db: Database = request.getfixturevalue(f"{engine}_db")
    tree, proc, seen = _start_sleepy_run(db, tmp_path)
    backend = _migration_backend(db)
    if engine == "postgres":
        db.query("SELECT pg_terminate_backend(%s)", (backend,))
    else:
        db.query(f"KILL {int(backend)}")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 6, out + err
    assert (seen + out).endswith(" ... FAILED\n")  # the line is closed
    first_line, running = RUNNING[engine]
    assert (seen + out).startswith(first_line)
    assert "lost the connection to" in err
    assert running in err
    _assert_hidden(out + err)
    if engine == "postgres":
        # Atomic: rolled back with its tracking row; the one before it committed.
        assert [r[:2] for r in db.tracking("app")] == [(1, "applied")]
        assert "env_b" not in db.tables()
        rerun_ok = True
    else:
        # Statement by statement: dirty, with exactly the first statement counted.
        assert "it may be dirty" in err
        rows = db.query("SELECT version, status, statements_done FROM app ORDER BY version")
        assert rows == [(1, "applied", 1), (2, "applying", 1)]
        assert "env_b" in db.tables() and "env_c" not in db.tables()
        rerun_ok = False
    inspected = run_cli("migrations", "inspect", str(tree), "--url", db.url)
    assert inspected.returncode == (3 if rerun_ok else 4), inspected.stdout + inspected.stderr


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_database_dropped_mid_migration(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from conftest import MYSQL_URL, POSTGRES_URL

    db: Database = request.getfixturevalue(f"{engine}_db")
    # MariaDB drops the database at once but lets the running statement finish: keep it short.
    tree, proc, seen = _start_sleepy_run(db, tmp_path, seconds=30 if engine == "postgres" else 3)
    _migration_backend(db, seconds=30 if engine == "postgres" else 3)
    if engine == "postgres":
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{db.name}" WITH (FORCE)')
    else:
        import pymysql

        from conftest import _mysql_kwargs

        admin = pymysql.connect(**_mysql_kwargs(MYSQL_URL), autocommit=True)
        with admin, admin.cursor() as cur:
            cur.execute(f"DROP DATABASE `{db.name}`")
    out, err = proc.communicate(timeout=30)
    _assert_hidden(out + err)
    assert (seen + out).endswith(" ... FAILED\n")
    first_line, running = RUNNING[engine]
    assert (seen + out).startswith(first_line)
    if engine == "postgres":
        assert proc.returncode == 6, out + err
        assert "lost the connection to" in err
    else:
        # The statement finished; recording it found no tracking table any more.
        assert proc.returncode == 9, out + err
        assert "recording 2_sleepy.up.sql in the tracking table 'app'" in err
        assert "doesn't exist" in err
    assert running in err
    gone = run_cli("migrations", "inspect", str(tree), "--url", db.url)
    assert gone.returncode == 6, gone.stderr
    missing = f'database "{db.name}" does not exist' if engine == "postgres" else "Unknown database"
    assert missing in gone.stderr


@pytest.mark.parametrize("password", ["Pa[ssw0rd", "ab[secretpart]cd"])
def test_brackets_in_an_unencoded_password_are_a_usage_error(password: str, tmp_path: Path) -> None:
    # urlsplit reads [...] as an IPv6 host: a traceback quoting it, before this was caught.
    url = f"postgres://app:{password}@127.0.0.1:5432/db"
    result = run_cli("migrations", "inspect", str(_tree(tmp_path)), "--url", url)
    assert result.returncode == 2, result.stderr
    assert "percent-encode them: %5B, %5D" in result.stderr
    assert "Traceback" not in result.stderr
    assert password not in result.stderr and "secretpart" not in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [("text", "file is not a database"), ("folder", "unable to open database file")],
)
def test_sqlite_path_that_is_not_a_database(content: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "not.db"
    if content == "folder":
        path.mkdir()
    else:
        path.write_text("hello, I am not a database\n" * 100)
    for command in ("inspect", "apply"):
        result = run_cli("migrations", command, str(_tree(tmp_path)), "--url", f"sqlite:///{path}")
        assert result.returncode == 6, result.stderr
        assert f"cannot open SQLite database {path}: {message}" in result.stderr
        assert "Traceback" not in result.stderr


# -- inspect reads the database while it reads the files (engine.EarlyRead) -----------------
@pytest.mark.parametrize("scheme", ["postgres", "mysql"])
def test_inspect_of_a_silent_server_connects_once(scheme: str, tmp_path: Path) -> None:
    """The tracking tables are read while the files are hashed; a connection that fails
    there is reported as is, not tried a second time (twice the connect timeout)."""
    listener = _Listener(None)
    url = f"{scheme}://app:{QUOTED_SECRET}@127.0.0.1:{listener.port}/db"
    try:
        started = time.monotonic()
        result = run_cli(
            "migrations", "inspect", str(_tree(tmp_path)), "--url", url,
            "--connect-timeout", str(CONNECT_TIMEOUT), timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        connections = len(listener.conns)
    finally:
        listener.close()
    assert result.returncode == 6, result.stderr
    assert f"cannot connect to {scheme}://app:***@127.0.0.1:{listener.port}/db" in result.stderr
    _assert_hidden(result)
    assert connections == 1
    assert CONNECT_TIMEOUT * 0.9 <= elapsed < 2 * CONNECT_TIMEOUT, (elapsed, result.stderr)


@pytest.mark.parametrize("scheme", ["postgres", "mysql"])
def test_inspect_of_an_invalid_tree_says_so_without_waiting_for_the_server(
    scheme: str, tmp_path: Path
) -> None:
    """An invalid file is reported (exit 5) as soon as discovery finds it, whatever the
    connection that started meanwhile is still doing."""
    tree = _tree(tmp_path)
    (tree / "2_again.up.sql").write_text("CREATE TABLE again (id INT);\n")  # version 2 twice
    listener = _Listener(None)
    url = f"{scheme}://app:{QUOTED_SECRET}@127.0.0.1:{listener.port}/db"
    try:
        started = time.monotonic()
        result = run_cli(
            "migrations", "inspect", str(tree), "--url", url, "--connect-timeout", "30",
            timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert result.returncode == 5, result.stderr
    assert "2_again.up.sql" in result.stderr
    assert elapsed < 10, elapsed  # not the 30 s connect timeout
