"""PostgreSQL gets small migrations that each run in a transaction several per round trip
(each still in its own transaction, with its tracking row). Whatever stops a round trip
part-way, the migrations before the one at fault are applied and reported, and the rest
are not; each migration records its own time and starts from a clean session."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import Database, both_pg_clients, run_cli, write_tree
from test_pg_client import _interrupt_while_sleeping, _still_running
from whimbrel import engine
from whimbrel.discovery import Section


def _five(tmp_path: Path, third: str) -> Path:
    files = {f"00{n}_m{n}.up.sql": f"CREATE TABLE m{n} (id INT);" for n in (1, 2, 4, 5)}
    files["003_m3.up.sql"] = third
    return write_tree(tmp_path / "app", files)


@both_pg_clients
@pytest.mark.parametrize(
    ("third", "line", "message"),
    [
        # Fails as it runs: the two before it had committed.
        ("CREATE TABLE m3 (id INT);\n\nSELECT 1/0;\n", 3, "division by zero"),
        # Fails to parse: PostgreSQL parses a whole round trip before it runs any of it.
        ("CREATE TABLE m3 (id INT);\n\n  CREATE TABEL oops (id INT);\n", 3, 'near "TABEL"'),
    ],
    ids=["runtime", "syntax"],
)
def test_a_failure_in_a_round_trip_keeps_the_migrations_before_it(
    postgres_db: Database, tmp_path: Path, third: str, line: int, message: str
) -> None:
    tree = _five(tmp_path, third)
    result = run_cli("migrations", "apply", str(tree), "--url", postgres_db.url)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[0].startswith("app: applying 001_m1.up.sql ... applied")
    assert result.stdout.splitlines()[1].startswith("app: applying 002_m2.up.sql ... applied")
    assert result.stdout.splitlines()[2] == "app: applying 003_m3.up.sql ... FAILED"
    assert f"003_m3.up.sql, statement 2 of 2 (line {line})" in result.stderr
    assert message in result.stderr
    assert "nothing of 003_m3.up.sql was applied" in result.stderr
    assert [r[:2] for r in postgres_db.tracking("app")] == [(1, "applied"), (2, "applied")]
    assert {"m1", "m2"} <= postgres_db.tables()
    assert not {"m3", "m4", "m5"} & postgres_db.tables()


@both_pg_clients
def test_ctrl_c_in_a_round_trip_reports_exactly_what_committed(
    postgres_db: Database, tmp_path: Path
) -> None:
    tree = _five(tmp_path, "CREATE TABLE m3 (id INT);\nSELECT pg_sleep(30);\n")
    returncode, out, err, _ = _interrupt_while_sleeping(
        postgres_db, "apply", str(tree), "-o", "json"
    )
    assert returncode == 130, err
    document = json.loads(out)
    assert [m["file"] for m in document["migrations"]] == ["001_m1.up.sql", "002_m2.up.sql"]
    assert document["error"]["exit_code"] == 130
    assert document["error"]["message"] == (
        "interrupted while applying 003_m3.up.sql of set 'app': it ran in a transaction, so "
        "nothing of it was applied. Migrations after it did not run."
    )
    assert not _still_running(postgres_db)  # cancelled on the server
    assert [r[:2] for r in postgres_db.tracking("app")] == [(1, "applied"), (2, "applied")]
    assert not {"m3", "m4", "m5"} & postgres_db.tables()


@both_pg_clients
def test_each_migration_of_a_round_trip_has_its_own_time_and_a_clean_session(
    postgres_db: Database, tmp_path: Path
) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "001_elsewhere.up.sql": "CREATE SCHEMA other;\nSET search_path TO other;\n"
            "CREATE TABLE in_other (id INT);\n",
            "002_slow.up.sql": "CREATE TABLE slow (id INT);\nSELECT pg_sleep(0.4);\n",
            "003_quick.up.sql": "CREATE TABLE quick (id INT);\n",
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", postgres_db.url)
    assert result.returncode == 0, result.stderr
    # 002 and 003 ran after 001's SET, in a reset session: in the default schema.
    placed = postgres_db.query(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_name IN ('in_other', 'slow', 'quick') ORDER BY table_name"
    )
    assert placed == [("other", "in_other"), ("public", "quick"), ("public", "slow")]
    durations = dict(postgres_db.query("SELECT version, duration_ms FROM app"))
    assert durations[2] >= 400
    assert durations[1] < 400 and durations[3] < 400
    applied_at = [r[0] for r in postgres_db.query("SELECT applied_at FROM app ORDER BY version")]
    assert applied_at[0] < applied_at[1] < applied_at[2]


def _step(number: int, sql: str, *, atomic: bool = True) -> engine.Step:
    return engine.Step(
        set_name="app",
        direction="up",
        version=number,
        name=f"m{number}",
        file=f"{number}_m.up.sql",
        section=Section(f"{number}_m.up.sql", sql, 0, True),
        migration=None,
        atomic=atomic,
    )


def _trips(driver: Any, steps: list[engine.Step]) -> list[list[int]]:
    return [[s.version for s in trip] for trip in engine._round_trips(driver, steps)]


def test_round_trips_are_bounded_and_leave_big_or_stepwise_migrations_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batching = SimpleNamespace(batches_atomic=True)
    small = [_step(n, "SELECT 1;") for n in range(1, 121)]
    assert [len(t) for t in _trips(batching, small)] == [50, 50, 20]
    assert _trips(SimpleNamespace(batches_atomic=False), small[:3]) == [[1], [2], [3]]

    big = _step(3, "x" * (engine._TRIP_CHARS + 1))
    stepwise = _step(5, "ALTER TABLE t ADD c INT;", atomic=False)
    steps = [small[0], small[1], big, small[3], stepwise, small[5]]
    assert _trips(batching, steps) == [[1, 2], [3], [4], [5], [6]]

    # Never more SQL in one round trip than the limit.
    half = engine._TRIP_CHARS // 2
    halves = [_step(n, "y" * half) for n in range(1, 6)]
    assert _trips(batching, halves) == [[1, 2], [3, 4], [5]]

    # A section sent in pieces (see test_big_files) is never part of a round trip.
    monkeypatch.setattr(engine, "_PIECE_CHARS", 5)
    assert _trips(batching, [_step(1, "SELECT 1;"), _step(2, "SELECT 22;")]) == [[1], [2]]


def test_timing_of_a_round_trip_is_shared(postgres_db: Database, tmp_path: Path) -> None:
    """The report gives each migration of a round trip its share of the time."""
    import whimbrel

    tree = _five(tmp_path, "CREATE TABLE m3 (id INT);\nSELECT pg_sleep(0.25);\n")
    started = time.perf_counter()
    result = whimbrel.apply(str(tree), postgres_db.url)
    elapsed_ms = (time.perf_counter() - started) * 1000
    durations = [step.duration_ms for step in result.steps]
    assert len(set(durations)) == 1  # one round trip, five shares
    assert durations[0] >= 250 / 5 and sum(d or 0 for d in durations) <= elapsed_ms
