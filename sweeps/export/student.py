"""``kdsweep export``: a trial's student (or its INT8 copy) as a file that needs PyTorch only.

The file is reloaded the way a user without kdsweep would load it (``torch.jit.load`` or
``torch.export.load``), re-scored on the test split, and logged to the trial's MLflow run under
``export/``, so the number printed is the file's own, not the checkpoint's.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdcore import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMATS = ("torchscript", "pt2")
_EXAMPLE_BATCH = 4  # traced/exported with a batch of 4; pt2 keeps the batch size dynamic


@dataclass(frozen=True)
class Exported:
    path: Path
    format: str
    trial: int
    int8: bool  # --int8: post-training INT8 of the trial's student
    test_acc: float  # the reloaded file's score on the test split (accuracy, or Recall@1)
    checkpoint_test_acc: float | None  # what the trial recorded for the same model (fp32 or INT8)
    size_bytes: int
    run_id: str | None
    score: str = "accuracy"  # what test_acc measures: accuracy, or Recall@1 for an embedding task


def export_student(study: str, out: str | Path, *, trial: int | None = None, format: str = "pt2",
                   int8: bool = False, run: str | None = None, log_to_mlflow: bool = True, storage: str | None = None,
                   tracking_uri: str | None = None, store: str | Path | None = None, force: bool = False) -> Exported:
    """Write trial ``trial``'s student (default: the study's best by validation accuracy, within its
    limits) to ``out``, reload it with PyTorch alone, score it on the test split, log it to the run.
    ``run`` instead names a run of the study whose student to write: a ``kdsweep compress`` step
    (pruned, quantized as it ran) or a ``kdsweep federate`` run.

    ``out`` is checked before any work: outside the store, in a folder that can be written, and
    not an existing file unless ``force``. It is written aside and renamed into place once it
    reloads, so a kill or an error never leaves a half-written file there, nor loses the old one."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r} (choose from {', '.join(FORMATS)})")
    if int8 and format == "torchscript":
        raise ConfigError("an INT8 student (torchao tensors) cannot be scripted: use --format pt2")
    if run is not None and (trial is not None or int8):
        raise ConfigError("--run names the student to export: leave out --trial and --int8 (a compress step's "
                          "student is exported as it runs)")
    from kdcore import get_task
    from sweeps.query.trials import Sources, best, load_run_student, load_student, trial_row, trials
    from sweeps.tracking.store import check_output

    sources = Sources.resolve(storage, tracking_uri, store)
    out = check_output(Path(out), sources.store, storage_url=sources.storage_url, force=force)
    if format == "pt2" and out.suffix != ".pt2":  # torch.export.load warns, and other tools refuse it
        raise ConfigError(f"--out {out}: a pt2 file's name ends in .pt2, e.g. {out.with_suffix('.pt2')}")
    if log_to_mlflow:
        sources.store.check_writable()
    task = get_task(_task_of(study, storage, tracking_uri, store))
    if run is not None:
        number, recorded, run_id = _logged_run(study, run, tracking_uri, store)
        model = load_run_student(run, tracking_uri=tracking_uri, store=store)
    else:
        frame = trials(study, storage=storage, tracking_uri=tracking_uri, store=store)
        row = best(frame) if trial is None else trial_row(frame, study, trial)
        number = int(row["number"])
        model = load_student(study, number, storage=storage, tracking_uri=tracking_uri, store=store)
        recorded = row["int8_test_acc"] if int8 else row["test_acc"]
        run_id = row["mlflow_run_id"] if isinstance(row["mlflow_run_id"], str) else None
    sources.store.read_task_data()  # read only: export writes no store file
    test = task.splits().test
    if int8:
        from kdcore.cost import quantize_int8

        quantized = quantize_int8(model)
        if not quantized.layers:
            raise ConfigError(f"trial {number}'s student has nothing to quantize ({quantized.method}): "
                              "export it without --int8")
        model = quantized.model
    example = _example(test)
    # Aside, under a name with the right suffix (torch.export.load wants .pt2), in the same folder.
    staged = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:8]}.tmp{out.suffix or '.' + _suffix(format)}")
    try:
        try:
            _write(model, example, staged, format)
        except Exception as error:  # a forward that cannot be traced or exported: say which, and the other way
            other = "torchscript" if format == "pt2" else "pt2"
            raise ConfigError(f"cannot export trial {number} as {format}: {type(error).__name__}: "
                              f"{' '.join(str(error).split())[:300]}; try --format {other}") from None
        test_acc = _score(_load(staged, format), test, task.kind)
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    if log_to_mlflow and run_id:
        from sweeps.tracking.owners import close_dead_runs

        client = sources.store.client()
        close_dead_runs(client, [client.get_run(run_id).info.experiment_id])  # as every command that writes runs
        client.log_artifact(run_id, str(out), "export")
    return Exported(out, format, number, int8, test_acc, None if recorded != recorded else float(recorded),
                    out.stat().st_size, run_id, "Recall@1" if task.kind == "embedding" else "accuracy")


