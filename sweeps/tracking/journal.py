"""The Optuna journal file, never made worse: checked on open, a torn last record dropped before
the next append, a lock left by a killed process broken at once.

Optuna's ``JournalFileBackend`` appends one JSON record per line. A crash (or a full disk) in the
middle of a write leaves a last line without its newline; Optuna's reader skips such a line, but
its writer appends straight onto it and the merged line makes the whole file unreadable. A file
of other bytes is appended to just the same. ``CheckedJournalBackend`` adds, for the same file
format and lock protocol:

- on open, the last complete line must be a journal record, and a torn tail must look like the
  start of one (``{"op_code":``); otherwise ``JournalCorruptError``, the file untouched. Every
  other line is checked as Optuna replays it, and reported the same way.
- before each append, under the lock, a torn tail is dropped. That is provably safe: every
  writer holds the lock while it writes, so a tail without its newline seen under the lock was
  left by a writer that died, and no reader ever applied it (Optuna skips an unterminated last
  line). The whole file is first copied to ``<journal>.bak-<UTC time>`` and a warning names it.
- the lock: Optuna's symlink ``<journal>.lock``, taken while holding an ``flock`` on
  ``<journal>.kdsweep-lock``. The kernel drops the ``flock`` of a killed process, so a symlink
  made by kdsweep that is still there when the next process holds the ``flock`` is stale and is
  removed at once (Optuna's own lock waits 30 s, then breaks it by age). kdsweep marks its
  symlinks by their target ``<dir>/./<name>``, which still resolves to the journal for Optuna
  processes (optuna-dashboard) that share the file; their locks are waited for as Optuna does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Generator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend

from sweeps._pause import pause_at
from sweeps.tracking.locks import FileLock
from sweeps.tracking.storage import StoreDamagedError

log = logging.getLogger("kdsweep")

RECORD_START = b'{"op_code":'  # how Optuna writes every record (json.dumps keeps the key order)
OP_CODES = range(0, 11)  # optuna.storages.journal._storage.JournalOperation
BACKUP_INFIX = ".bak-"
_GRACE_S = 30.0  # a lock by a plain Optuna process is broken after this long, as Optuna does
_CHUNK = 1 << 16
_MAX_RECORD = 1 << 20  # kdsweep's records are a few kB; a longer "torn record" is something else


class JournalCorruptError(StoreDamagedError):
    """The journal holds something other than whole Optuna records (or a torn last one); nothing
    was written to it. The CLI exits with code 1: the store is damaged, the input was fine."""


def recover_hint(path: Path) -> str:
    backups = sorted(path.parent.glob(path.name + BACKUP_INFIX + "*"))
    restore = f"restore the backup {backups[-1]}" if backups else "restore it from a backup"
    return (f"{restore}, or move it aside (mv {path} {path}.damaged) to start its studies afresh; "
            "docs/reliability.md says more")


def _damaged(path: Path, where: str, what: str) -> JournalCorruptError:
    return JournalCorruptError(f"Optuna journal {path} is damaged: {where} {what}; the file was left "
                               f"unchanged: {recover_hint(path)}")


def _record_problem(line: bytes) -> str | None:
    """Why ``line`` (without its newline) is not a journal record, or None when it is one."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "is not text (bytes that are not UTF-8)"
    except ValueError:
        if line.startswith(RECORD_START) and line.find(RECORD_START, 1) > 0:
            return ("is a torn record with another appended to it (an older kdsweep wrote onto a torn "
                    "journal; deleting the text before the second '{\"op_code\"' on that line recovers it)")
        return "is not JSON"
    return None if _is_record(record) else "is JSON but not an Optuna journal record"


def _is_record(record: Any) -> bool:
    return isinstance(record, dict) and type(record.get("op_code")) is int and record["op_code"] in OP_CODES


def _is_torn_record(tail: bytes) -> bool:
    """A tail without its newline that can only be the start of a record cut by a crash."""
    return len(tail) <= _MAX_RECORD and (tail.startswith(RECORD_START) or RECORD_START.startswith(tail))


def _last_lines(path: Path) -> tuple[int, bytes, bytes]:
    """(offset of the tail, the last complete line without its newline, the tail after it)."""
    with open(path, "rb") as f:
        data, start = b"", f.seek(0, os.SEEK_END)
        while start > 0:  # read backwards until the last two newlines are in ``data``
            cut = data.rfind(b"\n")
            if cut >= 0 and data.rfind(b"\n", 0, cut) >= 0:
                break
            step = min(_CHUNK, start)
            start -= step
            f.seek(start)
            data = f.read(step) + data
    cut = data.rfind(b"\n")
    if cut < 0:
        return 0, b"", data
    previous = data.rfind(b"\n", 0, cut)  # -1: the last line starts the file
    return start + cut + 1, data[previous + 1:cut], data[cut + 1:]


def _line_number(path: Path, offset: int) -> int:
    """The 1-based number of the line that starts at byte ``offset``."""
    count = 0
    with open(path, "rb") as f:
        while offset > 0:
            chunk = f.read(min(_CHUNK, offset))
            if not chunk:
                break
            count += chunk.count(b"\n")
            offset -= len(chunk)
    return count + 1


