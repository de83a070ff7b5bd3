"""`kdsweep federate` on a real swept store: seed 004's federated rounds logged to MLflow, seed
004's table printed, and an interrupted run resumed from its last round."""

from __future__ import annotations

import pytest
from _sweep_helpers import mlflow_client
from _sweep_store import copy_store, kdsweep

from kdcore._files import load_safe
from sweeps import best
from sweeps.pipelines.federate import FEDERATE_KIND, federate_trial


@pytest.fixture(scope="module")
def store(swept, tmp_path_factory):
    return copy_store(swept, tmp_path_factory.mktemp("federate"))


def _federated_runs(store):
    client = mlflow_client(store.root)
    experiment = client.get_experiment_by_name(store.study)
    return client, client.search_runs([experiment.experiment_id], filter_string=f"tags.`kdsweep.kind` = '{FEDERATE_KIND}'")


def test_federate_logs_every_round_and_prints_seed_004s_table(store):
    done = kdsweep("federate", store.study, "--clients", "3", "--rounds", "2", "--partition", "dirichlet:0.5",
                   *store.options)
    assert done.returncode == 0, done.stderr
    assert "round 2/2: global val_acc" in done.stdout
    assert "test accuracy: teacher" in done.stdout and "KD + federated" in done.stdout
    client, runs = _federated_runs(store)
    [run] = runs
    assert run.info.status == "FINISHED" and run.data.tags["state"] == "FINISHED"
    assert run.data.params["partition"] == "dirichlet:0.5" and run.data.params["clients"] == "3"
    # The best trial's student, its clients fine-tuning at a tenth of its learning rate.
    chosen = best(store.study, store=store.root)
    assert run.data.params["trial"] == str(chosen["number"])
    assert float(run.data.params["lr"]) == pytest.approx(chosen["lr"] / 10)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert {"client0_val_acc", "client2_val_acc", "test_acc", "trial_test_acc", "teacher_test_acc"} <= set(
        run.data.metrics)
    study_run = client.search_runs([run.info.experiment_id], filter_string="tags.`kdsweep.kind` = 'study'")[0]
    assert run.data.tags["mlflow.parentRunId"] == study_run.info.run_id
    # The federated student is a loadable checkpoint, scored as the run says; no round file is left.
    path = client.download_artifacts(run.info.run_id, "checkpoint/student.pt")
    assert load_safe(path)["metrics"]["test_acc"] == pytest.approx(run.data.metrics["test_acc"])
    assert not any((store.root / "federated").glob("*.pt"))


def test_the_report_gains_seed_004s_table(store, tmp_path):
    from sweeps import write_report

    page = write_report(store.study, out=tmp_path / "report", log_to_mlflow=False, store=store.root).read_text()
    assert "After the search: federated rounds (seed 004)" in page
    assert "clients (dirichlet:0.5), 2 rounds of 1 epoch(s)" in page


def test_an_interrupted_federated_run_resumes_after_its_last_round(store):
    def stop_after_round_1(result):
        if result.round == 1:
            raise KeyboardInterrupt

    settings = {"clients": 2, "rounds": 2, "partition": "iid", "seed": 7, "store": store.root}
    with pytest.raises(KeyboardInterrupt):
        federate_trial(store.study, on_round=stop_after_round_1, **settings)
    client, runs = _federated_runs(store)
    [cut] = [r for r in runs if r.data.params["seed"] == "7"]
    assert cut.info.status == "KILLED" and cut.data.tags["state"] == "INTERRUPTED"
    rounds = []
    done = federate_trial(store.study, on_round=lambda result: rounds.append(result.round), **settings)
    assert done.run_id == cut.info.run_id and done.resumed_after == 1 and rounds == [2]
    run = client.get_run(done.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(done.run_id, "val_acc")] == [1, 2]


@pytest.mark.parametrize(("args", "message"), [
    (("--partition", "dirichlet:x"), "partition 'dirichlet:x' is not allowed"),
    (("--trial", "999"), "has no trial 999"),
    (("--clients", "100000"), "clients=100000 is out of range"),
    (("--lr", "-1"), "--lr -1.0 is not allowed"),
])
def test_bad_settings_are_one_line_and_write_nothing(store, args, message):
    _, before = _federated_runs(store)
    done = kdsweep("federate", store.study, *args, *store.options)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert len(_federated_runs(store)[1]) == len(before)
