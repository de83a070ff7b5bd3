"""kdcore: the knowledge-distillation trainer every kdsweep run and trial calls.

It imports neither Optuna nor MLflow: tracking and search live in ``sweeps``. The errors load
at once; everything else (torch, pydantic) on first use, so ``kdcore.errors`` and commands that
never train stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kdcore.errors import (CacheError, ConfigError, DamagedFileError, KDSweepError, OutOfTime, StopTraining, TaskError,
                           TrainingFailed)

_LAZY = {
    **dict.fromkeys(("CachedOutputs", "cache_key", "teacher_outputs"), "kdcore.cache"),
    **dict.fromkeys(("EMBEDDING_SETTINGS", "TrainConfig", "make_config", "no_kd_twin"), "kdcore.config"),
    **dict.fromkeys(("ArchitectureCost", "Int8Student", "architecture_cost", "architecture_key", "int8_metrics",
                     "latency_ms", "quantize_int8"), "kdcore.cost"),
    **dict.fromkeys(("PeakMemory", "bake", "deployable", "fake_quantize", "packed_size_bytes", "prune_channels",
                     "rebuild", "structure_of"), "kdcore.compress"),
    **dict.fromkeys(("FederatedResult", "RoundResult", "fed_avg", "federate", "partition"), "kdcore.federated"),
    **dict.fromkeys(("KDLoss", "kd_loss"), "kdcore.loss"),
    **dict.fromkeys(("EmbeddingKDLoss", "ProxyLoss", "embedding_kd_loss"), "kdcore.embedding_loss"),
    **dict.fromkeys(("Evaluation", "evaluate_model"), "kdcore.objective"),
    "recall_at_k": "kdcore.retrieval",
    **dict.fromkeys(("PRESETS", "preset"), "kdcore.presets"),
    "preflight": "kdcore.preflight",
    **dict.fromkeys(("DEFAULT_TASK", "Splits", "Task", "TeacherSpec", "get_task", "register_task", "task_names"),
                    "kdcore.tasks"),
    **dict.fromkeys(("Teacher", "load_or_train_teacher"), "kdcore.teacher"),
    **dict.fromkeys(("EpochResult", "TeacherLogits", "TrainResult", "check_config", "count_parameters", "train"),
                    "kdcore.trainer"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kdcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from kdcore.cache import CachedOutputs, cache_key, teacher_outputs
    from kdcore.config import EMBEDDING_SETTINGS, TrainConfig, make_config, no_kd_twin
    from kdcore.compress import (PeakMemory, bake, deployable, fake_quantize, packed_size_bytes, prune_channels,
                                 rebuild, structure_of)
    from kdcore.cost import (ArchitectureCost, Int8Student, architecture_cost, architecture_key, int8_metrics,
                             latency_ms, quantize_int8)
    from kdcore.embedding_loss import EmbeddingKDLoss, ProxyLoss, embedding_kd_loss
    from kdcore.federated import FederatedResult, RoundResult, fed_avg, federate, partition
    from kdcore.loss import KDLoss, kd_loss
    from kdcore.objective import Evaluation, evaluate_model
    from kdcore.preflight import preflight
    from kdcore.presets import PRESETS, preset
    from kdcore.retrieval import recall_at_k
    from kdcore.tasks import DEFAULT_TASK, Splits, Task, TeacherSpec, get_task, register_task, task_names
    from kdcore.teacher import Teacher, load_or_train_teacher
    from kdcore.trainer import EpochResult, TeacherLogits, TrainResult, check_config, count_parameters, train

__all__ = [
    "DEFAULT_TASK", "EMBEDDING_SETTINGS", "PRESETS", "ArchitectureCost", "CacheError", "CachedOutputs", "ConfigError",
    "EmbeddingKDLoss", "EpochResult", "Evaluation", "FederatedResult", "RoundResult", "fed_avg", "federate",
    "partition", "Int8Student", "KDLoss", "KDSweepError", "DamagedFileError", "TrainingFailed", "OutOfTime", "PeakMemory", "ProxyLoss", "Splits",
    "StopTraining", "Task", "TaskError", "Teacher", "TeacherLogits", "TeacherSpec", "TrainConfig", "TrainResult",
    "architecture_cost", "architecture_key", "bake", "cache_key", "check_config", "count_parameters", "deployable",
    "embedding_kd_loss", "evaluate_model", "fake_quantize", "get_task", "int8_metrics", "kd_loss", "latency_ms",
    "load_or_train_teacher", "make_config", "no_kd_twin", "packed_size_bytes", "preflight", "preset", "prune_channels",
    "quantize_int8", "rebuild", "recall_at_k", "register_task", "structure_of", "task_names", "teacher_outputs",
    "train",
]
