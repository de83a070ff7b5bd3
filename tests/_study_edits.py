"""Changes made to a private copy of the real swept store (``copy_store``), through Optuna and MlflowClient:
a KD verdict on the study's parent run, logged under the names the sweep uses, and a trial that is the
best on test accuracy but not on validation accuracy, so selection by the wrong split shows."""

from __future__ import annotations

import math
import time

import optuna
from _sweep_store import SweepStore
from mlflow import MlflowClient
from mlflow.entities import Metric

from sweeps import best, trials
from sweeps.tracking.storage import open_storage

# A verdict as the sweep logs it on the parent run: means over 3 paired seeds (``kd_gain`` = mean of
# KD minus no-KD test accuracy per seed; the interval a paired t). Values chosen to be exact in text.
HELPS = {"teacher_test_acc": 0.97, "distilled_test_acc": 0.744, "nokd_test_acc": 0.662, "retention": 0.767,
         "kd_gain": 0.082, "kd_gain_ci95_low": 0.051, "kd_gain_ci95_high": 0.113, "kd_repeats": 3.0,
         "distilled_val_acc": 0.75, "nokd_val_acc": 0.67}
GAIN_NUMBERS = ("kd_gain", "kd_gain_ci95_low", "kd_gain_ci95_high", "kd_repeats", "nokd_test_acc", "nokd_val_acc")


def parent_run_id(store: SweepStore) -> str:
    client = MlflowClient(store.tracking_uri)
    experiment = client.get_experiment_by_name(store.study)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`kdsweep.kind` = 'study'")
    return parent.info.run_id


def log_verdict(store: SweepStore, verdict: str, metrics: dict[str, float], *, reason: str = "",
                trial: int | None = None, step: int = 0) -> None:
    """Log ``metrics`` and the verdict tags on the study's parent run. A later ``step`` supersedes an
    earlier one, as a second invocation of the sweep does; the verdict is about ``trial`` (default:
    the best trial by best_val_acc)."""
    client = MlflowClient(store.tracking_uri)
    run_id = parent_run_id(store)
    if trial is None:
        trial = int(best(store.study, store=store.root)["number"])
    # Past any step the sweep itself logged at, so these are the run's latest values.
    step += 1000
    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, stamp, step) for k, v in {**metrics, "best_trial": trial}.items()])
    for key, value in {"kd_verdict": verdict, "kd_verdict_reason": reason, "kd_verdict_trial": str(trial)}.items():
        client.set_tag(run_id, key, value)


def stale_then_incomplete(store: SweepStore, reason: str) -> None:
    """A first invocation that logged a verdict with gain numbers, then a second one that ended
    incomplete and overwrote those numbers with NaN (what the sweep does)."""
    log_verdict(store, "helps", HELPS, step=0)
    log_verdict(store, "incomplete", {k: math.nan for k in GAIN_NUMBERS}, reason=reason, step=1)


def add_test_best_trial(store: SweepStore) -> tuple[int, int]:
    """Add a COMPLETE trial (with its MLflow run) that has the highest test_acc of the study but a lower
    best_val_acc than the validation-best trial, and no smaller size or time: a selection on validation
    never picks it, not even for the Pareto front; one on test always does.
    Returns (validation-best trial number, the new trial's number)."""
    frame = trials(store.study, store=store.root)
    assert frame["test_acc"].max() < 1.0, "the new trial needs room above every test accuracy"
    chosen = best(frame)
    opened = optuna.load_study(study_name=store.study, storage=open_storage(store.storage_url))
    client = MlflowClient(store.tracking_uri)
    experiment = client.get_experiment_by_name(store.study)
    number = len(opened.trials)
    run = client.create_run(experiment.experiment_id, run_name=f"trial-{number:04d}",
                            tags={"kdsweep.kind": "trial", "optuna.trial_number": str(number), "state": "COMPLETE"})
    template = opened.trials[int(chosen["number"])]
    value = float(chosen["best_val_acc"]) - 0.05
    opened.add_trial(optuna.trial.create_trial(
        params=template.params, distributions=template.distributions, value=value,
        user_attrs={"mlflow_run_id": run.info.run_id, "best_val_acc": value, "test_acc": 1.0,
                    "student_params": int(chosen["student_params"]),
                    "train_time_s": float(chosen["train_time_s"]) + 1.0}))
    return int(chosen["number"]), number
