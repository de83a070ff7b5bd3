"""``kdsweep run`` end to end: real short sweeps on ``digits``, read back from Optuna and MLflow.

Each sweep runs the CLI in a subprocess, in its own copy of one prepared store (see
``_sweep_helpers.sweep_template``); the tests then check the study and the MLflow experiment it
leaves behind against the spec: one parent run, one child run per trial with matching states and
links, per-epoch metrics and a checkpoint per child, the budget, resume, pruning, parallel
workers, presets with all their settings, the KD verdict's paired repeats, and the shipped sweep
files. (The verdict's maths and its cut cases: tests/test_verdict.py.)
"""

from __future__ import annotations

import time
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
from sweeps.search.overrides import STUDY_SETTINGS
from sweeps.search.space import SearchSpace
from sweeps.verdict import VERDICTS
from sweeps.verdict.repeats import FINISHED


def within_budget(run: CliRun, budget_s: float) -> bool:
    """The spec's bound on a whole ``kdsweep run`` invocation, measured around the process."""
    return run.wall_s <= budget_s * 1.02 + 5


@dataclass
class Sweep:
    store: Path
    study: str
    run: CliRun


# --------------------------------------------------------------------------------------------
# One plain budgeted sweep, shared by the tests that only read it
# --------------------------------------------------------------------------------------------

FINISHED_BUDGET_S = 90


@pytest.fixture(scope="module")
def finished(tmp_path_factory, sweep_template) -> Sweep:
    root = tmp_path_factory.mktemp("sweep")
    store = copy_store(sweep_template, root / "store")
    # Ended by --n-trials on a quiet machine (about 20 s), by the budget on a very busy one: either
    # way enough trials for the median pruner, and the budget still bounds the run.
    run = run_cli("run", "--task", "digits", "--budget", f"{FINISHED_BUDGET_S}s", "--n-trials", "12", "--store",
                  str(store), "--study", "s", cwd=root)
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
    assert len(started_trials(study)) >= 3, "a digits sweep of 12 trials runs several"
    assert min(runs.children) == 0


def test_sweep_stays_within_its_budget(finished):
    assert finished.run.returncode == 0, finished.run.explain()
    assert within_budget(finished.run, FINISHED_BUDGET_S), f"took {finished.run.wall_s:.1f}s"


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


def test_a_budgeted_sweep_ends_with_a_verdict_that_never_rests_on_cut_runs(finished):
    # The default 3 repeats within the budget: the verdict is a word, and a gain is logged only
    # when all 3 pairs finished; every repeat run tagged COMPLETE stopped by its own rule.
    runs = sweep_runs(finished.store, "s")
    tags, metrics = runs.parent.data.tags, runs.parent.data.metrics
    assert tags["kd_verdict"] in VERDICTS
    if tags["kd_verdict"] == "incomplete":
        assert "kd_gain" not in metrics and tags["kd_verdict_reason"]
    else:
        assert metrics["kd_repeats"] == 3 and len(runs.repeats) == 6
    for run in runs.repeats:
        assert run.data.tags["state"] in ("COMPLETE", "CUT")
        assert (run.data.tags["state"] == "COMPLETE") == (run.data.tags["stop_reason"] in FINISHED)


# --------------------------------------------------------------------------------------------
# The KD verdict: --n-trials 3 --repeats 2, with time to spare
# --------------------------------------------------------------------------------------------

PARENT_VERDICT_METRICS = ("kd_gain", "kd_gain_ci95_low", "kd_gain_ci95_high", "kd_repeats", "distilled_test_acc",
                          "nokd_test_acc", "retention", "teacher_test_acc", "best_trial", "distilled_val_acc",
                          "nokd_val_acc")


@pytest.fixture(scope="module")
def verdict(tmp_path_factory, sweep_template) -> Sweep:
    root = tmp_path_factory.mktemp("verdict")
    store = copy_store(sweep_template, root / "store")
    run = run_cli("run", "--task", "digits", "--n-trials", "3", "--repeats", "2", "--budget", "90s",
                  "--store", str(store), "--study", "v", cwd=root)
    return Sweep(store, "v", run)


