"""Where kdsweep keeps things: the store folder, its MLflow database and artifacts, caches."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_STORE = "mlruns"


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
        root = Path(root or os.environ.get("KDSWEEP_STORE") or DEFAULT_STORE).resolve()
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        return cls(root, uri)

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
        """An MlflowClient on this store, creating the embedded database on first use."""
        _quiet_mlflow()
        from mlflow import MlflowClient

        if self.embedded and not (self.root / "mlflow.db").exists():
            _create_database(self.root / "mlflow.db")
        return MlflowClient(tracking_uri=self.tracking_uri)

    def experiment(self, client: MlflowClient, name: str) -> str:
        """The id of experiment ``name``, created (artifacts under this store) if missing."""
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = (self.artifact_root / name).as_uri() if self.embedded else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:
            # Another process created it between our lookup and create: use theirs.
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id


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
