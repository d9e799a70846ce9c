"""Rich rendering of the library's progress protocol: one line per stage, a bar where units are counted."""

from __future__ import annotations

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBars

from edgedml.cli.common import err_console
from edgedml.progress import Progress


class RichProgress(Progress):
    """Stages on stderr. ``transient``: each stage's line goes when the next starts (export, index, bench);
    otherwise finished stages stay on screen (training). ``hidden``: render nothing (``--json``)."""

    def __init__(self, transient: bool = True, hidden: bool = False) -> None:
        self.bars = RichBars(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=transient,
            disable=hidden,
        )
        self.transient, self.hidden = transient, hidden
        self.task: TaskID | None = None

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stage(self, description: str, total: int | None = None, done: int = 0) -> None:
        if self.task is not None:
            if self.transient:
                self.bars.remove_task(self.task)
            else:
                self.bars.stop_task(self.task)
        self.task = self.bars.add_task(escape(description), total=total, completed=done, status="")
        self.bars.start()

    def advance(self, count: int = 1, status: str | None = None) -> None:
        if self.task is None:
            return
        fields = {} if status is None else {"status": escape(status)}
        self.bars.update(self.task, advance=count, **fields)

    def note(self, message: str) -> None:
        if not self.hidden:
            self.bars.console.print(escape(message), highlight=False)

    def close(self) -> None:
        self.bars.stop()
