"""kdcore: the knowledge-distillation trainer every kdsweep run and trial calls.

It imports neither Optuna nor MLflow: tracking and search live in ``sweeps``.
"""

from kdcore.cache import CachedOutputs, cache_key, teacher_outputs
from kdcore.config import TrainConfig, make_config
from kdcore.errors import CacheError, ConfigError, KDSweepError, StopTraining, TaskError
from kdcore.loss import KDLoss, kd_loss
from kdcore.presets import PRESETS, preset
from kdcore.tasks import DEFAULT_TASK, Splits, Task, get_task, register_task, task_names
from kdcore.teacher import Teacher, load_or_train_teacher
from kdcore.trainer import EpochResult, TeacherLogits, TrainResult, count_parameters, train

__all__ = [
    "DEFAULT_TASK",
    "PRESETS",
    "CacheError",
    "CachedOutputs",
    "ConfigError",
    "EpochResult",
    "KDLoss",
    "KDSweepError",
    "Splits",
    "StopTraining",
    "Task",
    "TaskError",
    "Teacher",
    "TeacherLogits",
    "TrainConfig",
    "TrainResult",
    "cache_key",
    "count_parameters",
    "get_task",
    "kd_loss",
    "load_or_train_teacher",
    "make_config",
    "preset",
    "register_task",
    "task_names",
    "teacher_outputs",
    "train",
]
