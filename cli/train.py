"""`kdsweep train` and `kdsweep teacher`: one distillation run, or just the teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli._common import console, given, read_yaml, set_threads, user_errors

_STORE = "Store"
StoreOpt = Annotated[Optional[Path], typer.Option(
    "--store", help="Folder for teachers, the teacher-output cache and the embedded MLflow store "
    "(default: ./mlruns, or $KDSWEEP_STORE).", rich_help_panel=_STORE)]
TrackingOpt = Annotated[Optional[str], typer.Option(
    "--tracking-uri", help="MLflow tracking URI (default: sqlite:///<store>/mlflow.db, or "
    "$MLFLOW_TRACKING_URI).", rich_help_panel=_STORE)]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="Torch threads, at most the usable cores (default: 1, fastest for small models and on a "
    "busy machine).", rich_help_panel="Training")]
# TrainConfig's defaults, for --help without importing kdcore (tests check they agree); a task's
# defaults() may replace them (mnist1d trains 60 epochs on 30% of its labels).
TRAIN_DEFAULTS = {"temperature": 4.0, "alpha": 0.7, "ratio": 0.5, "lr": 0.003, "epochs": 40, "data_fraction": 1.0,
                  "transfer_ratio": 0.0, "batch_size": 128, "patience": 8, "min_delta": 0.0, "weight_decay": 0.01,
                  "label_smoothing": 0.0, "grad_accum_steps": 1, "seed": 0, "data_seed": 0, "device": "auto"}


def _help(text: str, name: str) -> str:
    return f"{text} (default: {TRAIN_DEFAULTS[name]}, or the task's own)."


TaskOpt = Annotated[Optional[str], typer.Option(
    "--task", help="Built-in task (mnist1d, digits, mnist1d-retrieval) or package.module:factory (default: mnist1d).")]


@user_errors
def train(
    task: TaskOpt = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file with any of these settings; flags override it (default: none).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Start from a named preset: quick, conservative, balanced, aggressive, quality, fast, full (default: none).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help=_help("Softmax temperature T > 0", "temperature"))] = None,
    alpha: Annotated[Optional[float], typer.Option(help=_help("Weight of the distillation term, in [0, 1]", "alpha"))] = None,
    ratio: Annotated[Optional[float], typer.Option(help=_help("Student width / teacher width, in (0, 1]", "ratio"))] = None,
    lr: Annotated[Optional[float], typer.Option(help=_help("Peak learning rate > 0", "lr"))] = None,
    epochs: Annotated[Optional[int], typer.Option(help=_help("Maximum epochs", "epochs"))] = None,
    data_fraction: Annotated[Optional[float], typer.Option(help=_help("Fraction of the training split whose labels are used, in (0, 1]", "data_fraction"))] = None,
    transfer_ratio: Annotated[Optional[float], typer.Option(help=_help("Unlabelled inputs per labelled one in each batch, seen only by the KD term (0: none), in [0, 16]", "transfer_ratio"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=_help("Batch size", "batch_size"))] = None,
    patience: Annotated[Optional[int], typer.Option(help=_help("Early-stopping patience in epochs (0: off)", "patience"), rich_help_panel="Training")] = None,
    min_delta: Annotated[Optional[float], typer.Option(help=_help("Smallest improvement that resets patience", "min_delta"), rich_help_panel="Training")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help=_help("AdamW weight decay", "weight_decay"), rich_help_panel="Training")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help=_help("Label smoothing of the CE term", "label_smoothing"), rich_help_panel="Training")] = None,
    grad_accum_steps: Annotated[Optional[int], typer.Option(help=_help("Batches per optimizer step", "grad_accum_steps"), rich_help_panel="Training")] = None,
    seed: Annotated[Optional[int], typer.Option(help=_help("Seed of the initialisation and batch order", "seed"), rich_help_panel="Training")] = None,
    data_seed: Annotated[Optional[int], typer.Option(help=_help("Seed of the labelled data-fraction subset", "data_seed"), rich_help_panel="Training")] = None,
    device: Annotated[Optional[str], typer.Option(help=_help("auto, cpu, cuda or cuda:N", "device"), rich_help_panel="Training")] = None,
    threads: ThreadsOpt = None,
    repeats: Annotated[Optional[int], typer.Option(help="Judge distillation instead of one run: train this config and its no-KD twin this many times each (paired seeds seed+1..seed+K) and print the gain with its 95% interval; 2 or more (default: one run, no verdict).", rich_help_panel="Verdict")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.", rich_help_panel=_STORE)] = "kdsweep-train",
    run_name: Annotated[Optional[str], typer.Option(help="MLflow run name (default: MLflow picks one).", rich_help_panel=_STORE)] = None,
    store: StoreOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Train one student by distillation and log it to MLflow; with --repeats K, judge whether distillation pays."""
    from kdcore import DEFAULT_TASK, ConfigError, TrainConfig, check_config, get_task, make_config
    from kdcore import preset as preset_settings

    # Validate everything before anything is written. Precedence: the task's defaults < preset <
    # YAML file < flags.
    settings = preset_settings(preset) if preset else {}
    settings.update(read_yaml(config) if config else {})
    settings.update(given(task=task, temperature=temperature, alpha=alpha, ratio=ratio, lr=lr, epochs=epochs,
                          data_fraction=data_fraction, transfer_ratio=transfer_ratio, batch_size=batch_size,
                          patience=patience, min_delta=min_delta, weight_decay=weight_decay,
                          label_smoothing=label_smoothing, grad_accum_steps=grad_accum_steps, seed=seed,
                          data_seed=data_seed, device=device))
    task_spec = str(settings.pop("task", DEFAULT_TASK))
    from sweeps.tracking.store import Store

    paths = Store.resolve(store, tracking_uri)
    paths.read_task_data()  # the checks below read the task's data
    task_object = get_task(task_spec)
    train_config = make_config(TrainConfig, **{**task_object.defaults(), **settings})
    check_config(task_object, train_config)
    if repeats is not None and repeats < 2:
        raise ConfigError(f"--repeats {repeats} is not allowed: a confidence interval needs at least 2 pairs")
    if repeats is not None and not train_config.distills():
        raise ConfigError("--repeats compares distillation with its no-KD twin, but alpha=0 is already no KD: "
                          "give --alpha above 0")
    set_threads(threads)

    from cli._prepare import prepare_task

    paths.check_database()
    paths.check_reachable()
    paths.create()
    prepared = prepare_task(task_spec, paths, train_config.device, teachers=train_config.teachers)
    client = paths.client()
    experiment_id = paths.experiment(client, experiment)
    name = run_name or (f"{prepared.task.name}-T{train_config.temperature:g}-a{train_config.alpha:g}"
                        f"-r{train_config.ratio:g}")
    if repeats is not None:
        _judge(prepared, train_config, repeats, client, experiment_id, name)
    else:
        _train_once(prepared, train_config, client, experiment_id, name)
    console.print(f"MLflow experiment '{experiment}' at {paths.tracking_uri}", highlight=False, soft_wrap=True)
    if paths.embedded:
        console.print(f"look at it: mlflow ui --backend-store-uri {paths.tracking_uri}", highlight=False,
                      soft_wrap=True)


