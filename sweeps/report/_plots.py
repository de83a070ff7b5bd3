"""The report's figures, drawn with Matplotlib (Agg) and saved as PNG.

Each ``plot_*`` function saves one figure to ``path`` or raises ``Skipped`` with a note that
the report shows instead (too few trials, a parameter that was not searched). Figures are built
with ``matplotlib.figure.Figure`` (no pyplot state, no backend switch); Optuna's own plots go
through pyplot, inside ``rc_context`` so their ggplot style does not leak into the caller's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_DPI = 110
_SIZE = (7.5, 4.6)
_PRUNED = "#9a9a9a"
_FRONT = "#d62728"
_TEACHER = "#1f77b4"
_SHORT = {"temperature": "T", "alpha": "α", "ratio": "ratio", "lr": "lr"}


class Skipped(Exception):
    """A figure that cannot be drawn for this study; the message says why."""


@dataclass(frozen=True)
class Context:
    """What the accuracy figures show besides the trials."""

    colour_by: str | None  # a searched param, or None when nothing was searched
    log_colour: bool
    teacher_test_acc: float | None


def _figure(size: tuple[float, float] = _SIZE) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.grid(True, alpha=0.3)
    return figure, axes


def _plain_log_ticks(axis: Any) -> None:
    """Label a log axis 0.02, 5k, 20k rather than 2x10^-2: majors, and minors starting with 2 or 5."""
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _: Any) -> str:
        return _human(value) if f"{value:.0e}"[0] in "25" else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _: _human(value)))
    axis.set_minor_formatter(FuncFormatter(minor))


def _human(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _legend_below(figure: Figure, axes: Axes, columns: int = 2) -> None:
    """The legend under the plot, where it hides no point."""
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=columns, fontsize=8, frameon=False)


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=_DPI)
    return path


def _short(name: str) -> str:
    return _SHORT.get(name, name)


_COST_LABELS = {"student_params": "student parameters", "train_time_s": "training time per trial (s)",
                "student_flops": "FLOPs per sample", "latency_ms_b1": "CPU latency at batch 1 (ms)",
                "int8_size_bytes": "INT8 weights (bytes)"}
_LOG_COSTS = ("student_params", "student_flops", "int8_size_bytes")


def front_line(rows: pd.DataFrame, x: str, by: str = "best_val_acc") -> pd.DataFrame:
    """The 2-D Pareto front of ``rows`` (maximise ``by``, minimise x), sorted by x. ``by`` is validation
    accuracy: a front chosen on test accuracy would flatter the test numbers the figure shows."""
    from sweeps.query.trials import pareto

    return pareto(rows, maximize=(by,), minimize=(x,), states=None).sort_values(x)


def plot_int8(frame: pd.DataFrame, context: Context, path: Path) -> Path:
    """Each COMPLETE trial's student twice, fp32 and INT8: test accuracy against bytes, joined."""
    complete = frame[(frame["state"] == "COMPLETE").to_numpy() & frame["feasible"].to_numpy(dtype=bool)]
    both = complete.dropna(subset=["student_size_bytes", "test_acc", "int8_size_bytes", "int8_test_acc"])
    if both.empty:
        raise Skipped("no COMPLETE trial with an INT8 model yet")
    figure, axes = _figure()
    for _, row in both.iterrows():
        axes.plot([row["student_size_bytes"], row["int8_size_bytes"]], [row["test_acc"], row["int8_test_acc"]],
                  color=_PRUNED, linewidth=0.6, alpha=0.6, zorder=1)
    axes.scatter(both["student_size_bytes"], both["test_acc"], s=36, label="fp32 student", zorder=3)
    axes.scatter(both["int8_size_bytes"], both["int8_test_acc"], s=36, marker="s", color=_FRONT,
                 label="the same student in INT8", zorder=3)
    if context.teacher_test_acc is not None:
        axes.axhline(context.teacher_test_acc, color=_TEACHER, linestyle="--", linewidth=1,
                     label=f"teacher ({context.teacher_test_acc:.4f})")
    axes.set_xscale("log")
    _plain_log_ticks(axes.xaxis)
    axes.set_xlabel("serialized weights (bytes, log scale)")
    axes.set_ylabel("test accuracy (held-out estimate)")
    axes.set_title("fp32 and INT8 students: size and accuracy")
    _legend_below(figure, axes)
    return _save(figure, path)


