"""`kdsweep compress` on a real swept store: each step an MLflow child run with seed 002's numbers,
the compressed student exported with `kdsweep export --run`, the report's seed 002 table, and bad
settings refused before anything is written."""

from __future__ import annotations

import signal

import pytest
import torch
from _sweep_helpers import Background, mlflow_client, wait_until
from _sweep_store import copy_store, kdsweep

from sweeps import best
from sweeps.pipelines.compress import COMPRESS_KIND, compress_trial
from sweeps.query.trials import load_run_student

SEED_002_METRICS = {"final_val_acc", "test_acc", "params", "size_bytes", "latency_ms_b1", "train_time_s", "step_time_s",
                    "peak_memory_mb", "epochs_run", "input_test_acc", "input_params", "input_size_bytes"}


@pytest.fixture(scope="module")
def store(swept, tmp_path_factory):
    return copy_store(swept, tmp_path_factory.mktemp("compress"))


def _compress_runs(store):
    client = mlflow_client(store.root)
    experiment = client.get_experiment_by_name(store.study)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`kdsweep.kind` = '{COMPRESS_KIND}'",
                              order_by=["attributes.start_time ASC"])
    return client, runs


@pytest.fixture(scope="module")
def compressed(store):
    done = kdsweep("compress", store.study, "--prune", "0.5", "--bits", "8", "--epochs", "2", *store.options)
    assert done.returncode == 0, done.stderr
    return done


def test_each_step_is_a_child_run_with_seed_002s_numbers(store, compressed):
    assert "prune: val " in compressed.stdout and "qat8: val " in compressed.stdout
    assert "teacher test accuracy" in compressed.stdout
    assert "int8 weight-only" in compressed.stdout
    client, runs = _compress_runs(store)
    prune, qat = runs
    study_run = client.search_runs([prune.info.experiment_id], filter_string="tags.`kdsweep.kind` = 'study'")[0]
    chosen = best(store.study, store=store.root)
    for run, step in ((prune, "prune"), (qat, "qat8")):
        assert run.info.status == "FINISHED" and run.data.tags["kdsweep.step"] == step
        assert run.data.tags["mlflow.parentRunId"] == study_run.info.run_id
        assert run.data.tags["kdsweep.trial"] == str(chosen["number"]) and run.data.tags["kdsweep.mode"] == "full"
        assert SEED_002_METRICS <= set(run.data.metrics), SEED_002_METRICS - set(run.data.metrics)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
        assert float(run.data.params["lr"]) == pytest.approx(chosen["lr"] / 10)
    assert prune.data.tags["kdsweep.compress_id"] == qat.data.tags["kdsweep.compress_id"]
    # Pruning halves the hidden units (digits' student: an MLP), so about a third of the parameters stay.
    assert prune.data.metrics["input_params"] == chosen["student_params"]
    assert prune.data.metrics["params"] < 0.5 * prune.data.metrics["input_params"]
    assert prune.data.metrics["sparsity"] == pytest.approx(1 - prune.data.metrics["params"] / chosen["student_params"])
    # QAT starts where pruning ended; int8 Linear layers take fewer bytes than the fp32 ones.
    assert qat.data.metrics["input_test_acc"] == prune.data.metrics["test_acc"]
    assert qat.data.metrics["params"] == prune.data.metrics["params"]
    assert qat.data.metrics["size_bytes"] < 0.5 * prune.data.metrics["size_bytes"]
    assert qat.data.metrics["peak_memory_mb"] > 0


