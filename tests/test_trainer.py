"""kdcore.train: stopping rules, best weights, determinism, resume, and the teacher it learns from."""

from __future__ import annotations

import copy
import math
import threading
import time

import pytest
import torch

from kdcore import StopTraining, TeacherLogits, make_config, train
from kdcore.trainer import learning_rate

TIMING_FIELDS = ("epoch_time_s", "samples_per_s")


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def _max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


def _without_timings(history) -> list[dict[str, float]]:
    return [{k: v for k, v in vars(epoch).items() if k not in TIMING_FIELDS} for epoch in history]


@pytest.fixture(scope="module")
def early_stopped(digits):
    """A plain-CE run with patience 3 that stops long before its 60 epochs (best epoch 10, stop at 13)."""
    return train(digits, make_config(alpha=0.0, epochs=60, patience=3, ratio=0.5, device="cpu"))


def test_early_stopping_stops_after_patience_epochs_without_improvement(early_stopped):
    assert early_stopped.stop_reason == "early_stopped"
    assert early_stopped.epochs_run < 60
    assert early_stopped.epochs_run == early_stopped.best_epoch + 3
    assert len(early_stopped.history) == early_stopped.epochs_run


def test_early_stopping_returns_the_best_epochs_weights(early_stopped, score):
    best = early_stopped.history[early_stopped.best_epoch - 1]
    last = early_stopped.history[-1]
    assert last.val_loss != pytest.approx(best.val_loss, rel=1e-4)  # the last weights are not the best

    val_loss, val_acc = score(early_stopped.state_dict, 0.5, "val")

    assert val_acc == pytest.approx(early_stopped.best_val_acc, abs=1e-9)
    assert val_acc == pytest.approx(max(epoch.val_acc for epoch in early_stopped.history), abs=1e-9)
    assert val_loss == pytest.approx(best.val_loss, rel=1e-5)


class _Overflowing(torch.nn.Module):
    """A student whose logits overflow float32 once its weights grow: a run that blows up."""

    def __init__(self, student: torch.nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, x):
        return self.student(x) * 1e38


def test_a_run_whose_loss_overflows_stops_as_diverged_without_raising(digits):
    config = make_config(alpha=0.0, epochs=3, lr=1.0, grad_clip=0.0, device="cpu")

    result = train(digits, config, build_model=lambda: _Overflowing(digits.build_student(0.5)))

    assert result.stop_reason == "diverged"
    assert result.epochs_run < 3


def test_deadline_stops_inside_an_epoch(digits):
    # batch_size=1: about a thousand optimizer steps per epoch, i.e. a long epoch.
    config = make_config(alpha=0.0, epochs=3, batch_size=1, device="cpu")
    train_size = len(digits.splits().train)
    # The first AdamW of a process imports torch._dynamo (about a second): do that outside the clock.
    torch.optim.AdamW(torch.nn.Linear(1, 1).parameters())
    started = time.time()

    result = train(digits, config, deadline=started + 0.05)

    elapsed = time.time() - started
    partial = result.history[0]
    seen = round(partial.samples_per_s * partial.epoch_time_s)
    assert result.stop_reason == "deadline"
    assert result.epochs_run == 1  # the partial epoch is validated, since nothing better exists
    assert 0 < seen < train_size / 2
    # Well under the time a full epoch takes at the measured speed.
    assert elapsed < 0.5 * train_size / partial.samples_per_s


def test_interrupt_event_stops_training(digits):
    interrupt = threading.Event()

    def set_interrupt_after_first_epoch(epoch):
        interrupt.set()

    result = train(digits, make_config(alpha=0.0, epochs=10, device="cpu"),
                   on_epoch=set_interrupt_after_first_epoch, interrupt=interrupt)

    assert result.stop_reason == "interrupted"
    assert result.epochs_run == 1


def test_on_epoch_hook_raising_stop_training_sets_its_reason(digits):
    def prune_at_epoch_two(epoch):
        if epoch.epoch == 2:
            raise StopTraining("pruned")

    result = train(digits, make_config(alpha=0.0, epochs=10, device="cpu"), on_epoch=prune_at_epoch_two)

    assert result.stop_reason == "pruned"
    assert result.epochs_run == 2


def test_same_seed_gives_identical_weights(digits, teacher_logits):
    config = make_config(alpha=0.7, epochs=2, seed=3, device="cpu")

    first = train(digits, config, teacher=teacher_logits)
    second = train(digits, config, teacher=teacher_logits)

    assert _same_weights(first.state_dict, second.state_dict)
    assert _without_timings(first.history) == _without_timings(second.history)


