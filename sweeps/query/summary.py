"""Studies at a glance, two studies side by side, and a study's KD verdict.

Nothing here is chosen on the test split: a study's best trial is the COMPLETE trial with the
highest best_val_acc, and its test_acc is shown as the held-out estimate. The KD verdict is read
from the study's parent MLflow run, where the sweep logs it after training the best trial and
its no-KD twin on K paired seeds (``kd_gain`` is the mean paired difference, KD minus no-KD, with
a 95% paired-t interval); ``verdict_line`` is the one way it is written, by the CLI and the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcore import ConfigError
from sweeps.query._runs import ExperimentRuns, experiment_runs
from sweeps.query.trials import Sources, best, trial_frame
from sweeps.search.objectives import feasible, val_acc
from sweeps.verdict.paired import INCOMPLETE, VERDICTS

if TYPE_CHECKING:
    import optuna
    import pandas as pd


def studies(*, storage: str | None = None, tracking_uri: str | None = None,
            store: str | Path | None = None) -> pd.DataFrame:
    """Every study in the Optuna storage: task, trial counts, best trial, time spent.

    ``best_trial`` has the highest best_val_acc (the study's objective); ``best_test_acc`` is its
    test accuracy, the held-out estimate. ``trial_time_s`` sums the trials' own durations (with
    parallel workers, more than the wall time).
    """
    import pandas as pd
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    source = Sources.resolve(storage, tracking_uri, store).storage()
    rows = []
    for summary in source.get_all_studies():
        frozen = source.get_all_trials(source.get_study_id_from_name(summary.study_name), deepcopy=False)
        complete = [t for t in frozen if t.state == TrialState.COMPLETE and t.values and feasible(t)]
        sign = -1.0 if summary.directions[0] == StudyDirection.MINIMIZE else 1.0
        top = max(complete, key=lambda t: sign * val_acc(t)) if complete else None
        starts = [t.datetime_start for t in frozen if t.datetime_start]
        ends = [t.datetime_complete for t in frozen if t.datetime_complete]
        rows.append({
            "study": summary.study_name, "task": summary.user_attrs.get("kdsweep.task"), "trials": len(frozen),
            **{name: sum(t.state == state for t in frozen) for name, state in (
                ("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL),
                ("running", TrialState.RUNNING))},
            "best_trial": top.number if top else None, "best_val_acc": val_acc(top) if top else None,
            "best_test_acc": top.user_attrs.get("test_acc") if top else None,
            "trial_time_s": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in frozen
                                if t.datetime_complete and t.datetime_start),
            "started": min(starts) if starts else None, "last_finished": max(ends) if ends else None,
        })
    columns = ["study", "task", "trials", "complete", "pruned", "failed", "running", "best_trial", "best_val_acc",
               "best_test_acc", "trial_time_s", "started", "last_finished"]
    frame = pd.DataFrame(rows, columns=columns).astype({
        "study": "string", "task": "string", **{c: "int64" for c in ("trials", "complete", "pruned", "failed",
                                                                      "running")},
        "best_trial": "Int64", "best_val_acc": "float64", "best_test_acc": "float64",
        "trial_time_s": "float64"})
    for column in ("started", "last_finished"):
        frame[column] = pd.to_datetime(frame[column])
    return frame.sort_values("study", kind="stable").reset_index(drop=True)


# The verdict's numbers, as the sweep logs them on the study's parent run (metrics), by kind.
_STUDY_NUMBERS = ("teacher_test_acc", "distilled_test_acc", "distilled_val_acc", "retention")
_NOKD_NUMBERS = ("nokd_test_acc", "nokd_val_acc", "kd_gain", "kd_gain_ci95_low", "kd_gain_ci95_high", "kd_repeats")
_COUNTS = ("best_trial", "kd_repeats")
# The verdict rows of ``compare``, in this order.
_COMPARED = ("kd_verdict", "kd_verdict_reason", "kd_gain", "kd_gain_ci95_low", "kd_gain_ci95_high", "kd_repeats",
             "teacher_test_acc", "distilled_test_acc", "nokd_test_acc")


def comparison(study: str, *, storage: str | None = None, tracking_uri: str | None = None,
               store: str | Path | None = None) -> dict[str, Any]:
    """Does distillation pay for this study? The verdict the sweep logged on the study's parent run.

    Keys (each only when known): ``kd_verdict`` (helps, hurts, no_difference, incomplete),
    ``kd_verdict_reason`` (why it is incomplete), ``best_trial`` (the trial the verdict is about),
    ``teacher_test_acc``, ``distilled_test_acc``/``distilled_val_acc`` and ``retention`` (means over
    the repeats; distilled / teacher), and,
    unless the verdict is incomplete, ``nokd_test_acc``/``nokd_val_acc``, ``kd_gain`` (mean paired difference in
    test accuracy, KD minus no-KD), ``kd_gain_ci95_low``/``kd_gain_ci95_high`` (paired t interval)
    and ``kd_repeats`` (the pairs they rest on). ``verdict_line`` writes it as one sentence.
    """
    sources = Sources.resolve(storage, tracking_uri, store)
    runs = experiment_runs(sources.store, study)
    if runs.experiment_id is None:
        sources.study(study)  # an unknown study: the error lists the known ones
    return study_comparison(runs)


def study_comparison(runs: ExperimentRuns) -> dict[str, Any]:
    """``comparison`` of an experiment's runs already read."""
    parents = runs.of_kind("study")
    if not parents:
        return {}
    parent = parents[-1]
    # A sweep that ends incomplete overwrites earlier kd_* numbers with NaN: NaN means missing.
    metrics = {k: v for k, v in parent.metrics.items() if not math.isnan(v)}
    verdict = parent.tags.get("kd_verdict") or None
    # Gain numbers stand only beside a finished verdict: the tag is authoritative, and a store
    # without it (an older kdsweep's single baseline, or a sweep still running) has none to trust.
    wanted = _STUDY_NUMBERS + (_NOKD_NUMBERS if verdict in VERDICTS and verdict != INCOMPLETE else ())
    table: dict[str, Any] = {k: metrics[k] for k in wanted if k in metrics}
    trial = parent.tags.get("kd_verdict_trial", "")
    if trial.isdigit():
        table["best_trial"] = int(trial)
    elif "best_trial" in metrics:
        table["best_trial"] = metrics["best_trial"]
    table.update({k: int(table[k]) for k in _COUNTS if k in table})
    if verdict is not None:
        table["kd_verdict"] = verdict
        if verdict == INCOMPLETE:
            table["kd_verdict_reason"] = parent.tags.get("kd_verdict_reason") or "no reason recorded"
    return table


