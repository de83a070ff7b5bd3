"""Preflight: load a task's data and models once, push one small batch through each, and say in one
line what does not fit the Task contract (docs/tasks.md) before any run or study writes anything."""

from __future__ import annotations

import re
import sysconfig
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from kdcore.errors import TaskError
from kdcore.tasks.base import TASK_KINDS, Splits, Task, TeacherSpec

BATCH = 4  # samples pushed through each network: enough to see the batch dimension, cheap on any task
_RETRIEVAL_DEPTH = 5  # Recall@5 of an embedding task ranks this many other items of a split

# What each task object has passed: "task" for its data and teacher, plus the student ratios.
_PASSED: weakref.WeakKeyDictionary[Task, set[Any]] = weakref.WeakKeyDictionary()

# Frames in these folders are not the user's code: Python's own, kdcore's and PyTorch's, and (unless
# nothing else is left, as for a user's installed package) every installed package's.
_NEVER_USER = tuple({str(Path(sysconfig.get_paths()["stdlib"]).resolve()), str(Path(__file__).resolve().parent),
                     str(Path(torch.__file__).resolve().parent)})
_LIBRARY_DIRS = tuple({str(Path(sysconfig.get_paths()[key]).resolve()) for key in ("purelib", "platlib")}) + _NEVER_USER


def where(error: BaseException) -> str | None:
    """``file:line`` where ``error`` was raised in the user's own code: the deepest frame outside
    the standard library, installed packages, torch and kdcore (None when no frame is the user's)."""
    frames = traceback.extract_tb(error.__traceback__)
    own = ([f for f in frames if not str(Path(f.filename).resolve()).startswith(_LIBRARY_DIRS)]
           or [f for f in frames if not str(Path(f.filename).resolve()).startswith(_NEVER_USER)])
    if not own:
        return None
    path = Path(own[-1].filename)
    try:
        shown = str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    return f"{shown}:{own[-1].lineno}"


def user_error(label: str, method: str, error: BaseException) -> TaskError:
    """A one-line TaskError for an exception raised inside the user's ``method``."""
    message = " ".join(str(error).split()) or "(no message)"
    if len(message) > 300:
        message = message[:297] + "..."
    place = where(error)
    return TaskError(f"{label}: {method} raised {type(error).__name__}: {message}"
                     + (f" (at {place})" if place else ""))


def preflight(task: Task, ratios: Iterable[float]) -> None:
    """TaskError (one line, naming the method and the problem) unless the task's splits, teacher,
    pretrained weights and students at ``ratios`` fit together. Each task object is checked once
    (its data and teacher) and once per ratio; the global RNG state is left as it was."""
    try:
        passed = _PASSED.setdefault(task, set())
    except TypeError:  # an unhashable task: check it every time
        passed = set()
    wanted = [r for r in dict.fromkeys(float(r) for r in ratios) if r not in passed]
    if "task" in passed and not wanted:
        return
    with torch.random.fork_rng(devices=[]):
        label = _check_attributes(task)
        x = _check_splits(task, label)
        if "task" not in passed:
            teacher = _call(label, "build_teacher()", task.build_teacher)
            _check_module(label, "build_teacher()", teacher)
            _check_weights(task, label, teacher)
            _check_logits(task, label, "build_teacher()", teacher, x)
            _check_ensemble(task, label, x)
            passed.add("task")
        for ratio in wanted:
            method = f"build_student({ratio:g})"
            student = _call(label, method, task.build_student, ratio)
            _check_module(label, method, student)
            _check_logits(task, label, method, student, x)
            passed.add(ratio)


