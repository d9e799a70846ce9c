"""ONNX export of a run's embedding model, verified against PyTorch with onnxruntime.

The exported graph is the base embedding model (backbone, head and L2 normalization; S2SD's
auxiliary heads never reach it) with a dynamic batch dimension, produced by PyTorch's current
exporter (``torch.onnx.export(..., dynamo=True)``). The file carries its own metadata (embedding
dimension, input size, mean/std, colour order, the run's config hash, the edgedml version), so
every later command can use the file alone. Every export is checked with onnxruntime on real
images from the run's data: a failing check is an error and leaves no file behind.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgedml import __version__
from edgedml.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from edgedml.errors import ConfigError, ExportError
from edgedml.export.runtime import INPUT_NAME, OUTPUT_NAME
from edgedml.io import atomic_path
from edgedml.training.evaluate import load_run_model
from edgedml.training.run import RunDir, config_hash

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
MAX_BATCH = 4096
CHECK_IMAGES = 32


@dataclass
class ExportResult:
    path: Path
    size_bytes: int
    seconds: float
    max_abs_diff: float
    checked_images: int
    metadata: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "seconds": self.seconds,
                "max_abs_diff": self.max_abs_diff, "checked_images": self.checked_images, "metadata": self.metadata}


def model_metadata(run_dir: Path, dim: int, input_size: int, config, batch: int | None = None, precision: str = "fp32") -> dict[str, str]:
    """Key/value strings stored in the ONNX file's metadata_props (read back by ``ModelInfo.from_metadata``)."""
    return {
        "edgedml_version": __version__,
        "embedding_dim": str(dim),
        "input_size": str(input_size),
        "input_layout": "NCHW float32, RGB scaled to [0, 1], then (x - mean) / std",
        "color_order": "RGB",
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "output": "L2-normalized embeddings, cosine similarity = dot product",
        "config_hash": config_hash(config),
        "backbone": config.backbone,
        "batch": "dynamic" if batch is None else str(batch),
        "precision": precision,
        "run": str(run_dir),
        # How the run split its data, so that `edgedml eval MODEL --data SPEC` scores the same test classes.
        "data": config.data,
        "train_classes": str(config.train_classes),
        "val_fraction": str(config.val_fraction),
        "seed": str(config.seed),
    }


def check_images(run_dir: Path, count: int = CHECK_IMAGES) -> torch.Tensor:
    """Up to ``count`` preprocessed test-split images of the run's own data: (N, 3, H, W)."""
    from edgedml.data import ImageDataset, eval_transform, prepare_data

    config = RunDir(run_dir).load_config()
    prepared = prepare_data(config.data, config.train_classes, config.val_fraction, config.seed)
    samples = prepared.splits.test[:: max(1, len(prepared.splits.test) // count)][:count]
    dataset = ImageDataset(samples, {s.label: 0 for s in samples}, eval_transform(config.input_size or prepared.default_input_size))
    items = [item for item in (dataset[i] for i in range(len(dataset))) if item is not None]
    if not items:
        raise ExportError(f"{run_dir}: no readable test image to check the export with")
    return torch.stack([image for image, _, _ in items])


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    opset: int | None = None,
    batch: int | None = None,
    checkpoint: str = "best",
) -> ExportResult:
    """Export ``run_dir``'s model to ONNX (dynamic batch unless ``batch``), verify it, write it atomically."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    model, config = load_run_model(run_dir, checkpoint, device="cpu")
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise ConfigError(f"--batch {batch} must lie in 1..{MAX_BATCH}", hint="or use --dynamic")
    images = check_images(run_dir)
    target = Path(out) if out is not None else run_dir / "model.onnx"
    if target.suffix != ".onnx":
        raise ConfigError(f"--out {target}: an ONNX file must end in .onnx")
    metadata = model_metadata(run_dir, config.dim, images.shape[-1], config, batch)
    with atomic_path(target) as tmp:
        _export_graph(model, images, tmp, opset, batch, metadata)
        max_diff = verify_onnx(tmp, model, images if batch is None else images[:batch], FP32_TOLERANCE)
        size = tmp.stat().st_size
    log.info("exported %s (%.1f MiB), max |Δ| %.2e over %d images", target, size / 2**20, max_diff, len(images))
    return ExportResult(target, size, time.perf_counter() - started, max_diff, len(images), metadata)


def _export_graph(model: torch.nn.Module, images: torch.Tensor, path: Path, opset: int | None, batch: int | None, metadata: dict[str, str]) -> None:
    import onnx

    example = images[: batch or 2]
    if batch is not None and len(example) < batch:
        example = example.repeat((batch + len(example) - 1) // len(example), 1, 1, 1)[:batch]
    dynamic = None if batch is not None else {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic, opset_version=opset, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; the user needs the one line
        raise ExportError(f"the ONNX exporter failed: {str(exc).splitlines()[0]}", hint="try another --opset") from None
    program.save(str(path))
    graph = onnx.load(str(path))
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns about torchvision ops (not installed, not used) and its own deprecations."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def verify_onnx(path: Path, model: torch.nn.Module, images: torch.Tensor, tolerance: float) -> float:
    """Max |Δ| between onnxruntime and PyTorch on ``images``; ExportError above ``tolerance``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(images).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    max_diff = float(np.abs(got - expected).max())
    if not max_diff <= tolerance:
        raise ExportError(
            f"onnxruntime disagrees with PyTorch: max |Δ| {max_diff:.2e} > {tolerance:.0e}; nothing was written",
            hint="try another --opset, or report the backbone",
        )
    return max_diff


def read_metadata(path: str | Path) -> dict[str, str]:
    """The edgedml metadata of an exported ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}