def test_verdict_sweep_logs_every_verdict_metric_and_tag_on_the_parent(verdict):
    assert verdict.run.returncode == 0, verdict.run.explain()
    study, runs = check_sweep_invariants(verdict.store, "v")
    metrics, tags = runs.parent.data.metrics, runs.parent.data.tags
    assert [name for name in PARENT_VERDICT_METRICS if name not in metrics] == []
    assert tags["kd_verdict"] in ("helps", "hurts", "no_difference"), tags.get("kd_verdict_reason")
    assert tags["kd_verdict_reason"] == ""
    assert tags["kd_verdict_trial"] == str(study.best_trial.number) == str(int(metrics["best_trial"]))
    assert metrics["kd_repeats"] == 2
    assert metrics["kd_gain_ci95_low"] <= metrics["kd_gain"] <= metrics["kd_gain_ci95_high"]
    assert metrics["kd_gain"] == pytest.approx(metrics["distilled_test_acc"] - metrics["nokd_test_acc"])
    assert metrics["retention"] == pytest.approx(metrics["distilled_test_acc"] / metrics["teacher_test_acc"])


def test_verdict_numbers_are_the_means_and_paired_interval_of_the_repeat_runs(verdict):
    from sweeps.verdict import paired_interval, verdict_word

    runs = sweep_runs(verdict.store, "v")
    by_arm = {arm: sorted((int(r.data.tags["kdsweep.repeat"]), r.data.metrics["test_acc"]) for r in runs.repeats
                          if r.data.tags["kdsweep.arm"] == arm) for arm in ("kd", "nokd")}
    kd, nokd = [acc for _, acc in by_arm["kd"]], [acc for _, acc in by_arm["nokd"]]
    interval = paired_interval(kd, nokd)
    metrics = runs.parent.data.metrics
    assert (metrics["kd_gain_ci95_low"], metrics["kd_gain_ci95_high"]) == pytest.approx((interval.low, interval.high))
    assert metrics["distilled_test_acc"] == pytest.approx(sum(kd) / 2)
    assert metrics["nokd_test_acc"] == pytest.approx(sum(nokd) / 2)
    assert runs.parent.data.tags["kd_verdict"] == verdict_word(interval)


def test_verdict_trains_two_runs_per_pair_outside_the_trials(verdict):
    runs = sweep_runs(verdict.store, "v")
    parent = runs.parent.info.run_id
    assert sorted(r.info.run_name for r in runs.repeats) == ["repeat-1-kd", "repeat-1-nokd", "repeat-2-kd",
                                                             "repeat-2-nokd"]
    best = runs.parent.data.tags["kd_verdict_trial"]
    for run in runs.repeats:
        tags = run.data.tags
        assert "mlflow.parentRunId" not in tags, "child runs are trials only"
        assert (tags["kdsweep.kind"], tags["optuna.study"], tags["kdsweep.study_run_id"]) == ("repeat", "v", parent)
        assert tags["kdsweep.repeat_of_trial"] == best
        assert run.info.run_name == f"repeat-{tags['kdsweep.repeat']}-{tags['kdsweep.arm']}"
        assert tags["state"] == "COMPLETE" and tags["stop_reason"] in FINISHED
        assert run.info.status == "FINISHED"


def test_pair_i_shares_seed_base_plus_i_and_the_twin_drops_only_distillation(verdict):
    study = load_study(verdict.store, "v")
    runs = sweep_runs(verdict.store, "v")
    trial_params = runs.children[study.best_trial.number].data.params
    for run in runs.repeats:
        params, tags = run.data.params, run.data.tags
        assert int(params["seed"]) == int(trial_params["seed"]) + int(tags["kdsweep.repeat"])
        twin = {"alpha": "0.0", "transfer_ratio": "0.0"} if tags["kdsweep.arm"] == "nokd" else {}
        assert params == {**trial_params, "seed": params["seed"], **twin}


