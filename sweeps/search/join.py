"""Workers that join a study from other hosts (``kdsweep worker``).

The study carries what a worker needs: ``kdsweep run`` stores its plan (task, space, fixed
settings, sampler, pruner, objective, fidelity, MLflow experiment and parent run) in the study's
user attrs, and keeps a trials window there: until when trials may run, so that they end before
the run's KD verdict. A worker reads both, takes the teacher and its cache from the tracking
server (sweeps/tracking/shared.py), and runs trials in the window, within its own budget.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcore import ConfigError
from sweeps.search.fidelity import Fidelity
from sweeps.search.leases import LEASE_ATTR, REAP_EVERY_S
from sweeps.tracking.owners import host_id
from sweeps.search.objectives import Objective
from sweeps.search.plan import SweepPlan

if TYPE_CHECKING:
    import optuna

PLAN_ATTR = "kdsweep.plan"
WINDOW_ATTR = "kdsweep.trials_until"
_STUDY_FIELDS = ("study", "task", "space", "fixed", "sampler", "pruner", "seed", "min_epochs", "grid_points",
                 "experiment_id", "parent_run_id")
_REPUBLISH_S = 5.0  # the window moves with the run's estimate of its repeats; small moves are not worth a write


def plan_record(plan: SweepPlan) -> dict[str, Any]:
    """What a worker needs from the run's plan (JSON, for the study's user attrs)."""
    return {**{name: getattr(plan, name) for name in _STUDY_FIELDS},
            "objective": asdict(plan.objective), "fidelity": asdict(plan.fidelity)}


def joined_plan(study: optuna.Study, *, store_root: Path, tracking_uri: str, storage_url: str, budget_s: float,
                started_at: float, n_trials: int | None, invocation: str) -> SweepPlan:
    """The plan of a worker joining ``study``; ConfigError when no ``kdsweep run`` has set it up."""
    record = study.user_attrs.get(PLAN_ATTR)
    if record is None:
        raise ConfigError(f"study '{study.study_name}' was not started by a kdsweep run that workers can join (it has "
                          "no kdsweep.plan): start it with `kdsweep run --study ... --storage ... --tracking-uri ...`")
    objective = record["objective"]
    return SweepPlan(
        **{name: record[name] for name in _STUDY_FIELDS}, store_root=str(store_root), tracking_uri=tracking_uri,
        storage_url=storage_url, budget_s=budget_s, started_at=started_at, n_trials=n_trials, repeats=0,
        invocation=invocation, joined=True,
        objective=Objective(objective["kind"], objective["cost"], tuple(tuple(limit) for limit in objective["limits"])),
        fidelity=Fidelity(**record["fidelity"]))


def publish_window(study: optuna.Study, until: float, published: float | None = None) -> float:
    """Tell workers until when trials may run (a ``time.time()`` value), unless ``published`` (what
    this process wrote last) is within a few seconds of it; returns what the study now says."""
    if published is not None and abs(published - until) <= _REPUBLISH_S:
        return published
    study.set_user_attr(WINDOW_ATTR, until)
    return until


def window_until(study: optuna.Study) -> float:
    return float(study.user_attrs.get(WINDOW_ATTR, 0.0))


def within_window(plan: SweepPlan, study: optuna.Study) -> SweepPlan:
    """A joined worker's plan, its budget cut to the study's trials window as it is now (a window
    in the past: the run is past its trials, or over)."""
    end = min(plan.deadline, window_until(study))
    return replace(plan, budget_s=max(0.0, end - plan.started_at))


def sampler_offset() -> int:
    """Each worker process seeds its sampler apart from the others (the run's workers use 0..jobs-1)."""
    import os

    return 1_000 + zlib.crc32(f"{host_id()}:{os.getpid()}".encode()) % 1_000_000


def joined_trials_running(study: optuna.Study, invocation: str) -> list[int]:
    """Numbers of the RUNNING trials that another invocation (a worker) holds."""
    from optuna.trial import TrialState

    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if (t.user_attrs.get(LEASE_ATTR) or {}).get("invocation") != invocation]


def wait_for_joined_trials(study: optuna.Study, invocation: str, reap, until: float, poll_s: float = 1.0,
                           check_abort=lambda: None) -> None:
    """Wait, reaping now and then, until no other invocation's trial is RUNNING, or ``until``;
    ``check_abort`` (called each poll) raises to stop waiting."""
    last_reap = 0.0
    while joined_trials_running(study, invocation) and time.time() < until:
        check_abort()
        if time.monotonic() - last_reap > REAP_EVERY_S:
            reap()
            last_reap = time.monotonic()
        time.sleep(poll_s)
