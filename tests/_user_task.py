"""A user-defined task, as a team would write one: a plain map-style Dataset (read through a
DataLoader, not kept on the device as tensors) and pretrained teacher weights handed over."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

import kdcore
from kdcore.tasks.models import MLP, scaled_width


class ArrayDataset(Dataset):
    """A Dataset that is not a TensorDataset, with ``targets`` for stratified subsets."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.targets = x, y

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.x[i], self.targets[i]


class PretrainedDigitsTask(kdcore.Task):
    name = "user-digits"
    num_classes = 10

    def __init__(self) -> None:
        digits = kdcore.get_task("digits").splits()
        self._splits = kdcore.Splits(*(ArrayDataset(*split.tensors) for split in
                                       (digits.train, digits.val, digits.test)))

    def splits(self) -> kdcore.Splits:
        return self._splits

    def build_teacher(self):
        return MLP(64, 32, self.num_classes)

    def build_student(self, ratio: float):
        return MLP(64, scaled_width(32, ratio), self.num_classes)

    def pretrained_teacher(self) -> dict[str, torch.Tensor]:
        torch.manual_seed(123)
        return MLP(64, 32, self.num_classes).state_dict()


def make_task() -> PretrainedDigitsTask:
    return PretrainedDigitsTask()
