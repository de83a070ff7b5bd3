"""The query API (``from sweeps import trials, best, pareto, studies, load_student, ...``) against a
store written by a real short sweep, and the ``where`` grammar on small frames."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from _study_edits import HELPS, add_test_best_trial, log_verdict, parent_run_id, stale_then_incomplete
from _sweep_store import copy_store
from mlflow import MlflowClient

from kdcore import ConfigError
from sweeps import (best, compare, comparison, load_student, pareto, studies, trials, update_pareto_tags,
                    verdict_line, where)
from sweeps.query import _study_sql
from sweeps.query.trials import _ATTR_DTYPES, _TRIAL_ATTRS
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
def split(swept, tmp_path_factory):
    """A copy of the swept store with one more trial: the best on test accuracy, not on validation.
    Returns (store, its trials frame, the validation-best trial, the test-best trial)."""
    store = copy_store(swept, tmp_path_factory.mktemp("split"))
    val_best, test_best = add_test_best_trial(store)
    return store, trials(store.study, store=store.root), val_best, test_best


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
    for column in ("temperature", "alpha", "ratio", "lr", "best_val_acc", "test_acc", "retention",
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


def test_trial_rows_carry_no_kd_gain_and_show_validation_before_test(frame):
    # A per-trial gain would compare a trial with another trial's baseline; the gain is the study's verdict.
    assert not any("gain" in column for column in frame.columns)
    columns = list(frame.columns)
    assert columns.index("test_acc") == columns.index("best_val_acc") + 1


def test_sql_reader_and_mlflow_client_read_the_same_runs(swept):
    store = Store.resolve(swept.root)
    by_sql = experiment_runs(store, swept.study)
    by_client = experiment_runs(store, swept.study, client=store.client())
    assert by_sql.experiment_id == by_client.experiment_id
    assert by_sql.runs.keys() == by_client.runs.keys()
    for run_id, run in by_sql.runs.items():
        assert run == by_client.runs[run_id]


def test_sql_reader_and_mlflow_client_agree_on_nan_metrics(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    stale_then_incomplete(store, "pair 2 cut by the deadline")
    paths = Store.resolve(store.root)
    parent = parent_run_id(store)
    by_sql = experiment_runs(paths, store.study).runs[parent]
    by_client = experiment_runs(paths, store.study, client=paths.client()).runs[parent]
    assert math.isnan(by_sql.metrics["kd_gain"]) and math.isnan(by_client.metrics["kd_gain"])
    assert by_sql.tags == by_client.tags
    assert {k: str(v) for k, v in by_sql.metrics.items()} == {k: str(v) for k, v in by_client.metrics.items()}


def test_trials_read_from_a_sqlite_storage_by_sql_match_the_optuna_read(swept, study, frame, tmp_path):
    """An RDB storage is read by SQL as columns, without the per-epoch intermediate values: same frame."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.copy_study(from_study_name=swept.study, from_storage=open_storage(swept.storage_url),
                      to_storage=open_storage(url))
    by_sql = _study_sql.read_columns(url, swept.study, user_attrs=_TRIAL_ATTRS, numbers=_ATTR_DTYPES)
    assert by_sql is not None and by_sql.user_attrs == study.user_attrs
    assert list(by_sql.trials["number"]) == [t.number for t in study.trials]
    assert list(by_sql.params.columns) == list(study.trials[0].params)
    pd.testing.assert_frame_equal(trials(swept.study, storage=url, store=swept.root), frame)
    assert _study_sql.read_columns(url, "no such study", user_attrs=(), numbers=()) is None
    missing = tmp_path / "missing.db"
    assert _study_sql.read_columns(f"sqlite:///{missing}", swept.study, user_attrs=(), numbers=()) is None
    assert not missing.exists()


def test_unknown_study_names_the_known_ones(swept):
    with pytest.raises(ConfigError, match=r"unknown study 'nope'.*studies: s1"):
        trials("nope", store=swept.root)


