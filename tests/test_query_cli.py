"""`kdsweep studies/trials/best/pareto/compare/ui` through Typer's CliRunner against a real swept
store: output formats that standard tools parse, filters, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
from _sweep_store import REPO
from typer.testing import CliRunner

from cli.main import app
from sweeps import trials


@pytest.fixture(scope="module")
def frame(swept) -> pd.DataFrame:
    return trials(swept.study, store=swept.root)


def kdsweep(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_trials_json_parses_and_carries_exact_numbers(swept, frame):
    result = kdsweep("trials", swept.study, "--format", "json", *swept.options)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["number"] for r in rows] == list(frame["number"])
    for row, (_, expected) in zip(rows, frame.iterrows()):
        assert row["test_acc"] == expected["test_acc"]
        assert row["temperature"] == expected["temperature"]
        assert row["student_params"] == expected["student_params"]
        assert isinstance(row["pareto"], bool)
    assert all(row["kd_gain"] is None or isinstance(row["kd_gain"], float) for row in rows)


def test_json_output_is_valid_for_python_json_tool(swept):
    result = kdsweep("trials", swept.study, "-f", "json", *swept.options)
    checked = subprocess.run([sys.executable, "-m", "json.tool"], input=result.stdout, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_trials_csv_round_trips(swept, frame):
    result = kdsweep("trials", swept.study, "--format", "csv", *swept.options)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == list(frame.columns)
    back = pd.read_csv(io.StringIO(result.stdout))
    pd.testing.assert_series_equal(back["test_acc"], frame["test_acc"], check_names=False)
    pd.testing.assert_series_equal(back["lr"], frame["lr"], check_names=False)
    assert list(back["number"]) == list(frame["number"])
    assert list(back["state"]) == list(frame["state"])


def test_trials_where_sort_limit_and_columns(swept, frame):
    result = kdsweep("trials", swept.study, "--where", "state == 'COMPLETE' and retention > 0.5",
                     "--sort", "-test_acc,number", "--limit", "2", "--columns", "number,test_acc", "-f", "json",
                     *swept.options)
    assert result.exit_code == 0, result.output
    expected = frame[(frame["state"] == "COMPLETE") & (frame["retention"] > 0.5)].sort_values(
        ["test_acc", "number"], ascending=[False, True]).head(2)
    assert json.loads(result.stdout) == [{"number": int(r.number), "test_acc": r.test_acc}
                                         for r in expected.itertuples()]


def test_trials_table_shows_the_searched_params(swept):
    result = kdsweep("trials", swept.study, *swept.options)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if line.startswith("number"))
    for column in ("number", "temperature", "alpha", "ratio", "lr", "test_acc", "retention", "student_params"):
        assert column in header


@pytest.mark.parametrize(("args", "message"), [
    (["--where", "retention >"], "malformed where expression"),
    (["--where", "speed > 1"], "unknown column 'speed'"),
    (["--where", "__import__('os').system('echo hacked')"], "not a condition"),
    (["--where", "test_acc > @x"], "malformed where expression"),
    (["--sort", "-speed"], "unknown sort key 'speed'"),
    (["--columns", "number,speed"], "unknown column 'speed'"),
])
def test_bad_input_is_one_line_and_exit_2(swept, args, message):
    result = kdsweep("trials", swept.study, *args, *swept.options)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_unknown_study_is_one_line_and_exit_2(swept):
    for command in (["trials", "nope"], ["best", "nope"], ["pareto", "nope"], ["report", "nope"]):
        result = kdsweep(*command, *swept.options)
        assert result.exit_code == 2, command
        assert "unknown study 'nope'" in result.stderr and result.stderr.count("\n") == 1


def test_best_json_is_one_object_for_the_best_trial(swept, frame):
    result = kdsweep("best", swept.study, "-f", "json", *swept.options)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["test_acc"] == frame.loc[frame["state"] == "COMPLETE", "test_acc"].max()
    assert row["checkpoint_uri"].startswith("runs:/")


def test_best_table_says_how_to_load_the_student(swept):
    result = kdsweep("best", swept.study, "--metric", "student_params", *swept.options)
    assert result.exit_code == 0, result.output
    assert f"load_student('{swept.study}'," in result.stdout


def test_pareto_lists_the_front_sorted_by_size(swept, frame):
    result = kdsweep("pareto", swept.study, "-f", "csv", *swept.options)
    assert result.exit_code == 0, result.output
    front = pd.read_csv(io.StringIO(result.stdout))
    expected = frame[frame["pareto"]].sort_values("student_params")
    assert list(front["number"]) == list(expected["number"])


def test_studies_csv_lists_the_study(swept, frame):
    result = kdsweep("studies", "-f", "csv", *swept.options)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["study"] for r in rows] == [swept.study]
    assert int(rows[0]["trials"]) == len(frame)


def test_compare_of_a_study_with_itself_is_refused(swept):
    result = kdsweep("compare", swept.study, swept.study, *swept.options)
    assert result.exit_code == 2 and "two different studies" in result.stderr


def test_ui_refuses_a_port_in_use(swept):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = kdsweep("ui", "--port", taken.getsockname()[1], *swept.options)
    assert result.exit_code == 2 and "pick another with --port" in result.stderr


def test_ui_without_a_store_says_so(tmp_path):
    result = kdsweep("ui", "--store", tmp_path / "nothing")
    assert result.exit_code == 2 and "no MLflow store" in result.stderr


def _best_of(runs: int, *args: str) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return min(times)


@pytest.mark.parametrize("args", [["--help"], ["trials", "--help"]])
def test_help_stays_fast_and_loads_no_heavy_library(args):
    probe = ("import sys; from cli.main import app\n"
             f"try: app({args!r})\nexcept SystemExit: pass\n"
             "print(sorted(m for m in ('torch', 'pandas', 'mlflow', 'optuna', 'matplotlib') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip().splitlines()[-1] == "[]"
    assert _best_of(3, *args) < 0.5
