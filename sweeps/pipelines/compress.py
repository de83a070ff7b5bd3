"""`kdsweep compress`: seed 002's stages after a sweep. A trial's distilled student (default: the
study's best by validation) is pruned structurally and fine-tuned, then trained quantization-aware
at 8 or 4 bits and converted (``kdcore.compress``). Both trainings use the trial's own settings
and KD loss on the cached teacher logits, at a tenth of its learning rate (they fine-tune).

``--fast`` is seed 002's fast mode, against its full mode:

| | full | fast |
|---|---|---|
| labelled data | the trial's | 30 % of it |
| epochs: prune fine-tune / QAT | half / a quarter of the trial's | half of those |
| batch | the trial's | twice it |
| AMP (bf16, CUDA only) | off | on |
| early stopping | the trial's patience | patience 2, min_delta 0.001 |

Each step is an MLflow child run of the study's run (tag ``kdsweep.kind = compress``) with the
step's validation and test accuracy, size, latency, training time and peak memory, the numbers
of the model it started from (``input_*``), and its student as a checkpoint that ``kdsweep
export --run`` writes as a file PyTorch alone loads.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcore import ConfigError
from sweeps._pause import pause_at

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kdcore import Task, TrainConfig

COMPRESS_KIND = "compress"
_FINE_TUNE_LR = 0.1  # as a share of the trial's learning rate
_FAST_DATA = 0.3
_FAST_PATIENCE, _FAST_MIN_DELTA = 2, 1e-3
_EXAMPLE_BATCH = 8  # inputs Torch-Pruning traces the layers' dependencies with


@dataclass(frozen=True)
class Step:
    """One step's numbers, as its MLflow run records them (``start``: the trial's student)."""

    name: str  # start | prune | qat8 | qat4
    run_id: str | None
    val_acc: float
    test_acc: float
    params: int
    size_bytes: int  # torch.save of what runs (an int8 Linear's weights as int8)
    latency_ms_b1: float
    train_time_s: float = 0.0
    step_time_s: float = 0.0  # pruning or conversion, training and measuring
    peak_memory_mb: float = 0.0  # the process's peak RSS on CPU (imports included), CUDA's allocated peak on a GPU
    memory_growth_mb: float = 0.0  # that peak less the same measure when the step started
    memory_kind: str = ""  # kdcore.compress.PeakMemory.kind
    epochs_run: int = 0
    stop_reason: str = ""
    runs_as: str = "fp32"
    packed_size_bytes: int | None = None  # QAT: what N-bit storage would hold

    def metrics(self) -> dict[str, float]:
        # final_val_acc: what the step produced, as it runs (val_acc is the per-epoch history).
        numbers = {"final_val_acc": self.val_acc, "test_acc": self.test_acc, "params": self.params,
                   "size_bytes": self.size_bytes, "latency_ms_b1": self.latency_ms_b1,
                   "train_time_s": self.train_time_s, "step_time_s": self.step_time_s,
                   "peak_memory_mb": self.peak_memory_mb, "memory_growth_mb": self.memory_growth_mb,
                   "epochs_run": self.epochs_run}
        if self.packed_size_bytes is not None:
            numbers["packed_size_bytes"] = self.packed_size_bytes
        return {k: float(v) for k, v in numbers.items()}


@dataclass(frozen=True)
class Compressed:
    study: str
    trial: int
    mode: str  # fast | full
    prune: float
    bits: int
    teacher_test_acc: float
    steps: list[Step]  # start, then each step run
    score: str = "accuracy"  # what the *_acc numbers measure: accuracy, or Recall@1 for an embedding task

    @property
    def run_id(self) -> str:
        """The last step's run: the compressed student, for ``kdsweep export --run``."""
        return self.steps[-1].run_id