def test_missing_storage_is_an_error_and_is_not_created(tmp_path):
    with pytest.raises(ConfigError, match="no Optuna storage"):
        trials("s1", store=tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


# --- best, pareto, studies, compare ------------------------------------------------------------

def test_best_is_the_earliest_complete_trial_with_the_highest_best_val_acc(frame, swept):
    row = best(swept.study, store=swept.root)
    complete = frame[frame["state"] == "COMPLETE"]
    assert row["state"] == "COMPLETE"
    assert row["number"] == complete.loc[complete["best_val_acc"] == complete["best_val_acc"].max(), "number"].min()


def test_best_chooses_on_validation_not_on_test(split):
    store, frame, val_best, test_best = split
    assert frame.loc[frame["test_acc"].idxmax(), "number"] == test_best  # the case is real: they differ
    assert best(store.study, store=store.root)["number"] == val_best
    assert best(frame)["number"] == val_best


def test_best_by_test_acc_still_works_when_asked(split):
    store, frame, _, test_best = split
    assert best(store.study, "test_acc", store=store.root)["number"] == test_best


def test_pareto_front_is_chosen_on_validation(split):
    _, frame, _, test_best = split
    front = pareto(frame)
    assert test_best not in set(front["number"])
    assert front["best_val_acc"].max() == frame.loc[frame["state"] == "COMPLETE", "best_val_acc"].max()
    assert sorted(frame.loc[frame["pareto"], "number"]) == sorted(front["number"])
    # Asked for explicitly, a front on test accuracy holds the test-best trial.
    assert test_best in set(pareto(frame, maximize=["test_acc"])["number"])


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
        "best_val_acc": [0.90, 0.95, 0.95, 0.80, 0.99, 0.97, np.nan],
        # Test accuracy ranks them the other way round: the default front must not look at it.
        "test_acc": [0.99, 0.80, 0.80, 0.99, 0.50, 0.70, np.nan],
        "student_params": [100, 200, 300, 100, 50, 400, 10],
        "train_time_s": [1.0, 1.0, 1.0, 2.0, 0.1, 5.0, 0.1],
    })
    # 2 is beaten by 1 (as accurate, bigger); 3 by 0; 4 is pruned; 6 has no accuracy.
    assert list(pareto(df)["number"]) == [0, 1, 5]
    # Counting the pruned 4, it beats every other row.
    assert list(pareto(df, states=None)["number"]) == [4]
    # Without size, 1 and 2 tie: both stay.
    assert list(pareto(df, maximize=["best_val_acc"], minimize=["train_time_s"])["number"]) == [1, 2, 5]
    # On test accuracy, asked for explicitly: 0 and 3 tie at the top; 3 is slower.
    assert list(pareto(df, maximize=["test_acc"])["number"]) == [0]


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


def test_studies_report_nothing_chosen_on_test(split):
    store, frame, val_best, test_best = split
    row = studies(store=store.root).set_index("study").loc[store.study]
    assert row["best_trial"] == val_best
    assert row["best_test_acc"] == frame.loc[frame["number"] == val_best, "test_acc"].iloc[0]
    assert row["best_test_acc"] < frame["test_acc"].max()  # the test-best trial's 1.0 is not reported
    assert not any(column.startswith("top_") for column in studies(store=store.root).columns)


