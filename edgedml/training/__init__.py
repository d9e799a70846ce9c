"""Training loop, checkpoints, run directories and evaluation of trained runs."""

from edgedml.training.device import resolve_device
from edgedml.training.evaluate import embed_samples, evaluate_run, evaluate_split, load_run_model
from edgedml.training.run import RunDir, config_hash
from edgedml.training.trainer import Progress, TrainCallbacks, Trainer

__all__ = [
    "Progress",
    "RunDir",
    "TrainCallbacks",
    "Trainer",
    "config_hash",
    "embed_samples",
    "evaluate_run",
    "evaluate_split",
    "load_run_model",
    "resolve_device",
]
