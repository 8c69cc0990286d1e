"""Shared helpers of the torture tests: a normalised schema dump, and the real CLI started in
the background (fresh_database, for a second database, is conftest's)."""

from __future__ import annotations

import os
import select
import subprocess
import time
from typing import IO, Any

from conftest import Database, whimbrel_executable


def schema_dump(db: Database) -> list[tuple[Any, ...]]:
    """The database's schema as sorted rows, without anything naming the database itself."""
    if db.dialect == "sqlite":
        rows = db.query(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        )
        return sorted(rows)
    if db.dialect == "postgres":
        queries = [
            "SELECT 'column', table_name, column_name, ordinal_position, data_type, "
            "is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = current_schema()",
            "SELECT 'index', tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema()",
            "SELECT 'view', table_name, view_definition FROM information_schema.views "
            "WHERE table_schema = current_schema()",
            "SELECT 'constraint', table_name, constraint_name, constraint_type "
            "FROM information_schema.table_constraints WHERE table_schema = current_schema() "
            "AND constraint_type <> 'CHECK'",  # NOT NULL checks get numbered names
        ]
    else:
        queries = [
            "SELECT 'column', table_name, column_name, ordinal_position, column_type, "
            "is_nullable, column_default, column_key FROM information_schema.columns "
            "WHERE table_schema = DATABASE()",
            "SELECT 'index', table_name, index_name, seq_in_index, column_name, non_unique "
            "FROM information_schema.statistics WHERE table_schema = DATABASE()",
            "SELECT 'view', table_name, view_definition FROM information_schema.views "
            "WHERE table_schema = DATABASE()",
        ]
    rows = [tuple(str(v) for v in row) for q in queries for row in db.query(q)]
    if db.dialect == "mysql":
        # View definitions name the database (`whimbrel_t_...`.`t`); take the name out.
        rows = [tuple(v.replace(f"`{db.name}`.", "") for v in row) for row in rows]
    return sorted(rows)


def spawn(*args: str) -> subprocess.Popen[str]:
    """The real CLI in the background, its output captured."""
    return subprocess.Popen(
        [*whimbrel_executable(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(stream: IO[str] | None, text: str, timeout: float = 30) -> str:
    """Read a child's pipe until `text` shows up (bounded); return what was read.

    Reads the raw descriptor, because progress lines ("applying x ... ") end without a
    newline until the migration finishes.
    """
    assert stream is not None
    fd = stream.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {text!r}; got {seen.decode(errors='replace')!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"the output closed before {text!r}: {seen!r}"
            seen += chunk
    return seen.decode(errors="replace")
