"""The `whimbrel migrations` commands, run as a user runs them, on all three databases."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from conftest import EXAMPLES, Database, both_pg_clients, run_cli, whimbrel_executable, write_tree


def dracon(tmp_path: Path) -> Path:
    tree = tmp_path / "migrations"
    shutil.copytree(EXAMPLES / "dracon", tree)
    return tree


def inspect_json(tree: Path, db: Database, *extra: str) -> dict[str, Any]:
    result = run_cli("migrations", "inspect", str(tree), "--url", db.url, "-o", "json", *extra)
    assert result.returncode in (0, 3, 4), result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def statuses(doc: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    return {s["name"]: [(m["version"], m["status"]) for m in s["migrations"]] for s in doc["sets"]}


@both_pg_clients
def test_apply_inspect_revert_dracon_tree(db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    if db.dialect == "sqlite":
        before = run_cli("migrations", "inspect", str(tree), "--url", db.url)
        assert before.returncode == 6 and "does not exist" in before.stderr
    else:
        before = run_cli("migrations", "inspect", str(tree), "--url", db.url)
        assert before.returncode == 3, before.stderr
        assert "pending" in before.stdout

    applied = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert applied.returncode == 0, applied.stderr
    assert "enrichments: applying 001_init.up.sql ... applied in" in applied.stdout
    assert "Applied 5 migrations in 2 sets" in applied.stdout
    assert {"enrichments", "experimental_component", "enriched_findings", "experiments"} <= (
        db.tables()
    )

    doc = inspect_json(tree, db)
    assert statuses(doc) == {
        "enrichments": [("1", "applied"), ("2", "applied"), ("3", "applied")],
        "experimental_component": [("1", "applied"), ("2", "applied")],
    }
    first = doc["sets"][0]["migrations"][0]
    assert first["file"] == "001_init.up.sql"
    expected_sha = hashlib.sha256((tree / "enrichments/001_init.up.sql").read_bytes()).hexdigest()
    assert first["sha256"] == expected_sha
    assert first["applied_at"].endswith("Z")
    assert doc["sets"][0]["table"] == "enrichments"
    # The tracking table records the same hash.
    assert db.tracking("enrichments")[0][2] == expected_sha

    ok = run_cli("migrations", "inspect", str(tree), "--url", db.url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    again = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert again.returncode == 0
    assert "Nothing to apply" in again.stdout

    # Default revert: the newest migration of each set.
    reverted = run_cli("migrations", "revert", str(tree), "--url", db.url)
    assert reverted.returncode == 0, reverted.stderr
    assert statuses(inspect_json(tree, db)) == {
        "enrichments": [("1", "applied"), ("2", "applied"), ("3", "pending")],
        "experimental_component": [("1", "applied"), ("2", "pending")],
    }
    assert db.query("SELECT count(*) FROM experiments")[0][0] == 0  # table still there

    everything = run_cli("migrations", "revert", str(tree), "--url", db.url, "--all")
    assert everything.returncode == 0, everything.stderr
    assert "enriched_findings" not in db.tables() and "experiments" not in db.tables()
    assert db.tracking("enrichments") == []


def test_ftl_dbmate_tree(db: Database) -> None:
    tree = EXAMPLES / "ftl" / "db"
    assert run_cli("migrations", "apply", str(tree), "--url", db.url).returncode == 0
    doc = inspect_json(tree, db)
    assert statuses(doc) == {
        "testdb": [("20231103205514", "applied"), ("20240704103403", "applied")]
    }
    assert {"requests", "module_secrets", "testdb"} <= db.tables()
    result = run_cli("migrations", "revert", str(tree), "--url", db.url, "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert "requests" not in db.tables()


def test_database_url_from_environment(sqlite_db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    result = run_cli("migrations", "apply", str(tree) + "/", env={"DATABASE_URL": sqlite_db.url})
    assert result.returncode == 0, result.stderr
    missing = run_cli("migrations", "apply", str(tree))
    assert missing.returncode == 2
    assert "DATABASE_URL" in missing.stderr


def test_dry_run_changes_nothing(db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    result = run_cli("migrations", "apply", str(tree), "--url", db.url, "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Would apply, in this order:"
    assert lines[1].startswith("  enrichments: 001_init.up.sql (2 statements")
    assert lines[4].startswith("  experimental_component: 001_init.up.sql")
    assert "nothing was changed" in result.stdout
    if db.dialect == "sqlite":
        assert not Path(db.name).exists()
    else:
        assert db.tables() == set()


def test_set_selection(db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    result = run_cli("migrations", "apply", str(tree), "--url", db.url, "--set", "enrichments")
    assert result.returncode == 0, result.stderr
    assert "experimental_component" not in db.tables()
    unknown = run_cli("migrations", "apply", str(tree), "--url", db.url, "--set", "nope")
    assert unknown.returncode == 2
    assert "no set named 'nope'" in unknown.stderr and "enrichments" in unknown.stderr


def test_revert_to_version_and_its_rules(sqlite_db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    url = sqlite_db.url
    assert run_cli("migrations", "apply", str(tree), "--url", url).returncode == 0
    needs_set = run_cli("migrations", "revert", str(tree), "--url", url, "--to", "1")
    assert needs_set.returncode == 2 and "--set" in needs_set.stderr
    bad = run_cli(
        "migrations", "revert", str(tree), "--url", url, "--set", "enrichments", "--to", "7"
    )
    assert bad.returncode == 2 and "not an applied version" in bad.stderr
    both = run_cli("migrations", "revert", str(tree), "--url", url, "--all", "--steps", "1")
    assert both.returncode == 2
    result = run_cli(
        "migrations", "revert", str(tree), "--url", url, "--set", "enrichments", "--to=1"
    )
    assert result.returncode == 0, result.stderr
    assert statuses(inspect_json(tree, sqlite_db))["enrichments"] == [
        ("1", "applied"),
        ("2", "pending"),
        ("3", "pending"),
    ]


def test_revert_without_down_is_refused_before_anything_runs(
    sqlite_db: Database, tmp_path: Path
) -> None:
    tree = write_tree(
        tmp_path / "s",
        {
            "1_a.up.sql": "CREATE TABLE a (x int);",
            "1_a.down.sql": "DROP TABLE a;",
            "2_b.up.sql": "CREATE TABLE b (x int);",
        },
    )
    assert run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url).returncode == 0
    result = run_cli("migrations", "revert", str(tree), "--url", sqlite_db.url, "--all")
    assert result.returncode == 8
    assert "2_b.up.sql has no down migration (no 2_b.down.sql beside it)" in result.stderr
    assert {"a", "b"} <= sqlite_db.tables()


def test_inspect_exit_codes_and_drift(db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    assert run_cli("migrations", "apply", str(tree), "--url", db.url).returncode == 0
    up = tree / "enrichments/002_varchar_to_text.up.sql"
    old_sha = hashlib.sha256(up.read_bytes()).hexdigest()
    up.write_text(up.read_text() + "-- edited\n")
    new_sha = hashlib.sha256(up.read_bytes()).hexdigest()

    drift = run_cli("migrations", "inspect", str(tree), "--url", db.url)
    assert drift.returncode == 4
    assert "modified" in drift.stdout
    refused = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert refused.returncode == 8
    assert "002_varchar_to_text.up.sql was modified" in refused.stderr
    assert old_sha in refused.stderr and new_sha in refused.stderr
    assert run_cli("migrations", "revert", str(tree), "--url", db.url).returncode == 8

    # A new migration plus drift: --allow-drift applies it anyway.
    (tree / "enrichments/004_more.up.sql").write_text("CREATE TABLE more_stuff (x int);\n")
    allowed = run_cli("migrations", "apply", str(tree), "--url", db.url, "--allow-drift")
    assert allowed.returncode == 0, allowed.stderr
    assert "more_stuff" in db.tables()

    (tree / "experimental_component/002_add_new_column.up.sql").unlink()
    (tree / "experimental_component/002_add_new_column.down.sql").unlink()
    doc = inspect_json(tree, db)
    assert ("2", "missing") in statuses(doc)["experimental_component"]
    missing = next(m for m in doc["sets"][1]["migrations"] if m["status"] == "missing")
    assert missing["file"] == "002_add_new_column.up.sql"


def test_pending_is_exit_3_and_drift_wins_as_exit_4(sqlite_db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url, "--set", "enrichments")
    assert run_cli("migrations", "inspect", str(tree), "--url", sqlite_db.url).returncode == 3
    up = tree / "enrichments/001_init.up.sql"
    up.write_text(up.read_text() + "\n")
    assert run_cli("migrations", "inspect", str(tree), "--url", sqlite_db.url).returncode == 4


def test_out_of_order_is_refused_unless_allowed(db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "s",
        {"1_a.up.sql": "CREATE TABLE a (x int);", "3_c.up.sql": "CREATE TABLE c (x int);"},
    )
    assert run_cli("migrations", "apply", str(tree), "--url", db.url).returncode == 0
    (tree / "2_b.up.sql").write_text("CREATE TABLE b (x int);")
    # inspect says what apply will refuse, in its exit code too.
    inspected = run_cli("migrations", "inspect", str(tree), "--url", db.url)
    assert inspected.returncode == 4, inspected.stderr
    assert (
        "! 2_b.up.sql: pending, but older than the newest applied migration (3): apply "
        "refuses it (out of order) unless --allow-out-of-order"
    ) in inspected.stdout
    doc = inspect_json(tree, db)
    late = [m for m in doc["sets"][0]["migrations"] if m.get("out_of_order")]
    assert [(m["file"], m["status"]) for m in late] == [("2_b.up.sql", "pending")]
    refused = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert refused.returncode == 8
    assert "2_b.up.sql is older than the newest applied migration (3)" in refused.stderr
    assert "b" not in db.tables()
    allowed = run_cli("migrations", "apply", str(tree), "--url", db.url, "--allow-out-of-order")
    assert allowed.returncode == 0, allowed.stderr
    assert "b" in db.tables()


@both_pg_clients
def test_foreign_table_with_the_set_name_is_refused(db: Database, tmp_path: Path) -> None:
    if db.dialect == "sqlite":
        write_tree(tmp_path, {"seed/001_x.up.sql": "CREATE TABLE enrichments (id int, name text);"})
        assert (
            run_cli("migrations", "apply", str(tmp_path / "seed"), "--url", db.url).returncode == 0
        )
    else:
        db.query("CREATE TABLE enrichments (id int, name text)")
    db.query("INSERT INTO enrichments VALUES (1, 'keep me')")
    tree = dracon(tmp_path)
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 8
    assert "not a whimbrel tracking table" in result.stderr
    assert db.query("SELECT id, name FROM enrichments") == [(1, "keep me")]
    assert "enriched_findings" not in db.tables()
    assert run_cli("migrations", "inspect", str(tree), "--url", db.url).returncode == 8


def test_invalid_files_exit_5_before_touching_the_database(
    sqlite_db: Database, tmp_path: Path
) -> None:
    tree = dracon(tmp_path)
    (tree / "enrichments/004-bad-name.sql").write_text("SELECT 1;")
    result = run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url)
    assert result.returncode == 5
    assert (
        "set 'enrichments': file 004-bad-name.sql: malformed migration file name" in result.stderr
    )
    assert not Path(sqlite_db.name).exists()


def test_comment_only_file_is_invalid_and_nothing_runs(db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "s",
        {"1_a.up.sql": "CREATE TABLE a (x int);", "2_b.up.sql": "-- just a note\n/* and more */\n"},
    )
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 5
    assert "2_b.up.sql: has no SQL statements (only comments or empty ones)" in result.stderr
    assert "a" not in db.tables()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    assert run_cli("migrations", "apply").returncode == 2
    assert run_cli("migrations", "apply", str(tree), "--url", "oracle://x/y").returncode == 2
    assert run_cli("migrations", "frobnicate").returncode == 2
    result = run_cli("migrations", "revert", str(tree), "--url", "sqlite:///x.db", "--steps", "0")
    assert result.returncode == 2


def test_help_documents_exit_codes() -> None:
    result = run_cli("migrations", "apply", "--help")
    assert result.returncode == 0
    assert "Exit codes:" in result.stdout and "130" in result.stdout


def test_apply_and_revert_json_output(sqlite_db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    result = run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url, "-o", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["command"] == "apply" and doc["dry_run"] is False
    assert [(m["set"], m["version"], m["status"]) for m in doc["migrations"]][:2] == [
        ("enrichments", "1", "applied"),
        ("enrichments", "2", "applied"),
    ]
    assert all(m["duration_ms"] >= 0 and m["transaction"] for m in doc["migrations"])
    reverted = run_cli("migrations", "revert", str(tree), "--url", sqlite_db.url, "-o", "json")
    assert [m["status"] for m in json.loads(reverted.stdout)["migrations"]] == ["reverted"] * 2


def test_inspect_rejects_a_pending_file_apply_would_reject(
    sqlite_db: Database, tmp_path: Path
) -> None:
    tree = write_tree(tmp_path / "app", {"1_a.up.sql": "CREATE TABLE a (id INT);"})
    assert run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url).returncode == 0
    (tree / "2_b.up.sql").write_text("-- only a comment\n")
    assert run_cli("migrations", "inspect", str(tree), "--url", sqlite_db.url).returncode == 5
    assert run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url).returncode == 5


def test_refused_apply_creates_no_sqlite_file(sqlite_db: Database, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "app", {"1_a.up.sql": "-- only a comment\n"})
    assert run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url).returncode == 5
    assert not Path(sqlite_db.name).exists()
    assert not Path(sqlite_db.name + ".whimbrel-lock").exists()


def test_set_creating_its_own_tracking_table_name_is_refused(db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "users",
        {"001_create_users.up.sql": "CREATE TABLE IF NOT EXISTS users (id INT);"},
    )
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 5
    assert "creates a table or view named 'users'" in result.stderr
    assert "Rename the set's folder" in result.stderr
    assert "users" not in (
        db.tables() if db.dialect != "sqlite" or Path(db.name).exists() else set()
    )


@both_pg_clients
def test_failed_first_run_leaves_no_empty_tracking_table(db: Database, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "app", {"1_bad.up.sql": "CREATE TABLE t (id INT);\nSELEC 1;\n"})
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 1
    if db.dialect == "mysql":
        assert db.query("SELECT status FROM app") == [("applying",)]  # dirty is kept
    else:
        assert "app" not in db.tables()


def test_json_output_of_a_failed_run_says_what_ran(sqlite_db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {"1_ok.up.sql": "CREATE TABLE a (id INT);", "2_bad.up.sql": "SELECT 1;\nSELEC 2;\n"},
    )
    result = run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url, "-o", "json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert [(m["file"], m["status"]) for m in doc["migrations"]] == [("1_ok.up.sql", "applied")]
    assert doc["error"]["exit_code"] == 1
    assert (doc["error"]["file"], doc["error"]["statement"], doc["error"]["line"]) == (
        "2_bad.up.sql",
        2,
        2,
    )
    assert doc["error"]["rolled_back"] is True
    assert "error:" in result.stderr


def test_a_reader_that_leaves_early_does_not_stop_the_run(
    sqlite_db: Database, tmp_path: Path
) -> None:
    # `apply | head -1`: the run stopped between two migrations, exit 1, saying nothing.
    tree = write_tree(
        tmp_path / "app", {f"{n:03}_t.up.sql": f"CREATE TABLE t{n} (id INT);" for n in range(300)}
    )
    command = [*whimbrel_executable(), "migrations", "apply", str(tree), "--url", sqlite_db.url]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"app: applying 000_t.up.sql")
        proc.stdout.close()
        stderr = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, stderr
    assert stderr == b""
    assert run_cli("migrations", "inspect", str(tree), "--url", sqlite_db.url).returncode == 0
    assert len(sqlite_db.tracking("app")) == 300


def test_a_reader_that_leaves_early_gets_the_run_s_exit_code_with_2_to_1(
    sqlite_db: Database, tmp_path: Path
) -> None:
    # `whimbrel ... 2>&1 | true`: the refusal's message on the closed pipe ended in exit 1.
    tree = dracon(tmp_path)
    assert run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url).returncode == 0
    up = tree / "enrichments/001_init.up.sql"
    up.write_text(up.read_text() + "-- edited\n")
    command = [*whimbrel_executable(), "migrations", "apply", str(tree), "--url", sqlite_db.url]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        proc.stdout.close()  # gone before anything is written
        assert proc.wait(timeout=60) == 8


def test_json_documents_keep_their_shape_on_refusals_and_errors(
    sqlite_db: Database, tmp_path: Path
) -> None:
    # A refusal printed only {"error": ...}; inspect printed no document at all.
    tree = dracon(tmp_path)
    applied = run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url, "-o", "json")
    assert applied.returncode == 0, applied.stderr
    keys = {"command", "dry_run", "sets", "migrations", "error"}
    assert set(json.loads(applied.stdout)) == keys
    assert json.loads(applied.stdout)["error"] is None
    up = tree / "enrichments/001_init.up.sql"
    up.write_text(up.read_text() + "-- edited\n")
    refused = run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url, "-o", "json")
    assert refused.returncode == 8, refused.stderr
    doc = json.loads(refused.stdout)
    assert set(doc) == keys and doc["migrations"] == [] and doc["command"] == "apply"
    assert doc["error"]["exit_code"] == 8
    assert inspect_json(tree, sqlite_db)["error"] is None
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    failed = run_cli("migrations", "inspect", str(tree), "--url", missing, "-o", "json")
    assert failed.returncode == 6
    assert json.loads(failed.stdout) == {
        "sets": [],
        "error": {"exit_code": 6, "message": json.loads(failed.stdout)["error"]["message"]},
    }


def test_mark_needs_the_outcome(sqlite_db: Database, tmp_path: Path) -> None:
    # click 8.2+ let it through as --not-applied: an applied migration recorded as pending.
    tree = dracon(tmp_path)
    assert run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url).returncode == 0
    args = ("--url", sqlite_db.url, "--set", "experimental_component", "--version", "2")
    result = run_cli("migrations", "mark", str(tree), *args)
    assert result.returncode == 2, result.stdout
    assert "pass --applied or --not-applied" in result.stderr
    assert run_cli("migrations", "inspect", str(tree), "--url", sqlite_db.url).returncode == 0


def test_mark_applied_accepts_an_intended_edit(sqlite_db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    url = sqlite_db.url
    assert run_cli("migrations", "apply", str(tree), "--url", url).returncode == 0
    before = inspect_json(tree, sqlite_db)["sets"][0]["migrations"][1]
    up = tree / "enrichments/002_varchar_to_text.up.sql"
    up.write_text(up.read_text() + "-- a comment, nothing the database needs\n")
    assert run_cli("migrations", "inspect", str(tree), "--url", url).returncode == 4
    marked = run_cli(
        "migrations",
        "mark",
        str(tree),
        "--url",
        url,
        "--set",
        "enrichments",
        "--version",
        "2",
        "--applied",
    )
    assert marked.returncode == 0, marked.stderr
    assert run_cli("migrations", "inspect", str(tree), "--url", url).returncode == 0
    after = inspect_json(tree, sqlite_db)["sets"][0]["migrations"][1]
    assert after["applied_at"] == before["applied_at"]
    assert after["sha256"] == hashlib.sha256(up.read_bytes()).hexdigest()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", after["applied_at"])


def test_friendly_hints_for_first_day_mistakes(tmp_path: Path) -> None:
    wrong_command = run_cli("apply", "x", "--url", "sqlite:///x.db")
    assert wrong_command.returncode == 2
    assert "did you mean 'whimbrel migrations apply'" in wrong_command.stderr
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    too_high = run_cli(
        "migrations", "inspect", str(tmp_path / "examples"), "--url", "sqlite:///x.db"
    )
    assert too_high.returncode == 5
    assert "one level down only; dracon holds sets" in too_high.stderr
    options = run_cli("migrations", "apply", str(tmp_path), "--url", "sqlite:///x.db?mode=ro")
    assert options.returncode == 2 and "not supported" in options.stderr


def test_output_table_and_text_mean_the_same(sqlite_db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    applied = run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url, "-o", "table")
    assert applied.returncode == 0 and "Applied 5 migrations" in applied.stdout
    text = run_cli("migrations", "inspect", str(tree), "--url", sqlite_db.url, "-o", "text")
    assert text.returncode == 0 and "up to date" in text.stdout


def test_tracking_rows_record_what_the_spec_asks(db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    assert run_cli("migrations", "apply", str(tree), "--url", db.url).returncode == 0
    rows = db.query(
        "SELECT version, name, file, sha256, status, applied_at, duration_ms, applied_by "
        "FROM enrichments ORDER BY version"
    )
    assert [r[:3] for r in rows] == [
        (1, "init", "001_init.up.sql"),
        (2, "varchar_to_text", "002_varchar_to_text.up.sql"),
        (3, "add_cve_column", "003_add_cve_column.up.sql"),
    ]
    for version, _, file, sha, status, applied_at, duration_ms, applied_by in rows:
        assert sha == hashlib.sha256((tree / "enrichments" / file).read_bytes()).hexdigest()
        assert status == "applied" and applied_at is not None
        assert duration_ms is not None and duration_ms >= 0, version
        assert " pid " in applied_by


def test_revert_goes_through_sets_in_reverse_name_order(
    sqlite_db: Database, tmp_path: Path
) -> None:
    tree = dracon(tmp_path)
    assert run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url).returncode == 0
    result = run_cli("migrations", "revert", str(tree), "--url", sqlite_db.url)
    lines = [line for line in result.stdout.splitlines() if "reverting" in line]
    assert [line.split(":")[0] for line in lines] == ["experimental_component", "enrichments"]


def test_missing_file_is_drift_for_apply_and_revert(db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    assert run_cli("migrations", "apply", str(tree), "--url", db.url).returncode == 0
    (tree / "experimental_component/002_add_new_column.up.sql").unlink()
    (tree / "experimental_component/002_add_new_column.down.sql").unlink()
    for command in ("apply", "revert"):
        result = run_cli("migrations", command, str(tree), "--url", db.url)
        assert result.returncode == 8, result.stderr
        assert "migration 2 (002_add_new_column.up.sql) is recorded as applied" in result.stderr
    # With --allow-drift, revert undoes it with the down section recorded when it was applied.
    reverted = run_cli(
        "migrations",
        "revert",
        str(tree),
        "--url",
        db.url,
        "--set",
        "experimental_component",
        "--allow-drift",
    )
    assert reverted.returncode == 0, reverted.stderr
    assert "(down section recorded when applied)" in reverted.stdout
    columns = {
        "sqlite": "SELECT name FROM pragma_table_info('experiments')",
        "postgres": "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'experiments'",
        "mysql": "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name = 'experiments'",
    }[db.dialect]
    assert "started_at" not in {r[0] for r in db.query(columns)}


@both_pg_clients
def test_a_recorded_down_section_keeps_its_transaction_false(
    postgres_db: Database, tmp_path: Path
) -> None:
    # DROP INDEX CONCURRENTLY cannot run in a transaction: with the file gone, the option
    # had been lost with it, and the revert failed with a hint nobody could follow.
    tree = write_tree(
        tmp_path / "app",
        {
            "1_t.sql": "-- migrate:up\nCREATE TABLE t (v INT);\n-- migrate:down\nDROP TABLE t;\n",
            "2_i.sql": "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY t_v ON t (v);\n"
            "-- migrate:down transaction:false\nDROP INDEX CONCURRENTLY t_v;\n",
        },
    )
    assert run_cli("migrations", "apply", str(tree), "--url", postgres_db.url).returncode == 0
    (tree / "2_i.sql").unlink()
    args = ("--url", postgres_db.url, "--allow-drift", "--steps", "1")
    reverted = run_cli("migrations", "revert", str(tree), *args)
    assert reverted.returncode == 0, reverted.stderr
    assert "2_i.sql (down section recorded when applied)" in reverted.stdout
    indexes = postgres_db.query("SELECT indexname FROM pg_indexes WHERE tablename = 't'")
    assert indexes == []
    assert [r[0] for r in postgres_db.query("SELECT version FROM app")] == [1]


def test_revert_refusal_names_both_hashes(sqlite_db: Database, tmp_path: Path) -> None:
    tree = dracon(tmp_path)
    assert run_cli("migrations", "apply", str(tree), "--url", sqlite_db.url).returncode == 0
    up = tree / "enrichments/003_add_cve_column.up.sql"
    old = hashlib.sha256(up.read_bytes()).hexdigest()
    up.write_text(up.read_text() + "\n")
    new = hashlib.sha256(up.read_bytes()).hexdigest()
    result = run_cli("migrations", "revert", str(tree), "--url", sqlite_db.url)
    assert result.returncode == 8
    assert old in result.stderr and new in result.stderr


@both_pg_clients
def test_tracking_row_commits_with_the_migration(db: Database, tmp_path: Path) -> None:
    if db.dialect == "mysql":
        return  # DDL commits at once there: covered by the dirty-state tests
    trigger = {
        "sqlite": "CREATE TRIGGER no_two BEFORE INSERT ON app WHEN NEW.version = 2 "
        "BEGIN SELECT RAISE(ABORT, 'tracking refused'); END;",
        "postgres": "CREATE FUNCTION no_two() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.version = 2 THEN RAISE EXCEPTION 'tracking refused'; END IF; RETURN NEW; "
        "END $$;\nCREATE TRIGGER no_two BEFORE INSERT ON app FOR EACH ROW "
        "EXECUTE FUNCTION no_two();",
    }[db.dialect]
    tree = write_tree(
        tmp_path / "app",
        {"1_trigger.up.sql": trigger, "2_table.up.sql": "CREATE TABLE two (id INT);"},
    )
    result = run_cli("migrations", "apply", str(tree), "--url", db.url)
    assert result.returncode == 1
    assert "tracking refused" in result.stderr
    assert "two" not in db.tables()  # the migration went with its tracking row
    assert [r[0] for r in db.tracking("app")] == [1]
