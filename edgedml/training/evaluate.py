"""Embedding a split with a trained PyTorch model, and evaluating retrieval on it."""

from __future__ import annotations

from pathlib import Path

import torch

from edgedml.config import TrainConfig
from edgedml.data import Sample, class_indices, embed_images, eval_transform, prepare_data
from edgedml.errors import CheckpointError, ConfigError, DataError
from edgedml.metrics import RetrievalMetrics, recall_and_map, retrieval_metrics
from edgedml.models import EmbeddingModel, build_model, upgrade_model_state
from edgedml.training.checkpoint import MODEL, load_checkpoint, strip_prefix
from edgedml.training.device import resolve_device
from edgedml.training.run import RunDir

SPLIT_NAMES = ("test", "val", "train")
EVAL_BATCH = 256


@torch.no_grad()
def embed_samples(
    model: EmbeddingModel,
    samples: list[Sample],
    input_size: int,
    device: torch.device,
    batch_size: int = EVAL_BATCH,
    workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (N, dim) normalized embeddings and (N,) integer labels of the readable images.

    Labels follow the classes in sorted order.
    """
    was_training = model.training
    model.eval()
    try:
        embeddings, kept = embed_images(
            lambda images: model(images.to(device)).float().cpu().numpy(),
            samples,
            eval_transform(input_size),
            model.dim,
            batch_size,
            workers,
        )
    finally:
        model.train(was_training)
    return torch.from_numpy(embeddings), class_indices(samples, kept)


def evaluate_split(
    model: EmbeddingModel,
    samples: list[Sample],
    input_size: int,
    device: torch.device,
    full: bool = True,
    seed: int = 0,
    batch_size: int = EVAL_BATCH,
) -> RetrievalMetrics | dict[str, float]:
    """Full metrics (with NMI and silhouette) or, for per-epoch validation, Recall@1 and MAP@R only."""
    embeddings, labels = embed_samples(model, samples, input_size, device, batch_size)
    if full:
        return retrieval_metrics(embeddings, labels, seed=seed)
    recall, map_at_r, _ = recall_and_map(embeddings, labels, ks=(1,))
    return {"recall_at_1": recall[1], "map_at_r": map_at_r, "concentration": concentration(embeddings)}


def concentration(embeddings: torch.Tensor) -> float:
    """Length of the mean of the L2-normalized embeddings: 0 for directions spread evenly, 1 when all point one way
    (a collapsed model; healthy glyphs runs sit near 0.5)."""
    if len(embeddings) == 0:
        return float("nan")
    return float(torch.nn.functional.normalize(embeddings.float(), dim=1).mean(dim=0).norm())


def load_run_model(
    run_dir: str | Path, checkpoint: str = "best", device: str = "auto"
) -> tuple[EmbeddingModel, TrainConfig]:
    """Rebuild a run's model from its config.yaml and load ``best`` or ``last`` weights (safetensors); a run written
    before the built-in backbones took torchvision's layer names loads too."""
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint {checkpoint!r} is not one of best, last")
    run = RunDir(Path(run_dir))
    config = run.load_config()
    tensors, _ = load_checkpoint(run.best if checkpoint == "best" else run.last)
    model = build_model(config.backbone, config.dim)
    try:
        model.load_state_dict(upgrade_model_state(config.backbone, strip_prefix(MODEL, tensors)))
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
    return evaluate_split(model, samples, config.input_size, device_used, seed=config.seed)
