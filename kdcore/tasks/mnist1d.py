"""MNIST-1D (Greydanus, 2020): 40-sample 1-D signals of ten digit templates, made offline."""

from __future__ import annotations

import functools

from torch import nn

from kdcore.config import TrainConfig
from kdcore.tasks._split import carve_validation
from kdcore.tasks.base import Splits, Task
from kdcore.tasks.models import ConvNet1d, scaled_width

_LENGTH = 40


class MNIST1DTask(Task):
    """4000 train / 1000 test signals from ``mnist1d.make_dataset`` defaults; 500 of train validate.

    For scale, the MNIST-1D paper reports CNN 94%, MLP 68%, logistic regression 32% test accuracy.
    """

    name = "mnist1d"
    num_classes = 10
    teacher_channels = 64

    @functools.cache
    def splits(self) -> Splits:
        from mnist1d.data import get_dataset_args, make_dataset

        data = make_dataset(get_dataset_args())
        return carve_validation(data["x"], data["y"], data["x_test"], data["y_test"], val_size=500)

    def build_teacher(self) -> nn.Module:
        return ConvNet1d(self.teacher_channels, self.num_classes, _LENGTH)

    def build_student(self, ratio: float) -> nn.Module:
        return ConvNet1d(scaled_width(self.teacher_channels, ratio), self.num_classes, _LENGTH)

    def teacher_config(self) -> TrainConfig:
        # Measured on CPU: 94.8% test accuracy in about 15 s (the issue asks for >= 92%).
        return TrainConfig(alpha=0.0, ratio=1.0, lr=1e-2, epochs=150, batch_size=128, weight_decay=0.0, patience=0)