def test_compare_puts_two_studies_side_by_side(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    other = optuna.create_study(study_name="s2", storage=open_storage(store.storage_url), direction="maximize")
    other.add_trial(optuna.trial.create_trial(
        params={"temperature": 2.0}, distributions={"temperature": optuna.distributions.FloatDistribution(1, 20)},
        value=0.9, user_attrs={"test_acc": 0.91, "student_params": 1000, "train_time_s": 1.0}))
    log_verdict(store, "helps", HELPS)
    table = compare(swept.study, "s2", store=store.root)
    assert list(table.columns) == [swept.study, "s2"]
    assert table.loc["trials", "s2"] == 1
    assert table.loc["test_acc", "s2"] == 0.91
    assert table.loc["best.temperature", "s2"] == 2.0
    assert "top_test_acc" not in table.index
    assert table.loc["best_trial", swept.study] == best(swept.study, store=swept.root)["number"]
    for key in ("kd_gain", "kd_gain_ci95_low", "kd_gain_ci95_high", "kd_repeats", "nokd_test_acc"):
        assert table.loc[key, swept.study] == HELPS[key] and table.loc[key, "s2"] is None
    assert table.loc["kd_verdict", swept.study] == "helps" and table.loc["kd_verdict", "s2"] is None
    assert "kd_verdict_reason" not in table.index


def test_compare_of_an_incomplete_verdict_gives_the_reason_and_no_gain(split, tmp_path):
    store = copy_store(split[0], tmp_path)
    stale_then_incomplete(store, "no COMPLETE trial")
    optuna.create_study(study_name="s2", storage=open_storage(store.storage_url), direction="maximize")
    table = compare(store.study, "s2", store=store.root)
    assert table.loc["kd_verdict", store.study] == "incomplete"
    assert table.loc["kd_verdict_reason", store.study] == "no COMPLETE trial"
    assert all(table.loc[k, store.study] is None for k in ("kd_gain", "kd_gain_ci95_low", "nokd_test_acc"))


# --- the KD verdict ------------------------------------------------------------------------------

def test_comparison_reads_the_verdict_logged_on_the_parent_run(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    trial = int(best(store.study, store=store.root)["number"])
    log_verdict(store, "helps", HELPS, trial=trial)
    found = comparison(store.study, store=store.root)
    assert found == {**HELPS, "kd_repeats": 3, "best_trial": trial, "kd_verdict": "helps"}
    assert isinstance(found["kd_repeats"], int) and isinstance(found["best_trial"], int)


def test_an_incomplete_verdict_returns_no_gain_even_over_stale_numbers(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    stale_then_incomplete(store, "repeat 2 of the no-KD arm was cut by the deadline")
    found = comparison(store.study, store=store.root)
    assert found["kd_verdict"] == "incomplete"
    assert found["kd_verdict_reason"] == "repeat 2 of the no-KD arm was cut by the deadline"
    assert not {"kd_gain", "kd_gain_ci95_low", "kd_gain_ci95_high", "kd_repeats", "nokd_test_acc"} & set(found)
    assert found["teacher_test_acc"] == HELPS["teacher_test_acc"]  # numbers that need no pairs stay


def test_the_verdict_tag_is_authoritative_over_finite_gain_metrics(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    log_verdict(store, "incomplete", HELPS, reason="interrupted (Ctrl-C) during the repeats")
    found = comparison(store.study, store=store.root)
    assert "kd_gain" not in found and "nokd_test_acc" not in found
    MlflowClient(store.tracking_uri).delete_tag(parent_run_id(store), "kd_verdict")
    assert "kd_gain" not in comparison(store.study, store=store.root)  # no verdict: no gain to trust


def test_nan_metrics_count_as_missing(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    log_verdict(store, "helps", {**HELPS, "nokd_val_acc": math.nan, "distilled_val_acc": math.nan})
    found = comparison(store.study, store=store.root)
    assert found["kd_gain"] == HELPS["kd_gain"]
    assert "nokd_val_acc" not in found and "distilled_val_acc" not in found


def test_comparison_of_an_unknown_study_names_the_known_ones(swept):
    with pytest.raises(ConfigError, match=r"unknown study 'nope'.*studies: s1"):
        comparison("nope", store=swept.root)


@pytest.mark.parametrize(("table", "line"), [
    ({**HELPS, "kd_repeats": 3, "best_trial": 7, "kd_verdict": "helps"},
     "KD verdict: helps — gain +0.082 (95% CI +0.051 to +0.113, 3 paired seeds) for trial 7; "
     "distilled 0.744, no-KD 0.662 (test means)"),
    ({"kd_verdict": "hurts", "kd_gain": -0.0251, "kd_gain_ci95_low": -0.04, "kd_gain_ci95_high": -0.0102,
      "kd_repeats": 2, "best_trial": 0, "distilled_test_acc": 0.8283, "nokd_test_acc": 0.8534},
     "KD verdict: hurts — gain -0.025 (95% CI -0.040 to -0.010, 2 paired seeds) for trial 0; "
     "distilled 0.828, no-KD 0.853 (test means)"),
    ({"kd_verdict": "no_difference", "kd_gain": 0.0074, "kd_gain_ci95_low": -0.0425, "kd_gain_ci95_high": 0.0573,
      "kd_repeats": 3, "kd_verdict_trial": 4},  # the sweep's own verdict dict names the trial so
     "KD verdict: no_difference — gain +0.007 (95% CI -0.043 to +0.057, 3 paired seeds) for trial 4"),
    ({"kd_verdict": "incomplete", "kd_verdict_reason": "no COMPLETE trial", "teacher_test_acc": 0.97},
     "KD verdict: incomplete (no COMPLETE trial)"),
    ({}, "KD verdict: none recorded (the sweep is still searching, ran with --repeats 0, or predates verdicts)"),
])
def test_verdict_line(table, line):
    assert verdict_line(table) == line


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


def test_pareto_tags_are_chosen_on_validation(split, tmp_path):
    store = copy_store(split[0], tmp_path)
    _, frame, _, test_best = split
    front = update_pareto_tags(store.study, store=store.root)
    assert front == sorted(pareto(frame)["number"])
    assert _tagged(store)[test_best] == "false"


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
        user_attrs={"mlflow_run_id": run.info.run_id, "best_val_acc": 1.0, "test_acc": 1.0, "student_params": 1,
                    "train_time_s": 1e-3}))
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
