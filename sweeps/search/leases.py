"""Crash safety for trials: a lease with a heartbeat, and reaping the trials whose holder died.

Optuna's own heartbeat works only on RDB storages and restarts a trial from scratch; this one
lives in trial user attrs, so it works on the journal too, and a reaped trial is re-enqueued
with the same params and resumes from its last epoch checkpoint. A worker writes the lease right
after ``study.ask()``, before anything slow; a trial still without one after a few seconds is
reaped. docs/reliability.md lists the crash windows and what closes each.

Across hosts (``kdsweep worker``): a holder's pid is checked only on its own host (``host_id``, which
``KDSWEEP_HOST`` sets, so tests can run several "hosts" on one machine). From any other host the
heartbeat decides: the trial is lost when its heartbeat is older than ``STALE_AFTER_S`` by this
host's clock *and* this process has watched it stay unchanged for ``UNCHANGED_S``. The second rule
makes a clock that runs behind harmless: a live holder's heartbeat keeps changing, whatever time it
says.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Collection
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from sweeps._pause import pause_at
from sweeps.search.overrides import carried_attrs
from sweeps.tracking.owners import close_dead_runs, host_id, pid_alive

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

log = logging.getLogger("kdsweep")

LEASE_ATTR = "kdsweep.lease"
RESUME_ATTR = "kdsweep.resume_of"
RUN_ATTR = "mlflow_run_id"
VALUES_ATTR = "kdsweep.values"  # what a finished trial tells Optuna, kept for the reaper
ERROR_ATTR = "kdsweep.error"  # a failed trial's error, one line: also the tag of its run
HEARTBEAT_S = 5.0
REAP_EVERY_S = 10.0  # how often each kdsweep run and kdsweep worker looks for lost trials
STALE_AFTER_S = 60.0
# The lease is the first thing a worker writes after study.ask(): a trial RUNNING this long
# without one lost its worker in between (only clocks that disagree across hosts could fool it).
UNLEASED_STALE_S = 5.0
UNCHANGED_S = 3 * HEARTBEAT_S
_watched: dict[tuple[int, float], float] = {}  # (trial id, heartbeat seen) -> when this process first saw it
FINISHED_STATES = ("COMPLETE", "PRUNED")  # run tags of a trial that ran to its end


def lease_timeout_s() -> float:
    """How old a heartbeat must be for its trial to count as lost: ``KDSWEEP_LEASE_TIMEOUT_S``
    (seconds, at least 3 heartbeats), else ``STALE_AFTER_S``."""
    text = os.environ.get("KDSWEEP_LEASE_TIMEOUT_S")
    if not text:
        return STALE_AFTER_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 3 * HEARTBEAT_S:
        from kdcore import ConfigError

        raise ConfigError(f"KDSWEEP_LEASE_TIMEOUT_S={text}: use a number of seconds >= {3 * HEARTBEAT_S:g} "
                          f"(3 heartbeats; default {STALE_AFTER_S:g})")
    return value


def checkpoint_path(store_root: Path, study: str, trial_number: int) -> Path:
    """Where a trial's per-epoch training state is kept until the trial finishes."""
    return Path(store_root) / "checkpoints" / study / f"trial-{trial_number:04d}.pt"


class Lease:
    """While held, refreshes ``kdsweep.lease`` = {host, pid, heartbeat, invocation} on the trial every
    few seconds; ``invocation`` names the ``kdsweep run`` that took the trial up."""

    def __init__(self, study: optuna.Study, trial_id: int, invocation: str = "", every_s: float = HEARTBEAT_S) -> None:
        self.storage = study._storage
        self.trial_id = trial_id
        self.invocation = invocation
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
        lease = {"host": host_id(), "pid": os.getpid(), "heartbeat": time.time(),
                 "invocation": self.invocation}
        self.storage.set_trial_user_attr(self.trial_id, LEASE_ATTR, lease)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._write()
            except Exception:  # the trial finished under us (state no longer RUNNING)
                return


