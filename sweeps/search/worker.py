"""A sweep worker: asks the study for trials and runs them until the budget or trial count ends.

``kdsweep run --jobs 1`` runs one worker in a thread of the main process; ``--jobs N`` starts N
worker processes sharing the Optuna storage, each with cores / N torch threads. A worker process
whose parent dies (killed) finishes its epoch as after Ctrl-C, and exits within a few seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sweeps._pause import pause_at
from sweeps.search.trial import run_trial
from sweeps.tracking.logged_run import prepare
from sweeps.tracking.storage import open_storage
from sweeps.tracking.store import Store

if TYPE_CHECKING:
    from sweeps.search.plan import SweepPlan

log = logging.getLogger("kdsweep")

ORPHAN_POLL_S = 0.5
ORPHAN_EXIT_S = 5.0  # a worker whose parent died exits this long after, even mid-epoch


def work(plan: SweepPlan, worker: int, interrupt: threading.Event) -> None:
    """Run trials one after another while the plan allows and no interrupt is set."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(root=Path(plan.store_root), tracking_uri=plan.tracking_uri)
    study = optuna.load_study(study_name=plan.study, storage=open_storage(plan.storage_url),
                              sampler=plan.sampler_for(worker), pruner=plan.make_pruner())
    prepared = prepare(plan.task, store, device=plan.fixed.get("device", "auto"))  # a cache hit
    client = store.client()
    while not interrupt.is_set():
        trials = study.get_trials(deepcopy=False)
        if not (plan.trials_left(trials) and plan.has_time_for_a_trial(trials)) or _grid_done(study):
            return
        if plan.failing(trials):  # the sweep stops: sweeps/search/sweep.py says why
            return
        trial = study.ask()
        pause_at("asked")
        run_trial(study, trial, plan, prepared, client, interrupt)


def _grid_done(study) -> bool:
    exhausted = getattr(study.sampler, "is_exhausted", None)
    return bool(exhausted and exhausted(study))


class _Either:
    """Set when either event is: the parent's Ctrl-C relay, or this worker's own orphan watch."""

    def __init__(self, *events) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self.events)


def _exit_when_orphaned(parent: int, orphaned: threading.Event) -> None:
    """Poll the parent pid; once the parent is gone, stop the trial (as Ctrl-C does), then exit."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_POLL_S)
    log.warning("worker %d: the kdsweep process that started it is gone; stopping", os.getpid())
    orphaned.set()
    time.sleep(ORPHAN_EXIT_S)
    os._exit(1)  # still in an epoch: its lease names a dead process, so the next run reaps the trial


def process_main(plan: SweepPlan, worker: int, interrupt, threads: int, parent: int | None = None) -> None:
    """Entry point of a worker process: the parent relays Ctrl-C through ``interrupt``."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    orphaned = threading.Event()
    parent = os.getppid() if parent is None else parent
    threading.Thread(target=_exit_when_orphaned, args=(parent, orphaned), name="kdsweep-orphan-watch",
                     daemon=True).start()
    work(plan, worker, _Either(interrupt, orphaned))
