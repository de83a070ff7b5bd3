"""`kdsweep federate`: seed 004's last stage after a sweep. A trial's distilled student (default:
the study's best by validation) is trained on by simulated edge clients with FedAvg
(``kdcore.federated``), each on its shard of the training split with its shard's cached teacher
logits, and the global model is scored after every round.

Everything goes to one MLflow run of the study's experiment (tag ``kdsweep.kind = federate``,
child of the study's run): the settings as params, each round's global and per-client validation
accuracy at step = round, the final test accuracy beside the trial's, the teacher's and the KD
verdict's no-KD and distilled means (seed 004's table), and the federated student as a
checkpoint ``kdsweep export``-style loaders read. A round checkpoint in the store lets an
interrupted run resume: the same command continues it from its last finished round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcore import ConfigError
from sweeps._pause import pause_at

FEDERATE_KIND = "federate"
_FOLDER = "federated"  # in the store: round checkpoints of unfinished runs
_FINE_TUNE_LR = 0.1  # the clients' default learning rate, as a share of the trial's


@dataclass(frozen=True)
class Federated:
    """What a federated run gave: test accuracies of seed 004's table (None where the study has no
    complete verdict) and the MLflow run."""

    study: str
    trial: int
    run_id: str
    rounds: int
    resumed_after: int  # rounds already done when this call started (0: a new run)
    test_acc: float  # KD + federated
    trial_test_acc: float  # the distilled student it started from
    teacher_test_acc: float
    nokd_test_acc: float | None = None  # the verdict's paired means, when complete
    distilled_test_acc: float | None = None
    history: list[Any] = field(default_factory=list)


def federate_trial(study: str, *, trial: int | None = None, clients: int = 4, rounds: int = 20,
                   local_epochs: int = 1, partition: str = "iid", seed: int = 0, lr: float | None = None,
                   storage: str | None = None,
                   tracking_uri: str | None = None, store: str | Path | None = None,
                   on_round: Callable[[Any], None] | None = None) -> Federated:
    """Run (or resume) FedAvg from trial ``trial``'s student of ``study``; see the module docstring.
    The clients train with the trial's settings but ``lr`` (default: a tenth of the trial's: they
    fine-tune a trained model, and the trial's own rate, meant for training from scratch, took 5
    points of test accuracy off an MNIST-1D student in 10 rounds). Every setting is checked before
    anything is written."""
    from kdcore import get_task
    from kdcore._files import load_checkpoint
    from kdcore.data import labels_of
    from kdcore.federated import check_task, federate, partition as deal
    from sweeps.pipelines._trial import choose_trial, open_study_runs, study_run
    from sweeps.query.summary import comparison
    from sweeps.query.trials import load_student
    from sweeps.tracking.logged_run import prepare
    from sweeps.tracking.run_logger import RunLogger, student_checkpoint

    if rounds < 1 or local_epochs < 1:
        raise ConfigError(f"--rounds {rounds} and --local-epochs {local_epochs} must each be at least 1")
    chosen = choose_trial(study, trial, invocation=FEDERATE_KIND, storage=storage, tracking_uri=tracking_uri,
                          store=store)
    sources, row, number = chosen.sources, chosen.row, chosen.number
    if lr is not None and not lr > 0:  # before the trial's learning rate is scaled: the flag's own range
        raise ConfigError(f"--lr {lr} is not allowed: give a learning rate > 0")
    config = chosen.config.updated(lr=lr if lr is not None else chosen.config.lr * _FINE_TUNE_LR)
    task_spec = chosen.task_spec
    task = get_task(task_spec)
    check_task(task)  # before anything is written
    shards = deal(labels_of(task.splits().train), clients, partition, seed=seed)
    model = load_student(study, number, storage=storage, tracking_uri=tracking_uri, store=store)
    prepared = prepare(task_spec, sources.store, device=config.device)

    client, experiment = open_study_runs(chosen)
    settings = {"trial": number, "clients": clients, "local_epochs": local_epochs, "partition": partition,
                "seed": seed, "lr": config.lr}
    found = _unfinished(client, experiment, settings, sources.store.root)
    resume = None
    if found is not None:
        checkpoint_path = _checkpoint_path(sources.store.root, found)
        resume = load_checkpoint(checkpoint_path, "federated round checkpoint")
        logger = RunLogger.reopen(client, found)
        _log_missing_rounds(logger, resume["history"])
    else:
        logger = RunLogger.start(client, experiment, f"federate-trial{number}",
                                 params={**settings, "rounds": rounds},
                                 tags={"kdsweep.kind": FEDERATE_KIND, "optuna.study": study,
                                       "kdsweep.settings": f"trial {number}, {clients} clients ({partition}), "
                                                           f"{rounds} rounds of {local_epochs} epoch(s)"},
                                 parent_run_id=study_run(client, study))
        pause_at("federate.started")
        checkpoint_path = _checkpoint_path(sources.store.root, logger.run_id)
    done_before = len(resume["history"]) if resume else 0

    def after_round(result: Any, checkpoint: dict[str, Any]) -> None:
        from kdcore._files import save_atomic

        # The checkpoint first: a kill right after it loses nothing, since a resume logs the rounds
        # its history holds and the run does not (_log_missing_rounds).
        save_atomic(checkpoint, checkpoint_path)
        pause_at("federate.saved")
        logger.log_step(result.metrics(), step=result.round)
        if on_round is not None:
            on_round(result)

    try:
        result = federate(prepared.task, model, prepared.outputs.logits, config, shards=shards, rounds=rounds,
                          local_epochs=local_epochs, on_round=after_round, resume=resume)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: resumable from the last finished round
        logger.log_metrics({}, tags={"state": "INTERRUPTED"})
        logger.finish("KILLED")
        raise
    except BaseException as error:  # a crash: still resumable, but it failed
        from sweeps.search.trial import describe_error

        logger.log_metrics({}, tags={"state": "FAILED", "kdsweep.error": describe_error(error)})
        logger.finish("FAILED")
        raise
    verdict = comparison(study, storage=storage, tracking_uri=tracking_uri, store=store)
    complete = verdict.get("kd_verdict") not in (None, "incomplete")
    numbers = {"test_acc": result.test_acc, "trial_test_acc": float(row["test_acc"]),
               "teacher_test_acc": prepared.teacher.test_acc,
               **({"nokd_test_acc": verdict["nokd_test_acc"], "distilled_test_acc": verdict["distilled_test_acc"]}
                  if complete and "nokd_test_acc" in verdict else {})}
    logger.log_metrics(numbers, tags={"state": "FINISHED", "rounds_done": str(len(result.history))})
    logger.log_checkpoint(student_checkpoint(task_spec, prepared.task.num_classes, config, result.state_dict,
                                             {"test_acc": result.test_acc}))
    logger.finish()
    checkpoint_path.unlink(missing_ok=True)
    return Federated(study, number, logger.run_id, len(result.history), done_before, result.test_acc,
                     numbers["trial_test_acc"], numbers["teacher_test_acc"], numbers.get("nokd_test_acc"),
                     numbers.get("distilled_test_acc"), result.history)


def table_line(done: Federated, score: str = "accuracy") -> str:
    """Seed 004's table on one line: teacher, no-KD and distilled (the verdict's paired means),
    the trial's student, and the same student after federated rounds."""
    parts = [f"teacher {done.teacher_test_acc:.3f}"]
    if done.nokd_test_acc is not None and done.distilled_test_acc is not None:
        parts += [f"no-KD {done.nokd_test_acc:.3f}", f"KD {done.distilled_test_acc:.3f} (verdict means)"]
    parts += [f"trial {done.trial} {done.trial_test_acc:.3f}", f"KD + federated {done.test_acc:.3f}"]
    return f"test {score}: " + ", ".join(parts)


def _checkpoint_path(store_root: Path, run_id: str) -> Path:
    folder = Path(store_root) / _FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{run_id}.pt"


def _unfinished(client: Any, experiment: str, settings: dict[str, Any], store_root: Path) -> str | None:
    """The run id of an interrupted federated run of the same trial and settings whose round
    checkpoint is still in this store, or None."""
    runs = client.search_runs([experiment], filter_string=f"tags.`kdsweep.kind` = '{FEDERATE_KIND}' and "
                              "attributes.status != 'FINISHED'")
    for run in runs:
        same = all(run.data.params.get(k) == str(v) for k, v in settings.items())
        if same and (Path(store_root) / _FOLDER / f"{run.info.run_id}.pt").exists():
            return run.info.run_id
    return None


def _log_missing_rounds(logger: Any, history: list[dict[str, Any]]) -> None:
    """Log the rounds of a resumed run's checkpoint that its run lacks: a kill between saving a
    round and logging it left one out. Each round is logged once."""
    from kdcore.federated import RoundResult

    logged = {m.step for m in logger.client.get_metric_history(logger.run_id, "val_acc")}
    for entry in history:
        if entry["round"] not in logged:
            logger.log_step(RoundResult(**entry).metrics(), step=entry["round"])
