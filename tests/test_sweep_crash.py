"""Crash safety of ``kdsweep run``: a killed process, one Ctrl-C, two Ctrl-C.

Each scenario starts the real CLI in the background on ``digits`` with slow trials (batch 8,
40 epochs: ~0.25 s an epoch), watches the Optuna journal until a trial is mid-training, signals
the process, then checks what the study and MLflow hold, and what a second invocation of the
same study does with the trial that was cut short. The second invocations pass ``--repeats 0``:
with 10 s trials, the KD verdict's repeats would take most of their budget (60 s: long enough for the
resumed trial to finish on a busy machine; --n-trials 1 ends them sooner). One
scenario sends Ctrl-C while the verdict's repeats train.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _sweep_helpers import (
    Background,
    CliRun,
    check_sweep_invariants,
    copy_store,
    load_study,
    mlflow_client,
    run_cli,
    started_trials,
    sweep_runs,
    sweep_template,  # noqa: F401  (a fixture)
    wait_until,
    write_sweep_file,
)

from sweeps.search.leases import checkpoint_path

SLOW_TRIALS = {"train": {"epochs": 40, "batch_size": 8, "patience": 0}}


def sweep_args(store: Path, sweep: Path, study: str, *extra: str, jobs: int = 1) -> list[str]:
    return ["run", "--task", "digits", "--config", str(sweep), "--store", str(store), "--study", study,
            "--jobs", str(jobs), *extra]


def trial_in_training(store: Path, study: str, min_epoch: int):
    """A ``wait_until`` condition: the number of a RUNNING trial past ``min_epoch`` with its checkpoint."""

    def check():
        if not (store / "optuna.journal").exists():
            return None
        try:
            trials = load_study(store, study).get_trials(deepcopy=False)
        except KeyError:  # the study is not created yet
            return None
        for trial in trials:
            if (trial.state.name == "RUNNING" and trial.user_attrs.get("epoch", 0) >= min_epoch
                    and checkpoint_path(store, study, trial.number).exists()):
                return trial.number + 1  # truthy for trial 0
        return None

    return check


def start_and_wait(root: Path, store: Path, study: str, min_epoch: int, jobs: int = 1) -> tuple[Background, int]:
    sweep = write_sweep_file(root / "slow.yaml", SLOW_TRIALS)
    process = Background(*sweep_args(store, sweep, study, "--budget", "90s", jobs=jobs), cwd=root)
    found = wait_until(trial_in_training(store, study, min_epoch), timeout=90, process=process,
                       what=f"a trial is past epoch {min_epoch}")
    return process, found - 1


def statuses(store: Path, study: str) -> dict[str, str]:
    return {r.info.run_name: r.info.status for r in sweep_runs(store, study).runs}


def running_trials(store: Path, study: str) -> list[int]:
    return [t.number for t in load_study(store, study).trials if t.state.name == "RUNNING"]


# --------------------------------------------------------------------------------------------
# SIGKILL mid-trial, then the same study again
# --------------------------------------------------------------------------------------------

@dataclass
class Killed:
    store: Path
    number: int  # the trial that was training when the process died
    rerun: CliRun


@pytest.fixture(scope="module")
def killed(tmp_path_factory, sweep_template) -> Killed:
    root = tmp_path_factory.mktemp("killed")
    store = copy_store(sweep_template, root / "store")
    process, number = start_and_wait(root, store, "crash", min_epoch=2)
    try:
        process.signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.stop()
    rerun = run_cli(*sweep_args(store, root / "slow.yaml", "crash", "--budget", "60s", "--n-trials", "1",
                                "--repeats", "0"), cwd=root)
    return Killed(store, number, rerun)


def rerun_exit_code(store: Path, study: str, resumed: int) -> int:
    """0 when the resumed trial completed; 1 when the pruner stopped it (nothing completed)."""
    trials = [t for t in load_study(store, study).trials if t.user_attrs.get("kdsweep.resume_of") == resumed]
    return 0 if trials and trials[0].state.name == "COMPLETE" else 1


def test_rerun_after_a_kill_exits_0_or_1_when_the_pruner_stopped_its_only_trial(killed):
    assert killed.rerun.returncode == rerun_exit_code(killed.store, "crash", killed.number), killed.rerun.explain()
    if killed.rerun.returncode == 1:
        assert "error: no trial completed in this run: 0 cut by the budget's end, 1 pruned" in killed.rerun.stderr


def test_rerun_after_a_kill_leaves_nothing_running(killed):
    assert running_trials(killed.store, "crash") == []
    assert {name: s for name, s in statuses(killed.store, "crash").items() if s == "RUNNING"} == {}
    check_sweep_invariants(killed.store, "crash")


def test_killed_trial_is_failed_as_worker_lost_and_its_run_killed(killed):
    trial = load_study(killed.store, "crash").trials[killed.number]
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["stop_reason"] == "worker_lost"
    run = sweep_runs(killed.store, "crash").children[killed.number]
    assert run.info.status == "KILLED"
    assert run.data.tags["state"] == "FAIL"


def test_killed_trial_resumes_from_its_checkpoint_in_a_later_trial(killed):
    study = load_study(killed.store, "crash")
    resumed = [t for t in study.trials if t.user_attrs.get("kdsweep.resume_of") == killed.number]
    assert len(resumed) == 1, f"trials resuming {killed.number}: {[t.number for t in resumed]}"
    [trial] = resumed
    assert trial.number > killed.number
    assert trial.state.name in ("COMPLETE", "PRUNED")
    assert trial.user_attrs["resumed_from_epoch"] >= 2
    assert trial.params == study.trials[killed.number].params
    run = sweep_runs(killed.store, "crash").children[trial.number]
    assert run.data.tags["kdsweep.resumed_from_trial"] == str(killed.number)


def test_finished_trials_leave_no_epoch_checkpoints_behind(killed):
    assert list((killed.store / "checkpoints" / "crash").glob("*.pt")) == []


# --------------------------------------------------------------------------------------------
# One Ctrl-C: finish gracefully, exit 130; the next invocation resumes the trial
# --------------------------------------------------------------------------------------------

@dataclass
class Interrupted:
    store: Path
    number: int
    returncode: int
    exit_s: float  # from SIGINT to exit
    output: str
    trial_state: str
    stop_reason: str | None
    run_status: str
    run_state_tag: str | None
    parent_status: str
    running_trials: list[int]
    running_runs: dict[str, str]
    verdict: tuple[str | None, str | None, bool]  # the parent's kd_verdict, its reason, whether kd_gain is logged
    started_before: set[int] = field(default_factory=set)
    rerun: CliRun | None = None


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, sweep_template) -> Interrupted:
    root = tmp_path_factory.mktemp("ctrl-c")
    store = copy_store(sweep_template, root / "store")
    process, number = start_and_wait(root, store, "ctrlc", min_epoch=1)
    try:
        process.signal(signal.SIGINT)
        sent = time.time()
        returncode = process.wait(timeout=60)
        exit_s = time.time() - sent
    finally:
        process.stop()
    study = load_study(store, "ctrlc")
    trial = study.trials[number]
    runs = sweep_runs(store, "ctrlc")
    child = runs.children[number]
    facts = Interrupted(
        store, number, returncode, exit_s, process.output(), trial.state.name, trial.user_attrs.get("stop_reason"),
        child.info.status, child.data.tags.get("state"), runs.parent.info.status,
        running_trials(store, "ctrlc"), {k: s for k, s in statuses(store, "ctrlc").items() if s == "RUNNING"},
        (runs.parent.data.tags.get("kd_verdict"), runs.parent.data.tags.get("kd_verdict_reason"),
         "kd_gain" in runs.parent.data.metrics),
        {t.number for t in started_trials(study)})
    facts.rerun = run_cli(*sweep_args(store, root / "slow.yaml", "ctrlc", "--budget", "60s", "--n-trials", "1",
                                      "--repeats", "0"), cwd=root)
    return facts


def test_ctrl_c_exits_130_after_finishing_gracefully(interrupted):
    assert interrupted.returncode == 130, interrupted.output
    assert interrupted.exit_s < 30


def test_ctrl_c_fails_the_current_trial_as_interrupted_and_kills_its_run(interrupted):
    assert interrupted.trial_state == "FAIL"
    assert interrupted.stop_reason == "interrupted"
    assert interrupted.run_state_tag == "INTERRUPTED"
    assert interrupted.run_status == "KILLED"


def test_ctrl_c_closes_the_parent_run_and_leaves_nothing_running(interrupted):
    assert interrupted.parent_status in ("KILLED", "FINISHED")
    assert interrupted.running_trials == []
    assert interrupted.running_runs == {}


def test_ctrl_c_during_the_trials_gives_an_incomplete_verdict_without_gain(interrupted):
    word, reason, has_gain = interrupted.verdict
    assert word == "incomplete"
    assert "interrupted (Ctrl-C)" in reason
    assert not has_gain


def test_after_ctrl_c_the_next_invocation_resumes_the_interrupted_trial(interrupted):
    expected = rerun_exit_code(interrupted.store, "ctrlc", interrupted.number)
    assert interrupted.rerun.returncode == expected, interrupted.rerun.explain()
    study, _ = check_sweep_invariants(interrupted.store, "ctrlc")
    resumed = [t for t in study.trials if t.user_attrs.get("kdsweep.resume_of") == interrupted.number]
    assert len(resumed) == 1
    assert resumed[0].state.name in ("COMPLETE", "PRUNED")
    assert resumed[0].user_attrs["resumed_from_epoch"] >= 1


def test_n_trials_counts_the_resumed_trial_of_this_invocation(interrupted):
    # --n-trials 1 on the second invocation: the resumed trial is that one trial.
    new = [t.number for t in started_trials(load_study(interrupted.store, "ctrlc"))
           if t.number not in interrupted.started_before]
    assert len(new) == 1, f"--n-trials 1 started trials {new}"


def test_sigterm_finishes_gracefully_like_the_first_ctrl_c(tmp_path, sweep_template):
    # What `docker stop`, Kubernetes and Slurm send, here to the parent of two worker processes.
    store = copy_store(sweep_template, tmp_path / "store")
    process, number = start_and_wait(tmp_path, store, "term", min_epoch=1, jobs=2)
    try:
        process.signal(signal.SIGTERM)
        returncode = process.wait(timeout=60)
    finally:
        process.stop()
    assert returncode == 130, process.output()
    trial = load_study(store, "term").trials[number]
    assert (trial.state.name, trial.user_attrs.get("stop_reason")) == ("FAIL", "interrupted")
    assert running_trials(store, "term") == []
    assert {name: s for name, s in statuses(store, "term").items() if s == "RUNNING"} == {}
    reason = sweep_runs(store, "term").parent.data.tags["kd_verdict_reason"]
    assert reason == "interrupted (SIGTERM) before the paired repeats"


# --------------------------------------------------------------------------------------------
# Two Ctrl-C: abort now, still nothing RUNNING
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("jobs", [1, 2])
def test_second_ctrl_c_aborts_quickly_and_leaves_nothing_running(jobs, tmp_path, sweep_template):
    # With --jobs 2 the graceful finish after the first Ctrl-C takes seconds (worker processes
    # end their trials and exit), so the second one lands in it and must abort.
    store = copy_store(sweep_template, tmp_path / "store")
    process, number = start_and_wait(tmp_path, store, "abort", min_epoch=1, jobs=jobs)
    try:
        process.signal(signal.SIGINT)
        time.sleep(0.3 if jobs > 1 else 0.05)
        process.signal(signal.SIGINT)
        sent = time.time()
        returncode = process.wait(timeout=60)
        exit_s = time.time() - sent
    finally:
        process.stop()
    # With --jobs 1 the graceful finish can be over before the second Ctrl-C lands; the process
    # then dies of that SIGINT while exiting, which a shell also reports as 130.
    assert returncode in ((130, -signal.SIGINT) if jobs == 1 else (130,)), process.output()
    if jobs > 1:
        assert "aborted" in process.output()
    assert exit_s < 10, process.output()
    assert running_trials(store, "abort") == []
    assert {name: s for name, s in statuses(store, "abort").items() if s == "RUNNING"} == {}
    assert load_study(store, "abort").trials[number].state.name == "FAIL"


# --------------------------------------------------------------------------------------------
# Ctrl-C while the KD verdict's repeats train
# --------------------------------------------------------------------------------------------

def repeat_in_training(store: Path, study: str):
    """A ``wait_until`` condition: a repeat run is RUNNING and has logged an epoch."""

    def check():
        if not (store / "mlflow.db").exists():
            return None
        try:
            runs = sweep_runs(store, study)
        except AssertionError:  # no parent run yet
            return None
        client = mlflow_client(store)
        return [r.info.run_name for r in runs.repeats if r.info.status == "RUNNING"
                and client.get_metric_history(r.info.run_id, "val_acc")]

    return check


def test_ctrl_c_during_the_repeats_cuts_the_pair_and_the_verdict_is_incomplete(tmp_path, sweep_template):
    store = copy_store(sweep_template, tmp_path / "store")
    sweep = write_sweep_file(tmp_path / "slow.yaml", SLOW_TRIALS)
    process = Background(*sweep_args(store, sweep, "rep", "--budget", "120s", "--n-trials", "1", "--repeats", "2"),
                         cwd=tmp_path)
    try:
        [name] = wait_until(repeat_in_training(store, "rep"), timeout=90, process=process,
                            what="a repeat run is training")
        process.signal(signal.SIGINT)
        returncode = process.wait(timeout=60)
    finally:
        process.stop()
    assert returncode == 130, process.output()
    runs = sweep_runs(store, "rep")
    assert runs.parent.data.tags["kd_verdict"] == "incomplete"
    assert "interrupted (Ctrl-C) after 0 of 2 pairs" in runs.parent.data.tags["kd_verdict_reason"]
    assert "kd_gain" not in runs.parent.data.metrics
    cut = next(r for r in runs.repeats if r.info.run_name == name)
    assert (cut.data.tags["state"], cut.data.tags["stop_reason"], cut.info.status) == ("CUT", "interrupted", "KILLED")
    assert [r.info.run_name for r in runs.repeats if r.data.tags["state"] == "COMPLETE"] == []
    assert "KD verdict: incomplete (interrupted (Ctrl-C) after 0 of 2 pairs" in process.output()
