"""kdcore.data: stratified, nested data-fraction subsets, and that only the train split shrinks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from kdcore import make_config, train
from kdcore.data import fraction_indices, labels_of, take


@pytest.fixture(scope="module")
def labels(digits) -> torch.Tensor:
    return labels_of(digits.splits().train)


def _seen_train_samples(epoch) -> int:
    """Samples one epoch trained on: samples_per_s * epoch_time_s."""
    return round(epoch.samples_per_s * epoch.epoch_time_s)


def test_same_seed_gives_same_subset(labels):
    assert torch.equal(fraction_indices(labels, 0.3, seed=7), fraction_indices(labels, 0.3, seed=7))


def test_different_seeds_give_different_subsets(labels):
    assert not torch.equal(fraction_indices(labels, 0.3, seed=7), fraction_indices(labels, 0.3, seed=8))


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_smaller_fraction_is_inside_larger_fraction(labels, seed):
    small = set(fraction_indices(labels, 0.1, seed).tolist())
    large = set(fraction_indices(labels, 0.3, seed).tolist())

    assert small < large


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.55])
def test_subset_is_stratified(labels, fraction):
    kept = labels[fraction_indices(labels, fraction, seed=3)]

    for cls in torch.unique(labels):
        expected = fraction * (labels == cls).sum().item()
        assert abs((kept == cls).sum().item() - expected) <= 1, f"class {cls.item()}"


def test_subset_indices_are_sorted_and_unique(labels):
    indices = fraction_indices(labels, 0.4, seed=5)

    assert torch.equal(indices, torch.unique(indices))


def test_fraction_one_keeps_every_sample(labels):
    assert torch.equal(fraction_indices(labels, 1.0, seed=3), torch.arange(len(labels)))


def test_take_keeps_a_tensor_dataset_with_the_chosen_rows(digits):
    dataset = digits.splits().train
    indices = torch.tensor([0, 5, 9])

    taken = take(dataset, indices)

    assert isinstance(taken, TensorDataset)
    assert torch.equal(taken.tensors[0], dataset.tensors[0][indices])
    assert torch.equal(labels_of(taken), dataset.tensors[1][indices])


class _PlainDataset(Dataset):
    """A map-style dataset that is not a TensorDataset and has no ``targets``."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.full((2,), float(i)), self.labels[i]


def test_labels_of_a_subset_of_a_plain_dataset():
    dataset = _PlainDataset([3, 1, 4, 1, 5, 9, 2, 6])

    taken = take(dataset, torch.tensor([1, 4, 7]))

    assert isinstance(taken, Subset)
    assert labels_of(taken).tolist() == [1, 5, 6]


def test_data_fraction_trains_on_the_stratified_subset(digits):
    config = make_config(alpha=0.0, epochs=1, data_fraction=0.3, seed=4, device="cpu")

    result = train(digits, config)

    expected = len(fraction_indices(labels_of(digits.splits().train), 0.3, seed=4))
    assert expected < len(digits.splits().train)
    assert _seen_train_samples(result.history[0]) == expected


def test_data_fraction_leaves_validation_and_test_whole(digits, score):
    config = make_config(alpha=0.0, epochs=2, data_fraction=0.3, ratio=0.5, device="cpu")

    result = train(digits, config)

    best = result.history[result.best_epoch - 1]
    val_loss, val_acc = score(result.state_dict, 0.5, "val")
    _, test_acc = score(result.state_dict, 0.5, "test")
    assert val_acc == pytest.approx(result.best_val_acc, abs=1e-9)
    assert val_loss == pytest.approx(best.val_loss, rel=1e-5)
    assert test_acc == pytest.approx(result.test_acc, abs=1e-9)