def plot_accuracy_vs_cost(frame: pd.DataFrame, context: Context, x: str, path: Path) -> Path:
    """Test accuracy (the held-out estimate) of every trial against one cost (student params, training
    time), with the front chosen on validation accuracy marked."""
    from matplotlib.colors import LogNorm, Normalize

    complete = frame[(frame["state"] == "COMPLETE").to_numpy()].dropna(subset=[x, "test_acc"])
    pruned = frame[(frame["state"] == "PRUNED").to_numpy()].dropna(subset=[x, "test_acc"])
    if complete.empty:
        raise Skipped("no COMPLETE trial yet")
    figure, axes = _figure()
    label = _COST_LABELS.get(x, x)
    low = _accuracy_floor(complete, context)
    shown = pruned[pruned["test_acc"] >= low]
    hidden = len(pruned) - len(shown)
    if len(pruned):
        below = f"{'; ' if len(shown) else ', '}{hidden} {'more ' if len(shown) else ''}below the axis" if hidden else ""
        axes.scatter(shown[x], shown["test_acc"], marker="x", s=22, color=_PRUNED, linewidths=1,
                     label=f"pruned (under-trained){below}")
    colour = context.colour_by
    if colour is not None and colour in complete.columns and complete[colour].nunique() > 1:
        values = complete[colour].astype(float)
        norm = (LogNorm if context.log_colour and values.min() > 0 else Normalize)(values.min(), values.max())
        points = axes.scatter(complete[x], complete["test_acc"], c=values, cmap="viridis", norm=norm, s=40,
                              edgecolors="white", linewidths=0.5, label="complete trial", zorder=3)
        bar_label = f"{colour} ({_short(colour)})" if _short(colour) != colour else colour
        bar = figure.colorbar(points, ax=axes, label=bar_label)
        if isinstance(norm, LogNorm):
            _plain_log_ticks(bar.ax.yaxis)
    else:
        axes.scatter(complete[x], complete["test_acc"], s=40, label="complete trial", zorder=3)
    front = front_line(complete.dropna(subset=["best_val_acc"]), x)  # pareto() skips trials over a limit
    # The front is chosen on validation and drawn at test height, so it need not rise monotonically:
    # a plain line through it, not a staircase.
    axes.plot(front[x], front["test_acc"], color=_FRONT, linewidth=1.0, alpha=0.7, zorder=2)
    axes.scatter(front[x], front["test_acc"], s=110, facecolors="none", edgecolors=_FRONT, linewidths=1.5,
                 zorder=4, label=f"Pareto front, chosen on validation accuracy ({len(front)} "
                       f"trial{'s' if len(front) != 1 else ''})")
    for _, row in front.iterrows():
        axes.annotate(f"#{int(row['number'])}", (row[x], row["test_acc"]), textcoords="offset points",
                      xytext=(6, -12), fontsize=8, color=_FRONT,
                      bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.7})
    if context.teacher_test_acc is not None:
        axes.axhline(context.teacher_test_acc, color=_TEACHER, linestyle="--", linewidth=1,
                     label=f"teacher ({context.teacher_test_acc:.4f})")
    logged = x in _LOG_COSTS
    if logged:
        axes.set_xscale("log")
        _plain_log_ticks(axes.xaxis)
    axes.set_ylim(low, min(1.0, max(complete["test_acc"].max(), context.teacher_test_acc or 0)) + 0.01)
    axes.set_xlabel(label + (" (log scale)" if logged else ""))
    axes.set_ylabel("test accuracy (held-out estimate)")
    axes.set_title(f"test accuracy vs {label.split(' (')[0]}")
    _legend_below(figure, axes)
    return _save(figure, path)


def _accuracy_floor(complete: pd.DataFrame, context: Context) -> float:
    """The y-axis floor: just below the weakest complete trial, so far-off pruned ones don't squash the view."""
    low = complete["test_acc"].min()
    top = max([complete["test_acc"].max(), context.teacher_test_acc or 0.0])
    return max(0.0, low - max(0.02, 0.15 * (top - low)))


def plot_validation_curves(study: optuna.Study, frame: pd.DataFrame, path: Path, top: int = 5,
                           history: Callable[[str], dict[int, float]] | None = None) -> Path:
    """Per-epoch validation accuracy (the values the pruner saw) of the ``top`` trials by best validation
    accuracy (ties: the earlier trial). A two-objective study reports none to Optuna (it cannot
    prune): ``history`` reads a run's logged val_acc instead."""
    complete = frame[(frame["state"] == "COMPLETE").to_numpy()].dropna(subset=["best_val_acc"])
    if complete.empty:
        raise Skipped("no COMPLETE trial yet")
    leaders = complete.sort_values("best_val_acc", ascending=False, kind="stable").head(top)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    params = [c for c in searched_params(study) if c in frame.columns]
    figure, axes = _figure()
    for _, row in leaders.iterrows():
        values = by_number[int(row["number"])].intermediate_values
        if not values and history is not None and isinstance(row["mlflow_run_id"], str):
            values = history(row["mlflow_run_id"])
        if not values:
            continue
        epochs = sorted(values)
        setting = ", ".join(_format_param(p, row[p]) for p in params[:4])
        line, = axes.plot(epochs, [values[e] for e in epochs], linewidth=1.4,
                          label=f"#{int(row['number'])}  val {row['best_val_acc']:.4f}  test {row['test_acc']:.4f}  "
                                f"({setting})")
        best_epoch = max(epochs, key=lambda e: values[e])
        axes.scatter([best_epoch], [values[best_epoch]], color=line.get_color(), s=30, zorder=3)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    axes.set_title(f"validation accuracy per epoch, top {len(leaders)} trials by validation accuracy (dot: best epoch)")
    axes.title.set_fontsize(10)
    axes.legend(loc="lower right", fontsize=7.5, framealpha=0.9)
    return _save(figure, path)


