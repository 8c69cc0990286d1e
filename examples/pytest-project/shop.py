"""The application under test: a shop's stock, on PostgreSQL, MySQL/MariaDB or SQLite."""

from __future__ import annotations

import sqlite3
from typing import Any


def _placeholder(conn: Any) -> str:
    return "?" if isinstance(conn, sqlite3.Connection) else "%s"


def add_product(conn: Any, name: str, price_cents: int, stock: int = 0) -> None:
    p = _placeholder(conn)
    cur = conn.cursor()
    cur.execute(
        f"INSERT INTO products (name, price_cents, stock) VALUES ({p}, {p}, {p})",
        (name, price_cents, stock),
    )
    conn.commit()


def stock_value_cents(conn: Any) -> int:
    cur = conn.cursor()
    cur.execute("SELECT COALESCE(SUM(price_cents * stock), 0) FROM products")
    return int(cur.fetchone()[0])
