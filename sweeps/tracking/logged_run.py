"""One logged distillation run: what ``kdsweep train`` does once and a sweep does per trial."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdcore import (CachedOutputs, ConfigError, EpochResult, Task, Teacher, TeacherLogits, TeacherSpec, TrainConfig,
                    TrainResult, get_task, load_or_train_teacher, teacher_outputs, train)
from sweeps.tracking.store import Store
from sweeps.tracking.run_logger import RunLogger, final_metrics, student_checkpoint


@dataclass
class Prepared:
    """A task with its teacher ready and the teacher's outputs cached: what every run needs.
    ``members`` are the further teachers of the task's ensemble a study uses (``teachers`` > 1)."""

    task_spec: str
    task: Task
    teacher: Teacher
    outputs: CachedOutputs
    store: Store
    members: tuple[tuple[Teacher, CachedOutputs], ...] = ()

    def all_teachers(self) -> list[tuple[Teacher, CachedOutputs]]:
        return [(self.teacher, self.outputs), *self.members]

    def teacher_logits(self, config: TrainConfig) -> list[TeacherLogits]:
        """The cached logits of the first ``config.teachers`` teachers: what ``train`` distils from."""
        ready = self.all_teachers()
        if config.teachers > len(ready):
            raise ConfigError(f"teachers={config.teachers} but only {len(ready)} of task {self.task.name!r}'s "
                              "teachers were prepared for this run")
        return [outputs.logits for _, outputs in ready[: config.teachers]]


def prepare(task_spec: str, store: Store, *, device: str = "auto",
            on_teacher_epoch: Callable[[TeacherSpec, EpochResult], None] | None = None, teachers: int = 1,
            deadline: float | None = None) -> Prepared:
    """Resolve the task, store its data (kdcore.task_data) if it is not yet, load (or train once) its
    first ``teachers`` teachers (``Task.teachers()``), and load (or build once) each one's logit cache.

    ``on_teacher_epoch(spec, epoch)`` sees each epoch of a teacher trained now; training stops at
    ``deadline`` with OutOfTime, its progress saved for the next call."""
    from kdcore.task_data import TASK_DATA

    store.read_task_data()
    task = get_task(task_spec)
    task.splits()
    TASK_DATA.save()
    specs = task.teachers()
    if teachers > len(specs):
        raise ConfigError(f"teachers={teachers} is out of range for task {task.name!r}: it has {len(specs)} "
                          f"({', '.join(s.name for s in specs)})")
    ready = []
    for spec in specs[:teachers]:
        hook = (lambda epoch, spec=spec: on_teacher_epoch(spec, epoch)) if on_teacher_epoch else None
        teacher = load_or_train_teacher(task, store.root, on_epoch=hook, device=device, spec=spec, deadline=deadline)
        ready.append((teacher, teacher_outputs(task, teacher.model, teacher.digest, store.teacher_cache,
                                               device=device)))
    return Prepared(task_spec, task, *ready[0], store, tuple(ready[1:]))


def ensemble_accuracy(prepared: Prepared, config: TrainConfig, split: str = "test") -> float:
    """Test accuracy of the KD target's fixed teachers together: the argmax of their probabilities'
    weighted mean (at T = 1), from the cached logits."""
    import torch

    from kdcore.data import labels_of

    logits = [getattr(t, split) for t in prepared.teacher_logits(config)]
    weights = torch.tensor(config.teacher_weights or [1.0] * len(logits))
    probabilities = sum(w * torch.softmax(x.float(), dim=-1) for w, x in zip(weights / weights.sum(), logits))
    labels = labels_of(getattr(prepared.task.splits(), split))
    return (probabilities.argmax(dim=-1) == labels).float().mean().item()


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
        result = train(prepared.task, config, teacher=prepared.teacher_logits(config), on_epoch=log_then_hook,
                       **train_options)
        metrics = final_metrics(result, prepared.teacher.test_acc)
        logger.log_metrics(metrics, tags={"stop_reason": result.stop_reason})
        checkpoint = student_checkpoint(prepared.task_spec, prepared.task.num_classes, config, result.state_dict,
                                        metrics)
        uri = logger.log_checkpoint(checkpoint)
    except KeyboardInterrupt:
        logger.finish("KILLED")
        raise
    except BaseException:
        logger.finish("FAILED")
        raise
    return LoggedRun(logger.run_id, result, metrics, uri)
