"""The search space: which TrainConfig fields a sweep searches, and how.

In a sweep file each entry of ``space`` is one of::

    temperature: {low: 1, high: 20, log: true}   # a range; int fields give an int range
    batch_size: [64, 128, 256]                   # a list of choices
    epochs: 30                                   # fixed
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdcore import ConfigError, TrainConfig, make_config
from kdcore.config import check_setting

if TYPE_CHECKING:
    import optuna

DEFAULT_SPACE: dict[str, Any] = {
    "temperature": {"low": 1.0, "high": 20.0, "log": True},
    "alpha": {"low": 0.0, "high": 1.0},
    "ratio": {"low": 0.05, "high": 1.0, "log": True},
    "lr": {"low": 1e-4, "high": 3e-2, "log": True},
}
# An embedding task's default: its KD temperature is the relational term's, on cosine similarities
# (kdcore.embedding_loss), so it is searched over cosine scales, not logit ones.
EMBEDDING_SPACE: dict[str, Any] = {
    "relational_temperature": {"low": 0.02, "high": 1.0, "log": True},
    **{k: v for k, v in DEFAULT_SPACE.items() if k != "temperature"},
}
_RANGE_KEYS = {"low", "high", "log", "step"}


def default_space(kind: str) -> dict[str, Any]:
    """What a sweep searches when its file gives no ``space``, by the task's kind."""
    return EMBEDDING_SPACE if kind == "embedding" else DEFAULT_SPACE


def with_task_defaults(space: dict[str, Any] | None, fixed: dict[str, Any],
                       defaults: dict[str, Any]) -> dict[str, Any]:
    """The fixed settings of a study: the task's defaults (``Task.defaults()``) for every field the
    sweep file neither searches nor fixes, then the file's own ``train:`` settings."""
    given = set(DEFAULT_SPACE if space is None else space) | set(fixed)
    return {**{k: v for k, v in defaults.items() if k not in given}, **fixed}


@dataclass(frozen=True)
class Dimension:
    """One searched TrainConfig field: a float/int range or a list of choices."""

    name: str
    kind: str  # "float" | "int" | "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def grid(self, points: int) -> list[Any]:
        """Values for the grid sampler: the choices, or ``points`` values spread over the range."""
        if self.kind == "choice":
            return list(self.choices)
        if self.step:
            count = int(round((self.high - self.low) / self.step)) + 1
            values = [self.low + i * self.step for i in range(count)]
        elif self.log:
            ratio = (self.high / self.low) ** (1 / (points - 1))
            values = [self.low * ratio**i for i in range(points)]
        else:
            values = [self.low + (self.high - self.low) * i / (points - 1) for i in range(points)]
        if self.kind == "int":
            return sorted({int(round(v)) for v in values})
        return [float(f"{v:.6g}") for v in values]

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice{list(self.choices)}"
        return f"{self.kind}[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class SearchSpace:
    """Searched dimensions plus the trainer settings every trial shares."""

    dimensions: dict[str, Dimension]
    fixed: dict[str, Any]

    @classmethod
    def parse(cls, space: dict[str, Any] | None, fixed: dict[str, Any] | None = None) -> SearchSpace:
        """Validate a ``space`` mapping (default: T, alpha, ratio, lr) and the fixed settings."""
        dimensions: dict[str, Dimension] = {}
        fixed = dict(fixed or {})
        for name, spec in (DEFAULT_SPACE if space is None else space).items():
            if name not in TrainConfig.model_fields:
                raise ConfigError(f"unknown field '{name}' in the search space "
                                  f"(known: {', '.join(TrainConfig.model_fields)})")
            if isinstance(spec, dict):
                dimensions[name] = _range(name, spec)
            elif isinstance(spec, list):
                dimensions[name] = _choices(name, spec)
            else:
                fixed[name] = spec
        make_config(TrainConfig, **fixed)  # the fixed settings alone must already be valid
        both = sorted(set(fixed) & set(dimensions))
        if both:
            raise ConfigError(f"{', '.join(both)} both searched and fixed: keep one")
        if not dimensions:
            raise ConfigError("the search space is empty: give at least one range or list of choices")
        return cls(dimensions, fixed)

    def suggest(self, trial: optuna.Trial, skip: Collection[str] = ()) -> dict[str, Any]:
        """Searched values of ``trial``; ``skip`` names dimensions an override sets instead, so the
        trial's params hold only values it trains with."""
        return {name: dim.suggest(trial) for name, dim in self.dimensions.items() if name not in skip}

    def config(self, params: dict[str, Any]) -> TrainConfig:
        """The full trainer config of a trial with these searched values."""
        return make_config(TrainConfig, **{**self.fixed, **params})

    def largest(self, name: str) -> Any:
        """The largest value field ``name`` takes in any trial: the top of its range or its largest
        choice, else its fixed value, else TrainConfig's default (how many teachers to prepare)."""
        dim = self.dimensions.get(name)
        if dim is not None:
            return max(dim.choices) if dim.kind == "choice" else dim.high
        return self.fixed.get(name, TrainConfig.model_fields[name].default)

    def upper_ends(self) -> dict[str, Any]:
        """Each searched field at the top of its range (the last of its choices)."""
        return {name: dim.choices[-1] if dim.kind == "choice" else dim.grid(2)[-1]
                for name, dim in self.dimensions.items()}

    def max_epochs(self) -> int:
        """The most epochs any trial may run (the pruners' resource bound)."""
        dim = self.dimensions.get("epochs")
        if dim is None:
            return int(self.fixed.get("epochs", TrainConfig().epochs))
        return int(max(dim.choices) if dim.kind == "choice" else dim.high)

    def grid(self, points: int = 4) -> dict[str, list[Any]]:
        return {name: dim.grid(points) for name, dim in self.dimensions.items()}

    def describe(self) -> dict[str, str]:
        """Readable summary, stored with the study so a resume can check it did not change."""
        return {**{n: d.describe() for n, d in self.dimensions.items()},
                **{n: f"fixed {v!r}" for n, v in self.fixed.items()}}


def _range(name: str, spec: dict[str, Any]) -> Dimension:
    unknown = set(spec) - _RANGE_KEYS
    if unknown or not {"low", "high"} <= set(spec):
        raise ConfigError(f"range for '{name}' must have low and high (optional: log, step), "
                          f"got keys {sorted(spec)}")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    for value in (low, high):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"range for '{name}' needs numbers, got low={low!r} high={high!r}")
        check_setting(name, value)  # each end must be a valid setting
    if low >= high:
        raise ConfigError(f"range for '{name}' is {'empty' if low == high else 'inverted'}: "
                          f"low={low:g} must be < high={high:g} (to fix a value, write '{name}: {low:g}')")
    if log and low <= 0:
        raise ConfigError(f"log range for '{name}' must stay above 0, got low={low:g}")
    if log and step:
        raise ConfigError(f"range for '{name}' cannot have both log and step")
    is_int = TrainConfig.model_fields[name].annotation is int
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0
                             or (is_int and step != int(step))):
        kind = "a positive integer" if is_int else "a positive number"
        raise ConfigError(f"step of the range for '{name}' must be {kind}, got {step!r}")
    return Dimension(name, "int" if is_int else "float", float(low), float(high), log, step)


def _choices(name: str, values: list[Any]) -> Dimension:
    if not values:
        raise ConfigError(f"choices for '{name}' are empty: list at least one value")
    for value in values:
        check_setting(name, value)
    return Dimension(name, "choice", choices=tuple(values))
