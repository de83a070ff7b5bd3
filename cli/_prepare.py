"""Getting a task ready from the CLI: teacher (with a progress bar the first time) and cache."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cli._common import console
from cli.progress import EpochProgress

if TYPE_CHECKING:
    from sweeps.tracking.logged_run import Prepared
    from sweeps.tracking.store import Store


def prepare_task(task_spec: str, store: Store, device: str = "auto", teachers: int = 1) -> Prepared:
    """``sweeps.prepare`` with a progress bar shown only if the teacher must be trained."""
    from kdcore.tasks.base import PRIMARY_TEACHER
    from sweeps.tracking.logged_run import prepare

    progress: EpochProgress | None = None
    training = None  # the teacher whose bar shows

    def on_teacher_epoch(spec, epoch) -> None:
        nonlocal progress, training
        if progress is not None and spec is not training:  # the next teacher of an ensemble
            progress.__exit__(None, None, None)
            progress = None
        if progress is None:
            label = "teacher" if spec.name == PRIMARY_TEACHER else f"teacher {spec.name}"
            progress = EpochProgress(f"training {label} for {task_spec}", spec.config.epochs).__enter__()
            training = spec
        progress.update(epoch)

    try:
        prepared = prepare(task_spec, store, device=device, on_teacher_epoch=on_teacher_epoch, teachers=teachers)
    finally:
        if progress is not None:
            progress.__exit__(None, None, None)
    for teacher, cache in prepared.all_teachers():
        origin = "pretrained weights" if teacher.path is None else (
            f"trained in {teacher.train_time_s:.1f}s, saved to {teacher.path}" if teacher.trained_now
            else f"loaded from {teacher.path}")
        label = "teacher" if teacher is prepared.teacher else f"teacher {teacher.name}"
        console.print(f"{label}: test_acc {teacher.test_acc:.4f} ({origin})", highlight=False, soft_wrap=True)
        console.print(f"{label} outputs: {'cached' if cache.hit else f'computed in {cache.build_time_s:.2f}s'} "
                      f"({cache.path})", highlight=False, soft_wrap=True)
    return prepared