def check_journal(path: str | Path) -> None:
    """Refuse (JournalCorruptError) a journal whose last complete line is not a record or whose
    tail is not the start of one; the lines before are checked as Optuna replays them."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    tail_at, last, tail = _last_lines(path)
    if tail and not _is_torn_record(tail):
        raise _damaged(path, f"its last line (line {_line_number(path, tail_at)})",
                       "is neither a journal record nor the start of one cut by a crash")
    if tail_at > 0:
        problem = _record_problem(last)
        if problem:
            raise _damaged(path, f"line {_line_number(path, tail_at) - 1}", problem)


class JournalLock:
    """Optuna's symlink lock, taken under an ``flock`` so that one left by a killed kdsweep process
    is broken at once (see the module docstring)."""

    def __init__(self, journal: str | Path) -> None:
        journal = Path(journal).absolute()
        self.symlink = str(journal) + ".lock"  # optuna.storages.journal._file.LOCK_FILE_SUFFIX
        self.target = os.path.join(str(journal.parent), ".", journal.name)
        self._flock = FileLock(journal)

    def acquire(self) -> bool:
        self._flock.acquire()
        try:
            self._take_symlink()
        except BaseException:
            self._flock.release()
            raise
        pause_at("journal.locked")
        return True

    def release(self) -> None:
        try:
            _remove(self.symlink)
        finally:
            self._flock.release()

    def _take_symlink(self) -> None:
        sleep, seen, since = 0.001, None, time.monotonic()
        while True:
            try:
                os.symlink(self.target, self.symlink)
                return
            except FileExistsError:
                pass
            try:
                target, stat = os.readlink(self.symlink), os.lstat(self.symlink)
            except OSError:
                continue  # released meanwhile
            if target == self.target and self._flock.held:
                # Every kdsweep holder holds the flock: this one's holder is gone.
                log.warning("removed the lock %s left by a killed kdsweep process", self.symlink)
                _remove(self.symlink)
                continue
            if (stat.st_ino, stat.st_mtime) != seen:
                seen, since = (stat.st_ino, stat.st_mtime), time.monotonic()
            elif time.monotonic() - since > _GRACE_S:
                log.warning("removed the lock %s, unchanged for %.0f s", self.symlink, _GRACE_S)
                _remove(self.symlink)
                continue
            time.sleep(sleep)
            sleep = min(sleep * 2, 0.1)


def _remove(symlink: str) -> None:
    """Remove a symlink lock the way Optuna does (rename, then unlink), ignoring one already gone."""
    moved = f"{symlink}{uuid.uuid4()}.rename"
    try:
        os.rename(symlink, moved)
    except FileNotFoundError:
        return
    os.unlink(moved)


class CheckedJournalBackend(JournalFileBackend):
    """Optuna's journal file backend that never appends onto a torn or foreign tail."""

    def __init__(self, file_path: str) -> None:
        self._path = Path(file_path)
        check_journal(self._path)
        super().__init__(file_path, lock_obj=JournalLock(file_path))

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        number = log_number_from
        records = super().read_logs(log_number_from)
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, "Invalid log format."
                raise self._damaged_line(number, error) from None
            if not _is_record(record):
                raise _damaged(self._path, f"line {number + 1}", "is JSON but not an Optuna journal record")
            number += 1
            yield record

    def _damaged_line(self, number: int, error: ValueError) -> JournalCorruptError:
        """The error for line ``number`` (0-based), the first one Optuna could not read."""
        with open(self._path, "rb") as f:
            for index, line in enumerate(f):
                if index == number:
                    problem = _record_problem(line.rstrip(b"\n"))
                    return _damaged(self._path, f"line {number + 1}", problem or f"is unreadable ({error})")
        return _damaged(self._path, f"line {number + 1}", f"is unreadable ({error})")

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in logs).encode("utf-8")
        self._lock.acquire()
        try:
            self._drop_torn_tail()
            with open(self._file_path, "ab") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        finally:
            self._lock.release()

    def _drop_torn_tail(self) -> None:
        """Under the lock: cut a tail without its newline, left by a writer that died mid-write."""
        with open(self._path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
        tail_at, _, tail = _last_lines(self._path)
        if not _is_torn_record(tail):
            raise _damaged(self._path, f"its last line (line {_line_number(self._path, tail_at)})",
                           "is neither a journal record nor the start of one cut by a crash")
        backup = self._path.with_name(self._path.name + BACKUP_INFIX
                                      + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ"))
        shutil.copy2(self._path, backup)
        with open(self._path, "rb+") as f:
            f.truncate(tail_at)
            f.flush()
            os.fsync(f.fileno())
        log.warning("Optuna journal %s: dropped a torn last record (%d bytes, cut by a crash); "
                    "the file before the repair is kept as %s", self._path, len(tail), backup)


def open_journal(path: str) -> Any:
    """A JournalStorage on ``path`` through CheckedJournalBackend; JournalCorruptError if damaged."""
    from optuna.storages.journal import JournalStorage

    backend = CheckedJournalBackend(path)
    try:
        return JournalStorage(backend)
    except JournalCorruptError:
        raise
    except (KeyError, TypeError, ValueError, AssertionError, IndexError) as error:
        raise _damaged(Path(path), "a record", f"cannot be replayed ({type(error).__name__}: {error})") from None

