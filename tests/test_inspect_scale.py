"""inspect at scale: its table and comparison, built for 10,000 rows, against straightforward
versions of both (what they were before they were made fast): same states, same bytes; and
the pause of the garbage collector around discovery and reading the tracking tables."""

from __future__ import annotations

import gc
import io
import json
import random
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import Database, run_cli, write_tree
from whimbrel import api
from whimbrel._fast import paused_gc
from whimbrel.discovery import MigrationSet, discover
from whimbrel.drivers.base import TrackingRow, tracking_row
from whimbrel.output import inspect_json, print_inspect
from whimbrel.plan import MigrationState, SetState, Status, compare


def reference_table(states: Sequence[SetState]) -> str:
    """The plain table as print_inspect wrote it row by row, one format() per row."""
    out = io.StringIO()
    headers = ("VERSION", "NAME", "STATUS", "APPLIED AT (UTC)", "FILE")
    for index, state in enumerate(states):
        if index:
            out.write("\n")
        counts: dict[str, int] = {}
        for m in state.migrations:
            counts[m.status] = counts.get(m.status, 0) + 1
        if not state.migrations:
            summary = "no migrations"
        elif state.up_to_date:
            summary = f"up to date ({counts['applied']} applied)"
        else:
            order = ("applied", "pending", "modified", "missing", "dirty")
            summary = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
        out.write(f"{state.name} (table {state.set.table}): {summary}\n")
        rows = []
        for m in state.migrations:
            applied = m.applied_at
            shown = "-"
            if applied is not None:
                if applied.tzinfo is None:
                    applied = applied.replace(tzinfo=UTC)
                shown = applied.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
            rows.append((str(m.version), m.name, m.status, shown, m.file))
        if not rows:
            continue
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        line = "  " + "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
        out.write("\n".join(line.format(*row).rstrip() for row in (headers, *rows)) + "\n")
        problems = [m for m in state.migrations if m.status in ("dirty", "modified")]
        for m in problems:
            assert m.status == "dirty" or m.recorded_sha256 is not None
        for m in problems:
            if m.status == "modified":
                out.write(
                    f"  ! {m.file}: file sha256 {m.sha256} differs from applied "
                    f"{m.recorded_sha256}\n"
                )
            else:
                from whimbrel.engine import describe_dirty

                out.write(f"  ! {describe_dirty(m)}\n")
    return out.getvalue()


def reference_json(states: Sequence[SetState]) -> str:
    """inspect -o json as it was written: a dict per migration, then json.dumps."""

    def iso(value: datetime | None) -> str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def migration(state: MigrationState) -> dict[str, object]:
        doc: dict[str, object] = {
            "version": str(state.version),
            "name": state.name,
            "file": state.file,
            "status": state.status,
            "sha256": state.sha256,
            "applied_at": iso(state.applied_at),
        }
        row = state.row
        if row is not None:
            doc["recorded_sha256"] = row.sha256
            duration = row.duration_ms
            doc["duration_ms"] = round(duration, 3) if duration is not None else None
            doc["applied_by"] = row.applied_by
        if state.status == "dirty" and row is not None:
            doc["dirty"] = {
                "direction": "up" if row.status == "applying" else "down",
                "statements_done": row.statements_done,
                "error": row.error,
            }
        if id(state) in late:
            doc["out_of_order"] = True
        return doc

    late = {id(m) for state in states for m in state.out_of_order}
    sets = [
        {
            "name": state.name,
            "table": state.set.table,
            "path": str(state.set.path),
            "migrations": [migration(m) for m in state.migrations],
        }
        for state in states
    ]
    return json.dumps({"sets": sets, "error": None}, indent=2)


