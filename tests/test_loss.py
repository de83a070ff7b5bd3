"""kdcore.kd_loss: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE, batch mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcore import kd_loss

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
LABELS = [1, 2]


def _numpy_kd_loss(student, teacher, labels, temperature, alpha):
    """The KD loss written out with numpy in float64, independently of torch."""
    s, t = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    log_p = log_softmax(s / temperature)
    log_q = log_softmax(t / temperature)
    kd = (np.exp(log_q) * (log_q - log_p)).sum(axis=1).mean() * temperature**2
    ce = -log_softmax(s)[np.arange(len(labels)), labels].mean()
    return alpha * kd + (1 - alpha) * ce, kd, ce


def _grad_wrt_student(student, teacher, labels, **options):
    student = student.clone().requires_grad_(True)
    kd_loss(student, teacher, labels, **options).total.backward()
    return student.grad


def test_matches_hand_computed_value():
    loss = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS), temperature=2.0, alpha=0.3)

    total, kd, ce = _numpy_kd_loss(STUDENT, TEACHER, LABELS, temperature=2.0, alpha=0.3)
    assert loss.kd.item() == pytest.approx(kd, rel=1e-5)
    assert loss.ce.item() == pytest.approx(ce, rel=1e-5)
    assert loss.total.item() == pytest.approx(total, rel=1e-5)
    # The same number, worked out once by hand (math.exp/log on these 2x3 logits) and frozen here.
    assert loss.total.item() == pytest.approx(0.32457892417, rel=1e-5)


def test_alpha_zero_equals_cross_entropy_exactly():
    student, teacher, labels = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)

    loss = kd_loss(student, teacher, labels, temperature=4.0, alpha=0.0)

    assert torch.equal(loss.total, F.cross_entropy(student, labels))


def test_alpha_one_takes_no_gradient_from_labels():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(16, 10, generator=generator)
    teacher = torch.randn(16, 10, generator=generator)
    labels = torch.randint(0, 10, (16,), generator=generator)
    other_labels = (labels + 1 + torch.randint(0, 9, (16,), generator=generator)) % 10
    assert not torch.equal(labels, other_labels)

    grad = _grad_wrt_student(student, teacher, labels, temperature=3.0, alpha=1.0)
    grad_other = _grad_wrt_student(student, teacher, other_labels, temperature=3.0, alpha=1.0)

    assert grad.abs().sum() > 0
    assert torch.equal(grad, grad_other)


def test_t_squared_keeps_soft_target_gradient_magnitude_across_temperatures():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(32, 10, generator=generator)
    teacher = torch.randn(32, 10, generator=generator)
    labels = torch.zeros(32, dtype=torch.long)

    norm_t2 = _grad_wrt_student(student, teacher, labels, temperature=2.0, alpha=1.0).norm().item()
    norm_t8 = _grad_wrt_student(student, teacher, labels, temperature=8.0, alpha=1.0).norm().item()

    assert 1 / 3 < norm_t2 / norm_t8 < 3
    # Without the T^2 factor the T=8 gradient would be about 16x smaller than at T=2.
    assert (norm_t2 / 2.0**2) / (norm_t8 / 8.0**2) > 8


def test_label_smoothing_changes_only_the_cross_entropy_part():
    student, teacher, labels = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)

    plain = kd_loss(student, teacher, labels, temperature=2.0, alpha=0.5)
    smoothed = kd_loss(student, teacher, labels, temperature=2.0, alpha=0.5, label_smoothing=0.2)

    assert torch.equal(smoothed.kd, plain.kd)
    assert smoothed.ce.item() != pytest.approx(plain.ce.item(), rel=1e-3)
    assert torch.allclose(smoothed.ce, F.cross_entropy(student, labels, label_smoothing=0.2))


def test_huge_logits_give_finite_correct_loss_and_gradient():
    student = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 0.0, 1e4]])
    teacher = torch.tensor([[-1e4, 1e4, 0.0], [0.0, 1e4, -1e4]])
    labels = torch.tensor([1, 0])

    loss = kd_loss(student, teacher, labels, temperature=4.0, alpha=0.7)
    grad = _grad_wrt_student(student, teacher, labels, temperature=4.0, alpha=0.7)

    assert all(torch.isfinite(part).all() for part in loss)
    assert torch.isfinite(grad).all()
    total, _, _ = _numpy_kd_loss(student.tolist(), teacher.tolist(), labels.tolist(), temperature=4.0, alpha=0.7)
    assert loss.total.item() == pytest.approx(total, rel=1e-4)


def test_a_teacher_logit_of_minus_infinity_gives_a_finite_loss_and_gradient():
    # A class the teacher rules out has probability 0 and adds nothing to the KL term.
    student = torch.tensor(STUDENT)
    masked = torch.tensor(TEACHER)
    masked[:, 0] = -float("inf")
    labels = torch.tensor(LABELS)

    loss = kd_loss(student, masked, labels, temperature=2.0, alpha=0.7)
    grad = _grad_wrt_student(student, masked, labels, temperature=2.0, alpha=0.7)

    assert all(torch.isfinite(part).all() for part in loss) and torch.isfinite(grad).all()
    very_negative = masked.clone()
    very_negative[:, 0] = -1e6  # exp(-1e6 / T) underflows to 0: the same distribution
    total, kd, _ = _numpy_kd_loss(STUDENT, very_negative.tolist(), LABELS, temperature=2.0, alpha=0.7)
    assert loss.total.item() == pytest.approx(total, rel=1e-5)
    assert loss.kd.item() == pytest.approx(kd, rel=1e-5)


def test_labels_for_the_first_rows_leave_the_rest_to_the_kd_term_alone():
    # A transfer-set batch: two labelled rows, then one unlabelled row only the KD term sees.
    extra_student, extra_teacher = [3.0, 0.0, -2.0], [0.0, 0.0, 4.0]
    student = torch.tensor([*STUDENT, extra_student])
    teacher = torch.tensor([*TEACHER, extra_teacher])

    loss = kd_loss(student, teacher, torch.tensor(LABELS), temperature=3.0, alpha=0.6)

    _, _, ce = _numpy_kd_loss(STUDENT, TEACHER, LABELS, temperature=3.0, alpha=0.6)
    _, kd, _ = _numpy_kd_loss([*STUDENT, extra_student], [*TEACHER, extra_teacher], [0, 0, 0],
                              temperature=3.0, alpha=0.6)
    assert loss.ce.item() == pytest.approx(ce, rel=1e-6)
    assert loss.kd.item() == pytest.approx(kd, rel=1e-6)
    assert loss.total.item() == pytest.approx(0.6 * kd + 0.4 * ce, rel=1e-6)
