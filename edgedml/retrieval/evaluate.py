"""Evaluating any model edgedml can run (a run directory, an ONNX file, a TensorRT engine) on its run's split.

An export's metadata records its run's data source and split settings, so it is scored on the same
unseen classes as its run, through the runtime that will serve it; a run directory is scored with
PyTorch (:func:`edgedml.training.evaluate_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from edgedml.data import PreparedData, class_indices, named_sources, prepare_data
from edgedml.errors import ConfigError, DataError
from edgedml.export.load import load_embedder, runtime_for
from edgedml.export.runtime import Embedder, embed_samples
from edgedml.metrics import RetrievalMetrics, retrieval_metrics
from edgedml.progress import SILENT, Progress
from edgedml.training import RunDir, evaluate_run
from edgedml.training.evaluate import SPLIT_NAMES

SPLIT_KEYS = ("data", "train_classes", "val_fraction", "seed")


@dataclass(frozen=True)
class SplitSettings:
    """How a run split its data: which source, which fraction of classes trained, the validation carve-out."""

    data: str
    train_classes: float
    val_fraction: float
    seed: int

    def prepare(self, data: str | None = None) -> PreparedData:
        """The run's splits of ``data`` (default: the run's own source), exactly as training made them."""
        return prepare_data(data or self.data, self.train_classes, self.val_fraction, self.seed)


def split_settings(embedder: Embedder) -> SplitSettings:
    """The split settings of the run behind an embedder: its config.yaml, or an export's metadata."""
    if embedder.runtime == "torch":
        config = RunDir(Path(embedder.path)).load_config()
        return SplitSettings(config.data, config.train_classes, config.val_fraction, config.seed)
    metadata = embedder.info.extra
    missing = [key for key in SPLIT_KEYS if key not in metadata]
    if missing:
        raise ConfigError(
            f"{embedder.path}: its metadata does not record the run's data split ({', '.join(missing)} missing)",
            hint="re-export the run with this edgedml version, or evaluate the run directory",
        )
    try:
        return SplitSettings(
            metadata["data"], float(metadata["train_classes"]), float(metadata["val_fraction"]), int(metadata["seed"])
        )
    except ValueError:
        raise ConfigError(f"{embedder.path}: malformed split metadata {[metadata[k] for k in SPLIT_KEYS]}") from None


def _check_recorded_source(spec: str, model: Path) -> None:
    """The data an export's metadata names is read only if it is a bundled source or exists here."""
    if spec in named_sources or Path(spec).expanduser().exists():
        return
    raise ConfigError(
        f"{model}: its metadata names the data {spec}, which does not exist on this machine",
        hint=f"pass your copy of that data: edgedml eval {model} --data PATH",
    )


def evaluate_model(
    model: str | Path,
    data: str | None = None,
    split: str = "test",
    checkpoint: str = "best",
    runtime: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    progress: Progress = SILENT,
) -> RetrievalMetrics:
    """Metrics of a run directory (PyTorch) or an exported model (.onnx, TensorRT engine) on a split of its run."""
    path = Path(model)
    if split not in SPLIT_NAMES:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
    if path.is_dir() and runtime in (None, "torch"):
        return evaluate_run(path, data=data, split=split, checkpoint=checkpoint, device=device)
    if checkpoint != "best" and path.exists() and runtime_for(path) != "torch":
        raise ConfigError(f"--checkpoint {checkpoint} applies to run directories, not to {path.name}")
    embedder = load_embedder(path, runtime, device)  # "auto": every provider onnxruntime has
    settings = split_settings(embedder)
    if data is None:
        _check_recorded_source(settings.data, path)
        progress.note(f"scoring on the {split} split of {settings.data}, the data {path.name}'s metadata records")
    else:
        progress.note(f"scoring on the {split} split of {data}, split as {path.name}'s run split its data")
    samples = getattr(settings.prepare(data).splits, split)
    if len({s.label for s in samples}) < 2:
        raise DataError(f"the {split} split of {data or settings.data} has fewer than 2 classes; nothing to retrieve")
    progress.stage(f"embedding the {split} split", total=len(samples))
    embeddings, kept = embed_samples(embedder, samples, batch_size, progress)
    return retrieval_metrics(torch.from_numpy(embeddings), class_indices(samples, kept), seed=settings.seed)
