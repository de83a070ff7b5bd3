"""Plain read-only SQL on a database named by a SQLAlchemy URL, for the query readers
(``_study_sql``, ``_runs``): one connection per read, rows fetched by the database driver itself.

SQLite and PostgreSQL are opened by their drivers directly (``sqlite3``; psycopg, which takes
libpq's ``postgresql://`` URLs): importing SQLAlchemy alone costs about 0.3 s, a sixth of what
``kdsweep trials`` may spend on 10,000 trials. Any other database (MySQL) goes through SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Database:
    """An open connection: ``rows(sql, params)`` with named ``:params``; ``key`` is the column name
    ``key``, quoted where it is a reserved word (MySQL)."""

    connection: Any  # a DB-API connection
    paramstyle: str
    key: str = "key"

    def rows(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        if self.paramstyle in ("pyformat", "format"):  # psycopg, pymysql: %(name)s
            sql = re.sub(r":(\w+)", r"%(\1)s", sql)
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql, params)  # sqlite3 (qmark) takes :name with a dict as well
            return cursor.fetchall()
        finally:
            cursor.close()


def read_with(url: str, read: Callable[[Database], T | None]) -> T | None:
    """``read(database)`` on the database at ``url``; None when it cannot be reached or read (no
    driver, a bad URL, a schema the reader does not know): the caller falls back on the library's
    own API, which also gives the errors users see."""
    direct = _direct(url)
    if direct is None:
        return _read_through_sqlalchemy(url, read)
    connect, errors, paramstyle = direct
    try:
        with contextlib.closing(connect()) as connection:
            return read(Database(connection, paramstyle))
    except errors:
        return None


def _direct(url: str) -> tuple[Callable[[], Any], tuple[type[Exception], ...], str] | None:
    """(connect, the driver's errors, its paramstyle) for SQLite and PostgreSQL; None otherwise."""
    if url.startswith("sqlite:///"):
        import sqlite3

        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0]).resolve()
        # mode=ro: never creates or migrates the file, never blocks a running sweep's writes.
        return (lambda: sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10)), (sqlite3.Error,), "named"
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        return None
    for name in ("psycopg", "psycopg2"):  # both take libpq's postgresql:// URL as it is
        try:
            driver = importlib.import_module(name)
        except ImportError:
            continue
        return (lambda: driver.connect(f"postgresql://{rest}")), (driver.Error,), driver.paramstyle
    return None


def _read_through_sqlalchemy(url: str, read: Callable[[Database], T | None]) -> T | None:
    import sqlalchemy

    from sweeps.tracking.storage import driver_url

    try:
        engine = sqlalchemy.create_engine(driver_url(url))
    except (ImportError, sqlalchemy.exc.ArgumentError):
        return None
    driver = engine.dialect.loaded_dbapi
    try:
        with engine.connect() as db:
            return read(Database(db.connection.dbapi_connection, driver.paramstyle,
                                 db.dialect.identifier_preparer.quote("key")))
    except (sqlalchemy.exc.SQLAlchemyError, driver.Error):
        return None
    finally:
        engine.dispose()


def key_filter(key: str, keys: Collection[str] | None) -> tuple[str, dict[str, str]]:
    """(`` AND key IN (:k0, :k1, ...)``, its parameters) keeping only ``keys``; ('', {}) for all."""
    if keys is None:
        return "", {}
    params = {f"k{i}": k for i, k in enumerate(keys)}
    return f" AND {key} IN ({', '.join(f':{name}' for name in params)})", params
