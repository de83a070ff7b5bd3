"""Per-epoch cost of the kdsweep trainer: its overhead over a minimal loop, and the teacher cache's gain.

What it measures, in one process on one machine, all variants interleaved:

(a) ``kdsweep+MLflow``: ``sweeps.tracking.logged_run.train_logged`` (``kdcore.train`` on cached teacher logits,
    one MLflow ``log_batch`` per epoch through ``sweeps.tracking.run_logger.RunLogger`` into a fresh SQLite
    store, as ``kdsweep train`` does) against ``minimal``: a hand-written PyTorch loop training
    the same student (``task.build_student(ratio)``) on the same training split and batch size,
    with the same loss (KD on the same cached teacher logits, same T and alpha), AdamW with the
    same lr and weight decay, and a validation pass every epoch as the trainer does.
    Target: kdsweep+MLflow / minimal <= 1.05.
(b) ``kdcore.train`` on the cached teacher logits (``kdsweep cached``, ``teacher=TeacherLogits``),
    with a live teacher forward every step (``kdsweep live``, ``teacher=nn.Module``) and plain
    cross-entropy (``kdsweep CE``, ``alpha=0``, ``teacher=None``), same student.
    Target: cached / CE <= 1.10; live / CE shows what the cache saves. ``kdsweep cached`` is also
    (a) without MLflow, which splits the trainer's own cost from the logging cost.

How an epoch is timed. kdcore variants: the wall time between consecutive ``on_epoch`` callbacks,
so it holds everything the trainer does per epoch (training, validation, keeping the best
weights and, when logged, MLflow's per-epoch ``log_batch``); the trainer's own
``EpochResult.epoch_time_s`` (training + validation only) is shown beside it. Minimal loop: the
wall time of its epoch (training + validation). The first epoch of every training run is a
warm-up and is dropped. Each repeat trains every variant once, in an order rotated per repeat, so
machine noise falls on all variants alike; one untimed pass of every variant comes first.

How to read it. ``median``/``mean``/``p25``/``p75``/``min`` are wall milliseconds per epoch over
all kept epochs of all repeats (``mean`` also catches rare spikes such as a periodic flush);
``cpu`` is the median process CPU time per epoch, which other processes on a shared
machine barely move (it misses time spent waiting on I/O such as SQLite's fsync). In the ratio
table, ``pooled`` divides pooled medians; ``paired`` is the median over repeats of the ratio of
the two variants' medians within that repeat (same stretch of machine time), with its range --
the verdict uses ``paired``, the most noise-robust figure; ``cpu`` divides CPU medians. When
``pooled``, ``paired`` and ``cpu`` disagree by more than a few percent, the machine was busy: rerun.

Threads: default 1 intra-op thread, for every variant. On a small shared box, two or more OpenMP
threads make every op wait for its slowest thread (spinning), so a neighbour taking one core
inflates epochs 5-20x and even the CPU time; one thread only loses time slices. On an idle
2-core box, 2 threads make the mnist1d student's epoch at most ~10% faster; pass --threads to
compare.

    python bench/bench_trainer.py [--task mnist1d] [--epochs N] [--repeats R] [--threads T]
                                  [--store DIR] [--breakdown]

``--breakdown`` adds variants that locate the trainer's overhead: the real trainer without
gradient clipping (``grad_clip=0``), the real logged run with MLflow's asynchronous logging
(``log_batch(synchronous=False)``) or with epochs buffered and written in one ``log_batch`` at
most every 0.5 s (two candidate fixes), and the minimal loop with each of the trainer's per-step
extras switched on alone (kdcore.kd_loss, torch.stack of the loss parts, the divergence
``.item()`` every 8 steps, the lr-schedule write, clip_grad_norm_, the deadline clock, cloning
the best weights), all together, and with a leaner gradient clipping (a candidate fix).

The teacher is trained once (about 16 s for mnist1d) and kept under ``--store`` (default: a
folder in the system temp dir); MLflow writes to a temporary store removed at exit. Exit status 1 when a target is not met.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from kdcore import EpochResult, TrainConfig, kd_loss, train
from kdcore.trainer import learning_rate
from sweeps.tracking.logged_run import Prepared, prepare, run_params, train_logged
from sweeps.tracking.store import Store
from sweeps.tracking.run_logger import RunLogger

DEFAULT_STORE = Path(tempfile.gettempdir()) / "kdsweep-bench-store"
WARMUP_EPOCHS = 1


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------

def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def machine_lines(device: str) -> list[str]:
    import mlflow

    return [
        f"cpu      : {cpu_model()}",
        f"cores    : {os.cpu_count()} logical, {usable_cores()} usable by this process; "
        f"load average (1/5/15 min) {load_average()}",
        f"torch    : {torch.__version__}, intra-op threads {torch.get_num_threads()}, "
        f"inter-op threads {torch.get_num_interop_threads()}, device {device}",
        f"python   : {platform.python_version()}, mlflow {mlflow.__version__}, {platform.platform()}",
    ]


# ---------------------------------------------------------------------------------------------
# Variants: each trains once for `epochs` epochs and returns per-epoch times (warm-up included).
# ---------------------------------------------------------------------------------------------

@dataclass
class Timings:
    wall_s: list[float] = field(default_factory=list)  # wall time per epoch
    cpu_s: list[float] = field(default_factory=list)  # process CPU time per epoch
    trainer_s: list[float] = field(default_factory=list)  # EpochResult.epoch_time_s (kdcore variants)
    log_s: list[float] = field(default_factory=list)  # time the trainer waits in RunLogger.log_epoch
    val_acc: float = float("nan")  # last epoch's, a sanity check that the variants really train


class _EpochClock:
    """Records wall and CPU time between consecutive calls; the on_epoch hook of kdcore variants."""

    def __init__(self) -> None:
        self.timings = Timings()
        self.last = (time.perf_counter(), time.process_time())

    def tick(self) -> None:
        now = (time.perf_counter(), time.process_time())
        self.timings.wall_s.append(now[0] - self.last[0])
        self.timings.cpu_s.append(now[1] - self.last[1])
        self.last = now

    def __call__(self, epoch: EpochResult) -> None:
        self.tick()
        self.timings.trainer_s.append(epoch.epoch_time_s)
        self.timings.val_acc = epoch.val_acc


def run_kdcore(prepared: Prepared, config: TrainConfig, teacher) -> Timings:
    """kdcore.train, no logging; ``teacher`` is TeacherLogits, an nn.Module or None."""
    clock = _EpochClock()
    train(prepared.task, config, teacher=teacher, on_epoch=clock)
    return clock.timings


class _TimedLogger(RunLogger):
    """The RunLogger of ``kdsweep train``, timing how long each per-epoch log blocks the trainer.

    ``mode`` "sync" is what kdsweep does. Two candidate fixes, measured by --breakdown only:
    "async" logs each epoch with ``log_batch(..., synchronous=False)`` (MLflow's background
    thread); "batched" buffers epochs and writes them in one ``log_batch`` at most every
    ``BATCH_EVERY_S`` seconds, and before the run's final metrics.
    """

    BATCH_EVERY_S = 0.5  # short, so that flushes land inside the timed epochs of a short run

    def __init__(self, client, run_id: str, mode: str = "sync") -> None:
        super().__init__(client, run_id)
        self.mode = mode
        self.log_s: list[float] = []
        self.pending: list = []
        self.flushed_at = time.perf_counter()

    def log_epoch(self, epoch: EpochResult) -> None:
        started = time.perf_counter()
        if self.mode == "sync":
            super().log_epoch(epoch)
        else:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(name, float(value), now, epoch.epoch) for name, value in epoch.metrics().items()]
            if self.mode == "async":
                self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)
            else:
                self.pending += metrics
                if started - self.flushed_at >= self.BATCH_EVERY_S:
                    self.flush()
        self.log_s.append(time.perf_counter() - started)

    def flush(self) -> None:
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []
        self.flushed_at = time.perf_counter()

    def log_metrics(self, metrics: dict[str, float], tags: dict[str, str] | None = None) -> None:
        self.flush()
        super().log_metrics(metrics, tags)

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        if self.mode == "async":
            import mlflow

            mlflow.flush_async_logging()
        super().finish(status)


def run_logged(prepared: Prepared, config: TrainConfig, client, experiment_id: str, index: int,
               mode: str = "sync") -> Timings:
    """sweeps.tracking.logged_run.train_logged into the temporary MLflow store, as ``kdsweep train`` runs it."""
    started = RunLogger.start(client, experiment_id, f"bench-{index}", params=run_params(prepared, config),
                              tags={"kdsweep.kind": "bench"})
    logger = _TimedLogger(client, started.run_id, mode)
    clock = _EpochClock()
    try:
        train_logged(prepared, config, logger, on_epoch=clock)
    finally:
        logger.finish()
    clock.timings.log_s = logger.log_s
    return clock.timings


@dataclass(frozen=True)
class Extras:
    """kdcore.train's per-step extras, each switchable in the minimal loop (--breakdown)."""

    kd_loss_fn: bool = False  # kdcore.kd_loss instead of the inline loss
    stack: bool = False  # sums += torch.stack(loss parts).detach() * len(y)
    item_check: bool = False  # math.isfinite(sums[0].item()) every 8 steps (divergence check)
    lr_schedule: bool = False  # learning_rate(step) written into every param group each step
    clip: bool = False  # nn.utils.clip_grad_norm_(model.parameters(), grad_clip) each step
    deadline: bool = False  # time.time() >= deadline each step
    keep_best: bool = False  # clone the state_dict after every epoch
    lean_clip: bool = False  # candidate fix for `clip`: the same clipping in three foreach ops
    fused_adamw: bool = False  # AdamW(fused=True), as kdcore.train uses

    @classmethod
    def all(cls, **changes: bool) -> Extras:
        return cls(**{"kd_loss_fn": True, "stack": True, "item_check": True, "lr_schedule": True,
                      "clip": True, "deadline": True, "keep_best": True, **changes})


