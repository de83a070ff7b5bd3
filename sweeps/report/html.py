"""``kdsweep report``: one self-contained HTML page (figures embedded) and its PNG files per study.

The page: the KD verdict (``sweeps.query.summary.verdict_line``) over the teacher / no-KD student /
distilled student table (means over the paired repeats, the gain with its 95% interval); accuracy
against student size and against training time with the Pareto fronts; validation curves of the
top trials; Optuna's parameter importances and parallel coordinates; epoch time by compression
ratio; the Pareto and top trials. Fronts and top trials are chosen on best_val_acc; test_acc is
shown as the held-out estimate. The same files are logged under ``report/`` of the study's parent
MLflow run, and the trial runs' ``pareto`` tags are brought up to date.
"""

from __future__ import annotations

import base64
import datetime
import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeps.report import _plots
from sweeps.query._format import cell
from sweeps.query._runs import ExperimentRuns, experiment_runs
from sweeps.query.summary import gain_interval, study_comparison, verdict_line
from sweeps.query.trials import SELECTION_METRIC, Sources, check_runs_found, trial_frame, update_pareto_tags
from sweeps.tracking.store import check_output, folder_name, make_folder

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from mlflow import MlflowClient

REPORT_ARTIFACT_DIR = "report"
_COST_WORDS = {"student_params": "student parameters", "train_time_s": "training time",
               "student_flops": "FLOPs", "latency_ms_b1": "latency", "int8_size_bytes": "INT8 size"}
REPORT_FILE = "report.html"
_TOP = 10


@dataclass
class Section:
    """One figure of the report: the PNG it was saved to, or the note saying why it is missing."""

    file: str
    title: str
    caption: str
    path: Path | None = None
    note: str = ""


def write_report(study: str, out: str | Path | None = None, *, storage: str | None = None,
                 tracking_uri: str | None = None, store: str | Path | None = None,
                 log_to_mlflow: bool = True) -> Path:
    """Write ``report.html`` and the PNGs for ``study`` into ``out`` (default ``./reports/<study>``,
    the study's name made a safe folder name); unless ``log_to_mlflow`` is False, log them to the
    study's parent run and refresh the trial runs' ``pareto`` tags. Returns the HTML path."""
    folder = Path(out) if out is not None else Path("reports") / folder_name(study)
    sources = Sources.resolve(storage, tracking_uri, store)
    check_output(folder, sources.store, storage_url=sources.storage_url, folder=True)
    opened = sources.study(study)
    runs = experiment_runs(sources.store, study)
    check_runs_found(opened, runs, sources.store)
    frame = trial_frame(opened, runs)
    table = study_comparison(runs)
    make_folder(folder, "--out")

    sections = _draw(opened, frame, runs, table, folder, sources.store.client())
    page = folder / REPORT_FILE
    page.write_text(_page(opened, frame, runs, table, sections), encoding="utf-8")
    parents = runs.of_kind("study")
    if log_to_mlflow and runs.experiment_id is not None:
        client = sources.store.client()
        for path in [page, *(s.path for s in sections if s.path)] if parents else []:
            client.log_artifact(parents[-1].run_id, str(path), artifact_path=REPORT_ARTIFACT_DIR)
        update_pareto_tags(opened, client=client, storage=sources.storage_url, store=sources.store.root)
    return page


