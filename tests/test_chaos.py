"""Chaos: SIGKILL real ``kdsweep run`` processes at chosen moments, then check what the next run leaves.

The crash windows are milliseconds wide, so the processes are stopped in them with the test hook
``KDSWEEP_TEST_PAUSE_AT=<point>`` (sweeps/_pause.py): the process writes its pid to a file and
sleeps there until the test kills it. One study lives through six invocations:

0. killed mid-epoch (trial T0 has an epoch checkpoint);
1. killed just after ``study.ask()`` popped T0's re-run R0, before R0's lease was written;
2. killed inside the reaper, after it enqueued R0's re-run R1 and before it failed R0;
3. killed after R1 (resuming T0's checkpoint) closed its MLflow run FINISHED, before ``study.tell``;
4. killed while holding the journal's lock; then a torn record is appended to the journal;
5. run to the end: it must break the stale lock at once, drop the torn record (keeping a backup),
   record R1's real result, and leave nothing RUNNING.

Then the invariants: no COMPLETE trial lost, 0 RUNNING trials or runs, every lost trial re-run
exactly once, T0's checkpoint resumed. Other tests: torn and damaged journals (in-process and
through the CLI), a store whose mlflow.db vanished, four processes starting one SQLite study,
and the worker processes of a killed ``--jobs 2`` parent.
"""

from __future__ import annotations

import json
import logging
import os
import random
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
    run_cli,
    sweep_runs,
    sweep_template,  # noqa: F401  (a fixture)
    wait_until,
    write_sweep_file,
)

from sweeps.search.leases import LEASE_ATTR, RESUME_ATTR, UNLEASED_STALE_S, checkpoint_path
from sweeps.tracking.journal import BACKUP_INFIX, JournalCorruptError, JournalLock
from sweeps.tracking.storage import open_storage

STUDY = "chaos"
# ~0.15 s epochs: long enough to be caught mid-trial, short enough for six invocations.
CHAOS_TRIALS = {"train": {"epochs": 12, "batch_size": 16, "patience": 0}}
TORN = b'{"op_code":8,"worker_id":"cut-by-a-crash","trial_id":'


def sweep_args(store: Path, sweep: Path, *extra: str) -> list[str]:
    return ["run", "--task", "digits", "--config", str(sweep), "--store", str(store), "--study", STUDY, *extra]


def trials_of(store: Path) -> list:
    try:
        return load_study(store, STUDY).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []


def kill(process: Background) -> None:
    process.signal(signal.SIGKILL)
    process.wait(timeout=30)


def paused(root: Path, store: Path, sweep: Path, point: str, name: str) -> Background:
    """A run stopped for good at ``point`` (see sweeps/_pause.py)."""
    marker = root / f"paused-{name}"
    process = Background(*sweep_args(store, sweep, "--budget", "120s"), cwd=root, name=name,
                         env={"KDSWEEP_TEST_PAUSE_AT": point, "KDSWEEP_TEST_PAUSE_FILE": str(marker)})
    wait_until(marker.exists, timeout=90, process=process, what=f"run {name} pauses at {point}")
    return process


def complete(store: Path) -> dict[int, float]:
    return {t.number: t.value for t in trials_of(store) if t.state.name == "COMPLETE"}


