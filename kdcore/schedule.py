"""Per-epoch schedules of the distillation temperature and weight (seed 003's staged KD).

A schedule maps epoch ``e`` of ``epochs`` (1-based) to a value:

- ``constant``: ``start`` every epoch;
- ``linear``: from ``start`` at the first epoch to ``end`` at the last;
- ``cosine``: from ``start`` to ``end`` along a half cosine (flat at both ends);
- ``stages``: a list of ``(share, value)`` pairs: the first ``share`` of the epochs at the first
  value, the next share at the next, ...; the shares sum to 1. Seed 003's schedule is
  ``[[0.33, 2], [0.33, 4], [0.34, 6]]`` for the temperature and ``[[0.33, 0.7], [0.33, 0.5],
  [0.34, 0.3]]`` for alpha.

The schedule runs over the configured ``epochs``, so an early stop ends it where it stands. The
temperature is applied to the cached raw teacher logits at use, so one cache serves every schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

ScheduleKind = Literal["constant", "linear", "cosine", "stages"]
SCHEDULE_KINDS: tuple[str, ...] = ("constant", "linear", "cosine", "stages")


def scheduled(kind: str, start: float, end: float | None, stages: Sequence[Sequence[float]] | None,
              epoch: int, epochs: int) -> float:
    """The value of a schedule at ``epoch`` (1-based) of ``epochs``."""
    if kind == "constant":
        return start
    if kind == "stages":
        if not stages:
            raise ValueError("a 'stages' schedule needs its stages")
        position, reached = (epoch - 1) / epochs, 0.0  # the share of the epochs already behind
        for share, value in stages:
            reached += share
            if position < reached - 1e-9:
                return float(value)
        return float(stages[-1][1])
    if end is None:
        raise ValueError(f"a {kind!r} schedule needs its end value")
    progress = (epoch - 1) / (epochs - 1) if epochs > 1 else 1.0
    if kind == "linear":
        return start + (end - start) * progress
    if kind == "cosine":
        return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2
    raise ValueError(f"unknown schedule {kind!r}: use one of {', '.join(SCHEDULE_KINDS)}")