def reference_compare(
    migration_set: MigrationSet, rows: list[TrackingRow] | None
) -> list[tuple[int, Status]]:
    files = {m.version: m for m in migration_set.migrations}
    recorded = {row.version: row for row in rows or []}
    result: list[tuple[int, Status]] = []
    for version in sorted(files.keys() | recorded.keys()):
        row = recorded.get(version)
        migration = files.get(version)
        status: Status
        if row is None:
            status = "pending"
        elif row.status != "applied":
            status = "dirty"
        elif migration is None:
            status = "missing"
        elif migration.sha256 != row.sha256:
            status = "modified"
        else:
            status = "applied"
        result.append((version, status))
    return result


def _statuses(states: Sequence[MigrationState]) -> list[tuple[int, Status]]:
    return [(m.version, m.status) for m in states]


# When each migration was applied, as each database stores it: two in one second, apart by
# microseconds (one line of the table each, the same time shown), the last microsecond of a
# second, the turn of a year, and on SQLite a time without its zone (UTC) and one with an
# offset (shown in UTC).
_TIMES = {
    1: "2026-11-21 10:27:05.000001",
    2: "2026-11-21 10:27:05.999999",
    3: "2026-11-21 10:27:06.000000",
    4: "2026-12-31 23:59:59.999999",
    5: "2027-01-01 00:00:00.5",
}
_SQLITE_TIMES = {
    **{v: t.replace(" ", "T") + "Z" for v, t in _TIMES.items()},
    6: "2026-11-21T10:27:05.25",  # no zone: UTC
    7: "2026-11-21T12:27:05.75+02:00",  # 10:27:05 UTC
}


def _tree(tmp_path: Path) -> Path:
    files = {
        f"app/{v:03d}_m{v}.sql": f"-- migrate:up\nCREATE TABLE m{v} (id INT);\n-- migrate:down\n"
        for v in range(1, 8)
    }
    files["app/008_g.up.sql"] = "CREATE TABLE g (id INT);\n"
    files["app/008_g.down.sql"] = "DROP TABLE g;\n"
    files["app/009_pending.sql"] = "-- migrate:up\nCREATE TABLE p (id INT);\n-- migrate:down\n"
    files["other/001_x.sql"] = "-- migrate:up\nCREATE TABLE x (id INT);\n-- migrate:down\n"
    return write_tree(tmp_path / "db", files)


