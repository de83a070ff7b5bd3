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


# --------------------------------------------------------------------------------------------
# The time kept for the KD verdict's repeats (SweepPlan.reserve_s)
# --------------------------------------------------------------------------------------------

def plan(repeats: int = 3, budget_s: float = 600.0, jobs: int = 1, **fixed):
    import time

    from sweeps.search.plan import SweepPlan

    return SweepPlan(study="s", task="digits", store_root="/nonexistent", tracking_uri="sqlite:///x.db",
                     storage_url="x.journal", space=None, fixed={"epochs": 20, **fixed}, sampler="tpe", pruner="median",
                     seed=0, budget_s=budget_s, started_at=time.time(), min_epochs=3, jobs=jobs, repeats=repeats)


def timed_trial(value: float | None, train_s: float, wall_s: float, epochs_run: int, pruned: bool = False):
    """A real finished FrozenTrial with the timing attrs a trial records."""
    import optuna
    from optuna.trial import TrialState

    return optuna.trial.create_trial(
        state=TrialState.PRUNED if pruned else TrialState.COMPLETE, value=None if pruned else value,
        user_attrs={"train_time_s": train_s, "wall_time_s": wall_s, "epochs_run": epochs_run,
                    "epoch_time_s": train_s / epochs_run})


def test_reserve_is_k_pairs_of_the_best_complete_trials_measured_time():
    # Best by value is the 0.9 trial (10 s training over its 20 epochs + 1 s set-up/test/upload), not
    # the median. Without a transfer set the twin costs as much as its distilled arm: a pair is
    # 10 s x 2 + 2 x 1 s = 22 s; 3 pairs 66 s with room for a slow one (x 1.15), plus 2 s to close.
    trials = [timed_trial(0.8, 2.0, 2.5, 10), timed_trial(0.9, 10.0, 11.0, 20), timed_trial(0.7, 4.0, 4.5, 10)]
    assert plan(repeats=3).reserve_s(trials) == pytest.approx(66.0 * 1.15 + 2.0)
    assert plan(repeats=2).reserve_s(trials) == pytest.approx(44.0 * 1.15 + 2.0)


def test_the_twin_of_a_transfer_set_trial_is_reserved_at_its_smaller_cost():
    # With 4 unlabelled inputs per labelled one the twin's steps carry a fifth of the inputs, but a
    # step's fixed cost (two labelled batches' worth) stays: the twin costs 3/7 of its distilled
    # arm, and a pair 10 s x (1 + 3/7) + 2 x 1 s = 16.29 s; 3 pairs 48.86 s (x 1.15), plus 2 s.
    trials = [timed_trial(0.9, 10.0, 11.0, 20)]
    assert plan(transfer_ratio=4.0, data_fraction=0.5).reserve_s(trials) == pytest.approx(
        3 * (100 / 7 + 2) * 1.15 + 2.0)
    # Without a KD term the trial trained no transfer set either: the twin costs the same.
    import optuna

    no_kd = optuna.trial.create_trial(value=0.9, params={"alpha": 0.0},
                                      distributions={"alpha": optuna.distributions.FloatDistribution(0.0, 1.0)},
                                      user_attrs=trials[0].user_attrs)
    assert plan(transfer_ratio=4.0, data_fraction=0.5).reserve_s([no_kd]) == pytest.approx(66.0 * 1.15 + 2.0)


def test_a_trial_that_stopped_early_is_reserved_halfway_to_its_full_length():
    # 5 s over 10 of 20 epochs: other seeds run longer, counted at 15 epochs, 7.5 s:
    # a pair 7.5 s x 2 + 2 x 1 s = 17 s; 3 pairs 51 s (x 1.15), plus 2 s.
    trials = [timed_trial(0.9, 5.0, 6.0, 10)]
    assert plan().reserve_s(trials) == pytest.approx(51.0 * 1.15 + 2.0)


def test_reserve_scales_with_the_trial_not_with_the_budget():
    trials = [timed_trial(0.9, 1.0, 1.5, 10)]
    assert plan(budget_s=60).reserve_s(trials) == plan(budget_s=7200).reserve_s(trials)


def test_worker_processes_add_their_exit_time():
    trials = [timed_trial(0.9, 1.0, 1.5, 10)]
    assert plan(jobs=2).reserve_s(trials) - plan(jobs=1).reserve_s(trials) == pytest.approx(4.0)


def test_repeats_0_keeps_only_the_closing_margin():
    assert plan(repeats=0).reserve_s([timed_trial(0.9, 100.0, 110.0, 20)]) == pytest.approx(2.0)


def test_before_any_trial_is_timed_a_quarter_of_the_budget_is_kept():
    assert plan(budget_s=600).reserve_s([]) == pytest.approx(150.0 + 2.0)


