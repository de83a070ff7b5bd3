"""Data a task generates or decodes, made once per store and read back by every later process.

MNIST-1D draws its 25,000 signals in a Python loop: 8 s on a quiet 2-core machine, 156 s on a busy
one, and every process that touches the task (a run, each worker, ``train``, ``compress``...) used
to draw them again. A task wraps such a step in ``task_data(key, build)``: ``build`` returns a dict
of tensors, and ``key`` names everything they depend on (generator version, seeds, sizes), so a
changed recipe gets a new file instead of stale data.

This process keeps what it built or loaded in memory. ``TASK_DATA.use(folder)`` (kdsweep: the
store's ``data/``) makes it read files from ``folder`` first; ``TASK_DATA.save()`` writes the
entries that folder lacks. kdsweep calls ``save`` only once a command has checked its input, so
bad input still writes nothing. Each file carries a checksum per tensor: a truncated, corrupt or
foreign file is rebuilt (and rewritten), never used.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from kdcore._files import load_safe, save_atomic, tensor_digest

log = logging.getLogger("kdsweep")

FORMAT = "kdsweep.task-data/1"


def file_name(key: str) -> str:
    """A file name for ``key`` that stays in its folder: its safe characters, then a hash of all of it."""
    readable = re.sub(r"[^\w.-]", "-", key).strip(".-")[:60]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"


class TaskDataCache:
    """This process's task data by key, backed by the folder given to ``use`` (if any)."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self._on_disk: set[str] = set()  # keys whose file in ``folder`` was read back whole
        self._used: list[str] = []  # keys asked for since ``use`` named this folder: what ``save`` writes
        self._lock = threading.Lock()  # a sweep's worker thread builds its own task object

    def use(self, folder: Path | None) -> None:
        """Read task data from ``folder`` before building it (None: memory only), and save there."""
        folder = Path(folder) if folder is not None else None
        with self._lock:
            if folder != self.folder:
                self.folder, self._on_disk, self._used = folder, set(), []

    def get(self, key: str, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The tensors stored under ``key``: from memory, else from the folder if its file verifies,
        else ``build()`` (kept in memory until ``save``)."""
        with self._lock:
            if key not in self._used:
                self._used.append(key)
            if key not in self._memory:
                loaded = self._load(self.folder, key) if self.folder is not None else None
                if loaded is not None:
                    self._on_disk.add(key)
                self._memory[key] = loaded if loaded is not None else {
                    name: value.detach().cpu() for name, value in build().items()}
            return self._memory[key]

    def save(self) -> list[Path]:
        """Write the entries used since ``use`` that the folder lacks (or holds damaged); their paths."""
        with self._lock:
            if self.folder is None:
                return []
            written = []
            for key in self._used:
                if key in self._on_disk:
                    continue
                if self._load(self.folder, key, quiet=True) is None:
                    tensors = self._memory[key]
                    save_atomic({"format": FORMAT, "key": key, "tensors": tensors,
                                 "sha256": {name: tensor_digest(value) for name, value in tensors.items()}},
                                self.folder / file_name(key))
                    written.append(self.folder / file_name(key))
                self._on_disk.add(key)
            return written

    @staticmethod
    def _load(folder: Path, key: str, quiet: bool = False) -> dict[str, torch.Tensor] | None:
        path = folder / file_name(key)
        if not path.exists():
            return None
        try:
            saved = load_safe(path)
            problem = _problem(saved, key)
        except Exception as error:  # truncated or not a torch file
            problem = f"unreadable: {type(error).__name__}"
        if problem is None:
            return saved["tensors"]
        if not quiet:
            log.warning("task data %s is unusable (%s); making it again", path, problem)
        return None


def _problem(saved: object, key: str) -> str | None:
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("key") != key:
        return "made for other data"
    tensors, sums = saved.get("tensors"), saved.get("sha256")
    if not isinstance(tensors, dict) or not isinstance(sums, dict) or set(tensors) != set(sums):
        return "no checksums"
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor) or tensor_digest(value) != sums[name]:
            return f"{name} fails its checksum"
    return None


TASK_DATA = TaskDataCache()  # this process's


def task_data(key: str, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``build()``'s tensors under ``key``, made at most once per store (see the module's doc)."""
    return TASK_DATA.get(key, build)
