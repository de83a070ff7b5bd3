"""The transfer set: unlabelled inputs seen by the KD term only, the labelled subset fixed by
data_seed, and the no-KD twin."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import kdcore
from kdcore import ConfigError, TeacherLogits, check_config, make_config, no_kd_twin, train
from kdcore.data import fraction_indices, labels_of, left_out, transfer_pool
from kdcore.tasks.base import Splits
from kdcore.tasks.digits import DigitsTask


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


class _LabelsHiddenOutside(torch.utils.data.Dataset):
    """Digits' training split as a plain Dataset whose ``targets`` (what the stratified subset is
    drawn from) are true, but whose samples outside the labelled subset of ``data_seed`` carry wrong
    labels: a run that never reads those labels cannot tell it from the true split."""

    def __init__(self, train: TensorDataset, fraction: float, data_seed: int, hide: bool) -> None:
        self.x, self.targets = train.tensors
        self.shown = self.targets.clone()
        if hide:
            unused = left_out(len(self.targets), fraction_indices(self.targets, fraction, data_seed))
            self.shown[unused] = (self.shown[unused] + 1) % 10

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.x[i], self.shown[i]


class _DigitsAsDataset(DigitsTask):
    """Digits read through a DataLoader (a plain Dataset), optionally with hidden labels."""

    def __init__(self, base: kdcore.Task, data_seed: int = 0, fraction: float = 1.0, hide: bool = False) -> None:
        self.base, self.data_seed, self.fraction, self.hide = base, data_seed, fraction, hide

    @functools.cache
    def splits(self) -> Splits:
        splits = self.base.splits()
        return Splits(_LabelsHiddenOutside(splits.train, self.fraction, self.data_seed, self.hide),
                      splits.val, splits.test)


class _DigitsWithPool(DigitsTask):
    """Digits plus an unlabelled split: noisy copies of the training inputs."""

    @functools.cache
    def splits(self) -> Splits:
        splits = DigitsTask.splits(self)
        x = splits.train.tensors[0]
        noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        return Splits(splits.train, splits.val, splits.test, unlabeled=TensorDataset(noisy))


@pytest.fixture(scope="module")
def pooled():
    return _DigitsWithPool()


@pytest.fixture(scope="module")
def pooled_logits(tmp_path_factory, pooled, teacher):
    return kdcore.teacher_outputs(pooled, teacher.model, teacher.digest, tmp_path_factory.mktemp("pool-cache"),
                                  device="cpu").logits


def test_labels_outside_the_labelled_subset_are_never_read(digits, teacher_logits):
    # The transfer set here is the 70% of the training inputs whose labels the run must not use.
    config = make_config(alpha=0.7, temperature=4.0, epochs=2, data_fraction=0.3, transfer_ratio=2.0,
                         seed=5, data_seed=2, device="cpu")
    true = _DigitsAsDataset(digits)

    reference = train(true, config, teacher=teacher_logits)
    hidden = train(_DigitsAsDataset(digits, data_seed=2, fraction=0.3, hide=True), config, teacher=teacher_logits)
    other_subset = train(_DigitsAsDataset(digits, data_seed=3, fraction=0.3, hide=True), config,
                         teacher=teacher_logits)

    assert _same(reference.state_dict, hidden.state_dict)
    # The check can fail: when the wrong labels do fall in the labelled subset, training changes.
    assert _differ(reference.state_dict, other_subset.state_dict) > 1e-3


def test_the_transfer_set_holds_inputs_and_no_labels(digits):
    train_split = digits.splits().train
    unused = left_out(len(train_split), fraction_indices(labels_of(train_split), 0.3, 0))

    pool = transfer_pool(train_split, unused, TensorDataset(torch.zeros(7, 64)))

    assert isinstance(pool, TensorDataset) and len(pool.tensors) == 1
    assert torch.equal(pool.tensors[0][: len(unused)], train_split.tensors[0][unused])
    assert len(pool) == len(unused) + 7


@pytest.mark.parametrize("seed", [0, 1])
def test_the_seed_varies_the_initialisation_but_not_the_labelled_subset(digits, seed):
    config = make_config(alpha=0.0, epochs=1, data_fraction=0.3, data_seed=2, seed=seed, device="cpu")

    reference = train(_DigitsAsDataset(digits), config)
    hidden = train(_DigitsAsDataset(digits, data_seed=2, fraction=0.3, hide=True), config)
    other_seed = train(_DigitsAsDataset(digits), config.model_copy(update={"seed": seed + 7}))

    assert _same(reference.state_dict, hidden.state_dict)
    assert _differ(reference.state_dict, other_seed.state_dict) > 1e-3


def test_the_teacher_logits_of_unlabelled_inputs_are_what_the_kd_term_learns_from(pooled, pooled_logits):
    config = make_config(alpha=0.8, temperature=4.0, epochs=2, transfer_ratio=1.0, device="cpu")
    garbled = TeacherLogits(pooled_logits.train, pooled_logits.val, pooled_logits.test,
                            pooled_logits.unlabeled.flip(0))

    real = train(pooled, config, teacher=pooled_logits)
    wrong = train(pooled, config, teacher=garbled)
    without = train(pooled, config.model_copy(update={"transfer_ratio": 0.0}), teacher=pooled_logits)

    assert _differ(real.state_dict, wrong.state_dict) > 1e-3
    assert _differ(real.state_dict, without.state_dict) > 1e-3


def test_cached_pool_logits_train_like_the_live_teacher(pooled, pooled_logits, teacher):
    config = make_config(alpha=0.8, temperature=4.0, epochs=2, data_fraction=0.5, transfer_ratio=1.5,
                         device="cpu")

    cached = train(pooled, config, teacher=pooled_logits)
    live = train(pooled, config, teacher=teacher.model)

    assert _differ(cached.state_dict, live.state_dict) < 1e-5


def test_an_epoch_is_one_pass_over_the_labelled_subset(pooled, pooled_logits):
    config = make_config(alpha=0.8, epochs=1, data_fraction=0.5, transfer_ratio=3.0, device="cpu")

    result = train(pooled, config, teacher=pooled_logits)

    labelled = len(fraction_indices(labels_of(pooled.splits().train), 0.5, 0))
    epoch = result.history[0]
    assert epoch.samples_per_s * epoch.epoch_time_s == pytest.approx(labelled)


def test_the_pool_logits_are_cached_and_checked_like_the_rest(pooled, pooled_logits, teacher, tmp_path):
    first = kdcore.teacher_outputs(pooled, teacher.model, teacher.digest, tmp_path, device="cpu")
    again = kdcore.teacher_outputs(pooled, teacher.model, teacher.digest, tmp_path, device="cpu")

    assert not first.hit and again.hit
    assert again.logits.unlabeled.shape == (len(pooled.splits().unlabeled), pooled.num_classes)
    with torch.no_grad():
        live = teacher.model(pooled.splits().unlabeled.tensors[0])
    assert torch.allclose(again.logits.unlabeled, live, atol=1e-5)
    assert kdcore.cache_key(pooled, teacher.digest) != kdcore.cache_key(DigitsTask(), teacher.digest)


def test_a_transfer_ratio_without_unlabelled_inputs_is_rejected_before_training(digits):
    config = make_config(alpha=0.5, transfer_ratio=2.0, data_fraction=1.0, device="cpu")

    with pytest.raises(ConfigError, match=r"transfer_ratio=2 needs unlabelled inputs.*lower data_fraction"):
        check_config(digits, config)
    check_config(digits, config.model_copy(update={"data_fraction": 0.5}))
    check_config(digits, config.model_copy(update={"alpha": 0.0}))  # no KD term: the pool is not used


def test_the_no_kd_twin_keeps_the_stopping_rule_and_data_and_drops_the_teacher():
    config = make_config(alpha=0.7, transfer_ratio=4.0, temperature=3.0, epochs=17, patience=4, min_delta=0.01,
                         data_fraction=0.3, data_seed=9, seed=2)

    twin = no_kd_twin(config)

    assert (twin.alpha, twin.transfer_ratio) == (0.0, 0.0)
    kept = {"epochs", "patience", "min_delta", "data_fraction", "data_seed", "seed", "lr", "batch_size", "ratio"}
    assert {name: getattr(twin, name) for name in kept} == {name: getattr(config, name) for name in kept}


class _CountingTeacher(nn.Module):
    """A real teacher network that counts its forward passes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_a_live_teacher_is_not_run_when_alpha_is_zero(digits, teacher):
    counting = _CountingTeacher(teacher.model)

    train(digits, make_config(alpha=0.0, epochs=1, device="cpu"), teacher=counting)
    assert counting.calls == 0
    train(digits, make_config(alpha=0.5, epochs=1, device="cpu"), teacher=counting)
    assert counting.calls > 0


@pytest.mark.parametrize("setting", [{"temperature": float("inf")}, {"lr": float("inf")}, {"lr": float("nan")},
                                     {"temperature": 1e-30}, {"temperature": 1e6}, {"lr": 1e3},
                                     {"transfer_ratio": -1.0}, {"data_seed": -1}])
def test_unbounded_or_non_finite_settings_are_rejected_in_one_line(setting):
    with pytest.raises(ConfigError) as raised:
        make_config(**setting)

    message = str(raised.value)
    name = next(iter(setting))
    assert message.startswith(f"{name}=") and "allowed" in message and "\n" not in message


def test_mnist1d_ships_an_unlabelled_pool_disjoint_from_its_labelled_data():
    splits = kdcore.get_task("mnist1d").splits()

    pool = splits.unlabeled
    assert isinstance(pool, TensorDataset) and len(pool.tensors) == 1  # inputs only: no label to leak
    assert len(pool) == kdcore.get_task("mnist1d").unlabeled_size
    labelled = torch.cat([splits.train.tensors[0], splits.val.tensors[0], splits.test.tensors[0]])
    assert torch.cdist(pool.tensors[0][:2000], labelled).min() > 1e-3
