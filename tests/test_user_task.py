"""A user task given as ``package.module:factory``: generic Datasets and pretrained teacher weights."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

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


REPO = Path(__file__).resolve().parent.parent
TINY_TASK = '''
import torch
from torch.utils.data import TensorDataset
import kdcore
from kdcore.tasks.models import MLP, scaled_width


class Tiny(kdcore.Task):
    name = "tiny"
    num_classes = 3

    def splits(self):
        x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
        data = TensorDataset(x, torch.arange(30) % 3)
        return kdcore.Splits(data, data, data)

    def build_teacher(self):
        return MLP(4, 8, 3)

    def build_student(self, ratio):
        return MLP(4, scaled_width(8, ratio), 3)

    def pretrained_teacher(self):
        return MLP(4, 8, 3).state_dict()


def make_task():
    return Tiny()
'''


def user_env() -> dict[str, str]:
    """A shell as a user has it: the venv's kdsweep on PATH, no PYTHONPATH, no MLflow server."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "KDSWEEP_STORE")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_in(folder: Path, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    if args[0] == "python":
        args[0] = sys.executable
    return subprocess.run(args, cwd=folder, env=user_env(), capture_output=True, text=True, timeout=timeout)


def test_a_task_module_in_the_current_directory_is_found_without_pythonpath(tmp_path):
    (tmp_path / "tiny_task.py").write_text(TINY_TASK)

    done = run_in(tmp_path, "kdsweep train --task tiny_task:make_task --epochs 1 --store ./store")

    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "store" / "mlflow.db").exists()


def test_the_example_task_runs_end_to_end_from_the_docs_commands(tmp_path):
    docs = (REPO / "docs" / "tasks.md").read_text()
    block = docs.split("<!-- tested by tests/test_user_task.py", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = block.strip().splitlines()
    assert commands[0] == "cd examples"
    shutil.copytree(REPO / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("teacher.pt", "kd-store"))

    for command in commands[1:]:
        done = run_in(tmp_path / "examples", command)
        assert done.returncode == 0, f"{command}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"

    assert (tmp_path / "examples" / "teacher.pt").exists()
    assert "2 complete" in done.stdout + done.stderr
    loaded = run_in(tmp_path / "examples", "python -c \"import sweeps; "
                    "print(type(sweeps.load_student('tabular_task-make_task', 0, store='kd-store')).__name__)\"")
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip().splitlines()[-1] == "Sequential"
