"""What a deployed student costs, measured: parameters, bytes, FLOPs, CPU latency, and an INT8 copy.

Everything here runs on a CPU copy of the model, so a caller's model (device, mode, weights) is
never changed. Architecture costs depend on the network's shape only, so a sweep measures them
once per distinct ``architecture_key``; random weights are fine for them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from kdcore.data import BatchSource
from kdcore.errors import ConfigError
from kdcore.objective import evaluate_model
from kdcore.tasks.base import Task
from kdcore.trainer import count_parameters, evaluate

# Timing is time-boxed so a sweep can afford it once per architecture: a few calls to warm up
# (allocator, oneDNN primitive caches), then repeats for about _TIME_BOX_S per batch size, never
# fewer than _MIN_REPEATS (a slow model still gets a median) nor more than _MAX_REPEATS.
_WARMUP_CALLS = 3
_MIN_REPEATS = 5
_MAX_REPEATS = 2_000
_TIME_BOX_S = 0.05
_LARGE_BATCH = 256
_EVAL_BATCH = 256


@dataclass(frozen=True)
class ArchitectureCost:
    """What a student's architecture costs, whatever its weights."""

    params: int
    size_bytes: int  # bytes of torch.save(state_dict) in fp32, as kdcore.count_parameters computes them
    flops: int  # forward FLOPs per sample as FlopCounterMode counts them (2 per multiply-add)
    latency_ms_b1: float  # CPU forward of one sample: median of timed repeats after warm-up
    latency_ms_b256: float  # the same for a batch of 256
    threads: int  # torch intra-op threads the latencies were measured with


@dataclass(frozen=True)
class Int8Student:
    """A student quantized to INT8 after training, and how."""

    model: nn.Module  # runs on CPU
    size_bytes: int  # bytes of torch.save(model.state_dict())
    method: str  # how it was quantized, or why nothing was
    layers: tuple[str, ...]  # names of the quantized modules; () when none could be


def architecture_key(model: nn.Module) -> str:
    """A short digest of ``model``'s architecture: its modules (class and settings such as kernel
    size and stride) and its parameters' and buffers' names, shapes and dtypes. Equal for two
    students of the same ratio, whatever their weights or device; different otherwise."""
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        kind = type(module)
        digest.update(f"{name}|{kind.__module__}.{kind.__qualname__}|{module.extra_repr()}\n".encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
    return digest.hexdigest()[:16]


def architecture_cost(model: nn.Module, sample: torch.Tensor, *, threads: int = 1) -> ArchitectureCost:
    """Parameters, fp32 bytes, FLOPs per sample and CPU latency at batch 1 and 256 of ``model``.

    ``sample`` is one input without its batch dimension (``task.splits().train[0][0]``). The
    latencies use ``threads`` intra-op threads; the caller's setting is restored afterwards. That
    setting is process-wide, so do not run this beside other torch work you are timing. Costs
    about 2 x 0.05 s for a small student.
    """
    _check_threads(threads)
    cpu_model = _cpu_copy(model)
    params, size = count_parameters(cpu_model)
    one = _batch_of(sample, 1)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            _first_forward(cpu_model, one)
        with _intra_op_threads(threads):
            latency_b1 = _median_latency_ms(cpu_model, one)
            latency_b256 = _median_latency_ms(cpu_model, _batch_of(sample, _LARGE_BATCH))
    return ArchitectureCost(params=params, size_bytes=size, flops=int(counter.get_total_flops()),
                            latency_ms_b1=latency_b1, latency_ms_b256=latency_b256, threads=threads)


def quantize_int8(model: nn.Module) -> Int8Student:
    """An INT8 copy of ``model`` on CPU: torchao's int8 weight-only quantization of its nn.Linear
    layers (symmetric, one scale per output channel). ``model`` itself is left alone.

    Weight-only quantization needs no calibration data. Other layers, convolutions among them,
    stay fp32: torchao 0.18's Int8Tensor has no convolution kernel, and torch.ao's dynamic
    quantization (deprecated) covers nn.Linear only. Measured on the built-in students, it keeps
    accuracy and cuts the bytes of Linear weights about 4x; batch-1 latency grows (a tiny matmul
    gains nothing from int8 on CPU).
    """
    Int8Tensor, Int8WeightOnlyConfig, quantize_, version = _torchao()
    quantized = _cpu_copy(model)

    def quantizable(module: nn.Module, _name: str) -> bool:
        # As torchao's own default, plus: MultiheadAttention reads its out_proj weight directly, a
        # weight shared by two layers is quantized once, and torchao 0.18 fails on a one-column
        # weight (in_features=1), where INT8 would save next to nothing anyway.
        return (isinstance(module, nn.Linear)
                and not isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear)
                and not isinstance(module.weight, Int8Tensor) and module.in_features > 1)

    # set_inductor_config=False: the default changes torch._inductor's global settings, which
    # would reach the caller's own torch.compile calls; nothing here compiles.
    quantize_(quantized, Int8WeightOnlyConfig(set_inductor_config=False), filter_fn=quantizable)
    layers = tuple(name for name, module in quantized.named_modules()
                   if isinstance(getattr(module, "weight", None), Int8Tensor))
    if layers:
        method = f"torchao {version} int8 weight-only (nn.Linear, per-channel; other layers stay fp32)"
    else:
        method = f"none: no nn.Linear layer that torchao {version} int8 weight-only can quantize; the copy stays fp32"
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    return Int8Student(model=quantized, size_bytes=buffer.tell(), method=method, layers=layers)


