"""Data plumbing for the trainer: labels, nested data-fraction subsets, batching, fingerprints."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (positions in the split, x, y)


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


class _Indexed(Dataset):
    """Adds each sample's position, so cached teacher logits can be looked up per batch."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return i, x, y


class BatchSource:
    """Yields one epoch of ``(positions, x, y)`` batches on ``device``.

    TensorDatasets move to the device once and are batched by index permutation, which avoids
    DataLoader overhead for small data; any other Dataset goes through a DataLoader.
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
            for start in range(0, self.size, self.batch_size):
                positions = order[start : start + self.batch_size]
                yield positions, self.tensors[0][positions], self.tensors[1][positions]
            return
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=generator is not None,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for positions, x, y in loader:
            yield (
                positions.to(self.device, non_blocking=True),
                x.to(self.device, non_blocking=True),
                y.to(self.device, non_blocking=True),
            )


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
        digest.update(labels_of(dataset).cpu().numpy().tobytes())
        for i in range(0, len(dataset), max(1, len(dataset) // 16)):
            x, _ = dataset[i]
            digest.update(torch.as_tensor(x).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
