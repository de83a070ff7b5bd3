"""A store whose MLflow database is gone while its Optuna study still points at runs in it.

An empty or missing ``mlflow.db`` would otherwise be re-created silently, and the study's trials
would then name runs that no longer exist. ``kdsweep run`` checks both stores agree before it
writes anything, and stops with StoreDamagedError (exit code 1) when they do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sweeps.tracking.storage import StoreDamagedError, display_url, open_storage

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from sweeps.tracking.store import Store

RUN_ATTR = "mlflow_run_id"  # the trial user attr that links a trial to its MLflow run


def linked_runs(storage_url: str, study: str) -> list[tuple[int, str]]:
    """(trial number, MLflow run id) of every trial of ``study`` linked to a run; [] when the
    storage or the study does not exist yet (nothing is created)."""
    file = storage_url.removeprefix("sqlite:///") if storage_url.startswith("sqlite:///") else (
        None if "://" in storage_url else storage_url)
    if file is not None and not Path(file).exists():
        return []
    storage = open_storage(storage_url)
    found = [s for s in storage.get_all_studies() if s.study_name == study]
    if not found:
        return []
    return [(t.number, t.user_attrs[RUN_ATTR]) for t in storage.get_all_trials(found[0]._study_id, deepcopy=False)
            if t.user_attrs.get(RUN_ATTR)]


def check_tracking_store(store: Store, storage_url: str, study: str) -> list[tuple[int, str]]:
    """Refuse a MLflow SQLite database that is missing or empty while ``study`` links trials to runs
    in it (``Store.check_database``); returns the linked runs for ``check_linked_runs``."""
    runs = linked_runs(storage_url, study)
    if runs:
        store.check_database(logged_trials=len(runs))
    return runs


def check_linked_runs(client: MlflowClient, runs: list[tuple[int, str]], storage_url: str, study: str) -> None:
    """Refuse a tracking store that lacks the run of the study's latest linked trial (a database
    replaced or re-created, another --tracking-uri than the study's)."""
    from mlflow.exceptions import MlflowException

    if not runs:
        return
    number, run_id = runs[-1]
    try:
        client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise StoreDamagedError(
            f"MLflow store {display_url(client.tracking_uri)} has no run {run_id}, which trial {number} of study "
            f"'{study}' in {display_url(storage_url)} links to: pass the --tracking-uri the study ran with, restore "
            "the MLflow database from a backup, or start afresh with another --study") from None
