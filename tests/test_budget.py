"""Budgets: ``sweeps.budget.parse_budget`` reads '2h', '45m', '90s', '1h30m' as seconds, and nothing else."""

from __future__ import annotations

import pytest

from kdcore import ConfigError
from sweeps.search.budget import format_seconds, parse_budget


@pytest.mark.parametrize(("text", "seconds"), [
    ("2h", 7200), ("45m", 2700), ("90s", 90), ("1h30m", 5400), ("1h30m15s", 5415), ("30s", 30),
    ("1.5h", 5400), ("0.5m", 30), ("2H", 7200), (" 45m ", 2700),
])
def test_budget_parses_hours_minutes_and_seconds(text, seconds):
    assert parse_budget(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2 hours", "-5m", "0s", "", "   ", "0h0m", "90", "m", "1h 30m", "30m1h", "abc", "5d"])
def test_budget_rejects_anything_else_with_a_hint(text):
    with pytest.raises(ConfigError) as raised:
        parse_budget(text)
    message = str(raised.value)
    assert message.startswith(f"invalid budget '{text}'")
    assert "\n" not in message


def test_zero_budget_says_it_must_be_positive():
    with pytest.raises(ConfigError, match="longer than 0s"):
        parse_budget("0s")


@pytest.mark.parametrize(("seconds", "text"), [(37, "37s"), (245, "4m05s"), (3720, "1h02m"), (7200, "2h00m")])
def test_format_seconds_is_short_and_readable(seconds, text):
    assert format_seconds(seconds) == text
