"""A copied or moved store points its MLflow database at itself again.

MLflow records where each experiment, run, logged model and model version keeps its artifacts as
an absolute ``file://`` URI, and has no API to change one (a relative location would resolve
against whatever folder a command runs from). So after ``cp -a S S2`` every checkpoint that a
command on S2 logs would land in S, and after ``mv S S2`` nothing S2 holds could be loaded.

An embedded store's artifacts always lie under its own ``artifacts/`` folder (``Store.experiment``
puts them there), so a location under another folder's ``artifacts/`` names the store this
database was copied or moved from. ``relocate`` rewrites those prefixes, in one SQLite
transaction, the first time a command opens the store at its new place; after that the check is
one read of the experiments table. The Optuna storage and every other file of the store are
found relative to the store folder and need nothing.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

log = logging.getLogger("kdsweep")

# Columns that hold artifact URIs, by table (tables an older MLflow schema lacks are skipped).
_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "logged_models": ("artifact_location",),
    "model_versions": ("source", "storage_location"),
}


def former_roots(database: Path, root: Path) -> list[str]:
    """The ``file://`` URIs of other stores' ``artifacts`` folders that this database's
    experiments point into (the stores it was copied or moved from), read without writing."""
    here = root.resolve().as_uri() + "/artifacts"
    with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as db:
        rows = db.execute("SELECT artifact_location FROM experiments").fetchall()
    found = []
    for (location,) in rows:
        former = _artifacts_folder(location or "")
        if former is not None and former != here and former not in found:
            found.append(former)
    return found


def relocate(database: Path, root: Path) -> int:
    """Point every artifact URI of ``database`` that lies under a former store's ``artifacts``
    folder at ``root/artifacts``; returns how many rows changed (0 when the store never moved).
    Safe to run from several processes at once: the second finds nothing left to change."""
    formers = former_roots(database, root)
    if not formers:
        return 0
    here = root.resolve().as_uri() + "/artifacts"
    changed = 0
    with contextlib.closing(sqlite3.connect(database, timeout=60, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")  # one writer; MLflow clients of other processes wait on it
        try:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table, columns in _COLUMNS.items():
                if table not in tables:
                    continue
                for column in columns:
                    for former in formers:
                        # Exactly the folder, or a path under it: never a sibling such as artifacts2.
                        changed += db.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 (fixed names)
                            f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                            (here, len(former) + 1, former, len(former) + 1, former + "/")).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    log.info("this store was copied or moved here from %s: %d artifact locations now point into %s",
             ", ".join(_path_of(f) for f in formers), changed, root / "artifacts")
    return changed


def _artifacts_folder(location: str) -> str | None:
    """``file:///x/artifacts`` for a location ``file:///x/artifacts/<name>``, else None."""
    if not location.startswith("file://"):
        return None
    head, _, name = location.rstrip("/").rpartition("/")
    return head if name and head.endswith("/artifacts") else None


def _path_of(uri: str) -> str:
    return unquote(urlparse(uri).path).removesuffix("/artifacts")
