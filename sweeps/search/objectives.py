"""What a sweep optimises, and the limits a trial must meet.

``accuracy`` maximises validation accuracy alone. ``pareto`` searches validation accuracy against
one cost, and its result is the front. Limits (``--max-params`` ...) work with either: a limit on a
cost that depends only on the architecture is checked before any training, and a trial that breaks
it is recorded as PRUNED with ``stop_reason = infeasible`` and 0 epochs; ``--min-retention`` is
known only after training. Each limit becomes an Optuna constraint of the trial as soon as it is
known (``Trial.set_constraint``, <= 0 met), so samplers that read constraints (TPE, NSGA-II, GP)
learn to avoid the infeasible region, and selection skips such trials.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdcore import ConfigError

if TYPE_CHECKING:
    import optuna

OBJECTIVES = ("accuracy", "pareto")
# --cost name -> the trial column it minimises.
COSTS = {"params": "student_params", "flops": "student_flops", "latency": "latency_ms_b1",
         "int8_size": "int8_size_bytes", "train_time": "train_time_s"}
# Limit -> (the trial column it bounds, +1 for an upper bound / -1 for a lower bound).
LIMITS = {"max_params": ("student_params", 1), "max_flops": ("student_flops", 1),
          "max_latency_ms": ("latency_ms_b1", 1), "max_size": ("student_size_bytes", 1),
          "min_retention": ("val_retention", -1)}
SELECTION_METRIC = "best_val_acc"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}


def parse_size(text: str | int | float) -> int:
    """Bytes from ``50000``, ``50KB`` (1000), ``48KiB`` (1024), ``1.5MB``; ConfigError otherwise."""
    found = _SIZE.match(str(text))
    if not found or float(found[1]) <= 0:
        raise ConfigError(f"invalid size {str(text)[:40]!r}: use a positive number of bytes, or KB, KiB, MB, MiB "
                          "(e.g. 50KB)")
    return int(float(found[1]) * _SIZE_UNITS[found[2] and found[2].lower()])


@dataclass(frozen=True)
class Objective:
    """Picklable: it travels to worker processes inside the SweepPlan."""

    kind: str = "accuracy"
    cost: str | None = None  # a COSTS key; pareto only
    limits: tuple[tuple[str, float], ...] = ()  # (LIMITS key, bound), in LIMITS order

    @classmethod
    def parse(cls, kind: str = "accuracy", cost: str | None = None, **limits: Any) -> Objective:
        """Checked: one ConfigError line naming the bad value and what is allowed."""
        if kind not in OBJECTIVES:
            raise ConfigError(f"unknown objective {kind!r} (choose from {', '.join(OBJECTIVES)})")
        if kind == "pareto":
            cost = cost or "params"
        elif cost is not None:
            raise ConfigError(f"--cost {cost} needs --objective pareto (accuracy alone has no cost to trade)")
        if cost is not None and cost not in COSTS:
            raise ConfigError(f"unknown cost {cost!r} (choose from {', '.join(COSTS)})")
        bounds = []
        for name, value in limits.items():
            if name not in LIMITS:
                raise ConfigError(f"unknown limit {name!r} (choose from {', '.join(LIMITS)})")
            if value is None:
                continue
            bound = parse_size(value) if name == "max_size" else _number(name, value)
            if name == "min_retention" and not 0 < bound <= 2:
                raise ConfigError(f"--min-retention {value}: must be a fraction of the teacher's validation "
                                  "accuracy in (0, 2], e.g. 0.98")
            bounds.append((name, bound))
        return cls(kind, cost, tuple(sorted(bounds, key=lambda b: list(LIMITS).index(b[0]))))

    @property
    def directions(self) -> list[str]:
        return ["maximize", "minimize"] if self.kind == "pareto" else ["maximize"]

    @property
    def cost_column(self) -> str | None:
        return COSTS[self.cost] if self.cost else None

    def describe(self) -> str:
        """Stored with the study: a resume must optimise the same thing."""
        limits = ", ".join(f"{name} {bound:.15g}" for name, bound in self.limits)
        return f"{self.kind}{f' vs {self.cost}' if self.cost else ''}{f' ({limits})' if limits else ''}"

    def flags(self) -> list[str]:
        """The ``kdsweep run`` options that give this objective: a resume must repeat them."""
        flags = ["--objective", self.kind, "--cost", self.cost] if self.kind == "pareto" else []
        for name, bound in self.limits:
            flags += [f"--{name.replace('_', '-')}", f"{bound:.15g}"]
        return flags

    def values(self, attrs: dict[str, Any]) -> float | list[float]:
        """What ``study.tell`` gets for a finished trial with these user attrs."""
        if self.kind == "accuracy":
            return attrs[SELECTION_METRIC]
        return [attrs[SELECTION_METRIC], float(attrs[self.cost_column])]

    def constraints(self, attrs: dict[str, Any]) -> dict[str, float]:
        """Each limit whose column ``attrs`` holds, as an Optuna constraint value: <= 0 when met,
        else by how much it is broken."""
        found = {}
        for name, bound in self.limits:
            column, sign = LIMITS[name]
            value = attrs.get(column)
            if value is not None and not _missing(value):
                found[name] = sign * (float(value) - bound)
        return found

    def broken(self, attrs: dict[str, Any]) -> list[str]:
        """The limits ``attrs`` break, each as ``name (value > bound)``."""
        found = []
        for name, excess in self.constraints(attrs).items():
            if excess > 0:
                column, sign = LIMITS[name]
                found.append(f"{name} ({column} {attrs[column]:g} {'>' if sign > 0 else '<'} {dict(self.limits)[name]:.15g})")
        return found


def feasible(trial: optuna.trial.FrozenTrial | optuna.Trial) -> bool:
    """True unless the trial broke a limit (trials of studies without limits always pass)."""
    return all(v <= 0 for v in trial.constraints.values())


SCORE_ATTR = "kdsweep.score"  # the study's: what its *_acc numbers measure


def score_label(kind: str) -> str:
    """What a task's score measures (best_val_acc, test_acc, retention and int8_*_acc hold it):
    accuracy, or Recall@1 for an embedding task (kdcore.objective)."""
    return "Recall@1" if kind == "embedding" else "accuracy"


def val_acc(trial: optuna.trial.FrozenTrial) -> float | None:
    """The trial's best validation accuracy: its (first) objective value, for one or two objectives."""
    return trial.values[0] if trial.values else None


def _number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"--{name.replace('_', '-')} {str(value)[:40]}: must be a positive number")
    return number


def _missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
