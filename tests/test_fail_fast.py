"""Fail fast: a sweep whose trials all break alike stops, and a sweep that completes nothing exits 1.

Real ``kdsweep run`` processes on the ``digits`` data in a copied store. The broken task is the
digits task with a student that works for one forward pass in eval mode (all a preflight check
pushes) and raises on its third training batch, so the sweep reaches its trials and every one
fails with the same error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from _sweep_helpers import (
    CliRun,
    check_sweep_invariants,
    copy_store,
    load_study,
    mlflow_client,
    run_cli,
    sweep_runs,
    sweep_template,  # noqa: F401  (a fixture)
    write_sweep_file,
)

BROKEN_TASK = '''
"""The digits task with a student that breaks only in training, on its third batch."""
import torch
from torch import nn

from kdcore.tasks.digits import DigitsTask


class BreaksInTraining(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.batches = inner, 0

    def forward(self, x):
        if self.training:
            self.batches += 1
            if self.batches > 2:
                return torch.zeros(9)[torch.tensor(9)]  # IndexError: index 9 is out of bounds
        return self.inner(x)


class BrokenDigits(DigitsTask):
    def build_student(self, ratio: float) -> nn.Module:
        return BreaksInTraining(super().build_student(ratio))


def make_task() -> BrokenDigits:
    return BrokenDigits()
'''
ERROR = "IndexError: index 9 is out of bounds for dimension 0 with size 9"
RAISING_LINE = next(i for i, line in enumerate(BROKEN_TASK.splitlines(), 1) if "torch.zeros(9)" in line)
BUDGET_S = 120


@dataclass
class Broken:
    store: Path
    task_file: Path
    run: CliRun


def run_broken(root: Path, template: Path, *extra: str) -> Broken:
    (root / "tasks").mkdir()
    task_file = root / "tasks" / "broken_task.py"
    task_file.write_text(BROKEN_TASK)
    store = copy_store(template, root / "store")
    run = run_cli("run", "--task", "broken_task:make_task", "--budget", f"{BUDGET_S}s", "--store", str(store),
                  "--study", "broken", *extra, cwd=root, env={"PYTHONPATH": str(root / "tasks")}, timeout=BUDGET_S + 60)
    return Broken(store, task_file, run)


def error_lines(run: CliRun) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def broken(tmp_path_factory, sweep_template) -> Broken:
    return run_broken(tmp_path_factory.mktemp("broken"), sweep_template)


def test_a_sweep_whose_first_3_trials_fail_alike_exits_1_well_within_its_budget(broken):
    assert broken.run.returncode == 1, broken.run.explain()
    assert broken.run.wall_s < BUDGET_S / 2, broken.run.explain()


def test_it_prints_the_error_once_on_one_line_with_where_it_was_raised(broken):
    assert error_lines(broken.run) == [
        f"error: the first 3 trials failed with the same error: {ERROR} (at {broken.task_file}:{RAISING_LINE} in forward); "
        "nothing completed (the trial runs carry it as the tag kdsweep.error)"], broken.run.explain()
    assert broken.run.stderr.rstrip().splitlines()[-1].startswith("error:"), broken.run.explain()
    assert "Traceback" not in broken.run.stderr


def test_it_stops_after_exactly_3_failed_trials_each_recording_its_error(broken):
    trials = load_study(broken.store, "broken").get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL"] * 3
    assert {t.user_attrs["kdsweep.error"] for t in trials} == {f"{ERROR} (at {broken.task_file}:{RAISING_LINE} in forward)"}
    assert {t.user_attrs["stop_reason"] for t in trials} == {"error"}


def test_it_leaves_nothing_running_and_tags_each_failed_run_with_its_error(broken):
    study, runs = check_sweep_invariants(broken.store, "broken")
    assert sorted(runs.children) == [0, 1, 2]
    for run in runs.children.values():
        assert run.info.status == "FAILED"
        assert run.data.tags["kdsweep.error"].startswith(ERROR)
    assert runs.parent.info.status == "FAILED"
    assert runs.parent.data.tags["state"] == "FAILED"
    assert runs.parent.data.tags["kdsweep.error"].startswith("the first 3 trials failed with the same error")


def test_it_skips_the_kd_verdict(broken):
    runs = sweep_runs(broken.store, "broken")
    assert runs.repeats == []
    assert "kd_verdict" not in runs.parent.data.tags
    client = mlflow_client(broken.store)
    assert "comparison.json" not in {f.path for f in client.list_artifacts(runs.parent.info.run_id)}


def test_with_jobs_2_every_worker_stops_and_nothing_is_left_running(tmp_path, sweep_template):
    broken = run_broken(tmp_path, sweep_template, "--jobs", "2")
    assert broken.run.returncode == 1, broken.run.explain()
    assert broken.run.wall_s < BUDGET_S / 2, broken.run.explain()
    [line] = error_lines(broken.run)
    assert line.startswith(f"error: the first 3 trials failed with the same error: {ERROR}"), line
    study, runs = check_sweep_invariants(broken.store, "broken")
    states = [t.state.name for t in study.get_trials(deepcopy=False) if t.state.name != "WAITING"]
    assert set(states) == {"FAIL"} and 3 <= len(states) <= 5, states  # a worker may be mid-trial when it stops
    assert runs.repeats == []


def test_a_sweep_in_which_no_trial_completes_exits_1_saying_why(tmp_path, sweep_template):
    # 50 s trials (batch 8, 200 epochs) in a 20 s budget: the one trial is cut by the budget's end.
    store = copy_store(sweep_template, tmp_path / "store")
    sweep = write_sweep_file(tmp_path / "slow.yaml", {"train": {"epochs": 200, "batch_size": 8, "patience": 0}})
    run = run_cli("run", "--task", "digits", "--config", str(sweep), "--budget", "20s", "--repeats", "0",
                  "--store", str(store), "--study", "short", cwd=tmp_path)
    assert run.returncode == 1, run.explain()
    [line] = error_lines(run)
    trials = [t for t in load_study(store, "short").get_trials(deepcopy=False) if t.state.name != "WAITING"]
    assert trials and all(t.state.name == "PRUNED" for t in trials), [t.state.name for t in trials]
    assert line == (f"error: no trial completed in this run: {len(trials)} cut by the budget's end, 0 pruned, "
                    "0 failed; give a longer --budget"), run.explain()
    check_sweep_invariants(store, "short")


# --------------------------------------------------------------------------------------------
# The rule, on trials in a real in-memory study
# --------------------------------------------------------------------------------------------

def plan_with(study, outcomes: list[tuple[str, str | None]], invocation: str = "this"):
    """Add finished trials ``(state, error)`` taken up by ``invocation``; return this invocation's plan."""
    import time

    import optuna

    from sweeps.search.plan import SweepPlan

    for state, error in outcomes:
        attrs = {"kdsweep.lease": {"invocation": invocation}, **({"kdsweep.error": error} if error else {})}
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState[state],
                                                  value=0.5 if state == "COMPLETE" else None, user_attrs=attrs))
    return SweepPlan(study="s", task="digits", store_root="", tracking_uri="", storage_url="", space=None, fixed={},
                     sampler="tpe", pruner="median", seed=0, budget_s=60, started_at=time.time(), min_epochs=3,
                     invocation="this")