def _holder_is_gone(trial: optuna.trial.FrozenTrial, stale_after_s: float, now: float, hosts_share: bool) -> bool:
    lease = trial.user_attrs.get(LEASE_ATTR)
    if lease is None:  # killed between study.ask() and its first lease write
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        if now - started <= UNLEASED_STALE_S:
            return False
        # A server storage may hold trials asked on another host, whose clock set datetime_start.
        first_seen = _watched.setdefault((trial._trial_id, 0.0), time.monotonic())
        return not hosts_share or time.monotonic() - first_seen >= UNLEASED_STALE_S
    here = lease["host"] == host_id()
    if here and not pid_alive(lease["pid"]):
        return True
    if now - lease["heartbeat"] <= stale_after_s:
        return False
    # Silent but maybe alive: hung, or stopped and just resumed (Ctrl-Z then fg, a laptop waking up:
    # its heartbeat thread has not caught up yet), or on a host whose clock runs behind. Only a
    # heartbeat that stays unchanged while this reaper watches it counts as a lost holder.
    first_seen = _watched.setdefault((trial._trial_id, lease["heartbeat"]), time.monotonic())
    return not (hosts_share or here) or time.monotonic() - first_seen >= UNCHANGED_S


def _served(study: optuna.Study) -> bool:
    """Whether the study lives in a database server, which other hosts may share (a journal or
    SQLite file belongs to this host, or to a network file system, where locks are weak anyway)."""
    from optuna.storages import RDBStorage

    storage = getattr(study._storage, "_backend", study._storage)  # unwrap Optuna's cache layer
    return isinstance(storage, RDBStorage) and not str(storage.url).startswith("sqlite")


def reap_stale_trials(study: optuna.Study, client: MlflowClient | None, *, store_root: str | Path | None = None,
                      experiment_id: str | None = None, lock: AbstractContextManager = nullcontext(),
                      stale_after_s: float | None = None, also_pids: Collection[int] = frozenset()) -> list[int]:
    """Finish the RUNNING trials whose lease holder is gone; returns their numbers.

    A trial whose MLflow run closed FINISHED (its worker died before ``study.tell``) is told its
    real result. Any other is re-enqueued with the same params to resume from its last
    checkpoint, its run closed KILLED, and it is marked FAIL with stop_reason ``worker_lost``.
    ``also_pids`` forces trials held by those (this host's) processes to count as gone, for an
    abort. ``lock`` (``storage_lock``) keeps two processes from reaping one trial at once.
    """
    from optuna.trial import TrialState

    reaped = []
    stale_after_s = lease_timeout_s() if stale_after_s is None else stale_after_s
    hosts_share = _served(study)
    with lock:
        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            lease = trial.user_attrs.get(LEASE_ATTR) or {}
            forced = lease.get("pid") in also_pids and lease.get("host") == host_id()
            if forced or _holder_is_gone(trial, stale_after_s, now, hosts_share):
                _reap(study, trial, client, store_root, experiment_id)
                reaped.append(trial.number)
    return reaped


def _reap(study: optuna.Study, trial: optuna.trial.FrozenTrial, client: MlflowClient | None,
          store_root: str | Path | None, experiment_id: str | None) -> None:
    """Every step can be redone and the trial's state is written last: a reap cut anywhere
    (the process killed) leaves the trial RUNNING, and the next reap finishes the job."""
    from optuna.trial import TrialState

    run = _trial_run(study, trial, client, experiment_id)
    finished = run is not None and run.info.status == "FINISHED" and run.data.tags.get("state") in FINISHED_STATES
    # What the worker was about to tell Optuna (one value, or two for a pareto study); studies from
    # before kdsweep.values was kept told best_val_acc.
    told = trial.user_attrs.get(VALUES_ATTR, trial.user_attrs.get("best_val_acc") if len(study.directions) == 1 else None)
    if finished and (run.data.tags["state"] == "PRUNED" or told is not None):
        if store_root is not None:  # what the worker would have done next
            drop_checkpoints(study, trial.number, store_root, client)
        if run.data.tags["state"] == "PRUNED":
            study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            study.tell(trial.number, told, skip_if_finished=True)
        log.warning("trial %d finished but its worker died before recording it: recorded as %s",
                    trial.number, run.data.tags["state"])
        return
    enqueue_resume(study, trial)
    pause_at("reap.enqueued")
    if run is not None:
        client.set_tag(run.info.run_id, "state", "FAIL")
        client.set_tag(run.info.run_id, "stop_reason", "worker_lost")
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        study._storage.set_trial_user_attr(trial._trial_id, "stop_reason", "worker_lost")
    except UpdateFinishedTrialError:  # its own worker told it meanwhile (an abort racing a --jobs 1 thread)
        return
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    log.warning("trial %d lost its worker: marked FAIL and re-enqueued to resume from its checkpoint", trial.number)


