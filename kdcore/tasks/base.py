"""The Task interface: what kdsweep needs to know about a distillation problem."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn
from torch.utils.data import Dataset

from kdcore.config import TrainConfig


@dataclass(frozen=True)
class Splits:
    """Train, validation and test data of a task.

    Small tasks hand over ``torch.utils.data.TensorDataset``s (features, integer labels): the
    trainer keeps them on the training device and batches by index permutation. A large task
    may hand over any map-style ``Dataset`` returning ``(x, y)``; the trainer then reads it with
    a DataLoader. Give such a dataset a ``targets`` attribute so data-fraction subsets can be
    stratified without reading every sample.

    ``unlabeled`` (optional) holds inputs without labels (a one-tensor ``TensorDataset(x)``, or a
    Dataset returning ``x``): the transfer set. Runs with ``transfer_ratio > 0`` show them to the
    KD term only, with the teacher's cached logits as targets.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    unlabeled: Dataset | None = None


PRIMARY_TEACHER = "teacher"


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher of a task's ensemble: its name (a file name in the store), how to build it, and
    how kdsweep trains it. The first of ``Task.teachers()`` is the task's own teacher."""

    name: str
    build: Callable[[], nn.Module]
    config: TrainConfig


TaskKind = Literal["classification", "embedding"]
TASK_KINDS: tuple[str, ...] = ("classification", "embedding")


class Task(abc.ABC):
    """A problem with a teacher architecture and a family of students.

    Subclass it, then either register it (``kdcore.register_task``) or point kdsweep at a
    zero-argument factory returning it: ``--task mypkg.mymodule:make_task``.

    ``kind`` says what the models output. "classification": logits (B, num_classes), trained with
    cross-entropy, scored by accuracy. "embedding": an embedding (B, D) of any width D (a student's
    may differ from the teacher's: a projection head bridges them while training), trained with a
    proxy loss over the ``num_classes`` labels (kdcore.embedding_loss.ProxyLoss), scored by
    Recall@1 within each split (kdcore.retrieval); the labels say which items should retrieve
    each other.
    """

    name: str
    num_classes: int
    kind: TaskKind = "classification"

    @abc.abstractmethod
    def splits(self) -> Splits:
        """The task's data; must return the same data every call (cache it)."""

    @abc.abstractmethod
    def build_teacher(self) -> nn.Module:
        """A freshly initialised teacher network."""

    @abc.abstractmethod
    def build_student(self, ratio: float) -> nn.Module:
        """A student whose width is ``ratio`` times the teacher's (0 < ratio <= 1)."""

    def defaults(self) -> dict[str, Any]:
        """TrainConfig settings this task's runs and studies start from; a sweep file's ``train:``
        and command-line flags override them. Empty: TrainConfig's own defaults."""
        return {}

    def teacher_config(self) -> TrainConfig:
        """How kdsweep trains the teacher when no pretrained weights are given."""
        return TrainConfig(alpha=0.0, ratio=1.0, epochs=60, patience=15)

    def pretrained_teacher(self) -> dict[str, Any] | None:
        """Pretrained teacher weights (a state_dict) or None to let kdsweep train the teacher."""
        return None

    def teachers(self) -> list[TeacherSpec]:
        """The teachers a run may distil from at once (TrainConfig ``teachers``: the first N), the
        task's own teacher first. Override to offer an ensemble: teachers of other architectures or
        seeds, each trained once and cached like the first. Default: the task's teacher alone."""
        return [TeacherSpec(PRIMARY_TEACHER, self.build_teacher, self.teacher_config())]