@pytest.fixture
def study():
    import optuna

    return optuna.create_study(direction="maximize")


def test_three_first_failures_alike_stop_the_sweep(study):
    plan = plan_with(study, [("FAIL", "E: x")] * 3)
    assert plan.failing(study.trials) == "the first 3 trials failed with the same error: E: x"


def test_two_failures_or_three_different_ones_do_not(study):
    assert plan_with(study, [("FAIL", "E: x")] * 2).failing(study.trials) is None
    assert plan_with(study, [("FAIL", "E: y")]).failing(study.trials) is None


def test_five_failures_alike_in_a_row_stop_it_after_a_success(study):
    plan = plan_with(study, [("COMPLETE", None), ("PRUNED", None)] + [("FAIL", "E: x")] * 4)
    assert plan.failing(study.trials) is None
    plan_with(study, [("FAIL", "E: x")])
    assert plan.failing(study.trials) == "5 trials in a row failed with the same error: E: x"


def test_failures_without_an_error_do_not_count(study):
    # Interrupted or reaped trials are FAIL with no kdsweep.error: they say nothing about the task.
    assert plan_with(study, [("FAIL", None)] * 5).failing(study.trials) is None


def test_an_earlier_invocations_failures_do_not_stop_a_resumed_study(study):
    plan_with(study, [("FAIL", "E: x")] * 5, invocation="before the fix")
    assert plan_with(study, [("COMPLETE", None)]).failing(study.trials) is None