def _draw(study: optuna.Study, frame: pd.DataFrame, runs: ExperimentRuns, table: dict[str, Any],
          folder: Path, client: MlflowClient) -> list[Section]:
    def val_history(run_id: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run_id, "val_acc")}

    colour, log_colour = _plots.colour_param(study, frame)
    context = _plots.Context(colour, log_colour, _teacher_acc(runs, table))
    colour_note = f" Colour: {colour}{' (log scale)' if log_colour else ''}." if colour else ""
    sections = [
        (Section("accuracy_vs_params.png", "Accuracy vs student size",
                 "Each dot is one trial's distilled student on the test split (the held-out estimate). The red "
                 "rings mark the Pareto front chosen on validation accuracy: no other complete trial is both "
                 "smaller and at least as accurate on validation; their height is their test accuracy. Grey "
                 f"crosses are pruned trials (stopped early, so under-trained).{colour_note} The dashed line is "
                 "the teacher."),
         lambda p: _plots.plot_accuracy_vs_cost(frame, context, "student_params", p)),
        (Section("accuracy_vs_time.png", "Cost vs accuracy: training time",
                 "Test accuracy against the seconds each trial spent training (on this machine). Points on "
                 "the red front (chosen on validation accuracy) are the cheapest way found to reach their "
                 f"validation accuracy.{colour_note}"),
         lambda p: _plots.plot_accuracy_vs_cost(frame, context, "train_time_s", p)),
        *([(Section(f"accuracy_vs_{cost}.png", f"Accuracy vs the study's cost: {cost}",
                    "The study searched validation accuracy against this cost (--objective pareto); the red rings "
                    f"are its front, within the study's limits.{colour_note}"),
            lambda p: _plots.plot_accuracy_vs_cost(frame, context, cost, p))]
          if (cost := frame.attrs.get("minimize", ("student_params",))[0]) not in ("student_params", "train_time_s")
          else []),
        (Section("int8_vs_fp32.png", "INT8 beside fp32",
                 "Each complete trial's student after post-training INT8 quantization (square) beside its fp32 "
                 "self (dot), joined: what quantization saves in bytes and costs in test accuracy. How it was "
                 "quantized is in each trial run's tags int8_method and int8_layers."),
         lambda p: _plots.plot_int8(frame, context, p)),
        (Section("validation_curves.png", "Validation curves of the top trials",
                 "Validation accuracy after every epoch (the value the pruner compares) for the trials with "
                 "the best validation accuracy; the dot marks the epoch whose weights were kept."),
         lambda p: _plots.plot_validation_curves(study, frame, p, history=val_history)),
        (Section("param_importances.png", "Parameter importances",
                 "How much of the variation in best validation accuracy each searched setting explains "
                 "(Optuna's default evaluator, over COMPLETE trials). Few trials give rough estimates."),
         lambda p: _plots.plot_optuna("importances", study, p)),
        (Section("parallel_coordinates.png", "Parallel coordinates",
                 "One line per COMPLETE trial through its settings, coloured by best validation accuracy: "
                 "look for the ranges where the best (darkest) lines gather."),
         lambda p: _plots.plot_optuna("parallel", study, p)),
        (Section("epoch_time_by_ratio.png", "Epoch time by compression ratio",
                 "Mean wall time of one epoch (training and validation) of each trial against the student's "
                 "width ratio: what a smaller student saves per epoch."),
         lambda p: _plots.plot_epoch_time(frame, p)),
    ]
    drawn = []
    for section, draw in sections:
        path = folder / section.file
        path.unlink(missing_ok=True)  # never leave a stale figure from an earlier report
        try:
            section.path = draw(path)
        except _plots.Skipped as skipped:
            section.note = str(skipped)
        drawn.append(section)
    return drawn


def _teacher_acc(runs: ExperimentRuns, table: dict[str, Any]) -> float | None:
    if "teacher_test_acc" in table:
        return table["teacher_test_acc"]
    logged = [r.metrics["teacher_test_acc"] for r in runs.of_kind("trial") if "teacher_test_acc" in r.metrics]
    return logged[-1] if logged else None


