"""Teacher-output cache: the teacher's logits (or, for an embedding task, its embeddings) for
every split, computed once per teacher and data.

Raw logits are stored (temperature is applied in the loss), so one cache serves every T and
alpha of a sweep, and a trainer fed from it runs no teacher forward pass at all.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from kdcore._files import load_safe, save_atomic, tensor_digest
from kdcore.data import BatchSource, fingerprint
from kdcore.errors import CacheError
from kdcore.tasks.base import Task
from kdcore.trainer import TeacherLogits, resolve_device

log = logging.getLogger("kdsweep")

CACHE_FORMAT = "kdsweep.teacher-logits/1"
_SPOT_CHECKS = 8


def _split_names(splits) -> tuple[str, ...]:
    """The splits whose logits are cached: train, val, test, and the transfer set when the task has one."""
    return ("train", "val", "test") + (("unlabeled",) if splits.unlabeled is not None else ())


@dataclass(frozen=True)
class CachedOutputs:
    logits: TeacherLogits
    path: Path
    hit: bool  # False when this call computed the logits
    build_time_s: float


def cache_key(task: Task, teacher_digest: str) -> str:
    """Hash of the task name, the teacher's weights, a fingerprint of every split and, for a task
    that is not a classification task, its kind (so logits and embeddings never share a file; a
    classification task's key is the one it always had)."""
    splits = task.splits()
    parts = [task.name, teacher_digest, *(fingerprint(getattr(splits, s)) for s in _split_names(splits))]
    if task.kind != "classification":
        parts.append(f"kind={task.kind}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def teacher_outputs(
    task: Task, teacher: nn.Module, teacher_digest: str, cache_root: Path, *, device: str = "auto"
) -> CachedOutputs:
    """The teacher's logits from ``cache_root``, computing and storing them on a miss.

    A cache file that is truncated, corrupt or made for other weights or data is detected,
    logged and rebuilt, never used.
    """
    key = cache_key(task, teacher_digest)
    path = Path(cache_root) / key / "logits.pt"
    splits = task.splits()
    names = _split_names(splits)
    if path.exists():
        # Logits have one column per class; an embedding has whatever width the teacher gives.
        problem = _verify(path, key, splits, task.num_classes if task.kind == "classification" else None)
        if problem is None:
            saved = load_safe(path)
            return CachedOutputs(TeacherLogits(*(saved[s] for s in names)), path, True, 0.0)
        log.warning("teacher cache %s is unusable (%s); rebuilding it", path, problem)

    started = time.perf_counter()
    torch_device = resolve_device(device)
    teacher = teacher.to(torch_device).eval()
    logits = {s: _forward(teacher, getattr(splits, s), torch_device) for s in names}
    for split, values in logits.items():
        # -inf is a class the teacher rules out (its probability is 0); NaN or +inf has no meaning.
        if torch.isnan(values).any() or torch.isposinf(values).any():
            raise CacheError(f"the teacher's logits on the {split} split contain NaN or +inf: "
                             "check the teacher's weights and its forward pass")
    save_atomic({"format": CACHE_FORMAT, "key": key, **logits,
                 "sha256": {s: tensor_digest(logits[s]) for s in names}}, path)
    saved = load_safe(path)
    _spot_check(teacher, splits.train, saved["train"], torch_device)
    teacher.cpu()
    return CachedOutputs(TeacherLogits(*(saved[s] for s in names)), path, False, time.perf_counter() - started)


@torch.no_grad()
def _forward(teacher: nn.Module, dataset: Dataset, device: torch.device) -> torch.Tensor:
    """Logits in split order, in float32 (no autocast) so cached values match a live forward."""
    outputs = [teacher(x).float().cpu() for _, x, _ in BatchSource(dataset, 512, device).epoch()]
    return torch.cat(outputs)


def _verify(path: Path, key: str, splits, num_classes: int | None) -> str | None:
    """None when the file at ``path`` is a sound cache for ``key``, else what is wrong with it.
    ``num_classes`` None (embeddings): any width, the same in every split."""
    try:
        saved = load_safe(path)
    except Exception as error:
        return f"unreadable: {type(error).__name__}"
    if not isinstance(saved, dict) or saved.get("format") != CACHE_FORMAT or saved.get("key") != key:
        return "made for another teacher or data"
    if not isinstance(saved.get("sha256"), dict):
        return "no checksums"
    width = num_classes
    for split in _split_names(splits):
        tensor = saved.get(split)
        if width is None and isinstance(tensor, torch.Tensor) and tensor.dim() == 2:
            width = tensor.shape[1]
        expected = (len(getattr(splits, split)), width)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected:
            return f"{split} logits have the wrong shape"
        if tensor_digest(tensor) != saved["sha256"].get(split):
            return f"{split} logits fail their checksum"
    return None


@torch.no_grad()
def _spot_check(teacher: nn.Module, dataset: Dataset, cached: torch.Tensor, device: torch.device) -> None:
    """Compare a few cached rows with a fresh teacher forward of the same samples."""
    picks = torch.linspace(0, len(dataset) - 1, min(_SPOT_CHECKS, len(dataset))).long()
    x = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in picks]).to(device)
    live = teacher(x).float().cpu()
    if not torch.allclose(live, cached[picks], rtol=1e-4, atol=1e-4):
        raise CacheError("cached teacher logits differ from a live forward of the same samples: "
                         "is the teacher random in eval mode (dropout, sampling)? Make it deterministic.")
