"""The exceptions kdsweep raises on purpose.

Every message says what was wrong, the value received, and what is allowed, so the
CLI can print it as a single line and exit with code 2.
"""

from __future__ import annotations


class KDSweepError(Exception):
    """Root of every error kdsweep raises on purpose."""


class ConfigError(KDSweepError, ValueError):
    """A setting (flag, YAML key, search range) is missing, unknown or out of range."""


class TaskError(KDSweepError):
    """A task name or ``package.module:factory`` spec cannot be resolved to a Task."""


class CacheError(KDSweepError):
    """Teacher outputs read back from the cache disagree with a live teacher forward."""


class DamagedFileError(KDSweepError):
    """A file kdsweep wrote (a checkpoint, a teacher, a store's database) cannot be read back: it was
    truncated or overwritten. Nothing was changed; the CLI exits with code 1 (the input was fine)."""

    exit_code = 1


class TrainingFailed(KDSweepError):
    """Training produced nothing usable (its loss diverged): the settings were valid but too
    aggressive. Exit code 1."""

    exit_code = 1


class OutOfTime(KDSweepError):
    """The budget ended during set-up (the teacher's training), before any trial could run; what was
    done is saved and the next run resumes it. Exit code 1."""

    exit_code = 1


class StopTraining(KDSweepError):
    """Raised by an ``on_epoch`` hook to end training early with ``reason`` as stop_reason."""

    def __init__(self, reason: str = "stopped") -> None:
        super().__init__(reason)
        self.reason = reason
