"""The shared KD trainer: one function, ``train``, that every kdsweep run and sweep trial calls."""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from kdcore.config import EMBEDDING_SETTINGS, TrainConfig
from kdcore.data import BatchSource, fraction_indices, labels_of, left_out, take, transfer_pool
from kdcore.errors import ConfigError, StopTraining
from kdcore.objective import ClassificationObjective, build_objective
from kdcore.preflight import preflight
from kdcore.tasks.base import Task

# How often (in steps) the running loss is read back to check for divergence. Reading it
# forces a device sync, so it is not done every step.
_DIVERGENCE_CHECK_EVERY = 8


@dataclass(frozen=True)
class TeacherLogits:
    """Raw teacher outputs for every sample of each split, in split order (see kdcore.cache): logits,
    or embeddings (N, D) for an embedding task."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    unlabeled: torch.Tensor | None = None


@dataclass(frozen=True)
class EpochResult:
    """What one epoch measured; handed to the ``on_epoch`` hook.

    ``val_acc`` is the task's validation score, named by ``score_name``: accuracy ("val_acc") for a
    classification task, Recall@1 ("recall_at_1") for an embedding task. ``ce_loss`` is the task's
    own loss (cross-entropy, or the proxy loss of an embedding task) and ``kd_loss`` the weighted KD
    term. ``extra`` holds the metrics only some task kinds have, by their logged names (an embedding
    task: val_recall_at_1, val_recall_at_5, kd_direct_loss, kd_relational_loss); empty otherwise.
    """

    epoch: int
    train_loss: float
    kd_loss: float
    ce_loss: float
    val_loss: float
    val_acc: float
    lr: float
    epoch_time_s: float
    samples_per_s: float
    train_fraction: float = 1.0  # share of the labelled subset this epoch trained on
    temperature: float = math.nan  # this epoch's T and alpha (their schedules, kdcore.schedule)
    alpha: float = math.nan
    score_name: str = "val_acc"
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Every number but ``epoch``, ready to log with ``step=epoch``: the fields, then ``extra``'s."""
        values = asdict(self)
        del values["epoch"], values["score_name"]
        extra = values.pop("extra")
        return {**values, **extra}


