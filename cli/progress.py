"""Rich progress for training: one bar over all steps, one line per epoch."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgedml.cli.common import err_console
from edgedml.training import TrainCallbacks


class RichTrainProgress(TrainCallbacks):
    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]:.0f} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self.task: Any = None
        self.steps_per_epoch = 1
        self.epochs = 1

    def on_start(self, epochs: int, steps_per_epoch: int, start_epoch: int, start_step: int) -> None:
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.progress.start()
        self.task = self.progress.add_task(
            "train",
            total=epochs * steps_per_epoch,
            completed=start_epoch * steps_per_epoch + start_step,
            epoch=f"{start_epoch + 1}/{epochs}",
            loss=0.0,
            rate=0.0,
        )

    def on_step(self, epoch: int, step: int, loss: float, images_per_s: float) -> None:
        self.progress.update(
            self.task,
            completed=epoch * self.steps_per_epoch + step,
            epoch=f"{epoch + 1}/{self.epochs}",
            loss=loss,
            rate=images_per_s,
        )

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        val = f"  val R@1 {record['val_recall_at_1']:.4f}  MAP@R {record['val_map_at_r']:.4f}" if "val_recall_at_1" in record else ""
        self.progress.console.print(f"epoch {record['epoch']}: loss {record['loss']:.4f}{val}", highlight=False)

    def on_test(self) -> None:
        self.close()
        err_console.print("evaluating the best weights on the unseen test classes ...")

    def close(self) -> None:
        self.progress.stop()
