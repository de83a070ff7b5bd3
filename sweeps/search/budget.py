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