def test_before_any_trial_completes_a_full_run_at_the_measured_epoch_time_is_assumed():
    # A pruned trial: 0.5 s an epoch over 4 epochs, 0.5 s overhead; a full run is 20 epochs, 10 s,
    # and its twin as long: 3 x (10 s x 2 + 2 x 0.5 s) = 63 s (x 1.15).
    trials = [timed_trial(None, 2.0, 2.5, 4, pruned=True)]
    assert plan().reserve_s(trials) == pytest.approx(63.0 * 1.15 + 2.0)


def test_trials_stop_before_the_reserve():
    trials = [timed_trial(0.9, 10.0, 11.0, 20)]
    p = plan()
    assert p.trials_deadline(trials) == pytest.approx(p.deadline - p.reserve_s(trials))


# --------------------------------------------------------------------------------------------
# One pair's time (sweeps.verdict.timing.PairTime): estimated from a trial, then measured
# --------------------------------------------------------------------------------------------

def test_once_pairs_have_run_their_own_time_replaces_the_estimate():
    from sweeps.verdict.timing import PairTime

    pair = PairTime(50.0)
    pair.add(8.0)
    assert pair.seconds == pytest.approx(8.0)
    pair.add(12.0)  # slower than the mean of 10 s: the load grew, the last pair counts
    assert pair.seconds == pytest.approx(12.0)
    pair.add(7.0)  # mean 9 s
    assert pair.seconds == pytest.approx(9.0)


def test_whole_pairs_within_a_time():
    from sweeps.verdict.timing import PairTime

    assert [PairTime(10.0).pairs_within(s) for s in (-5.0, 0.0, 9.9, 10.0, 35.0)] == [0, 0, 0, 1, 3]


# --------------------------------------------------------------------------------------------
# Set-up against the budget (SetupClock): one line, early, saying whether the teacher fits
# --------------------------------------------------------------------------------------------

def _epoch(number: int, seconds: float):
    from kdcore import EpochResult

    return EpochResult(number, 0.0, 0.0, 0.0, 0.0, 0.5, 1e-3, seconds, 100.0)


def test_the_teacher_estimate_comes_once_after_two_timed_epochs():
    from sweeps.search.budget import SetupClock

    clock = SetupClock(deadline=1_000.0)
    first = clock.epoch("teacher", 100, _epoch(1, 2.0), now=10.0)
    second = clock.epoch("teacher", 100, _epoch(2, 1.0), now=11.0)
    third = clock.epoch("teacher", 100, _epoch(3, 1.0), now=12.0)

    assert first[1] is None and third[1] is None
    assert second[0] == "training the teacher: epoch 2/100, about 2m27s left"  # median 1.5 s x 98 epochs
    assert second[1].startswith("the teacher: about 2m27s more to train (98 epochs of 1.50s")
    assert "the budget has 16m29s left, so about 14m02s remain for the search and the verdict" in second[1]


def test_a_teacher_that_cannot_finish_in_the_budget_says_so_at_once_and_that_the_next_run_resumes_it():
    from sweeps.search.budget import SetupClock

    clock = SetupClock(deadline=100.0)
    clock.epoch("teacher", 150, _epoch(1, 2.0), now=10.0)
    _, line = clock.epoch("teacher", 150, _epoch(2, 2.0), now=12.0)

    assert "cannot finish in this run" in line and "the next run resumes it" in line


def test_once_a_trial_completes_the_outlook_says_how_many_more_trials_and_pairs_fit():
    p = plan(budget_s=600.0)
    assert p.outlook([], now=p.started_at) is None
    trials = [timed_trial(0.9, 10.0, 11.0, 20)]  # a pair: 22 s (see above); 3 of them 75.9 s + 2 s
    # 600 s - 77.9 s reserved = 522.1 s for trials of 11 s: 47 more.
    assert p.outlook(trials, now=p.started_at) == (
        "at this speed a full trial takes about 11s: the budget holds about 47 more, then the verdict's 3 pairs "
        "(about 22s each) (pruned trials end sooner, so more of them run)")
    assert "only 1 of the verdict's 3 pairs" in plan(budget_s=40.0).outlook(trials, now=p.started_at)


def test_when_not_even_two_pairs_fit_any_more_the_rest_of_the_budget_goes_to_trials():
    # A pair takes 22 s (see above): 2 pairs and the 2 s to close need 46 s.
    p = plan(budget_s=600.0)
    trials = [timed_trial(0.9, 10.0, 11.0, 20)]
    assert p.reserve_s(trials, now=p.deadline - 100) == pytest.approx(66.0 * 1.15 + 2.0)  # 3 pairs still fit
    assert p.reserve_s(trials, now=p.deadline - 50) == pytest.approx(66.0 * 1.15 + 2.0)  # 2 do: the verdict runs 2
    assert p.reserve_s(trials, now=p.deadline - 40) == pytest.approx(2.0)  # none would: search on
    assert p.trials_deadline(trials, now=p.deadline - 40) == pytest.approx(p.deadline - 2.0)