def test_inspect_table_matches_the_row_by_row_rendering(db: Database, tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    pending = tree / "app" / "009_pending.sql"
    held = pending.read_text()
    pending.unlink()
    assert run_cli("migrations", "apply", str(tree), "--url", db.url).returncode == 0
    pending.write_text(held)
    times = _SQLITE_TIMES if db.dialect == "sqlite" else _TIMES
    zone = " +00" if db.dialect == "postgres" else ""  # the session's zone may be another
    for version, when in times.items():
        db.query(f"UPDATE app SET applied_at = '{when}{zone}' WHERE version = {version}")
    # Modified (a file changed after it ran), missing (a row without its file) and dirty.
    (tree / "app" / "002_m2.sql").write_text(
        (tree / "app" / "002_m2.sql").read_text() + "-- edited\n"
    )
    (tree / "app" / "003_m3.sql").unlink()
    db.query("UPDATE app SET status = 'applying', statements_done = 0 WHERE version = 4")

    states = api.inspect(tree, db.url)
    assert _statuses(states[0].migrations) == [
        (1, "applied"),
        (2, "modified"),
        (3, "missing"),
        (4, "dirty"),
        (5, "applied"),
        (6, "applied"),
        (7, "applied"),
        (8, "applied"),
        (9, "pending"),
    ]
    written = io.StringIO()
    print_inspect(states, written)
    assert written.getvalue() == reference_table(states)
    lines = written.getvalue().splitlines()
    assert "2026-11-21 10:27:05" in lines[2] and "2026-11-21 10:27:05" in lines[3]
    assert "2026-12-31 23:59:59" in lines[5] and "2027-01-01 00:00:00" in lines[6]
    shown = run_cli("migrations", "inspect", str(tree), "--url", db.url)
    assert shown.returncode == 4
    assert shown.stdout == written.getvalue()
    assert inspect_json(states) == reference_json(states)
    as_json = run_cli("migrations", "inspect", str(tree), "--url", db.url, "-o", "json")
    assert as_json.stdout == reference_json(states) + "\n"
    assert '"dirty": {' in as_json.stdout and '"status": "missing"' in as_json.stdout


def test_table_of_times_far_from_now_and_without_zone(tmp_path: Path) -> None:
    """Times whose timestamp is not exact to the microsecond as a float are formatted
    one by one; naive ones are UTC."""
    tree = write_tree(tmp_path / "s", {"1_a.up.sql": "SELECT 1;", "2_b.up.sql": "SELECT 2;"})
    (migration_set,) = discover(tree, lazy=True)

    def row(version: int, when: datetime) -> TrackingRow:
        m = migration_set.migrations[version - 1]
        values = ("s", version, m.name, m.file, m.sha256, "applied", 1, None, None, 0, when)
        return tracking_row((*values, 1.0, "me"), lambda value: value)  # type: ignore[arg-type]

    for first, second in [
        (datetime(9999, 12, 31, 23, 59, 59, 999999), datetime(9999, 12, 31, 23, 59, 59, 1)),
        (datetime(1, 1, 1, 0, 0, 0, 999999, tzinfo=UTC), datetime(1, 1, 1, 0, 0, 1, 0)),
        (datetime(1969, 12, 31, 23, 59, 59, 500000), datetime(1970, 1, 1, 0, 0, 0, 500000)),
    ]:
        states = [compare(migration_set, [row(1, first), row(2, second)])]
        written = io.StringIO()
        print_inspect(states, written)
        assert written.getvalue() == reference_table(states)


def test_compare_matches_the_reference_in_any_order(tmp_path: Path) -> None:
    files = {f"{v}_m{v}.up.sql": f"SELECT {v};" for v in range(1, 30)}
    (migration_set,) = discover(write_tree(tmp_path / "s", files), lazy=True)
    rng = random.Random(5)
    for _ in range(200):
        rows = []
        for version in rng.sample(range(1, 40), rng.randrange(0, 30)):
            sha = rng.choice(["x" * 64, *(m.sha256 for m in migration_set.migrations[:5])])
            status = rng.choice(["applied", "applied", "applying", "reverting"])
            values = ("s", version, f"m{version}", f"{version}_m{version}.up.sql", sha, status)
            rest = (0, None, None, 0, None, None, None)
            rows.append(tracking_row((*values, *rest), lambda value: None))
        kept = [m for m in migration_set.migrations if rng.random() < 0.8]
        shuffled = kept[:]
        if rng.random() < 0.5:
            rng.shuffle(shuffled)
        given = MigrationSet(migration_set.name, migration_set.path, tuple(shuffled))
        recorded = rows if rows or rng.random() < 0.5 else None  # None: no tracking table
        state = compare(given, recorded)
        assert _statuses(state.migrations) == reference_compare(given, recorded)
        assert state.table_exists == (recorded is not None)
        assert [m.migration for m in state.migrations if m.migration is not None] == sorted(
            kept, key=lambda m: m.version
        )


@pytest.mark.parametrize("count", [0, 1])
def test_empty_and_single_sets_render(count: int, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "s", {f"{v}_m.up.sql": "SELECT 1;" for v in range(1, count + 2)})
    (migration_set,) = discover(tree, lazy=True)
    empty = MigrationSet("s", tree, ())
    states = [compare(empty, None), compare(migration_set, None)]
    written = io.StringIO()
    print_inspect(states, written)
    assert written.getvalue() == reference_table(states)


def test_paused_gc_restores_the_collector_as_it_found_it() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        assert not gc.isenabled()
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # the caller turned it off: it stays off
    finally:
        gc.enable()
    # What the program froze stays frozen.
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with paused_gc():
            made = [[] for _ in range(1000)]
        assert gc.get_freeze_count() == frozen and len(made) == 1000
    finally:
        gc.unfreeze()


def test_objects_made_while_paused_are_still_collected() -> None:
    """A cycle made while the collector is paused is garbage the next full collection frees."""

    class Node:
        def __init__(self) -> None:
            self.me = self

    collected = []
    with paused_gc():
        node = Node()
        weakref.finalize(node, collected.append, True)
        del node
    assert not collected
    gc.collect()
    assert collected == [True]


def test_rows_are_read_in_version_order_whatever_order_they_were_applied_in(
    db: Database, tmp_path: Path
) -> None:
    """read_rows_many sorts without ORDER BY: rows inserted out of order still come back
    by version."""
    tree = tmp_path / "app"
    write_tree(tree, {"3_c.up.sql": "CREATE TABLE c (id INT);"})
    assert run_cli("migrations", "apply", str(tree), "--url", db.url).returncode == 0
    write_tree(tree, {"1_a.up.sql": "CREATE TABLE a (id INT);", "2_b.up.sql": "SELECT 1;"})
    applied = run_cli("migrations", "apply", str(tree), "--url", db.url, "--allow-out-of-order")
    assert applied.returncode == 0, applied.stderr
    from whimbrel.drivers import connect
    from whimbrel.urls import parse_url

    driver = connect(parse_url(db.url))
    try:
        rows = driver.read_rows_many(["app"])["app"]
    finally:
        driver.close()
    assert [row.version for row in rows] == [1, 2, 3]


_ODD_TEXT = [
    *("", "plain", 'quo"te \\ back', "ünï ☃ 𝄞", "line\nbreak\ttab\x01", "\u2028", "</script>"),
]
_ODD_FLOATS = [0.0, -1.5, 1e-7, 123456.78951, 1e300, float("nan"), float("inf"), float("-inf")]
_ODD_TIMES = [
    datetime(2026, 11, 21, 10, 27, 5, 0, tzinfo=UTC),
    datetime(2026, 11, 21, 10, 27, 5, 999999),  # naive: UTC
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # strftime does not pad the year
    datetime.fromisoformat("2026-11-21T12:27:05.5+02:00"),
]


def test_inspect_json_matches_json_dumps_for_odd_values(tmp_path: Path) -> None:
    """Names, errors and who applied with quotes, controls and non-ASCII; NaN and infinite
    durations; None wherever a column allows it; times far off and without zone."""
    files = {f"{v}_m{v}.up.sql": f"SELECT {v};" for v in range(1, 12)}
    (migration_set,) = discover(write_tree(tmp_path / "s", files), lazy=True)
    rng = random.Random(7)
    for _ in range(60):
        rows = []
        for version in rng.sample(range(1, 16), rng.randrange(0, 15)):
            values = (
                "s",
                version,
                rng.choice(_ODD_TEXT),
                rng.choice(_ODD_TEXT) or "f.sql",
                rng.choice(["x" * 64, *(m.sha256 for m in migration_set.migrations)]),
                rng.choice(["applied", "applied", "applying", "reverting"]),
                rng.randrange(0, 3),
                rng.choice([None, "y" * 64]),
                rng.choice([None, *_ODD_TEXT]),
                rng.randrange(0, 2),
                rng.choice([None, *_ODD_TIMES]),
                rng.choice([None, *_ODD_FLOATS]),
                rng.choice([None, *_ODD_TEXT]),
            )
            rows.append(tracking_row(values, lambda value: value))  # type: ignore[arg-type,return-value]
        states = [compare(migration_set, rows or None), compare(migration_set, [])]
        assert inspect_json(states) == reference_json(states)
    assert inspect_json([]) == reference_json([])
    empty = MigrationSet("e", tmp_path / "e", ())
    assert inspect_json([compare(empty, None)]) == reference_json([compare(empty, None)])
