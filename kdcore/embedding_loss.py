"""Losses of embedding models: the task's own (a proxy loss) and distillation from a teacher's
embeddings (a direct term and a relational term), the embedding counterparts of kdcore.loss."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class ProxyLoss(nn.Module):
    """Normalised-softmax loss (Zhai & Wu, 2019): cross-entropy over ``scale * cos(e, p_c)`` with
    one learnable proxy ``p_c`` per class. What an embedding student trains with without a teacher
    and what ``1 - alpha`` weighs against distillation.

    Chosen because it needs no pair or triplet mining, so it is stable on tiny batches and data,
    and a few epochs suffice. The proxies are training state (optimised and checkpointed with the
    model), never part of the exported embedding model.
    """

    # Cosines lie in [-1, 1]: unscaled, the softmax over classes stays nearly flat and the loss
    # barely trains; 16 is in the range the paper found to work (its temperature 0.05 is 20).
    scale = 16.0

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.proxies = nn.Parameter(F.normalize(torch.randn(num_classes, dim), dim=1))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(embeddings, dim=1) @ F.normalize(self.proxies, dim=1).T

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0,
                reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings), labels, label_smoothing=label_smoothing, reduction=reduction)


class EmbeddingKDLoss(NamedTuple):
    """Distillation between embeddings: ``total = embed_weight * direct + relational_weight *
    relational``, and both parts unweighted for logging."""

    total: torch.Tensor
    direct: torch.Tensor
    relational: torch.Tensor


def embedding_kd_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    *,
    projected_emb: torch.Tensor | None = None,
    embed_loss: Literal["cosine", "mse"] = "cosine",
    embed_weight: float = 1.0,
    relational_weight: float = 1.0,
    relational_temperature: float = 0.1,
) -> EmbeddingKDLoss:
    """Batch means of two terms between a student's and a teacher's embeddings of the same inputs.

    direct: ``1 - cos(s', t)`` (``embed_loss="cosine"``) or ``mean((s' - t)^2)`` over the embedding
    dimensions (``"mse"``, on raw vectors, so it also matches the teacher's norms), where ``s'`` is
    ``projected_emb`` (the student's embedding through a projection head to the teacher's width)
    or ``student_emb`` itself when the widths agree.

    relational: ``KL(softmax(S_t / T) || softmax(S_s / T))`` over each row of the in-batch cosine
    similarities, an item's similarity to itself left out (it is always 1 and says nothing), as in
    similarity-based distillation (Tung & Mori 2019; Abbasi Koohpayegani et al. 2020). It uses each
    model's own embeddings, so it needs no projection. No T^2 factor: T here scales cosines, not
    logits, and the term is weighed by ``relational_weight`` instead. Zero for a batch of one.
    """
    projected = student_emb if projected_emb is None else projected_emb
    if projected.shape != teacher_emb.shape:
        raise ValueError(f"embedding_kd_loss: the student's embeddings {tuple(projected.shape)} do not match the "
                         f"teacher's {tuple(teacher_emb.shape)}; pass projected_emb (a projection head's output) "
                         "when the widths differ")
    teacher_emb = teacher_emb.to(projected.dtype)
    if embed_loss == "cosine":
        direct = (1 - F.cosine_similarity(projected, teacher_emb, dim=1)).mean()
    elif embed_loss == "mse":
        direct = F.mse_loss(projected, teacher_emb)
    else:
        raise ValueError(f"embed_loss={embed_loss!r} is unknown (allowed: 'cosine', 'mse')")
    relational = _relational(student_emb, teacher_emb, relational_temperature)
    return EmbeddingKDLoss(embed_weight * direct + relational_weight * relational, direct, relational)


def _relational(student_emb: torch.Tensor, teacher_emb: torch.Tensor, temperature: float) -> torch.Tensor:
    size = len(student_emb)
    if size < 2:
        return student_emb.new_zeros(())
    off_diagonal = ~torch.eye(size, dtype=torch.bool, device=student_emb.device)

    def log_rows(emb: torch.Tensor) -> torch.Tensor:
        normed = F.normalize(emb, dim=1)
        similarity = (normed @ normed.T)[off_diagonal].view(size, size - 1)
        return F.log_softmax(similarity / temperature, dim=1)

    return F.kl_div(log_rows(student_emb), log_rows(teacher_emb), reduction="batchmean", log_target=True)


__all__ = ["EmbeddingKDLoss", "ProxyLoss", "embedding_kd_loss"]