def test_verdict_is_logged_as_comparison_json_and_printed(verdict):
    import json

    client = mlflow_client(verdict.store)
    parent = sweep_runs(verdict.store, "v").parent
    path = client.download_artifacts(parent.info.run_id, "comparison.json", str(verdict.store.parent))
    logged = json.loads(Path(path).read_text())
    assert logged["kd_verdict"] == parent.data.tags["kd_verdict"]
    assert logged["kd_gain"] == pytest.approx(parent.data.metrics["kd_gain"])
    # Arms alternate: KD first in pair 1, no-KD first in pair 2.
    assert [(r["repeat"], r["arm"]) for r in logged["runs"]] == [(1, "kd"), (1, "nokd"), (2, "nokd"), (2, "kd")]
    # The same line as `kdsweep best` and the report print (sweeps.verdict_line).
    line = next(line for line in verdict.run.stdout.splitlines() if line.startswith("KD verdict:"))
    assert line.startswith(f"KD verdict: {logged['kd_verdict']} — gain {logged['kd_gain']:+.3f} (95% CI ")
    assert f", 2 paired seeds) for trial {logged['kd_verdict_trial']}; distilled " in line
    assert "--sort -best_val_acc" in verdict.run.stdout and "--sort -test_acc" not in verdict.run.stdout


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
    """The finished sweep's trials and parent run id, then a second invocation on a copy of it: one
    unpruned trial and no verdict, so that it completes a trial (else it exits 1) on a busy machine."""
    assert finished.run.returncode == 0, finished.run.explain()
    before = [(t.number, t.state, t.value) for t in load_study(finished.store, "s").trials]
    parent_id = sweep_runs(finished.store, "s").parent.info.run_id
    root = tmp_path_factory.mktemp("resume")
    store = copy_store(finished.store, root / "store")
    run = run_cli("run", "--task", "digits", "--budget", f"{RESUME_BUDGET_S}s", "--n-trials", "1", "--pruner", "none",
                  "--repeats", "0", "--store", str(store), "--study", "s", cwd=root)
    return before, parent_id, Sweep(store, "s", run)


RESUME_BUDGET_S = 60


def test_resume_exits_0_within_the_new_budget(resumed):
    _, _, again = resumed
    assert again.run.returncode == 0, again.run.explain()
    assert within_budget(again.run, RESUME_BUDGET_S), f"took {again.run.wall_s:.1f}s for a {RESUME_BUDGET_S}s budget"


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

PARALLEL_BUDGET_S = 180  # a ceiling, not what makes trials happen: --n-trials ends the sweep


@pytest.fixture(scope="module")
def parallel(tmp_path_factory, sweep_template) -> Sweep:
    # Ended by the trial count, not the clock, so a busy machine still gets trials in both workers
    # (each digits trial takes about a second; spawning a worker takes several).
    root = tmp_path_factory.mktemp("jobs2")
    store = copy_store(sweep_template, root / "store")
    run = run_cli("run", "--task", "digits", "--budget", f"{PARALLEL_BUDGET_S}s", "--n-trials", "16", "--jobs", "2",
                  "--repeats", "2", "--store", str(store), "--study", "par", cwd=root)
    return Sweep(store, "par", run)


def test_jobs_2_exits_0_within_the_budget(parallel):
    assert parallel.run.returncode == 0, parallel.run.explain()
    assert within_budget(parallel.run, PARALLEL_BUDGET_S), f"took {parallel.run.wall_s:.1f}s"


def test_jobs_2_runs_trials_in_two_worker_processes(parallel):
    trials = started_trials(load_study(parallel.store, "par"))
    pids = {t.user_attrs["kdsweep.lease"]["pid"] for t in trials}
    assert len(pids) == 2, f"lease pids {pids}"


