"""The teacher of a task: trained once, saved in the store, reused by every run after."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from kdcore._files import load_safe, read_problem, save_atomic, state_digest
from kdcore.config import TrainConfig
from kdcore.data import BatchSource, fingerprint
from kdcore.errors import OutOfTime
from kdcore.tasks.base import PRIMARY_TEACHER, Task, TeacherSpec
from kdcore.objective import evaluate_model
from kdcore.trainer import EpochResult, resolve_device, train

log = logging.getLogger("kdsweep")

TEACHER_FORMAT = "kdsweep.teacher/1"
PARTIAL_FORMAT = "kdsweep.teacher-progress/1"  # a teacher's training state after its last whole epoch


@dataclass
class Teacher:
    """A ready teacher: the module (eval mode, CPU), its score and where it came from. ``test_acc``
    and ``val_acc`` are its task's score: accuracy, or Recall@1 for an embedding task."""

    model: nn.Module
    test_acc: float
    digest: str  # sha256 of the weights; part of the teacher-cache key
    path: Path | None  # None for a task's pretrained weights
    trained_now: bool
    train_time_s: float
    val_acc: float = 0.0  # the base of validation retention (a limit the search may select on)
    name: str = PRIMARY_TEACHER  # its TeacherSpec's: the task's own teacher, or a member of its ensemble


def teacher_path(task: Task, store: Path, name: str = PRIMARY_TEACHER) -> Path:
    """Where the task's trained teacher ``name`` lives; the data fingerprint keeps a changed task apart."""
    return Path(store) / "teachers" / f"{task.name}-{fingerprint(task.splits().train)}" / f"{name}.pt"


def load_or_train_teacher(
    task: Task, store: Path, *, on_epoch: Callable[[EpochResult], None] | None = None, device: str = "auto",
    spec: TeacherSpec | None = None, deadline: float | None = None,
) -> Teacher:
    """The task's teacher (or ``spec``, a member of ``task.teachers()``): its pretrained weights (the
    task's own teacher only), the saved checkpoint, or trained now and saved.

    Training saves its state after every epoch and resumes from it, so a teacher cut short (the
    budget's ``deadline``, a ``time.time()`` value; a kill; Ctrl-C) loses at most one epoch: at the
    deadline it raises OutOfTime, saying how much training is left, and the next call goes on."""
    spec = spec or task.teachers()[0]
    model = spec.build()
    pretrained = task.pretrained_teacher() if spec.name == PRIMARY_TEACHER else None
    if pretrained is not None:
        model.load_state_dict(pretrained)
        return Teacher(model.eval(), _accuracy(task, model, device, "test"), state_digest(pretrained), None, False,
                       0.0, _accuracy(task, model, device, "val"))

    path = teacher_path(task, store, spec.name)
    if path.exists():
        try:
            saved = load_safe(path)
            if saved.get("format") == TEACHER_FORMAT and saved["digest"] == state_digest(saved["state_dict"]):
                model.load_state_dict(saved["state_dict"])
                val_acc = saved.get("val_acc") or _accuracy(task, model, device, "val")
                return Teacher(model.eval(), saved["test_acc"], saved["digest"], path, False, saved["train_time_s"],
                               val_acc, spec.name)
        except Exception as error:  # a truncated or foreign file: retrain rather than trust it
            log.warning("teacher checkpoint %s is unreadable (%s); training a new one", path, read_problem(error))
        else:
            log.warning("teacher checkpoint %s does not verify; training a new one", path)

    config = spec.config.model_copy(update={"device": device})
    partial = path.with_name(f"{path.stem}.partial.pt")
    resume, spent_s = _partial_state(partial, config)

    def save_progress(state: dict) -> None:
        save_atomic({"format": PARTIAL_FORMAT, "config": config.model_dump(), "state": state,
                     "spent_s": spent_s + time.perf_counter() - started}, partial)

    started = time.perf_counter()
    result = train(task, config, build_model=spec.build, on_epoch=on_epoch, on_checkpoint=save_progress,
                   resume=resume, deadline=deadline)
    if result.stop_reason == "deadline":
        raise OutOfTime(_cut_message(task, spec, config, result, deadline))
    train_time_s = spent_s + result.train_time_s
    save_atomic({"format": TEACHER_FORMAT, "task": task.name, "state_dict": result.state_dict,
                 "digest": state_digest(result.state_dict), "test_acc": result.test_acc,
                 "val_acc": result.best_val_acc, "train_time_s": train_time_s,
                 "config": config.model_dump()}, path)
    partial.unlink(missing_ok=True)
    model.load_state_dict(result.state_dict)
    return Teacher(model.eval(), result.test_acc, state_digest(result.state_dict), path, True, train_time_s,
                   result.best_val_acc, spec.name)


def _partial_state(partial: Path, config: TrainConfig) -> tuple[dict | None, float]:
    """(the training state to resume from, the seconds already spent on it), or (None, 0) when there
    is none, or it was saved for other settings or is damaged (then it is started again)."""
    if not partial.exists():
        return None, 0.0
    try:
        saved = load_safe(partial)
        if saved.get("format") == PARTIAL_FORMAT and saved.get("config") == config.model_dump():
            log.info("resuming the teacher's training after epoch %d (%s)", saved["state"]["epoch"], partial)
            return saved["state"], float(saved["spent_s"])
        log.warning("teacher progress %s was saved for other settings; training the teacher from the start", partial)
    except Exception as error:
        log.warning("teacher progress %s is unreadable (%s); training the teacher from the start", partial,
                    read_problem(error))
    return None, 0.0


def _cut_message(task: Task, spec: TeacherSpec, config: TrainConfig, result, deadline: float | None) -> str:
    """What OutOfTime says: where the teacher stopped, what is left, how to go on."""
    done = result.history[-1].epoch if result.history else 0
    times = [epoch.epoch_time_s for epoch in result.history]
    left = f", about {_seconds(statistics.median(times) * (config.epochs - done))} more at this machine's speed" \
        if times else ""
    who = "the teacher" if spec.name == PRIMARY_TEACHER else f"teacher {spec.name!r}"
    return (f"the budget ended while training {who} of task '{task.name}': {done} of up to {config.epochs} epochs "
            f"done{left}; they are saved, and the same command resumes from there (give a longer --budget to "
            "leave time for the search too)")


def _seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _accuracy(task: Task, model: nn.Module, device: str, split: str) -> float:
    import contextlib

    torch_device = resolve_device(device)
    model.to(torch_device)
    score = evaluate_model(task, model, BatchSource(getattr(task.splits(), split), 512, torch_device),
                           contextlib.nullcontext).score
    model.cpu()
    return score