@dataclass
class Chaos:
    store: Path
    t0: int  # killed mid-epoch
    t0_epoch: int  # its last checkpointed epoch (at least)
    r0: int  # T0's re-run, killed before its lease
    r1: int  # R0's re-run, killed between its run's end and study.tell
    final: CliRun
    journal_before_final: bytes
    complete_seen: dict[int, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, sweep_template) -> Chaos:
    root = tmp_path_factory.mktemp("chaos")
    store = copy_store(sweep_template, root / "store")
    sweep = write_sweep_file(root / "chaos.yaml", CHAOS_TRIALS)
    seen: dict[int, float] = {}
    journal = store / "optuna.journal"

    # 0. Mid-epoch, after a first trial completed: a RUNNING trial past epoch 2 with its checkpoint.
    def in_training():
        trials = trials_of(store)
        for t in trials:
            if (t.state.name == "RUNNING" and t.user_attrs.get("epoch", 0) >= 2 and any(
                    o.state.name == "COMPLETE" for o in trials) and checkpoint_path(store, STUDY, t.number).exists()):
                return t.number, t.user_attrs["epoch"]
        return None

    process = Background(*sweep_args(store, sweep, "--budget", "120s"), cwd=root, name="0")
    try:
        t0, t0_epoch = wait_until(in_training, timeout=90, process=process,
                                  what="a trial completed and another is past epoch 2")
        kill(process)
    finally:
        process.stop()
    seen |= complete(store)

    # 1. After study.ask() popped T0's re-run, before its lease.
    process = paused(root, store, sweep, "asked", "1")
    kill(process)
    [r0] = [t for t in trials_of(store) if t.state.name == "RUNNING"]
    assert r0.user_attrs.get(RESUME_ATTR) == t0 and LEASE_ATTR not in r0.user_attrs
    # An unleased trial counts as lost once it is UNLEASED_STALE_S old: wait for that moment.
    wait_until(lambda: time.time() - r0.datetime_start.timestamp() > UNLEASED_STALE_S + 0.5, timeout=30,
               what="the unleased trial is old enough to be reaped")

    # 2. Inside the reaper: R0's re-run enqueued, R0 not failed yet.
    process = paused(root, store, sweep, "reap.enqueued", "2")
    kill(process)
    states = {t.number: t.state.name for t in trials_of(store)}
    assert states[r0.number] == "RUNNING", states
    [r1] = [t.number for t in trials_of(store) if t.user_attrs.get(RESUME_ATTR) == r0.number]
    seen |= complete(store)

    # 3. R1's run closed FINISHED, study.tell not done.
    process = paused(root, store, sweep, "trial.finished", "3")
    kill(process)
    assert trials_of(store)[r1].state.name == "RUNNING"
    assert sweep_runs(store, STUDY).children[r1].info.status == "FINISHED"
    seen |= complete(store)

    # 4. Holding the journal's lock; then a write cut by a crash leaves a torn record.
    process = paused(root, store, sweep, "journal.locked", "4")
    kill(process)
    assert Path(str(journal) + ".lock").is_symlink()
    with open(journal, "ab") as f:
        f.write(TORN)
    before = journal.read_bytes()

    # 5. To the end.
    final = run_cli(*sweep_args(store, sweep, "--budget", "90s", "--n-trials", "2", "--repeats", "0"), cwd=root)
    return Chaos(store, t0, t0_epoch, r0.number, r1, final, before, seen)


def test_the_run_after_five_kills_exits_0(chaos):
    assert chaos.final.returncode == 0, chaos.final.explain()


def test_no_trial_and_no_run_is_left_running(chaos):
    assert [t.number for t in trials_of(chaos.store) if t.state.name == "RUNNING"] == []
    runs = sweep_runs(chaos.store, STUDY).runs
    assert {r.info.run_name: r.info.status for r in runs if r.info.status == "RUNNING"} == {}
    check_sweep_invariants(chaos.store, STUDY)


def test_no_complete_trial_is_lost(chaos):
    assert chaos.complete_seen
    now = complete(chaos.store)
    assert {n: now.get(n) for n in chaos.complete_seen} == chaos.complete_seen


def test_every_lost_trial_is_re_run_exactly_once(chaos):
    trials = trials_of(chaos.store)
    lost = [t.number for t in trials if t.user_attrs.get("stop_reason") == "worker_lost"]
    assert chaos.t0 in lost and chaos.r0 in lost
    for number in lost:
        reruns = [t.number for t in trials if t.user_attrs.get(RESUME_ATTR) == number]
        assert len(reruns) == 1, f"trial {number} re-run by {reruns}"


def test_a_trial_lost_before_its_lease_is_failed_and_re_run(chaos):
    r0 = trials_of(chaos.store)[chaos.r0]
    assert (r0.state.name, r0.user_attrs["stop_reason"]) == ("FAIL", "worker_lost")
    assert chaos.r0 not in sweep_runs(chaos.store, STUDY).children  # killed before its run was created


def test_a_re_run_lost_before_loading_the_checkpoint_leaves_it_to_the_next(chaos):
    r1 = trials_of(chaos.store)[chaos.r1]
    assert r1.user_attrs["resumed_from_epoch"] >= chaos.t0_epoch
    assert r1.params == trials_of(chaos.store)[chaos.t0].params
    assert list((chaos.store / "checkpoints" / STUDY).glob("*.pt")) == []


def test_a_trial_whose_run_finished_before_its_tell_keeps_its_result(chaos):
    r1 = trials_of(chaos.store)[chaos.r1]
    run = sweep_runs(chaos.store, STUDY).children[chaos.r1]
    assert r1.state.name in ("COMPLETE", "PRUNED")
    assert (run.info.status, run.data.tags["state"]) == ("FINISHED", r1.state.name)
    if r1.state.name == "COMPLETE":
        assert r1.value == pytest.approx(run.data.metrics["best_val_acc"])
    assert not [t.number for t in trials_of(chaos.store) if t.user_attrs.get(RESUME_ATTR) == chaos.r1]