def _check_ensemble(task: Task, label: str, x: torch.Tensor) -> None:
    """The further teachers of ``Task.teachers()``: distinct names, each built module maps the
    inputs to logits (the first is ``build_teacher()``, checked above)."""
    specs = _call(label, "teachers()", task.teachers)
    if not isinstance(specs, list) or not specs or not all(isinstance(s, TeacherSpec) for s in specs):
        raise TaskError(f"{label}: teachers() must return a non-empty list of kdcore.TeacherSpec, got "
                        f"{type(specs).__name__}")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names) or not all(re.fullmatch(r"[\w.-]+", n) for n in names):
        raise TaskError(f"{label}: teachers() names {names} must be distinct file names (letters, digits, _ . -)")
    for spec in specs[1:]:
        method = f"teachers()[{spec.name!r}].build()"
        teacher = _call(label, method, spec.build)
        _check_module(label, method, teacher)
        _check_logits(task, label, method, teacher, x)


def _call(label: str, method: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as error:  # user code: one line saying which method and where
        raise user_error(label, method, error) from None


def _check_attributes(task: Task) -> str:
    name = getattr(task, "name", None)
    label = f"task '{name}'" if isinstance(name, str) and name else f"task {type(task).__name__}"
    if not isinstance(name, str) or not name:
        raise TaskError(f"{label}: name is {name!r}; set a non-empty string class attribute, "
                        "e.g. name = \"my-task\"")
    classes = getattr(task, "num_classes", None)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise TaskError(f"{label}: num_classes is {classes!r}; set an integer class attribute of 2 or more, "
                        "e.g. num_classes = 10")
    kind = getattr(task, "kind", None)
    if kind not in TASK_KINDS:
        raise TaskError(f"{label}: kind is {kind!r}; set it to one of {', '.join(map(repr, TASK_KINDS))}")
    return label


def _check_splits(task: Task, label: str) -> torch.Tensor:
    """Checks splits(); returns a batch of up to BATCH training inputs."""
    splits = _call(label, "splits()", task.splits)
    if not isinstance(splits, Splits):
        raise TaskError(f"{label}: splits() returned {type(splits).__name__}, expected "
                        "kdcore.Splits(train, val, test, unlabeled=None)")
    for part in ("train", "val", "test", "unlabeled"):
        dataset = getattr(splits, part)
        if dataset is None and part == "unlabeled":
            continue
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TaskError(f"{label}: splits().{part} is a {type(dataset).__name__}, expected a "
                            "torch.utils.data.Dataset with __len__ and __getitem__ (e.g. a TensorDataset)")
        size = _call(label, f"len(splits().{part})", len, dataset)
        if size == 0:
            raise TaskError(f"{label}: splits().{part} is empty; every split needs at least one sample")
        if task.kind == "embedding" and part in ("val", "test") and size <= _RETRIEVAL_DEPTH:
            raise TaskError(f"{label}: splits().{part} has {size} samples; an embedding task's val and test splits "
                            f"need more than {_RETRIEVAL_DEPTH} (each item retrieves among the others for Recall@5)")
        if part == "unlabeled":
            _input(label, part, _call(label, f"splits().{part}[0]", dataset.__getitem__, 0), labelled=False)
        else:
            _check_labels(task, label, part, dataset)
    train = splits.train
    if isinstance(train, TensorDataset):
        return train.tensors[0][:BATCH]
    count = min(BATCH, len(train))
    samples = [_input(label, "train", _call(label, f"splits().train[{i}]", train.__getitem__, i))
               for i in range(count)]
    try:
        return torch.stack(samples)
    except RuntimeError as error:
        raise TaskError(f"{label}: splits().train samples cannot be batched ({' '.join(str(error).split())}); "
                        "every x must have the same shape") from None


def _input(label: str, part: str, item: Any, labelled: bool = True) -> torch.Tensor:
    """x of one sample, as a tensor."""
    shape = "(x, y)" if labelled else "x (or (x,))"
    if labelled:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TaskError(f"{label}: splits().{part}[0] is a {type(item).__name__}, expected a pair {shape}")
        x = item[0]
    else:
        x = item[0] if isinstance(item, (tuple, list)) and len(item) == 1 else item
    try:
        return torch.as_tensor(x)
    except Exception:
        raise TaskError(f"{label}: splits().{part}[0] has x of type {type(x).__name__}, expected a tensor "
                        "(or an array torch.as_tensor accepts)") from None


def _check_labels(task: Task, label: str, part: str, dataset: Dataset) -> None:
    """y must be integer class indices in [0, num_classes): every label where they are at hand
    (TensorDataset, ``targets``), else the first sample's."""
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) != 2:
            raise TaskError(f"{label}: splits().{part} is a TensorDataset of {len(dataset.tensors)} tensors, "
                            "expected 2 (x, y)")
        labels, source = dataset.tensors[1], f"splits().{part} labels"
    elif hasattr(dataset, "targets"):
        labels, source = torch.as_tensor(dataset.targets), f"splits().{part}.targets"
    else:
        item = _call(label, f"splits().{part}[0]", dataset.__getitem__, 0)
        _input(label, part, item)
        try:
            labels = torch.as_tensor(item[1])
        except Exception:
            raise TaskError(f"{label}: splits().{part}[0] has y of type {type(item[1]).__name__}, expected an "
                            "integer class index") from None
        source = f"splits().{part}[0] y"
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TaskError(f"{label}: {source} are {labels.dtype}, expected integer class indices "
                        "(torch.int64, e.g. torch.as_tensor(y, dtype=torch.long))")
    if labels.dim() > 1:
        raise TaskError(f"{label}: {source} have shape {tuple(labels.shape)}, expected one class index per "
                        "sample (not one-hot)")
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= task.num_classes:
            bad = low if low < 0 else high
            raise TaskError(f"{label}: {source} include {bad}, outside [0, {task.num_classes}) "
                            f"(num_classes={task.num_classes}); labels must be 0 .. num_classes-1")