def int8_metrics(student: Int8Student, val: Dataset, test: Dataset, sample: torch.Tensor, *,
                 threads: int = 1, task: Task | None = None) -> dict[str, float]:
    """The INT8 student's size, validation and test score, and CPU latency at batch 1 (with
    ``threads`` intra-op threads, as ``architecture_cost`` measures the fp32 one). The score is
    accuracy, or Recall@1 when ``task`` is an embedding task (its int8_val_acc and int8_test_acc)."""
    _check_threads(threads)
    cpu = torch.device("cpu")
    if task is not None and task.kind == "embedding":
        val_acc, test_acc = (evaluate_model(task, student.model, BatchSource(split, _EVAL_BATCH, cpu),
                                            contextlib.nullcontext).score for split in (val, test))
    else:
        _, val_acc = evaluate(student.model, BatchSource(val, _EVAL_BATCH, cpu), contextlib.nullcontext)
        _, test_acc = evaluate(student.model, BatchSource(test, _EVAL_BATCH, cpu), contextlib.nullcontext)
    return {"int8_size_bytes": student.size_bytes, "int8_val_acc": val_acc, "int8_test_acc": test_acc,
            "int8_latency_ms_b1": latency_ms(student.model, sample, threads=threads)}


def latency_ms(model: nn.Module, sample: torch.Tensor, *, threads: int = 1) -> float:
    """CPU forward of one sample (``sample``: one input without its batch dimension), in ms: the
    median of timed repeats after warm-up, with ``threads`` intra-op threads, as
    ``architecture_cost`` measures ``latency_ms_b1``. Runs ``model`` itself: pass a CPU model."""
    _check_threads(threads)
    one = _batch_of(sample, 1)
    with torch.inference_mode(), _intra_op_threads(threads):
        _first_forward(model, one)
        return _median_latency_ms(model, one)


def _torchao():
    """torchao's int8 pieces and version, imported on first use: the import takes about 1.5 s."""
    # On a CPU-only torch, torchao logs a warning per CUDA kernel library it cannot load, and
    # torch's pytree logs a deprecation notice about one of torchao's enums: noise for every
    # sweep, about kernels the CPU path never calls.
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        import torchao
        from torchao.quantization import Int8Tensor, Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise ImportError(f"INT8 quantization needs torchao, which cannot be imported ({error}): "
                          "pip install 'torchao>=0.18'") from error
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return Int8Tensor, Int8WeightOnlyConfig, quantize_, torchao.__version__


def _check_threads(threads: int) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r} is invalid (allowed: an integer >= 1, the torch intra-op "
                          "threads latency is measured with)")


def _cpu_copy(model: nn.Module) -> nn.Module:
    """A deep copy on CPU in eval mode; the caller's model keeps its device, mode and weights."""
    return copy.deepcopy(model).cpu().eval()


def _batch_of(sample: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` copies of one input stacked into a batch, on CPU."""
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"sample is a {type(sample).__name__}: pass one input tensor without its batch "
                        "dimension, e.g. task.splits().train[0][0]")
    one = sample.detach().cpu().unsqueeze(0)
    return one.expand(size, *sample.shape).contiguous()


def _first_forward(model: nn.Module, batch: torch.Tensor) -> None:
    """One forward pass, with an error that says which input shape the model refused."""
    try:
        model(batch)
    except Exception as error:
        raise ValueError(f"the model's forward failed on a batch of shape {tuple(batch.shape)}: {error} (the "
                         "sample must be one input without its batch dimension, e.g. task.splits().train[0][0])"
                         ) from error


@contextlib.contextmanager
def _intra_op_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` intra-op threads, then give the caller's setting back."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _median_latency_ms(model: nn.Module, batch: torch.Tensor) -> float:
    """Median wall time of one forward of ``batch``, in ms, after a bounded warm-up."""
    for _ in range(_WARMUP_CALLS):
        model(batch)
    times: list[float] = []
    deadline = time.perf_counter() + _TIME_BOX_S
    while len(times) < _MIN_REPEATS or (len(times) < _MAX_REPEATS and time.perf_counter() < deadline):
        start = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
