"""What a trial's student costs to deploy (kdcore.cost), as trial columns and MLflow metrics.

Costs that depend only on the architecture (parameters, bytes, FLOPs, latency, the INT8 size) are
measured before training, once per distinct architecture, and kept in the study's user attrs: every
trial and worker of the study then reports the same latency for the same network, so the sampler
compares like with like. The INT8 model's accuracy and latency are measured after training, on
the trial's best weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from kdcore import TrainConfig, TrainResult
    from sweeps.tracking.logged_run import Prepared

_ATTR_PREFIX = "kdsweep.cost."
LATENCY_THREADS = 1  # latencies are single-thread CPU figures: comparable across machines' core counts


def architecture_costs(study: optuna.Study, prepared: Prepared, config: TrainConfig) -> dict[str, float]:
    """params, bytes, FLOPs per sample, latency at batch 1 and 256, INT8 bytes of ``config``'s student."""
    from kdcore.cost import architecture_key, quantize_int8

    model = prepared.task.build_student(config.ratio)
    attr = _ATTR_PREFIX + architecture_key(model)
    known = study.user_attrs.get(attr)
    if known is not None:
        return known
    costs = {**student_costs(model, _sample(prepared)), "int8_size_bytes": quantize_int8(model).size_bytes}
    study.set_user_attr(attr, costs)
    return costs


def student_costs(model: nn.Module, sample: Any) -> dict[str, float]:
    """The fp32 architecture's costs under their trial column names."""
    from kdcore.cost import architecture_cost

    cost = architecture_cost(model, sample, threads=LATENCY_THREADS)
    return {"student_params": cost.params, "student_size_bytes": cost.size_bytes, "student_flops": cost.flops,
            "latency_ms_b1": cost.latency_ms_b1, "latency_ms_b256": cost.latency_ms_b256,
            "latency_threads": cost.threads}


def int8_costs(prepared: Prepared, config: TrainConfig, result: TrainResult) -> tuple[dict[str, float], dict[str, str]]:
    """The trained student quantized to INT8: its metrics, and tags saying how (method, layers)."""
    from kdcore.cost import int8_metrics, quantize_int8

    model = prepared.task.build_student(config.ratio)
    model.load_state_dict(result.state_dict)
    student = quantize_int8(model)
    splits = prepared.task.splits()
    metrics = int8_metrics(student, splits.val, splits.test, _sample(prepared), threads=LATENCY_THREADS,
                           task=prepared.task)
    return metrics, {"int8_method": student.method, "int8_layers": ",".join(student.layers) or "none"}


def _sample(prepared: Prepared) -> Any:
    """One input of the task, without its batch dimension."""
    return prepared.task.splits().train[0][0]
