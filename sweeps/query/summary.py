"""Studies at a glance, two studies side by side, and a study's teacher / no-KD / KD numbers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcore import ConfigError
from sweeps.query._runs import ExperimentRuns, experiment_runs
from sweeps.query.trials import Sources, trial_frame

if TYPE_CHECKING:
    import optuna
    import pandas as pd


def studies(*, storage: str | None = None, tracking_uri: str | None = None,
            store: str | Path | None = None) -> pd.DataFrame:
    """Every study in the Optuna storage: task, trial counts, best trial and accuracy, time spent.

    ``trial_time_s`` sums the trials' own durations (with parallel workers, more than the wall time).
    """
    import pandas as pd
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    source = Sources.resolve(storage, tracking_uri, store).storage()
    rows = []
    for summary in source.get_all_studies():
        frozen = source.get_all_trials(source.get_study_id_from_name(summary.study_name), deepcopy=False)
        complete = [t for t in frozen if t.state == TrialState.COMPLETE and t.value is not None]
        sign = -1.0 if summary.directions[0] == StudyDirection.MINIMIZE else 1.0
        top = max(complete, key=lambda t: sign * t.value) if complete else None
        starts = [t.datetime_start for t in frozen if t.datetime_start]
        ends = [t.datetime_complete for t in frozen if t.datetime_complete]
        rows.append({
            "study": summary.study_name, "task": summary.user_attrs.get("kdsweep.task"), "trials": len(frozen),
            **{name: sum(t.state == state for t in frozen) for name, state in (
                ("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL),
                ("running", TrialState.RUNNING))},
            "best_trial": top.number if top else None, "best_val_acc": top.value if top else None,
            "best_test_acc": top.user_attrs.get("test_acc") if top else None,
            "top_test_acc": max((t.user_attrs.get("test_acc", float("nan")) for t in complete), default=None),
            "trial_time_s": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in frozen
                                if t.datetime_complete and t.datetime_start),
            "started": min(starts) if starts else None, "last_finished": max(ends) if ends else None,
        })
    columns = ["study", "task", "trials", "complete", "pruned", "failed", "running", "best_trial", "best_val_acc",
               "best_test_acc", "top_test_acc", "trial_time_s", "started", "last_finished"]
    frame = pd.DataFrame(rows, columns=columns).astype({
        "study": "string", "task": "string", **{c: "int64" for c in ("trials", "complete", "pruned", "failed",
                                                                      "running")},
        "best_trial": "Int64", "best_val_acc": "float64", "best_test_acc": "float64", "top_test_acc": "float64",
        "trial_time_s": "float64"})
    for column in ("started", "last_finished"):
        frame[column] = pd.to_datetime(frame[column])
    return frame.sort_values("study", kind="stable").reset_index(drop=True)


def comparison(study: str, *, storage: str | None = None, tracking_uri: str | None = None,
               store: str | Path | None = None) -> dict[str, float]:
    """The study's teacher / no-KD student / distilled student numbers (the parent run's metrics)."""
    sources = Sources.resolve(storage, tracking_uri, store)
    sources.study(study)
    return study_comparison(experiment_runs(sources.store, study))


def study_comparison(runs: ExperimentRuns) -> dict[str, float]:
    keys = ("teacher_test_acc", "distilled_test_acc", "nokd_test_acc", "retention", "nokd_retention", "kd_gain",
            "best_trial", "student_params", "wall_time_s", "budget_s")
    parents = runs.of_kind("study")
    metrics = parents[-1].metrics if parents else {}
    return {k: metrics[k] for k in keys if k in metrics}


def compare(study_a: str, study_b: str, *, storage: str | None = None, tracking_uri: str | None = None,
            store: str | Path | None = None) -> pd.DataFrame:
    """Two studies side by side: one row per quantity (counts, best trial and its params, accuracy,
    size, cost, teacher / no-KD / KD comparison), one column per study."""
    import pandas as pd

    if study_a == study_b:
        raise ConfigError(f"compare needs two different studies, got {study_a!r} twice")
    sources = Sources.resolve(storage, tracking_uri, store)
    columns = {}
    for name in (study_a, study_b):
        opened = sources.study(name)
        runs = experiment_runs(sources.store, name)
        columns[name] = _summary(opened, trial_frame(opened, runs), study_comparison(runs))
    quantities = list(dict.fromkeys([*columns[study_a], *columns[study_b]]))
    frame = pd.DataFrame({name: [values.get(q) for q in quantities] for name, values in columns.items()},
                         index=pd.Index(quantities, name="quantity"), dtype="object")
    return frame


def _summary(study: optuna.Study, frame: pd.DataFrame, table: dict[str, float]) -> dict[str, Any]:
    complete = frame[frame["state"] == "COMPLETE"]
    summary: dict[str, Any] = {"task": study.user_attrs.get("kdsweep.task"), "trials": len(frame),
                               "complete": len(complete), "pruned": int((frame["state"] == "PRUNED").sum()),
                               "failed": int((frame["state"] == "FAIL").sum())}
    top = complete.dropna(subset=["best_val_acc"]).sort_values("best_val_acc", ascending=False, kind="stable")
    if len(top):
        row = top.iloc[0]
        summary.update({"best_trial": int(row["number"]), "best_val_acc": row["best_val_acc"],
                        "test_acc": row["test_acc"], "retention": row["retention"],
                        "student_params": row["student_params"], "train_time_s": row["train_time_s"]})
        summary.update({f"best.{p}": row[p] for p in study.best_trial.params if p in row.index})
    summary.update({"top_test_acc": complete["test_acc"].max(), "pareto_trials": int(frame["pareto"].sum()),
                    "mean_epoch_time_s": complete["epoch_time_s"].mean(),
                    "trial_time_s": frame["duration_s"].sum()})
    summary.update({k: table[k] for k in ("teacher_test_acc", "nokd_test_acc", "kd_gain") if k in table})
    return {k: (None if _missing(v) else v.item() if hasattr(v, "item") else v) for k, v in summary.items()}


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))
