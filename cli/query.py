"""`kdsweep studies/trials/best/pareto/compare/report/ui`: thin wrappers over ``sweeps.query`` and
``sweeps.report``. Tables go to the terminal; ``--format csv|json`` gives standard CSV and JSON.

Every default chooses and sorts by best_val_acc; test_acc is shown beside it as the held-out
estimate. ``best`` ends with the study's KD verdict, written by ``sweeps.verdict_line``."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cli._common import console, user_errors
from cli.train import StoreOpt, TrackingOpt

if TYPE_CHECKING:
    import pandas as pd


class Format(str, enum.Enum):
    table = "table"
    csv = "csv"
    json = "json"


_STORE = "Store"
StudyArg = Annotated[str, typer.Argument(help="Study name (as given to `kdsweep run --study`); `kdsweep studies` lists them.", show_default=False)]
StorageOpt = Annotated[Optional[str], typer.Option(
    "--storage", help="Optuna storage: a journal file, sqlite:///f.db, postgresql://... "
    "(default: <store>/optuna.journal).", rich_help_panel=_STORE)]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="table for people; csv or json for tools.")]
WhereOpt = Annotated[Optional[str], typer.Option(
    "--where", "-w", help="Keep trials where this holds: columns, numbers, 'strings', == != < <= > >= in, "
    "and/or/not. Example: \"retention > 0.95 and student_params < 20000\" (default: every trial).")]
ColumnsOpt = Annotated[Optional[str], typer.Option(
    "--columns", "-c", help="Comma-separated columns to show, in order (default: a compact set for tables, "
    "all for csv/json).")]

# What a terminal table shows unless --columns says otherwise (searched params go after "state").
_TABLE_COLUMNS = ["number", "state", "best_val_acc", "test_acc", "retention", "student_params",
                  "train_time_s", "epochs_run", "stop_reason", "pareto"]
_HELD_OUT = "test_acc: the held-out estimate; selection uses best_val_acc"


@user_errors
def studies(store: StoreOpt = None, tracking_uri: TrackingOpt = None, storage: StorageOpt = None,
            format: FormatOpt = Format.table) -> None:
    """List every study: task, trial counts, best trial by best_val_acc and its test_acc, time spent."""
    from sweeps import studies as list_studies

    frame = list_studies(storage=storage, tracking_uri=tracking_uri, store=store)
    _emit(frame, format, title="studies")


@user_errors
def trials(
    study: StudyArg,
    where: WhereOpt = None,
    sort: Annotated[Optional[str], typer.Option("--sort", "-s", help="Comma-separated columns; -name sorts descending, e.g. -best_val_acc,student_params (default: by trial number).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, help="Show at most N trials, after sorting (default: all).")] = None,
    columns: ColumnsOpt = None,
    format: FormatOpt = Format.table,
    store: StoreOpt = None,
    tracking_uri: TrackingOpt = None,
    storage: StorageOpt = None,
) -> None:
    """One row per trial: params, state, best_val_acc, test_acc, retention, size, cost, MLflow run, checkpoint."""
    from sweeps.query import _where
    from sweeps import trials as load_trials

    frame = load_trials(study, storage=storage, tracking_uri=tracking_uri, store=store)
    frame = _where.sort(_where.where(frame, where), sort)
    frame = frame.head(limit) if limit else frame
    score = frame.attrs.get("score", "accuracy")
    measures = "" if score == "accuracy" else f"; best_val_acc and test_acc are {score}"
    _emit(_columns(frame, columns, format), format,
          title=f"trials of study '{study}' ({len(frame)} shown; {_HELD_OUT}{measures})")


@user_errors
def best(
    study: StudyArg,
    metric: Annotated[str, typer.Option("--metric", "-m", help="Column to optimise; costs (train_time_s, student_params, ...) are minimised. Choosing by test_acc makes its test_acc an optimistic estimate.")] = "best_val_acc",
    where: WhereOpt = None,
    cheapest: Annotated[bool, typer.Option("--cheapest", help="The cheapest trial within the study's limits by its --cost (a pareto study's; else student_params) instead of the most accurate, e.g. after --min-retention 0.98.")] = False,
    format: FormatOpt = Format.table,
    store: StoreOpt = None,
    tracking_uri: TrackingOpt = None,
    storage: StorageOpt = None,
) -> None:
    """The best COMPLETE trial within the study's limits by a metric (default best_val_acc), its checkpoint, and the study's KD verdict."""
    from kdcore import ConfigError
    from sweeps import best as find_best
    from sweeps import comparison, verdict_line
    from sweeps import trials as load_trials
    from sweeps.search.objectives import SELECTION_METRIC

    if cheapest and metric != SELECTION_METRIC:
        raise ConfigError(f"--cheapest picks by the study's cost, --metric {metric} by another column: give one of them")
    frame = load_trials(study, storage=storage, tracking_uri=tracking_uri, store=store)
    if cheapest:
        metric = frame.attrs["minimize"][0] if len(frame.attrs["minimize"]) == 1 else "student_params"
    row = find_best(frame, metric, where)
    verdict = comparison(study, storage=storage, tracking_uri=tracking_uri, store=store)
    if format is Format.table:
        from rich.table import Table

        from sweeps.query._format import cell

        table = Table(title=f"best trial of study '{study}' by {metric}", show_header=False, title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value")
        table.add_column("note", style="dim")
        notes = {metric: "chose this trial", "test_acc": "held-out estimate" if metric != "test_acc"
                 else "chosen on test: an optimistic estimate"}
        for name, value in row.items():
            table.add_row(str(name), cell(str(name), value), notes.get(str(name), ""))
        _console().print(table)
        for line in (f"load it: from sweeps import load_student; model = load_student({study!r}, {int(row['number'])})",
                     verdict_line(verdict)):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
        return
    one = frame.loc[[row.name]]  # the same row as a one-row frame, dtypes intact
    if format is Format.json:
        import json

        from sweeps.query._format import plain, records

        found = records(one)[0]
        found["verdict"] = {key: plain(value) for key, value in verdict.items()}
        sys.stdout.write(json.dumps(found, allow_nan=False) + "\n")  # the object, not [object]
        return
    _emit(one, format)


@user_errors
def pareto(
    study: StudyArg,
    maximize: Annotated[str, typer.Option(help="Comma-separated columns to maximise (validation accuracy by default: choosing on test_acc makes it an optimistic estimate).")] = "best_val_acc",
    minimize: Annotated[Optional[str], typer.Option(help="Comma-separated columns to minimise (default: the study's --cost for a pareto study, else student_params,train_time_s).")] = None,
    where: WhereOpt = None,
    columns: ColumnsOpt = None,
    format: FormatOpt = Format.table,
    store: StoreOpt = None,
    tracking_uri: TrackingOpt = None,
    storage: StorageOpt = None,
) -> None:
    """The Pareto-optimal COMPLETE trials within the study's limits (max best_val_acc; min the study's cost): none is beaten on every objective."""
    from sweeps.query import _where
    from sweeps import pareto as front
    from sweeps import trials as load_trials

    frame = load_trials(study, storage=storage, tracking_uri=tracking_uri, store=store)
    most = _where.split_names(maximize)
    least = _where.split_names(minimize) if minimize is not None else list(frame.attrs["minimize"])
    frame = _where.where(frame, where)  # front() keeps the trials within the study's limits
    optimal = front(frame, maximize=most, minimize=least)
    optimal = optimal.sort_values(least[0] if least else most[0], ascending=bool(least), kind="stable")
    _emit(_columns(optimal, columns, format, must=[*most, *least]), format,
          title=f"Pareto front of study '{study}': max {', '.join(most)}; min {', '.join(least)} ({len(optimal)} trials"
                + (f"; {_HELD_OUT})" if "test_acc" not in most else ")"))


@user_errors
def compare(
    study_a: Annotated[str, typer.Argument(help="First study.", show_default=False)],
    study_b: Annotated[str, typer.Argument(help="Second study.", show_default=False)],
    format: FormatOpt = Format.table,
    store: StoreOpt = None,
    tracking_uri: TrackingOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Two studies side by side: counts, best trial by best_val_acc, its settings and cost, the KD verdicts."""
    from sweeps import compare as side_by_side

    frame = side_by_side(study_a, study_b, storage=storage, tracking_uri=tracking_uri, store=store).reset_index()
    _emit(frame, format, title=f"study '{study_a}' vs study '{study_b}'", by_row="quantity")


