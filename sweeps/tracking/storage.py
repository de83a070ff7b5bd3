"""Optuna storages: the default journal file under the store, or any URL the user gives."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from kdcore import ConfigError, DamagedFileError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from sweeps.tracking.locks import FileLock

DEFAULT_JOURNAL = "optuna.journal"
_RDB_SCHEMES = ("sqlite://", "postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://",
                "mysql://", "mysql+pymysql://")
_JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")


class StoreDamagedError(DamagedFileError):
    """A store file (the Optuna journal, the MLflow database) is damaged or missing while the other
    still refers to it; nothing was written. The CLI exits with code 1: the input was fine."""

    exit_code = 1


def display_url(url: str) -> str:
    """The URL with any password masked, for messages, tags and summaries."""
    if "://" not in url or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***@" + url.rsplit("@", 1)[1]


def default_storage_url(store_root: Path) -> str:
    return str(Path(store_root) / DEFAULT_JOURNAL)


def check_storage_url(url: str) -> None:
    """Reject a URL kdsweep cannot open, before anything is written."""
    if url.startswith(_RDB_SCHEMES):
        if url.startswith("sqlite://"):
            path = url.removeprefix("sqlite:///")
            if url == "sqlite://" or ":memory:" in url:
                raise ConfigError(f"storage '{url}' is in memory: a sweep needs a file to resume and share")
            if not url.startswith("sqlite:///") or not Path(path).parent.is_dir():
                raise ConfigError(f"storage '{url}' is not usable: write sqlite:///path/to/file.db "
                                  "with an existing folder")
        return
    if "://" in url:
        raise ConfigError(f"unsupported storage URL '{url}' (use sqlite:///file.db, postgresql://..., "
                          f"mysql://... or a journal file path ending in {', '.join(_JOURNAL_SUFFIXES)})")
    if not url.endswith(_JOURNAL_SUFFIXES):
        raise ConfigError(f"storage '{url}' is neither a URL nor a journal file path "
                          f"(ending in {', '.join(_JOURNAL_SUFFIXES)})")
    if not Path(url).parent.is_dir():
        raise ConfigError(f"storage '{url}': folder {Path(url).parent} does not exist")


def driver_url(url: str) -> str:
    """``postgresql://`` names SQLAlchemy's psycopg2 driver; with only psycopg 3 installed (the
    ``postgres`` extra) the same URL goes through ``postgresql+psycopg://``."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def open_storage(url: str) -> BaseStorage:
    """The Optuna storage at ``url``; ConfigError when it cannot be reached, JournalCorruptError
    (exit code 1) when its journal file is damaged.

    The journal file is the default: Optuna advises against SQLite for parallel workers, and a
    journal is safe to create and append to from several processes. kdsweep opens it through
    CheckedJournalBackend (sweeps/tracking/journal.py): a torn or foreign tail is never appended to.
    A SQLite database is created under a file lock: Optuna's schema creation is not safe when
    several processes start on a fresh file at once.
    """
    import optuna

    from sweeps.tracking.journal import open_journal
    from sweeps.tracking.locks import FileLock

    check_storage_url(url)  # the caller creates the default journal's folder first
    if not url.startswith(_RDB_SCHEMES):
        return open_journal(url)
    try:
        if url.startswith("sqlite:///"):
            with FileLock(_sqlite_file(url)):
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        # Optuna's schema creation races on a fresh database as on a fresh SQLite file.
        with AdvisoryLock(url, AdvisoryLock.SCHEMA) if url.startswith("postgresql") else contextlib.nullcontext():
            return optuna.storages.RDBStorage(driver_url(url), engine_kwargs={"pool_pre_ping": True})
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot open Optuna storage '{display_url(url)}': {first_line}") from None


def storage_lock(url: str) -> FileLock | AdvisoryLock | contextlib.nullcontext:
    """A lock all kdsweep processes on this storage share, on every host (reaping lost trials takes
    it): a file lock next to a journal or SQLite file, a PostgreSQL advisory lock in its database."""
    from sweeps.tracking.locks import FileLock

    if url.startswith("sqlite:///"):
        return FileLock(_sqlite_file(url) + ".reap")
    if "://" not in url:
        return FileLock(url + ".reap")  # not the journal's own lock, which every append takes
    if url.startswith("postgresql"):
        return AdvisoryLock(url)
    return contextlib.nullcontext()  # MySQL: reaps are idempotent, a race at worst repeats one


class AdvisoryLock:
    """PostgreSQL's session advisory lock on one key, held on a connection of its own. The server
    releases it if the holder dies, so a killed reaper never blocks the others."""

    REAP = 0x6B647377  # "kdsw": reaping lost trials, for every study in the database
    SCHEMA = 0x6B647378  # creating Optuna's tables in a fresh database

    def __init__(self, url: str, key: int = REAP) -> None:
        self.url = url
        self.key = key

    def __enter__(self) -> AdvisoryLock:
        import sqlalchemy

        self._engine = sqlalchemy.create_engine(driver_url(self.url), poolclass=sqlalchemy.pool.NullPool)
        self._connection = self._engine.connect()
        self._connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
        return self

    def __exit__(self, *exc_info: object) -> None:
        import sqlalchemy

        try:
            self._connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        finally:
            self._connection.close()
            self._engine.dispose()


def _sqlite_file(url: str) -> str:
    return url.removeprefix("sqlite:///").split("?", 1)[0]
