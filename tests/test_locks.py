"""FileLock (sweeps/tracking/locks.py) when a Ctrl-C lands inside a lock's use: the next acquire
must neither wait on this process's own lock for ever nor let two holders in."""

from __future__ import annotations

import gc
import threading

from sweeps.tracking.locks import FileLock


def _acquires_within(lock: FileLock, seconds: float) -> bool:
    done = threading.Event()
    threading.Thread(target=lambda: (lock.acquire(), done.set()), daemon=True).start()
    return done.wait(seconds)


def test_an_acquire_never_released_is_taken_over_by_the_next_acquire(tmp_path):
    # As when a KeyboardInterrupt lands between `lock.acquire()` and the `try` that releases it.
    lock = FileLock(tmp_path / "journal")
    lock.acquire()
    assert _acquires_within(lock, 5), "the second acquire waited on this object's own lock"
    lock.release()
    assert _acquires_within(FileLock(tmp_path / "journal"), 5)


def test_a_lock_dropped_while_held_is_released(tmp_path):
    # As when a KeyboardInterrupt lands in `with FileLock(...)` before its block starts.
    held = FileLock(tmp_path / "journal")
    held.acquire()
    del held
    gc.collect()
    assert _acquires_within(FileLock(tmp_path / "journal"), 5)


def test_two_lock_objects_still_exclude_each_other(tmp_path):
    first, second = FileLock(tmp_path / "journal"), FileLock(tmp_path / "journal")
    first.acquire()
    assert not _acquires_within(second, 0.5)
    first.release()
    assert _acquires_within(FileLock(tmp_path / "other"), 5)
