"""Helpers for the ``kdsweep run`` tests: run the real CLI, read its Optuna study and MLflow runs back.

Every sweep test runs ``python -m cli.main run ...`` in a subprocess on the ``digits`` task, in a
store copied from one session template (teacher trained, teacher-output cache built, MLflow
database created), so no test pays for the teacher or MLflow's schema migrations again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SWEEP_STATES = {"COMPLETE": {"COMPLETE"}, "PRUNED": {"PRUNED"}, "FAIL": {"FAIL", "INTERRUPTED"}}
EPOCH_METRICS = ("train_loss", "val_loss", "val_acc", "lr", "epoch_time_s")


# --------------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def sweep_template(tmp_path_factory, teacher_store) -> Path:
    """A store with the digits teacher, its cached logits and an empty MLflow database. Copy it.

    Built once per session even when several modules import this fixture (the folder is shared).
    """
    root = tmp_path_factory.getbasetemp() / "sweep-template"
    if (root / ".ready").exists():
        return root
    from sweeps.tracking.logged_run import prepare
    from sweeps.tracking.store import Store

    shutil.copytree(teacher_store / "teachers", root / "teachers", dirs_exist_ok=True)
    store = Store.resolve(root)
    prepare("digits", store, device="cpu")
    store.client().search_experiments()  # creates mlflow.db: its migrations take seconds
    (root / ".ready").touch()
    return root


def copy_store(template: Path, dest: Path) -> Path:
    """An isolated copy of a store folder at ``dest``."""
    shutil.copytree(template, dest, ignore=shutil.ignore_patterns(".ready"))
    return dest


def write_sweep_file(path: Path, content: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------
# Running the CLI
# --------------------------------------------------------------------------------------------

def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KDSWEEP_STORE")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT prints every thread's stack: what a hung process shows a test
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def kdsweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


@dataclass
class CliRun:
    returncode: int
    wall_s: float
    stdout: str
    stderr: str

    def explain(self) -> str:
        return f"exit {self.returncode} after {self.wall_s:.1f}s\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


def run_cli(*args: str, cwd: Path, timeout: float = 180, env: dict[str, str] | None = None) -> CliRun:
    """Run ``kdsweep`` to the end; the wall time is measured around the whole process.

    ``env`` adds variables; a PYTHONPATH in it comes before the repository's."""
    environ = cli_env()
    for name, value in (env or {}).items():
        environ[name] = os.pathsep.join([value, environ[name]]) if name == "PYTHONPATH" else value
    started = time.perf_counter()
    done = subprocess.run(kdsweep_command(*args), cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=timeout)
    return CliRun(done.returncode, time.perf_counter() - started, done.stdout, done.stderr)


class Background:
    """``kdsweep`` running in the background, its output in files (a full pipe would block it)."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None, name: str = "") -> None:
        self.out = (cwd / f"stdout{name}.txt").open("w")
        self.err = (cwd / f"stderr{name}.txt").open("w")
        self.cwd = cwd
        self.name = name
        # SIGINT as in a terminal's foreground job: pytest started in the background (a CI script,
        # `cmd &`) hands SIGINT down ignored, and Python then never raises KeyboardInterrupt.
        self.process = subprocess.Popen(kdsweep_command(*args), cwd=cwd, env={**cli_env(), **(env or {})},
                                        stdout=self.out, stderr=self.err, text=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code; a process still running after ``timeout`` is made to print its threads'
        stacks (SIGABRT, faulthandler) and the test fails with them."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            stderr = (self.cwd / f"stderr{self.name}.txt").read_text()[-12000:]
            raise AssertionError(f"still running {timeout:.0f} s on; its stderr, stacks last:\n{stderr}") from None
        finally:
            self.out.close()
            self.err.close()

    def output(self) -> str:
        return (f"--- stdout\n{(self.cwd / f'stdout{self.name}.txt').read_text()[-3000:]}\n"
                f"--- stderr\n{(self.cwd / f'stderr{self.name}.txt').read_text()[-3000:]}")

    def stop(self) -> None:
        """Make sure nothing outlives the test."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.out.close()
        self.err.close()


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, process: Background | None = None,
               every: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; fail on timeout or if ``process`` ends."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.process.poll() is not None:
            pytest.fail(f"kdsweep exited ({process.process.returncode}) before {what}\n{process.output()}")
        try:
            value = condition()
        except FileNotFoundError:
            value = None
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting until {what}"
                + (f"\n{process.output()}" if process else ""))


# --------------------------------------------------------------------------------------------
# Reading results back
# --------------------------------------------------------------------------------------------

def load_study(store: Path, name: str, storage: str | None = None):
    """The study in the store's journal, or in ``storage`` (a URL) when given."""
    import optuna

    from sweeps.tracking.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage or str(store / "optuna.journal")))


def mlflow_client(store: Path, tracking_uri: str | None = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri or f"sqlite:///{store / 'mlflow.db'}")


def all_runs(client, experiment_name: str) -> list:
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"no MLflow experiment named {experiment_name!r}"
    return client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=10_000)


