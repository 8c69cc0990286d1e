"""Tests that use whimbrel's pytest plugin fixtures."""

from __future__ import annotations

import shop


def test_stock_value(whimbrel_clean_db):
    conn = whimbrel_clean_db.connect()
    try:
        shop.add_product(conn, "tea", price_cents=350, stock=4)
        shop.add_product(conn, "cake", price_cents=1200, stock=1)
        assert shop.stock_value_cents(conn) == 2600
    finally:
        conn.close()


def test_a_clean_database_is_empty_and_its_own(whimbrel_connection, whimbrel_clean_db):
    # The session's database keeps what tests commit...
    shop.add_product(whimbrel_connection, "coffee", price_cents=500, stock=2)
    # ...a clean one starts empty, with every migration applied.
    conn = whimbrel_clean_db.connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM products")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT version, status FROM shopdb ORDER BY version")
        assert [tuple(row) for row in cur.fetchall()] == [
            (20240101120000, "applied"),
            (20240215093000, "applied"),
        ]
    finally:
        conn.close()


def test_the_session_database(whimbrel_url, whimbrel_database):
    assert whimbrel_url == whimbrel_database.url
    assert "_test_" in whimbrel_database.name
