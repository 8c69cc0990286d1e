"""Database URLs: parsing, the dialect they name, and redaction of secrets."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from whimbrel.errors import UsageError

Dialect = Literal["postgres", "mysql", "sqlite"]

# URL schemes (also the engine names a manifest accepts) and their dialect.
SCHEMES: dict[str, Dialect] = {
    "postgres": "postgres",
    "postgresql": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
}

REDACTED = "***"


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed `--url`. `str()` never shows the password."""

    dialect: Dialect
    raw: str = field(repr=False)
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    params: dict[str, str] = field(default_factory=dict, repr=False)
    path: str | None = None  # SQLite file

    def __str__(self) -> str:
        return redact(self.raw, self.secrets())

    @property
    def display_name(self) -> str:
        if self.dialect == "sqlite":
            return f"sqlite {self.path}"
        return f"{self.dialect} {self.database or ''} on {self.host or 'localhost'}"

    def secrets(self) -> list[str]:
        """Strings that must never be printed."""
        found = []
        if self.password:
            found += [self.password, quote(self.password, safe="")]
        for key, value in self.params.items():
            if key.lower() in _SECRET_PARAMS and value:
                found.append(value)
        return [s for s in found if s]


_SECRET_PARAMS = {"password", "sslpassword", "passwd", "pass"}
# Greedy up to the last "@": a password may hold an unencoded "@" or "/".
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/?#\s]*):(?P<pw>\S*)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:password|sslpassword|passwd|pass)=)(?P<value>[^&;#\s]*)", re.IGNORECASE
)
_KEYWORD_SECRET = re.compile(
    r"(?P<key>\b(?:ssl)?password\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE
)


# Known secrets shorter than this are hidden only where they stand as a password (URL
# user-info, password=...): hiding every "a" or "pw" in a message would garble it.
MIN_KNOWN_SECRET = 4


def redact(text: str, secrets: list[str] | None = None) -> str:
    """Hide passwords in any text: URL user-info, `?password=`, `password=...`, and known
    values of at least MIN_KNOWN_SECRET characters wherever they stand as a whole word."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['key']}{REDACTED}", text)
    text = _KEYWORD_SECRET.sub(lambda m: f"{m['key']}{REDACTED}", text)
    for secret in sorted(secrets or [], key=len, reverse=True):
        if len(secret) >= MIN_KNOWN_SECRET and secret in text:
            text = _as_whole_word(secret).sub(REDACTED, text)
    return text


def _as_whole_word(secret: str) -> re.Pattern[str]:
    """`secret`, but not inside a longer word: a password "test" leaves "tests" alone."""
    before = r"(?<!\w)" if re.match(r"\w", secret[0]) else ""
    after = r"(?!\w)" if re.match(r"\w", secret[-1]) else ""
    return re.compile(before + re.escape(secret) + after)


def parse_url(url: str) -> DatabaseURL:
    if not url:
        raise UsageError("no database URL: pass --url or set DATABASE_URL")
    scheme, sep, rest = url.partition(":")
    dialect = SCHEMES.get(scheme.lower()) if sep else None
    if dialect is None:
        raise UsageError(
            f"unsupported database URL {redact(url)!r}: use postgres://, postgresql://, "
            "mysql://, mariadb://, sqlite:///relative.db, sqlite:////absolute.db or sqlite:path"
        )
    if dialect == "sqlite":
        return DatabaseURL(dialect="sqlite", raw=url, path=_sqlite_path(url, rest))

    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018  (checks a bracketed [IPv6] host)
    except ValueError:
        # Never echo the URL: an unencoded '[' or ']' in the password lands here.
        raise UsageError(
            f"the {scheme} URL cannot be read (if the password holds '[', ']', '@', '/' or "
            "':', percent-encode them: %5B, %5D, %40, %2F, %3A)"
        ) from None
    if parts.fragment:
        raise UsageError(
            f"database URL {redact(url)!r} has a fragment ('#'); remove it (if the password "
            "holds '#', percent-encode it: %23)"
        )
    try:
        port = parts.port
    except ValueError:
        raise UsageError(
            f"the {scheme} URL has an invalid port (if the password holds '@', '/' or ':', "
            "percent-encode them: %40, %2F, %3A)"
        ) from None
    database = unquote(parts.path.lstrip("/")) or None
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if "@" in userinfo:
        # We split at the last "@", libpq at the first: it would take the password's tail
        # for the host, and print it. Hand it the user-info percent-encoded.
        encoded = quote(user or "", safe="")
        if password is not None:
            encoded += ":" + quote(password, safe="")
        url = parts._replace(netloc=f"{encoded}@{hostport}").geturl()
    return DatabaseURL(
        dialect=dialect,
        raw=url,
        host=unquote(parts.hostname) if parts.hostname else None,
        port=port,
        user=user,
        password=password,
        database=database,
        params=params,
    )


def _sqlite_path(url: str, rest: str) -> str:
    # SQLAlchemy style: sqlite:///relative.db and sqlite:////absolute.db.
    # dbmate style: sqlite:relative.db and sqlite:/absolute.db.
    if "?" in rest:
        raise UsageError(f"SQLite URL {url!r}: options after '?' are not supported")
    if rest.startswith("///"):
        path = rest[3:]
    elif rest.startswith("//"):
        raise UsageError(
            f"ambiguous SQLite URL {url!r}: write sqlite:///relative.db or sqlite:////absolute.db"
        )
    else:
        path = rest
    path = unquote(path)
    if not path or path == ":memory:":
        raise UsageError(
            f"SQLite URL {url!r} names no file (in-memory databases are not supported)"
        )
    return path
