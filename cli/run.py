"""`kdsweep run`: the Optuna search under a time budget."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli._common import console, exit_aborted, given, read_config, user_errors
from cli.train import StoreOpt, TaskOpt, TrackingOpt

_SEARCH = "Search"
_OBJECTIVE = "Objective and limits"


@user_errors
def run(
    task: TaskOpt = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Sweep YAML: run options, `space:` and fixed `train:` settings (default: none).")] = None,
    budget: Annotated[Optional[str], typer.Option(help="Wall-clock budget of the whole run, teacher included: 2h, 45m, 90s (default: 15m).")] = None,
    n_trials: Annotated[Optional[int], typer.Option(help="Stop after this many trials in this run (default: only the budget stops it).")] = None,
    study: Annotated[Optional[str], typer.Option(help="Study name (letters, digits, _ . -); an existing study resumes (default: the config file's name, else the task).")] = None,
    jobs: Annotated[Optional[int], typer.Option(help="Parallel worker processes; more than the usable cores run as that many (default: 1).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads per job; jobs x threads at most the usable cores (default: 1, fastest for small models and on a busy machine).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="tpe, random, grid, cmaes or qmc (default: tpe).", rich_help_panel=_SEARCH)] = None,
    pruner: Annotated[Optional[str], typer.Option(help="median, hyperband or none (default: median).", rich_help_panel=_SEARCH)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampler seed, 0 to 2**32-1 (default: 0).", rich_help_panel=_SEARCH)] = None,
    min_epochs: Annotated[Optional[int], typer.Option(help="A trial starts only if this many epochs fit in the time left; pruning starts after them (default: 3).", rich_help_panel=_SEARCH)] = None,
    fidelity: Annotated[Optional[str], typer.Option(help="What the pruner's first look costs. epochs: every epoch on all the labelled data; data: the first --min-epochs epochs on 30% of it (data:0.2 for 20%), and only the trials the pruner keeps go on with all of it (default: epochs).", rich_help_panel=_SEARCH)] = None,
    enqueue_presets: Annotated[Optional[bool], typer.Option("--enqueue-presets", help="Try the named presets first, each with all its settings (epochs, batch, accumulation, ...); data_fraction, data_seed, transfer_ratio and device stay the study's.", rich_help_panel=_SEARCH)] = None,
    repeats: Annotated[Optional[int], typer.Option(help="KD verdict: train the best trial's config and its no-KD twin this many times each (paired seeds) for a 95% interval of the gain; 0 skips it, 1 is too few (default: 3).", rich_help_panel=_SEARCH)] = None,
    objective: Annotated[Optional[str], typer.Option(help="accuracy: maximise validation accuracy; pareto: validation accuracy against --cost, the result is the front (default: accuracy).", rich_help_panel=_OBJECTIVE)] = None,
    cost: Annotated[Optional[str], typer.Option(help="The cost --objective pareto minimises: params, flops, latency, int8_size or train_time (default: params).", rich_help_panel=_OBJECTIVE)] = None,
    max_params: Annotated[Optional[int], typer.Option(help="Limit: student parameters; a larger student is rejected before training (default: none).", rich_help_panel=_OBJECTIVE)] = None,
    max_flops: Annotated[Optional[int], typer.Option(help="Limit: forward FLOPs per sample (default: none).", rich_help_panel=_OBJECTIVE)] = None,
    max_latency_ms: Annotated[Optional[float], typer.Option(help="Limit: CPU latency at batch 1, one thread, in ms (default: none).", rich_help_panel=_OBJECTIVE)] = None,
    max_size: Annotated[Optional[str], typer.Option(help="Limit: fp32 weights' size, e.g. 50KB, 48KiB, 1MB or bytes (default: none).", rich_help_panel=_OBJECTIVE)] = None,
    min_retention: Annotated[Optional[float], typer.Option(help="Limit: best validation accuracy / the teacher's, e.g. 0.98; checked after training (default: none).", rich_help_panel=_OBJECTIVE)] = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage: sqlite:///f.db, postgresql://..., or a journal file (default: <store>/optuna.journal).", rich_help_panel="Store")] = None,
    store: StoreOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Search T, alpha, compression ratio and lr with Optuna under a time budget; log every trial to MLflow; end with the KD verdict."""
    started = time.time()
    from dataclasses import replace

    from kdcore import DEFAULT_TASK, get_task, make_config
    from kdcore.threads import plan_threads
    from sweeps.search.budget import parse_budget
    from sweeps.search.fidelity import Fidelity
    from sweeps.search.objectives import LIMITS, Objective
    from sweeps.search.space import default_space, with_task_defaults
    from sweeps.search.plan import DEFAULT_MIN_EPOCHS, DEFAULT_REPEATS, SweepPlan
    from sweeps.search.checks import check_sweep
    from sweeps.tracking.storage import default_storage_url
    from sweeps.tracking.store import Store, folder_name
    from sweeps.search.sweep_file import DEFAULT_BUDGET, SweepFile

    # Everything is checked before anything is written. Precedence: defaults < file < flags.
    text, settings = read_config(config) if config else (None, {})
    file = make_config(SweepFile, **settings)
    options = {**file.model_dump(exclude_none=True), **given(
        task=task, budget=budget, n_trials=n_trials, study=study, jobs=jobs, threads=threads, sampler=sampler, pruner=pruner,
        seed=seed, min_epochs=min_epochs, fidelity=fidelity, enqueue_presets=enqueue_presets, storage=storage, repeats=repeats,
        objective=objective, cost=cost, max_params=max_params, max_flops=max_flops, max_latency_ms=max_latency_ms,
        max_size=max_size, min_retention=min_retention)}
    goal = Objective.parse(options.get("objective", "accuracy"), options.get("cost"),
                           **{name: options.get(name) for name in LIMITS})
    # Optuna prunes single-objective studies only: a pareto search stops trials by early stopping.
    pruner_given = "pruner" in options
    default_pruner = "median" if len(goal.directions) == 1 else "none"
    task_spec = options.get("task", DEFAULT_TASK)
    the_task = get_task(task_spec)
    # A classification study keeps space None (the default) as before; an embedding one records its own.
    space = options.get("space", default_space(the_task.kind) if the_task.kind != "classification" else None)
    fixed = with_task_defaults(space, options.get("train", {}), the_task.defaults())
    paths = Store.resolve(store, tracking_uri)
    paths.read_task_data()
    plan = SweepPlan(
        study=options["study"] if "study" in options
        else folder_name(config.stem if config else task_spec.replace(":", "-")),
        task=task_spec, store_root=str(paths.root), tracking_uri=paths.tracking_uri,
        storage_url=options.get("storage") or default_storage_url(paths.root),
        space=space, fixed=fixed,
        sampler=options.get("sampler", "tpe"), pruner=options.get("pruner", default_pruner),
        seed=options.get("seed", 0), budget_s=parse_budget(options.get("budget", DEFAULT_BUDGET)),
        started_at=started, min_epochs=options.get("min_epochs", DEFAULT_MIN_EPOCHS), n_trials=options.get("n_trials"),
        jobs=options.get("jobs", 1), repeats=options.get("repeats", DEFAULT_REPEATS), objective=goal,
        fidelity=Fidelity.parse(options.get("fidelity")))
    check_sweep(plan, bool(options.get("enqueue_presets")), pruner_given=pruner_given)
    workers, per_job, note = plan_threads(plan.jobs, options.get("threads"))
    plan = replace(plan, jobs=workers, threads=per_job)
    if note:
        console.print(note, highlight=False, soft_wrap=True, markup=False)

    from cli.sweep_view import print_summary, sweep_view
    from sweeps.search.sweep import run_sweep

    # A resumed study needs its own space and fixed settings: the config file carries them.
    run_options = [*(["--config", str(config.resolve())] if config else []), *plan.study_flags()]
    paths.create()
    try:
        with sweep_view() as view:
            summary = run_sweep(plan, view, enqueue_presets=bool(options.get("enqueue_presets")), sweep_file=text)
    except KeyboardInterrupt:
        resume = shlex.join(["kdsweep", "run", "--study", plan.study, *run_options,
                             *paths.options(plan.storage_url, plan.task)])
        exit_aborted("aborted: running trials were marked FAIL and will resume from their checkpoints "
                     f"with `{resume}`")
    print_summary(summary, paths, plan.task, run_options)
    if summary.interrupted:
        raise typer.Exit(130)
