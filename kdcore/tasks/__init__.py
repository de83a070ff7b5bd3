"""Task registry: built-in tasks by name, user tasks by ``package.module:factory``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from kdcore.errors import TaskError
from kdcore.tasks.base import Splits, Task
from kdcore.tasks.digits import DigitsTask
from kdcore.tasks.mnist1d import MNIST1DTask

_REGISTRY: dict[str, Callable[[], Task]] = {"mnist1d": MNIST1DTask, "digits": DigitsTask}

DEFAULT_TASK = "mnist1d"


def register_task(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Decorator registering a zero-argument Task factory (or Task class) under ``name``."""

    def decorate(factory: Callable[[], Task]) -> Callable[[], Task]:
        _REGISTRY[name] = factory
        return factory

    return decorate


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(spec: str) -> Task:
    """A registered task by name, or the Task returned by the factory at ``package.module:attr``."""
    if ":" not in spec:
        if spec not in _REGISTRY:
            raise TaskError(f"unknown task '{spec}' (built-in: {', '.join(task_names())}; "
                            "or give your own as package.module:factory)")
        return _REGISTRY[spec]()
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise TaskError(f"cannot load task '{spec}': {error} (expected package.module:factory)") from None
    if not callable(factory):
        raise TaskError(f"task factory '{spec}' is a {type(factory).__name__}, not a callable returning a kdcore.Task")
    try:
        task = factory()
    except Exception as error:  # user code: say where it came from, in one line
        raise TaskError(f"task factory '{spec}' failed: {type(error).__name__}: {error} "
                        "(a task factory takes no arguments and returns a kdcore.Task)") from None
    if not isinstance(task, Task):
        raise TaskError(f"task factory '{spec}' returned {type(task).__name__}, not a kdcore.Task")
    return task


__all__ = ["DEFAULT_TASK", "Splits", "Task", "get_task", "register_task", "task_names"]
