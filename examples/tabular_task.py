"""A tabular classification task with your own pretrained teacher: the example of docs/tasks.md.

    python train_teacher.py                       # trains the MLP teacher, writes teacher.pt
    kdsweep train --task tabular_task:make_task   # one distillation run (from this folder)
    kdsweep run --task tabular_task:make_task     # a sweep of T, alpha, ratio and lr

The data are synthetic (scikit-learn's make_classification); swap ``load_arrays`` for your own.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import kdcore

WEIGHTS = Path(__file__).resolve().parent / "teacher.pt"  # written by train_teacher.py
FEATURES, CLASSES, TEACHER_WIDTH = 20, 4, 128


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Features (samples, FEATURES) and integer labels 0 .. CLASSES-1."""
    from sklearn.datasets import make_classification

    return make_classification(n_samples=3000, n_features=FEATURES, n_informative=12, n_redundant=4,
                               n_classes=CLASSES, class_sep=1.2, random_state=0)


def mlp(width: int) -> nn.Module:
    """The teacher (width TEACHER_WIDTH) and every student (a narrower copy) share this shape."""
    return nn.Sequential(nn.Linear(FEATURES, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, CLASSES))


class TabularTask(kdcore.Task):
    name = "tabular"  # class attributes: names the teacher cache and MLflow runs
    num_classes = CLASSES

    @functools.cache  # the same data every call
    def splits(self) -> kdcore.Splits:
        from sklearn.model_selection import train_test_split

        x, y = load_arrays()
        x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=0)
        x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest,
                                                        random_state=0)
        mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8  # scale with training statistics only

        def dataset(features: np.ndarray, labels: np.ndarray) -> TensorDataset:
            return TensorDataset(torch.as_tensor((features - mean) / std, dtype=torch.float32),
                                 torch.as_tensor(labels, dtype=torch.int64))

        return kdcore.Splits(dataset(x_train, y_train), dataset(x_val, y_val), dataset(x_test, y_test))

    def build_teacher(self) -> nn.Module:
        return mlp(TEACHER_WIDTH)

    def build_student(self, ratio: float) -> nn.Module:
        return mlp(max(1, round(TEACHER_WIDTH * ratio)))

    def pretrained_teacher(self) -> dict[str, torch.Tensor]:
        if not WEIGHTS.exists():
            raise FileNotFoundError(f"{WEIGHTS} is missing: run python train_teacher.py first")
        return torch.load(WEIGHTS, weights_only=True)

    def defaults(self) -> dict[str, object]:
        return {"epochs": 20, "batch_size": 64, "lr": 3e-3, "patience": 5}


def make_task() -> TabularTask:
    """The factory kdsweep calls (with no arguments) for --task tabular_task:make_task."""
    return TabularTask()
