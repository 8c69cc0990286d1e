"""Big migrations: statements are kept as offsets, and PostgreSQL receives a big section in
pieces inside its one transaction. The pieces are made small here to test them quickly."""

from __future__ import annotations

from pathlib import Path

import pytest

import whimbrel
from conftest import Database, both_pg_clients, write_tree
from whimbrel import engine
from whimbrel.errors import MigrationFailed


def _rows(count: int, broken_at: int | None = None) -> str:
    lines = []
    for i in range(1, count + 1):
        table = "no_such_table" if i == broken_at else "big"
        lines.append(f"INSERT INTO {table} (id, note) VALUES ({i}, 'row {i}');")
    return "\n".join(lines) + "\n"


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_PIECE_CHARS", 200)


@pytest.mark.usefixtures("small_pieces")
def test_a_big_section_in_pieces_applies_whole(db: Database, tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "001_table.up.sql": "CREATE TABLE big (id INT PRIMARY KEY, note VARCHAR(40));",
            "002_rows.up.sql": _rows(50),
        },
    )
    result = whimbrel.apply(str(tree), db.url)
    assert [s.statements for s in result.steps] == [1, 50]
    assert db.query("SELECT count(*) FROM big") == [(50,)]
    assert db.query("SELECT statements_done FROM app WHERE version = 2") == [(50,)]


@both_pg_clients
@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize("single_transaction", [False, True])
def test_failure_in_a_later_piece_names_its_statement_and_keeps_nothing(
    postgres_db: Database, tmp_path: Path, single_transaction: bool
) -> None:
    tree = write_tree(
        tmp_path / "app",
        {
            "001_table.up.sql": "CREATE TABLE big (id INT PRIMARY KEY, note VARCHAR(40));",
            "002_rows.up.sql": _rows(50, broken_at=37),
        },
    )
    with pytest.raises(MigrationFailed) as failure:
        whimbrel.apply(str(tree), postgres_db.url, single_transaction=single_transaction)
    error = failure.value
    assert (error.statement_index, error.line) == (36, 37)
    assert error.statement == "INSERT INTO no_such_table (id, note) VALUES (37, 'row 37')"
    assert error.rolled_back
    if single_transaction:
        assert postgres_db.tables() == set()
    else:
        assert postgres_db.query("SELECT count(*) FROM big") == [(0,)]
        assert postgres_db.query("SELECT version FROM app") == [(1,)]


@pytest.mark.usefixtures("small_pieces")
def test_syntax_error_in_a_later_piece_names_its_line(
    postgres_db: Database, tmp_path: Path
) -> None:
    rows = _rows(30).splitlines()
    rows[24] = "INSERT INTO big (id, note) VALUES (25, 'row 25'"  # no closing parenthesis
    tree = write_tree(
        tmp_path / "app",
        {
            "001_table.up.sql": "CREATE TABLE big (id INT PRIMARY KEY, note VARCHAR(40));",
            "002_rows.up.sql": "\n".join(rows) + "\n",
        },
    )
    with pytest.raises(MigrationFailed) as failure:
        whimbrel.apply(str(tree), postgres_db.url)
    # The unclosed statement runs on into line 26, where the parser gives up.
    assert (failure.value.statement_index, failure.value.line) == (24, 26)
    assert postgres_db.query("SELECT count(*) FROM big") == [(0,)]