def test_a_lock_left_by_a_killed_process_is_broken_at_once(chaos):
    assert "removed the lock" in chaos.final.stderr
    assert "taking longer" not in chaos.final.stderr and "Forcibly" not in chaos.final.stderr
    assert not Path(str(chaos.store / "optuna.journal") + ".lock").exists()


def test_a_torn_last_record_is_dropped_with_a_backup_and_a_warning(chaos):
    [backup] = chaos.store.glob("optuna.journal" + BACKUP_INFIX + "*")
    assert backup.read_bytes() == chaos.journal_before_final
    journal = (chaos.store / "optuna.journal").read_bytes()
    assert journal.startswith(chaos.journal_before_final[:-len(TORN)]) and TORN not in journal
    assert "dropped a torn last record" in chaos.final.stderr and backup.name in chaos.final.stderr


@pytest.mark.parametrize("loss", ["missing", "empty"])
def test_a_store_whose_mlflow_db_vanished_is_refused_and_left_alone(loss, chaos, tmp_path):
    store = copy_store(chaos.store, tmp_path / "store")
    (store / "mlflow.db").unlink()
    if loss == "empty":
        (store / "mlflow.db").write_bytes(b"")
    journal = (store / "optuna.journal").read_bytes()
    run = run_cli(*sweep_args(store, write_sweep_file(tmp_path / "chaos.yaml", CHAOS_TRIALS)), cwd=tmp_path)
    assert run.returncode == 1, run.explain()
    [line] = run.stderr.strip().splitlines()
    assert str(store / "mlflow.db") in line and "Traceback" not in run.stderr
    if loss == "missing":  # an empty one is refused whatever the study holds
        assert "does not exist, but" in line and "point at runs in it" in line
    assert (store / "mlflow.db").exists() == (loss == "empty")
    assert (store / "optuna.journal").read_bytes() == journal


# --------------------------------------------------------------------------------------------
# Torn and damaged journals
# --------------------------------------------------------------------------------------------

def small_journal(path: Path) -> bytes:
    """A journal with one study and two finished trials, written by Optuna; returns its bytes."""
    import optuna

    study = optuna.create_study(study_name="s", storage=open_storage(str(path)), direction="maximize")
    for value in (0.5, 0.7):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, value)
    return path.read_bytes()


def test_a_torn_last_record_is_read_past_and_dropped_before_the_next_write(tmp_path, caplog):
    import optuna

    journal = tmp_path / "optuna.journal"
    whole = small_journal(journal)
    journal.write_bytes(whole + TORN)
    study = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    assert [t.value for t in study.trials] == [0.5, 0.7]
    assert journal.read_bytes() == whole + TORN  # reading changes nothing
    with caplog.at_level(logging.WARNING, logger="kdsweep"):
        study.set_user_attr("after", 1)
    [backup] = tmp_path.glob("optuna.journal" + BACKUP_INFIX + "*")
    assert backup.read_bytes() == whole + TORN
    assert journal.read_bytes().startswith(whole) and journal.read_bytes().endswith(b"\n")
    assert json.loads(journal.read_bytes()[len(whole):])["user_attr"] == {"after": 1}
    assert "dropped a torn last record" in caplog.text
    assert optuna.load_study(study_name="s", storage=open_storage(str(journal))).user_attrs == {"after": 1}


def _garbage_middle(whole: bytes) -> bytes:
    lines = whole.split(b"\n")
    return b"\n".join([*lines[:2], b"\xff\xfe not a record", *lines[2:]])


