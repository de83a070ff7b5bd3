"""The KD verdict: the paired-t maths, the words at their boundaries, the repeats run directly
(cut by Ctrl-C or the deadline: ``incomplete``, no gain), what the parent run records, and
``--repeats`` checked before anything is written.

The end-to-end sweep with ``--repeats 2`` is in tests/test_sweep.py; Ctrl-C during the repeats
of a real ``kdsweep run`` is in tests/test_sweep_crash.py.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
from _sweep_helpers import copy_store, sweep_template, write_sweep_file  # noqa: F401  (a fixture)
from typer.testing import CliRunner

from cli.main import app
from kdcore import TrainConfig
from sweeps.verdict import HELPS, HURTS, INCOMPLETE, NO_DIFFERENCE, Interval, paired_interval, verdict_word
from sweeps.verdict.paired import Pair, complete_verdict, incomplete_verdict
from sweeps.verdict.repeats import FINISHED, PAIR_METRICS, record_verdict, run_repeats
from sweeps.verdict.timing import PairTime

# --------------------------------------------------------------------------------------------
# The maths
# --------------------------------------------------------------------------------------------

# Two-sided 95% critical values t_{0.975, df} from a printed t table (3 decimals).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_critical_values_match_the_printed_t_table(df):
    from scipy.stats import t

    assert t.ppf(0.975, df) == pytest.approx(T_TABLE[df], abs=5e-4)


def test_three_pairs_by_hand():
    # d = (0.02, 0.05, 0.08): mean 0.05, sd 0.03, se 0.03 / sqrt(3) = 0.017321,
    # half-width 4.303 * 0.017321 = 0.074531: interval [-0.0245, 0.1245] (table value of t).
    interval = paired_interval([0.92, 0.95, 0.88], [0.90, 0.90, 0.80])
    assert interval.n == 3
    assert interval.mean == pytest.approx(0.05)
    assert interval.low == pytest.approx(0.05 - 0.074531, abs=2e-5)
    assert interval.high == pytest.approx(0.05 + 0.074531, abs=2e-5)
    assert verdict_word(interval) == NO_DIFFERENCE


def test_five_pairs_by_hand():
    # d = (0.10, 0.06, 0.08, 0.12, 0.09): mean 0.09, sd sqrt(0.0020 / 4) = 0.022361,
    # se 0.01, half-width 2.776 * 0.01 = 0.02776: interval [0.0622, 0.1178].
    interval = paired_interval([0.70, 0.66, 0.68, 0.72, 0.69], [0.60, 0.60, 0.60, 0.60, 0.60])
    assert interval.mean == pytest.approx(0.09)
    assert (interval.low, interval.high) == pytest.approx((0.09 - 0.02776, 0.09 + 0.02776), abs=5e-6)
    assert verdict_word(interval) == HELPS


@pytest.mark.parametrize("kd, nokd", [
    ([0.81, 0.79, 0.85, 0.80], [0.75, 0.78, 0.79, 0.70]),
    ([0.5, 0.6], [0.55, 0.52]),
    ([0.91, 0.90, 0.93, 0.88, 0.92, 0.90, 0.89], [0.93, 0.92, 0.92, 0.91, 0.94, 0.90, 0.93]),
])
def test_interval_agrees_with_scipys_paired_t_test(kd, nokd):
    from scipy.stats import ttest_rel

    interval = paired_interval(kd, nokd)
    reference = ttest_rel(kd, nokd).confidence_interval(0.95)
    assert (interval.low, interval.high) == pytest.approx((reference.low, reference.high), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("low", "high", "word"), [
    (0.001, 0.2, HELPS),
    (0.0, 0.2, NO_DIFFERENCE),  # touches 0: no gain is not excluded
    (-0.001, 0.2, NO_DIFFERENCE),
    (-0.2, 0.0, NO_DIFFERENCE),
    (-0.2, -0.001, HURTS),
    (-1e-12, 1e-12, NO_DIFFERENCE),
])
def test_verdict_words_at_their_boundaries(low, high, word):
    assert verdict_word(Interval((low + high) / 2, low, high, 3)) == word


def test_identical_differences_give_a_zero_width_interval():
    assert verdict_word(paired_interval([0.9, 0.8], [0.85, 0.75])) == HELPS
    assert verdict_word(paired_interval([0.9, 0.8], [0.9, 0.8])) == NO_DIFFERENCE


@pytest.mark.parametrize(("kd", "nokd", "words"), [
    ([0.9], [0.8], "at least 2 pairs"),
    ([], [], "at least 2 pairs"),
    ([0.9, 0.8], [0.8], "differ in length"),
])
def test_an_interval_needs_two_matched_pairs(kd, nokd, words):
    with pytest.raises(ValueError, match=words):
        paired_interval(kd, nokd)


def test_complete_verdict_holds_means_gain_interval_and_retention():
    pairs = [Pair(1, 1, 0.80, 0.70, 0.82, 0.71), Pair(2, 2, 0.84, 0.72, 0.85, 0.74)]
    verdict = complete_verdict(pairs, teacher_test_acc=0.9, trial=4)
    # d = (0.10, 0.12): se 0.01, half-width t_{0.975,1} * 0.01 = 0.127: the interval spans 0.
    assert verdict["kd_verdict"] == NO_DIFFERENCE
    assert verdict["kd_gain_ci95_low"] == pytest.approx(0.11 - 0.127062, abs=1e-6)
    assert (verdict["distilled_test_acc"], verdict["nokd_test_acc"]) == pytest.approx((0.82, 0.71))
    assert (verdict["distilled_val_acc"], verdict["nokd_val_acc"]) == pytest.approx((0.835, 0.725))
    assert verdict["kd_gain"] == pytest.approx(0.11)
    assert verdict["retention"] == pytest.approx(0.82 / 0.9)
    assert (verdict["kd_repeats"], verdict["kd_verdict_trial"], verdict["best_trial"]) == (2, 4, 4)


def test_incomplete_verdict_carries_no_number_that_rests_on_pairs():
    verdict = incomplete_verdict("only 1 of 3 pairs finished before the deadline", teacher_test_acc=0.9, trial=2)
    assert verdict["kd_verdict"] == INCOMPLETE
    assert not set(PAIR_METRICS) & set(verdict)


# --------------------------------------------------------------------------------------------
# The repeats, run directly on digits
# --------------------------------------------------------------------------------------------

QUICK = TrainConfig(epochs=4, patience=0, batch_size=128, device="cpu", seed=5)


class Repeats:
    """A prepared digits store with an MLflow experiment and a stand-in study parent run."""

    def __init__(self, root: Path) -> None:
        from sweeps.tracking.logged_run import prepare
        from sweeps.tracking.run_logger import RunLogger
        from sweeps.tracking.store import Store

        self.store = Store.resolve(root)
        self.prepared = prepare("digits", self.store, device="cpu")
        self.client = self.store.client()
        self.experiment_id = self.store.experiment(self.client, "rep")
        self.parent = RunLogger.start(self.client, self.experiment_id, "rep", params={},
                                      tags={"kdsweep.kind": "study"})

    def run(self, repeats: int, **options) -> dict:
        return run_repeats(self.prepared, QUICK, repeats=repeats, trial=7, client=self.client,
                           experiment_id=self.experiment_id, study="rep", study_run_id=self.parent.run_id, **options)

    def repeat_runs(self) -> list:
        from mlflow.entities import ViewType

        return [r for r in self.client.search_runs([self.experiment_id], run_view_type=ViewType.ALL)
                if r.data.tags.get("kdsweep.kind") == "repeat"]

    def parent_run(self):
        return self.client.get_run(self.parent.run_id)


@pytest.fixture
def repeats(tmp_path, sweep_template) -> Repeats:
    return Repeats(copy_store(sweep_template, tmp_path / "store"))


def test_two_finished_pairs_give_a_verdict_from_their_test_accuracies(repeats):
    started = []
    verdict = repeats.run(2, on_start=lambda i, arm: started.append((i, arm)))
    assert started == [(1, "kd"), (1, "nokd"), (2, "nokd"), (2, "kd")]  # arms alternate
    runs = {r.info.run_name: r for r in repeats.repeat_runs()}
    assert sorted(runs) == ["repeat-1-kd", "repeat-1-nokd", "repeat-2-kd", "repeat-2-nokd"]
    for name, run in runs.items():
        i, arm = int(name.split("-")[1]), name.split("-")[2]
        assert run.data.params["seed"] == str(QUICK.seed + i)
        assert run.data.params["alpha"] == str(0.0 if arm == "nokd" else QUICK.alpha)
        assert run.data.tags["state"] == "COMPLETE" and run.data.tags["stop_reason"] in FINISHED
        assert run.data.tags["kdsweep.repeat_of_trial"] == "7"
    interval = paired_interval([runs[f"repeat-{i}-kd"].data.metrics["test_acc"] for i in (1, 2)],
                               [runs[f"repeat-{i}-nokd"].data.metrics["test_acc"] for i in (1, 2)])
    assert (verdict["kd_gain"], verdict["kd_gain_ci95_low"]) == pytest.approx((interval.mean, interval.low))
    assert verdict["kd_verdict"] == verdict_word(interval)
    assert verdict["pairs_finished"] == 2


def test_a_pair_cut_by_ctrl_c_makes_the_verdict_incomplete_and_its_run_cut(repeats):
    # The interrupt is set as the second arm of pair 1 starts: that arm stops in its first batch.
    interrupt = threading.Event()

    def interrupt_second_arm(i: int, arm: str) -> None:
        if (i, arm) == (1, "nokd"):
            interrupt.set()

    verdict = repeats.run(3, interrupt=interrupt, on_start=interrupt_second_arm)
    assert verdict["kd_verdict"] == INCOMPLETE
    assert verdict["kd_verdict_reason"] == "interrupted (Ctrl-C) after 0 of 3 pairs"
    assert not set(PAIR_METRICS) & set(verdict)
    runs = {r.info.run_name: r for r in repeats.repeat_runs()}
    assert sorted(runs) == ["repeat-1-kd", "repeat-1-nokd"]  # no arm starts after the cut
    cut = runs["repeat-1-nokd"]
    assert (cut.data.tags["state"], cut.data.tags["stop_reason"], cut.info.status) == ("CUT", "interrupted", "KILLED")
    for run in runs.values():  # a run tagged COMPLETE is one its own stopping rule ended
        assert (run.data.tags["state"] == "COMPLETE") == (run.data.tags["stop_reason"] in FINISHED)


def test_a_deadline_already_passed_starts_no_arm_and_gives_incomplete(repeats):
    verdict = repeats.run(2, deadline=time.time() - 1)
    assert verdict["kd_verdict"] == INCOMPLETE
    assert verdict["kd_verdict_reason"].startswith("only 0 of 2 pairs finished before the deadline")
    assert repeats.repeat_runs() == []
    record_verdict(repeats.client, repeats.parent.run_id, verdict)
    parent = repeats.parent_run()
    assert "kd_gain" not in parent.data.metrics
    assert (parent.data.tags["kd_verdict"], parent.data.tags["kd_verdict_trial"]) == (INCOMPLETE, "7")
    assert parent.data.tags["kd_verdict_reason"] == verdict["kd_verdict_reason"]


def test_pairs_that_cannot_fit_the_time_left_are_not_started_and_the_line_names_a_budget_that_would_hold_them(repeats):
    verdict = repeats.run(3, deadline=time.time() + 60, pair_time=PairTime(100.0), budget_s=180.0)

    assert verdict["kd_verdict"] == INCOMPLETE
    reason = verdict["kd_verdict_reason"]
    assert reason.startswith("skipped: a verdict needs at least 2 pairs of about 100s each and 60s were left")
    assert "a --budget of about 8m would hold all 3" in reason  # 180 s + 3 x 100 s - 60 s = 420 s
    assert repeats.repeat_runs() == []


class HoldsTwoPairs(PairTime):
    """A pair estimate that grows past the time left once two pairs have run (a machine that just
    got busy), so the budget holds exactly two of the pairs asked for."""

    @property
    def seconds(self) -> float:
        return 1.0 if len(self.measured_s) < 2 else 1000.0


def test_when_the_budget_holds_fewer_pairs_than_asked_the_verdict_rests_on_the_whole_ones_and_says_so(repeats):
    from sweeps.query.summary import verdict_line

    verdict = repeats.run(3, deadline=time.time() + 300, pair_time=HoldsTwoPairs(1.0))

    assert verdict["kd_verdict"] in (HELPS, HURTS, NO_DIFFERENCE)
    assert (verdict["kd_repeats"], verdict["kd_repeats_wanted"], verdict["pairs_finished"]) == (2, 3, 2)
    assert verdict["kd_verdict_reason"].startswith("2 of the 3 pairs asked for: the budget held no more pairs")
    assert len(repeats.repeat_runs()) == 4  # pair 3 never started
    assert verdict_line(verdict).endswith(verdict["kd_verdict_reason"])
    assert "2 paired seeds" in verdict_line(verdict)


def test_an_incomplete_verdict_overwrites_an_earlier_gain_with_nan(repeats):
    earlier = complete_verdict([Pair(1, 1, 0.9, 0.8, 0.9, 0.8), Pair(2, 2, 0.92, 0.8, 0.9, 0.8)],
                               teacher_test_acc=0.95, trial=3)
    record_verdict(repeats.client, repeats.parent.run_id, earlier)
    assert repeats.parent_run().data.metrics["kd_gain"] == pytest.approx(0.11)
    time.sleep(0.01)  # MLflow keeps the latest value by timestamp
    record_verdict(repeats.client, repeats.parent.run_id,
                   incomplete_verdict("interrupted (Ctrl-C) before the paired repeats", teacher_test_acc=0.95, trial=5))
    parent = repeats.parent_run()
    for name in ("kd_gain", "kd_gain_ci95_low", "kd_gain_ci95_high", "kd_repeats", "distilled_test_acc",
                 "nokd_test_acc", "retention"):
        assert math.isnan(parent.data.metrics[name]), name
    assert parent.data.metrics["best_trial"] == 5 and parent.data.metrics["teacher_test_acc"] == 0.95
    assert parent.data.tags["kd_verdict"] == INCOMPLETE and parent.data.tags["kd_verdict_trial"] == "5"


def test_the_verdict_is_logged_as_comparison_json(repeats, tmp_path):
    import json

    verdict = incomplete_verdict("no trial completed", teacher_test_acc=0.95, trial=None)
    record_verdict(repeats.client, repeats.parent.run_id, verdict)
    path = repeats.client.download_artifacts(repeats.parent.run_id, "comparison.json", str(tmp_path))
    assert json.loads(Path(path).read_text()) == verdict
    assert repeats.parent_run().data.tags["kd_verdict_trial"] == ""


# --------------------------------------------------------------------------------------------
# --repeats is checked before anything is written
# --------------------------------------------------------------------------------------------

@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("args", [["--repeats", "1"], ["--repeats=-1"], ["--repeats", "-2"]],
                         ids=["one", "minus-one", "minus-two"])
def test_too_few_repeats_are_one_line_exit_2_and_write_nothing(args, workdir, tmp_path):
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["run", "--task", "digits", "--store", str(store), *args])
    stderr = result.stderr.strip()
    assert result.exit_code == 2, f"{result.stdout}\n{stderr}"
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: --repeats ")
    assert "at least 2 pairs" in stderr and "0 to skip" in stderr
    assert not store.exists() and list(workdir.iterdir()) == []


def test_a_sweep_file_with_repeats_1_is_rejected_too(workdir, tmp_path):
    sweep = write_sweep_file(tmp_path / "one.yaml", {"repeats": 1})
    result = CliRunner().invoke(app, ["run", "--task", "digits", "--config", str(sweep), "--store",
                                      str(tmp_path / "store")])
    assert result.exit_code == 2 and "--repeats 1 is not allowed" in result.stderr
    assert not (tmp_path / "store").exists() and list(workdir.iterdir()) == []
