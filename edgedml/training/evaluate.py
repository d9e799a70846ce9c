"""Embedding a split with a trained model, and evaluating retrieval on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from edgedml.config import TrainConfig
from edgedml.data import ImageDataset, Sample, collate_skip_bad, eval_transform, prepare_data
from edgedml.errors import CheckpointError, ConfigError, DataError
from edgedml.models import EmbeddingModel, build_model
from edgedml.retrieval import RetrievalMetrics, recall_and_map, retrieval_metrics
from edgedml.training.checkpoint import MODEL, load_checkpoint, strip_prefix
from edgedml.training.device import resolve_device
from edgedml.training.run import RunDir

SPLIT_NAMES = ("test", "val", "train")
SPLIT_KEYS = ("data", "train_classes", "val_fraction", "seed")


@dataclass(frozen=True)
class SplitSettings:
    """How a run split its data: which source, which fraction of classes trained, the validation carve-out."""

    data: str
    train_classes: float
    val_fraction: float
    seed: int

    def prepare(self, data: str | None = None):
        """The run's splits of ``data`` (default: the run's own source), exactly as training made them."""
        return prepare_data(data or self.data, self.train_classes, self.val_fraction, self.seed)


@torch.no_grad()
def embed_samples(
    model: nn.Module, samples: list[Sample], input_size: int, device: torch.device, batch_size: int = 256, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (N, dim) normalized embeddings and (N,) integer labels (classes in sorted order)."""
    class_to_index = {name: i for i, name in enumerate(sorted({s.label for s in samples}))}
    dataset = ImageDataset(samples, class_to_index, eval_transform(input_size))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skip_bad, num_workers=workers)
    was_training = model.training
    model.eval()
    embeddings, labels = [], []
    try:
        for batch in loader:
            if batch is None:
                continue
            images, batch_labels, _ = batch
            embeddings.append(model(images.to(device)).float().cpu())
            labels.append(batch_labels)
    finally:
        model.train(was_training)
    return torch.cat(embeddings), torch.cat(labels)


def evaluate_split(
    model: nn.Module, samples: list[Sample], input_size: int, device: torch.device, full: bool = True, seed: int = 0
) -> RetrievalMetrics | dict[str, float]:
    """Full metrics (with NMI and silhouette) or, for per-epoch validation, Recall@1 and MAP@R only."""
    embeddings, labels = embed_samples(model, samples, input_size, device)
    if full:
        return retrieval_metrics(embeddings, labels, seed=seed)
    recall, map_at_r, _ = recall_and_map(embeddings, labels, ks=(1,))
    return {"recall_at_1": recall[1], "map_at_r": map_at_r}


def load_run_model(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> tuple[EmbeddingModel, TrainConfig]:
    """Rebuild a run's model from its config.yaml and load ``best`` or ``last`` weights (safetensors)."""
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint {checkpoint!r} is not one of best, last")
    run = RunDir(Path(run_dir))
    config = run.load_config()
    tensors, _ = load_checkpoint(run.best if checkpoint == "best" else run.last)
    model = build_model(config.backbone, config.dim)
    try:
        model.load_state_dict(strip_prefix(MODEL, tensors))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{run.root}: weights do not match config.yaml ({first})") from None
    return model.to(resolve_device(device)).eval(), config


def evaluate_run(
    run_dir: str | Path, data: str | None = None, split: str = "test", checkpoint: str = "best", device: str = "auto"
) -> RetrievalMetrics:
    """Metrics of a run's model on a split of its data source (or of ``data``, split the same way)."""
    if split not in SPLIT_NAMES:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
    model, config = load_run_model(run_dir, checkpoint, device)
    prepared = prepare_data(data or config.data, config.train_classes, config.val_fraction, config.seed)
    samples = getattr(prepared.splits, split)
    if len({s.label for s in samples}) < 2:
        raise DataError(f"the {split} split of {data or config.data} has fewer than 2 classes; nothing to retrieve")
    device_used = next(model.parameters()).device
    return evaluate_split(model, samples, config.input_size or prepared.default_input_size, device_used, seed=config.seed)


def split_settings(embedder) -> SplitSettings:
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


def evaluate_model(
    model: str | Path,
    data: str | None = None,
    split: str = "test",
    checkpoint: str = "best",
    runtime: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> RetrievalMetrics:
    """Metrics of a run directory (PyTorch) or an exported model (.onnx, TensorRT engine) on a split.

    An export's metadata records its run's data source and split settings, so it is scored on the same
    unseen classes as its run, through the runtime that will serve it.
    """
    from edgedml.export.runtime import embed_samples as embed_with_runtime
    from edgedml.export.runtime import load_embedder, runtime_for

    path = Path(model)
    if split not in SPLIT_NAMES:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
    if path.is_dir() and runtime in (None, "torch"):
        return evaluate_run(path, data=data, split=split, checkpoint=checkpoint, device=device)
    if checkpoint != "best" and path.exists() and runtime_for(path) != "torch":
        raise ConfigError(f"--checkpoint {checkpoint} applies to run directories, not to {path.name}")
    embedder = load_embedder(path, runtime, device)  # "auto": every provider onnxruntime has
    settings = split_settings(embedder)
    prepared = settings.prepare(data)
    samples = getattr(prepared.splits, split)
    if len({s.label for s in samples}) < 2:
        raise DataError(f"the {split} split of {data or settings.data} has fewer than 2 classes; nothing to retrieve")
    embeddings, kept = embed_with_runtime(embedder, samples, batch_size, on_batch)
    class_to_index = {name: i for i, name in enumerate(sorted({s.label for s in samples}))}
    labels = torch.tensor([class_to_index[samples[i].label] for i in kept])
    return retrieval_metrics(torch.from_numpy(embeddings), labels, seed=settings.seed)
