"""scikit-learn's 8x8 handwritten digits: 1797 images, tiny and fast, for tests and quick tries."""

from __future__ import annotations

import functools

from torch import nn

from kdcore.config import TrainConfig
from kdcore.tasks._split import carve_validation
from kdcore.tasks.base import Splits, Task, TeacherSpec
from kdcore.tasks.models import MLP, scaled_width


class DigitsTask(Task):
    """Stratified 60/20/20 train/val/test split of ``sklearn.datasets.load_digits``, scaled to [0, 1]."""

    name = "digits"
    num_classes = 10
    teacher_hidden = 256

    @functools.cache
    def splits(self) -> Splits:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x_train, x_test, y_train, y_test = train_test_split(
            x / 16.0, y, test_size=0.2, stratify=y, random_state=0)
        return carve_validation(x_train, y_train, x_test, y_test, val_size=0.25)

    def build_teacher(self) -> nn.Module:
        return MLP(64, self.teacher_hidden, self.num_classes)

    def build_student(self, ratio: float) -> nn.Module:
        return MLP(64, scaled_width(self.teacher_hidden, ratio), self.num_classes)

    def teacher_config(self) -> TrainConfig:
        return TrainConfig(alpha=0.0, ratio=1.0, lr=3e-3, epochs=30, batch_size=64, patience=8)

    def teachers(self) -> list[TeacherSpec]:
        # A second teacher for `teachers: 2`: the same MLP from another seed.
        return [*super().teachers(),
                TeacherSpec("teacher-seed1", self.build_teacher, self.teacher_config().model_copy(update={"seed": 1}))]
