"""`kdsweep compress`: seed 002's pruning and quantization-aware KD on a trial's distilled student."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cli._common import console, set_threads, user_errors
from cli.query import StorageOpt, StudyArg
from cli.train import StoreOpt, ThreadsOpt, TrackingOpt


@user_errors
def compress(
    study: StudyArg,
    trial: Annotated[Optional[int], typer.Option(help="Trial number (default: the best by validation accuracy within the study's limits).")] = None,
    prune: Annotated[float, typer.Option(help="Share of every hidden layer's channels or units to remove (L2 norm criterion), 0 <= prune < 1; 0 skips pruning.")] = 0.5,
    bits: Annotated[int, typer.Option(help="Bit width of the quantization-aware training: 8 (Linear layers then run in int8) or 4 (simulated).")] = 8,
    fast: Annotated[bool, typer.Option("--fast", help="Seed 002's fast mode: 30% of the data, half the epochs, twice the batch, AMP on a GPU, patience 2.")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of each step (default: half of the trial's to fine-tune after pruning, a quarter for QAT; half of those with --fast).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of both steps (default: a tenth of the trial's: they fine-tune a trained student).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of both steps' batch order (default: the trial's); repeat with others to see the spread.")] = None,
    store: StoreOpt = None,
    tracking_uri: TrackingOpt = None,
    storage: StorageOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Prune a trial's distilled student, fine-tune it with the KD loss, train it quantization-aware at 8 or 4 bits and convert it; each step is an MLflow child run with accuracy, size, latency, time and peak memory."""
    from sweeps.pipelines.compress import compress_trial, table_lines

    set_threads(threads)

    def progress(step) -> None:
        console.print(f"{step.name}: val {step.val_acc:.4f}, test {step.test_acc:.4f}, {step.params:,} params, "
                      f"{step.size_bytes:,} bytes, {step.step_time_s:.1f}s; MLflow run {step.run_id}",
                      highlight=False, soft_wrap=True, markup=False)

    try:
        done = compress_trial(study, trial=trial, prune=prune, bits=bits, fast=fast, epochs=epochs, lr=lr, seed=seed,
                              storage=storage, tracking_uri=tracking_uri, store=store, on_step=progress)
    except KeyboardInterrupt:
        typer.echo("interrupted: the step's run is closed KILLED; the steps before it are kept", err=True)
        raise typer.Exit(130) from None
    console.print(f"trial {done.trial} of '{study}' compressed ({done.mode} mode; teacher test {done.score} "
                  f"{done.teacher_test_acc:.4f}):", highlight=False, soft_wrap=True, markup=False)
    for line in table_lines(done):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    console.print(f"export it: kdsweep export {study} --run {done.run_id} --out student.pt2",
                  highlight=False, soft_wrap=True, markup=False)