def enqueue_resume(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Enqueue the re-run of ``trial`` (same params, carried attrs, ``kdsweep.resume_of``) unless
    one is already enqueued: that attr is the marker that makes a cut reap safe to redo.

    A trial lost before it suggested its values has only the fixed params it was enqueued with."""
    if any(t.user_attrs.get(RESUME_ATTR) == trial.number for t in study.get_trials(deepcopy=False)):
        return
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    study.enqueue_trial(params, user_attrs={RESUME_ATTR: trial.number, **carried_attrs(trial)})


def resume_chain(study: optuna.Study, number: int) -> list[int]:
    """``number`` and the trials it re-runs, latest first: a re-run lost before it loaded its
    checkpoint leaves that checkpoint to the next one."""
    trials = study.get_trials(deepcopy=False)
    chain: list[int] = []
    while isinstance(number, int) and 0 <= number < len(trials) and number not in chain:
        chain.append(number)
        number = trials[number].user_attrs.get(RESUME_ATTR)
    return chain


def drop_checkpoints(study: optuna.Study, number: int, store_root: str | Path,
                     client: MlflowClient | None = None) -> None:
    """Delete the epoch checkpoints of a finished trial and of the trials it re-ran: the local
    files, and the copies on a tracking server (sweeps/tracking/shared.py) when ``client`` is one."""
    from sweeps.tracking.shared import delete_checkpoints, is_shared

    trials = study.get_trials(deepcopy=False)
    for n in resume_chain(study, number):
        checkpoint_path(Path(store_root), study.study_name, n).unlink(missing_ok=True)
        run_id = trials[n].user_attrs.get(RUN_ATTR)
        if client is not None and run_id and is_shared(client.tracking_uri):
            try:
                delete_checkpoints(client, run_id)
            except Exception as error:  # clean-up only: the trial's result is already safe
                log.warning("could not delete the shared checkpoint of trial %d: %s", n, error)


def _trial_run(study: optuna.Study, trial: optuna.trial.FrozenTrial, client: MlflowClient | None,
               experiment_id: str | None):
    """The trial's MLflow run: by the trial's link, or found by its tags and linked (a worker
    killed between creating the run and linking it); None when there is none."""
    if client is None:
        return None
    from mlflow.exceptions import MlflowException

    run_id = trial.user_attrs.get(RUN_ATTR)
    if run_id:
        try:
            return client.get_run(run_id)
        except MlflowException:
            return None
    if experiment_id is None:
        return None
    found = [r for r in client.search_runs([experiment_id], filter_string=f"tags.`kdsweep.kind` = 'trial' and "
                                           f"tags.`optuna.trial_number` = '{trial.number}'")
             if r.data.tags.get("optuna.study") == study.study_name]
    if not found:
        return None
    study._storage.set_trial_user_attr(trial._trial_id, RUN_ATTR, found[0].info.run_id)
    return found[0]


def close_orphan_runs(study: optuna.Study, client: MlflowClient, experiment_id: str) -> None:
    """Close the runs a crash left RUNNING: trial runs whose trial has finished, and the other runs
    (repeats, compress, federate, train) whose process on this host is dead (``close_dead_runs``)."""
    from optuna.trial import TrialState

    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING' and "
                                  "tags.`kdsweep.kind` = 'trial'", max_results=10_000):
        trial = by_number.get(int(run.data.tags.get("optuna.trial_number", -1)))
        if trial is None or trial.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        client.set_tag(run.info.run_id, "state", trial.state.name)
        client.set_terminated(run.info.run_id, status="FINISHED" if trial.state != TrialState.FAIL else "KILLED")
    close_dead_runs(client, [experiment_id])
