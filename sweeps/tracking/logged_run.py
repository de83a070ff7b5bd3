"""One logged distillation run: what ``kdsweep train`` does once and a sweep does per trial."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdcore import (CachedOutputs, EpochResult, Task, Teacher, TrainConfig, TrainResult, get_task,
                    load_or_train_teacher, teacher_outputs, train)
from sweeps.tracking.store import Store
from sweeps.tracking.run_logger import RunLogger, final_metrics, student_checkpoint


@dataclass
class Prepared:
    """A task with its teacher ready and the teacher's outputs cached: what every run needs."""

    task_spec: str
    task: Task
    teacher: Teacher
    outputs: CachedOutputs
    store: Store


def prepare(task_spec: str, store: Store, *, device: str = "auto",
            on_teacher_epoch: Callable[[EpochResult], None] | None = None) -> Prepared:
    """Resolve the task, load (or train once) its teacher, and load (or build once) the logit cache."""
    task = get_task(task_spec)
    teacher = load_or_train_teacher(task, store.root, on_epoch=on_teacher_epoch, device=device)
    outputs = teacher_outputs(task, teacher.model, teacher.digest, store.teacher_cache, device=device)
    return Prepared(task_spec, task, teacher, outputs, store)


def run_params(prepared: Prepared, config: TrainConfig) -> dict[str, Any]:
    """The MLflow params of a run: every trainer setting plus the task and teacher identity."""
    return {"task": prepared.task_spec, **config.model_dump(), "teacher_digest": prepared.teacher.digest[:16]}


@dataclass
class LoggedRun:
    run_id: str
    result: TrainResult
    metrics: dict[str, float]
    checkpoint_uri: str


def train_logged(
    prepared: Prepared,
    config: TrainConfig,
    logger: RunLogger,
    *,
    on_epoch: Callable[[EpochResult], None] | None = None,
    **train_options: Any,
) -> LoggedRun:
    """Train with ``config``, logging every epoch, the results and the best checkpoint to ``logger``.

    ``on_epoch`` runs after an epoch is logged and may raise StopTraining (a pruner does).
    ``train_options`` go to ``kdcore.train`` (deadline, resume, on_checkpoint). The run is left
    open for the caller to tag and close; on an exception it is closed as FAILED, or KILLED for
    Ctrl-C, so no run stays RUNNING.
    """

    def log_then_hook(epoch: EpochResult) -> None:
        logger.log_epoch(epoch)
        if on_epoch is not None:
            on_epoch(epoch)

    try:
        result = train(prepared.task, config, teacher=prepared.outputs.logits, on_epoch=log_then_hook,
                       **train_options)
        metrics = final_metrics(result, prepared.teacher.test_acc)
        logger.log_metrics(metrics, tags={"stop_reason": result.stop_reason})
        checkpoint = student_checkpoint(prepared.task_spec, prepared.task.num_classes, config, result, metrics)
        uri = logger.log_checkpoint(checkpoint)
    except KeyboardInterrupt:
        logger.finish("KILLED")
        raise
    except BaseException:
        logger.finish("FAILED")
        raise
    return LoggedRun(logger.run_id, result, metrics, uri)
