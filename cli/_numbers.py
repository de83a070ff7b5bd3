"""Every numeric option of every command, checked in one place before the command runs.

Click parses ``--lr inf`` and ``--seed -1`` as numbers like any other; a command that passed them on
trained a student at chance and reported it FINISHED. ``check_numbers`` runs on the parsed options
of whichever command is invoked (``cli.main.OneLineCommand``): a float must be finite, and an option
named here, or named after a training setting (``kdcore.TrainConfig``), must lie in its range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kdcore import ConfigError

SEED_MAX = 2**32 - 1  # numpy's and Optuna's samplers take 32-bit seeds


@dataclass(frozen=True)
class Range:
    low: float | None = None  # inclusive, unless low_open
    high: float | None = None  # inclusive, unless high_open
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    @classmethod
    def of_setting(cls, name: str) -> Range | None:
        """The range of training setting ``name`` as TrainConfig declares it, or None."""
        import annotated_types

        from kdcore import TrainConfig

        field = TrainConfig.model_fields.get(name)
        if field is None:
            return None
        bounds: dict[str, Any] = {}
        for rule in field.metadata:
            if isinstance(rule, annotated_types.Gt):
                bounds.update(low=rule.gt, low_open=True)
            elif isinstance(rule, annotated_types.Ge):
                bounds.update(low=rule.ge)
            elif isinstance(rule, annotated_types.Lt):
                bounds.update(high=rule.lt, high_open=True)
            elif isinstance(rule, annotated_types.Le):
                bounds.update(high=rule.le)
        return cls(**bounds)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            if not (self.low_open or self.high_open):
                return f"{low} to {high}"
            return f"a number in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"a number {'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"a number {'<' if self.high_open else '<='} {high}"
        return "a number"


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


AT_LEAST_1 = Range(1)
# Options that are not training settings, by parameter name (the same name means the same thing in
# every command). Training settings (lr, epochs, temperature...) take their range from TrainConfig;
# --jobs and --threads theirs from the cores this process may use (kdcore.threads.plan_threads),
# --repeats its own (0, or at least 2 pairs: sweeps.verdict).
RANGES: dict[str, Range] = {
    "seed": Range(0, SEED_MAX),
    "data_seed": Range(0, SEED_MAX),
    "trial": Range(0),
    "n_trials": AT_LEAST_1,
    "clients": AT_LEAST_1,
    "rounds": AT_LEAST_1,
    "local_epochs": AT_LEAST_1,
    "min_epochs": AT_LEAST_1,
    "limit": AT_LEAST_1,
    "port": Range(1, 65535),
    "prune": Range(0, 1, high_open=True),  # a share of the channels to remove: 1 would remove them all
    "max_params": AT_LEAST_1,
    "max_flops": AT_LEAST_1,
    "max_latency_ms": Range(0, low_open=True),
    "min_retention": Range(0, low_open=True),
}


def check_numbers(command: str, params: dict[str, Any]) -> None:
    """ConfigError (one line: the option, the value, what is allowed) for the first option of
    ``params`` (Click's parsed values of ``kdsweep <command>``) that is not a finite number in range."""
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        flag = "--" + name.replace("_", "-")
        allowed = RANGES.get(name) or Range.of_setting(name)
        if isinstance(value, float) and not math.isfinite(value):
            text = str(allowed or Range())
            finite = text.replace("a number", "a finite number", 1) if text.startswith("a number") else (
                f"a finite number, {text}")
            raise ConfigError(f"{flag} {value} is not allowed: use {finite}; see `kdsweep {command} --help`")
        if allowed is not None and not allowed.holds(value):
            raise ConfigError(f"{flag} {value} is not allowed: use {allowed}; see `kdsweep {command} --help`")