def gain_interval(table: dict[str, Any]) -> str:
    """``+0.082 (95% CI +0.051 to +0.113, 3 paired seeds)``; empty when the table has no gain."""
    if "kd_gain" not in table:
        return ""
    interval = [f"95% CI {table['kd_gain_ci95_low']:+.3f} to {table['kd_gain_ci95_high']:+.3f}"
                if "kd_gain_ci95_low" in table and "kd_gain_ci95_high" in table else "no interval"]
    if "kd_repeats" in table:
        pairs = table["kd_repeats"]
        interval.append(f"{pairs} paired seed{'s' if pairs != 1 else ''}")
    return f"{table['kd_gain']:+.3f} ({', '.join(interval)})"


def verdict_line(table: dict[str, Any]) -> str:
    """The study's KD verdict as one line, the same wherever it is shown (CLI, report), e.g.
    ``KD verdict: helps — gain +0.082 (95% CI +0.051 to +0.113, 3 paired seeds) for trial 7;
    distilled 0.744, no-KD 0.662 (test means)`` or ``KD verdict: incomplete (reason)``."""
    verdict = table.get("kd_verdict")
    if verdict is None:
        return "KD verdict: none recorded (the sweep is still searching, ran with --repeats 0, or predates verdicts)"
    if verdict == INCOMPLETE:
        return f"KD verdict: incomplete ({table.get('kd_verdict_reason', 'no reason recorded')})"
    line = f"KD verdict: {verdict}"
    if "kd_gain" in table:
        line += f" — gain {gain_interval(table)}"
    trial = table.get("best_trial", table.get("kd_verdict_trial"))  # comparison()'s, or the sweep's own dict
    if trial is not None:
        line += f" for trial {trial}"
    means = [f"{label} {table[key]:.3f}" for label, key in (("distilled", "distilled_test_acc"),
                                                             ("no-KD", "nokd_test_acc")) if key in table]
    fewer = table.get("kd_verdict_reason")  # a verdict on fewer pairs than asked for says so
    return line + (f"; {', '.join(means)} (test means)" if means else "") + (f"; {fewer}" if fewer else "")