DAMAGED = {
    "garbage line in the middle": (_garbage_middle, "line 3 is not text"),
    "random bytes": (lambda whole: random.Random(0).randbytes(3000).replace(b"\n", b" ") + b"\n"
                     + random.Random(1).randbytes(500).replace(b"\n", b" "), "last line"),
    "a JSON line that is no record": (lambda whole: whole + b'{"hello": 1}\n',
                                      "is JSON but not an Optuna journal record"),
    "a torn record appended onto": (lambda whole: whole[:-40] + whole[whole.rfind(b"\n", 0, len(whole) - 1) + 1:],
                                    "torn record with another appended to it"),
    "a tail that is no record": (lambda whole: whole + b"garbage", "neither a journal record nor the start of one"),
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_journal_is_refused_with_one_line_and_left_unchanged(damage, tmp_path):
    journal = tmp_path / "optuna.journal"
    damage_it, expected = DAMAGED[damage]
    journal.write_bytes(damage_it(small_journal(journal)))
    before = journal.read_bytes()
    with pytest.raises(JournalCorruptError) as error:
        open_storage(str(journal))
    message = str(error.value)
    assert "\n" not in message and str(journal) in message and expected in message
    assert "move it aside" in message
    assert journal.read_bytes() == before
    assert not list(tmp_path.glob("*" + BACKUP_INFIX + "*"))


@pytest.mark.parametrize("command", ["trials", "run"])
def test_the_cli_reports_a_damaged_journal_in_one_line_and_exit_1(command, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    journal = store / "optuna.journal"
    journal.write_bytes(_garbage_middle(small_journal(journal)))
    before = journal.read_bytes()
    args = ["trials", "s"] if command == "trials" else ["run", "--task", "digits", "--study", "s", "--budget", "30s"]
    run = run_cli(*args, "--store", str(store), cwd=tmp_path)
    assert run.returncode == 1, run.explain()
    [line] = run.stderr.strip().splitlines()
    assert str(journal) in line and "line 3" in line and "Traceback" not in run.stderr
    assert journal.read_bytes() == before


def test_a_journal_lock_left_by_a_killed_process_does_not_stall_the_next_writer(tmp_path, caplog):
    import optuna

    journal = tmp_path / "optuna.journal"
    small_journal(journal)
    lock = JournalLock(journal)
    os.symlink(lock.target, lock.symlink)  # as a kdsweep process killed inside an append leaves it
    study = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kdsweep"):
        study.set_user_attr("after", 1)
    assert time.monotonic() - started < 5  # Optuna's own lock waits 30 s
    assert "removed the lock" in caplog.text and not os.path.lexists(lock.symlink)


# --------------------------------------------------------------------------------------------
# Concurrent starts, killed parents
# --------------------------------------------------------------------------------------------

def test_four_processes_start_one_sqlite_study_at_once(tmp_path, sweep_template):
    store = copy_store(sweep_template, tmp_path / "store")
    sweep = write_sweep_file(tmp_path / "quick.yaml", {"train": {"epochs": 3, "batch_size": 64}})
    args = ["run", "--task", "digits", "--config", str(sweep), "--store", str(store), "--study", "together",
            "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--n-trials", "1", "--repeats", "0", "--budget", "120s"]
    processes = [Background(*args, cwd=tmp_path, name=str(i)) for i in range(4)]
    try:
        codes = [p.wait(timeout=180) for p in processes]
    finally:
        for p in processes:
            p.stop()
    assert codes == [0, 0, 0, 0], "\n".join(p.output() for p in processes)
    import optuna

    study = optuna.load_study(study_name="together", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4
    runs = sweep_runs(store, "together")  # exactly one active parent run
    assert sorted(runs.children) == [0, 1, 2, 3]
    assert runs.parent.info.status == "FINISHED"


def test_the_workers_of_a_killed_jobs_2_parent_stop_within_seconds(tmp_path, sweep_template):
    from sweeps.tracking.owners import pid_alive as _pid_alive
    from sweeps.search.worker import ORPHAN_EXIT_S

    store = copy_store(sweep_template, tmp_path / "store")
    sweep = write_sweep_file(tmp_path / "slow.yaml", {"train": {"epochs": 40, "batch_size": 8, "patience": 0}})
    process = Background("run", "--task", "digits", "--config", str(sweep), "--store", str(store), "--study", "orphans",
                         "--jobs", "2", "--budget", "120s", cwd=tmp_path)

    def worker_pids():
        try:
            trials = load_study(store, "orphans").get_trials(deepcopy=False)
        except KeyError:
            return None
        pids = {t.user_attrs[LEASE_ATTR]["pid"] for t in trials
                if t.state.name == "RUNNING" and LEASE_ATTR in t.user_attrs and t.user_attrs.get("epoch", 0) >= 1}
        return pids if len(pids) == 2 else None

    try:
        pids = wait_until(worker_pids, timeout=120, process=process, what="both workers train a trial")
        kill(process)
        killed = time.time()
        wait_until(lambda: not any(_pid_alive(pid) for pid in pids), timeout=ORPHAN_EXIT_S + 15,
                   what="the orphaned workers exit")
        waited = time.time() - killed
    finally:
        process.stop()
        for pid in pids if "pids" in locals() else ():
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert waited < ORPHAN_EXIT_S + 10
    held = [t for t in load_study(store, "orphans").trials if t.user_attrs.get(LEASE_ATTR, {}).get("pid") in pids]
    # Each trial either stopped as after Ctrl-C (FAIL, re-run enqueued), or names a dead holder.
    for trial in held:
        assert trial.state.name in ("FAIL", "RUNNING", "COMPLETE", "PRUNED")
        if trial.state.name == "FAIL":
            assert trial.user_attrs.get("stop_reason") in ("interrupted", "error")

