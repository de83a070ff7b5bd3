"""Checkpoint files: atomic writes and safe loads (``weights_only=True``)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write ``obj`` with torch.save so a crash mid-write never leaves a truncated file behind.

    The file gets the mode a plain ``open`` would give (0666 less the umask), not mkstemp's 0600,
    so a store shared by a team stays readable by the group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_safe(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict; tensors only, no pickled code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 of tensors' bytes, to detect corrupted or mismatched weights and logits."""
    digest = hashlib.sha256()
    for tensor in tensors:
        # Viewed as bytes so any dtype (bf16 included) hashes the same way.
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of a state_dict's names and values."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(tensor_digest(state_dict[name]).encode())
    return digest.hexdigest()
