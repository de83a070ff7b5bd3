"""Plain SQL on a database named by a SQLAlchemy URL, for the query readers (``_study_sql``,
``_runs``): one connection per read, rows fetched by the database driver itself."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any, TypeVar

T = TypeVar("T")


def read_with(url: str, read: Callable[[Any], T | None]) -> T | None:
    """``read(connection)`` on the database at ``url``; None when it cannot be reached or read
    (no driver, a bad URL, a schema the reader does not know): the caller falls back on the
    library's own API, which also gives the errors users see."""
    import sqlalchemy

    from sweeps.tracking.storage import driver_url

    try:
        engine = sqlalchemy.create_engine(driver_url(url))
    except (ImportError, sqlalchemy.exc.ArgumentError):
        return None
    try:
        with engine.connect() as db:
            return read(db)
    except sqlalchemy.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def driver_rows(db: Any, sql: str, params: dict[str, Any]) -> list[tuple]:
    """The rows of ``sql`` (named ``:params``) fetched by the database driver itself on an open
    SQLAlchemy connection: SQLAlchemy's own result rows cost more than the query on 200,000 rows."""
    if db.dialect.loaded_dbapi.paramstyle in ("pyformat", "format"):  # psycopg, pymysql: %(name)s
        sql = re.sub(r":(\w+)", r"%(\1)s", sql)
    cursor = db.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql, params)  # sqlite3 (qmark) takes :name with a dict as well
        return cursor.fetchall()
    finally:
        cursor.close()


def quoted_key(db: Any) -> str:
    """The column name ``key``, quoted where it is a reserved word (MySQL)."""
    return db.dialect.identifier_preparer.quote("key")


def key_filter(key: str, keys: Collection[str] | None) -> tuple[str, dict[str, str]]:
    """(`` AND key IN (:k0, :k1, ...)``, its parameters) keeping only ``keys``; ('', {}) for all."""
    if keys is None:
        return "", {}
    params = {f"k{i}": k for i, k in enumerate(keys)}
    return f" AND {key} IN ({', '.join(f':{name}' for name in params)})", params
