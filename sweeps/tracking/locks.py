"""Locks between kdsweep processes that share a store: ``flock`` on a file next to what they guard.

The kernel releases an ``flock`` when its holder dies, so a process killed while holding one
never stalls the others. Where ``flock`` is missing (Windows) or refused (some network file
systems), the lock does nothing and kdsweep falls back on what each storage guarantees alone.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_SUFFIX = ".kdsweep-lock"


def lock_path(guarded: str | Path) -> Path:
    """The lock file that guards ``guarded`` (a journal, a SQLite database, a store folder)."""
    guarded = Path(guarded)
    return guarded / LOCK_SUFFIX if guarded.is_dir() else guarded.with_name(guarded.name + LOCK_SUFFIX)


class FileLock:
    """An exclusive ``flock`` on ``guarded``'s lock file, blocking; ``held`` is False where there is none.

    Use as ``with FileLock(path):``, or ``acquire()`` then ``release()``. Not re-entrant: two
    FileLocks on one path exclude each other, even in one process; one FileLock object belongs to
    one thread.
    """

    def __init__(self, guarded: str | Path) -> None:
        self.path = lock_path(guarded)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if fcntl is None:
            return False
        if self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:  # a read-only folder
                return False
            # Owned before it is locked. A Ctrl-C (KeyboardInterrupt) can land between the flock and
            # the caller's `try`, leaving this object holding the lock unreleased; locking again
            # through a new fd would then wait on our own lock for ever (a second Ctrl-C's clean-up
            # hung so). Locking the same fd again returns at once when it holds the lock already,
            # and waits as usual when an interrupted flock never got it.
            self._fd = fd
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError:  # ENOLCK, EOPNOTSUPP: no flock on this file system
            fd, self._fd = self._fd, None
            os.close(fd)
            return False
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:
        # A FileLock dropped while held (a `with` whose block never started): closing its fd
        # releases the flock.
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)