def lean_clip_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ without its per-call grouping and per-tensor loops (candidate fix).

    Same total 2-norm and scaling; on CPU the norm is read and gradients are scaled only when
    it exceeds ``max_norm`` (reading costs nothing there); elsewhere it scales unconditionally
    by the clamped factor, like torch, so it never syncs the device.
    """
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if total.device.type == "cpu":
        if float(total) > max_norm:
            torch._foreach_mul_(grads, max_norm / (float(total) + 1e-6))
    else:
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def run_minimal(prepared: Prepared, config: TrainConfig, device: torch.device,
                extras: Extras = Extras()) -> Timings:
    """A hand-written KD loop: same student, data, batch size, loss and optimizer; validates each epoch."""
    splits = prepared.task.splits()
    x_train, y_train = (t.to(device) for t in splits.train.tensors)
    x_val, y_val = (t.to(device) for t in splits.val.tensors)
    teacher_train = prepared.outputs.logits.train.to(device)
    T, alpha, bs = config.temperature, config.alpha, config.batch_size
    n = len(y_train)
    total_steps = config.epochs * math.ceil(n / bs)
    sums = torch.zeros(3, device=device)

    torch.manual_seed(config.seed)
    model = prepared.task.build_student(config.ratio).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=extras.fused_adamw)
    params = list(model.parameters())
    clock = _EpochClock()
    step = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator).to(device)
        for i, start in enumerate(range(0, n, bs)):
            idx = order[start:start + bs]
            x, y, t = x_train[idx], y_train[idx], teacher_train[idx]
            logits = model(x)
            if extras.kd_loss_fn:
                parts = kd_loss(logits, t, y, temperature=T, alpha=alpha)
                loss = parts.total
            else:
                ce = F.cross_entropy(logits, y)
                kd = F.kl_div(F.log_softmax(logits / T, dim=-1), F.log_softmax(t / T, dim=-1),
                              reduction="batchmean", log_target=True) * (T * T)
                loss = alpha * kd + (1 - alpha) * ce
                parts = (loss, kd, ce)
            loss.backward()
            if extras.stack:
                sums += torch.stack(tuple(parts)).detach() * len(y)
            if extras.lr_schedule:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, total_steps, config)
            if extras.clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if extras.lean_clip:
                lean_clip_(params, config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if extras.item_check and (i + 1) % 8 == 0 and not math.isfinite(sums[0].item()):
                raise RuntimeError("diverged")
            if extras.deadline and time.time() >= math.inf:
                break
        # Validation, as kdcore.train does every epoch (batches of 4x the training batch size).
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(y_val), bs * 4):
                xv, yv = x_val[start:start + bs * 4], y_val[start:start + bs * 4]
                out = model(xv)
                F.cross_entropy(out, yv, reduction="sum").item()
                correct += int((out.argmax(dim=-1) == yv).sum())
        if extras.keep_best:
            # The copy kdcore keeps of the best weights: its cost is what is timed, then it is dropped.
            {k: v.detach().clone() for k, v in model.state_dict().items()}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        clock.tick()
        clock.timings.val_acc = correct / len(y_val)
    return clock.timings


# ---------------------------------------------------------------------------------------------
# Statistics and report
# ---------------------------------------------------------------------------------------------

def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


class Results:
    def __init__(self, names: list[str]) -> None:
        self.runs: dict[str, list[Timings]] = {name: [] for name in names}

    def pooled(self, name: str, attr: str = "wall_s") -> list[float]:
        return [x for t in self.runs[name] for x in getattr(t, attr)[WARMUP_EPOCHS:]]

    def paired(self, num: str, den: str) -> list[float]:
        """Per repeat: median wall epoch of ``num`` over that of ``den``."""
        return [median(a.wall_s[WARMUP_EPOCHS:]) / median(b.wall_s[WARMUP_EPOCHS:])
                for a, b in zip(self.runs[num], self.runs[den])]


def ms(seconds: float, width: int = 7) -> str:
    return f"{seconds * 1000:{width}.1f}" if not math.isnan(seconds) else f"{'-':>{width}}"


def report(results: Results, names: list[str], breakdown: bool, repeats: int, epochs: int) -> bool:
    print()
    print(f"per-epoch time, ms ({repeats} repeats x {epochs - WARMUP_EPOCHS} kept epochs per variant)")
    print(f"  {'variant':<24}{'median':>7} {'mean':>7} {'p25':>7} {'p75':>7} {'min':>7} {'cpu':>7}"
          f"  {'epoch_time_s':>12}  {'val_acc':>7}")
    for name in names:
        wall = results.pooled(name)
        print(f"  {name:<24}{ms(median(wall))} {ms(statistics.mean(wall))} {ms(quantile(wall, 0.25))} {ms(quantile(wall, 0.75))} "
              f"{ms(min(wall))} {ms(median(results.pooled(name, 'cpu_s')))}"
              f"  {ms(median(results.pooled(name, 'trainer_s')), 12)}  "
              f"{statistics.mean(t.val_acc for t in results.runs[name]):7.3f}")
    print("  (epoch_time_s: the trainer's own EpochResult.epoch_time_s, training + validation only)")
    for name in names:
        waits = results.pooled(name, "log_s")
        if waits:
            print(f"  {name}: RunLogger.log_epoch blocks the trainer {ms(median(waits)).strip()} ms per epoch "
                  f"(median; p75 {ms(quantile(waits, 0.75)).strip()}, max {ms(max(waits)).strip()})")

    rows: list[tuple[str, str, str, float | None]] = [
        ("(a) kdsweep+MLflow / minimal", "kdsweep+MLflow", "minimal", 1.05),
        ("    kdsweep+MLflow / minimal fused AdamW", "kdsweep+MLflow", "minimal fused AdamW", None),
        ("    kdsweep cached / minimal", "kdsweep cached", "minimal", None),
        ("    kdsweep+MLflow / kdsweep cached", "kdsweep+MLflow", "kdsweep cached", None),
        ("(b) kdsweep cached / kdsweep CE", "kdsweep cached", "kdsweep CE", 1.10),
        ("    kdsweep live / kdsweep CE", "kdsweep live", "kdsweep CE", None),
        ("    kdsweep live / kdsweep cached", "kdsweep live", "kdsweep cached", None),
    ]
    if breakdown:
        rows += [
            ("    kdsweep no clip / minimal", "kdsweep no clip", "minimal", None),
            ("    kdsweep cached / kdsweep no clip", "kdsweep cached", "kdsweep no clip", None),
            ("    kdsweep+MLflow async / minimal", "kdsweep+MLflow async", "minimal", None),
            ("    kdsweep+MLflow async / kdsweep cached", "kdsweep+MLflow async", "kdsweep cached", None),
            ("    kdsweep+MLflow batched / minimal", "kdsweep+MLflow batched", "minimal", None),
            ("    kdsweep+MLflow batched / kdsweep cached", "kdsweep+MLflow batched", "kdsweep cached", None),
        ]
        rows += [(f"    {name} / minimal", name, "minimal", None) for name in names if name.startswith("min +")]

    print()
    print(f"  {'ratio':<42}{'pooled':>7} {'paired':>7} {'(range)':>17} {'cpu':>7}  target   verdict (paired; cpu)")
    all_met = True
    disagree = []
    for label, num, den, target in rows:
        pooled = median(results.pooled(num)) / median(results.pooled(den))
        cpu = median(results.pooled(num, "cpu_s")) / median(results.pooled(den, "cpu_s"))
        per_repeat = results.paired(num, den)
        paired = median(per_repeat)
        spread = f"({min(per_repeat):.3f} - {max(per_repeat):.3f})"
        verdict = target_txt = ""
        if target is not None:
            met = paired <= target
            all_met &= met
            target_txt = f"<= {target:.2f}"
            verdict = f"{'met' if met else 'NOT met'}; cpu {'met' if cpu <= target else 'NOT met'}"
            if abs(paired / cpu - 1) > 0.05 or abs(pooled / cpu - 1) > 0.05:
                disagree.append(label.strip())
        print(f"  {label:<42}{pooled:7.3f} {paired:7.3f} {spread:>17} {cpu:7.3f}  {target_txt:<7}  {verdict}")
    if disagree:
        print(f"  NOTE: wall and cpu ratios differ by more than 5% for {', '.join(disagree)}: other processes "
              "were competing for the CPU (see the load averages), so the wall figures are noisy; rerun "
              "when the machine is quieter, or read the cpu column (it misses only I/O waits, e.g. fsync).")
    return all_met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mnist1d", help="task to benchmark (default: mnist1d)")
    parser.add_argument("--epochs", type=int, default=8,
                        help="epochs per training run; the first is a dropped warm-up (default: 8)")
    parser.add_argument("--repeats", type=int, default=9,
                        help="times each variant is trained, interleaved with the others (default: 9)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument("--device", default="cpu", help="training device (default: cpu)")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE,
                        help=f"folder keeping the teacher and its logit cache (default: {DEFAULT_STORE})")
    parser.add_argument("--breakdown", action="store_true",
                        help="add variants that show where the trainer's overhead goes")
    args = parser.parse_args(argv)
    if args.epochs <= WARMUP_EPOCHS or args.repeats < 1 or args.threads < 1:
        parser.error(f"need --epochs > {WARMUP_EPOCHS} (warm-up), --repeats >= 1, --threads >= 1")

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # settable only before inter-op work starts
        torch.set_num_interop_threads(1)
    device = torch.device(args.device)

    start_load = load_average()
    print("machine")
    for line in machine_lines(args.device):
        print("  " + line)

    started = time.perf_counter()
    prepared = prepare(args.task, Store.resolve(args.store), device=args.device)
    teacher = prepared.teacher
    origin = f"trained now in {teacher.train_time_s:.1f}s" if teacher.trained_now else "loaded"
    print(f"  task     : {args.task}; teacher test_acc {teacher.test_acc:.4f} ({origin}, {teacher.path})")

    config = TrainConfig(temperature=4.0, alpha=0.7, ratio=0.5, batch_size=128, data_fraction=1.0,
                         epochs=args.epochs, patience=0, device=args.device)
    ce_config = config.model_copy(update={"alpha": 0.0})
    splits = prepared.task.splits()
    if not all(isinstance(d, TensorDataset) for d in (splits.train, splits.val)):
        parser.error(f"task {args.task!r} hands over non-tensor datasets; the minimal loop needs TensorDatasets")
    n_train = len(splits.train)
    student_params = sum(p.numel() for p in prepared.task.build_student(config.ratio).parameters())
    print(f"  setup    : {n_train} training samples, batch {config.batch_size} "
          f"({math.ceil(n_train / config.batch_size)} steps/epoch), student ratio {config.ratio:g} "
          f"({student_params} params), T={config.temperature:g}, alpha={config.alpha:g}, "
          f"{args.epochs} epochs (first dropped) x {args.repeats} repeats")

    with tempfile.TemporaryDirectory(prefix="kdsweep-bench-mlflow-") as tmp:
        mlflow_store = Store.resolve(tmp)
        client = mlflow_store.client()
        experiment_id = mlflow_store.experiment(client, "bench")
        cached = prepared.outputs.logits
        variants: dict[str, Callable[[int], Timings]] = {
            "minimal": lambda r: run_minimal(prepared, config, device),
            "minimal fused AdamW": lambda r: run_minimal(prepared, config, device, Extras(fused_adamw=True)),
            "kdsweep+MLflow": lambda r: run_logged(prepared, config, client, experiment_id, r),
            "kdsweep cached": lambda r: run_kdcore(prepared, config, cached),
            "kdsweep live": lambda r: run_kdcore(prepared, config, prepared.teacher.model),
            "kdsweep CE": lambda r: run_kdcore(prepared, ce_config, None),
        }
        if args.breakdown:
            no_clip = config.model_copy(update={"grad_clip": 0.0})
            variants["kdsweep no clip"] = lambda r: run_kdcore(prepared, no_clip, cached)
            variants["kdsweep+MLflow async"] = lambda r: run_logged(
                prepared, config, client, experiment_id, r, mode="async")
            variants["kdsweep+MLflow batched"] = lambda r: run_logged(
                prepared, config, client, experiment_id, r, mode="batched")
            for name, extras in [
                ("min +kd_loss()", Extras(kd_loss_fn=True)),
                ("min +stack", Extras(stack=True)),
                ("min +stack +item/8", Extras(stack=True, item_check=True)),
                ("min +lr write", Extras(lr_schedule=True)),
                ("min +clip_grad_norm_", Extras(clip=True)),
                ("min +deadline", Extras(deadline=True)),
                ("min +keep_best", Extras(keep_best=True)),
                ("min +all", Extras.all()),
                ("min +lean clip", Extras(lean_clip=True)),
                ("min +all, lean clip", Extras.all(clip=False, lean_clip=True)),
            ]:
                variants[name] = lambda r, e=extras: run_minimal(prepared, config, device, e)

        names = list(variants)
        results = Results(names)
        for name in names:  # untimed: imports, allocator, MLflow's SQLite tables warm up
            variants[name](-1)
        for r in range(args.repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                gc.collect()
                results.runs[name].append(variants[name](r))
            print(f"  repeat {r + 1}/{args.repeats} done, {time.perf_counter() - started:.0f}s, "
                  f"load average {load_average()}", file=sys.stderr)

    all_met = report(results, names, args.breakdown, args.repeats, args.epochs)
    print(f"\nload average at the start {start_load}, at the end {load_average()} (1/5/15 min), "
          f"on {usable_cores()} usable cores; total {time.perf_counter() - started:.0f}s")
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