def _logged_run(study: str, run_id: str, tracking_uri, store) -> tuple[int, float, str]:
    """The trial a run of ``study`` started from and the test accuracy it recorded."""
    from mlflow.exceptions import MlflowException

    from sweeps.tracking.store import Store

    try:
        run = Store.resolve(store, tracking_uri).client().get_run(run_id)
    except MlflowException:
        raise ConfigError(f"--run {run_id}: no such run in the tracking store") from None
    if run.data.tags.get("optuna.study") != study:
        raise ConfigError(f"--run {run_id} is not a run of study {study!r} (its study: "
                          f"{run.data.tags.get('optuna.study')!r})")
    trial = run.data.tags.get("kdsweep.trial", run.data.params.get("trial"))
    if trial is None:
        raise ConfigError(f"--run {run_id} has no student of its own: give a compress step's or a federate "
                          "run's id (kdsweep compress prints it), or --trial N")
    return int(trial), run.data.metrics.get("test_acc", float("nan")), run_id


def _task_of(study: str, storage, tracking_uri, store) -> str:
    from sweeps.query.trials import Sources

    return Sources.resolve(storage, tracking_uri, store).study(study).user_attrs["kdsweep.task"]


def _example(test) -> torch.Tensor:
    import torch

    return torch.stack([test[i][0] for i in range(min(_EXAMPLE_BATCH, len(test)))])


def _write(model: nn.Module, example: torch.Tensor, out: Path, format: str) -> None:
    import torch

    model = model.eval()
    with torch.no_grad():
        if format == "torchscript":
            # Tracing, not scripting: any forward a task writes can be traced, few can be scripted.
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(out))
            return
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(out))


def _load(path: Path, format: str):
    import torch

    if format == "torchscript":
        return torch.jit.load(str(path), map_location="cpu")
    return torch.export.load(str(path)).module()


def _score(model, dataset, kind: str) -> float:
    """The task's score of the reloaded file on ``dataset``: accuracy, or an embedding task's
    Recall@1 (the same numbers the trial recorded as test_acc)."""
    import torch
    from torch.utils.data import DataLoader

    from kdcore import recall_at_k

    with contextlib.suppress(NotImplementedError):  # a torch.export module has no train/eval switch
        model.eval()
    outputs, labels = [], []
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=256):
            outputs.append(model(x))
            labels.append(y)
    outputs, labels = torch.cat(outputs), torch.cat(labels)
    if kind == "embedding":
        return recall_at_k(outputs.float(), labels, ks=(1,))[1]
    return int((outputs.argmax(dim=-1) == labels).sum()) / len(labels)  # exact, as the trainer counts


def _suffix(format: str) -> str:
    return "pt" if format == "torchscript" else "pt2"
