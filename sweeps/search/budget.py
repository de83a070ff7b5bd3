"""Time budgets: '2h', '45m', '90s', '1h30m' -> seconds."""

from __future__ import annotations

import re

from kdcore import ConfigError

_BUDGET = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")


def parse_budget(text: str) -> float:
    """Seconds in a budget such as '2h', '45m', '90s' or '1h30m'; ConfigError otherwise."""
    match = _BUDGET.match(text.strip().lower())
    if not text.strip() or match is None or not any(match.groupdict().values()):
        raise ConfigError(f"invalid budget '{text}': use a positive duration such as 2h, 45m, 90s or 1h30m")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    seconds = parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
    if seconds <= 0:
        raise ConfigError(f"invalid budget '{text}': it must be longer than 0s")
    return seconds


def format_seconds(seconds: float) -> str:
    """'1h02m', '4m05s', '37s'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class SetupClock:
    """A teacher's training measured against the budget: a progress note after each epoch and, once
    its first epochs are timed (early in the budget), one line saying what it will take and whether
    it fits. ``epoch`` is an ``on_teacher_epoch`` hook's body."""

    MEASURED_EPOCHS = 2  # the first epoch pays for lazy set-up; two give a fair median

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.times: dict[str, list[float]] = {}
        self.told: set[str] = set()

    def epoch(self, name: str, epochs: int, result, now: float | None = None) -> tuple[str, str | None]:
        """(the progress note, the one estimate line or None) after ``result``, an epoch of teacher
        ``name`` of at most ``epochs``."""
        import statistics
        import time

        now = time.time() if now is None else now
        times = self.times.setdefault(name, [])
        times.append(result.epoch_time_s)
        left_s = statistics.median(times) * max(0, epochs - result.epoch)
        who = "the teacher" if name == "teacher" else f"teacher {name}"
        note = f"training {who}: epoch {result.epoch}/{epochs}, about {format_seconds(left_s)} left"
        if len(times) < self.MEASURED_EPOCHS or name in self.told:
            return note, None
        self.told.add(name)
        budget_left = self.deadline - now
        line = (f"{who}: about {format_seconds(left_s)} more to train ({epochs - result.epoch} epochs of "
                f"{statistics.median(times):.2f}s at this machine's current speed); the budget has "
                f"{format_seconds(budget_left)} left")
        if left_s > budget_left:
            line += (": it cannot finish in this run, so it trains until the budget's end, saving every epoch, and "
                     "the next run resumes it; no trial runs this time")
        else:
            line += f", so about {format_seconds(budget_left - left_s)} remain for the search and the verdict"
        return note, line
