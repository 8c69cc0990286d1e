"""URL parsing and the redaction of secrets."""

from __future__ import annotations

import pytest

from whimbrel.errors import UsageError
from whimbrel.urls import parse_url, redact


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("postgres://u:p@h:5433/db", "postgres"),
        ("postgresql://h/db", "postgres"),
        ("mysql://root@127.0.0.1/test", "mysql"),
        ("mariadb://root@127.0.0.1/test", "mysql"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_schemes(url: str, dialect: str) -> None:
    assert parse_url(url).dialect == dialect


def test_server_url_parts() -> None:
    url = parse_url("postgres://alice:p%40ss@db.example:5433/app?sslmode=require")
    assert (url.host, url.port, url.user, url.password, url.database) == (
        "db.example",
        5433,
        "alice",
        "p@ss",
        "app",
    )
    assert url.params == {"sslmode": "require"}


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative.db", "relative.db"),
        ("sqlite:////abs/olute.db", "/abs/olute.db"),
        ("sqlite:db/database.sqlite3", "db/database.sqlite3"),
        ("sqlite:/abs/x.db", "/abs/x.db"),
        ("sqlite3:x.db", "x.db"),
    ],
)
def test_sqlite_paths(url: str, path: str) -> None:
    assert parse_url(url).path == path


@pytest.mark.parametrize(
    "url", ["", "oracle://x/y", "nonsense", "sqlite://x.db", "sqlite:///", "sqlite::memory:"]
)
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        parse_url(url)


def test_str_never_shows_the_password() -> None:
    url = parse_url("postgres://alice:hunter2@h/db?password=hunter3")
    assert "hunter2" not in str(url) and "hunter3" not in str(url)
    assert "hunter2" not in repr(url)
    assert set(url.secrets()) >= {"hunter2", "hunter3"}


@pytest.mark.parametrize(
    "text",
    [
        "cannot connect to mysql://root:hunter2@h/db",
        "x?password=hunter2&y=1",
        "host=h password=hunter2 dbname=x",
        "password='hunter2' host=h",
    ],
)
def test_redact(text: str) -> None:
    assert "hunter2" not in redact(text)


def test_redact_known_secrets_anywhere() -> None:
    assert redact("Access denied using hunter2", ["hunter2"]) == "Access denied using ***"
    assert redact("x=(hunter2) 'hunter2'.", ["hunter2"]) == "x=(***) '***'."
    assert redact("pw: !hunter2!", ["!hunter2!"]) == "pw: ***"


def test_redact_leaves_longer_words_that_contain_a_known_secret() -> None:
    message = "migrations/tests: test_users failed; password test refused"
    assert redact(message, ["test"]) == "migrations/tests: test_users failed; password *** refused"


def test_a_very_short_password_is_hidden_where_it_stands_as_a_password_only() -> None:
    url = parse_url("postgres://app:a@h/db?sslpassword=pw")
    shown = redact(
        f"error: a migration failed on {url.raw} conninfo password=a sslpassword=pw", url.secrets()
    )
    assert shown == (
        "error: a migration failed on postgres://app:***@h/db?sslpassword=*** "
        "conninfo password=*** sslpassword=***"
    )


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://postgres:p@ssw0rdSECRET@127.0.0.1/db",
        "mysql://root:pa/ssSECRET@127.0.0.1/db",
    ],
)
def test_redact_unencoded_characters_in_passwords(text: str) -> None:
    assert "SECRET" not in redact(text)


def test_invalid_port_error_does_not_echo_the_url() -> None:
    with pytest.raises(UsageError) as info:
        parse_url("postgresql://postgres:pa/ssSECRET@127.0.0.1/db")
    assert "SECRET" not in str(info.value)


def test_str_redacts_passwords_with_spaces() -> None:
    url = parse_url("postgres://u:pa ss@h/db")
    assert "pa ss" not in str(url)
