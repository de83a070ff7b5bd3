"""Cost-aware sweeps through the real CLI: every trial's measured cost, a two-objective search with a
limit that rejects students before training, the front and `best --cheapest` on the study's cost,
the INT8 copy, and `kdsweep export` files that load with PyTorch alone."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from _sweep_helpers import (
    Background,
    check_sweep_invariants,
    copy_store,
    load_study,
    mlflow_client,
    run_cli,
    started_trials,
    sweep_runs,
    sweep_template,  # noqa: F401  (a fixture)
    wait_until,
    write_sweep_file,
)

from sweeps import best, pareto, trials
from sweeps.export import export_student
from sweeps.tracking.storage import open_storage

# Digits students: ratio 0.1 has 2,662 parameters, 0.25 has 8,970, 0.5 has 26,122.
MAX_PARAMS = 20_000
SPACE = {"space": {"ratio": [0.1, 0.25, 0.5], "temperature": 4.0, "alpha": 0.7, "lr": {"low": 3e-3, "high": 3e-2, "log": True}},
         "train": {"epochs": 6, "patience": 2}}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, sweep_template) -> Path:
    """A pareto sweep of 6 trials on params, limited to MAX_PARAMS; random sampling covers every ratio."""
    root = tmp_path_factory.mktemp("cost")
    store = copy_store(sweep_template, root / "store")
    sweep = write_sweep_file(root / "cost.yaml", {**SPACE, "max_params": MAX_PARAMS})
    run = run_cli("run", "--task", "digits", "--config", str(sweep), "--study", "c", "--objective", "pareto",
                  "--cost", "params", "--sampler", "random", "--seed", "3", "--n-trials", "6", "--repeats", "2",
                  "--budget", "300s", "--store", str(store), cwd=root)
    assert run.returncode == 0, run.explain()
    return store


def test_every_trial_logs_its_measured_cost(swept):
    frame = trials("c", store=swept)
    ran = frame[frame["epochs_run"] > 0]
    assert len(ran) >= 2
    for column in ("student_flops", "latency_ms_b1", "latency_ms_b256", "int8_size_bytes", "int8_val_acc",
                   "int8_test_acc", "int8_latency_ms_b1", "val_retention"):
        assert ran[column].notna().all() and (ran[column] > 0).all(), column
    assert (ran["latency_ms_b256"] > ran["latency_ms_b1"]).all()
    assert (ran["int8_size_bytes"] < ran["student_size_bytes"]).all()  # the MLP's Linear layers shrink
    assert ((ran["int8_val_acc"] - ran["best_val_acc"]).abs() < 0.05).all()
    # The same architecture reports the same costs in every trial (measured once per architecture).
    for _, same in frame.groupby("ratio"):
        assert same["latency_ms_b1"].nunique() == 1 and same["student_flops"].nunique() == 1
    run = mlflow_client(swept).get_run(ran.iloc[0]["mlflow_run_id"])
    assert {"student_flops", "latency_ms_b1", "int8_test_acc"} <= set(run.data.metrics)
    assert run.data.tags["int8_method"].startswith("torchao") and run.data.tags["int8_layers"]


def test_a_student_over_the_limit_is_rejected_before_training(swept):
    study, runs = check_sweep_invariants(swept, "c")
    rejected = [t for t in started_trials(study) if t.user_attrs.get("stop_reason") == "infeasible"]
    assert rejected, "ratio 0.5 (26,122 parameters) breaks --max-params 20000"
    for trial in rejected:
        assert trial.state.name == "PRUNED" and trial.user_attrs["epochs_run"] == 0
        assert trial.user_attrs["student_params"] > MAX_PARAMS
        assert "max_params (student_params 26122 > 20000)" in trial.user_attrs["infeasible"]
        run = runs.children[trial.number]
        assert run.data.tags["stop_reason"] == "infeasible" and run.data.tags["feasible"] == "false"
        assert not mlflow_client(swept).get_metric_history(run.info.run_id, "val_acc")  # nothing trained
    frame = trials("c", store=swept)
    assert not frame.loc[frame["student_params"] > MAX_PARAMS, "feasible"].any()
    assert (frame.loc[frame["state"] == "COMPLETE", "student_params"] <= MAX_PARAMS).all()


def test_an_rdb_storage_read_by_sql_finds_the_same_trials_infeasible(swept, tmp_path):
    # Optuna keeps each constraint under its own "constraints:<name>" system attr.
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.copy_study(from_study_name="c", from_storage=open_storage(str(swept / "optuna.journal")),
                      to_storage=open_storage(url))
    by_sql = trials("c", storage=url, store=swept)
    assert not by_sql["feasible"].all()
    pd.testing.assert_frame_equal(by_sql, trials("c", store=swept))


def test_the_study_searches_accuracy_against_params_without_pruning(swept):
    study = load_study(swept, "c")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.user_attrs["kdsweep.objective"] == "pareto vs params (max_params 20000)"
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert complete and all(t.values == [t.user_attrs["best_val_acc"], t.user_attrs["student_params"]]
                            for t in complete)
    assert not any(t.user_attrs.get("stop_reason") == "pruned" for t in study.trials)


def test_front_and_cheapest_use_the_study_cost(swept):
    frame = trials("c", store=swept)
    assert frame.attrs["minimize"] == ("student_params",)
    front = pareto(frame[frame["feasible"]], minimize=["student_params"])
    assert set(frame.loc[frame["pareto"], "number"]) == set(front["number"])
    shown = run_cli("pareto", "c", "--format", "json", "--store", str(swept), cwd=swept.parent)
    assert shown.returncode == 0, shown.explain()
    assert {r["number"] for r in json.loads(shown.stdout)} == set(front["number"])
    cheapest = run_cli("best", "c", "--cheapest", "--format", "json", "--store", str(swept), cwd=swept.parent)
    assert cheapest.returncode == 0, cheapest.explain()
    row = json.loads(cheapest.stdout)
    complete = frame[(frame["state"] == "COMPLETE") & frame["feasible"]]
    assert row["student_params"] == complete["student_params"].min()


def test_the_verdict_judges_the_most_accurate_trial_within_the_limits(swept):
    runs = sweep_runs(swept, "c")
    chosen = int(runs.parent.data.tags["best_trial"])
    assert chosen == int(best(trials("c", store=swept))["number"])
    assert load_study(swept, "c").trials[chosen].user_attrs["student_params"] <= MAX_PARAMS


LOAD_WITH_TORCH_ALONE = """
import sys, torch
path, fmt = sys.argv[1], sys.argv[2]
model = torch.jit.load(path) if fmt == "torchscript" else torch.export.load(path).module()
for batch in (1, 7):
    assert model(torch.randn(batch, 64)).shape == (batch, 10)
