"""`kdsweep export`: a trial's student as a file that loads with PyTorch alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli._common import console, set_threads, user_errors
from cli.query import StorageOpt, StudyArg
from cli.train import StoreOpt, TrackingOpt


@user_errors
def export(
    study: StudyArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write, e.g. student.pt2.", show_default=False)],
    format: Annotated[str, typer.Option("--format", help="pt2 (torch.export; INT8 too) or torchscript.")] = "pt2",
    trial: Annotated[Optional[int], typer.Option(help="Trial number (default: the best by validation accuracy within the study's limits).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Export the INT8 copy (torchao int8 weight-only of its Linear layers); pt2 only.")] = False,
    run: Annotated[Optional[str], typer.Option("--run", help="Export the student of this run of the study instead: a kdsweep compress step (as it runs) or a federate run.")] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log the file to the trial's MLflow run.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists (it is replaced only once the new file reloads).")] = False,
    store: StoreOpt = None,
    tracking_uri: TrackingOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Write a trial's student (fp32 or INT8) as TorchScript or torch.export, reload it with PyTorch alone and re-score it on the test split."""
    from sweeps.export import export_student

    set_threads(None)  # the re-score runs the student: one thread, as every command that runs a model
    done = export_student(study, out, trial=trial, format=format, int8=int8, run=run, log_to_mlflow=not no_mlflow,
                          storage=storage, tracking_uri=tracking_uri, store=store, force=force)
    recorded = (f"; {'its run' if run else 'the trial'} recorded {done.checkpoint_test_acc:.4f}"
                if done.checkpoint_test_acc is not None else "")
    load = "torch.jit.load(path)" if done.format == "torchscript" else "torch.export.load(path).module()"
    what = f"run {run} (from trial {done.trial})" if run else f"trial {done.trial}"
    for line in (f"exported {what} of '{study}' ({'INT8' if done.int8 else 'as it runs' if run else 'fp32'}, {done.format}): "
                 f"{done.path} ({done.size_bytes:,} bytes)",
                 f"reloaded with PyTorch alone: test_acc {done.test_acc:.4f}"
                 + (f" (test {done.score})" if done.score != "accuracy" else "") + recorded,
                 f"load it: import torch; model = {load}"
                 + (f"; logged to run {done.run_id} under export/" if done.run_id and not no_mlflow else "")):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
