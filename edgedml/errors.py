"""Typed errors raised by the library; the CLI turns each into one red line plus a hint."""

from __future__ import annotations


class EdgedmlError(Exception):
    """Base class: ``message`` says what is wrong, ``hint`` what would fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(EdgedmlError):
    """An option or configuration key has a value that cannot be used."""

    exit_code = 2


class DataError(EdgedmlError):
    """A data source is missing, empty, or cannot be split as asked."""


class ModelError(EdgedmlError):
    """A backbone or weight file cannot be created or loaded."""


class CheckpointError(EdgedmlError):
    """A run directory or checkpoint is missing, incomplete or incompatible."""


class TrainingError(EdgedmlError):
    """Training cannot go on (a diverged distributed state, a setting that cannot work)."""


class ExportError(EdgedmlError):
    """An export failed or did not match PyTorch; nothing was written."""


class NonFiniteLossError(EdgedmlError):
    """The loss became NaN or infinite; the run stopped before updating the weights."""


class TrainingInterrupted(EdgedmlError):
    """The user pressed Ctrl-C; ``last.safetensors`` holds the state to resume from."""

    exit_code = 130
