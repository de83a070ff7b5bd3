"""The maths of the KD verdict: paired differences, their mean, a paired-t interval, and a word.

Pair i trains the distilled configuration and its no-KD twin with the same initialisation seed
and the same labelled data, so d_i = kd_i - nokd_i removes what the two runs share, and the
interval for the mean gain is mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
HELPS, HURTS, NO_DIFFERENCE, INCOMPLETE = "helps", "hurts", "no_difference", "incomplete"
VERDICTS = (HELPS, HURTS, NO_DIFFERENCE, INCOMPLETE)


@dataclass(frozen=True)
class Interval:
    """Mean paired difference and its two-sided confidence interval over ``n`` pairs."""

    mean: float
    low: float
    high: float
    n: int


def paired_interval(kd: Sequence[float], nokd: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Paired-t interval for mean(kd - nokd); needs at least 2 pairs (one pair has no spread)."""
    from scipy.stats import t

    if len(kd) != len(nokd):
        raise ValueError(f"paired samples differ in length: {len(kd)} KD runs, {len(nokd)} no-KD runs")
    n = len(kd)
    if n < 2:
        raise ValueError(f"a paired interval needs at least 2 pairs, got {n}")
    differences = [a - b for a, b in zip(kd, nokd)]
    mean = statistics.fmean(differences)
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(differences) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def verdict_word(interval: Interval) -> str:
    """``helps`` if the whole interval is above 0, ``hurts`` if below, else ``no_difference``.

    An interval that touches 0 does not exclude "no gain", so it is ``no_difference``.
    """
    if interval.low > 0:
        return HELPS
    if interval.high < 0:
        return HURTS
    return NO_DIFFERENCE


@dataclass(frozen=True)
class Pair:
    """One repeat: both arms finished with the same seed."""

    repeat: int
    seed: int
    kd_test_acc: float
    nokd_test_acc: float
    kd_val_acc: float
    nokd_val_acc: float


def complete_verdict(pairs: Sequence[Pair], *, teacher_test_acc: float, trial: int | None) -> dict:
    """The verdict dict from finished pairs: means, gain, interval, word (MLflow names)."""
    interval = paired_interval([p.kd_test_acc for p in pairs], [p.nokd_test_acc for p in pairs])
    distilled = statistics.fmean(p.kd_test_acc for p in pairs)
    return {
        "kd_verdict": verdict_word(interval), "kd_verdict_reason": "", "kd_verdict_trial": trial,
        **({"best_trial": trial} if trial is not None else {}), "kd_repeats": interval.n,
        "teacher_test_acc": teacher_test_acc,
        "distilled_test_acc": distilled, "nokd_test_acc": statistics.fmean(p.nokd_test_acc for p in pairs),
        "distilled_val_acc": statistics.fmean(p.kd_val_acc for p in pairs),
        "nokd_val_acc": statistics.fmean(p.nokd_val_acc for p in pairs),
        "retention": distilled / teacher_test_acc if teacher_test_acc else 0.0,
        "kd_gain": interval.mean, "kd_gain_ci95_low": interval.low, "kd_gain_ci95_high": interval.high,
    }


def incomplete_verdict(reason: str, *, teacher_test_acc: float, trial: int | None) -> dict:
    """A verdict without numbers: no gain is ever computed from cut or missing pairs."""
    verdict = {"kd_verdict": INCOMPLETE, "kd_verdict_reason": reason, "kd_verdict_trial": trial,
               "teacher_test_acc": teacher_test_acc}
    if trial is not None:
        verdict["best_trial"] = trial
    return verdict
