"""Evaluating any model edgedml can run (a run directory, an ONNX file, a TensorRT engine) on its run's split.

An export's metadata records its run's data source and split settings, so it is scored on the same
unseen classes as its run, through the runtime that will serve it; a run directory is scored with
PyTorch (:func:`edgedml.training.evaluate_run`). With re-ranking (``edgedml.retrieval.rerank``) either is embedded
(``embed_split``) and each item's leave-one-out ranking is re-ranked before the ranked metrics are taken. With the
Milvus backend the split is put into a temporary collection (Milvus Lite, or the given URI) and each item's
leave-one-out list is searched there: the metrics equal FAISS flat's, through the database that will serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgedml.data import PreparedData, Sample, class_indices, named_sources, prepare_data
from edgedml.errors import ConfigError, DataError
from edgedml.export.load import load_embedder, runtime_for
from edgedml.export.runtime import Embedder, TorchEmbedder, embed_samples
from edgedml.metrics import RECALL_KS, RetrievalMetrics, neighbour_depth, retrieval_metrics
from edgedml.progress import SILENT, Progress
from edgedml.retrieval.milvus_store import scratch_index
from edgedml.retrieval.rerank import Rerank, leave_one_out_neighbours
from edgedml.retrieval.store import BACKENDS
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


@dataclass
class EmbeddedSplit:
    """A split embedded by a model: row i of ``embeddings`` is ``samples[i]`` (unreadable images left out)."""

    embeddings: np.ndarray  # (N, dim) float32, L2-normalized
    samples: list[Sample]
    settings: SplitSettings

    @property
    def labels(self) -> torch.Tensor:
        """Integer class labels (classes numbered in sorted order of their names)."""
        return class_indices(self.samples)


def _open_model(path: Path, checkpoint: str, runtime: str | None, device: str) -> Embedder:
    if path.is_dir() and runtime in (None, "torch"):
        return TorchEmbedder(path, checkpoint, device)
    if checkpoint != "best" and path.exists() and runtime_for(path) != "torch":
        raise ConfigError(f"--checkpoint {checkpoint} applies to run directories, not to {path.name}")
    return load_embedder(path, runtime, device)  # "auto": every provider onnxruntime has


def embed_split(
    model: str | Path,
    data: str | None = None,
    split: str = "test",
    checkpoint: str = "best",
    runtime: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    progress: Progress = SILENT,
) -> EmbeddedSplit:
    """Embed a split of a model's run (a run directory through PyTorch, an export through its runtime)."""
    path = Path(model)
    if split not in SPLIT_NAMES:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
    embedder = _open_model(path, checkpoint, runtime, device)
    settings = split_settings(embedder)
    if data is None:
        _check_recorded_source(settings.data, path)
        progress.note(f"scoring on the {split} split of {settings.data}, the data {path.name}'s run trained on")
    else:
        progress.note(f"scoring on the {split} split of {data}, split as {path.name}'s run split its data")
    samples = getattr(settings.prepare(data).splits, split)
    if len({s.label for s in samples}) < 2:
        raise DataError(f"the {split} split of {data or settings.data} has fewer than 2 classes; nothing to retrieve")
    progress.stage(f"embedding the {split} split", total=len(samples))
    embeddings, kept = embed_samples(embedder, samples, batch_size, progress)
    return EmbeddedSplit(embeddings, [samples[i] for i in kept], settings)


def evaluate_model(
    model: str | Path,
    data: str | None = None,
    split: str = "test",
    checkpoint: str = "best",
    runtime: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    progress: Progress = SILENT,
    rerank: str | Rerank = "none",
    backend: str = "faiss",
    uri: str | None = None,
) -> RetrievalMetrics:
    """Metrics of a run directory (PyTorch) or an exported model (.onnx, TensorRT engine) on a split of its run.

    ``rerank``: Recall@K, MAP@R and R-precision of the re-ranked leave-one-out lists (``reranked_metrics``).
    ``backend`` milvus: the leave-one-out lists searched in a temporary Milvus collection (at ``uri``, default a
    temporary Milvus Lite database).
    """
    path = Path(model)
    settings = Rerank.parse(rerank)
    check_backend(backend, uri)
    if path.is_dir() and runtime in (None, "torch") and settings.method == "none" and backend == "faiss":
        return evaluate_run(path, data=data, split=split, checkpoint=checkpoint, device=device)
    evaluation = evaluate_embedded(
        path, data, split, checkpoint, runtime, device, batch_size, progress, settings, backend, uri
    )
    return evaluation.metrics


def check_backend(backend: str, uri: str | None) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if uri is not None and backend != "milvus":
        raise ConfigError("--uri applies to --backend milvus")


@dataclass
class Evaluation:
    """The metrics of a split and what they were computed from: the embedded split and, when re-ranked, the
    re-ranked leave-one-out lists ((N, depth) indices into ``embedded``; None: the plain cosine order)."""

    metrics: RetrievalMetrics
    embedded: EmbeddedSplit
    neighbours: np.ndarray | None


def evaluate_embedded(
    model: str | Path,
    data: str | None = None,
    split: str = "test",
    checkpoint: str = "best",
    runtime: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    progress: Progress = SILENT,
    rerank: str | Rerank = "none",
    backend: str = "faiss",
    uri: str | None = None,
) -> Evaluation:
    """``evaluate_model`` keeping the embeddings (and ranked lists) it scored, for pictures of the evaluation."""
    settings = Rerank.parse(rerank)
    check_backend(backend, uri)
    embedded = embed_split(model, data, split, checkpoint, runtime, device, batch_size, progress)
    if backend == "milvus":
        with scratch_index(embedded.embeddings, uri) as index:
            neighbours = reranked_neighbours(embedded, settings, index)
        return Evaluation(reranked_metrics(embedded, settings, neighbours), embedded, neighbours)
    if settings.method == "none":
        metrics = retrieval_metrics(torch.from_numpy(embedded.embeddings), embedded.labels, seed=embedded.settings.seed)
        return Evaluation(metrics, embedded, None)
    neighbours = reranked_neighbours(embedded, settings)
    return Evaluation(reranked_metrics(embedded, settings, neighbours), embedded, neighbours)


def reranked_neighbours(embedded: EmbeddedSplit, settings: Rerank, index: Any = None) -> np.ndarray:
    """Each item's leave-one-out list, deep enough for the metrics, the first ``candidates`` re-ranked
    (``index``: one holding the split's embeddings, row i item i; default an exact FAISS index)."""
    depth = neighbour_depth(embedded.labels, RECALL_KS)
    return leave_one_out_neighbours(embedded.embeddings, depth, settings, index)


def reranked_metrics(
    embedded: EmbeddedSplit, settings: Rerank, neighbours: np.ndarray | None = None
) -> RetrievalMetrics:
    """Metrics of a split with each item's leave-one-out list re-ranked (an exact index of the split; the first
    ``candidates`` re-ranked, where MAP@R needs more the rest in the plain order); NMI and silhouette as without.
    ``neighbours``: those lists, when already computed (``reranked_neighbours``)."""
    if neighbours is None:
        neighbours = reranked_neighbours(embedded, settings)
    return retrieval_metrics(
        torch.from_numpy(embedded.embeddings),
        embedded.labels,
        seed=embedded.settings.seed,
        neighbours=torch.from_numpy(neighbours),
    )