@dataclass
class SweepRuns:
    parent: Any
    children: dict[int, Any]  # by trial number, from the run name trial-NNNN
    repeats: list  # the KD verdict's paired runs (kdsweep.kind=repeat), not children
    runs: list


def sweep_runs(store: Path, study: str, tracking_uri: str | None = None) -> SweepRuns:
    """The study's runs: exactly one parent (kdsweep.kind=study), its children, the repeat runs.

    Deleted runs are left out: a parent created twice in a race is deleted, keeping the oldest."""
    runs = [r for r in all_runs(mlflow_client(store, tracking_uri), study) if r.info.lifecycle_stage == "active"]
    parents = [r for r in runs if r.data.tags.get("kdsweep.kind") == "study"]
    assert len(parents) == 1, f"expected one parent run, found {len(parents)}"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    by_number = {}
    for run in children:
        assert run.info.run_name.startswith("trial-"), run.info.run_name
        number = int(run.info.run_name.removeprefix("trial-"))
        assert run.info.run_name == f"trial-{number:04d}"
        assert number not in by_number, f"two runs named {run.info.run_name}"
        by_number[number] = run
    repeats = [r for r in runs if r.data.tags.get("kdsweep.kind") == "repeat"]
    return SweepRuns(parent, by_number, repeats, runs)


def started_trials(study) -> list:
    """Every trial a worker took up (the WAITING ones are only enqueued)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]


def epoch_steps(client, run_id: str, metric: str = "val_acc") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def has_checkpoint(client, run_id: str) -> bool:
    return "checkpoint/student.pt" in {f.path for f in client.list_artifacts(run_id, "checkpoint")}


def check_sweep_invariants(store: Path, study_name: str, storage: str | None = None,
                           tracking_uri: str | None = None) -> tuple[Any, SweepRuns]:
    """The spec's invariants between a finished study and its MLflow experiment; returns both. The
    study is in the store's journal, or ``storage``; the runs in its database, or ``tracking_uri``."""
    study = load_study(store, study_name, storage)
    runs = sweep_runs(store, study_name, tracking_uri)
    client = mlflow_client(store, tracking_uri)
    trials = started_trials(study)
    table = describe(trials, runs)

    # One child run per started trial (but one lost before its run was created), nothing RUNNING.
    runless = [t.number for t in trials if t.number not in runs.children]
    assert set(runs.children) <= {t.number for t in trials}, table
    assert all(study.trials[n].user_attrs.get("stop_reason") == "worker_lost" for n in runless), table
    assert [t.number for t in trials if t.state.name == "RUNNING"] == [], table
    assert {r.info.run_name: r.info.status for r in runs.runs if r.info.status == "RUNNING"} == {}, table
    assert runs.parent.info.status in ("FINISHED", "KILLED", "FAILED"), table  # FAILED: nothing completed

    for trial in (t for t in trials if t.number not in runless):
        run = runs.children[trial.number]
        tags = run.data.tags
        where = f"trial {trial.number} ({trial.state.name}, stop_reason {trial.user_attrs.get('stop_reason')})\n{table}"
        # Links both ways and matching states.
        assert trial.user_attrs.get("mlflow_run_id") == run.info.run_id, where
        assert tags.get("optuna.trial_number") == str(trial.number), where
        assert tags.get("optuna.study") == study_name, where
        assert tags.get("state") in SWEEP_STATES[trial.state.name], f"{where}: run tag state={tags.get('state')}"
        if trial.user_attrs.get("stop_reason") == "error":  # an exception: its error, no result
            assert run.info.status == "FAILED", f"{where}: run status {run.info.status}"
            assert tags.get("kdsweep.error") == trial.user_attrs.get("kdsweep.error"), where
            continue
        assert run.info.status in ("FINISHED", "KILLED"), f"{where}: run status {run.info.status}"
        if trial.user_attrs.get("stop_reason") == "worker_lost":
            continue  # killed mid-epoch: no final checkpoint; its resumed copy has one
        if trial.user_attrs.get("stop_reason") == "infeasible":
            continue  # rejected before training by a limit: no epoch, no checkpoint
        # Per-epoch metrics with step = epoch, and the student checkpoint.
        first = int(trial.user_attrs.get("resumed_from_epoch", 0)) + 1
        expected = list(range(first, int(trial.user_attrs["epochs_run"]) + 1))
        for metric in EPOCH_METRICS:
            assert epoch_steps(client, run.info.run_id, metric) == expected, f"{where}: {metric} steps"
        assert has_checkpoint(client, run.info.run_id), f"{where}: no checkpoint/student.pt"
    return study, runs


def describe(trials: list, runs: SweepRuns) -> str:
    """One line per trial and its run, for assertion messages."""
    lines = ["trial state     stop_reason   epochs  run status  run state"]
    for t in trials:
        run = runs.children.get(t.number)
        lines.append(f"{t.number:5d} {t.state.name:9s} {t.user_attrs.get('stop_reason')!s:13s} "
                     f"{t.user_attrs.get('epochs_run')!s:6s}  {run.info.status if run else '-':10s}  "
                     f"{run.data.tags.get('state') if run else '-'}")
    return "\n".join(lines)