assert not [m for m in sys.modules if m.split(".")[0] in ("kdcore", "sweeps", "cli", "optuna", "mlflow")]
print("ok")
"""


def _loads_with_pytorch_alone(path: Path, fmt: str) -> None:
    loaded = subprocess.run([sys.executable, "-I", "-c", LOAD_WITH_TORCH_ALONE, str(path), fmt], cwd=path.parent,
                            capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "ok", loaded.stderr


def test_kdsweep_export_writes_an_int8_student_that_loads_with_pytorch_alone(swept, tmp_path):
    out = tmp_path / "student.pt2"
    done = run_cli("export", "c", "--int8", "--out", str(out), "--store", str(swept), cwd=tmp_path)
    assert done.returncode == 0, done.explain()
    row = best(trials("c", store=swept))
    recorded = row["int8_test_acc"]
    assert f"reloaded with PyTorch alone: test_acc {recorded:.4f}; the trial recorded {recorded:.4f}" in done.stdout
    _loads_with_pytorch_alone(out, "pt2")
    logged = mlflow_client(swept).list_artifacts(row["mlflow_run_id"], "export")
    assert "student.pt2" in {Path(f.path).name for f in logged}


@pytest.mark.parametrize("fmt", ["pt2", "torchscript"])
def test_an_exported_fp32_student_scores_as_its_trial_did(swept, tmp_path, fmt):
    frame = trials("c", store=swept)
    number = int(frame.loc[frame["state"] == "COMPLETE", "number"].iloc[0])
    done = export_student("c", tmp_path / f"student.{fmt}", trial=number, format=fmt, log_to_mlflow=False, store=swept)
    assert done.trial == number and done.size_bytes > 0
    assert done.test_acc == pytest.approx(frame.set_index("number").loc[number, "test_acc"], abs=1e-9)
    _loads_with_pytorch_alone(done.path, fmt)


def test_a_pareto_trial_whose_worker_died_before_its_tell_keeps_both_values(tmp_path, sweep_template):
    # The reaper records a finished trial for its dead worker: in a two-objective study it must tell
    # both values (one value would make Optuna mark it FAIL, losing a finished trial).
    store = copy_store(sweep_template, tmp_path / "store")
    sweep = write_sweep_file(tmp_path / "cost.yaml", SPACE)
    marker = tmp_path / "paused"
    args = ["run", "--task", "digits", "--config", str(sweep), "--study", "p", "--objective", "pareto",
            "--repeats", "0", "--store", str(store)]
    process = Background(*args, "--budget", "120s", cwd=tmp_path, name="paused",
                         env={"KDSWEEP_TEST_PAUSE_AT": "trial.finished", "KDSWEEP_TEST_PAUSE_FILE": str(marker)})
    try:
        wait_until(marker.exists, timeout=90, process=process, what="the first trial's run finished, not told")
        process.signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.stop()
    [first] = [t for t in load_study(store, "p").trials if t.state.name == "RUNNING"]
    done = run_cli(*args, "--budget", "90s", "--n-trials", "1", cwd=tmp_path)
    assert done.returncode == 0, done.explain()
    reaped = load_study(store, "p").trials[first.number]
    assert reaped.state.name == "COMPLETE"
    assert reaped.values == [reaped.user_attrs["best_val_acc"], reaped.user_attrs["student_params"]]
