"""The knowledge-distillation loss (Hinton et al., 2015) in the convention of seeds 001 and 004."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F


class KDLoss(NamedTuple):
    total: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | Sequence[torch.Tensor] | None,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
    teacher_weights: Sequence[float] | None = None,
) -> KDLoss:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, batch mean.

    Several teachers (a sequence of logits) give one target: the average of their probabilities
    at temperature T, weighed by ``teacher_weights`` (normalised; equal when None), as an ensemble
    of teachers or an EMA teacher mixed with a fixed one does.

    The T^2 factor keeps the soft-target gradient magnitude roughly constant across T, since
    the gradient of the softened KL term scales as 1/T^2. With ``teacher_logits=None`` (or
    ``alpha=0``) the KD part is zero and no teacher is needed. Returns the total and both parts
    (unweighted) for logging.

    ``labels`` may cover only the first rows: a batch from a transfer set has unlabelled inputs
    appended, which the KD term sees and cross-entropy does not.
    """
    ce = F.cross_entropy(student_logits[: len(labels)], labels, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha == 0:
        kd = student_logits.new_zeros(())
    else:
        log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
        log_p_teacher = _target_log_probs(teacher_logits, teacher_weights, temperature, student_logits.dtype)
        # A teacher logit of -inf (a masked class) has probability 0 and must add 0, but the KL
        # kernel computes exp(t) * (t - s) = 0 * -inf = NaN; the most negative float gives 0 exactly.
        log_p_teacher = log_p_teacher.clamp(min=torch.finfo(log_p_teacher.dtype).min)
        # KL(teacher || student) from log-probabilities on both sides: stable for large logits.
        kd = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature**2
    total = alpha * kd + (1 - alpha) * ce if alpha < 1 else kd
    return KDLoss(total, kd, ce)


def _target_log_probs(teacher_logits: torch.Tensor | Sequence[torch.Tensor], weights: Sequence[float] | None,
                      temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """log of the (weighted mean of the) teachers' probabilities at ``temperature``."""
    if isinstance(teacher_logits, torch.Tensor):
        teacher_logits = [teacher_logits]
    log_probs = [F.log_softmax(t.to(dtype) / temperature, dim=-1) for t in teacher_logits]
    if len(log_probs) == 1:
        return log_probs[0]
    weights = list(weights) if weights is not None else [1.0] * len(log_probs)
    if len(weights) != len(log_probs) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"teacher_weights={weights} do not fit {len(log_probs)} teachers: one weight >= 0 "
                         "per teacher, not all 0")
    # log(sum_i w_i p_i) without leaving log space: exact for probabilities of 0 as well.
    log_w = torch.log(torch.tensor(weights, dtype=dtype, device=log_probs[0].device) / sum(weights))
    return torch.logsumexp(torch.stack(log_probs) + log_w.view(-1, *[1] * log_probs[0].dim()), dim=0)
