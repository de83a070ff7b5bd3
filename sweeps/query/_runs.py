"""Every MLflow run of one experiment in bulk: tags and latest metrics, never one request per run.

Two readers give the same records. With an MlflowClient at hand (a sweep, a report), or a
tracking server's URL, one paged ``search_runs`` over the experiment. Without one, on a tracking
store that is a database (kdsweep's embedded SQLite file, or a server's PostgreSQL/MySQL database
named as the tracking URI), plain read-only SQL over the same tables ``search_runs`` reads
(``runs``, ``tags``, ``latest_metrics``): importing MLflow alone takes about 2 s on a small machine,
more than ``kdsweep trials`` may spend in all, and a server pages 10,000 full runs (every param,
tag and metric) in about 15 s. ``tests/test_query.py`` checks both readers agree.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sweeps.query._sql import key_filter

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


def experiment_runs(store: Store, experiment: str, client: MlflowClient | None = None, *,
                    tags: Collection[str] | None = None,
                    metrics: Collection[str] | Mapping[str, Collection[str]] | None = None) -> ExperimentRuns:
    """All active runs of ``experiment`` in ``store``: by SQL on a SQLite, PostgreSQL or MySQL
    tracking store unless ``client`` is given. A SQLite file that is missing or empty has no runs (it
    is not created); a damaged one raises StoreDamagedError (exit 1). ``tags``/``metrics`` name the
    only ones a SQL read needs to fetch (None: all; MLflow's client returns all regardless);
    ``metrics`` as a mapping, run id to names, fetches only those of those runs."""
    wanted = {"tags": tags, "latest_metrics": metrics}
    path = store.database
    if client is None and path is not None:
        problem = store.database_problem()
        if problem in ("missing", "empty"):
            return ExperimentRuns(None)
        if problem is not None:
            raise store.damaged(problem)
        try:
            # mode=ro: never creates or migrates the database; a running sweep's writes are not blocked.
            with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10) as db:
                return _read_sql(lambda sql, params: db.execute(sql, params).fetchall(), experiment, wanted)
        except sqlite3.OperationalError:
            pass  # a schema this reader does not know: ask MLflow itself
        except sqlite3.DatabaseError as error:  # not a database, malformed
            raise store.damaged(str(error)) from None
    elif client is None and store.tracking_uri.startswith(_SERVER_DATABASES):
        found = _read_database(store.tracking_uri, experiment, wanted)
        if found is not None:
            return found
    return _read_client(client or store.client(), experiment)


# A tracking server's own database, named as the tracking URI: MLflow reads it directly, so can we.
_SERVER_DATABASES = ("postgresql://", "postgresql+", "mysql://", "mysql+")


def _read_database(uri: str, experiment: str, wanted: dict[str, Collection[str] | None]) -> ExperimentRuns | None:
    """The runs by SQL (sweeps.query._sql), or None when SQL cannot read them."""
    from sweeps.query._sql import read_with

    return read_with(uri, lambda db: _read_sql(db.rows, experiment, wanted, key=db.key))


def _read_sql(execute: Callable[[str, dict], Iterable[tuple]], experiment: str,
              wanted: dict[str, Collection[str] | None], key: str = "key") -> ExperimentRuns:
    """The tables MLflow's ``search_runs`` reads (``runs``, ``tags``, ``latest_metrics``), one query
    each; ``execute(sql, params)`` runs a query with named parameters (``key`` quoted for MySQL)."""
    found = list(execute("SELECT experiment_id FROM experiments WHERE name = :name AND lifecycle_stage = 'active' "
                         "ORDER BY experiment_id", {"name": experiment}))
    if not found:
        return ExperimentRuns(None)
    params = {"experiment": found[0][0]}
    runs = {run_id: RunRecord(run_id, name or "", status or "", start or 0, uri or "")
            for run_id, name, status, start, uri in execute(
                "SELECT run_uuid, name, status, start_time, artifact_uri FROM runs "
                "WHERE experiment_id = :experiment AND lifecycle_stage = 'active'", params)}
    in_experiment = ("run_uuid IN (SELECT run_uuid FROM runs WHERE experiment_id = :experiment "
                     "AND lifecycle_stage = 'active')")
    only, keys = key_filter(key, wanted["tags"])
    if wanted["tags"] is None or wanted["tags"]:
        for run_id, name, value in execute(f"SELECT run_uuid, {key}, value FROM tags WHERE {in_experiment}{only}",
                                           {**params, **keys}):
            runs[run_id].tags[name] = value
    for run_filter, names in _metric_queries(wanted["latest_metrics"], in_experiment):
        only, keys = key_filter(key, names)
        for run_id, name, value, is_nan in execute(
                f"SELECT run_uuid, {key}, value, is_nan FROM latest_metrics WHERE {run_filter[0]}{only}",
                {**params, **run_filter[1], **keys}):
            if run_id in runs:
                runs[run_id].metrics[name] = float("nan") if is_nan else float(value)
    return ExperimentRuns(str(params["experiment"]), runs)


_RUNS_PER_QUERY = 1000  # at most this many run ids listed in a query; more are read by experiment


def _metric_queries(wanted: Collection[str] | Mapping[str, Collection[str]] | None, in_experiment: str
                    ) -> list[tuple[tuple[str, dict[str, str]], Collection[str] | None]]:
    """((run filter, its parameters), metric names) per query: every run of the experiment, or,
    for a mapping run id -> names, the runs wanting the same names together."""
    if not isinstance(wanted, Mapping):
        return [] if wanted is not None and not wanted else [((in_experiment, {}), wanted)]
    by_names: dict[tuple[str, ...], list[str]] = {}
    for run_id, names in wanted.items():
        if names:
            by_names.setdefault(tuple(sorted(names)), []).append(run_id)
    queries = []
    for names, run_ids in by_names.items():
        if len(run_ids) > _RUNS_PER_QUERY:  # many runs: cheaper by experiment than by a list of ids
            queries.append(((in_experiment, {}), names))
        else:
            ids = {f"r{i}": run_id for i, run_id in enumerate(run_ids)}
            queries.append(((f"run_uuid IN ({', '.join(':' + name for name in ids)})", ids), names))
    return queries


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