def test_the_compressed_student_loads_exports_and_scores_as_recorded(store, compressed, tmp_path):
    _, runs = _compress_runs(store)
    qat = runs[-1]
    model = load_run_student(qat.info.run_id, store=store.root)
    assert type(model.net[0].weight).__name__ == "Int8Tensor" and model.net[0].weight.shape[0] < 128
    out = tmp_path / "student.pt2"
    done = kdsweep("export", store.study, "--run", qat.info.run_id, "--out", str(out), *store.options)
    assert done.returncode == 0, done.stderr
    assert f"its run recorded {qat.data.metrics['test_acc']:.4f}" in done.stdout
    reloaded = torch.export.load(str(out)).module()
    assert f"test_acc {qat.data.metrics['test_acc']:.4f}" in done.stdout
    assert reloaded(torch.zeros(3, 64)).shape == (3, 10)


def test_fast_mode_at_4_bits_and_the_report_puts_it_beside_full_mode(store, compressed, tmp_path):
    from sweeps import write_report

    done = compress_trial(store.study, prune=0.5, bits=4, fast=True, epochs=1, seed=3, store=store.root)
    assert [s.name for s in done.steps] == ["start", "prune", "qat4"]
    assert done.steps[-1].runs_as.startswith("simulated") and done.steps[-1].packed_size_bytes < done.steps[-1].size_bytes
    client, runs = _compress_runs(store)
    fast = [r for r in runs if r.data.tags["kdsweep.mode"] == "fast"]
    full = [r for r in runs if r.data.tags["kdsweep.mode"] == "full"]
    assert {int(r.data.params["batch_size"]) for r in fast} == {2 * int(full[0].data.params["batch_size"])}
    assert [float(r.data.params["data_fraction"]) for r in fast] == pytest.approx(
        [0.3 * float(full[0].data.params["data_fraction"])] * len(fast))
    assert {r.data.params["patience"] for r in fast} == {"2"}
    assert {r.data.params["seed"] for r in fast} == {"3"}
    page = write_report(store.study, out=tmp_path / "report", log_to_mlflow=False, store=store.root).read_text()
    assert "After the search: pruning and quantization-aware KD (seed 002)" in page
    assert "prune 0.5, 8-bit QAT" in page and "prune 0.5, 4-bit QAT" in page
    assert "<td>fast</td>" in page and "<td>full</td>" in page


def test_ctrl_c_closes_the_running_step_killed_and_keeps_nothing_running(store, tmp_path):
    _, before = _compress_runs(store)
    paused = tmp_path / "paused"
    # The step holds after its first epoch (sweeps/_pause.py) until the signal: a digits step ends in a second.
    process = Background("compress", store.study, *store.options, cwd=tmp_path,
                         env={"KDSWEEP_TEST_PAUSE_AT": "compress.epoch", "KDSWEEP_TEST_PAUSE_FILE": str(paused)})
    try:
        wait_until(paused.exists, timeout=120, process=process, what="the prune step has logged an epoch")
        process.signal(signal.SIGINT)
        returncode = process.wait(timeout=60)
    finally:
        process.stop()
    assert returncode == 130, process.output()
    assert "interrupted: the step's run is closed KILLED" in process.output()
    _, runs = _compress_runs(store)
    [cut] = [r for r in runs if r.info.run_id not in {b.info.run_id for b in before}]
    assert cut.info.status == "KILLED" and cut.data.tags["state"] == "INTERRUPTED"
    assert cut.data.tags["kdsweep.step"] == "prune"
    assert all(r.info.status != "RUNNING" for r in runs)


@pytest.mark.parametrize(("args", "message"), [
    (("--prune", "1"), "--prune 1.0 is not allowed"),
    (("--bits", "3"), "--bits 3 is not allowed (choose 8 or 4)"),
    (("--epochs", "0"), "--epochs 0 is not allowed"),
    (("--lr", "-1"), "--lr -1.0 is not allowed"),
    (("--seed", "-1"), "--seed -1 is not allowed"),
    (("--trial", "999"), "has no trial 999"),
])
def test_bad_settings_are_one_line_and_write_nothing(store, args, message):
    _, before = _compress_runs(store)
    done = kdsweep("compress", store.study, *args, *store.options)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert len(_compress_runs(store)[1]) == len(before)
