"""Bad input to ``kdsweep run`` without ``--store`` and in a real process: one line on stderr, exit
code 2, and nothing written (the working directory, where ``./mlruns`` would go, stays empty).
Every other bad input, on every command, is in the corpus: tests/test_bad_input_corpus.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _sweep_helpers import run_cli
from typer.testing import CliRunner

from cli.main import app


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
