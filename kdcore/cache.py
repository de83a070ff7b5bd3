"""Teacher-output cache: the teacher's logits (or, for an embedding task, its embeddings) for
every split, computed once per teacher and data.

Raw logits are stored (temperature is applied in the loss), so one cache serves every T and
alpha of a sweep, and a trainer fed from it runs no teacher forward pass at all.
"""

from __future__ import annotations

import contextlib
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

    A file is published only once it has passed every check: it is written under a temporary name,
    read back, checksummed and spot-checked against a live forward of the teacher, then renamed;
    one that fails leaves nothing behind. A hit gets the same spot check before it is used. A file
    that is truncated, corrupt, made for other weights or data, or that disagrees with the teacher
    is logged and rebuilt, never used; CacheError when the rebuilt logits disagree too (a teacher
    that is random in eval mode).
    """
    key = cache_key(task, teacher_digest)
    path = Path(cache_root) / key / "logits.pt"
    splits = task.splits()
    names = _split_names(splits)
    torch_device = resolve_device(device)
    # Logits have one column per class; an embedding has whatever width the teacher gives.
    width = task.num_classes if task.kind == "classification" else None
    if path.exists():
        problem = _verify(path, key, splits, width)
        if problem is None:
            saved = load_safe(path)
            problem = _disagreement(teacher, splits.train, saved["train"], torch_device)
            if problem is None:
                return CachedOutputs(TeacherLogits(*(saved[s] for s in names)), path, True, 0.0)
        log.warning("teacher cache %s is unusable (%s); rebuilding it", path, problem)

    started = time.perf_counter()
    teacher = teacher.to(torch_device).eval()
    logits = {s: _forward(teacher, getattr(splits, s), torch_device) for s in names}
    for split, values in logits.items():
        # -inf is a class the teacher rules out (its probability is 0); NaN or +inf has no meaning.
        if torch.isnan(values).any() or torch.isposinf(values).any():
            teacher.cpu()
            raise CacheError(f"the teacher's logits on the {split} split contain NaN or +inf: "
                             "check the teacher's weights and its forward pass")
    saved = _publish({"format": CACHE_FORMAT, "key": key, **logits,
                      "sha256": {s: tensor_digest(logits[s]) for s in names}}, path,
                     lambda written: _verify(written, key, splits, width)
                     or _disagreement(teacher, splits.train, load_safe(written)["train"], torch_device))
    teacher.cpu()
    return CachedOutputs(TeacherLogits(*(saved[s] for s in names)), path, False, time.perf_counter() - started)


def _publish(payload: dict, path: Path, problem_with) -> dict:
    """Write ``payload`` under a temporary name beside ``path``, and rename it to ``path`` only if
    ``problem_with(temporary)`` finds nothing wrong; else remove it and raise CacheError. Returns
    the payload as read back from the published file."""
    import os
    import uuid

    staged = path.parent / f".{path.name}.{uuid.uuid4().hex}.staged"
    try:
        save_atomic(payload, staged)
        problem = problem_with(staged)
        if problem is not None:
            raise CacheError(f"the teacher's outputs failed their check, so nothing was cached: {problem}")
        saved = load_safe(staged)
        os.replace(staged, path)
        return saved
    finally:
        staged.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the key's folder, if this left it empty
            path.parent.rmdir()


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
def _disagreement(teacher: nn.Module, dataset: Dataset, cached: torch.Tensor, device: torch.device) -> str | None:
    """None when a few cached rows match a fresh teacher forward of the same samples, else what differs."""
    picks = torch.linspace(0, len(dataset) - 1, min(_SPOT_CHECKS, len(dataset))).long()
    x = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in picks]).to(device)
    teacher = teacher.to(device).eval()
    live = teacher(x).float().cpu()
    if torch.allclose(live, cached[picks], rtol=1e-4, atol=1e-4):
        return None
    worst = (live - cached[picks]).abs().nan_to_num(float("inf")).max().item()
    return (f"a fresh teacher forward of the same samples gives other logits (up to {worst:.3g} apart): the teacher or "
            "the data is random at read time (dropout or sampling in eval mode, augmentation in __getitem__); "
            "make both deterministic")
