"""``kdsweep run`` end to end: real short sweeps on ``digits``, read back from Optuna and MLflow.

Each sweep runs the CLI in a subprocess, in its own copy of one prepared store (see
``_sweep_helpers.sweep_template``); the tests then check the study and the MLflow experiment it
leaves behind against the spec: one parent run, one child run per trial with matching states and
links, per-epoch metrics and a checkpoint per child, the budget, resume, pruning, parallel
workers, presets, the no-KD baseline, and the shipped sweep files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from _sweep_helpers import (
    REPO,
    CliRun,
    check_sweep_invariants,
    copy_store,
    epoch_steps,
    has_checkpoint,
    load_study,
    mlflow_client,
    run_cli,
    started_trials,
    sweep_runs,
    sweep_template,  # noqa: F401  (a fixture)
    write_sweep_file,
)

from kdcore import PRESETS
from sweeps.search.space import SearchSpace


def within_budget(run: CliRun, budget_s: float) -> bool:
    """The spec's bound on a whole ``kdsweep run`` invocation, measured around the process."""
    return run.wall_s <= budget_s * 1.02 + 5


@dataclass
class Sweep:
    store: Path
    study: str
    run: CliRun


# --------------------------------------------------------------------------------------------
# One plain 30 s sweep, shared by the tests that only read it
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory, sweep_template) -> Sweep:
    root = tmp_path_factory.mktemp("sweep")
    store = copy_store(sweep_template, root / "store")
    run = run_cli("run", "--task", "digits", "--budget", "30s", "--store", str(store), "--study", "s", cwd=root)
    return Sweep(store, "s", run)


def test_sweep_exits_0(finished):
    assert finished.run.returncode == 0, finished.run.explain()


def test_sweep_logs_one_parent_run_tagged_study(finished):
    runs = sweep_runs(finished.store, "s")
    assert runs.parent.data.tags["kdsweep.kind"] == "study"
    assert runs.parent.data.tags["optuna.study"] == "s"
    assert runs.parent.info.status == "FINISHED"
    assert runs.parent.data.tags["state"] == "FINISHED"


def test_sweep_logs_one_child_run_per_trial_with_matching_state_and_links(finished):
    study, runs = check_sweep_invariants(finished.store, "s")
    assert len(started_trials(study)) >= 3, "a 30 s digits sweep runs several trials"
    assert min(runs.children) == 0


def test_sweep_stays_within_its_budget(finished):
    assert finished.run.returncode == 0, finished.run.explain()
    assert within_budget(finished.run, 30), f"took {finished.run.wall_s:.1f}s for a 30s budget"


def test_median_pruner_prunes_trials_and_keeps_their_metrics_and_checkpoint(finished):
    study = load_study(finished.store, "s")
    pruned = [t for t in study.trials if t.state.name == "PRUNED" and t.user_attrs.get("stop_reason") == "pruned"]
    assert pruned, f"no trial pruned by the median pruner among {len(study.trials)}"
    client, runs = mlflow_client(finished.store), sweep_runs(finished.store, "s")
    for trial in pruned:
        run = runs.children[trial.number]
        assert run.data.tags["state"] == "PRUNED"
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == trial.user_attrs["epochs_run"]
        assert max(trial.intermediate_values) == trial.user_attrs["epochs_run"]
        assert has_checkpoint(client, run.info.run_id)


def test_sweep_ends_with_a_no_kd_baseline_and_the_comparison_on_the_parent(finished):
    runs = sweep_runs(finished.store, "s")
    metrics = runs.parent.data.metrics
    for name in ("teacher_test_acc", "distilled_test_acc", "nokd_test_acc", "kd_gain", "retention"):
        assert name in metrics, f"parent run lacks metric {name}"
    assert metrics["kd_gain"] == pytest.approx(metrics["distilled_test_acc"] - metrics["nokd_test_acc"])
    assert metrics["retention"] == pytest.approx(metrics["distilled_test_acc"] / metrics["teacher_test_acc"])
    [baseline] = runs.baselines
    assert baseline.info.run_name == "baseline-no-kd"
    assert baseline.data.tags["kdsweep.kind"] == "baseline"
    assert float(baseline.data.params["alpha"]) == 0.0
    assert baseline.info.status == "FINISHED"
    assert baseline.data.metrics["test_acc"] == pytest.approx(metrics["nokd_test_acc"])


def test_the_baseline_reuses_the_best_trials_settings(finished):
    study = load_study(finished.store, "s")
    [baseline] = sweep_runs(finished.store, "s").baselines
    best = study.best_trial
    assert baseline.data.tags["kdsweep.baseline_of_trial"] == str(best.number)
    for name, value in best.params.items():
        assert float(baseline.data.params[name]) == pytest.approx(0.0 if name == "alpha" else value)


def test_a_study_resumes_only_with_the_same_search_space(finished, tmp_path):
    journal = (finished.store / "optuna.journal").read_bytes()
    other = write_sweep_file(tmp_path / "other.yaml", {"space": {"alpha": {"low": 0.0, "high": 0.5}}})
    run = run_cli("run", "--task", "digits", "--config", str(other), "--study", "s", "--budget", "20s",
                  "--store", str(finished.store), cwd=tmp_path)
    assert run.returncode == 2, run.explain()
    assert run.stderr.strip().startswith("error:") and "another search space" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert (finished.store / "optuna.journal").read_bytes() == journal


