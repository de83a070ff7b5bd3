"""A resumed study never repeats itself: each invocation seeds its sampler anew (grid and QMC go on
from what the storage says was visited), and a proposal identical to a finished trial is closed
untrained, without an MLflow run."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from _sweep_helpers import copy_store, load_study, sweep_runs, sweep_template, write_sweep_file  # noqa: F401
from cli.main import app

SHORT = {"train": {"epochs": 3, "patience": 0}, "min_epochs": 1, "pruner": "none"}


def run(*args: str):
    """``kdsweep run`` in this process (the sweep runs its trials in a thread, as from a terminal)."""
    return CliRunner().invoke(app, ["run", "--task", "digits", "--study", "s", "--repeats", "0", "--budget", "120s",
                                    *args])


def _settings(trial) -> tuple:
    return tuple(sorted(trial.params.items()))


@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc"])
def test_a_resumed_study_trains_no_configuration_twice(tmp_path, sweep_template, sampler):
    store = copy_store(sweep_template, tmp_path / "store")
    sweep = write_sweep_file(tmp_path / "short.yaml", {**SHORT, "sampler": sampler})
    for _ in range(2):  # the first run, then its resume with the same command
        result = run("--config", str(sweep), "--n-trials", "3", "--store", str(store))
        assert result.exit_code == 0, result.output

    trials = load_study(store, "s").trials
    trained = [t for t in trials if t.user_attrs.get("stop_reason") != "duplicate"]
    assert len(trained) == 6
    assert len({_settings(t) for t in trained}) == len(trained), [t.params for t in trained]


def test_a_proposal_that_repeats_a_finished_trial_is_not_trained_again(tmp_path, sweep_template):
    # One value per field: every proposal after the first is the same configuration.
    store = copy_store(sweep_template, tmp_path / "store")
    sweep = write_sweep_file(tmp_path / "one-point.yaml", {**SHORT, "space": {
        "temperature": [4.0], "alpha": [0.5], "ratio": [0.25], "lr": [0.003]}})
    result = run("--config", str(sweep), "--n-trials", "3", "--store", str(store))

    assert result.exit_code == 0, result.output
    trials = load_study(store, "s").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL"]
    assert all(t.user_attrs["stop_reason"] == "duplicate" and t.user_attrs["kdsweep.duplicate_of"] == 0
               for t in trials[1:])
    assert list(sweep_runs(store, "s").children) == [0]  # only the trained one has an MLflow run
