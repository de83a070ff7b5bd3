"""Where kdsweep keeps things: the store folder, its MLflow database and artifacts, caches.

Checked before anything is written: the store folder (not a file, creatable, writable), the
tracking URI (a scheme MLflow serves, an existing folder for a SQLite file), the MLflow SQLite
database (read without writing: an SQLite file, whole), and study names (they name folders).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdcore import ConfigError
from sweeps.tracking.storage import StoreDamagedError

log = logging.getLogger("kdsweep")
_SETTLED: set[Path] = set()  # store folders this process has pointed at themselves (Store.settle)

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_STORE = "mlruns"
# MLflow 3 reads this tag to show an experiment's training runs rather than its GenAI overview.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
_STORE_FLAG = "--store (or $KDSWEEP_STORE)"
_TRACKING_FLAG = "--tracking-uri (or $MLFLOW_TRACKING_URI)"
# Schemes MLflow has a tracking store for (mlflow.tracking._tracking_service.utils); a database
# scheme may name its driver (postgresql+psycopg2).
_TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks",
                     "databricks-uc", "uc")
# A study name is a folder name (checkpoints, artifacts, reports): letters, digits, _ . - only, not
# starting with '.', so that no name leaves the store.
_STUDY_NAME = re.compile(r"(?!\.)[\w.-]{1,100}")


def check_study_name(name: str) -> None:
    """ConfigError unless ``name`` is a safe folder name: letters, digits, _ . -, not starting with '.'."""
    if not _STUDY_NAME.fullmatch(name):
        raise ConfigError(f"study name {name!r} is not allowed: use 1 to 100 letters, digits, '_', '.' or '-', "
                          "not starting with '.' (it names folders in the store)")


def check_storage_path(url: str) -> None:
    """ConfigError when the Optuna storage's file (a journal, or a sqlite:/// database) is a folder
    or not a regular file."""
    path = _storage_file(url)
    if path is None or not path.exists():
        return
    if path.is_dir():
        example = f"sqlite:///{path / 'optuna.db'}" if url.startswith("sqlite") else str(path / "optuna.journal")
        raise ConfigError(f"storage {url!r} is a folder: name a file in it, e.g. --storage {example}")
    if not path.is_file():
        raise ConfigError(f"storage {url!r} is not a regular file: give a journal file or sqlite:///file.db")


def folder_name(name: str) -> str:
    """``name`` as one folder name that stays where it is put: other characters become '-'."""
    safe = re.sub(r"[^\w.-]", "-", name).lstrip(".")[:100]
    return safe or "unnamed"


@dataclass(frozen=True)
class Store:
    """The local store (``./mlruns`` by default) and the MLflow tracking URI that goes with it.

    By default MLflow runs embedded: a SQLite database ``<root>/mlflow.db`` with artifacts under
    ``<root>/artifacts``. ``tracking_uri`` (or ``MLFLOW_TRACKING_URI``) points MLflow elsewhere;
    teachers and the teacher-output cache stay under ``root`` either way.
    """

    root: Path
    tracking_uri: str

    @classmethod
    def resolve(cls, root: str | Path | None = None, tracking_uri: str | None = None) -> Store:
        """The store the user named (flags, else environment, else ./mlruns), checked without
        writing: ConfigError if its folder is a file or cannot exist, or the tracking URI is unusable."""
        root = Path(root or os.environ.get("KDSWEEP_STORE") or DEFAULT_STORE).resolve()
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        store = cls(root, uri)
        store.check_paths()
        return store

    def check_paths(self) -> None:
        """ConfigError when the store folder is a file or lies under one, or the tracking URI
        names no tracking store MLflow has (or a SQLite file in a missing folder)."""
        check_folder(self.root, _STORE_FLAG)
        self.check_tracking_uri()

    def check_tracking_uri(self) -> None:
        """ConfigError unless MLflow can track to this URI without writing outside a folder that exists."""
        from sweeps.tracking.storage import display_url

        uri = self.tracking_uri
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        if scheme and scheme.split("+", 1)[0] not in _TRACKING_SCHEMES:
            raise ConfigError(f"unsupported tracking URI {display_url(uri)!r}: use sqlite:///path/to/mlflow.db, "
                              "http(s)://host:port, postgresql://... or mysql://..., or leave out "
                              f"{_TRACKING_FLAG} for {self.root / 'mlflow.db'}")
        path = self.database
        if scheme == "sqlite" and path is None:
            raise ConfigError(f"tracking URI {uri!r} is not a SQLite file: write sqlite:///path/to/mlflow.db "
                              "(an in-memory database loses every run)")
        if path is not None:
            if path.is_dir() and not self.embedded:  # the store's own: damage (database_problem)
                raise ConfigError(f"tracking URI {uri!r} names a folder: add a file name, e.g. "
                                  f"sqlite:///{path / 'mlflow.db'}")
            if path.parent != self.root and not path.parent.is_dir():  # the store folder is created
                raise ConfigError(f"tracking URI {uri!r}: folder {path.parent} does not exist; create it or fix "
                                  f"{_TRACKING_FLAG}")

    def check_writable(self) -> None:
        """ConfigError when this process cannot create or write the store folder (checked without writing)."""
        self.check_tracking_uri()
        check_folder(self.root, _STORE_FLAG, writable=True)

    def create(self) -> None:
        """Create the store folder (the first write of a command, after every check); ConfigError if
        it cannot be (under /proc, a read-only disk, no permission)."""
        self.check_tracking_uri()
        make_folder(self.root, _STORE_FLAG)

    @property
    def database(self) -> Path | None:
        """The SQLite file MLflow tracks to (this store's own, or a sqlite:/// URI), or None."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return None
        path = self.tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(path) if path and ":memory:" not in path else None

    def database_problem(self) -> str | None:
        """What is wrong with the MLflow SQLite file, read without writing: 'missing', 'empty', SQLite's
        own diagnosis (not a database, malformed: a truncated file is), or None when it is fine (or
        tracking is not to a SQLite file).

        The file is read through SQLite only: closing a plain file handle on it would drop the locks
        this process's other SQLite connections hold (POSIX advisory locks are per process)."""
        path = self.database
        if path is None:
            return None
        if not path.exists():
            return "missing"
        if not path.is_file():
            return "a folder or device, not a file"
        if path.stat().st_size == 0:
            return "empty"
        try:
            with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2)) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads and checks the header
        except sqlite3.OperationalError:
            return None  # busy or locked by a writer, or the like: not damage
        except sqlite3.DatabaseError as error:
            return str(error)
        return None

    def check_database(self, logged_trials: int = 0) -> None:
        """StoreDamagedError (exit 1) when the MLflow SQLite file is damaged or empty, or is missing
        while ``logged_trials`` trials point at runs in it; nothing is written either way."""
        problem = self.database_problem()
        if problem is None or (problem == "missing" and not logged_trials):
            return  # whole, or not made yet (it is created on first use)
        if problem in ("missing", "empty") and logged_trials:
            what = "does not exist" if problem == "missing" else "is empty (0 bytes)"
            raise _damaged(self.database, f"{what}, but {logged_trials} trial(s) of the study point at runs in it",
                           f"use a new {_STORE_FLAG} or --study")
        if problem == "empty":  # MLflow would build a new schema into it, hiding that its runs are gone
            raise _damaged(self.database, "is empty (0 bytes)", "delete it to start a new one")
        raise self.damaged(problem)

    def logged_runs(self, study: str) -> int:
        """How many runs the embedded MLflow database holds in experiment ``study``, read without
        writing (0 when tracking goes elsewhere, or the database cannot be read)."""
        if not self.embedded or self.database_problem() is not None:
            return 0
        try:
            with contextlib.closing(sqlite3.connect(f"{self.database.resolve().as_uri()}?mode=ro", uri=True,
                                                    timeout=5)) as db:
                return db.execute("SELECT count(*) FROM runs JOIN experiments USING (experiment_id) "
                                  "WHERE experiments.name = ?", (study,)).fetchone()[0]
        except sqlite3.Error:
            return 0

    def damaged(self, problem: str) -> StoreDamagedError:
        """The error (exit code 1) for a MLflow SQLite file damaged as ``problem`` says."""
        return _damaged(self.database, f"is damaged ({problem})", "move it aside to start a new one")

    @property
    def embedded(self) -> bool:
        """True when MLflow writes to this store's own SQLite file."""
        return self.tracking_uri == f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "artifacts"

    @property
    def teacher_cache(self) -> Path:
        return self.root / ".cache" / "teacher"

    @property
    def task_data(self) -> Path:
        """Data the tasks generate or decode, made once per store (kdcore.task_data)."""
        return self.root / "data"

    def read_task_data(self) -> None:
        """Let this process read the tasks' data from this store instead of making it again; it is
        written here by ``sweeps.prepare``, once the command's input is checked."""
        from kdcore.task_data import TASK_DATA

        TASK_DATA.use(self.task_data)

    def check_reachable(self, timeout_s: float = 5.0) -> None:
        """Fail fast, with ConfigError, when the tracking URI is an HTTP server that does not
        answer: MLflow's client would otherwise retry for minutes."""
        import urllib.error
        import urllib.request

        from kdcore import ConfigError
        from sweeps.tracking.storage import display_url

        if not self.tracking_uri.startswith(("http://", "https://")):
            return
        try:
            urllib.request.urlopen(self.tracking_uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except urllib.error.HTTPError:
            return  # it answered; /health is just not where this server says so
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise ConfigError(f"MLflow tracking server {display_url(self.tracking_uri)} does not answer "
                              f"({reason}): start it, or fix --tracking-uri / $MLFLOW_TRACKING_URI") from None

    def client(self) -> MlflowClient:
        """An MlflowClient on this store, creating the embedded database on first use;
        StoreDamagedError when its SQLite file is damaged or empty (MLflow would write into it)."""
        self.check_database()
        _quiet_mlflow()
        from mlflow import MlflowClient

        if self.embedded and not (self.root / "mlflow.db").exists():
            _create_database(self.root / "mlflow.db")
        self.settle()
        return MlflowClient(tracking_uri=self.tracking_uri)

    def settle(self) -> None:
        """Point the embedded database's artifact locations at this folder if the store was copied or
        moved here (``sweeps.tracking.relocate``). A store this process may not write is read as it
        is, with a warning: its runs and metrics are all there, its artifacts are not found."""
        from sweeps.tracking.relocate import former_roots, relocate

        database = self.root / "mlflow.db"
        if not self.embedded or self.root in _SETTLED or not database.is_file():
            return
        try:
            relocate(database, self.root)
            _SETTLED.add(self.root)  # once per process: a store does not move under a running command
        except sqlite3.OperationalError as error:  # read-only here, or held by a writer for over a minute
            formers = former_roots(database, self.root)
            log.warning("this store was moved or copied from %s, and its MLflow database cannot be updated "
                        "here (%s): checkpoints and other artifacts will not be found until a command that "
                        "can write %s runs on it", ", ".join(formers), error, database)

    def options(self, storage_url: str | None = None, task: str | None = None) -> list[str]:
        """The command-line options that reach this store (and ``storage_url``, ``task``) from any
        folder: each one only where it is not the default, so pasted hints stay short but complete."""
        from kdcore import DEFAULT_TASK
        from sweeps.tracking.storage import default_storage_url, display_url

        flags: list[str] = []
        if task and task != DEFAULT_TASK:
            flags += ["--task", task]
        if self.root != Path(DEFAULT_STORE).resolve() or os.environ.get("KDSWEEP_STORE"):
            flags += ["--store", str(self.root)]
        if storage_url and storage_url != default_storage_url(self.root):
            flags += ["--storage", display_url(storage_url)]
        if not self.embedded:
            flags += ["--tracking-uri", display_url(self.tracking_uri)]
        return flags

    def experiment(self, client: MlflowClient, name: str) -> str:
        """The id of experiment ``name``, created if missing. Its artifacts go under this store (in a
        folder named after it, made safe), except on a tracking server, which keeps its own: MLflow's
        default for a database is ./mlruns in whatever folder the command runs from."""
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        server = self.tracking_uri.startswith(("http://", "https://", "databricks", "uc"))
        location = None if server else (self.artifact_root / folder_name(name)).as_uri()
        try:
            # The tag tells viewers that read it (MLflow 3) that these are model-training runs.
            return client.create_experiment(name, artifact_location=location, tags=dict(EXPERIMENT_TAGS))
        except Exception:
            # Another process created it between our lookup and create: use theirs.
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id


def check_output(path: Path, store: Store, *, storage_url: str | None = None, force: bool = False,
                 folder: bool = False, flag: str = "--out") -> Path:
    """``path``, resolved, once it is safe to write there (ConfigError, one line, before any work):
    not inside the store (its databases, journals, checkpoints, teachers and caches are kdsweep's
    own), not the Optuna storage or MLflow database wherever they are, in a folder this process can
    write; and a file that exists only with ``force``. ``folder``: ``path`` is a folder to write
    files into (a report), which may exist."""
    resolved = Path(path).expanduser().resolve()
    own = {store.root: "the store"}
    for file, what in ((store.database, "the MLflow database"), (_storage_file(storage_url), "the Optuna storage")):
        if file is not None:
            own[file.resolve()] = what
    what = own.get(resolved) or (f"inside the store {store.root}" if store.root in resolved.parents else None)
    if what is not None:
        raise ConfigError(f"{flag} {path} is {what}: a store's files are kdsweep's own and are never written "
                          f"over; give a {'folder' if folder else 'file'} outside {store.root}")
    if folder:
        check_folder(resolved, flag, writable=True)
        return resolved
    if resolved.is_dir():
        raise ConfigError(f"{flag} {path} is a folder: give a file name in it")
    if not resolved.parent.is_dir():
        raise ConfigError(f"{flag} {path}: folder {resolved.parent} does not exist; create it or give another {flag}")
    if not os.access(resolved.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: no permission to write in {resolved.parent}; give a folder you can write to")
    if resolved.exists() and not force:
        raise ConfigError(f"{flag} {path} exists: add --force to replace it, or give another file name")
    return resolved


def _storage_file(url: str | None) -> Path | None:
    """The file an Optuna storage URL keeps its studies in (a journal or SQLite file), or None."""
    if not url or ("://" in url and not url.startswith("sqlite:///")):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


def check_folder(path: Path, flag: str, writable: bool = False) -> None:
    """ConfigError naming ``flag`` when folder ``path`` is a file or lies under one, or (``writable``)
    when this process may not create or write it. Nothing is written."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is not a folder: give a folder (it is created if missing)")
    parent = _existing_ancestor(path)
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path} cannot be created: {parent} is not a folder; give another {flag.split()[0]}")
    if writable and not os.access(parent, os.W_OK | os.X_OK):
        what = "write to" if parent == path else f"create {path} in"
        raise ConfigError(f"{flag} {path}: no permission to {what} {parent}; pick a folder you can write to")


def make_folder(path: Path, flag: str) -> None:
    """Create folder ``path`` and its parents; ConfigError naming ``flag`` when that cannot be done
    (a file in the way, no permission, a read-only or virtual file system such as /proc)."""
    check_folder(path, flag, writable=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{flag} {path} cannot be created ({error.strerror}): pick a folder you can write "
                          "to") from None


def _existing_ancestor(path: Path) -> Path:
    """``path`` if it exists, else its nearest existing parent."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _damaged(path: Path | None, what: str, fix: str) -> StoreDamagedError:
    return StoreDamagedError(f"MLflow database {path} {what}: nothing was changed; restore it from a backup, or "
                             f"{fix}")


def _create_database(path: Path) -> None:
    """Create the MLflow SQLite database under a temporary name, then move it into place.

    MLflow builds its schema with a long series of migrations; a process killed halfway would
    leave a database that every later run fails on. Built aside, the file appears whole or not at all.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    store = SqlAlchemyStore(f"sqlite:///{tmp}", (path.parent / "artifacts").as_uri())
    store.engine.dispose()
    try:
        os.link(tmp, path)  # fails if another process got there first: keep theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _quiet_mlflow() -> None:
    """MLflow's database migrations log a screenful at INFO on first use; keep warnings only."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.store"):
        logging.getLogger(name).setLevel(logging.WARNING)
