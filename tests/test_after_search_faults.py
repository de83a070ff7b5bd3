"""Nothing is lost after a search either (issue 20): a copied store writes only into itself, a moved
store loads everything it holds, and ``compress``, ``federate`` and ``--jobs 2`` workers killed
(SIGKILL or SIGTERM) at their step boundaries leave no run RUNNING for good and no round logged twice
or never. Kills use the test hook of sweeps/_pause.py, as tests/test_chaos.py does for ``kdsweep run``.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from _sweep_helpers import Background, check_sweep_invariants, load_study, mlflow_client, wait_until, write_sweep_file
from _sweep_helpers import copy_store as copy_template
from _sweep_helpers import sweep_template  # noqa: F401  (a fixture)
from _sweep_store import SweepStore, copy_store, kdsweep

from sweeps.pipelines.compress import COMPRESS_KIND, compress_trial
from sweeps.pipelines.federate import FEDERATE_KIND, federate_trial


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _runs(store: SweepStore, kind: str) -> list:
    client = mlflow_client(store.root)
    experiment = client.get_experiment_by_name(store.study)
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`kdsweep.kind` = '{kind}'")


@pytest.fixture
def private(swept, tmp_path) -> SweepStore:
    """A whole private copy of the swept store (teachers and cache too, so nothing is retrained)."""
    root = tmp_path / "original"
    shutil.copytree(swept.root, root)
    return copy_store(SweepStore(root), tmp_path / "settled")


def test_a_copied_store_writes_only_into_itself(private, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(private.root, copy)  # as `cp -a`: its database still names the original's artifacts
    before = _files(private.root)

    done = compress_trial(private.study, prune=0.0, epochs=1, store=copy)
    from sweeps import export_student

    exported = export_student(private.study, tmp_path / "student.pt2", run=done.run_id, store=copy)

    assert _files(private.root) == before, "a command on the copy wrote into the original"
    [run] = [r for r in _runs(SweepStore(copy, private.study), COMPRESS_KIND) if r.info.run_id == done.run_id]
    assert run.info.artifact_uri.startswith((copy / "artifacts").as_uri() + "/")
    assert (copy / "artifacts" / private.study / done.run_id / "artifacts" / "checkpoint" / "student.pt").is_file()
    assert exported.test_acc == pytest.approx(done.steps[-1].test_acc)


def test_a_moved_store_loads_everything_it_holds(private, tmp_path):
    moved = tmp_path / "moved"
    private.root.rename(moved)  # as `mv`: the old folder is gone

    from sweeps import best, export_student

    exported = export_student(private.study, tmp_path / "best.pt2", store=moved)
    assert exported.test_acc == pytest.approx(best(private.study, store=moved)["test_acc"])
    federated = federate_trial(private.study, clients=2, rounds=1, store=moved)
    assert federated.rounds == 1
    client = mlflow_client(moved)
    experiment = client.get_experiment_by_name(private.study)
    assert experiment.artifact_location == (moved / "artifacts" / private.study).as_uri()
    assert all(r.info.artifact_uri.startswith(experiment.artifact_location)
               for r in client.search_runs([experiment.experiment_id], max_results=1000))


def _killed_at(point: str, args: tuple[str, ...], store: SweepStore, cwd: Path, sig: int = signal.SIGKILL) -> int:
    """Run ``kdsweep <args>`` until it reaches ``point`` (sweeps/_pause.py), send ``sig``, return its exit code."""
    paused = cwd / f"paused-{point}"
    process = Background(*args, *store.options, cwd=cwd, name=point,
                         env={"KDSWEEP_TEST_PAUSE_AT": point, "KDSWEEP_TEST_PAUSE_FILE": str(paused)})
    try:
        wait_until(paused.exists, timeout=180, process=process, what=f"kdsweep {args[0]} reaches {point}")
        process.signal(sig)
        return process.wait(timeout=60)
    finally:
        process.stop()


def test_killed_federated_runs_are_closed_and_a_resumed_one_logs_each_round_once(private, tmp_path):
    federate = ("federate", private.study, "--clients", "2", "--rounds", "3")
    # Killed before its first round: nothing to resume, so the next command on the store closes it.
    assert _killed_at("federate.started", (*federate, "--seed", "1"), private, tmp_path) == -signal.SIGKILL
    # Killed after round 1's checkpoint was saved, before round 1 was logged.
    assert _killed_at("federate.saved", federate, private, tmp_path) == -signal.SIGKILL

    done = kdsweep(*federate, *private.options)
    assert done.returncode == 0, done.stderr
    assert "resumed after round 1" in done.stdout
    client = mlflow_client(private.root)
    runs = {r.data.params["seed"]: r for r in _runs(private, FEDERATE_KIND)}
    assert runs["1"].info.status == "KILLED" and runs["1"].data.tags["state"] == "INTERRUPTED"
    resumed = runs["0"]
    assert resumed.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "val_acc")] == [1, 2, 3]


def test_a_crashed_federated_run_is_failed_with_its_error(private):
    def crash(result):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        federate_trial(private.study, clients=2, rounds=2, seed=5, on_round=crash, store=private.root)
    [run] = [r for r in _runs(private, FEDERATE_KIND) if r.data.params["seed"] == "5"]
    assert run.info.status == "FAILED" and run.data.tags["state"] == "FAILED"
    assert "RuntimeError: disk on fire" in run.data.tags["kdsweep.error"]


def test_compress_killed_or_stopped_by_sigterm_leaves_nothing_running(private, tmp_path):
    compress = ("compress", private.study, "--epochs", "1")
    assert _killed_at("compress.prune", compress, private, tmp_path) == -signal.SIGKILL
    [killed] = _runs(private, COMPRESS_KIND)
    assert killed.info.status == "RUNNING"  # until the next command on the store
    # SIGTERM, as `kill`, `docker stop` and Slurm send it, stops the step as Ctrl-C does.
    assert _killed_at("compress.epoch", compress, private, tmp_path, sig=signal.SIGTERM) == 130
    runs = {r.info.run_id: r for r in _runs(private, COMPRESS_KIND)}
    assert runs[killed.info.run_id].info.status == "KILLED"
    assert runs[killed.info.run_id].data.tags["stop_reason"] == "killed"
    assert {r.info.status for r in runs.values()} == {"KILLED"}
    assert {r.data.tags["state"] for r in runs.values()} == {"INTERRUPTED"}


def test_a_jobs_2_worker_killed_while_it_trains_loses_nothing(tmp_path, sweep_template):
    from sweeps.search.leases import LEASE_ATTR

    store = copy_template(sweep_template, tmp_path / "store")
    sweep = write_sweep_file(tmp_path / "sweep.yaml", {"train": {"epochs": 6, "batch_size": 32, "patience": 0}})
    paused, release = tmp_path / "paused", tmp_path / "release"
    process = Background("run", "--task", "digits", "--config", str(sweep), "--store", str(store), "--study", "kill1",
                         "--jobs", "2", "--n-trials", "4", "--budget", "240s", "--repeats", "0", cwd=tmp_path,
                         env={"KDSWEEP_TEST_PAUSE_AT": "trial.epoch", "KDSWEEP_TEST_PAUSE_FILE": str(paused),
                              "KDSWEEP_TEST_RELEASE_FILE": str(release)})
    try:
        pids = wait_until(lambda: len(set(paused.read_text().split())) >= 2 and paused.read_text().split(),
                          timeout=180, process=process, what="both workers hold inside an epoch")
        victim = int(pids[0])
        os.kill(victim, signal.SIGKILL)
        release.touch()
        code = process.wait(timeout=240)
    finally:
        process.stop()
    assert code == 0, process.output()
    study, _ = check_sweep_invariants(store, "kill1")
    lost = [t for t in study.trials if t.user_attrs.get(LEASE_ATTR, {}).get("pid") == victim]
    assert lost and all(t.state.name == "FAIL" and t.user_attrs.get("stop_reason") == "worker_lost" for t in lost)
    assert sum(t.state.name == "COMPLETE" for t in load_study(store, "kill1").trials) >= 3