def test_jobs_2_keeps_the_parent_child_invariants(parallel):
    study, runs = check_sweep_invariants(parallel.store, "par")
    assert len(started_trials(study)) >= 2
    assert runs.parent.data.tags["kd_verdict"] in VERDICTS
    assert {r.info.status for r in runs.repeats} <= {"FINISHED"}


# --------------------------------------------------------------------------------------------
# Presets, a fresh store, sweep files
# --------------------------------------------------------------------------------------------

PRESET_SWEEP = {"space": {"temperature": {"low": 1.0, "high": 10.0, "log": True}, "alpha": {"low": 0.0, "high": 1.0},
                          "ratio": [0.125, 0.25, 0.5], "lr": {"low": 1e-4, "high": 3e-2, "log": True}},
                "train": {"epochs": 6, "patience": 3, "data_fraction": 0.5}}


@pytest.fixture(scope="module")
def presets(tmp_path_factory, sweep_template) -> Sweep:
    """Every preset enqueued and run (no verdict: --repeats 0)."""
    root = tmp_path_factory.mktemp("presets")
    store = copy_store(sweep_template, root / "store")
    sweep = write_sweep_file(root / "presets.yaml", PRESET_SWEEP)
    run = run_cli("run", "--task", "digits", "--config", str(sweep), "--enqueue-presets", "--n-trials",
                  str(len(PRESETS)), "--repeats", "0", "--budget", "120s", "--store", str(store), "--study", "presets",
                  cwd=root)
    return Sweep(store, "presets", run)


def test_enqueue_presets_runs_every_named_preset_first(presets):
    assert presets.run.returncode == 0, presets.run.explain()
    study, runs = check_sweep_invariants(presets.store, "presets")
    trials = started_trials(study)
    assert [t.user_attrs.get("kdsweep.preset") for t in trials] == list(PRESETS)
    assert [runs.children[t.number].data.tags.get("kdsweep.preset") for t in trials] == list(PRESETS)


def test_a_preset_trains_with_all_its_settings_but_the_studys_labels(presets):
    study, runs = load_study(presets.store, "presets"), sweep_runs(presets.store, "presets")
    for trial in started_trials(study):
        name = trial.user_attrs["kdsweep.preset"]
        params = runs.children[trial.number].data.params
        for key, value in PRESETS[name].items():
            expected = PRESET_SWEEP["train"][key] if key in STUDY_SETTINGS else value
            assert params[key] == str(expected), f"preset {name}: {key}={params[key]}"
        assert params["data_fraction"] == "0.5", f"preset {name} changed the study's labelled subset"
    balanced = runs.children[next(t.number for t in started_trials(study)
                                  if t.user_attrs["kdsweep.preset"] == "balanced")].data.params
    assert (balanced["epochs"], balanced["batch_size"], balanced["grad_accum_steps"]) == ("50", "32", "2")


def test_a_preset_value_outside_the_space_is_trained_but_not_recorded_as_a_searched_value(presets):
    # ratio 0.6 (quick) is not one of the space's choices: it is an override, so Optuna's
    # params (what the sampler learns from) hold no ratio for that trial; 0.5 (balanced) is.
    study, runs = load_study(presets.store, "presets"), sweep_runs(presets.store, "presets")
    by_name = {t.user_attrs["kdsweep.preset"]: t for t in started_trials(study)}
    assert "ratio" not in by_name["quick"].params
    assert runs.children[by_name["quick"].number].data.params["ratio"] == "0.6"
    assert by_name["balanced"].params["ratio"] == 0.5
    assert by_name["quick"].params["temperature"] == pytest.approx(4.0)


def test_trial_config_is_fixed_then_searched_values_then_overrides():
    import optuna

    from sweeps.search.overrides import OVERRIDES_ATTR, trial_config

    space = SearchSpace.parse({"lr": {"low": 1e-3, "high": 1e-2}}, {"epochs": 6, "batch_size": 64})
    trial = optuna.trial.create_trial(params={"lr": 2e-3}, value=0.5,
                                      distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2)},
                                      user_attrs={OVERRIDES_ATTR: {"batch_size": 16, "ratio": 0.6}})
    config = trial_config(space, trial)
    assert (config.epochs, config.batch_size, config.lr, config.ratio) == (6, 16, 2e-3, 0.6)


