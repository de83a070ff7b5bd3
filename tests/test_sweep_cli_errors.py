"""Bad input to ``kdsweep run``: one line on stderr, exit code 2, and nothing written.

"Nothing written" is checked both ways: a ``--store`` folder that does not exist is not created,
and one that exists (empty) stays empty; the working directory (where ``./mlruns`` would go)
stays empty too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _sweep_helpers import run_cli
from typer.testing import CliRunner

from cli.main import app

BAD_FLAGS = {
    "budget in words": (["--budget", "2 hours"], "invalid budget '2 hours'"),
    "negative budget": (["--budget=-5m"], "invalid budget '-5m'"),
    "zero budget": (["--budget", "0s"], "invalid budget '0s'"),
    "unknown sampler": (["--sampler", "bogus"], "unknown sampler 'bogus'"),
    "unknown pruner": (["--pruner", "bogus"], "unknown pruner 'bogus'"),
    "unknown task": (["--task", "bogus"], "unknown task 'bogus'"),
    "storage scheme": (["--storage", "foo://x"], "'foo://x'"),
    "sqlite with one slash": (["--storage", "sqlite:/x"], "'sqlite:/x'"),
    "sqlite in memory": (["--storage", "sqlite://"], "in memory"),
    "journal in a missing folder": (["--storage", "/nonexistent/kdsweep/optuna.journal"], "does not exist"),
    "unreachable storage": (["--storage", "postgresql://u:p@127.0.0.1:1/db"], "cannot open Optuna storage"),
    "no workers": (["--jobs", "0"], "--jobs 0"),
    "no trials": (["--n-trials", "0"], "--n-trials 0"),
    "presets on a grid": (["--enqueue-presets", "--sampler", "grid"], "--enqueue-presets"),
    "min_epochs above epochs": (["--min-epochs", "50"], "min_epochs=50"),
}

BAD_FILES = {
    "unknown key": ("budgte: 1m\n", "unknown setting 'budgte'"),
    "malformed YAML": ("space: {alpha: [0, 1\n", "not valid YAML"),
    "not a mapping": ("- 1\n- 2\n", "must hold a mapping"),
    "min_epochs above the file's epochs": ("min_epochs: 6\ntrain: {epochs: 5}\n", "min_epochs=6"),
    "inverted range": ("space: {temperature: {low: 20, high: 1}}\n", "inverted"),
    "unknown train setting": ("space: {alpha: {low: 0, high: 1}}\ntrain: {epoch: 5}\n", "unknown setting 'epoch'"),
    "zero step": ("space: {lr: {low: 0.001, high: 0.01, step: 0}}\n", "step"),
}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory: a stray ./mlruns would show up in it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("MLFLOW_TRACKING_URI", "KDSWEEP_STORE"):
        monkeypatch.delenv(name, raising=False)
    return work


def invoke(args: list[str]):
    return CliRunner().invoke(app, ["run", *args])


def assert_one_line_error(result, words: str) -> None:
    stderr = result.stderr.strip()
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.stdout}\n{stderr}\n{result.exception!r}"
    assert len(stderr.splitlines()) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert stderr.startswith("error: ")
    assert words in stderr


@pytest.mark.parametrize("store_exists", [False, True], ids=["new-store", "empty-store"])
@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flag_is_one_line_exit_2_and_writes_nothing(case, store_exists, workdir, tmp_path):
    args, words = BAD_FLAGS[case]
    store = tmp_path / "store"
    if store_exists:
        store.mkdir()
    result = invoke(["--task", "digits", "--store", str(store), *args])
    assert_one_line_error(result, words)
    assert (list(store.iterdir()) == []) if store_exists else not store.exists()
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("store_exists", [False, True], ids=["new-store", "empty-store"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_sweep_file_is_one_line_exit_2_and_writes_nothing(case, store_exists, workdir, tmp_path):
    text, words = BAD_FILES[case]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"task: digits\n{text}" if not text.startswith("-") else text)
    store = tmp_path / "store"
    if store_exists:
        store.mkdir()
    # Bounded, in case the bad file got through: it would otherwise start a 15-minute sweep.
    result = invoke(["--config", str(sweep), "--store", str(store), "--budget", "20s", "--n-trials", "1"])
    assert_one_line_error(result, words)
    assert (list(store.iterdir()) == []) if store_exists else not store.exists()
    assert list(workdir.iterdir()) == []


def test_missing_sweep_file_is_one_line_exit_2(workdir, tmp_path):
    result = invoke(["--config", str(tmp_path / "nope.yaml"), "--store", str(tmp_path / "store")])
    assert_one_line_error(result, "cannot read config file")
    assert not (tmp_path / "store").exists()


def test_default_store_is_not_created_on_bad_input(workdir):
    result = invoke(["--task", "digits", "--jobs", "0"])
    assert_one_line_error(result, "--jobs 0")
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(("args", "words"), [
    (["--budget", "2 hours"], "invalid budget '2 hours'"),
    (["--storage", "postgresql://u:p@127.0.0.1:1/db"], "cannot open Optuna storage"),
])
def test_bad_input_in_a_real_process_prints_one_line_and_exits_2(args, words, tmp_path):
    store = tmp_path / "store"
    run = run_cli("run", "--task", "digits", "--store", str(store), *args, cwd=tmp_path, timeout=60)
    assert run.returncode == 2, run.explain()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], run.explain()
    assert not store.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unreachable_tracking_server_is_one_line_exit_2_within_seconds(tmp_path):
    # MLflow retries an unreachable server for minutes; the sweep must neither hang past its
    # budget nor train a teacher it cannot log.
    store = tmp_path / "store"
    try:
        run = run_cli("run", "--task", "digits", "--store", str(store), "--budget", "20s", "--n-trials", "1",
                      "--tracking-uri", "http://127.0.0.1:1", cwd=tmp_path, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("kdsweep run was still waiting for the tracking server after 30 s (budget 20 s)")
    assert run.returncode == 2, run.explain()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "127.0.0.1:1" in lines[0], run.explain()
    assert not store.exists()
