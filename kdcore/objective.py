"""What a run optimises and how it is scored, for each task kind: the trainer's one switch on
``Task.kind``. Classification: kd_loss and accuracy. Embedding: a proxy loss plus embedding
distillation, scored by Recall@1.

An objective is a module: its parameters (an embedding task's class proxies and projection head)
train with the student and are checkpointed with it, but are never part of the exported student.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdcore.config import TrainConfig
from kdcore.data import BatchSource
from kdcore.embedding_loss import ProxyLoss, embedding_kd_loss
from kdcore.loss import kd_loss
from kdcore.retrieval import recall_at_k
from kdcore.tasks.base import Task

RETRIEVAL_KS = (1, 5)


@dataclass(frozen=True)
class Evaluation:
    """One split's measurement: the task's loss, its score (accuracy, or Recall@1 for an embedding
    task) and further metrics by name without a split prefix (``{"recall_at_5": ...}``)."""

    loss: float
    score: float
    extra: dict[str, float] = field(default_factory=dict)


class ClassificationObjective(nn.Module):
    """kd_loss (cross-entropy and Hinton's KD term) and accuracy; no parameters of its own."""

    score_name = "val_acc"
    # Names of the loss parts ``loss`` returns, in order; the first three are EpochResult fields.
    parts = ("train_loss", "kd_loss", "ce_loss")

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def loss(self, outputs: torch.Tensor, teachers: Sequence[torch.Tensor] | None, labels: torch.Tensor, *,
             temperature: float, alpha: float, teacher_weights: Sequence[float]) -> tuple[torch.Tensor, ...]:
        return kd_loss(outputs, teachers, labels, temperature=temperature, alpha=alpha,
                       label_smoothing=self.label_smoothing, teacher_weights=teacher_weights)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, source: BatchSource, autocast: Any) -> Evaluation:
        """Mean cross-entropy and accuracy of ``model`` over one in-order pass of ``source``."""
        model.eval()
        loss_sum = torch.zeros((), device=source.device)
        correct = torch.zeros((), device=source.device)
        for _, x, y in source.epoch():
            with autocast():
                logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(dim=-1) == y).sum()
        return Evaluation(loss_sum.item() / source.size, correct.item() / source.size)


class EmbeddingObjective(nn.Module):
    """``alpha * KD + (1 - alpha) * task loss`` for models that output embeddings, where the task
    loss is a ProxyLoss over the task's classes and KD is ``embedding_kd_loss`` against one teacher's
    embeddings (``embed_weight`` direct + ``relational_weight`` relational). ``head`` is a Linear
    projection from the student's width to the teacher's, present only when they differ."""

    score_name = "recall_at_1"
    parts = ("train_loss", "kd_loss", "ce_loss", "kd_direct_loss", "kd_relational_loss")

    def __init__(self, num_classes: int, student_width: int, teacher_width: int | None, config: TrainConfig) -> None:
        super().__init__()
        self.task_loss = ProxyLoss(num_classes, student_width)
        self.head = nn.Linear(student_width, teacher_width) if teacher_width not in (None, student_width) else None
        self.config = config

    def loss(self, outputs: torch.Tensor, teachers: Sequence[torch.Tensor] | None, labels: torch.Tensor, *,
             temperature: float, alpha: float, teacher_weights: Sequence[float]) -> tuple[torch.Tensor, ...]:
        # Appended transfer-set inputs (no label) are seen by the KD terms only, as in kd_loss.
        task = self.task_loss(outputs[: len(labels)], labels, label_smoothing=self.config.label_smoothing)
        if not teachers or alpha == 0:
            zero = outputs.new_zeros(())
            return task, zero, task, zero, zero
        config = self.config
        kd = embedding_kd_loss(outputs, teachers[0], projected_emb=self.head(outputs) if self.head else None,
                               embed_loss=config.embed_loss, embed_weight=config.embed_weight,
                               relational_weight=config.relational_weight,
                               relational_temperature=config.relational_temperature)
        total = alpha * kd.total + (1 - alpha) * task if alpha < 1 else kd.total
        return total, kd.total, task, kd.direct, kd.relational

    def evaluate(self, model: nn.Module, source: BatchSource, autocast: Any) -> Evaluation:
        """The proxy loss and Recall@1 (Recall@5 in ``extra``) of ``model``'s embeddings of ``source``."""
        embeddings, labels = embed(model, source, autocast)
        with torch.no_grad():
            loss = self.task_loss(embeddings, labels).item()
        return _retrieval(embeddings, labels, loss)


@torch.no_grad()
def embed(model: nn.Module, source: BatchSource, autocast: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings in float32, labels) of one in-order pass of ``source``."""
    model.eval()
    outputs, labels = [], []
    for _, x, y in source.epoch():
        with autocast():
            outputs.append(model(x).float())
        labels.append(y)
    return torch.cat(outputs), torch.cat(labels)


def _retrieval(embeddings: torch.Tensor, labels: torch.Tensor, loss: float) -> Evaluation:
    recalls = recall_at_k(embeddings, labels, RETRIEVAL_KS)
    return Evaluation(loss, recalls[1], {f"recall_at_{k}": recalls[k] for k in RETRIEVAL_KS})


def evaluate_model(task: Task, model: nn.Module, source: BatchSource, autocast: Any) -> Evaluation:
    """``model``'s score on ``source`` by its task's kind, outside training (a pretrained teacher):
    accuracy, or Recall@1 with a NaN loss, since the proxies of a proxy loss live only in training."""
    if task.kind == "embedding":
        return _retrieval(*embed(model, source, autocast), math.nan)
    return ClassificationObjective().evaluate(model, source, autocast)


def output_width(module: nn.Module, probe: torch.Tensor) -> int:
    """The width D of ``module``'s (B, D) output on ``probe``, without training-mode side effects."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        width = module(probe).shape[-1]
    module.train(was_training)
    return int(width)


def build_objective(task: Task, config: TrainConfig, model: nn.Module, teacher: Any,
                    source: BatchSource) -> ClassificationObjective | EmbeddingObjective:
    """The objective of a run of ``task`` training ``model``. ``teacher`` is the KD target (cached
    outputs, whose width is read off their columns, a live module, or None); the widths of live
    modules are read from their outputs on the first inputs of ``source`` (the training batches).
    A distilling embedding run whose student is narrower or wider than its teacher gets a
    projection head."""
    if task.kind != "embedding":
        return ClassificationObjective(config.label_smoothing)
    probe = next(source.epoch())[1][:2]
    teacher_width = None
    if config.distills() and teacher is not None:
        first = teacher[0] if isinstance(teacher, (list, tuple)) else teacher
        teacher_width = output_width(first, probe) if isinstance(first, nn.Module) else int(first.train.shape[-1])
    return EmbeddingObjective(task.num_classes, output_width(model, probe), teacher_width, config)


__all__ = ["ClassificationObjective", "EmbeddingObjective", "Evaluation", "build_objective", "embed",
           "evaluate_model", "output_width"]
