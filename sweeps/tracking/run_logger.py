"""MLflow logging of one training run: params, one log_batch per epoch, results, checkpoint.

``kdsweep train`` and every sweep trial log through ``RunLogger``, so their runs look alike.
It uses MlflowClient with explicit run ids (never the fluent API's thread-local active run),
so it works the same inside worker processes and threads.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcore import EpochResult, TrainConfig, TrainResult
from kdcore._files import save_atomic
from sweeps.tracking.owners import OWNER_TAG, owner_tag

if TYPE_CHECKING:
    from mlflow import MlflowClient

STUDENT_FORMAT = "kdsweep.student/1"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "student.pt"
_FLUSH_EVERY_S = 1.0
THREADS_TAG = "kdsweep.threads"


def student_checkpoint(task_spec: str, num_classes: int, config: TrainConfig, state_dict: dict[str, Any],
                       metrics: dict[str, float]) -> dict[str, Any]:
    """The checkpoint dict: weights plus what rebuilds the student (``task.build_student(ratio)``)."""
    return {
        "format": STUDENT_FORMAT,
        "task": task_spec,
        "num_classes": num_classes,
        "ratio": config.ratio,
        "config": config.model_dump(),
        "state_dict": state_dict,
        "metrics": metrics,
    }


def final_metrics(result: TrainResult, teacher_test_acc: float) -> dict[str, float]:
    """The numbers a finished run reports, retention against the teacher included."""
    return {
        "best_val_acc": result.best_val_acc,
        "test_acc": result.test_acc,
        "teacher_test_acc": teacher_test_acc,
        "retention": result.test_acc / teacher_test_acc if teacher_test_acc else 0.0,
        "train_time_s": result.train_time_s,
        "student_params": float(result.student_params),
        "student_size_bytes": float(result.student_size_bytes),
        "best_epoch": float(result.best_epoch),
        "epochs_run": float(result.epochs_run),
        **result.extra,  # an embedding task's Recall@1 and @5 on validation and test
    }


class RunLogger:
    """One MLflow run, written through an explicit client and run id."""

    def __init__(self, client: MlflowClient, run_id: str, flush_every_s: float = _FLUSH_EVERY_S) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self._pending: list = []
        self._last_flush = time.monotonic()

    @classmethod
    def start(cls, client: MlflowClient, experiment_id: str, run_name: str, *,
              params: dict[str, Any], tags: dict[str, str] | None = None,
              parent_run_id: str | None = None) -> RunLogger:
        import torch
        from mlflow.entities import Param

        # The threads it trains with (kdcore.threads): epoch times compare only at equal threads. The
        # owner lets the next command close the run should this process be killed (tracking.owners).
        tags = {THREADS_TAG: str(torch.get_num_threads()), **owner_tag(), **(tags or {})}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        logger = cls(client, run.info.run_id)
        client.log_batch(logger.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return logger

    @classmethod
    def reopen(cls, client: MlflowClient, run_id: str) -> RunLogger:
        """Go on writing run ``run_id`` (an interrupted run this command resumes), owned by this process."""
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, OWNER_TAG, owner_tag()[OWNER_TAG])
        return cls(client, run_id)

    def log_epoch(self, epoch: EpochResult) -> None:
        """Log an epoch's metrics (step = epoch): one log_batch per epoch, or per second when
        epochs are shorter, since a SQLite commit costs as much as a tiny model's epoch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(name, float(value), now, epoch.epoch) for name, value in epoch.metrics().items()]
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def log_step(self, metrics: dict[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` (a federated round, say) at once."""
        from mlflow.entities import Metric

        self.flush()
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def flush(self) -> None:
        """Send the epochs logged since the last flush."""
        if self._pending:
            self.client.log_batch(self.run_id, metrics=self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def log_metrics(self, metrics: dict[str, float], tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, RunTag

        self.flush()
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                              tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])

    def log_checkpoint(self, checkpoint: dict[str, Any]) -> str:
        """Store the checkpoint as artifact ``checkpoint/student.pt``; returns its URI."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / CHECKPOINT_FILE
            save_atomic(checkpoint, path)
            self.client.log_artifact(self.run_id, str(path), artifact_path=CHECKPOINT_DIR)
        return f"runs:/{self.run_id}/{CHECKPOINT_DIR}/{CHECKPOINT_FILE}"

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)