def _page(study: optuna.Study, frame: pd.DataFrame, runs: ExperimentRuns, table: dict[str, Any],
          sections: list[Section]) -> str:
    task = study.user_attrs.get("kdsweep.task", "?")
    counts = frame["state"].value_counts().to_dict()
    space = study.user_attrs.get("kdsweep.space", {})
    parents = runs.of_kind("study")
    wall = parents[-1].metrics.get("wall_time_s") if parents else None
    facts = [("task", task), ("trials", f"{len(frame)} ({', '.join(f'{n} {s.lower()}' for s, n in counts.items())})"),
             ("search space", "; ".join(f"{k}: {v}" for k, v in space.items())),
             ("time in trials",
              f"{frame['duration_s'].sum():.1f} s" + (f" (last sweep: {wall:.1f} s wall)" if wall else "")),
             *([("score", f"{frame.attrs['score']}: every accuracy in this report (validation, test, the "
                             "columns named *_acc) is the task's score, its Recall@1")]
               if frame.attrs.get("score", "accuracy") != "accuracy" else []),
             ("MLflow experiment", f"{study.study_name} (id {runs.experiment_id})" if runs.experiment_id else "none"),
             ("generated", datetime.datetime.now().isoformat(sep=" ", timespec="seconds"))]
    params = [c for c in _plots.searched_params(study) if c in frame.columns]
    costs = list(frame.attrs.get("minimize", ()))
    extras = [c for c in ("val_recall_at_5", "test_recall_at_5") if c in frame.columns]
    columns = list(dict.fromkeys(["number", *params, "best_val_acc", "test_acc", *extras, "retention", "student_params",
                                  *costs, "train_time_s", "epochs_run", "stop_reason"]))
    front = frame[frame["pareto"].to_numpy()].sort_values(costs[0] if costs else "student_params")
    against = ", ".join(_COST_WORDS.get(c, c) for c in costs)
    leaders = frame[(frame["state"] == "COMPLETE").to_numpy()].dropna(subset=[SELECTION_METRIC]).sort_values(
        SELECTION_METRIC, ascending=False, kind="stable").head(_TOP)
    parts = [f"<h1>kdsweep study <code>{_e(study.study_name)}</code></h1>", _facts(facts),
             "<h2>Does distillation pay? Teacher, student without distillation, distilled student</h2>",
             _comparison(table, frame, task)]
    for section in sections:
        parts.append(f"<h2>{_e(section.title)}</h2>")
        if section.path is not None:
            data = base64.b64encode(section.path.read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{_e(section.title)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{_e(section.caption)} <span class=file>({_e(section.file)})</span>"
                         "</figcaption></figure>")
        else:
            parts.append(f'<p class="note">Not drawn: {_e(section.note)}.</p>')
    parts += [f"<h2>Pareto-optimal trials ({len(front)})</h2>",
              f"<p>COMPLETE trials within the study's limits that no other beats on validation accuracy and "
              f"{_e(against)} at once (tagged <code>pareto=true</code> in MLflow). Test accuracy is shown as the "
              "held-out estimate; it plays no part in the choice.</p>", _table(front, columns),
              f"<h2>Top {min(_TOP, len(leaders))} trials by validation accuracy</h2>",
              "<p>Test accuracy beside it is the held-out estimate.</p>", _table(leaders, columns),
              *_compressed(runs), *_federated(runs, table)]
    return _TEMPLATE.format(title=_e(f"kdsweep report: {study.study_name}"), body="\n".join(parts))


def _comparison(table: dict[str, Any], frame: pd.DataFrame, task: str) -> str:
    """The verdict line over the teacher / no-KD / distilled table (test accuracy means over the repeats)."""
    if "kd_verdict" not in table and "distilled_test_acc" not in table:
        return ('<p class="note">No comparison yet: the sweep ends by training its best configuration with and '
                "without distillation on paired seeds; this one was interrupted or had no time left.</p>")
    trial = table.get("best_trial")
    of = f"trial {trial}" if trial is not None else "the best trial"
    pairs = table.get("kd_repeats")
    seeds = f", mean of {pairs} seeds" if pairs else ""
    params = _params_of(frame, trial)
    teacher = table.get("teacher_test_acc")
    rows = [("teacher", teacher, 1.0 if teacher else None, "", _teacher_params(task))]
    if "nokd_test_acc" in table:
        rows.append((f"student without KD ({of}'s settings with alpha = 0 and no transfer set{seeds})",
                     table["nokd_test_acc"],
                     table["nokd_test_acc"] / teacher if teacher else None, "", params))
    if "distilled_test_acc" in table:
        rows.append((f"distilled student ({of}{seeds})", table["distilled_test_acc"], table.get("retention"),
                     gain_interval(table), params))
    head = "".join(f"<th>{h}</th>" for h in ("model", "test accuracy", "retention of the teacher",
                                                 "KD gain (95% CI, paired seeds)", "parameters"))
    body = "".join(f"<tr><td>{_e(name)}</td><td>{cell('test_acc', acc)}</td><td>{cell('retention', ret)}</td>"
                   f"<td>{_e(gain)}</td><td>{cell('student_params', size)}</td></tr>"
                   for name, acc, ret, gain, size in rows)
    word = table.get("kd_verdict", "none")
    verdict = f'<p class="verdict verdict-{_e(word)}"><strong>{_e(verdict_line(table))}</strong></p>'
    note = ("" if "kd_gain" in table else
            '<p class="note">No KD gain: a gain is shown only when every paired repeat finished.</p>')
    return f"{verdict}<table class=num><tr>{head}</tr>{body}</table>{note}"


def _federated(runs: ExperimentRuns, table: dict[str, Any]) -> list[str]:
    """Seed 004's table, one row per finished ``kdsweep federate`` run: the teacher and the
    verdict's no-KD and distilled means beside each trial's student before and after the rounds."""
    done = [r for r in runs.of_kind("federate") if r.status == "FINISHED" and "test_acc" in r.metrics]
    if not done:
        return []
    head = "".join(f"<th>{h}</th>" for h in ("federated run", "teacher", "no-KD (verdict)", "KD (verdict)",
                                                 "the trial's student", "KD + federated"))
    body = "".join(
        f"<tr><td>{_e(r.tags.get('kdsweep.settings', r.name))}</td>"
        + "".join(f"<td>{cell('test_acc', value)}</td>" for value in (
            r.metrics.get("teacher_test_acc"), table.get("nokd_test_acc"), table.get("distilled_test_acc"),
            r.metrics.get("trial_test_acc"), r.metrics["test_acc"])) + "</tr>"
        for r in done)
    return ["<h2>After the search: federated rounds (seed 004)</h2>",
            "<p>Test accuracy of each <code>kdsweep federate</code> run's student after its FedAvg rounds, "
            "beside the teacher, the KD verdict's paired means and the trial's student it started from "
            "(docs/pipelines.md).</p>", f"<table class=num><tr>{head}</tr>{body}</table>"]


def _compressed(runs: ExperimentRuns) -> list[str]:
    """Seed 002's table: for each ``kdsweep compress`` call, the trial's student it started from and
    each step after it, with accuracy, size, latency, time and peak memory; fast and full mode
    of the same settings side by side. A step that did not finish says how it ended, with no numbers."""
    steps = runs.of_kind("compress")
    if not steps:
        return []
    calls: dict[str, list[Any]] = {}
    for run in steps:
        calls.setdefault(run.tags.get("kdsweep.compress_id", run.run_id), []).append(run)
    order = sorted(calls.values(), key=lambda c: (c[0].tags.get("kdsweep.settings", ""),
                                                  c[0].tags.get("kdsweep.mode") != "fast", c[0].start_time))
    columns = ("final_val_acc", "test_acc", "params", "size_bytes", "latency_ms_b1", "train_time_s", "step_time_s",
               "peak_memory_mb", "memory_growth_mb")
    head = "".join(f"<th>{h}</th>" for h in ("settings", "mode", "step", "val accuracy", "test accuracy",
                                                 "parameters", "bytes", "ms / sample (CPU, batch 1)", "training s",
                                                 "step s", "peak memory MiB", "of which the step's MiB", "runs as"))
    rows = []
    for call in order:
        first = call[0]
        settings, mode = first.tags.get("kdsweep.settings", ""), first.tags.get("kdsweep.mode", "")
        start = {k: first.metrics.get(f"input_{k}") for k in columns}
        rows.append(_compress_row(settings, mode, f"trial {first.tags.get('kdsweep.trial', '?')}'s student",
                                  start, "fp32", columns))
        for run in call:  # the call's settings and mode are on its first row only
            if run.status == "FINISHED":
                rows.append(_compress_row("", "", run.tags.get("kdsweep.step", run.name), run.metrics,
                                          run.tags.get("runs_as", ""), columns))
            else:
                rows.append(f"<tr><td></td><td></td><td>{_e(run.tags.get('kdsweep.step', run.name))}</td>"
                            f"<td colspan={len(columns) + 1}>{_e(run.status)}: not finished, no numbers</td></tr>")
    return ["<h2>After the search: pruning and quantization-aware KD (seed 002)</h2>",
            "<p>Each <code>kdsweep compress</code> call: the trial's student it started from, then structured "
            "pruning with KD fine-tuning and quantization-aware KD training, scored on what runs (fast mode beside "
            "full mode for the same settings; docs/pipelines.md). Peak memory is the process's resident set "
            "on CPU (the interpreter and its libraries included; the next column is the growth during the step), "
            "CUDA's allocated peak on a GPU.</p>", f"<table class=num><tr>{head}</tr>{''.join(rows)}</table>"]


def _compress_row(settings: str, mode: str, step: str, numbers: dict[str, Any], runs_as: str,
                  columns: tuple[str, ...]) -> str:
    return (f"<tr><td>{_e(settings)}</td><td>{_e(mode)}</td><td>{_e(step)}</td>"
            + "".join(f"<td>{_e(cell(c, numbers.get(c)))}</td>" for c in columns) + f"<td>{_e(runs_as)}</td></tr>")


def _params_of(frame: pd.DataFrame, trial: int | None) -> Any:
    rows = frame.loc[frame["number"] == trial, "student_params"] if trial is not None else []
    return rows.iloc[0] if len(rows) else None


def _teacher_params(task: str) -> float | None:
    try:
        from kdcore import count_parameters, get_task

        return float(count_parameters(get_task(task).build_teacher())[0])
    except Exception:  # a user task that cannot be imported here: leave the cell empty
        return None


def _facts(facts: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(str(v))}</td></tr>" for k, v in facts)
    return f"<table class=facts>{rows}</table>"


def _table(rows: pd.DataFrame, columns: list[str]) -> str:
    if rows.empty:
        return '<p class="note">None yet.</p>'
    columns = [c for c in columns if c in rows.columns]
    # Spaced headers may wrap, so the table fits the page; it scrolls sideways if it still does not.
    head = "".join(f"<th>{_e(_header(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell(c, row[c]))}</td>" for c in columns) + "</tr>"
                   for _, row in rows.iterrows())
    return f"<div class=scroll><table class=num><tr>{head}</tr>{body}</table></div>"


def _header(column: str) -> str:
    if column == "number":
        return "trial"
    return f"{column[:-2].replace('_', ' ')} (s)" if column.endswith("_s") else column.replace("_", " ")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 980px;
       margin: 2em auto; padding: 0 1em; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }}
figure {{ margin: 0.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ color: #444; font-size: 0.92em; }} .file {{ color: #888; }}
table {{ border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }}
th, td {{ padding: 3px 8px; border-bottom: 1px solid #e5e5e5; text-align: left; }} th {{ vertical-align: bottom; }}
table.num td, table.num th {{ text-align: right; font-variant-numeric: tabular-nums; }}
table.num td:first-child, table.num th:first-child {{ text-align: left; }} .scroll {{ overflow-x: auto; }}
table.facts th {{ color: #555; font-weight: 600; }} .note {{ color: #8a5a00; background: #fff6e0; padding: 4px 8px; }}
.verdict {{ padding: 4px 8px; background: #f3f3f3; }} .verdict-helps {{ background: #e6f4e6; }}
.verdict-hurts {{ background: #fbe9e9; }}
</style></head>
<body>
{body}
</body></html>
"""