def test_presets_keep_out_of_the_studys_problem_settings():
    from sweeps.search.overrides import STUDY_SETTINGS, preset_trials

    entries = preset_trials(SearchSpace.parse(None, {"data_fraction": 0.3}))
    assert [name for name, _, _ in entries] == list(PRESETS)
    for name, params, overrides in entries:
        assert not set(STUDY_SETTINGS) & (set(params) | set(overrides)), name
        assert {**params, **overrides} == {k: v for k, v in PRESETS[name].items() if k not in STUDY_SETTINGS}


def test_a_reaped_preset_trial_is_re_enqueued_with_its_overrides():
    import optuna

    from sweeps.search.leases import LEASE_ATTR, reap_stale_trials
    from sweeps.search.overrides import OVERRIDES_ATTR, PRESET_ATTR

    study = optuna.create_study()
    study.enqueue_trial({"lr": 1e-3}, user_attrs={PRESET_ATTR: "fast", OVERRIDES_ATTR: {"epochs": 20}})
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2)
    trial.set_user_attr(LEASE_ATTR, {"host": "elsewhere", "pid": 1, "heartbeat": 0.0})  # long silent
    assert reap_stale_trials(study, None) == [trial.number]
    [again] = [t for t in study.trials if t.state.name == "WAITING"]
    assert again.user_attrs[OVERRIDES_ATTR] == {"epochs": 20} and again.user_attrs[PRESET_ATTR] == "fast"


def test_a_live_holder_here_with_a_stale_heartbeat_is_reaped_only_if_it_stays_silent(monkeypatch):
    # Ctrl-Z then fg, or a laptop waking: the process is alive, its heartbeat minutes old for a
    # moment. Reaping it then would re-run a trial still training; a hung holder stays silent.
    import os

    import optuna

    from sweeps.search import leases
    from sweeps.search.leases import LEASE_ATTR, UNCHANGED_S, reap_stale_trials
    from sweeps.tracking.owners import host_id

    study = optuna.create_study()
    trial = study.ask()
    beat = time.time() - 600
    trial.set_user_attr(LEASE_ATTR, {"host": host_id(), "pid": os.getpid(), "heartbeat": beat})
    assert reap_stale_trials(study, None) == []
    assert reap_stale_trials(study, None) == []  # silent, but not yet for long
    leases._watched[(trial._trial_id, beat)] -= UNCHANGED_S + 1  # as if watched that long
    assert reap_stale_trials(study, None) == [trial.number]
    # A holder here whose process is gone is reaped at once, heartbeat fresh or not.
    dead = study.ask()
    dead.set_user_attr(LEASE_ATTR, {"host": host_id(), "pid": 2 ** 22 + 12345, "heartbeat": time.time()})
    assert reap_stale_trials(study, None) == [dead.number]


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
    # --n-trials ends both invocations; the budget only bounds them. The first trains the teacher in
    # the new store, which alone took 87 s beside two CPU-burning processes.
    args = ("run", "--task", "digits", "--config", str(sweep), "--budget", "180s", "--store", str(store),
            "--study", "leftovers", "--repeats", "0")
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


def test_repeats_0_skips_the_verdict_and_says_so(leftovers):
    assert leftovers.first.returncode == 0, leftovers.first.explain()
    runs = sweep_runs(leftovers.store, "leftovers")
    assert runs.repeats == []
    assert "kd_verdict" not in runs.parent.data.tags and "kd_gain" not in runs.parent.data.metrics
    assert "KD verdict: skipped (--repeats 0)" in leftovers.first.stdout


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
    from sweeps.search.checks import check_sweep
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
    run = run_cli("run", "--config", str(REPO / "configs" / "digits-quick.yaml"), "--budget", "120s",
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