@dataclass
class TrainResult:
    """Outcome of ``train``; ``state_dict`` holds the best epoch's weights (the student alone: an
    embedding task's projection head and class proxies are training state, not exported).

    ``best_val_acc`` and ``test_acc`` are the task's score (``score_name``: accuracy, or Recall@1 for
    an embedding task) at the best epoch, on validation and test. ``extra`` holds the metrics only
    some task kinds have (an embedding task: val_recall_at_1, val_recall_at_5 of the best epoch,
    test_recall_at_1, test_recall_at_5); empty for a classification task.
    """

    best_val_acc: float
    best_epoch: int
    epochs_run: int
    stop_reason: str  # completed | early_stopped | diverged | deadline | a hook's reason
    test_acc: float
    train_time_s: float
    student_params: int
    student_size_bytes: int
    state_dict: dict[str, torch.Tensor]
    history: list[EpochResult] = field(default_factory=list)
    score_name: str = "val_acc"
    extra: dict[str, float] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def learning_rate(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up to ``config.lr``, then cosine decay to zero at ``total_steps``."""
    warmup = int(config.warmup_frac * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def check_config(task: Task, config: TrainConfig, *, ratios: Iterable[float] | None = None) -> None:
    """ConfigError for settings that do not fit ``task``'s data or this machine, then the task's
    preflight (kdcore.preflight): TaskError unless its data, teacher (and pretrained weights) and the
    students at ``config.ratio`` and at ``ratios`` (say, the ends of a searched range) fit together.
    Called before anything is written; each task object is preflighted once per ratio."""
    _check_settings(task, config)
    preflight(task, [config.ratio, *(ratios or ())])


def _check_settings(task: Task, config: TrainConfig) -> None:
    """ConfigError for settings that do not fit ``task``'s data or this machine."""
    device = resolve_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={config.device!r} but CUDA is not available on this machine: use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={config.device!r} but MPS is not available on this machine: use auto or cpu")
    _check_kind_settings(task, config)
    if config.teachers > 1 and config.teachers > len(task.teachers()):
        names = ", ".join(spec.name for spec in task.teachers())
        raise ConfigError(f"teachers={config.teachers} is out of range for task '{task.name}': it has "
                          f"{len(task.teachers())} teacher(s) ({names}); give it more in Task.teachers()")
    if config.transfer_ratio > 0 and config.distills():
        splits = task.splits()
        labelled = len(fraction_indices(labels_of(splits.train), config.data_fraction, config.data_seed))
        pool = (len(splits.unlabeled) if splits.unlabeled is not None else 0) + len(splits.train) - labelled
        if pool == 0:
            raise ConfigError(
                f"transfer_ratio={config.transfer_ratio:g} needs unlabelled inputs, but task '{task.name}' has no "
                "unlabeled split and data_fraction=1 leaves no training input out: set transfer_ratio: 0, "
                "lower data_fraction, or give the task an unlabeled split")


def _check_kind_settings(task: Task, config: TrainConfig) -> None:
    """ConfigError for settings the task's kind does not read or does not support."""
    if task.kind != "embedding":
        changed = [f"{name}={getattr(config, name)!r}" for name in EMBEDDING_SETTINGS
                   if getattr(config, name) != TrainConfig.model_fields[name].default]
        if changed:
            raise ConfigError(f"{', '.join(changed)} apply to embedding tasks only, and task '{task.name}' is a "
                              f"{task.kind} task: remove them")
        return
    if config.teachers > 1 or (config.ema_decay > 0 and config.distills()):
        setting = f"teachers={config.teachers}" if config.teachers > 1 else f"ema_decay={config.ema_decay:g}"
        raise ConfigError(f"{setting} is not supported for embedding task '{task.name}' (one fixed teacher's "
                          "embeddings are the KD target): set teachers: 1 and ema_decay: 0")


def _transfer_source(task: Task, config: TrainConfig, kept: torch.Tensor, cached: list[TeacherLogits],
                     device: torch.device):
    """(batches of unlabelled inputs without end, their cached logits (teachers x inputs x classes)
    or None), or (None, None) when the run has no transfer set. Without a KD term the inputs would
    teach nothing."""
    if config.transfer_ratio == 0 or not config.distills():
        return None, None
    splits = task.splits()
    unused = left_out(len(splits.train), kept)
    pool = transfer_pool(splits.train, unused, splits.unlabeled)
    per_batch = max(1, round(config.batch_size * config.transfer_ratio))
    source = BatchSource(pool, per_batch, device, config.num_workers)
    logits = None
    if cached:
        logits = torch.stack([torch.cat([t.train[unused], *([t.unlabeled] if splits.unlabeled is not None else [])])
                              for t in cached]).to(device)
    return source, logits


def _cached_teachers(teacher: Any, config: TrainConfig) -> list[TeacherLogits]:
    """The cached teachers of the KD target: the first ``config.teachers`` of those given."""
    if isinstance(teacher, TeacherLogits):
        teacher = [teacher]
    if not isinstance(teacher, (list, tuple)):
        if config.teachers > 1:
            raise ValueError(f"teachers={config.teachers} needs that many cached teachers' logits, got a live module")
        return []
    if len(teacher) < config.teachers:
        raise ValueError(f"teachers={config.teachers} needs that many cached teachers' logits, got {len(teacher)}")
    return list(teacher[: config.teachers])


def _ema_teacher(model: nn.Module, config: TrainConfig) -> nn.Module | None:
    """An exponential moving average of the student (weights and buffers), updated after every
    optimizer step, as seed 003's online teacher; None when ``ema_decay`` is 0."""
    if config.ema_decay == 0 or config.ema_weight == 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    return ema.eval()  # never trained: its BatchNorm uses the averaged statistics


@dataclass(frozen=True)
class _Fidelity:
    """The labelled batches of one fidelity level, and their cached logits (teachers x samples x
    classes, or None)."""

    fraction: float
    source: BatchSource
    logits: torch.Tensor | None


def _low_fidelity(labelled, cached: torch.Tensor | None, config: TrainConfig, device: torch.device) -> _Fidelity:
    share = fraction_indices(labels_of(labelled), config.low_fidelity_fraction, config.data_seed)
    source = BatchSource(take(labelled, share), config.batch_size, device, config.num_workers)
    return _Fidelity(config.low_fidelity_fraction, source,
                     cached[:, share.to(cached.device)] if cached is not None else None)


def _time_to_stop(deadline: float | None, interrupt: threading.Event | None) -> str | None:
    if interrupt is not None and interrupt.is_set():
        return "interrupted"
    if deadline is not None and time.time() >= deadline:
        return "deadline"
    return None


def _clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> None:
    """Scale gradients so their total 2-norm is at most ``max_norm``: the maths of
    ``nn.utils.clip_grad_norm_`` without its per-call grouping, which costs 2-5% of a tiny
    model's step (bench/bench_trainer.py --breakdown). Never reads the norm back, so no sync."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(number of parameters, bytes of ``torch.save(model.state_dict())``): the file a deployment
    ships, measured the same way for an INT8 copy (kdcore.cost), so the two sizes compare."""
    import io

    params = sum(p.numel() for p in model.parameters())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return params, buffer.tell()


def evaluate(model: nn.Module, source: BatchSource, autocast: Any) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a classifier over one in-order pass of ``source``
    (kdcore.objective.evaluate_model scores a model of either task kind)."""
    result = ClassificationObjective().evaluate(model, source, autocast)
    return result.loss, result.score


def train(
    task: Task,
    config: TrainConfig,
    *,
    teacher: TeacherLogits | Sequence[TeacherLogits] | nn.Module | None = None,
    build_model: Callable[[], nn.Module] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    deadline: float | None = None,
    interrupt: threading.Event | None = None,
) -> TrainResult:
    """Train a student of ``task`` (``task.build_student(config.ratio)``) by distillation.

    ``teacher`` is cached logits (no teacher forward pass at all; a list of them for an ensemble, of
    which the first ``config.teachers`` are used), a live teacher module, or
    None for plain cross-entropy (then ``alpha`` must be 0). ``on_epoch`` may raise
    ``StopTraining(reason)`` to stop after that epoch. ``on_checkpoint`` receives the full
    training state after every whole epoch; pass such a state back as ``resume`` to continue from it.
    ``deadline`` is a ``time.time()`` value: training stops at it, inside the epoch if need be;
    setting ``interrupt`` (a first Ctrl-C, say) stops the same way with stop_reason "interrupted".

    An epoch is one pass over the labelled subset (``data_fraction`` of the training split, drawn
    with ``data_seed``). With ``transfer_ratio > 0`` each batch also carries that many unlabelled
    inputs per labelled one, drawn from the transfer set, which only the KD term sees. The first
    ``low_fidelity_epochs`` epochs pass over ``low_fidelity_fraction`` of the labelled subset only.

    What is optimised and scored follows ``task.kind`` (kdcore.objective): for an embedding task the
    cached outputs are the teacher's embeddings, the loss is ``alpha`` times the embedding KD term
    plus ``1 - alpha`` times a proxy loss, and the score (``val_acc``, ``best_val_acc``, ``test_acc``,
    named by ``score_name``) is Recall@1, with Recall@5 in ``extra``.
    """
    online_only = config.ema_decay > 0 and config.ema_weight == 1  # the EMA teacher alone
    if teacher is None and config.distills() and not online_only:
        raise ValueError("alpha > 0 needs a teacher: pass cached TeacherLogits or a teacher module "
                         "(or learn from an EMA teacher alone: ema_decay > 0 and ema_weight 1)")
    _check_settings(task, config)  # the caller runs the task's preflight once, not every trial
    started = time.perf_counter()
    device = resolve_device(config.device)
    use_amp = config.amp and device.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    # Data: a stratified, nested subset of the training split whose labels are used, and the
    # transfer set; cached logits follow both.
    splits = task.splits()
    kept = fraction_indices(labels_of(splits.train), config.data_fraction, config.data_seed)
    labelled = take(splits.train, kept)
    ensemble = _cached_teachers(teacher, config)
    cached = torch.stack([t.train[kept] for t in ensemble]).to(device) if ensemble else None
    full = _Fidelity(1.0, BatchSource(labelled, config.batch_size, device, config.num_workers), cached)
    # Low-fidelity epochs train on a nested share of the same labelled subset, their logits with them.
    low = _low_fidelity(labelled, cached, config, device) if config.low_fidelity_epochs else full
    val_source = BatchSource(splits.val, config.batch_size * 4, device, config.num_workers)
    transfer, transfer_cached = _transfer_source(task, config, kept, ensemble, device)
    if isinstance(teacher, nn.Module):
        teacher = teacher.to(device).eval()
    distilling = config.distills()
    # Each teacher's share of the KD target: the fixed ones' split by teacher_weights, then the EMA's.
    fixed_share = 0.0 if online_only or teacher is None else 1.0 - (config.ema_weight if config.ema_decay else 0.0)
    weights = config.teacher_weights or (1.0,) * max(len(ensemble), 1)
    shares = [fixed_share * w / sum(weights) for w in weights] if fixed_share > 0 else []

    # Model and optimizer, seeded so a run is reproducible.
    torch.manual_seed(config.seed)
    model = (build_model or (lambda: task.build_student(config.ratio)))().to(device)
    # The task kind's loss and score; an embedding task's proxies and projection head train with
    # the student but stay out of its exported weights.
    objective = build_objective(task, config, model, ensemble or teacher, full.source).to(device)
    params = [*model.parameters(), *objective.parameters()]
    ema = _ema_teacher(model, config) if distilling else None
    # The fused kernel steps all parameters at once: 4x faster than the default per-tensor loop
    # on CPU, which matters for small students (bench/bench_trainer.py).
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))

    def fidelity(epoch: int) -> _Fidelity:
        return low if epoch <= config.low_fidelity_epochs else full

    total_steps = sum(math.ceil(len(fidelity(e).source) / config.grad_accum_steps) for e in range(1, config.epochs + 1))
    better = (lambda new, old: new > old + config.min_delta) if config.monitor == "val_acc" else (
        lambda new, old: new < old - config.min_delta)
    state = {"epoch": 0, "step": 0, "best_score": None, "best_epoch": 0, "bad_epochs": 0,
             "best_state": None, "history": []}
    if resume is not None:
        model.load_state_dict(resume["model"])
        if "objective" in resume:
            objective.load_state_dict(resume["objective"])
        if ema is not None:
            ema.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        state.update({key: resume[key] for key in state})
    history = [EpochResult(**h) for h in state["history"]]
    stop_reason = "completed"

    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        train_source, cached = fidelity(epoch).source, fidelity(epoch).logits  # this epoch's batches
        temperature, alpha = config.kd_weights(epoch)
        sums = torch.zeros(len(objective.parts), device=device)  # total, kd, ce (...) loss summed over samples
        seen = 0
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        # Its own generator, so the labelled batches are the same with or without a transfer set.
        unlabelled = transfer.forever(torch.Generator().manual_seed(config.seed * 1_000_003 + epoch + 7_919)) \
            if transfer is not None else None
        for i, (positions, x, y) in enumerate(train_source.epoch(generator)):
            if unlabelled is not None:  # append unlabelled inputs: the KD term sees them, CE does not
                extra_positions, extra_x, _ = next(unlabelled)
                x = torch.cat([x, extra_x])
            # Forward and backward; the teacher's logits come from the cache when given.
            with autocast():
                logits = model(x)
                teachers: list[torch.Tensor] = []  # the KD target's teachers, weighed by shares
                if distilling and fixed_share > 0 and cached is not None:
                    batch_logits = cached[:, positions]
                    if unlabelled is not None:
                        batch_logits = torch.cat([batch_logits, transfer_cached[:, extra_positions]], dim=1)
                    teachers.extend(batch_logits.unbind(0))
                elif distilling and fixed_share > 0:
                    with torch.no_grad():
                        teachers.append(teacher(x))
                if ema is not None:  # no cache can hold it: one more student forward per batch
                    with torch.no_grad():
                        teachers.append(ema(x))
            loss = objective.loss(logits.float(), teachers or None, y, temperature=temperature, alpha=alpha,
                                  teacher_weights=[*shares, *([config.ema_weight] if ema is not None else [])])
            (loss[0] / config.grad_accum_steps).backward()
            sums += torch.stack(loss).detach() * len(y)
            seen += len(y)

            # Optimizer step every grad_accum_steps batches, with clipping and the lr schedule.
            if (i + 1) % config.grad_accum_steps == 0 or i + 1 == len(train_source):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(state["step"], total_steps, config)
                if config.grad_clip > 0:
                    _clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update_parameters(model)
                state["step"] += 1

            # Stop inside the epoch on divergence or at the deadline.
            if (i + 1) % _DIVERGENCE_CHECK_EVERY == 0 and not math.isfinite(sums[0].item()):
                stop_reason = "diverged"
                break
            stop_reason = _time_to_stop(deadline, interrupt) or stop_reason
            if stop_reason != "completed":
                break
        if stop_reason == "completed" and not math.isfinite(sums[0].item()):
            stop_reason = "diverged"
        cut_short = stop_reason in ("deadline", "interrupted")
        if stop_reason == "diverged" or (cut_short and state["best_state"] is not None):
            break  # a partial epoch is only worth validating when nothing better exists yet

        # Validate, keep the best weights, and let the hook see the epoch.
        val = objective.evaluate(model, val_source, autocast)
        val_loss, val_acc = val.loss, val.score
        epoch_time = time.perf_counter() - epoch_start
        train_loss, kd_part, ce_part, *other_parts = (sums / max(seen, 1)).tolist()
        extra = {**{f"val_{name}": value for name, value in val.extra.items()},
                 **dict(zip(objective.parts[3:], other_parts))}
        result = EpochResult(epoch, train_loss, kd_part, ce_part, val_loss, val_acc,
                             optimizer.param_groups[0]["lr"], epoch_time, seen / epoch_time, fidelity(epoch).fraction,
                             temperature, alpha, objective.score_name, extra)
        history.append(result)
        state["epoch"] = epoch
        score = val_acc if config.monitor == "val_acc" else val_loss
        if state["best_score"] is None or better(score, state["best_score"]):
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0,
                         best_state={k: v.detach().clone() for k, v in model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        if on_checkpoint is not None and not cut_short:  # resuming from a part of an epoch would skip its rest
            state["history"] = [asdict(h) for h in history]
            # A snapshot: state_dict() tensors alias the live weights, which later epochs change.
            on_checkpoint(copy.deepcopy({**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         **({"ema": ema.state_dict()} if ema is not None else {}),
                                         **({"objective": objective.state_dict()} if task.kind == "embedding" else {})}))
        try:
            if on_epoch is not None:
                on_epoch(result)
        except StopTraining as stop:
            stop_reason = stop_reason if cut_short else stop.reason
            break
        if cut_short:
            break
        if config.patience and state["bad_epochs"] >= config.patience:
            stop_reason = "early_stopped"
            break
        stop_reason = _time_to_stop(deadline, interrupt) or stop_reason
        if stop_reason != "completed":
            break

    # Report the best epoch's weights, scored once on the test split.
    best_state = state["best_state"] or model.state_dict()
    model.load_state_dict(best_state)
    test = objective.evaluate(model, BatchSource(splits.test, config.batch_size * 4, device), autocast)
    params, size = count_parameters(model)
    best = next((h for h in history if h.epoch == state["best_epoch"]), None)
    best_val = {k: v for k, v in best.extra.items() if k.startswith("val_")} if best else {}
    return TrainResult(
        best_val_acc=best.val_acc if best else 0.0,
        best_epoch=state["best_epoch"],
        epochs_run=len(history),
        stop_reason=stop_reason,
        test_acc=test.score,
        train_time_s=time.perf_counter() - started,
        student_params=params,
        student_size_bytes=size,
        state_dict={k: v.detach().cpu() for k, v in best_state.items()},
        history=history,
        score_name=objective.score_name,
        extra={**best_val, **{f"test_{name}": value for name, value in test.extra.items()}},
    )
