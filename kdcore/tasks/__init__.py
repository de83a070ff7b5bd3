"""Task registry: built-in tasks by name, user tasks by ``package.module:factory``."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from kdcore.errors import TaskError
from kdcore.tasks.base import Splits, Task, TeacherSpec
from kdcore.tasks.digits import DigitsTask
from kdcore.tasks.mnist1d import MNIST1DTask
from kdcore.tasks.mnist1d_retrieval import MNIST1DRetrievalTask

_REGISTRY: dict[str, Callable[[], Task]] = {"mnist1d": MNIST1DTask, "digits": DigitsTask,
                                            "mnist1d-retrieval": MNIST1DRetrievalTask}

DEFAULT_TASK = "mnist1d"


def register_task(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Decorator registering a zero-argument Task factory (or Task class) under ``name``."""

    def decorate(factory: Callable[[], Task]) -> Callable[[], Task]:
        _REGISTRY[name] = factory
        return factory

    return decorate


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def _import_from_cwd() -> None:
    """Let ``module:factory`` name a module in the current directory, as ``python -m`` does (a
    console script's sys.path starts at its own bin folder instead)."""
    cwd = os.getcwd()
    if not {"", ".", cwd} & set(sys.path):
        sys.path.insert(0, cwd)


def get_task(spec: str) -> Task:
    """A registered task by name, or the Task returned by the factory at ``package.module:attr``."""
    if ":" not in spec:
        if spec not in _REGISTRY:
            raise TaskError(f"unknown task '{spec}' (built-in: {', '.join(task_names())}; "
                            "or give your own as package.module:factory)")
        return _REGISTRY[spec]()
    module_name, _, attr = spec.partition(":")
    _import_from_cwd()
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ModuleNotFoundError as error:
        if error.name is None or not (module_name + ".").startswith(error.name + "."):
            from kdcore.preflight import user_error  # the module imports something that is not installed

            raise user_error(f"task '{spec}'", f"importing {module_name}", error) from None
        raise TaskError(f"cannot load task '{spec}': {error} (looked in the current directory {os.getcwd()} and "
                        "on sys.path; run from the module's folder or add it to PYTHONPATH)") from None
    except (ImportError, AttributeError) as error:
        raise TaskError(f"cannot load task '{spec}': {error} (expected package.module:factory)") from None
    except Exception as error:  # the module itself raised while importing
        from kdcore.preflight import user_error

        raise user_error(f"task '{spec}'", f"importing {module_name}", error) from None
    if not callable(factory):
        raise TaskError(f"task factory '{spec}' is a {type(factory).__name__}, not a callable returning a kdcore.Task")
    try:
        task = factory()
    except Exception as error:  # user code: say where it came from, in one line
        from kdcore.preflight import user_error

        raise user_error(f"task '{spec}'", f"{attr}() (the factory; it takes no arguments and returns a "
                         "kdcore.Task)", error) from None
    if not isinstance(task, Task):
        raise TaskError(f"task factory '{spec}' returned {type(task).__name__}, not a kdcore.Task")
    return task


__all__ = ["DEFAULT_TASK", "Splits", "Task", "TeacherSpec", "get_task", "register_task", "task_names"]