def _check_module(label: str, method: str, model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TaskError(f"{label}: {method} returned {type(model).__name__}, expected a torch.nn.Module")


def _check_weights(task: Task, label: str, teacher: nn.Module) -> None:
    weights = _call(label, "pretrained_teacher()", task.pretrained_teacher)
    if weights is None:
        return
    if not isinstance(weights, Mapping):
        raise TaskError(f"{label}: pretrained_teacher() returned {type(weights).__name__}, expected a state_dict "
                        "(dict of tensors, e.g. torch.load(path, weights_only=True)) or None")
    try:
        teacher.load_state_dict(weights)
    except Exception as error:
        detail = "; ".join(line.strip() for line in str(error).splitlines()[1:] if line.strip()) or str(error)
        if len(detail) > 300:
            detail = detail[:297] + "..."
        raise TaskError(f"{label}: pretrained_teacher() weights do not fit build_teacher() ({detail}); "
                        "rebuild the weights from the current build_teacher(), or change it back") from None


def _check_logits(task: Task, label: str, method: str, model: nn.Module, x: torch.Tensor) -> None:
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x)
    except Exception as error:
        raise user_error(label, f"{method} forward on a batch of splits().train inputs (shape {tuple(x.shape)}, "
                                f"{x.dtype})", error) from None
    if not isinstance(logits, torch.Tensor):
        raise TaskError(f"{label}: {method} gives {type(logits).__name__} from forward, expected a logits tensor")
    if task.kind == "embedding":  # any width: a projection head bridges the student's and the teacher's
        if logits.dim() != 2 or len(logits) != len(x) or logits.shape[1] < 1:
            raise TaskError(f"{label}: {method} gives outputs of shape {tuple(logits.shape)}, expected embeddings "
                            f"({len(x)}, D) (kind='embedding')")
    elif tuple(logits.shape) != (len(x), task.num_classes):
        expected = (len(x), task.num_classes)
        raise TaskError(f"{label}: {method} gives logits of shape {tuple(logits.shape)}, expected {expected} "
                        f"(num_classes={task.num_classes})")
    if not logits.dtype.is_floating_point or not torch.isfinite(logits).all():
        raise TaskError(f"{label}: {method} gives non-finite or non-float logits ({logits.dtype}) on a batch of "
                        "splits().train inputs")


__all__ = ["preflight", "user_error", "where"]