@user_errors
def report(
    study: StudyArg,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for report.html and the PNGs (default: ./reports/<study>).")] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Also log the files to the study's parent MLflow run and refresh the trial runs' pareto tags.")] = True,
    store: StoreOpt = None,
    tracking_uri: TrackingOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Write an HTML report with cost/accuracy figures, log it to MLflow, refresh the pareto tags."""
    from sweeps import write_report

    page = write_report(study, out, storage=storage, tracking_uri=tracking_uri, store=store, log_to_mlflow=mlflow)
    console.print(f"report: {page}\nopen it: {page.resolve().as_uri()}", highlight=False, soft_wrap=True, markup=False)


@user_errors
def ui(
    study: Annotated[Optional[str], typer.Option(help="Open this study's runs table (default: the list of studies).")] = None,
    port: Annotated[int, typer.Option(help="Port to serve on.", min=1, max=65535)] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    store: StoreOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Start the MLflow UI on this store (its database and artifacts) and wait until Ctrl-C or SIGTERM."""
    from sweeps.report.ui import serve

    serve(store=store, tracking_uri=tracking_uri, host=host, port=port, study=study,
          on_ready=lambda url: console.print(f"MLflow UI: {url}  (Ctrl-C stops it)", highlight=False, markup=False,
                                             soft_wrap=True))


