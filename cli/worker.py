"""`kdsweep worker`: join a study that `kdsweep run` runs elsewhere and run its trials."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from cli._common import console, exit_aborted, set_threads, user_errors
from cli.train import StoreOpt, ThreadsOpt, TrackingOpt


@user_errors
def worker(
    study: Annotated[str, typer.Option("--study", help="The study to join, as `kdsweep run --study` named it.")],
    storage: Annotated[str, typer.Option("--storage", help="The study's Optuna storage, shared by every host: postgresql://user@host/db.")],
    tracking_uri: TrackingOpt = None,
    budget: Annotated[Optional[str], typer.Option(help="Wall-clock budget of this worker: 2h, 45m, 90s; it also stops when the study's run stops taking trials (default: until then).")] = None,
    n_trials: Annotated[Optional[int], typer.Option(help="Stop after this many trials (default: only the budget and the run stop it).")] = None,
    store: StoreOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Run trials of a study that `kdsweep run` is running on another host (same space and settings, read from the study), with the teacher and its cache downloaded from the tracking server."""
    started = time.time()
    import uuid

    import optuna

    from sweeps.search.budget import parse_budget
    from sweeps.search.checks import check_worker
    from sweeps.search.join import joined_plan
    from sweeps.search.worker import run_joined
    from sweeps.tracking.storage import open_storage
    from sweeps.tracking.store import Store

    budget_s = parse_budget(budget) if budget else 365 * 86_400.0
    paths = Store.resolve(store, tracking_uri)
    paths.read_task_data()
    check_worker(study, storage, paths, n_trials)
    set_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(study_name=study, storage=open_storage(storage))
    plan = joined_plan(loaded, store_root=paths.root, tracking_uri=paths.tracking_uri, storage_url=storage,
                       budget_s=budget_s, started_at=started, n_trials=n_trials, invocation=uuid.uuid4().hex)
    paths.create()
    try:
        counts, interrupted = run_joined(plan, note=lambda text: console.print(text, highlight=False, soft_wrap=True,
                                                                                markup=False))
    except KeyboardInterrupt:
        exit_aborted("aborted: this worker's running trial was marked FAIL and re-enqueued; another host resumes it")
    console.print(f"worker {'interrupted' if interrupted else 'done'} after {time.time() - started:.0f}s: " +
                  ", ".join(f"{n} {state.lower()}" for state, n in counts.items()), highlight=False)
    if interrupted:
        raise typer.Exit(130)
