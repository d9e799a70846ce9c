"""One progress protocol for every long operation: training, export, indexing, evaluation, benchmarks.

The library reports; a display (the CLI's rich bars, a test's recorder) renders. An operation runs
as a sequence of *stages*, each optionally counting ``total`` units (steps, images, timed calls):

- ``stage(description, total, done)``: a new stage starts, ``done`` of its ``total`` units already
  finished (a resumed run); ``total`` None when nothing is counted;
- ``advance(count, status)``: ``count`` more units are done; ``status`` is a short line for the
  display (a training step's loss and speed);
- ``note(message)``: a line worth keeping on screen (an epoch's summary).

The defaults do nothing, so ``Progress()`` is the silent display.
"""

from __future__ import annotations


class Progress:
    """The silent display; subclass and override what you render."""

    def stage(self, description: str, total: int | None = None, done: int = 0) -> None:
        """A new stage starts: ``total`` units will be reported through ``advance`` (None: no count)."""

    def advance(self, count: int = 1, status: str | None = None) -> None:
        """``count`` more units of the current stage are done."""

    def note(self, message: str) -> None:
        """A line to keep on screen (the display decides where)."""


SILENT = Progress()
