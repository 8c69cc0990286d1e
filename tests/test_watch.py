"""`whimbrel migrations watch`: the real CLI as a subprocess, real file edits, real databases.

Nothing here sleeps and hopes: each step waits for a line of output or polls the database,
with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import whimbrel
from conftest import Database, whimbrel_executable, write_tree
from whimbrel.watcher import WatchEvent

DEADLINE = 20.0  # seconds; generous for a loaded CI machine, reached only on failure


def dbmate(up: str, down: str = "") -> str:
    return f"-- migrate:up\n{up}\n\n-- migrate:down\n{down}\n"


class Watcher:
    """A running `whimbrel migrations watch`, its stdout and stderr read line by line."""

    def __init__(self, *args: str, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        self.proc = subprocess.Popen(
            [*whimbrel_executable(), "migrations", "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
        )
        self.lines: list[tuple[str, str]] = []  # (stream, line)
        self._seen: dict[str, int] = {}  # per stream: lines already matched
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self.lines.append((name, line.rstrip("\n")))
                self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "\n".join(f"[{name}] {line}" for name, line in self.lines)

    def expect(self, pattern: str, stream: str = "out") -> str:
        """Wait for a line of `stream`, after the last one expected there, matching `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + DEADLINE
        with self._cond:
            while True:
                start = self._seen.get(stream, 0)
                for index in range(start, len(self.lines)):
                    name, line = self.lines[index]
                    if name == stream and regex.search(line):
                        self._seen[stream] = index + 1
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._alive()):
                    raise AssertionError(
                        f"no line matching {pattern!r} on std{stream} within {DEADLINE} s "
                        f"(exit code {self.proc.poll()}); output:\n{self.output()}"
                    )
                self._cond.wait(min(left, 0.2))

    def _alive(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=DEADLINE)
        for reader in self._readers:
            reader.join(timeout=DEADLINE)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_watch(tmp_path: Path) -> Iterator[Callable[..., Watcher]]:
    started: list[Watcher] = []

    def start(*args: str) -> Watcher:
        watcher = Watcher(*args, cwd=tmp_path)
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.close()


def eventually(condition: Callable[[], bool], what: str, watcher: Watcher | None = None) -> None:
    """Poll `condition` until it holds; database errors (a reset in progress) count as no."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:
            pass
        time.sleep(0.05)
    output = f"; watch output:\n{watcher.output()}" if watcher else ""
    raise AssertionError(f"{what} did not happen within {DEADLINE} s{output}")


def columns(db: Database, table: str) -> set[str]:
    if db.dialect == "sqlite":
        return {row[1] for row in db.query(f"PRAGMA table_info({table})")}
    schema = "current_schema()" if db.dialect == "postgres" else "database()"
    rows = db.query(
        "SELECT column_name FROM information_schema.columns "
        f"WHERE table_schema = {schema} AND table_name = %s",
        (table,),
    )
    return {str(row[0]).lower() for row in rows}


def save(path: Path, text: str) -> None:
    """Save like an editor does: write a temp file beside it, then rename it over."""
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text)
    os.replace(temp, path)


@pytest.mark.parametrize("engine", ["sqlite", "postgres", "mysql"])
def test_new_file_applied_and_changed_file_reverted_then_reapplied(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, start_watch: Any
) -> None:
    db: Database = request.getfixturevalue(f"{engine}_db")
    app = write_tree(
        tmp_path / "db" / "app",
        {"001_items.sql": dbmate("CREATE TABLE items (id INTEGER)", "DROP TABLE items")},
    )
    watcher = start_watch("db", "--url", db.url)
    watcher.expect(r"^app: applying 001_items\.sql \.\.\. applied")
    watcher.expect(r"^watching db for changes")
    assert "items" in db.tables()

    # A new file, saved the way an editor saves: its temp file is not a migration.
    save(app / "002_orders.sql", dbmate("CREATE TABLE orders (id INTEGER)", "DROP TABLE orders"))
    changed = watcher.expect(r"^changed: ")
    assert changed == "changed: app/002_orders.sql"
    watcher.expect(r"^app: applying 002_orders\.sql \.\.\. applied")
    watcher.expect(r"^watching db")
    assert "orders" in db.tables()

    # Change an applied file: revert to just before it with the recorded down sections
    # (the new down section would drop a column that does not exist yet), then re-apply.
    save(
        app / "001_items.sql",
        dbmate(
            "CREATE TABLE items (id INTEGER, name VARCHAR(50))",
            "ALTER TABLE items DROP COLUMN name; DROP TABLE items",
        ),
    )
    banner = watcher.expect(r"^==> ")
    assert "app/001_items.sql changed since it was applied" in banner
    assert "REVERTING set 'app' back to before its first migration" in banner
    watcher.expect(r"reverting 002_orders\.sql \.\.\. reverted")
    watcher.expect(r"reverting 001_items\.sql \(down section recorded when applied\)")
    watcher.expect(r"applying 001_items\.sql \.\.\. applied")
    watcher.expect(r"applying 002_orders\.sql \.\.\. applied")
    watcher.expect(r"^watching db")
    assert columns(db, "items") == {"id", "name"}
    assert "orders" in db.tables()
    statuses = [row[1] for row in db.tracking("app")]
    assert statuses == ["applied", "applied"]

    assert watcher.interrupt() == 0
    watcher.expect(r"^stopped watching$")
    assert not [line for stream, line in watcher.lines if stream == "err"]


@pytest.mark.parametrize("engine", ["sqlite", "postgres", "mysql"])
def test_reset_drops_and_recreates_the_database(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, start_watch: Any
) -> None:
    db: Database = request.getfixturevalue(f"{engine}_db")
    # dbmate's default empty down section: only a reset can undo it.
    app = write_tree(
        tmp_path / "db" / "app",
        {
            "001_items.sql": dbmate("CREATE TABLE items (id INTEGER)"),
            "002_orders.sql": dbmate("CREATE TABLE orders (id INTEGER)"),
        },
    )
    watcher = start_watch("db", "--url", db.url, "--reset")
    watcher.expect(r"^watching db")
    # Something outside the migrations, which the reset must drop with the database.
    db.query("CREATE TABLE scratch (id INTEGER)")

    save(app / "002_orders.sql", dbmate("CREATE TABLE orders (id INTEGER, total INTEGER)"))
    banner = watcher.expect(r"^==> ")
    assert "app/002_orders.sql changed since it was applied" in banner
    assert "RESETTING the database: dropping and recreating" in banner
    watcher.expect(r"applying 001_items\.sql \.\.\. applied")
    watcher.expect(r"applying 002_orders\.sql \.\.\. applied")
    watcher.expect(r"^watching db")
    assert db.tables() == {"app", "items", "orders"}
    assert columns(db, "orders") == {"id", "total"}
    assert watcher.interrupt() == 0


def test_deleted_and_out_of_order_files_are_reconciled(
    sqlite_db: Database, tmp_path: Path, start_watch: Any
) -> None:
    app = write_tree(
        tmp_path / "db" / "app",
        {
            "001_items.sql": dbmate("CREATE TABLE items (a INT)", "DROP TABLE items"),
            "005_orders.sql": dbmate("CREATE TABLE orders (a INT)", "DROP TABLE orders"),
        },
    )
    watcher = start_watch("db", "--url", sqlite_db.url)
    watcher.expect(r"^watching db")
    # A file older than the newest applied one: revert to before it, apply in order.
    save(app / "003_users.sql", dbmate("CREATE TABLE users (a INT)", "DROP TABLE users"))
    banner = watcher.expect(r"^==> ")
    assert "app/003_users.sql is new but older than the newest applied migration" in banner
    assert "REVERTING set 'app' back to version 1" in banner
    watcher.expect(r"reverting 005_orders\.sql \.\.\. reverted")
    watcher.expect(r"applying 003_users\.sql \.\.\. applied")
    watcher.expect(r"applying 005_orders\.sql \.\.\. applied")
    watcher.expect(r"^watching db")
    assert [row[0] for row in sqlite_db.tracking("app")] == [1, 3, 5]
    # A deleted applied file: reverted with its recorded down section.
    (app / "005_orders.sql").unlink()
    banner = watcher.expect(r"^==> ")
    assert "app/005_orders.sql was deleted after it was applied" in banner
    watcher.expect(r"reverting 005_orders\.sql \(down section recorded when applied\)")
    watcher.expect(r"^watching db")
    assert "orders" not in sqlite_db.tables()
    assert [row[0] for row in sqlite_db.tracking("app")] == [1, 3]
    assert watcher.interrupt() == 0


def test_a_dirty_migration_is_resumed_on_the_next_save(
    mysql_db: Database, tmp_path: Path, start_watch: Any
) -> None:
    app = write_tree(
        tmp_path / "db" / "app", {"001_items.sql": dbmate("CREATE TABLE items (a INT)")}
    )
    watcher = start_watch("db", "--url", mysql_db.url)
    watcher.expect(r"^watching db")
    # DDL on MySQL commits statement by statement: the first one stays, the second fails.
    save(app / "002_more.sql", dbmate("CREATE TABLE one (a INT);\nCREATE TABLE items (a INT)"))
    watcher.expect(r"^app: applying 002_more\.sql \.\.\. FAILED")
    watcher.expect(r"002_more\.sql is now dirty: 1 of its 2 statement", stream="err")
    watcher.expect(r"^watching db")
    save(app / "002_more.sql", dbmate("CREATE TABLE one (a INT);\nCREATE TABLE two (a INT)"))
    watcher.expect(r"^app: applying 002_more\.sql from statement 2 \.\.\. applied")
    watcher.expect(r"^watching db")
    assert {"one", "two"} <= mysql_db.tables()
    assert [row[1] for row in mysql_db.tracking("app")] == ["applied", "applied"]
    assert watcher.interrupt() == 0


def test_without_reset_an_empty_down_section_is_reported_and_watching_goes_on(
    sqlite_db: Database, tmp_path: Path, start_watch: Any
) -> None:
    app = write_tree(
        tmp_path / "db" / "app", {"001_items.sql": dbmate("CREATE TABLE items (a INT)")}
    )
    watcher = start_watch("db", "--url", sqlite_db.url)
    watcher.expect(r"^watching db")
    save(app / "001_items.sql", dbmate("CREATE TABLE items (a INT, b INT)"))
    watcher.expect(r"^==> app/001_items\.sql changed since it was applied: REVERTING")
    watcher.expect(r"down section recorded when 001_items\.sql was applied is empty", stream="err")
    watcher.expect(r"restart it with --reset", stream="err")
    watcher.expect(r"^\(still watching", stream="err")
    watcher.expect(r"^watching db")
    # Restoring the file as it was applied ends the drift.
    save(app / "001_items.sql", dbmate("CREATE TABLE items (a INT)"))
    watcher.expect(r"^Nothing to apply: every set is up to date\.")
    assert watcher.interrupt() == 0


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_broken_file_never_kills_the_watcher(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, start_watch: Any
) -> None:
    db: Database = request.getfixturevalue(f"{engine}_db")
    app = write_tree(
        tmp_path / "db" / "app", {"001_items.sql": dbmate("CREATE TABLE items (a INT)")}
    )
    watcher = start_watch("db", "--url", db.url)
    watcher.expect(r"^watching db")

    # A dbmate file without its sections: invalid, nothing runs.
    save(app / "002_orders.sql", "CREATE TABLE orders (a INT);\n")
    watcher.expect(r"^error: set 'app': file 002_orders\.sql: .*migrate:up", stream="err")
    watcher.expect(r"^watching db")
    # A statement the database rejects: rolled back, reported.
    save(
        app / "002_orders.sql", dbmate("CREATE TABLE orders (a INT);\nCREATE TABLE orders (b INT)")
    )
    watcher.expect(r"^app: applying 002_orders\.sql \.\.\. FAILED")
    watcher.expect(
        r"^error: applying failed: set 'app', 002_orders\.sql, statement 2", stream="err"
    )
    watcher.expect(r"^watching db")
    # A malformed name.
    save(app / "3x_bad.sql", dbmate("SELECT 1"))
    watcher.expect(r"^error: .*3x_bad\.sql", stream="err")
    watcher.expect(r"^watching db")
    (app / "3x_bad.sql").unlink()
    watcher.expect(r"^watching db")
    # The fixed save retries and applies.
    save(app / "002_orders.sql", dbmate("CREATE TABLE orders (a INT)"))
    watcher.expect(r"^app: applying 002_orders\.sql \.\.\. applied")
    eventually(lambda: "orders" in db.tables(), "table orders appearing", watcher)
    assert watcher.interrupt() == 0


def test_start_errors_have_exit_codes(tmp_path: Path, start_watch: Any) -> None:
    missing = start_watch("nowhere", "--url", f"sqlite:///{tmp_path}/x.db")
    assert missing.proc.wait(timeout=DEADLINE) == 5
    missing.expect(r"^error: migrations path nowhere does not exist", stream="err")
    write_tree(tmp_path / "db" / "app", {"001_items.sql": dbmate("SELECT 1")})
    unknown_set = start_watch("db", "--url", f"sqlite:///{tmp_path}/x.db", "--set", "nope")
    assert unknown_set.proc.wait(timeout=DEADLINE) == 2
    unknown_set.expect(r"^error: no set named 'nope'", stream="err")
    unreachable = start_watch(
        "db", "--url", "postgresql://nobody:s3cret@127.0.0.1:1/x", "--connect-timeout", "2"
    )
    assert unreachable.proc.wait(timeout=DEADLINE) == 6
    unreachable.expect(r"^error: .*connect", stream="err")
    assert "s3cret" not in unreachable.output()


def test_sigterm_stops_cleanly(sqlite_db: Database, tmp_path: Path, start_watch: Any) -> None:
    write_tree(tmp_path / "db" / "app", {"001_items.sql": dbmate("CREATE TABLE items (a INT)")})
    watcher = start_watch("db", "--url", sqlite_db.url)
    watcher.expect(r"^watching db")
    watcher.proc.send_signal(signal.SIGTERM)
    assert watcher.proc.wait(timeout=DEADLINE) == 0


def test_python_api_stops_on_its_event(sqlite_db: Database, tmp_path: Path) -> None:
    app = write_tree(
        tmp_path / "db" / "app", {"001_items.sql": dbmate("CREATE TABLE items (a INT)")}
    )
    stop = threading.Event()
    events: list[WatchEvent] = []
    seen = threading.Condition()

    def on_event(event: WatchEvent) -> None:
        with seen:
            events.append(event)
            seen.notify_all()

    def wait_for(kind: str, count: int) -> None:
        with seen:
            assert seen.wait_for(
                lambda: sum(e.kind == kind for e in events) >= count, timeout=DEADLINE
            ), [e.message for e in events]

    thread = threading.Thread(
        target=whimbrel.watch,
        args=(tmp_path / "db", sqlite_db.url),
        kwargs={"stop_event": stop, "on_event": on_event},
    )
    thread.start()
    try:
        wait_for("watching", 1)
        save(app / "002_orders.sql", dbmate("CREATE TABLE orders (a INT)"))
        wait_for("watching", 2)
        applied = [e.result for e in events if e.kind == "applied"]
        assert [[s.file for s in r.steps] for r in applied if r] == [
            ["001_items.sql"],
            ["002_orders.sql"],
        ]
        assert events[0].kind == "created"
    finally:
        stop.set()
        thread.join(timeout=DEADLINE)
    assert not thread.is_alive()
    assert "orders" in sqlite_db.tables()
