"""One study on three "hosts" (distinct KDSWEEP_HOST and store folders) through a real PostgreSQL
and a real `mlflow server` on it: `kdsweep run` on host a, `kdsweep worker` on hosts b and c. Host b
is SIGKILLed in the middle of a trial; a survivor reaps that trial once its heartbeat is stale and
resumes it from the epoch checkpoint b left on the tracking server. At the end every trial has one
MLflow run in the same state, nothing is RUNNING, and only one teacher exists: the workers
downloaded and verified it."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from _servers import MlflowServer, Postgres
from _sweep_helpers import (
    Background,
    check_sweep_invariants,
    copy_store,
    load_study,
    mlflow_client,
    sweep_template,  # noqa: F401  (a fixture)
    wait_until,
    write_sweep_file,
)

from sweeps import trials
from sweeps.query import _study_sql
from sweeps.query._runs import experiment_runs
from sweeps.query.trials import Sources, trial_frame
from sweeps.search.leases import LEASE_ATTR, RESUME_ATTR
from sweeps.tracking.store import Store
from sweeps.tracking.shared import file_sha256

pytest.importorskip("psycopg", reason='the PostgreSQL driver is an extra: pip install -e ".[postgres]"')

STUDY = "spread"
RUN_TRIALS = 20  # host a's own trials; b and c run theirs beside them
LEASE_TIMEOUT_S = "15"  # the default is 60 s; 15 keeps the test short
SWEEP = {"space": {"ratio": [0.25, 0.5], "temperature": {"low": 1, "high": 8}, "alpha": {"low": 0.3, "high": 0.9},
                   "lr": {"low": 3e-3, "high": 3e-2, "log": True}},
         "train": {"epochs": 25, "patience": 5}}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    postgres = Postgres().start()
    server = None
    try:
        storage = postgres.create_database("optuna")
        backend = postgres.create_database("mlflow")
        server = MlflowServer(backend, tmp_path_factory.mktemp("artifacts")).wait_ready()
        yield storage, server.url, backend
    finally:
        if server is not None:
            server.stop()
        postgres.stop()


def _host(name: str, **extra: str) -> dict[str, str]:
    return {"KDSWEEP_HOST": name, "KDSWEEP_LEASE_TIMEOUT_S": LEASE_TIMEOUT_S, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def spread(servers, sweep_template, tmp_path_factory):
    storage, tracking, _ = servers
    root = tmp_path_factory.mktemp("spread")
    hosts = {name: root / name for name in "abc"}
    copy_store(sweep_template, hosts["a"] / "store")  # host a has the teacher; b and c have nothing
    for name in "bc":
        (hosts[name] / "store").mkdir(parents=True)
    sweep = write_sweep_file(root / "spread.yaml", SWEEP)
    where = ["--storage", storage, "--tracking-uri", tracking]
    skew = _SkewExperiment(storage)  # runs beside the scenario, whose processes mostly wait
    skew.start()
    # The run ends on events, not on a short budget a busy machine may spend before the lost trial is
    # reaped: it runs its --n-trials, then waits at the window's close until that trial was resumed.
    released = root / "resumed"
    run = Background("run", "--task", "digits", "--config", str(sweep), "--study", STUDY, "--budget", "10m",
                     "--n-trials", str(RUN_TRIALS), "--repeats", "2", "--store", str(hosts["a"] / "store"), *where,
                     cwd=hosts["a"], env=_host("host-a", KDSWEEP_TEST_PAUSE_AT="window.close",
                                               KDSWEEP_TEST_RELEASE_FILE=str(released)))
    workers = {}
    try:
        wait_until(lambda: _has_plan(storage), timeout=120, what="the run set the study up", process=run)
        marker = hosts["b"] / "paused"
        join = ["worker", "--study", STUDY, *where]
        workers["b"] = Background(*join, "--store", str(hosts["b"] / "store"), cwd=hosts["b"],
                                  env=_host("host-b", KDSWEEP_TEST_PAUSE_AT="checkpoint.shared",
                                            KDSWEEP_TEST_PAUSE_FILE=str(marker)))
        workers["c"] = Background(*join, "--store", str(hosts["c"] / "store"), cwd=hosts["c"], env=_host("host-c"))
        wait_until(lambda: marker.exists() and marker.read_text().strip(), timeout=120,
                   what="host b uploaded its first epoch checkpoint", process=workers["b"])
        lost = [t.number for t in load_study(root, STUDY, storage).trials
                if (t.user_attrs.get(LEASE_ATTR) or {}).get("host") == "host-b" and t.state.name == "RUNNING"]
        os.kill(int(marker.read_text().split()[0]), signal.SIGKILL)  # host b is gone, mid-trial
        workers["b"].wait(timeout=30)
        wait_until(lambda: _resumed_and_finished(storage, lost), timeout=240, what="the lost trial was resumed",
                   process=run)
        released.touch()
        assert run.wait(timeout=240) == 0, run.output()
        assert workers["c"].wait(timeout=120) == 0, workers["c"].output()
        skew.join()
        yield storage, tracking, hosts, lost, workers["c"].output(), skew
    finally:
        for process in [run, *workers.values()]:
            process.stop()


def _resumed_and_finished(storage: str, lost: list[int]) -> bool:
    trials = load_study(Path("."), STUDY, storage).trials
    return any(t.user_attrs.get(RESUME_ATTR) in lost and t.state.name in ("COMPLETE", "PRUNED", "FAIL")
               for t in trials)


def _has_plan(storage: str) -> bool:
    from sweeps.tracking.storage import open_storage

    studies = open_storage(storage).get_all_studies()
    return any(s.study_name == STUDY and "kdsweep.plan" in s.user_attrs for s in studies)


def test_every_trial_has_one_run_in_the_same_state_and_nothing_is_running(spread):
    storage, tracking, hosts, _, _, _ = spread
    study, runs = check_sweep_invariants(hosts["a"], STUDY, storage=storage, tracking_uri=tracking)
    assert {(t.user_attrs.get(LEASE_ATTR) or {}).get("host") for t in study.trials} >= {"host-a", "host-b", "host-c"}
    counts = {state: sum(t.state.name == state for t in study.trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    assert {k: int(runs.parent.data.metrics[f"trials_{k.lower()}"]) for k in counts} == counts
    assert runs.parent.data.tags["state"] == "FINISHED"
    assert len(runs.repeats) == 4  # the KD verdict's two pairs ran after the workers' trials ended
    # A tracking server is its own UI: the hint is its page of the study, not `kdsweep ui`.
    hint = f"MLflow UI:  {tracking}/#/experiments/{runs.parent.info.experiment_id}/runs?workflowType=machine_learning"
    assert hint in (hosts["a"] / "stdout.txt").read_text()


def test_the_trial_lost_with_host_b_resumes_from_its_shared_checkpoint(spread):
    storage, tracking, _, lost, _, _ = spread
    assert len(lost) == 1
    study = load_study(Path("."), STUDY, storage)
    assert study.trials[lost[0]].user_attrs["stop_reason"] == "worker_lost"
    resumed = [t for t in study.trials if t.user_attrs.get(RESUME_ATTR) == lost[0]]
    assert len(resumed) == 1 and resumed[0].state.name in ("COMPLETE", "PRUNED")
    assert resumed[0].user_attrs["resumed_from_epoch"] >= 1  # not from scratch: from b's upload
    assert resumed[0].user_attrs[LEASE_ATTR]["host"] in ("host-a", "host-c")
    # Every shared checkpoint is gone once its trial (or the trial that re-ran it) finished.
    client = mlflow_client(Path("."), tracking)
    for trial in study.trials:
        assert not client.list_artifacts(trial.user_attrs["mlflow_run_id"], "resume"), trial.number


def test_trials_read_by_sql_match_the_optuna_and_mlflow_apis(servers, spread):
    """`kdsweep trials` reads Optuna's PostgreSQL tables by SQL, and the server's own database when
    that is the tracking URI: the same frame as through Optuna's API and the server's REST API."""
    storage, tracking, backend = servers
    store = spread[2]["a"] / "store"
    assert _study_sql.read_columns(storage, STUDY, user_attrs=(), numbers=()) is not None
    assert experiment_runs(Store(store, backend), STUDY).experiment_id is not None
    by_sql = trials(STUDY, storage=storage, tracking_uri=backend, store=store)
    sources = Sources.resolve(storage, tracking, store)
    by_apis = trial_frame(sources.study(STUDY), experiment_runs(sources.store, STUDY))
    pd.testing.assert_frame_equal(by_sql, by_apis)
    assert len(by_sql) == len(load_study(Path("."), STUDY, storage).trials) > 3


def test_the_workers_downloaded_the_one_teacher_and_verified_it(spread):
    _, tracking, hosts, _, output_c, _ = spread
    assert "teacher: downloaded and verified teacher and cache" in output_c
    parent = next(r for r in mlflow_client(Path("."), tracking).search_runs(
        [mlflow_client(Path("."), tracking).get_experiment_by_name(STUDY).experiment_id],
        filter_string="tags.`kdsweep.kind` = 'study'"))
    tags = parent.data.tags
    assert parent.data.metrics["teacher_train_time_s"] == 0.0  # host a's store had it: trained by no one here
    for name in "abc":
        for kind in ("teacher", "cache"):
            copy = hosts[name] / "store" / tags[f"kdsweep.{kind}_path"]
            assert file_sha256(copy) == tags[f"kdsweep.{kind}_sha256"], (name, kind)



class _SkewExperiment(threading.Thread):
    """Two trials held on other hosts, both with heartbeats 10 minutes old by this clock: one host
    keeps beating (its clock is behind), the other is silent (dead). It reaps twice a second for
    UNCHANGED_S + 10 s and records when the silent one went and what became of both."""

    def __init__(self, storage_url: str) -> None:
        super().__init__(name="skew-experiment")
        self.storage_url = storage_url
        self.reaped_at: float | None = None
        self.states: dict[str, str] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:  # reported by the test, not lost in the thread
            self.error = error

    def _run(self) -> None:
        import optuna

        from sweeps.search.leases import UNCHANGED_S, reap_stale_trials
        from sweeps.tracking.storage import open_storage, storage_lock

        study = optuna.create_study(study_name="skew", storage=open_storage(self.storage_url))
        behind, silent = study.ask(), study.ask()
        study._storage.set_trial_user_attr(silent._trial_id, LEASE_ATTR,
                                           {"host": "dead-host", "pid": 1, "heartbeat": time.time() - 600})
        started = time.monotonic()
        last_beat = -1.0
        while time.monotonic() - started < UNCHANGED_S + 10:
            if time.monotonic() - last_beat >= 1.0:  # the live host: a new heartbeat every second, 10 min behind
                study._storage.set_trial_user_attr(behind._trial_id, LEASE_ATTR,
                                                   {"host": "slow-clock", "pid": 1, "heartbeat": time.time() - 600})
                last_beat = time.monotonic()
            if reap_stale_trials(study, None, lock=storage_lock(self.storage_url)) and self.reaped_at is None:
                self.reaped_at = time.monotonic() - started
            time.sleep(0.5)
        states = {t.number: t.state.name for t in study.get_trials()}
        self.states = {"behind": states[behind.number], "silent": states[silent.number]}


def test_a_host_whose_clock_runs_behind_is_not_reaped_and_a_silent_one_is(spread):
    from sweeps.search.leases import UNCHANGED_S

    skew = spread[-1]
    assert skew.error is None, repr(skew.error)
    assert skew.states == {"behind": "RUNNING", "silent": "FAIL"}
    assert skew.reaped_at is not None and UNCHANGED_S <= skew.reaped_at <= UNCHANGED_S + 8  # never early


def test_a_worker_fetches_every_teacher_of_an_ensemble_and_verifies_it(servers, teacher_store, tmp_path):
    """An ensemble study (`teachers` > 1) publishes each teacher and its cache; a worker's empty
    store downloads them all and prepares the same ensemble without training anything."""
    import shutil

    from mlflow import MlflowClient

    from sweeps.tracking.logged_run import prepare
    from sweeps.tracking.shared import fetch_teacher, publish_teacher

    _, tracking, _ = servers
    shutil.copytree(teacher_store, tmp_path / "a")  # host a has the task's teacher already
    published = prepare("digits", Store(tmp_path / "a", tracking), device="cpu", teachers=2)
    client = MlflowClient(tracking)
    run_id = client.create_run(client.create_experiment("ensemble-fetch")).info.run_id
    publish_teacher(client, run_id, published)

    fetched = fetch_teacher(client, run_id, tmp_path / "b")
    assert fetched == ["teacher", "cache", "teacher.teacher-seed1", "cache.teacher-seed1"]
    joined = prepare("digits", Store(tmp_path / "b", tracking), device="cpu", teachers=2)
    assert [(t.trained_now, c.hit) for t, c in joined.all_teachers()] == [(False, True), (False, True)]
    assert [t.digest for t, _ in joined.all_teachers()] == [t.digest for t, _ in published.all_teachers()]
    assert fetch_teacher(client, run_id, tmp_path / "b") == []  # present and verified: nothing to download
