"""`apply --single-transaction`: every pending migration of a run in one transaction, all or
nothing, on the real databases; refused up front where a migration cannot join it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import whimbrel
from conftest import Database, both_pg_clients, run_cli, write_tree

# Plain DML after the first migration, so that MySQL can run the second run in one transaction.
DML_TREE = {
    "001_base.up.sql": "CREATE TABLE base (id INT PRIMARY KEY, note VARCHAR(20));",
    "002_first.up.sql": "INSERT INTO base VALUES (1, 'one');\nINSERT INTO base VALUES (2, 'two');",
    "003_second.up.sql": "UPDATE base SET note = 'changed' WHERE id = 1;",
}


@both_pg_clients
def test_all_or_nothing_when_a_later_migration_fails(db: Database, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "app", {k: v for k, v in DML_TREE.items() if k < "002"})
    assert run_cli("migrations", "apply", str(tree), "--url", db.url).returncode == 0
    write_tree(
        tree,
        {
            "002_first.up.sql": DML_TREE["002_first.up.sql"],
            "003_second.up.sql": DML_TREE["003_second.up.sql"],
            "004_broken.up.sql": "INSERT INTO base VALUES (3, 'three');\n"
            "INSERT INTO no_such_table VALUES (4);",
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", db.url, "--single-transaction")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "set 'app', 004_broken.up.sql, statement 2 of 2 (line 2)" in result.stderr
    assert "the whole run was rolled back" in result.stderr
    # Nothing of the run stayed: not the rows of 002 and 003, not their tracking rows.
    assert db.query("SELECT id, note FROM base ORDER BY id") == []
    assert [r[0] for r in db.query("SELECT version FROM app ORDER BY version")] == [1]
    # Fixed, the run applies everything at once.
    write_tree(tree, {"004_broken.up.sql": "INSERT INTO base VALUES (3, 'three');"})
    result = run_cli("migrations", "apply", str(tree), "--url", db.url, "--single-transaction")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "app: applying 004_broken.up.sql ... applied" in result.stdout
    assert db.query("SELECT id, note FROM base ORDER BY id") == [
        (1, "changed"),
        (2, "two"),
        (3, "three"),
    ]
    assert db.query("SELECT version, status FROM app ORDER BY version") == [
        (v, "applied") for v in (1, 2, 3, 4)
    ]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_ddl_runs_in_one_transaction_where_the_database_allows(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db: Database = request.getfixturevalue(f"{engine}_db")
    tree = write_tree(
        tmp_path / "app",
        {
            "001_a.up.sql": "CREATE TABLE a (id INT);",
            "002_b.up.sql": "CREATE TABLE b (id INT);\nINSERT INTO a VALUES (1);",
            "003_c.up.sql": "CREATE TABLE c (id INT);\nCREATE TABLE a (id INT);",  # a exists
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", db.url, "--single-transaction")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "003_c.up.sql, statement 2 of 2" in result.stderr
    assert "(2 ran before this one)" in result.stderr
    # Not even the tracking table the run created is left.
    assert not {"a", "b", "c", "app"} & db.tables()
    write_tree(tree, {"003_c.up.sql": "CREATE TABLE c (id INT);"})
    state = whimbrel.apply(str(tree), db.url, single_transaction=True)
    assert [s.version for s in state.steps] == [1, 2, 3]
    assert {"a", "b", "c", "app"} <= db.tables()


def test_mysql_refuses_ddl_before_running_anything(mysql_db: Database, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "app", DML_TREE)
    result = run_cli(
        "migrations", "apply", str(tree), "--url", mysql_db.url, "--single-transaction"
    )
    assert result.returncode == 8, result.stdout + result.stderr
    assert "refusing to apply with --single-transaction; nothing was changed" in result.stderr
    assert "001_base.up.sql: it has DDL" in result.stderr
    assert "002_first.up.sql" not in result.stderr  # plain DML can join
    assert mysql_db.tables() == set()


def test_refuses_migrations_that_cannot_join(db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "001_a.sql": "-- migrate:up transaction:false\nINSERT INTO x VALUES (1);\n"
            "-- migrate:down\n",
            "002_b.up.sql": "BEGIN;\nINSERT INTO x VALUES (2);\nCOMMIT;",
        },
    )
    result = run_cli(
        "migrations", "apply", str(tree), "--url", db.url, "--single-transaction", "-o", "json"
    )
    assert result.returncode == 8, result.stdout + result.stderr
    assert "001_a.sql: it is marked transaction:false" in result.stderr
    assert "002_b.up.sql: it manages its own transactions" in result.stderr


def test_dry_run_and_json(db: Database, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "app", {"001_base.up.sql": DML_TREE["001_base.up.sql"]})
    if db.dialect == "mysql":
        tree = write_tree(tmp_path / "dml", {"001_rows.up.sql": "SELECT 1;"})
    result = run_cli(
        "migrations", "apply", str(tree), "--url", db.url, "--single-transaction", "-o", "json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    steps = json.loads(result.stdout)["migrations"]
    assert [s["status"] for s in steps] == ["applied"]
    again = run_cli("migrations", "apply", str(tree), "--url", db.url, "--single-transaction")
    assert again.returncode == 0 and "Nothing to apply" in again.stdout, again.stdout


def test_mysql_ddl_batches_its_tracking_writes_exactly(mysql_db: Database, tmp_path: Path) -> None:
    """On MySQL the tracking writes ride on the next DDL's implicit commit; a statement
    that looks like DDL but does not commit (a TEMPORARY table) must not leave them open."""
    tree = write_tree(
        tmp_path / "app",
        {
            "001_a.up.sql": "CREATE TABLE a (id INT);\nCREATE TABLE b (id INT);",
            "002_tmp.up.sql": "CREATE TABLE c (id INT);\n"
            "CREATE OR REPLACE TEMPORARY TABLE scratch (id INT);",
            "003_d.up.sql": "CREATE TEMPORARY TABLE scratch2 (id INT);\nCREATE TABLE d (id INT);",
        },
    )
    result = run_cli("migrations", "apply", str(tree), "--url", mysql_db.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert mysql_db.query(
        "SELECT version, status, statements_done, error FROM app ORDER BY version"
    ) == [(1, "applied", 2, None), (2, "applied", 2, None), (3, "applied", 2, None)]
    durations = mysql_db.query("SELECT duration_ms FROM app")
    assert all(d[0] is not None and d[0] >= 0 for d in durations)


def test_mysql_tables_without_transactions_keep_their_changes_and_the_message_says_so(
    mysql_db: Database, tmp_path: Path
) -> None:
    tree = write_tree(tmp_path / "app", {"001_t.up.sql": "CREATE TABLE mi (id INT) ENGINE=MyISAM;"})
    assert run_cli("migrations", "apply", str(tree), "--url", mysql_db.url).returncode == 0
    write_tree(
        tree,
        {
            "002_rows.up.sql": "INSERT INTO mi VALUES (2);",
            "003_broken.up.sql": "INSERT INTO no_such_table VALUES (3);",
        },
    )
    args = ("migrations", "apply", str(tree), "--url", mysql_db.url, "--single-transaction")
    result = run_cli(*args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the run was rolled back, except its changes to tables without transactions" in (
        result.stderr
    )
    assert "the whole run was rolled back" not in result.stderr
    assert "nothing of 003_broken.up.sql was applied" not in result.stderr
    assert mysql_db.query("SELECT id FROM mi") == [(2,)]
    assert [r[0] for r in mysql_db.query("SELECT version FROM app")] == [1]


def test_temporary_tables_may_join_one_transaction_on_sqlite(
    sqlite_db: Database, tmp_path: Path
) -> None:
    # Refused as "changes the session" once temporary tables started a fresh session
    # after each migration; within one transaction the run is one unit.
    tree = write_tree(
        tmp_path / "app",
        {
            "001_t.up.sql": "CREATE TABLE t (id INT);",
            "002_rows.up.sql": "CREATE TEMP TABLE scratch (id INT);\n"
            "INSERT INTO scratch VALUES (2);\nINSERT INTO t SELECT id FROM scratch;\n",
        },
    )
    args = ("migrations", "apply", str(tree), "--url", sqlite_db.url, "--single-transaction")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert sqlite_db.query("SELECT id FROM t") == [(2,)]
