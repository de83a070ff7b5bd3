"""kdcore.threads: one torch thread per job unless asked, jobs x threads never above the usable
cores, and the number recorded with every run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from _sweep_helpers import sweep_template  # noqa: F401  (a fixture)
from mlflow import MlflowClient
from typer.testing import CliRunner

from cli.main import app
from kdcore import ConfigError
from kdcore.threads import DEFAULT_THREADS, plan_threads, usable_cores


def test_one_thread_per_job_by_default():
    assert plan_threads(1, cores=8) == (1, DEFAULT_THREADS, None)
    assert DEFAULT_THREADS == 1


def test_more_jobs_than_cores_run_as_many_jobs_as_cores_with_a_note():
    jobs, threads, note = plan_threads(6, cores=2)

    assert (jobs, threads) == (2, 1)
    assert "--jobs 6" in note and "2 worker(s)" in note


def test_threads_within_the_cores_are_kept():
    assert plan_threads(2, 4, cores=8) == (2, 4, None)


@pytest.mark.parametrize(("jobs", "threads"), [(1, 9), (2, 5), (4, 3), (1, 0), (1, -1)])
def test_jobs_times_threads_above_the_cores_is_refused_with_the_allowed_range(jobs, threads):
    with pytest.raises(ConfigError, match=f"--threads {threads} is not allowed.*use 1 to"):
        plan_threads(jobs, threads, cores=8)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_usable_cores_follow_the_cpu_affinity():
    script = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " \
             "from kdcore.threads import usable_cores; print(usable_cores())"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)

    assert done.stdout.strip() == "1", done.stderr
    assert usable_cores() == len(os.sched_getaffinity(0))


def test_too_many_threads_is_one_line_exit_2_and_nothing_written(tmp_path):
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["train", "--task", "digits", "--threads", str(usable_cores() + 1),
                                      "--store", str(store)])

    assert result.exit_code == 2
    assert f"--threads {usable_cores() + 1} is not allowed" in result.output
    assert not store.exists()


@pytest.mark.skipif(usable_cores() < 2, reason="needs 2 usable cores")
def test_a_run_records_the_threads_it_trained_with(tmp_path, teacher_store):
    store = tmp_path / "store"
    shutil.copytree(teacher_store / "teachers", store / "teachers")
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["train", "--task", "digits", "--epochs", "1", "--device", "cpu",
                                          "--threads", "2", "--store", str(store)])
    finally:
        torch.set_num_threads(before)

    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    run, = client.search_runs([client.get_experiment_by_name("kdsweep-train").experiment_id])
    assert run.data.tags["kdsweep.threads"] == "2"


def test_a_run_with_more_jobs_than_cores_runs_as_many_workers_as_cores_and_says_so(tmp_path, sweep_template):
    from _sweep_helpers import copy_store, mlflow_client

    store = copy_store(sweep_template, tmp_path / "store")
    jobs = usable_cores() + 1
    result = CliRunner().invoke(app, ["run", "--task", "digits", "--jobs", str(jobs), "--n-trials", "1", "--repeats",
                                      "0", "--budget", "120s", "--study", "s", "--store", str(store)])

    assert result.exit_code == 0, result.output
    assert f"--jobs {jobs}: kdsweep may use {usable_cores()} core(s) here, so it runs {usable_cores()} worker(s)" \
        in " ".join(result.output.split())
    client = mlflow_client(store)
    parent, = [r for r in client.search_runs([client.get_experiment_by_name("s").experiment_id])
               if r.data.tags.get("kdsweep.kind") == "study"]
    assert (parent.data.tags["jobs"], parent.data.tags["threads"]) == (str(usable_cores()), "1")
