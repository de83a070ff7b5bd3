"""Shared fixtures: the tiny ``digits`` task, its trained teacher, and helpers to score weights.

Everything is real (torch, MLflow, the CLI); the expensive part, training the teacher, happens
once per session and is reused read-only.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kdcore

# Two intra-op threads make these tiny matmuls several times slower (and erratic) on a
# 2-core machine; one thread keeps the whole suite fast and deterministic.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _hermetic_environment():
    """No test reads the user's store or MLflow server from the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "KDSWEEP_STORE"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def digits() -> kdcore.Task:
    """One task instance for the session, so its splits are built once (they are cached per instance)."""
    task = kdcore.get_task("digits")
    task.splits()
    return task


@pytest.fixture(scope="session")
def teacher_store(tmp_path_factory, digits) -> Path:
    """A store root holding the digits teacher, trained once for the whole session. Do not modify it."""
    root = tmp_path_factory.mktemp("template") / "store"
    kdcore.load_or_train_teacher(digits, root, device="cpu")
    return root


@pytest.fixture(scope="session")
def teacher(teacher_store, digits) -> kdcore.Teacher:
    """The session's trained digits teacher, loaded from ``teacher_store``."""
    loaded = kdcore.load_or_train_teacher(digits, teacher_store, device="cpu")
    assert not loaded.trained_now
    return loaded


@pytest.fixture(scope="session")
def teacher_logits(tmp_path_factory, digits, teacher) -> kdcore.TeacherLogits:
    """The teacher's cached logits for every split."""
    cache = tmp_path_factory.mktemp("logit-cache")
    return kdcore.teacher_outputs(digits, teacher.model, teacher.digest, cache, device="cpu").logits


@pytest.fixture
def store_with_teacher(tmp_path, teacher_store) -> Path:
    """A fresh store folder (``tmp_path/"store"``) that already holds the trained digits teacher."""
    root = tmp_path / "store"
    shutil.copytree(teacher_store / "teachers", root / "teachers")
    return root


def _score(task: kdcore.Task, state_dict: dict[str, torch.Tensor], ratio: float, split: str) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a student's weights on a whole split, in one forward pass."""
    model = task.build_student(ratio)
    model.load_state_dict(state_dict)
    x, y = getattr(task.splits(), split).tensors
    with torch.no_grad():
        logits = model.eval()(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).sum().item() / len(y)


@pytest.fixture(scope="session")
def score(digits) -> Callable[..., tuple[float, float]]:
    """``score(state_dict, ratio, split)`` -> (loss, accuracy) of a digits student on that split."""
    return lambda state_dict, ratio, split: _score(digits, state_dict, ratio, split)


@pytest.fixture(scope="session")
def swept(tmp_path_factory, teacher_store):
    """A store written by one real short sweep, shared by the query, report and UI tests."""
    from _sweep_store import sweep_store

    return sweep_store(tmp_path_factory, teacher_store)
