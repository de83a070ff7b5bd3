"""Retrieval quality of embeddings: Recall@K within one split, as metric learning reports it.

Each item of a split queries every other item of the same split by cosine similarity; the query
is a hit at K when one of its K nearest neighbours has its label (Recall@K on CUB-200 or Stanford
Online Products, Song et al. 2016). Labelled items are what every kdsweep task already provides,
so an embedding task keeps the ``(x, y)`` splits, the stratified data fractions and the teacher
cache of a classification task; a design with two views of each signal (query view vs candidate
view) would need paired splits of its own for the same measurement.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Queries scored per block: a block x N similarity matrix is all that exists at once, so 10k
# items need 1024 x 10k floats (40 MB), not 10k x 10k (400 MB).
_QUERY_BLOCK = 1024


@torch.no_grad()
def recall_at_k(embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5),
                *, block: int = _QUERY_BLOCK) -> dict[int, float]:
    """{k: share of items one of whose k nearest other items (cosine) has the same label}.

    ``embeddings`` is (N, D), ``labels`` (N,) integer. An item never retrieves itself; equal
    similarities are ranked as ``torch.topk`` ranks them.
    """
    if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"recall_at_k needs embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    count = len(embeddings)
    if not ks or min(ks) < 1 or max(ks) > count - 1:
        raise ValueError(f"recall_at_k: ks={list(ks)} must be between 1 and N - 1 = {count - 1} (the other items "
                         "of the split); use a larger split or smaller ks")
    normed = F.normalize(embeddings.float(), dim=1)
    deepest = max(ks)
    hits = {k: 0 for k in ks}
    for start in range(0, count, block):
        queries = normed[start : start + block]
        similarity = queries @ normed.T
        rows = torch.arange(len(queries), device=similarity.device)
        similarity[rows, rows + start] = -float("inf")  # the query itself is no candidate
        nearest = similarity.topk(deepest, dim=1).indices
        same = labels[nearest] == labels[start : start + block, None]
        for k in ks:
            hits[k] += int(same[:, :k].any(dim=1).sum())
    return {k: hits[k] / count for k in ks}


__all__ = ["recall_at_k"]
