"""One interface over the three ways to run an exported embedding model: PyTorch, onnxruntime, TensorRT.

An *embedder* takes a float32 batch laid out as the model's metadata says (NCHW, RGB in [0, 1],
normalized by mean/std) and returns float32 L2-normalized embeddings. It hides the model's batch
constraints: a fixed-batch file is fed in chunks of exactly its batch size (the last one padded),
a dynamic one in chunks of at most ``max_batch``. ``embed_samples`` runs one over a list of
:class:`~edgedml.data.Sample` with the preprocessing the model was trained with, skipping and
reporting unreadable images, so ``eval``, ``index``, ``search`` and ``bench`` share one path.

The TensorRT embedder (``edgedml.export.tensorrt``) derives from :class:`BatchedEmbedder` too;
``edgedml.export.load`` opens any model file with the runtime it needs.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edgedml.data import Sample, embed_images, eval_transform
from edgedml.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from edgedml.errors import ConfigError, ExportError, ModelError
from edgedml.metrics import cosine_check
from edgedml.progress import SILENT, Progress
from edgedml.training import config_hash, load_run_model

INPUT_NAME, OUTPUT_NAME = "images", "embeddings"


@dataclass(frozen=True)
class ModelInfo:
    """What a consumer of an exported model needs to know, read from the model itself."""

    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color_order: str = "RGB"
    config_hash: str = ""
    precision: str = "fp32"  # fp32 | fp16 | int8
    batch: int | None = None  # a fixed batch size, or None for a dynamic batch dimension
    backbone: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str) -> ModelInfo:
        """Parse the key/value metadata edgedml writes into ONNX files and engine sidecars."""
        try:
            batch = metadata.get("batch", "dynamic")
            return cls(
                dim=int(metadata["embedding_dim"]),
                input_size=int(metadata["input_size"]),
                mean=tuple(float(v) for v in json.loads(metadata["mean"])),
                std=tuple(float(v) for v in json.loads(metadata["std"])),
                color_order=metadata.get("color_order", "RGB"),
                config_hash=metadata.get("config_hash", ""),
                precision=metadata.get("precision", "fp32"),
                batch=None if batch == "dynamic" else int(batch),
                backbone=metadata.get("backbone", ""),
                extra=dict(metadata),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelError(
                f"{source}: not an edgedml export (metadata {exc.args[0] if exc.args else exc} missing or malformed)",
                hint="export the model with edgedml export",
            ) from None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return data


class Embedder(Protocol):
    """Runs one model; ``embed`` maps (N, 3, H, W) float32 to (N, dim) float32."""

    runtime: str
    path: Path
    info: ModelInfo

    def embed(self, images: np.ndarray) -> np.ndarray: ...


class BatchedEmbedder(ABC):
    """Base class: splits any N into batches the model accepts; each runtime implements ``_run``."""

    runtime = ""
    max_batch = 256  # for dynamic models: bounds memory, not correctness

    def __init__(self, path: Path, info: ModelInfo):
        self.path = path
        self.info = info

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        expected = (3, self.info.input_size, self.info.input_size)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ModelError(
                f"{self.path}: takes (N, {', '.join(map(str, expected))}) images, got {tuple(images.shape)}",
                hint=f"resize the images to {self.info.input_size} x {self.info.input_size}",
            )
        if len(images) == 0:
            return np.zeros((0, self.info.dim), np.float32)
        step = self.info.batch or self.max_batch
        outputs = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            count = len(chunk)
            if self.info.batch is not None and count < step:  # a fixed-batch model: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((step - count, *expected), np.float32)])
            outputs.append(np.asarray(self._run(chunk), dtype=np.float32)[:count])
        return np.concatenate(outputs)

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Embed one batch the model accepts as is (fixed batch size, or at most ``max_batch``)."""


class OnnxRuntimeEmbedder(BatchedEmbedder):
    runtime = "onnxruntime"

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such ONNX file", hint="export one with edgedml export RUN_DIR")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=list(providers or ort.get_available_providers())
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
        metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        super().__init__(path, ModelInfo.from_metadata(metadata, str(path)))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @classmethod
    def on_cpu(cls, path: str | Path) -> OnnxRuntimeEmbedder:
        """The file on onnxruntime's CPU provider: how exports are checked against PyTorch, on any machine."""
        return cls(path, ["CPUExecutionProvider"])

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]


class TorchEmbedder(BatchedEmbedder):
    """A training run's PyTorch model (``best`` or ``last`` weights), behind the same interface."""

    runtime = "torch"

    def __init__(self, run_dir: str | Path, checkpoint: str = "best", device: str = "cpu"):
        self.model, config = load_run_model(run_dir, checkpoint, device)
        self.device = next(self.model.parameters()).device
        info = ModelInfo(
            dim=config.dim,
            input_size=config.input_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            config_hash=config_hash(config),
            backbone=config.backbone,
        )
        super().__init__(Path(run_dir), info)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


def embed_samples(
    embedder: Embedder, samples: list[Sample], batch_size: int = 64, progress: Progress = SILENT
) -> tuple[np.ndarray, list[int]]:
    """Embed ``samples`` with the model's own preprocessing (its input size, mean and std).

    Returns the (M, dim) embeddings and the indices into ``samples`` of the M images that decoded
    (unreadable ones are logged and skipped); ``progress.advance(n)`` after each batch of n samples.
    """
    info = embedder.info
    transform = eval_transform(info.input_size, info.mean, info.std)
    return embed_images(
        lambda images: embedder.embed(images.numpy()), samples, transform, info.dim, batch_size, progress=progress
    )


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a model file (or, for a run directory, of its best weights): identifies the exact model."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.safetensors"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_agreement(
    got: np.ndarray, expected: np.ndarray, floor: float, disagreement: str, hint: str
) -> dict[str, float]:
    """Per-embedding cosine of ``got`` against the reference ``expected`` (min and mean); below ``floor`` (or
    non-finite) an ExportError that starts with ``disagreement`` ("the fp16 model disagrees with PyTorch")."""
    check = cosine_check(got, expected)
    if not check["min_cosine"] >= floor:  # NaN (non-finite output) fails too
        raise ExportError(
            f"{disagreement}: min cosine {check['min_cosine']:.4f} < {floor} over {len(got)} test images; "
            "nothing was written",
            hint=hint,
        )
    return check


def check_runtime_output(embeddings: np.ndarray, info: ModelInfo, source: str) -> None:
    """An embedder's output must be (N, dim) and finite."""
    if embeddings.ndim != 2 or embeddings.shape[1] != info.dim:
        raise ExportError(f"{source}: produced {embeddings.shape}, expected (N, {info.dim})")
    if not np.isfinite(embeddings).all():
        raise ExportError(f"{source}: produced non-finite embeddings", hint="re-export in fp32")