def comparison_line(table: dict[str, Any], score: str = "accuracy") -> str | None:
    """The seeds' comparison of a complete verdict on one line: teacher, student without KD,
    distilled student (test means over the paired seeds), retention and uplift with its interval,
    e.g. ``test Recall@1: teacher 0.944, no-KD 0.838, distilled 0.893 (retention 94.6%); uplift
    +0.054 (95% CI ...)``. None for an incomplete or missing verdict: nothing cut short is shown."""
    needed = ("teacher_test_acc", "nokd_test_acc", "distilled_test_acc", "kd_gain")
    if table.get("kd_verdict") in (None, INCOMPLETE) or not all(key in table for key in needed):
        return None
    teacher, distilled = table["teacher_test_acc"], table["distilled_test_acc"]
    retention = f" (retention {distilled / teacher:.1%})" if teacher else ""
    return (f"test {score}: teacher {teacher:.3f}, no-KD {table['nokd_test_acc']:.3f}, distilled {distilled:.3f}"
            f"{retention}; uplift {gain_interval(table)}")


def compare(study_a: str, study_b: str, *, storage: str | None = None, tracking_uri: str | None = None,
            store: str | Path | None = None) -> pd.DataFrame:
    """Two studies side by side: one row per quantity (counts, the best trial by best_val_acc with its
    params, test_acc and cost, then the KD verdict and its numbers), one column per study."""
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
    # A reason is there only for an incomplete verdict: no empty row when neither study has one.
    quantities = [q for q in quantities if q != "kd_verdict_reason" or any(c.get(q) for c in columns.values())]
    frame = pd.DataFrame({name: [values.get(q) for q in quantities] for name, values in columns.items()},
                         index=pd.Index(quantities, name="quantity"), dtype="object")
    return frame


def _summary(study: optuna.Study, frame: pd.DataFrame, table: dict[str, Any]) -> dict[str, Any]:
    complete = frame[frame["state"] == "COMPLETE"]
    summary: dict[str, Any] = {"task": study.user_attrs.get("kdsweep.task"), "trials": len(frame),
                               "complete": len(complete), "pruned": int((frame["state"] == "PRUNED").sum()),
                               "failed": int((frame["state"] == "FAIL").sum())}
    if (complete["feasible"] & complete["best_val_acc"].notna()).any():  # best() skips trials over a limit
        row = best(frame)
        summary.update({"best_trial": int(row["number"]), "best_val_acc": row["best_val_acc"],
                        "test_acc": row["test_acc"], "retention": row["retention"],
                        "student_params": row["student_params"], "train_time_s": row["train_time_s"]})
        params = frame.columns[list(frame.columns).index("state") + 1:list(frame.columns).index("best_val_acc")]
        summary.update({f"best.{p}": row[p] for p in params})
    summary.update({"pareto_trials": int(frame["pareto"].sum()),
                    "mean_epoch_time_s": complete["epoch_time_s"].mean(),
                    "trial_time_s": frame["duration_s"].sum()})
    summary.update({k: table.get(k) for k in _COMPARED})
    return {k: (None if _missing(v) else v.item() if hasattr(v, "item") else v) for k, v in summary.items()}


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))