def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(digits, teacher_logits):
    config = make_config(alpha=0.7, temperature=3.0, epochs=5, seed=1, device="cpu")
    checkpoints = []
    uninterrupted = train(digits, config, teacher=teacher_logits, on_checkpoint=checkpoints.append)
    assert [c["epoch"] for c in checkpoints] == [1, 2, 3, 4, 5]

    resumed = train(digits, config, teacher=teacher_logits, resume=checkpoints[1])

    assert _same_weights(resumed.state_dict, uninterrupted.state_dict)
    assert _without_timings(resumed.history) == _without_timings(uninterrupted.history)
    assert (resumed.best_epoch, resumed.epochs_run, resumed.stop_reason) == (
        uninterrupted.best_epoch, uninterrupted.epochs_run, uninterrupted.stop_reason)
    assert resumed.test_acc == uninterrupted.test_acc


def test_low_fidelity_epochs_train_on_a_nested_share_of_the_labelled_data(digits, teacher_logits):
    from kdcore.data import fraction_indices, labels_of

    config = make_config(alpha=0.7, epochs=4, data_fraction=0.5, low_fidelity_epochs=2, low_fidelity_fraction=0.25,
                         patience=0, device="cpu")
    result = train(digits, config, teacher=teacher_logits)

    labelled = fraction_indices(labels_of(digits.splits().train), 0.5, config.data_seed)
    share = fraction_indices(labels_of(digits.splits().train)[labelled], 0.25, config.data_seed)
    seen = [round(h.samples_per_s * h.epoch_time_s) for h in result.history]
    assert seen == [len(share), len(share), len(labelled), len(labelled)]
    assert [h.train_fraction for h in result.history] == [0.25, 0.25, 1.0, 1.0]
    # The lr schedule counts the short epochs' steps, so its cosine still ends at the last step.
    steps = 2 * math.ceil(len(share) / config.batch_size) + 2 * math.ceil(len(labelled) / config.batch_size)
    assert result.history[-1].lr == pytest.approx(learning_rate(steps - 1, steps, config))


def test_resume_across_the_low_fidelity_boundary_matches_the_uninterrupted_run(digits, teacher_logits):
    config = make_config(alpha=0.7, epochs=4, low_fidelity_epochs=2, low_fidelity_fraction=0.3, seed=2, device="cpu")
    checkpoints = []
    uninterrupted = train(digits, config, teacher=teacher_logits, on_checkpoint=checkpoints.append)

    resumed = train(digits, config, teacher=teacher_logits, resume=checkpoints[0])  # inside the low epochs

    assert _same_weights(resumed.state_dict, uninterrupted.state_dict)
    assert _without_timings(resumed.history) == _without_timings(uninterrupted.history)


def test_checkpoint_states_are_not_changed_by_later_epochs(digits):
    received, copied_on_arrival = [], []

    def keep(state):
        received.append(state)
        copied_on_arrival.append(copy.deepcopy(state))

    train(digits, make_config(alpha=0.0, epochs=3, device="cpu"), on_checkpoint=keep)

    assert _same_weights(received[0]["model"], copied_on_arrival[0]["model"])
    first_moments = [s["exp_avg"] for s in received[0]["optimizer"]["state"].values()]
    first_moments_then = [s["exp_avg"] for s in copied_on_arrival[0]["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(first_moments, first_moments_then))


def test_cached_teacher_logits_train_like_the_live_teacher(digits, teacher, teacher_logits):
    # A data fraction makes the trainer index the cached logits by the kept subset.
    config = make_config(alpha=0.7, temperature=4.0, epochs=3, data_fraction=0.5, device="cpu")

    cached = train(digits, config, teacher=teacher_logits)
    live = train(digits, config, teacher=teacher.model)

    assert _max_weight_difference(cached.state_dict, live.state_dict) < 1e-5
    assert cached.best_val_acc == pytest.approx(live.best_val_acc, abs=1e-9)


def test_cached_teacher_logits_are_what_the_student_learns_from(digits, teacher_logits):
    config = make_config(alpha=0.7, epochs=1, device="cpu")
    shuffled = TeacherLogits(teacher_logits.train.flip(0), teacher_logits.val, teacher_logits.test)

    real = train(digits, config, teacher=teacher_logits)
    wrong = train(digits, config, teacher=shuffled)

    assert _max_weight_difference(real.state_dict, wrong.state_dict) > 1e-3


def test_alpha_above_zero_without_teacher_raises(digits):
    with pytest.raises(ValueError, match="teacher"):
        train(digits, make_config(alpha=0.5, epochs=1, device="cpu"), teacher=None)
