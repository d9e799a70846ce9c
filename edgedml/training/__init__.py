"""Training loop, checkpoints, run directories and evaluation of trained runs with PyTorch."""

from edgedml.training.device import resolve_device
from edgedml.training.evaluate import embed_samples, evaluate_run, evaluate_split, load_run_model
from edgedml.training.run import RunDir, config_hash
from edgedml.training.trainer import Trainer, TrainProgress, resolve_config

__all__ = [
    "RunDir",
    "TrainProgress",
    "Trainer",
    "config_hash",
    "embed_samples",
    "evaluate_run",
    "evaluate_split",
    "load_run_model",
    "resolve_config",
    "resolve_device",
]
