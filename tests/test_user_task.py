"""A user task given as ``package.module:factory``: generic Datasets and pretrained teacher weights."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

import kdcore
from cli.main import app
from kdcore._files import state_digest

SPEC = "_user_task:make_task"


def test_a_factory_spec_resolves_to_the_users_task():
    assert kdcore.get_task(SPEC).name == "user-digits"


@pytest.mark.parametrize("spec", ["no_such_module:make_task", "_user_task:no_such_factory"])
def test_a_bad_factory_spec_is_a_task_error_naming_it(spec):
    with pytest.raises(kdcore.TaskError, match=spec):
        kdcore.get_task(spec)


def test_pretrained_teacher_weights_are_used_and_never_trained_or_saved(tmp_path):
    task = kdcore.get_task(SPEC)

    teacher = kdcore.load_or_train_teacher(task, tmp_path)

    assert (teacher.trained_now, teacher.path) == (False, None)
    assert teacher.digest == state_digest(task.pretrained_teacher())
    assert not (tmp_path / "teachers").exists()


def test_a_non_tensor_dataset_trains_through_a_dataloader_with_cached_logits(tmp_path):
    task = kdcore.get_task(SPEC)
    teacher = kdcore.load_or_train_teacher(task, tmp_path)
    cache = kdcore.teacher_outputs(task, teacher.model, teacher.digest, tmp_path / "cache")

    result = kdcore.train(task, kdcore.TrainConfig(epochs=3, ratio=0.5, data_fraction=0.5, patience=0),
                          teacher=cache.logits)

    assert result.epochs_run == 3
    assert result.history[-1].samples_per_s > 0
    assert 0.0 < result.test_acc <= 1.0


def test_kdsweep_train_runs_a_user_task_end_to_end(tmp_path):
    store = tmp_path / "store"

    result = CliRunner().invoke(app, ["train", "--task", SPEC, "--epochs", "2", "--store", str(store)])

    assert result.exit_code == 0, result.output
    runs = MlflowClient(f"sqlite:///{store / 'mlflow.db'}").search_runs(["1"])
    assert [r.data.params["task"] for r in runs] == [SPEC]
    assert runs[0].info.status == "FINISHED"
