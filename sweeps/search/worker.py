"""A sweep worker: asks the study for trials and runs them until the budget or trial count ends.

``kdsweep run --jobs 1`` runs one worker in a thread of the main process; ``--jobs N`` starts N
worker processes sharing the Optuna storage, each with cores / N torch threads.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sweeps.tracking.logged_run import prepare
from sweeps.tracking.storage import open_storage
from sweeps.tracking.store import Store
from sweeps.search.trial import run_trial

if TYPE_CHECKING:
    from sweeps.search.plan import SweepPlan


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
        run_trial(study, study.ask(), plan, prepared, client, interrupt)


def _grid_done(study) -> bool:
    exhausted = getattr(study.sampler, "is_exhausted", None)
    return bool(exhausted and exhausted(study))


def process_main(plan: SweepPlan, worker: int, interrupt, threads: int) -> None:
    """Entry point of a worker process: the parent relays Ctrl-C through ``interrupt``."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    work(plan, worker, interrupt)