# --------------------------------------------------------------------------------------------
# Resume: the same --study again
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resumed(finished, tmp_path_factory) -> tuple[list, str, Sweep]:
    """The finished sweep's trials and parent run id, then a second 15 s invocation on a copy of it."""
    assert finished.run.returncode == 0, finished.run.explain()
    before = [(t.number, t.state, t.value) for t in load_study(finished.store, "s").trials]
    parent_id = sweep_runs(finished.store, "s").parent.info.run_id
    root = tmp_path_factory.mktemp("resume")
    store = copy_store(finished.store, root / "store")
    run = run_cli("run", "--task", "digits", "--budget", "15s", "--store", str(store), "--study", "s", cwd=root)
    return before, parent_id, Sweep(store, "s", run)


def test_resume_exits_0_within_the_new_budget(resumed):
    _, _, again = resumed
    assert again.run.returncode == 0, again.run.explain()
    assert within_budget(again.run, 15), f"took {again.run.wall_s:.1f}s for a 15s budget"


def test_resume_keeps_the_finished_trials_and_continues_the_numbering(resumed):
    before, _, again = resumed
    trials = load_study(again.store, "s").trials
    assert [(t.number, t.state, t.value) for t in trials[:len(before)]] == before
    new = [t for t in trials[len(before):] if t.state.name != "WAITING"]
    assert new, "the second invocation ran no trial: its budget must be its own"
    assert [t.number for t in new] == list(range(len(before), len(before) + len(new)))


def test_resume_reopens_the_same_parent_run(resumed):
    _, parent_id, again = resumed
    study, runs = check_sweep_invariants(again.store, "s")
    assert runs.parent.info.run_id == parent_id
    assert runs.parent.info.status == "FINISHED"
    assert runs.parent.data.tags["invocations"] == "2"
    assert study.user_attrs["kdsweep.invocations"] == 2


# --------------------------------------------------------------------------------------------
# Parallel workers
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parallel(tmp_path_factory, sweep_template) -> Sweep:
    root = tmp_path_factory.mktemp("jobs2")
    store = copy_store(sweep_template, root / "store")
    run = run_cli("run", "--task", "digits", "--budget", "25s", "--jobs", "2", "--store", str(store),
                  "--study", "par", cwd=root)
    return Sweep(store, "par", run)


def test_jobs_2_exits_0_within_the_budget(parallel):
    assert parallel.run.returncode == 0, parallel.run.explain()
    assert within_budget(parallel.run, 25), f"took {parallel.run.wall_s:.1f}s for a 25s budget"


def test_jobs_2_runs_trials_in_two_worker_processes(parallel):
    trials = started_trials(load_study(parallel.store, "par"))
    pids = {t.user_attrs["kdsweep.lease"]["pid"] for t in trials}
    assert len(pids) == 2, f"lease pids {pids}"


def test_jobs_2_keeps_the_parent_child_invariants(parallel):
    study, runs = check_sweep_invariants(parallel.store, "par")
    assert len(started_trials(study)) >= 2
    assert runs.baselines and runs.baselines[0].info.status == "FINISHED"


# --------------------------------------------------------------------------------------------
# Presets, a fresh store, sweep files
# --------------------------------------------------------------------------------------------

def preset_trials_in(space: SearchSpace) -> list[tuple[str, dict]]:
    """The presets --enqueue-presets should put first, with their values inside the space."""
    expected = []
    for name, values in PRESETS.items():
        params = {k: v for k, v in values.items() if k in space.dimensions and space.dimensions[k].contains(v)}
        if params:
            expected.append((name, params))
    return expected


def test_enqueue_presets_runs_the_named_presets_first(tmp_path, sweep_template):
    store = copy_store(sweep_template, tmp_path / "store")
    sweep = write_sweep_file(tmp_path / "short.yaml", {"train": {"epochs": 6}})
    expected = preset_trials_in(SearchSpace.parse(None, {"epochs": 6}))
    assert len(expected) >= 3
    run = run_cli("run", "--task", "digits", "--config", str(sweep), "--enqueue-presets", "--n-trials",
                  str(len(expected)), "--budget", "60s", "--store", str(store), "--study", "presets", cwd=tmp_path)
    assert run.returncode == 0, run.explain()
    study, _ = check_sweep_invariants(store, "presets")
    trials = started_trials(study)
    assert len(trials) == len(expected)
    for trial, (name, params) in zip(trials, expected):
        assert trial.user_attrs.get("kdsweep.preset") == name
        assert {k: trial.params[k] for k in params} == pytest.approx(params)


@dataclass
class TwoInvocations:
    store: Path
    first: CliRun
    started_after_first: int
    second: CliRun


