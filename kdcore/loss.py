"""The knowledge-distillation loss (Hinton et al., 2015) in the convention of seeds 001 and 004."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class KDLoss(NamedTuple):
    total: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> KDLoss:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, batch mean.

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
        log_p_teacher = F.log_softmax(teacher_logits.to(student_logits.dtype) / temperature, dim=-1)
        # A teacher logit of -inf (a masked class) has probability 0 and must add 0, but the KL
        # kernel computes exp(t) * (t - s) = 0 * -inf = NaN; the most negative float gives 0 exactly.
        log_p_teacher = log_p_teacher.clamp(min=torch.finfo(log_p_teacher.dtype).min)
        # KL(teacher || student) from log-probabilities on both sides: stable for large logits.
        kd = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature**2
    total = alpha * kd + (1 - alpha) * ce if alpha < 1 else kd
    return KDLoss(total, kd, ce)
