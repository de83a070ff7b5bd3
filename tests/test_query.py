"""The query API (``from sweeps import trials, best, pareto, studies, load_student, ...``) against a
store written by a real short sweep, and the ``where`` grammar on small frames."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from _sweep_store import copy_store
from mlflow import MlflowClient

from kdcore import ConfigError
from sweeps import best, compare, load_student, pareto, studies, trials, update_pareto_tags, where
from sweeps.query._runs import experiment_runs
from sweeps.tracking.storage import open_storage
from sweeps.tracking.store import Store


@pytest.fixture(scope="module")
def frame(swept) -> pd.DataFrame:
    return trials(swept.study, store=swept.root)


@pytest.fixture(scope="module")
def study(swept) -> optuna.Study:
    return optuna.load_study(study_name=swept.study, storage=open_storage(swept.storage_url))


@pytest.fixture(scope="module")
def runs(swept):
    """Every run of the study's experiment, fetched through MLflow's own client."""
    client = MlflowClient(swept.tracking_uri)
    experiment = client.get_experiment_by_name(swept.study)
    return {r.info.run_id: r for r in client.search_runs([experiment.experiment_id], max_results=1000)}


# --- trials -------------------------------------------------------------------------------------

def test_trials_has_one_row_per_optuna_trial(frame, study):
    assert list(frame["number"]) == [t.number for t in study.trials]
    assert list(frame["state"]) == [t.state.name for t in study.trials]
    assert (frame["state"] == "COMPLETE").sum() >= 2


def test_trials_columns_are_numbers_not_strings(frame):
    for column in ("temperature", "alpha", "ratio", "lr", "best_val_acc", "test_acc", "retention", "kd_gain",
                   "train_time_s", "wall_time_s", "epoch_time_s", "duration_s"):
        assert frame[column].dtype == "float64", column
    for column in ("student_params", "student_size_bytes", "epochs_run"):
        assert frame[column].dtype == "Int64", column
    assert frame["number"].dtype == "int64"
    assert frame["pareto"].dtype == "bool"
    assert pd.api.types.is_datetime64_any_dtype(frame["started"])
    for column in ("state", "stop_reason", "run_status", "mlflow_run_id", "checkpoint_uri"):
        assert isinstance(frame[column].dtype, pd.StringDtype), column


def test_trials_match_what_each_trial_logged_to_mlflow(frame, runs):
    for row in frame.itertuples():
        run = runs[row.mlflow_run_id]
        assert run.data.tags["optuna.trial_number"] == str(row.number)
        assert run.data.tags["state"] == row.state
        assert float(run.data.params["temperature"]) == row.temperature  # MLflow gives strings; the frame floats
        assert run.data.metrics["test_acc"] == row.test_acc
        assert run.data.metrics["student_params"] == row.student_params
        assert row.checkpoint_uri == f"runs:/{row.mlflow_run_id}/checkpoint/student.pt"
        assert row.run_status == run.info.status


def test_mean_epoch_time_is_the_mean_of_the_logged_epoch_times(frame, swept):
    client = MlflowClient(swept.tracking_uri)
    row = frame[frame["state"] == "COMPLETE"].iloc[0]
    history = client.get_metric_history(row["mlflow_run_id"], "epoch_time_s")
    assert len(history) == row["epochs_run"]
    assert row["epoch_time_s"] == pytest.approx(np.mean([m.value for m in history]))


def test_kd_gain_is_given_only_for_the_trial_the_baseline_copies(frame, runs):
    baselines = [r for r in runs.values() if r.data.tags.get("kdsweep.kind") == "baseline"]
    assert len(baselines) == 1, "the fixture sweep should have had time for its no-KD baseline"
    copied = int(baselines[0].data.tags["kdsweep.baseline_of_trial"])
    gains = frame.dropna(subset=["kd_gain"])
    assert list(gains["number"]) == [copied]
    assert gains["kd_gain"].iloc[0] == pytest.approx(gains["test_acc"].iloc[0] - baselines[0].data.metrics["test_acc"])


def test_sql_reader_and_mlflow_client_read_the_same_runs(swept):
    store = Store.resolve(swept.root)
    by_sql = experiment_runs(store, swept.study)
    by_client = experiment_runs(store, swept.study, client=store.client())
    assert by_sql.experiment_id == by_client.experiment_id
    assert by_sql.runs.keys() == by_client.runs.keys()
    for run_id, run in by_sql.runs.items():
        assert run == by_client.runs[run_id]


def test_unknown_study_names_the_known_ones(swept):
    with pytest.raises(ConfigError, match=r"unknown study 'nope'.*studies: s1"):
        trials("nope", store=swept.root)


def test_missing_storage_is_an_error_and_is_not_created(tmp_path):
    with pytest.raises(ConfigError, match="no Optuna storage"):
        trials("s1", store=tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


# --- best, pareto, studies, compare ------------------------------------------------------------

def test_best_is_the_complete_trial_with_the_highest_test_acc(frame, swept):
    row = best(swept.study, store=swept.root)
    complete = frame[frame["state"] == "COMPLETE"]
    assert row["state"] == "COMPLETE"
    assert row["test_acc"] == complete["test_acc"].max()


def test_best_minimises_a_cost_and_honours_where(frame):
    row = best(frame, "train_time_s", where="retention > 0.5")
    eligible = frame[(frame["state"] == "COMPLETE") & (frame["retention"] > 0.5)]
    assert row["train_time_s"] == eligible["train_time_s"].min()


def test_best_with_nothing_matching_says_so(frame):
    with pytest.raises(ConfigError, match="no COMPLETE trial"):
        best(frame, where="student_params < 0")


def test_pareto_keeps_exactly_the_non_dominated_complete_rows():
    df = pd.DataFrame({
        "number": [0, 1, 2, 3, 4, 5, 6],
        "state": ["COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"],
        "test_acc": [0.90, 0.95, 0.95, 0.80, 0.99, 0.97, np.nan],
        "student_params": [100, 200, 300, 100, 50, 400, 10],
        "train_time_s": [1.0, 1.0, 1.0, 2.0, 0.1, 5.0, 0.1],
    })
    # 2 is beaten by 1 (as accurate, bigger); 3 by 0; 4 is pruned; 6 has no accuracy.
    assert list(pareto(df)["number"]) == [0, 1, 5]
    # Counting the pruned 4, it beats every other row.
    assert list(pareto(df, states=None)["number"]) == [4]
    # Without size, 1 and 2 tie: both stay.
    assert list(pareto(df, maximize=["test_acc"], minimize=["train_time_s"])["number"]) == [1, 2, 5]


def test_pareto_of_the_sweep_matches_the_pareto_column(frame):
    assert sorted(pareto(frame)["number"]) == sorted(frame.loc[frame["pareto"], "number"])
    assert frame.loc[frame["pareto"], "state"].eq("COMPLETE").all()


def test_pareto_rejects_an_unknown_objective(frame):
    with pytest.raises(ConfigError, match="unknown objective 'speed'"):
        pareto(frame, minimize=("speed",))


def test_studies_counts_trials_and_finds_the_best(swept, frame):
    row = studies(store=swept.root).set_index("study").loc[swept.study]
    assert row["task"] == "digits"
    assert row["trials"] == len(frame)
    assert row["complete"] == (frame["state"] == "COMPLETE").sum()
    assert row["best_val_acc"] == frame.loc[frame["state"] == "COMPLETE", "best_val_acc"].max()
    assert row["trial_time_s"] == pytest.approx(frame["duration_s"].sum())


def test_compare_puts_two_studies_side_by_side(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    other = optuna.create_study(study_name="s2", storage=open_storage(store.storage_url), direction="maximize")
    other.add_trial(optuna.trial.create_trial(
        params={"temperature": 2.0}, distributions={"temperature": optuna.distributions.FloatDistribution(1, 20)},
        value=0.9, user_attrs={"test_acc": 0.91, "student_params": 1000, "train_time_s": 1.0}))
    table = compare(swept.study, "s2", store=store.root)
    assert list(table.columns) == [swept.study, "s2"]
    assert table.loc["trials", "s2"] == 1
    assert table.loc["test_acc", "s2"] == 0.91
    assert table.loc["best.temperature", "s2"] == 2.0
    assert table.loc["kd_gain", swept.study] is not None and table.loc["kd_gain", "s2"] is None


# --- load_student ------------------------------------------------------------------------------

def test_load_student_reproduces_the_logged_test_accuracy(frame, swept, digits):
    x, y = digits.splits().test.tensors
    for _, row in frame[frame["state"].isin(["COMPLETE", "PRUNED"])].head(3).iterrows():
        model = load_student(swept.study, int(row["number"]), store=swept.root)
        assert not model.training
        with torch.no_grad():
            accuracy = (model(x).argmax(-1) == y).sum().item() / len(y)
        assert math.isclose(accuracy, row["test_acc"], abs_tol=1e-9), int(row["number"])


def test_load_student_accepts_a_row_of_best(swept):
    row = best(swept.study, store=swept.root)
    model = load_student(swept.study, row, store=swept.root)
    assert sum(p.numel() for p in model.parameters()) == row["student_params"]


def test_load_student_of_a_missing_trial_is_an_error(swept):
    with pytest.raises(ConfigError, match="has no trial 999"):
        load_student(swept.study, 999, store=swept.root)


# --- pareto tags -------------------------------------------------------------------------------

def _tagged(store) -> dict[int, str]:
    client = MlflowClient(store.tracking_uri)
    experiment = client.get_experiment_by_name(store.study)
    found = client.search_runs([experiment.experiment_id], "tags.`kdsweep.kind` = 'trial'", max_results=1000)
    return {int(r.data.tags["optuna.trial_number"]): r.data.tags.get("pareto") for r in found}


def test_update_pareto_tags_tags_every_finished_trial_run(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    front = update_pareto_tags(store.study, store=store.root)
    frame = trials(store.study, store=store.root)
    assert front == sorted(frame.loc[frame["pareto"], "number"])
    assert _tagged(store) == {n: ("true" if n in front else "false") for n in frame["number"]}
    assert update_pareto_tags(store.study, store=store.root) == front  # idempotent


def test_pareto_tags_follow_the_study_as_it_grows(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    before = update_pareto_tags(store.study, store=store.root)
    # A new trial that beats every other on all three objectives: the front becomes that trial alone.
    opened = optuna.load_study(study_name=store.study, storage=open_storage(store.storage_url))
    client = MlflowClient(store.tracking_uri)
    experiment = client.get_experiment_by_name(store.study)
    number = len(opened.trials)
    run = client.create_run(experiment.experiment_id, run_name=f"trial-{number:04d}",
                            tags={"kdsweep.kind": "trial", "optuna.trial_number": str(number)})
    template = opened.trials[before[0]]
    opened.add_trial(optuna.trial.create_trial(
        params=template.params, distributions=template.distributions, value=1.0,
        user_attrs={"mlflow_run_id": run.info.run_id, "test_acc": 1.0, "student_params": 1, "train_time_s": 1e-3}))
    assert update_pareto_tags(opened, client=client) == [number]
    tags = _tagged(store)
    assert tags[number] == "true"
    assert all(tags[n] == "false" for n in before)


# --- where -------------------------------------------------------------------------------------

@pytest.fixture
def small() -> pd.DataFrame:
    return pd.DataFrame({
        "number": [0, 1, 2, 3],
        "state": pd.array(["COMPLETE", "PRUNED", "COMPLETE", "FAIL"], dtype="string"),
        "test_acc": [0.97, 0.5, 0.93, np.nan],
        "student_params": pd.array([15000, 2000, 30000, pd.NA], dtype="Int64"),
        "pareto": [True, False, False, False],
    })


@pytest.mark.parametrize(("expression", "numbers"), [
    ("test_acc > 0.9", [0, 2]),
    ("test_acc > 0.9 and student_params < 20000", [0]),
    ("test_acc >= 0.97 or state == 'PRUNED'", [0, 1]),
    ("not test_acc > 0.9", [1, 3]),  # a missing value fails the comparison, so "not" keeps it
    ("0.9 < test_acc < 0.95", [2]),
    ("state in ['COMPLETE', 'FAIL']", [0, 2, 3]),
    ("state not in ('COMPLETE',)", [1, 3]),
    ("pareto", [0]),
    ("not pareto and (student_params > 1000)", [1, 2]),
    ("student_params != -1", [0, 1, 2]),
    ("state == \"COMPLETE\" and test_acc > 0.95", [0]),
    ("  ", [0, 1, 2, 3]),
])
def test_where_keeps_the_rows_that_satisfy_the_expression(small, expression, numbers):
    assert list(where(small, expression)["number"]) == numbers


@pytest.mark.parametrize(("expression", "message"), [
    ("test_acc >", "malformed where expression"),
    ("test_acc > 0.9 and", "malformed where expression"),
    ("retention > 0.95", "unknown column 'retention'"),
    ("test_acc > @limit", "malformed where expression"),
    ("__import__('os').system('true')", "not a condition"),
    ("test_acc.max() > 0", "not a column name, number or string"),
    ("test_acc > number.__class__", "not a column name, number or string"),
    ("test_acc + 1 > 1", "not a column name, number or string"),
    ("test_acc > 0.9; import os", "malformed where expression"),
    ("(lambda: 1)() == 1", "not a column name, number or string"),
    ("test_acc", "not true/false"),
    ("state > 3", "cannot compare"),
    ("state in 'COMPLETE'", "'in' needs a list"),
    ("[x for x in number] == 1", "not a column name, number or string"),
    ("number == 1\nimport os", "malformed where expression"),
])
def test_where_rejects_anything_but_the_grammar(small, expression, message):
    with pytest.raises(ConfigError, match=message) as raised:
        where(small, expression)
    assert "\n" not in str(raised.value)