def step_configs(config: TrainConfig, *, fast: bool, epochs: int | None = None, lr: float | None = None,
                 seed: int | None = None) -> tuple[TrainConfig, TrainConfig]:
    """The prune fine-tune's and the QAT's training settings, from the trial's (module docstring);
    ``seed`` (default: the trial's) sets their batch order."""
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs {epochs} is not allowed: give at least 1 (or leave it out for the mode's default)")
    if lr is not None and not lr > 0:
        raise ConfigError(f"--lr {lr} is not allowed: give a learning rate > 0")
    if seed is not None and seed < 0:
        raise ConfigError(f"--seed {seed} is not allowed: give an integer >= 0")
    share = 2 if fast else 1
    prune_epochs = epochs or max(1, config.epochs // (2 * share))
    qat_epochs = epochs or max(1, config.epochs // (4 * share))
    common = {"lr": lr if lr is not None else config.lr * _FINE_TUNE_LR, "low_fidelity_epochs": 0,
              "amp": fast, "seed": config.seed if seed is None else seed}
    if fast:
        common.update(data_fraction=config.data_fraction * _FAST_DATA, batch_size=config.batch_size * 2,
                      patience=_FAST_PATIENCE, min_delta=_FAST_MIN_DELTA)
    return config.updated(**common, epochs=prune_epochs), config.updated(**common, epochs=qat_epochs)


def compress_trial(study: str, *, trial: int | None = None, prune: float = 0.5, bits: int = 8, fast: bool = False,
                   epochs: int | None = None, lr: float | None = None, seed: int | None = None,
                   storage: str | None = None,
                   tracking_uri: str | None = None, store: str | Path | None = None,
                   on_step: Callable[[Step], None] | None = None) -> Compressed:
    """Prune (unless ``prune`` is 0) and train quantization-aware at ``bits`` trial ``trial``'s
    student of ``study``; see the module docstring. Every setting is checked before anything is
    written; Ctrl-C or an error closes the step's run as KILLED or FAILED (rerun the command)."""
    from kdcore import get_task
    from kdcore.compress import BITS
    from sweeps.pipelines._trial import choose_trial, open_study_runs, study_run
    from sweeps.query.trials import load_student
    from sweeps.tracking.logged_run import prepare

    if isinstance(prune, bool) or not 0 <= prune < 1:
        raise ConfigError(f"--prune {prune} is not allowed: give the share of channels to remove, 0 <= prune < 1 "
                          "(0 skips pruning)")
    if bits not in BITS:
        raise ConfigError(f"--bits {bits} is not allowed (choose {' or '.join(map(str, BITS))})")
    chosen = choose_trial(study, trial, invocation=COMPRESS_KIND, storage=storage, tracking_uri=tracking_uri,
                          store=store)
    task = get_task(chosen.task_spec)
    prune_config, qat_config = step_configs(chosen.config, fast=fast, epochs=epochs, lr=lr, seed=seed)

    model = load_student(study, chosen.number, storage=storage, tracking_uri=tracking_uri, store=store)
    prepared = prepare(chosen.task_spec, chosen.sources.store, device=chosen.config.device,
                       teachers=chosen.config.teachers)
    client, experiment = open_study_runs(chosen)
    mode = "fast" if fast else "full"
    group = uuid.uuid4().hex[:12]
    tags = {"kdsweep.kind": COMPRESS_KIND, "optuna.study": study, "kdsweep.trial": str(chosen.number),
            "kdsweep.mode": mode, "kdsweep.compress_id": group,
            "kdsweep.settings": f"trial {chosen.number}, prune {prune:g}, {bits}-bit QAT"}
    parent = study_run(client, study)

    steps = [_measure("start", None, model, task, runs_as="fp32")]
    plan: list[tuple[str, Any]] = ([("prune", prune_config)] if prune > 0 else []) + [(f"qat{bits}", qat_config)]
    for name, config in plan:
        run = _StepRun(client, experiment, parent, f"compress-trial{chosen.number}-{name}-{mode}",
                       params={"trial": chosen.number, "step": name, "mode": mode, "prune": prune, "bits": bits,
                               **{k: getattr(config, k) for k in ("epochs", "lr", "batch_size", "data_fraction",
                                                                   "patience", "min_delta", "amp", "seed")}},
                       tags={**tags, "kdsweep.step": name})
        with run:
            run.log_input(steps[-1])
            pause_at(f"compress.{name}")
            if name == "prune":
                model, step = _prune_step(model, task, prepared, config, prune, run)
            else:
                model, step = _qat_step(model, task, prepared, config, bits, run)
            run.finish(step, _checkpoint(chosen.task_spec, task, config, model, bits if name != "prune" else None,
                                         step))
        steps.append(step)
        if on_step is not None:
            on_step(step)
    return Compressed(study, chosen.number, mode, prune, bits, prepared.teacher.test_acc, steps,
                      "Recall@1" if task.kind == "embedding" else "accuracy")


def _prune_step(model: nn.Module, task: Task, prepared: Any, config: TrainConfig, amount: float,
                run: _StepRun) -> tuple[nn.Module, Step]:
    from kdcore import train
    from kdcore.compress import PRUNE_CRITERION, PeakMemory, prune_channels

    started = time.perf_counter()
    with PeakMemory(_device(config)) as memory:
        pruned = prune_channels(model, _example(task), amount)
        result = train(task, config, teacher=prepared.teacher_logits(config), build_model=lambda: pruned,
                       on_epoch=run.log_epoch)
        pruned.load_state_dict(result.state_dict)
        pruned = pruned.cpu().eval()
        step = _measure("prune", run.logger.run_id, pruned, task, runs_as="fp32", result=result)
    run.logger.log_metrics({"sparsity": 1 - step.params / sum(p.numel() for p in model.parameters())},
                           tags={"prune_criterion": PRUNE_CRITERION})
    return pruned, _finished(step, started, memory)


def _qat_step(model: nn.Module, task: Task, prepared: Any, config: TrainConfig, bits: int,
              run: _StepRun) -> tuple[nn.Module, Step]:
    from kdcore import train
    from kdcore.compress import PeakMemory, bake, deployable, fake_quantize, packed_size_bytes

    started = time.perf_counter()
    with PeakMemory(_device(config)) as memory:
        quantizing = fake_quantize(copy.deepcopy(model), bits)
        result = train(task, config, teacher=prepared.teacher_logits(config), build_model=lambda: quantizing,
                       on_epoch=run.log_epoch)
        quantizing.load_state_dict(result.state_dict)
        baked = bake(quantizing).cpu().eval()
        runs, how = deployable(baked, bits)
        step = _measure(f"qat{bits}", run.logger.run_id, runs, task, runs_as=how, result=result,
                        packed=packed_size_bytes(baked, bits))
    return baked, _finished(step, started, memory)


def _measure(name: str, run_id: str | None, model: nn.Module, task: Task, *, runs_as: str, result: Any = None,
             packed: int | None = None) -> Step:
    """Score ``model`` (what runs, on CPU) on validation and test by its task's score (accuracy, or
    an embedding task's Recall@1), count and size it as a trial's student is, and time it."""
    import contextlib

    import torch

    from kdcore.cost import latency_ms
    from kdcore.data import BatchSource
    from kdcore.objective import evaluate_model
    from kdcore.trainer import count_parameters

    splits = task.splits()
    cpu = torch.device("cpu")
    val_acc, test_acc = (evaluate_model(task, model, BatchSource(split, 256, cpu), contextlib.nullcontext).score
                         for split in (splits.val, splits.test))
    params, size_bytes = count_parameters(model)  # an int8 copy counts the same parameters, in fewer bytes
    return Step(name, run_id, val_acc, test_acc, params, size_bytes, latency_ms(model, splits.train[0][0]),
                train_time_s=result.train_time_s if result else 0.0, epochs_run=result.epochs_run if result else 0,
                stop_reason=result.stop_reason if result else "", runs_as=runs_as, packed_size_bytes=packed)


def _finished(step: Step, started: float, memory: Any) -> Step:
    from dataclasses import replace

    return replace(step, step_time_s=time.perf_counter() - started, peak_memory_mb=memory.peak_bytes / 2**20,
                   memory_growth_mb=(memory.peak_bytes - memory.start_bytes) / 2**20, memory_kind=memory.kind)


def _checkpoint(task_spec: str, task: Task, config: TrainConfig, model: nn.Module, bits: int | None,
                step: Step) -> dict[str, Any]:
    """A student checkpoint (``student_checkpoint``) plus what rebuilds a pruned student and, after
    QAT, the bit width its baked weights are converted at when loaded."""
    from kdcore.compress import structure_of
    from sweeps.tracking.run_logger import student_checkpoint

    checkpoint = student_checkpoint(task_spec, task.num_classes, config, model.state_dict(),
                                    {"val_acc": step.val_acc, "test_acc": step.test_acc})
    checkpoint["structure"] = structure_of(model)
    if bits is not None:
        checkpoint["bits"] = bits
    return checkpoint


class _StepRun:
    """A step's MLflow run: opened on entering; closed FINISHED by ``finish``, or KILLED (Ctrl-C) or
    FAILED (an error) when the block raises, so none stays RUNNING."""

    def __init__(self, client: Any, experiment: str, parent: str | None, name: str, *, params: dict[str, Any],
                 tags: dict[str, str]) -> None:
        from sweeps.tracking.run_logger import RunLogger

        self.logger = RunLogger.start(client, experiment, name, params=params, tags=tags, parent_run_id=parent)
        pause_at("compress.started")

    def log_epoch(self, epoch: Any) -> None:
        self.logger.log_epoch(epoch)
        pause_at("compress.epoch")

    def log_input(self, step: Step) -> None:
        self.logger.log_metrics({f"input_{k}": v for k, v in step.metrics().items()
                                 if k in ("final_val_acc", "test_acc", "params", "size_bytes", "latency_ms_b1")})

    def finish(self, step: Step, checkpoint: dict[str, Any]) -> None:
        self.logger.log_metrics(step.metrics(), tags={"stop_reason": step.stop_reason, "runs_as": step.runs_as,
                                                      "memory_kind": step.memory_kind, "state": "FINISHED"})
        self.logger.log_checkpoint(checkpoint)
        self.logger.finish()

    def __enter__(self) -> _StepRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc_info: Any) -> None:
        if kind is not None:
            from sweeps.search.trial import describe_error

            interrupted = issubclass(kind, KeyboardInterrupt)  # Ctrl-C or SIGTERM
            self.logger.log_metrics({}, tags={"state": "INTERRUPTED" if interrupted else "FAILED",
                                              **({} if interrupted else {"kdsweep.error": describe_error(exc_info[0])})})
            self.logger.finish("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")


def table_lines(done: Compressed) -> list[str]:
    """Seed 002's table: one line per step, the student it started from first."""
    val, test = ("val_acc", "test_acc") if done.score == "accuracy" else ("val R@1", "test R@1")
    lines = [f"{'step':<8} {val:>8} {test:>8} {'params':>8} {'bytes':>8} {'ms/sample':>9} "
             f"{'train s':>8} {'peak MiB (+growth)':>18}  runs as"]
    for s in done.steps:
        memory = f"{s.peak_memory_mb:.0f} (+{s.memory_growth_mb:.0f})" if s.run_id else "-"
        lines.append(f"{s.name:<8} {s.val_acc:>8.4f} {s.test_acc:>8.4f} {s.params:>8,} {s.size_bytes:>8,} "
                     f"{s.latency_ms_b1:>9.3f} {s.train_time_s:>8.1f} {memory:>18}  {s.runs_as}"
                     + (f"; {done.bits}-bit storage would hold {s.packed_size_bytes:,} bytes"
                        if s.packed_size_bytes is not None else ""))
    return lines


def _example(task: Task) -> torch.Tensor:
    import torch

    train = task.splits().train
    return torch.stack([train[i][0] for i in range(min(_EXAMPLE_BATCH, len(train)))])


def _device(config: TrainConfig) -> str:
    from kdcore.trainer import resolve_device

    return str(resolve_device(config.device))
