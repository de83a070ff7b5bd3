"""How a running sweep looks: a Rich live panel on a terminal, plain periodic lines elsewhere."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from cli._common import console

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sweeps.tracking.store import Store
    from sweeps.search.sweep import Snapshot, SweepSummary

_PLAIN_EVERY_S = 10.0
_SHORT = {"temperature": "T", "batch_size": "batch", "data_fraction": "data", "weight_decay": "wd",
          "label_smoothing": "smooth", "grad_accum_steps": "accum", "relational_temperature": "rel T",
          "relational_weight": "rel w", "embed_loss": "embed", "embed_weight": "embed w"}


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def score_names(score: str) -> tuple[str, str]:
    """The validation and test columns' labels for a study's score (accuracy, or Recall@1)."""
    return ("val_acc", "test_acc") if score == "accuracy" else (f"val {score}", f"test {score}")


def _status_line(s: Snapshot) -> str:
    c = s.counts
    best = (f"best {score_names(s.score)[0]} {s.best[1]:.4f} (trial {s.best[0]}: {_params(s.best[2])})" if s.best
            else "no finished trial yet")
    return (f"[{s.elapsed_s:.0f}s/{s.budget_s:.0f}s] {s.phase}: {c.get('COMPLETE', 0)} complete, "
            f"{c.get('PRUNED', 0)} pruned, {c.get('FAIL', 0)} failed, {c.get('RUNNING', 0)} running; {best}"
            + (f"; {s.note}" if s.note else ""))


class LiveView:
    """A panel redrawn in place: budget bar, trial counts, best so far, running trials."""

    def __enter__(self) -> LiveView:
        self.bar = Progress(TextColumn("budget"), BarColumn(), TextColumn("{task.fields[text]}"), console=console)
        self.bar_task = self.bar.add_task("budget", total=1.0, text="")
        self.live = Live(console=console, refresh_per_second=4, transient=False)
        self.live.start()
        return self

    def update(self, s: Snapshot) -> None:
        left = max(0.0, s.budget_s - s.elapsed_s)
        self.bar.update(self.bar_task, completed=min(1.0, s.elapsed_s / s.budget_s),
                        text=f"{s.elapsed_s:.0f}s elapsed, {left:.0f}s left")
        c = s.counts
        lines = [Text(f"{s.phase}: {c.get('COMPLETE', 0)} complete, {c.get('PRUNED', 0)} pruned, "
                      f"{c.get('FAIL', 0)} failed, {c.get('RUNNING', 0)} running" + (f"  ({s.note})" if s.note else ""))]
        if s.best:
            lines.append(Text(f"best {score_names(s.score)[0]} {s.best[1]:.4f}  trial {s.best[0]}: {_params(s.best[2])}"))
        for number, epoch in s.running:
            lines.append(Text(f"  trial {number}: epoch {epoch}"))
        self.live.update(Group(self.bar.get_renderable(), *lines))

    def say(self, line: str) -> None:
        self.live.console.print(line, highlight=False, soft_wrap=True, markup=False)

    def __exit__(self, *exc_info: object) -> None:
        self.live.stop()


class PlainView:
    """A status line every few seconds and at each phase change: no control characters."""

    def __enter__(self) -> PlainView:
        self.last = 0.0
        self.phase = None
        return self

    def update(self, s: Snapshot) -> None:
        now = time.monotonic()
        if s.phase != self.phase or now - self.last >= _PLAIN_EVERY_S:
            console.print(_status_line(s), highlight=False, soft_wrap=True, markup=False)
            self.last, self.phase = now, s.phase

    def say(self, line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True, markup=False)

    def __exit__(self, *exc_info: object) -> None:
        pass


def sweep_view():
    return LiveView() if console.is_terminal else PlainView()


def print_summary(summary: SweepSummary, store: Store, task: str, run_options: Sequence[str] = (),
                  top: int = 10) -> None:
    """The top trials by validation accuracy, the KD verdict, and where to look next."""
    from optuna.trial import TrialState

    from sweeps.query.summary import comparison_line, verdict_line

    from sweeps.search.objectives import feasible, val_acc

    done = [t for t in summary.trials if t.state == TrialState.COMPLETE and t.values and feasible(t)]
    done.sort(key=val_acc, reverse=True)
    table = Table(title=f"top trials of study '{summary.study}'")
    # A preset's override replaces a searched value, so a trial may lack a param: take the union.
    names = list(dict.fromkeys(name for t in done[:top] for name in t.params))
    for column in ["trial", *[_SHORT.get(n, n) for n in names], *score_names(summary.score), "params", "train s"]:
        table.add_column(column, justify="right", no_wrap=True)
    for t in done[:top]:
        table.add_row(str(t.number), *[_cell(t.params.get(n)) for n in names],
                      f"{val_acc(t):.4f}", f"{t.user_attrs.get('test_acc', float('nan')):.4f}",
                      str(t.user_attrs.get("student_params", "")), f"{t.user_attrs.get('train_time_s', 0):.1f}")
    if console.is_terminal:
        console.print(table)
    else:  # Rich assumes 80 columns off a terminal and squeezes columns to nothing; logs can be wide
        needed = Measurement.get(console, console.options.update(width=10_000), table).maximum
        Console(file=console.file, width=max(console.width, needed)).print(table)
    verdict = verdict_line(summary.comparison) if summary.comparison else \
        f"KD verdict: skipped (--repeats {summary.repeats})"
    console.print(verdict, highlight=False, soft_wrap=True, markup=False)
    seeds = comparison_line(summary.comparison, summary.score) if summary.comparison else None
    if seeds:
        console.print(seeds, highlight=False, soft_wrap=True, markup=False)
    teacher = summary.comparison.get("teacher_test_acc")
    console.print(
        f"{'interrupted' if summary.interrupted else 'done'} in {summary.wall_time_s:.1f}s of a "
        f"{summary.budget_s:.0f}s budget (teacher" + (f" {score_names(summary.score)[1]} {teacher:.4f},"
                                                      if teacher is not None else "")
        + f" {summary.teacher_time_s:.1f}s; cache {summary.cache_time_s:.2f}s)",
        highlight=False, soft_wrap=True)
    for line in hints(summary, store, task, run_options):
        console.print(line, highlight=False, soft_wrap=True, markup=False)


def _ui_hint(summary: SweepSummary, store: Store) -> str:
    """A tracking server is its own UI: its URL for the study; a local store: the command that serves it."""
    from shlex import join

    if summary.tracking_uri.startswith(("http://", "https://")):
        page = f"/#/experiments/{summary.experiment_id}/runs?workflowType=machine_learning"
        return f"MLflow UI:  {summary.tracking_uri.rstrip('/')}{page}"
    return (f"MLflow UI:  {join(['kdsweep', 'ui', '--study', summary.study, *store.options()])}   "
            f"(or: {join(['mlflow', 'ui', '--backend-store-uri', summary.tracking_uri])})")


def hints(summary: SweepSummary, store: Store, task: str, run_options: Sequence[str] = ()) -> list[str]:
    """The follow-up commands, each with every option it needs to reach this study from any folder."""
    from shlex import join

    where = store.options(summary.storage_url)  # --store, --storage, --tracking-uri where not the defaults
    study = summary.study
    return [
        f"resume:     {join(['kdsweep', 'run', '--study', study, *run_options, *store.options(summary.storage_url, task)])}",
        f"trials:     {join(['kdsweep', 'trials', study, '--sort', '-best_val_acc', *where])}   |   "
        f"{join(['kdsweep', 'pareto', study, *where])}",
        f"report:     {join(['kdsweep', 'report', study, *where])}",
        _ui_hint(summary, store),
        f"dashboard:  {join(['optuna-dashboard', summary.storage_url])}",
    ]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
