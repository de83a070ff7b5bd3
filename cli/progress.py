"""Epoch progress: a Rich bar with live val_acc on a terminal, plain lines anywhere else."""

from __future__ import annotations

from types import TracebackType

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from cli._common import console


class EpochProgress:
    """Context manager whose ``update`` is an ``on_epoch`` hook."""

    def __init__(self, description: str, total_epochs: int) -> None:
        self.description = description
        self.total = total_epochs
        self.progress: Progress | None = None
        self.first = True

    def __enter__(self) -> EpochProgress:
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("val_acc {task.fields[val_acc]}"), TimeElapsedColumn(), TextColumn("left"),
                TimeRemainingColumn(),
                console=console, transient=False)
            self.progress.start()
            self.task_id = self.progress.add_task(self.description, total=self.total, val_acc="-")
        else:
            console.print(f"{self.description}: up to {self.total} epochs", highlight=False)
        return self

    def update(self, epoch) -> None:
        if self.progress is not None:
            if self.first:  # a resumed run starts at its epoch: the time left must not count the earlier ones
                self.progress.reset(self.task_id, completed=epoch.epoch - 1, val_acc="-")
                self.first = False
            self.progress.update(self.task_id, completed=epoch.epoch, val_acc=f"{epoch.val_acc:.4f}")
        else:
            console.print(
                f"{self.description}: epoch {epoch.epoch}/{self.total} train_loss={epoch.train_loss:.4f} "
                f"val_loss={epoch.val_loss:.4f} val_acc={epoch.val_acc:.4f} "
                f"epoch_time={epoch.epoch_time_s:.2f}s", highlight=False, soft_wrap=True)

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.progress is not None:
            self.progress.stop()