def _train_once(prepared, config, client, experiment_id: str, name: str) -> None:
    from cli.progress import EpochProgress
    from sweeps.tracking.logged_run import run_params, train_logged
    from sweeps.tracking.run_logger import RunLogger

    logger = RunLogger.start(client, experiment_id, name, params=run_params(prepared, config),
                             tags={"kdsweep.kind": "train"})
    with EpochProgress("training student", config.epochs) as progress:
        run = train_logged(prepared, config, logger, on_epoch=progress.update)
    logger.finish()
    m = run.metrics
    score = "test_acc" if prepared.task.kind != "embedding" else "test Recall@1"
    console.print(
        f"student: {score} {m['test_acc']:.4f}, retention {m['retention']:.3f} of the teacher, "
        f"{int(m['student_params'])} params, best epoch {run.result.best_epoch}/{run.result.epochs_run} "
        f"({run.result.stop_reason}), {m['train_time_s']:.1f}s; MLflow run {run.run_id}",
        highlight=False, soft_wrap=True)


def _judge(prepared, config, repeats: int, client, experiment_id: str, name: str) -> None:
    """The KD verdict of one config: ``repeats`` paired runs of it and of its no-KD twin, logged as
    children of one parent run that holds the verdict (the same numbers a sweep's parent holds)."""
    import threading

    from sweeps.query.summary import comparison_line, verdict_line
    from sweeps.search.objectives import score_label
    from sweeps.tracking.logged_run import run_params
    from sweeps.tracking.run_logger import RunLogger
    from sweeps.verdict.paired import incomplete_verdict
    from sweeps.verdict.repeats import record_verdict, run_repeats

    parent = RunLogger.start(client, experiment_id, f"{name}-verdict", params=run_params(prepared, config),
                             tags={"kdsweep.kind": "verdict", "kd_repeats_wanted": str(repeats)})
    interrupt = threading.Event()
    try:
        verdict = run_repeats(
            prepared, config, repeats=repeats, trial=None, client=client, experiment_id=experiment_id, study=None,
            study_run_id=parent.run_id, interrupt=interrupt, tags={"mlflow.parentRunId": parent.run_id},
            on_start=lambda i, arm: console.print(f"pair {i}/{repeats}: {'KD' if arm == 'kd' else 'no-KD'} "
                                                  f"(seed {config.seed + i})", highlight=False))
    except KeyboardInterrupt:
        record_verdict(client, parent.run_id, incomplete_verdict(
            "interrupted (Ctrl-C)", teacher_test_acc=prepared.teacher.test_acc, trial=None))
        parent.finish("KILLED")
        raise typer.Exit(130) from None
    record_verdict(client, parent.run_id, {k: v for k, v in verdict.items() if k != "runs"})
    parent.finish()
    for run in verdict["runs"]:
        accuracy = f"test_acc {run['test_acc']:.4f}" if run["test_acc"] is not None else run["stop_reason"]
        console.print(f"  pair {run['repeat']} {run['arm']:>4} (seed {run['seed']}): {accuracy}", highlight=False)
    console.print(verdict_line(verdict), highlight=False, soft_wrap=True, markup=False)
    seeds = comparison_line(verdict, score_label(prepared.task.kind))
    if seeds:
        console.print(seeds, highlight=False, soft_wrap=True, markup=False)
    console.print(f"teacher test_acc {prepared.teacher.test_acc:.4f}; verdict run {parent.run_id}",
                  highlight=False, soft_wrap=True)


@user_errors
def teacher(
    task: TaskOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    store: StoreOpt = None,
    teachers: Annotated[int, typer.Option(help="How many of the task's teachers to prepare: more than 1 also "
                                               "trains its ensemble (Task.teachers).")] = 1,
    threads: ThreadsOpt = None,
) -> None:
    """Train (or load) the task's teacher, save it in the store and cache its outputs."""
    from kdcore import DEFAULT_TASK, TrainConfig, check_config, get_task, make_config
    from sweeps.tracking.store import Store

    paths = Store.resolve(store)
    paths.read_task_data()
    task_object = get_task(task or DEFAULT_TASK)
    check_config(task_object, make_config(TrainConfig, **{**task_object.defaults(), "device": device,
                                                          "teachers": teachers}))
    set_threads(threads)
    from cli._prepare import prepare_task

    paths.create()
    prepare_task(task or DEFAULT_TASK, paths, device, teachers=teachers)
