"""Crash safety for trials: a lease with a heartbeat, and reaping the trials whose holder died.

Optuna's own heartbeat works only on RDB storages and restarts a trial from scratch; this one
lives in trial user attrs, so it works on the journal too, and a reaped trial is re-enqueued
with the same params and resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sweeps.search.overrides import carried_attrs

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

log = logging.getLogger("kdsweep")

LEASE_ATTR = "kdsweep.lease"
RESUME_ATTR = "kdsweep.resume_of"
RUN_ATTR = "mlflow_run_id"
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


def checkpoint_path(store_root: Path, study: str, trial_number: int) -> Path:
    """Where a trial's per-epoch training state is kept until the trial finishes."""
    return Path(store_root) / "checkpoints" / study / f"trial-{trial_number:04d}.pt"


class Lease:
    """While held, refreshes ``kdsweep.lease`` = {host, pid, heartbeat} on the trial every few seconds."""

    def __init__(self, study: optuna.Study, trial_id: int, every_s: float = HEARTBEAT_S) -> None:
        self.storage = study._storage
        self.trial_id = trial_id
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="kdsweep-heartbeat", daemon=True)

    def __enter__(self) -> Lease:
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _write(self) -> None:
        lease = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
        self.storage.set_trial_user_attr(self.trial_id, LEASE_ATTR, lease)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._write()
            except Exception:  # the trial finished under us (state no longer RUNNING)
                return


def _holder_is_gone(trial: optuna.trial.FrozenTrial, stale_after_s: float, now: float) -> bool:
    lease = trial.user_attrs.get(LEASE_ATTR)
    if lease is None:
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > stale_after_s
    if lease["host"] == socket.gethostname() and not _pid_alive(lease["pid"]):
        return True
    return now - lease["heartbeat"] > stale_after_s


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_trials(study: optuna.Study, client: MlflowClient | None, *, stale_after_s: float = STALE_AFTER_S,
                      also_pids: set[int] = frozenset()) -> list[int]:
    """Mark RUNNING trials whose lease holder is gone as FAIL, close their MLflow runs as KILLED,
    and re-enqueue their params so they resume from their last checkpoint. ``also_pids``
    forces trials held by those (this host's) processes to count as gone, for an abort.
    Returns the reaped trial numbers.
    """
    from optuna.trial import TrialState

    now = time.time()
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lease = trial.user_attrs.get(LEASE_ATTR) or {}
        forced = lease.get("pid") in also_pids and lease.get("host") == socket.gethostname()
        if not (forced or _holder_is_gone(trial, stale_after_s, now)):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "stop_reason", "worker_lost")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except Exception:  # finished or reaped by someone else meanwhile
            continue
        run_id = trial.user_attrs.get(RUN_ATTR)
        if client is not None and run_id:
            client.set_tag(run_id, "state", "FAIL")
            client.set_tag(run_id, "stop_reason", "worker_lost")
            client.set_terminated(run_id, status="KILLED")
        study.enqueue_trial(trial.params, user_attrs={RESUME_ATTR: trial.number, **carried_attrs(trial)})
        log.warning("trial %d lost its worker: marked FAIL and re-enqueued to resume from its checkpoint",
                    trial.number)
        reaped.append(trial.number)
    return reaped


def close_orphan_runs(study: optuna.Study, client: MlflowClient, experiment_id: str) -> None:
    """Close trial runs left RUNNING although their trial has finished (a crash between the two)."""
    from optuna.trial import TrialState

    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING' and "
                                  "tags.`kdsweep.kind` = 'trial'", max_results=10_000):
        trial = by_number.get(int(run.data.tags.get("optuna.trial_number", -1)))
        if trial is None or trial.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        client.set_tag(run.info.run_id, "state", trial.state.name)
        client.set_terminated(run.info.run_id, status="FINISHED" if trial.state != TrialState.FAIL else "KILLED")
