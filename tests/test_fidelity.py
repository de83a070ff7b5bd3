"""`kdsweep run --fidelity data`: every trial's first --min-epochs epochs train on a share of the
labelled data, as its MLflow history shows; the setting belongs to the study (a resume must repeat
it, and the printed resume hint does)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from _sweep_helpers import (
    check_sweep_invariants,
    copy_store,
    load_study,
    mlflow_client,
    run_cli,
    started_trials,
    sweep_template,  # noqa: F401  (a fixture)
    write_sweep_file,
)

SPACE = {"space": {"ratio": 0.25, "temperature": 4.0, "alpha": 0.7, "lr": {"low": 1e-4, "high": 3e-2, "log": True}},
         "train": {"epochs": 5, "patience": 0}}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, sweep_template) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("fidelity")
    store = copy_store(sweep_template, root / "store")
    sweep = write_sweep_file(root / "fid.yaml", SPACE)
    run = run_cli("run", "--task", "digits", "--config", str(sweep), "--study", "f", "--fidelity", "data:0.3",
                  "--min-epochs", "2", "--sampler", "random", "--n-trials", "5", "--repeats", "0",
                  "--store", str(store), cwd=root)
    assert run.returncode == 0, run.explain()
    return root, store, run.stdout


def test_each_trial_trains_its_first_min_epochs_on_the_share(swept):
    _, store, _ = swept
    study, runs = check_sweep_invariants(store, "f")
    client = mlflow_client(store)
    for trial in started_trials(study):
        run = runs.children[trial.number]
        assert run.data.params["low_fidelity_epochs"] == "2" and run.data.params["low_fidelity_fraction"] == "0.3"
        shares = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_fraction"), key=lambda m: m.step)]
        assert shares == [0.3, 0.3, 1.0, 1.0, 1.0][: trial.user_attrs["epochs_run"]]
    assert study.user_attrs["kdsweep.fidelity"] == "data:0.3"
    assert runs.parent.data.tags["fidelity"] == "data:0.3"


def test_the_printed_resume_hint_carries_the_fidelity_and_a_different_one_is_refused(swept):
    root, store, stdout = swept
    hint = next(line for line in stdout.splitlines() if line.startswith("resume:")).removeprefix("resume:").strip()
    assert "--fidelity data:0.3 --min-epochs 2" in hint
    before = len(load_study(store, "f").trials)

    other = [a for a in shlex.split(hint)[1:] if a not in ("--fidelity", "data:0.3")]
    refused = run_cli(*other, "--n-trials", "1", "--repeats", "0", cwd=root)
    assert refused.returncode == 2, refused.explain()
    assert "was run with --fidelity data:0.3, not epochs" in refused.stderr
    assert len(load_study(store, "f").trials) == before

    resumed = run_cli(*shlex.split(hint)[1:], "--n-trials", "1", "--repeats", "0", cwd=root)
    # 1: the run's only trial may be pruned, which `run` reports as no trial completed.
    assert resumed.returncode in (0, 1) and "Traceback" not in resumed.stderr, resumed.explain()
    study = load_study(store, "f")
    assert len(study.trials) == before + 1 and study.trials[-1].state.name in ("COMPLETE", "PRUNED")
    assert study.trials[-1].params.keys() == {"lr"}
