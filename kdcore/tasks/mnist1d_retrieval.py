"""MNIST-1D retrieval: embed each signal so that signals of the same digit template lie close,
scored by Recall@1 within each split (kdcore.retrieval). The data of the mnist1d task, made offline."""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from kdcore.config import TrainConfig
from kdcore.tasks.base import Splits, Task
from kdcore.tasks.mnist1d import _LENGTH, labelled_splits
from kdcore.tasks.models import ConvNet1d, scaled_width


class MNIST1DRetrievalTask(Task):
    """The mnist1d task's 3500 train / 500 validation / 1000 test signals, as an embedding task: a
    model maps a signal to an embedding (its linear head's outputs), and a query is a hit when its
    nearest other signal of the split (cosine) shows the same digit. No unlabeled split: this task
    is meant to compare embedding losses, not transfer sets.

    Teacher: the mnist1d CNN (64 channels) with a 64-wide embedding. Students: the same CNN with
    ``ratio`` times the channels and the embedding width, so a distilled student needs the
    projection head (kdcore.objective).
    """

    name = "mnist1d-retrieval"
    kind = "embedding"
    num_classes = 10
    teacher_channels = 64
    teacher_dim = 64

    @functools.cache
    def splits(self) -> Splits:
        return labelled_splits()

    def build_teacher(self) -> nn.Module:
        return ConvNet1d(self.teacher_channels, self.teacher_dim, _LENGTH)  # its "classes" are embedding dims

    def build_student(self, ratio: float) -> nn.Module:
        return ConvNet1d(scaled_width(self.teacher_channels, ratio), scaled_width(self.teacher_dim, ratio), _LENGTH)

    def defaults(self) -> dict[str, Any]:
        return {"ratio": 0.25, "batch_size": 64, "epochs": 60, "patience": 20, "lr": 3e-3}

    def teacher_config(self) -> TrainConfig:
        return TrainConfig(alpha=0.0, ratio=1.0, lr=1e-2, epochs=60, batch_size=128, weight_decay=0.0, patience=0)
