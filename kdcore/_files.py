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


def load_checkpoint(path: Path, what: str, shown: str | None = None) -> dict[str, Any]:
    """``load_safe``, with a file that cannot be read (truncated, overwritten, not a checkpoint)
    answered by DamagedFileError naming ``what`` and the file (or ``shown``: where a downloaded
    copy came from), on one line."""
    from kdcore.errors import DamagedFileError

    path_text = shown or str(path)
    try:
        loaded = load_safe(path)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise DamagedFileError(f"{what} {path_text} cannot be read ({read_problem(error)}): nothing was changed; "
                               "restore it, or delete it to make it again") from None
    if not isinstance(loaded, dict):
        raise DamagedFileError(f"{what} {path_text} holds a {type(loaded).__name__}, not a checkpoint: nothing was "
                               "changed; restore it, or delete it to make it again")
    return loaded


def read_problem(error: BaseException) -> str:
    """Why a file could not be loaded, on one line: torch's own messages run to several lines of
    advice about ``weights_only`` that do not apply to a truncated file."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text.removeprefix("Weights only load failed.").strip() or (lines[1] if len(lines) > 1 else "")
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 160 else f"{text[:157]}..."


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