def _columns(frame: pd.DataFrame, columns: str | None, format: Format, must: list[str] | None = None) -> pd.DataFrame:
    """--columns if given; else everything for csv/json, and a compact, non-empty set for a table."""
    from sweeps.query import _where

    if columns:
        return _where.select(frame, columns)
    if format is not Format.table:
        return frame
    start = list(frame.columns).index("state") + 1
    params = list(frame.columns[start:list(frame.columns).index("best_val_acc")])
    wanted = [*_TABLE_COLUMNS[:2], *params, *_TABLE_COLUMNS[2:], *(must or [])]
    shown = [c for c in dict.fromkeys(wanted) if c in frame.columns and (frame[c].notna().any() or c in (must or []))]
    return frame[shown]


def _console():
    """The console for a rich table: on a pipe, wide enough that no column is cut (rich would assume 80)."""
    from rich.console import Console

    return console if console.is_terminal else Console(width=10_000)


def _emit(frame: pd.DataFrame, format: Format, title: str = "", by_row: str | None = None) -> None:
    """Write ``frame`` as CSV, JSON (a list of objects) or an aligned plain-text table."""
    if format is Format.csv:
        frame.to_csv(sys.stdout, index=False, date_format="%Y-%m-%dT%H:%M:%S.%f")
        return
    if format is Format.json:
        import json

        from sweeps.query._format import records

        sys.stdout.write(json.dumps(records(frame), allow_nan=False) + "\n")
        return
    from sweeps.query._format import cell

    # Plain aligned columns, not a rich Table: rich takes about 1 s to lay out 1000 rows.
    names = [str(name) for name in frame.columns]
    texts = [[cell(str(row[0]) if by_row and i else names[i], value) for i, value in enumerate(row)]
             for row in frame.itertuples(index=False, name=None)]
    right = [name != by_row if by_row else frame[name].dtype.kind in "biufm" for name in frame.columns]
    widths = [max([len(names[i]), *(len(row[i]) for row in texts)]) for i in range(len(names))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    if title:
        console.print(title, style="bold", highlight=False, markup=False, soft_wrap=True)
    console.print(line(names), style="bold", highlight=False, markup=False, soft_wrap=True)
    sys.stdout.write(line(["-" * w for w in widths]) + "\n" + "".join(line(row) + "\n" for row in texts))
