"""One driver per database behind one small interface (see `base.Driver`)."""

from __future__ import annotations

from whimbrel.drivers.base import Driver
from whimbrel.urls import DatabaseURL

__all__ = ["Driver", "connect"]


def connect(
    url: DatabaseURL,
    *,
    create: bool = False,
    connect_timeout: float = 10.0,
    busy_timeout: float = 60.0,
    application_name: str = "whimbrel",
) -> Driver:
    """Open a connection; each driver is imported only when its database is used."""
    if url.dialect == "postgres":
        # libpq through ctypes, without importing psycopg; psycopg where libpq cannot be
        # loaded or WHIMBREL_PG_CLIENT=psycopg says so.
        from whimbrel.drivers.libpq import LibpqDriver, libpq_available

        if libpq_available():
            return LibpqDriver(
                url, connect_timeout=connect_timeout, application_name=application_name
            )
        from whimbrel.drivers.postgres import PostgresDriver

        return PostgresDriver(
            url, connect_timeout=connect_timeout, application_name=application_name
        )
    if url.dialect == "mysql":
        from whimbrel.drivers.mysql import MySQLDriver

        return MySQLDriver(url, connect_timeout=connect_timeout, application_name=application_name)
    from whimbrel.drivers.sqlite import SQLiteDriver

    return SQLiteDriver(url, create=create, busy_timeout=busy_timeout)
