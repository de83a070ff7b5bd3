"""`kdsweep studies/trials/best/pareto/compare/ui` through Typer's CliRunner against a real swept
store: output formats that standard tools parse, and filters. Their one-line errors with exit code 2
are in the bad-input corpus (tests/test_bad_input_corpus.py)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import optuna
import pandas as pd
import pytest
from _study_edits import HELPS, add_test_best_trial, log_verdict, stale_then_incomplete
from _sweep_store import REPO, copy_store
from typer.testing import CliRunner

from cli.main import app
from sweeps import best, trials
from sweeps.tracking.storage import open_storage


@pytest.fixture(scope="module")
def frame(swept) -> pd.DataFrame:
    return trials(swept.study, store=swept.root)


@pytest.fixture(scope="module")
def judged(swept, tmp_path_factory):
    """A copy of the swept store with a test-best trial that is not the validation-best one, and a
    'helps' verdict about the validation-best trial on the parent run. Returns (store, val best, test best)."""
    store = copy_store(swept, tmp_path_factory.mktemp("judged"))
    val_best, test_best = add_test_best_trial(store)
    log_verdict(store, "helps", HELPS, trial=val_best)
    return store, val_best, test_best


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
        assert "kd_gain" not in row


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
    names = header.split()
    assert names.index("test_acc") == names.index("best_val_acc") + 1 and "kd_gain" not in names
    assert "test_acc: the held-out estimate; selection uses best_val_acc" in result.stdout


def test_best_json_is_one_object_for_the_best_trial(swept, frame):
    result = kdsweep("best", swept.study, "-f", "json", *swept.options)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["number"] == best(frame)["number"]
    assert row["best_val_acc"] == frame.loc[frame["state"] == "COMPLETE", "best_val_acc"].max()
    assert row["checkpoint_uri"].startswith("runs:/")
    assert isinstance(row["verdict"], dict)


def test_best_chooses_on_validation_and_ends_with_the_verdict(judged):
    store, val_best, _ = judged
    result = kdsweep("best", store.study, *store.options)
    assert result.exit_code == 0, result.output
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert lines[0] == f"best trial of study '{store.study}' by best_val_acc"
    # Rows of the boxed table: field │ value │ note.
    fields = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip()[1:-1].split("│")]
                                                for line in lines if line.startswith("│"))}
    assert fields["number"] == [str(val_best), ""]
    assert fields["best_val_acc"][1] == "chose this trial" and fields["test_acc"][1] == "held-out estimate"
    assert lines[-1] == (f"KD verdict: helps — gain +0.082 (95% CI +0.051 to +0.113, 3 paired seeds) for trial "
                         f"{val_best}; distilled 0.744, no-KD 0.662 (test means)")


def test_best_json_carries_the_verdict(judged):
    store, val_best, _ = judged
    result = kdsweep("best", store.study, "-f", "json", *store.options)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["number"] == val_best
    assert row["verdict"] == {**HELPS, "kd_repeats": 3, "best_trial": val_best, "kd_verdict": "helps"}


def test_best_by_test_acc_when_asked(judged):
    store, _, test_best = judged
    result = kdsweep("best", store.study, "--metric", "test_acc", "-f", "json", *store.options)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["number"] == test_best


def test_best_prints_an_incomplete_verdict_with_its_reason(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    stale_then_incomplete(store, "repeat 1 of the KD arm was cut by the deadline")
    result = kdsweep("best", store.study, *store.options)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "KD verdict: incomplete (repeat 1 of the KD arm was cut by the deadline)"
    assert "gain" not in result.stdout


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


def test_pareto_is_chosen_on_validation_unless_told(judged):
    store, _, test_best = judged
    result = kdsweep("pareto", store.study, *store.options)
    assert result.exit_code == 0, result.output
    assert "max best_val_acc; min student_params, train_time_s" in result.stdout.splitlines()[0]
    numbers = [int(line.split()[0]) for line in result.stdout.splitlines()[3:]]
    assert numbers and test_best not in numbers
    asked = kdsweep("pareto", store.study, "--maximize", "test_acc", "-f", "json", *store.options)
    assert test_best in [row["number"] for row in json.loads(asked.stdout)]


def test_studies_csv_lists_the_study(swept, frame):
    result = kdsweep("studies", "-f", "csv", *swept.options)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["study"] for r in rows] == [swept.study]
    assert int(rows[0]["trials"]) == len(frame)
    assert "top_test_acc" not in rows[0]


def test_compare_shows_the_verdict_rows(judged, tmp_path):
    store = copy_store(judged[0], tmp_path)
    optuna.create_study(study_name="s2", storage=open_storage(store.storage_url), direction="maximize")
    result = kdsweep("compare", store.study, "s2", *store.options)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[3:]}
    assert rows["kd_verdict"] == ["helps"]
    assert rows["kd_gain"] == ["+0.0820"]
    assert rows["kd_gain_ci95_low"] == ["+0.0510"] and rows["kd_gain_ci95_high"] == ["+0.1130"]
    assert rows["kd_repeats"] == ["3"]
    assert "top_test_acc" not in rows and "kd_verdict_reason" not in rows
    as_json = json.loads(kdsweep("compare", store.study, "s2", "-f", "json", *store.options).stdout)
    by_quantity = {row["quantity"]: row for row in as_json}
    assert by_quantity["kd_gain"] == {"quantity": "kd_gain", store.study: 0.082, "s2": None}


@pytest.mark.parametrize("args", [["--help"], ["trials", "--help"]])
def test_help_loads_no_heavy_library(args):
    # What keeps --help fast (about 0.3 s here) is what it does not import; a wall-clock bound
    # would fail on a busy machine without saying why.
    probe = ("import sys; from cli.main import app\n"
             f"try: app({args!r})\nexcept SystemExit: pass\n"
             "print(sorted(m for m in ('torch', 'pandas', 'mlflow', 'optuna', 'matplotlib', 'sqlalchemy') "
             "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip().splitlines()[-1] == "[]"
