"""`kdsweep train` end to end through Typer's CliRunner, checked in the real SQLite MLflow store."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from cli.main import app
from kdcore import get_task

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 6
PER_EPOCH_METRICS = ("val_acc", "train_loss", "kd_loss", "ce_loss", "val_loss", "lr", "epoch_time_s", "samples_per_s")
FINAL_METRICS = ("best_val_acc", "test_acc", "teacher_test_acc", "retention", "train_time_s", "student_params",
                 "student_size_bytes")


def invoke(*args: str):
    """Run the CLI in-process."""
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _client(store: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def _only_run(client: MlflowClient, experiment: str = "kdsweep-train"):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, teacher_store):
    """One `kdsweep train` of the digits task into a store that already holds the teacher."""
    store = tmp_path_factory.mktemp("cli") / "store"
    shutil.copytree(teacher_store / "teachers", store / "teachers")
    result = invoke("train", "--task", "digits", "--epochs", EPOCHS, "--temperature", "3", "--alpha", "0.6",
                    "--ratio", "0.25", "--lr", "0.004", "--device", "cpu", "--store", store)
    return store, result


@pytest.fixture(scope="module")
def run(trained):
    store, result = trained
    assert result.exit_code == 0, result.output
    return _only_run(_client(store))


def test_train_exits_zero(trained):
    _, result = trained

    assert result.exit_code == 0, result.output
    assert "student: test_acc" in result.stdout


def test_train_logs_one_finished_run(run):
    assert run.info.status == "FINISHED"


def test_train_logs_settings_as_params(run):
    params = run.data.params

    assert params["task"] == "digits"
    assert float(params["temperature"]) == 3.0
    assert float(params["alpha"]) == 0.6
    assert float(params["ratio"]) == 0.25
    assert float(params["lr"]) == 0.004


@pytest.mark.parametrize("name", PER_EPOCH_METRICS)
def test_train_logs_one_value_per_epoch_at_step_epoch(trained, run, name):
    store, _ = trained

    history = _client(store).get_metric_history(run.info.run_id, name)

    assert sorted(metric.step for metric in history) == list(range(1, EPOCHS + 1))


def test_train_logs_final_metrics(run):
    metrics = run.data.metrics

    assert set(FINAL_METRICS) <= metrics.keys()
    assert metrics["retention"] == pytest.approx(metrics["test_acc"] / metrics["teacher_test_acc"])


def test_train_reuses_the_teacher_in_the_store(run, teacher):
    assert run.data.metrics["teacher_test_acc"] == teacher.test_acc
    assert run.data.params["teacher_digest"] == teacher.digest[:16]


def test_train_tags_stop_reason(run):
    assert run.data.tags["stop_reason"] == "completed"


def test_checkpoint_artifact_rebuilds_the_student_with_the_logged_test_acc(trained, run, tmp_path):
    store, _ = trained
    path = _client(store).download_artifacts(run.info.run_id, "checkpoint/student.pt", str(tmp_path))

    checkpoint = torch.load(path, weights_only=True)
    task = get_task(checkpoint["task"])
    student = task.build_student(checkpoint["ratio"])
    student.load_state_dict(checkpoint["state_dict"])
    x, y = task.splits().test.tensors
    with torch.no_grad():
        correct = (student.eval()(x).argmax(-1) == y).sum().item()

    assert checkpoint["ratio"] == 0.25
    assert correct / len(y) == run.data.metrics["test_acc"]


def test_flags_override_the_config_file(tmp_path, store_with_teacher):
    config = tmp_path / "train.yaml"
    config.write_text("task: digits\ntemperature: 2.5\nalpha: 0.4\nepochs: 2\ndevice: cpu\n")

    result = invoke("train", "--config", config, "--alpha", "0.9", "--store", store_with_teacher)

    assert result.exit_code == 0, result.output
    params = _only_run(_client(store_with_teacher)).data.params
    assert float(params["alpha"]) == 0.9  # the flag wins
    assert float(params["temperature"]) == 2.5  # from the file
    assert int(params["epochs"]) == 2  # from the file


# Bad input to `kdsweep train` (and every other command): tests/test_bad_input_corpus.py.


def test_warnings_of_a_second_invocation_reach_its_stderr(store_with_teacher):
    logger = logging.getLogger("kdsweep")
    handlers, level = list(logger.handlers), logger.level
    runner = CliRunner()
    try:
        first = runner.invoke(app, ["teacher", "--task", "digits", "--store", str(store_with_teacher)])
        assert first.exit_code == 0, first.output
        (cache_file,) = store_with_teacher.glob(".cache/**/logits.pt")
        cache_file.write_bytes(b"damaged")

        second = runner.invoke(app, ["teacher", "--task", "digits", "--store", str(store_with_teacher)])
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)

    assert second.exit_code == 0, second.output
    assert "Logging error" not in second.stderr
    assert any(line.startswith("WARNING:") and "rebuilding" in line for line in second.stderr.splitlines())


def test_help_lists_the_train_command():
    result = invoke("--help")

    assert result.exit_code == 0
    assert "train" in result.stdout


def test_importing_the_cli_loads_neither_torch_nor_mlflow():
    code = "import cli.main, sys; print('torch' in sys.modules, 'mlflow' in sys.modules)"

    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)

    assert completed.stdout.split() == ["False", "False"]


def test_repeats_judge_one_config_against_its_no_kd_twin(store_with_teacher):
    result = invoke("train", "--task", "digits", "--epochs", "3", "--alpha", "0.8", "--seed", "4", "--repeats", "2",
                    "--device", "cpu", "--store", store_with_teacher)

    assert result.exit_code == 0, result.output
    client = _client(store_with_teacher)
    runs = client.search_runs([client.get_experiment_by_name("kdsweep-train").experiment_id])
    (parent,) = [r for r in runs if r.data.tags["kdsweep.kind"] == "verdict"]
    arms = sorted((r.data.tags["kdsweep.repeat"], r.data.tags["kdsweep.arm"], r.data.params["seed"],
                   r.data.params["alpha"]) for r in runs if r.data.tags["kdsweep.kind"] == "repeat")
    assert arms == [("1", "kd", "5", "0.8"), ("1", "nokd", "5", "0.0"), ("2", "kd", "6", "0.8"), ("2", "nokd", "6", "0.0")]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.data.tags["state"] == "COMPLETE"
               for r in runs if r is not parent)
    tests = {(r.data.tags["kdsweep.repeat"], r.data.tags["kdsweep.arm"]): r.data.metrics["test_acc"] for r in runs
             if r is not parent}
    gains = [tests[(i, "kd")] - tests[(i, "nokd")] for i in ("1", "2")]
    metrics = parent.data.metrics
    assert metrics["kd_gain"] == pytest.approx(sum(gains) / 2)
    assert metrics["kd_gain_ci95_low"] < metrics["kd_gain"] < metrics["kd_gain_ci95_high"]
    assert metrics["kd_repeats"] == 2
    verdict = parent.data.tags["kd_verdict"]
    assert verdict in ("helps", "hurts", "no_difference")
    assert f"KD verdict: {verdict} — gain {metrics['kd_gain']:+.3f} (95% CI" in result.stdout