def _format_param(name: str, value: Any) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return f"{_short(name)}={text}"


def searched_params(study: optuna.Study) -> list[str]:
    names: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False):
        names.update(dict.fromkeys(t.distributions))
    return list(names)


def plot_epoch_time(frame: pd.DataFrame, path: Path) -> Path:
    """Mean epoch time of every trial against the compression ratio (or the student size if ratio is fixed)."""
    rows = frame.dropna(subset=["epoch_time_s"])
    rows = rows[(rows["epoch_time_s"] > 0).to_numpy()]
    x = "ratio" if "ratio" in rows.columns and rows["ratio"].nunique() > 1 else "student_params"
    rows = rows.dropna(subset=[x])
    if len(rows) < 2:
        raise Skipped("fewer than 2 trials with a measured epoch time")
    figure, axes = _figure()
    for state, style in (("COMPLETE", {"s": 36, "color": "#1f77b4"}), ("PRUNED", {"s": 22, "color": _PRUNED})):
        part = rows[(rows["state"] == state).to_numpy()]
        if len(part):
            axes.scatter(part[x], part["epoch_time_s"] * 1000, label=state.lower(), zorder=3, **style)
    other = rows[~rows["state"].isin(["COMPLETE", "PRUNED"]).to_numpy()]
    if len(other):
        axes.scatter(other[x], other["epoch_time_s"] * 1000, marker="^", s=30, color="#ff7f0e", label="failed/other")
    _median_trend(axes, rows[x].astype(float), rows["epoch_time_s"].astype(float) * 1000)
    axes.set_xscale("log")
    _plain_log_ticks(axes.xaxis)
    axes.set_xlabel("compression ratio (student width / teacher width, log scale)" if x == "ratio"
                    else "student parameters (log scale)")
    axes.set_ylabel("mean epoch time (ms, train + validation)")
    axes.set_ylim(bottom=0)
    axes.set_title("epoch time by compression ratio" if x == "ratio" else "epoch time by student size")
    _legend_below(figure, axes, columns=4)
    return _save(figure, path)


def _median_trend(axes: Axes, x: pd.Series, y: pd.Series, bins: int = 6) -> None:
    """A line through the median y of log-spaced x bins (only when there are enough points)."""
    import numpy as np

    if len(x) < 8 or x.min() <= 0 or x.min() == x.max():
        return
    edges = np.geomspace(x.min(), x.max() * (1 + 1e-9), bins + 1)
    centres, medians = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (x >= lo) & (x < hi)
        if inside.sum():
            centres.append(float(np.sqrt(lo * hi)))
            medians.append(float(y[inside].median()))
    axes.plot(centres, medians, color="black", linewidth=1, alpha=0.6, label="median per bin")


def plot_optuna(kind: str, study: optuna.Study, path: Path) -> Path:
    """Optuna's parameter importances or parallel coordinates (its matplotlib module)."""
    import matplotlib
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    searched = [p for p in searched_params(study)
                if len({t.params.get(p) for t in complete if p in t.params}) > 1]
    if len(complete) < 2 or not searched:
        raise Skipped(f"needs at least 2 COMPLETE trials with differing parameters (this study has "
                      f"{len(complete)} COMPLETE)")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        try:
            # A pareto study has two values per trial: the plots are about the first, validation accuracy.
            target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
            if kind == "importances":
                axes = optuna_plots.plot_param_importances(study, params=searched, target=target,
                                                           target_name="best val_acc")
                axes.set_title("importance of each setting for the best validation accuracy", loc="left")
                if axes.get_legend() is not None:
                    axes.get_legend().remove()
            else:
                axes = optuna_plots.plot_parallel_coordinate(study, params=searched, target=target,
                                                             target_name="best val_acc")
                axes.set_title("COMPLETE trials through their settings (colour: best validation accuracy)", y=1.03)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            plt.close("all")
            raise Skipped(f"Optuna could not draw it: {error}") from None
        figure = axes.get_figure()
        for other in figure.axes:
            if other.get_yscale() == "log":
                _plain_log_ticks(other.yaxis)
        figure.set_size_inches(*_SIZE)
        figure.set_dpi(_DPI)
        figure.tight_layout()
        _save(figure, path)
        plt.close(figure)
    return path


def colour_param(study: optuna.Study, frame: pd.DataFrame,
                 preferred: Sequence[str] = ("temperature", "alpha")) -> tuple[str | None, bool]:
    """The searched param to colour accuracy plots by (T, else alpha, else the first), and whether it is log-scaled."""
    distributions: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            distributions.setdefault(name, dist)
    numeric = [p for p in distributions if p in frame.columns and frame[p].dtype.kind in "fiu"
               and frame[p].nunique() > 1]
    for name in [*preferred, *numeric]:
        if name in numeric:
            return name, bool(getattr(distributions[name], "log", False))
    return None, False