@pytest.fixture(scope="module")
def leftovers(tmp_path_factory) -> TwoInvocations:
    """A study whose first invocation, on a store folder that does not exist yet, enqueues every
    preset but runs only two of them; the second invocation asks for one trial."""
    root = tmp_path_factory.mktemp("leftovers")
    store = root / "new" / "store"
    sweep = write_sweep_file(root / "short.yaml", {"train": {"epochs": 4}})
    args = ("run", "--task", "digits", "--config", str(sweep), "--budget", "45s", "--store", str(store),
            "--study", "leftovers")
    first = run_cli(*args, "--enqueue-presets", "--n-trials", "2", cwd=root)
    if first.returncode != 0:
        return TwoInvocations(store, first, 0, first)
    started = len(started_trials(load_study(store, "leftovers")))
    return TwoInvocations(store, first, started, run_cli(*args, "--n-trials", "1", cwd=root))


def test_sweep_creates_a_missing_store_folder(leftovers):
    assert leftovers.first.returncode == 0, leftovers.first.explain()
    assert (leftovers.store / "optuna.journal").is_file() and (leftovers.store / "mlflow.db").is_file()
    assert leftovers.started_after_first == 2
    check_sweep_invariants(leftovers.store, "leftovers")


def test_n_trials_counts_trials_enqueued_by_an_earlier_invocation(leftovers):
    assert leftovers.second.returncode == 0, leftovers.second.explain()
    started = len(started_trials(load_study(leftovers.store, "leftovers")))
    assert started - leftovers.started_after_first == 1, \
        f"--n-trials 1 ran {started - leftovers.started_after_first} trials"


def test_a_trial_cut_short_in_its_first_epoch_still_logs_and_reports_that_epoch(tmp_path, sweep_template):
    # The budget's end (or Ctrl-C) can stop a trial inside its first epoch: the trainer then
    # validates the partial epoch and counts it (epochs_run 1, best_epoch 1), so the run's
    # per-epoch metrics and the trial's report hook must see it too.
    import time

    from kdcore import TrainConfig
    from sweeps.tracking.logged_run import prepare, run_params, train_logged
    from sweeps.tracking.store import Store
    from sweeps.tracking.run_logger import RunLogger

    store = Store.resolve(copy_store(sweep_template, tmp_path / "store"))
    prepared = prepare("digits", store, device="cpu")
    client = store.client()
    config = TrainConfig(epochs=5, device="cpu")
    logger = RunLogger.start(client, store.experiment(client, "cut"), "trial-0000",
                             params=run_params(prepared, config))
    reported = []
    run = train_logged(prepared, config, logger, on_epoch=lambda epoch: reported.append(epoch.epoch),
                       deadline=time.time())
    assert (run.result.stop_reason, run.result.epochs_run) == ("deadline", 1)
    assert reported == [1]
    assert epoch_steps(client, logger.run_id) == [1]


SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_at_least_two_example_sweep_files_are_shipped():
    assert len(SHIPPED) >= 2
    assert "digits-quick.yaml" in {p.name for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_sweep_file_is_valid(path, tmp_path):
    import time

    from cli._common import read_yaml
    from kdcore import make_config
    from sweeps.search.budget import parse_budget
    from sweeps.search.plan import SweepPlan
    from sweeps.search.sweep import check_sweep
    from sweeps.search.sweep_file import DEFAULT_BUDGET, SweepFile

    assert path.read_text().startswith(f"# kdsweep run --config configs/{path.name}\n"), \
        "a sweep file opens with its launch command"
    file = make_config(SweepFile, **read_yaml(path))
    space = SearchSpace.parse(file.space, file.train)
    plan = SweepPlan(study=path.stem, task=file.task or "mnist1d", store_root=str(tmp_path),
                     tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                     storage_url=file.storage or str(tmp_path / "optuna.journal"), space=file.space,
                     fixed=file.train, sampler=file.sampler or "tpe", pruner=file.pruner or "median",
                     seed=file.seed or 0, budget_s=parse_budget(file.budget or DEFAULT_BUDGET),
                     started_at=time.time(), min_epochs=file.min_epochs or 3, n_trials=file.n_trials,
                     jobs=file.jobs or 1)
    assert check_sweep(plan, bool(file.enqueue_presets)).describe() == space.describe()
    assert list(tmp_path.iterdir()) == [], "checking a sweep file writes nothing"


def test_digits_quick_sweep_file_runs_a_short_sweep(tmp_path, sweep_template):
    store = copy_store(sweep_template, tmp_path / "store")
    run = run_cli("run", "--config", str(REPO / "configs" / "digits-quick.yaml"), "--budget", "25s",
                  "--n-trials", "3", "--store", str(store), cwd=tmp_path)
    assert run.returncode == 0, run.explain()
    study, runs = check_sweep_invariants(store, "digits-quick")  # the study is named after the file
    trials = started_trials(study)
    assert len(trials) == 3
    for trial in trials:
        assert trial.params["batch_size"] in (32, 64, 96, 128)
        assert trial.params["ratio"] in (0.125, 0.25, 0.5)
        params = runs.children[trial.number].data.params
        assert (params["epochs"], params["patience"], params["task"]) == ("8", "3", "digits")
    assert "sweep.yaml" in {f.path for f in mlflow_client(store).list_artifacts(runs.parent.info.run_id)}
