"""Data plumbing for the trainer: labels, nested data-fraction subsets, the transfer set,
batching, fingerprints."""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset

# (positions in the split, x, y); y is None for unlabelled inputs.
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def labels_of(dataset: Dataset) -> torch.Tensor:
    """Integer labels of every sample, without reading features where the dataset allows it."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    if hasattr(dataset, "targets"):
        return torch.as_tensor(dataset.targets)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])


def fraction_indices(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of a stratified ``fraction`` of the samples, deterministic for ``seed``.

    Each class is shuffled once per seed and its first ``ceil(fraction * n)`` samples kept, so
    for one seed the subset at 10% lies inside the subset at 30%: trials at different
    fractions see comparable data.
    """
    if fraction >= 1.0:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        kept.append(order[: max(1, math.ceil(fraction * len(members)))])
    return torch.cat(kept).sort().values


def take(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """The samples at ``indices``, staying a TensorDataset when the input is one."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[indices] for t in dataset.tensors))
    return Subset(dataset, indices.tolist())


def left_out(size: int, kept: torch.Tensor) -> torch.Tensor:
    """Sorted indices of ``range(size)`` not in ``kept``: the inputs whose labels a run does not use."""
    mask = torch.ones(size, dtype=torch.bool)
    mask[kept] = False
    return torch.nonzero(mask).flatten()


class _InputsOnly(Dataset):
    """A dataset's inputs without their labels, so no label can leak into the transfer set."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return _input_of(self.dataset[i])


def _input_of(item):
    """x from an ``(x, y)`` or ``(x,)`` sample, or the sample itself when it is a bare input."""
    return item[0] if isinstance(item, (tuple, list)) else item


def inputs_only(dataset: Dataset) -> Dataset:
    """The inputs of ``dataset`` (labelled or not), staying a one-tensor TensorDataset when it is one."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(dataset.tensors[0])
    return _InputsOnly(dataset)


def transfer_pool(train: Dataset, unused: torch.Tensor, unlabeled: Dataset | None) -> Dataset:
    """The transfer set: the training inputs at ``unused`` (their labels dropped) followed by the
    task's unlabelled inputs, as one inputs-only dataset (a TensorDataset when both parts are)."""
    parts = [inputs_only(take(train, unused))] + ([inputs_only(unlabeled)] if unlabeled is not None else [])
    parts = [part for part in parts if len(part)]
    if all(isinstance(part, TensorDataset) for part in parts):
        return TensorDataset(torch.cat([part.tensors[0] for part in parts])) if parts else TensorDataset(
            torch.empty(0))
    return ConcatDataset(parts)


class _Indexed(Dataset):
    """Adds each sample's position, so cached teacher logits can be looked up per batch."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return i, item[0], item[1]
        return i, _input_of(item)


class BatchSource:
    """Yields one epoch of ``(positions, x, y)`` batches on ``device``.

    TensorDatasets move to the device once and are batched by index permutation, which avoids
    DataLoader overhead for small data; any other Dataset goes through a DataLoader. A dataset of
    bare inputs (a one-tensor TensorDataset, or items that are not ``(x, y)`` pairs) yields y = None.
    """

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0) -> None:
        self.batch_size = batch_size
        self.device = device
        self.size = len(dataset)
        if isinstance(dataset, TensorDataset):
            self.tensors = tuple(t.to(device) for t in dataset.tensors)
            self.dataset = None
        else:
            self.tensors = None
            self.dataset = _Indexed(dataset)
            self.num_workers = num_workers

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def epoch(self, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """One pass over the data, shuffled when a generator is given, in order otherwise."""
        if self.tensors is not None:
            order = torch.randperm(self.size, generator=generator) if generator else torch.arange(self.size)
            order = order.to(self.device)
            labelled = len(self.tensors) > 1
            for start in range(0, self.size, self.batch_size):
                positions = order[start : start + self.batch_size]
                yield positions, self.tensors[0][positions], self.tensors[1][positions] if labelled else None
            return
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=generator is not None,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for positions, x, *y in loader:
            yield (
                positions.to(self.device, non_blocking=True),
                x.to(self.device, non_blocking=True),
                y[0].to(self.device, non_blocking=True) if y else None,
            )

    def forever(self, generator: torch.Generator) -> Iterator[Batch]:
        """Shuffled passes one after another, without end: the transfer set is drawn from this."""
        return itertools.chain.from_iterable(self.epoch(generator) for _ in itertools.count())


def fingerprint(dataset: Dataset) -> str:
    """A short hash of a split's contents, part of the teacher-cache key."""
    digest = hashlib.sha256()
    if isinstance(dataset, TensorDataset):
        for tensor in dataset.tensors:
            digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    else:
        # Hashing a large dataset in full would cost a pass over it; its size, labels and a
        # spread of samples catch the usual changes (new split, new preprocessing).
        digest.update(str(len(dataset)).encode())
        if len(dataset) and isinstance(dataset[0], (tuple, list)) and len(dataset[0]) == 2:
            digest.update(labels_of(dataset).cpu().numpy().tobytes())
        for i in range(0, len(dataset), max(1, len(dataset) // 16)):
            x = _input_of(dataset[i])
            digest.update(torch.as_tensor(x).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
