"""Every MLflow run of one experiment in bulk: tags and latest metrics, never one request per run.

Two readers give the same records. With an MlflowClient at hand (a sweep, a report), one paged
``search_runs`` over the experiment. Without one, on a SQLite tracking store (kdsweep's
embedded default), plain read-only SQL over the same tables ``search_runs`` reads (``runs``,
``tags``, ``latest_metrics``): importing MLflow alone takes about 2 s on a small machine, more
than ``kdsweep trials`` may spend in all. ``tests/test_query.py`` checks both readers agree.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from sweeps.tracking.store import Store

_PAGE = 50_000  # MLflow's largest page for search_runs


@dataclass
class RunRecord:
    """One MLflow run as the query API needs it."""

    run_id: str
    name: str
    status: str
    start_time: int  # ms since the epoch
    artifact_uri: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ExperimentRuns:
    """The active runs of one experiment, by run id; ``experiment_id`` is None when it does not exist."""

    experiment_id: str | None
    runs: dict[str, RunRecord] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[RunRecord]:
        """Runs tagged ``kdsweep.kind = kind`` (study, trial, repeat), oldest first."""
        found = [r for r in self.runs.values() if r.tags.get("kdsweep.kind") == kind]
        return sorted(found, key=lambda r: r.start_time)


def experiment_runs(store: Store, experiment: str, client: MlflowClient | None = None) -> ExperimentRuns:
    """All active runs of ``experiment`` in ``store``: by SQL on a SQLite store unless ``client`` is given.
    A SQLite file that is missing or empty has no runs (it is not created); a damaged one raises
    StoreDamagedError (exit 1)."""
    path = store.database
    if client is None and path is not None:
        problem = store.database_problem()
        if problem in ("missing", "empty"):
            return ExperimentRuns(None)
        if problem is not None:
            raise store.damaged(problem)
        try:
            return _read_sqlite(path, experiment)
        except sqlite3.OperationalError:
            pass  # a schema this reader does not know: ask MLflow itself
        except sqlite3.DatabaseError as error:  # not a database, malformed
            raise store.damaged(str(error)) from None
    return _read_client(client or store.client(), experiment)


def _read_sqlite(path: Path, experiment: str) -> ExperimentRuns:
    # mode=ro: never creates or migrates the database; a running sweep's writes are not blocked.
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10) as db:
        row = db.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active' "
                         "ORDER BY experiment_id LIMIT 1", (experiment,)).fetchone()
        if row is None:
            return ExperimentRuns(None)
        experiment_id = row[0]
        runs = {run_id: RunRecord(run_id, name or "", status or "", start or 0, uri or "")
                for run_id, name, status, start, uri in db.execute(
                    "SELECT run_uuid, name, status, start_time, artifact_uri FROM runs "
                    "WHERE experiment_id = ? AND lifecycle_stage = 'active'", (experiment_id,))}
        in_experiment = "run_uuid IN (SELECT run_uuid FROM runs WHERE experiment_id = ? AND lifecycle_stage = 'active')"
        for run_id, key, value in db.execute(f"SELECT run_uuid, key, value FROM tags WHERE {in_experiment}",
                                             (experiment_id,)):
            runs[run_id].tags[key] = value
        for run_id, key, value, is_nan in db.execute(
                f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE {in_experiment}", (experiment_id,)):
            runs[run_id].metrics[key] = float("nan") if is_nan else float(value)
    return ExperimentRuns(str(experiment_id), runs)


def _read_client(client: MlflowClient, experiment: str) -> ExperimentRuns:
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage != "active":
        return ExperimentRuns(None)
    runs: dict[str, RunRecord] = {}
    token = None
    while True:
        page = client.search_runs([found.experiment_id], max_results=_PAGE, page_token=token)
        for run in page:
            info = run.info
            runs[info.run_id] = RunRecord(info.run_id, info.run_name or "", info.status, info.start_time or 0,
                                          info.artifact_uri or "", dict(run.data.tags), dict(run.data.metrics))
        token = page.token
        if not token:
            return ExperimentRuns(found.experiment_id, runs)
