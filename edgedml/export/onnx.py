"""ONNX export of a run's embedding model, verified against PyTorch with onnxruntime.

The exported graph is the base embedding model (backbone, head and L2 normalization; S2SD's
auxiliary heads never reach it) with a dynamic batch dimension, produced by PyTorch's current
exporter (``torch.onnx.export(..., dynamo=True)``). The file carries its own metadata (embedding
dimension, input size, mean/std, colour order, the run's config hash, the edgedml version), so
every later command can use the file alone. Every export is checked with onnxruntime on real
images from the run's data: a failing check is an error and leaves no file behind.

Reduced-precision copies (``--half``, ``--int8``; see :mod:`edgedml.export.precision`) are made from
the checked fp32 file, checked the same way (cosine per embedding), and scored next to it: the
Recall@1 and MAP@R of every file on the run's test classes, with PyTorch's as the reference, show
what each precision costs. ``export.json`` beside the files records it all.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edgedml import __version__
from edgedml.config import MAX_BATCH, TrainConfig
from edgedml.data import ImageDataset, PreparedData, Sample, class_indices, eval_transform, load_source, prepare_data
from edgedml.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from edgedml.errors import ConfigError, DataError, ExportError
from edgedml.export import precision
from edgedml.export.formats import check_export_options, check_int8_target, check_opset
from edgedml.export.runtime import INPUT_NAME, OUTPUT_NAME, OnnxRuntimeEmbedder, check_agreement, embed_samples
from edgedml.io import atomic_path, check_output_file
from edgedml.metrics import recall_and_map
from edgedml.models import EmbeddingModel
from edgedml.progress import SILENT, Progress
from edgedml.training import RunDir, config_hash, load_run_model
from edgedml.training import embed_samples as embed_with_torch

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
CHECK_IMAGES = 32


@dataclass
class ExportedFile:
    """One written model: ``check`` holds max_abs_diff (fp32) or min/mean_cosine (fp16, int8) against PyTorch."""

    path: Path
    precision: str
    size_bytes: int
    seconds: float
    check: dict[str, float]
    recall_at_1: float | None = None  # on the run's test classes, when the export was evaluated
    map_at_r: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "seconds": self.seconds,
            "check": self.check,
            "recall_at_1": self.recall_at_1,
            "map_at_r": self.map_at_r,
        }


@dataclass
class ExportSummary:
    """What ``export_onnx`` wrote; also saved as ``export.json`` beside the files."""

    run_dir: Path
    files: dict[str, ExportedFile]  # "fp32" always (the reference), "fp16", "int8"
    batch: int | None
    opset: int
    checked_images: int
    seconds: float
    metadata: dict[str, str]  # the fp32 file's; the others differ only in "precision"
    summary_path: Path
    reference: dict[str, float] | None = None  # PyTorch's recall_at_1 / map_at_r on the same test images
    test_images: int = 0
    calibration: Calibration | None = None  # int8: which images calibrated it
    warnings: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        """The fp32 file."""
        return self.files["fp32"].path

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "files": {name: f.to_dict() for name, f in self.files.items()},
            "batch": self.batch,
            "opset": self.opset,
            "checked_images": self.checked_images,
            "seconds": self.seconds,
            "metadata": self.metadata,
            "summary_path": str(self.summary_path),
            "reference": self.reference,
            "test_images": self.test_images,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "warnings": self.warnings,
        }


@dataclass
class Calibration:
    """The int8 calibration images: where they came from and how many were used."""

    data: str  # the --calib-data spec (or the run's own data)
    split: str  # "train": the run's training split; "all": every image of another source
    default: bool  # True when --calib-data was not given
    available: int  # images in that pool
    images: int  # images chosen (at most precision.CALIBRATION_CAP); after calibration, those that decoded
    int8_for: str  # one of edgedml.export.formats.INT8_TARGETS
    samples: list[Sample] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "split": self.split,
            "default": self.default,
            "available": self.available,
            "images": self.images,
            "int8_for": self.int8_for,
        }


def model_metadata(
    run_dir: Path, dim: int, input_size: int, config, batch: int | None = None, precision: str = "fp32"
) -> dict[str, str]:
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
    config = RunDir(run_dir).load_config()
    prepared = prepare_data(config.data, config.train_classes, config.val_fraction, config.seed)
    return _check_images(run_dir, prepared.splits.test, config.input_size, count)


def _check_images(run_dir: Path, test: list[Sample], input_size: int, count: int = CHECK_IMAGES) -> torch.Tensor:
    samples = test[:: max(1, len(test) // count)][:count]
    dataset = ImageDataset(samples, {s.label: 0 for s in samples}, eval_transform(input_size))
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
    half: bool = False,
    int8: bool = False,
    calib_data: str | None = None,
    evaluate: bool = True,
    progress: Progress = SILENT,
    int8_for: str = "tensorrt",
) -> ExportSummary:
    """Export ``run_dir``'s model to ONNX in fp32 (plus fp16 and int8 copies), verify each, write all or nothing.

    Every file is checked with onnxruntime against PyTorch on real test images: fp32 max |Δ| <= 1e-4,
    fp16 cosine >= 0.999 per embedding, int8 cosine >= 0.9 per embedding (a broken model, not a lossy
    one). With ``evaluate``, each file's Recall@1 and MAP@R on the run's test classes are measured
    next to PyTorch's. ``int8`` calibrates on ``calib_data`` (any ``--data`` spec; the run's own
    data means its training split), by default on the run's training split. ``int8_for`` picks the
    int8 flavour: ``tensorrt`` (symmetric, float biases; also fine on onnxruntime) or ``cpu`` (U8S8,
    onnxruntime's fast path on x86; TensorRT rejects it).
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    check_opset(opset)
    target = _check_options(out, run_dir, batch, int8, calib_data, int8_for)
    targets = {"fp32": target} | {
        name: target.with_name(f"{target.stem}.{name}.onnx")
        for name, wanted in (("fp16", half), ("int8", int8))
        if wanted
    }
    model, config = load_run_model(run_dir, checkpoint, device="cpu")
    progress.stage("reading the run's data")
    prepared = prepare_data(config.data, config.train_classes, config.val_fraction, config.seed)
    images = _check_images(run_dir, prepared.splits.test, config.input_size)
    calibration = _calibration(calib_data, config, prepared, int8_for) if int8 else None
    metadata = model_metadata(run_dir, config.dim, config.input_size, config, batch)
    summary_path = target.parent / "export.json"
    with ExitStack() as stack:  # entered first, renamed last: export.json appears only beside finished files
        summary_tmp = stack.enter_context(atomic_path(summary_path))
        tmp = {name: stack.enter_context(atomic_path(path)) for name, path in targets.items()}
        files = {"fp32": _export_fp32(model, images, tmp["fp32"], targets["fp32"], opset, batch, metadata, progress)}
        with torch.no_grad():
            expected = model(images).numpy()
        if half:
            files["fp16"] = _export_fp16(
                tmp["fp32"], tmp["fp16"], targets["fp16"], images, expected, metadata, progress
            )
        warning_lines: list[str] = []
        if calibration is not None:
            files["int8"] = _export_int8(
                tmp["fp32"],
                tmp["int8"],
                targets["int8"],
                images,
                expected,
                metadata,
                calibration,
                config.input_size,
                batch,
                progress,
                warning_lines,
            )
        reference, scored = None, 0
        if evaluate:
            reference, scored = _score(
                model, prepared.splits.test, config.input_size, files, tmp, progress, warning_lines
            )
        summary = ExportSummary(
            run_dir,
            files,
            batch,
            _graph_opset(tmp["fp32"]),
            len(images),
            time.perf_counter() - started,
            metadata,
            summary_path,
            reference,
            scored,
            calibration,
            warning_lines,
        )
        summary_tmp.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for exported in files.values():
        log.info("exported %s (%.2f MiB, %s)", exported.path, exported.size_bytes / 2**20, exported.check)
    return summary


def _check_options(
    out: str | Path | None, run_dir: Path, batch: int | None, int8: bool, calib_data: str | None, int8_for: str
) -> Path:
    """Refuse what cannot work before any work (the format table's rules, the batch range); the fp32 file's path."""
    check_int8_target(int8_for)  # the default (tensorrt) is always passed, so only its value is checked here
    check_export_options("onnx", {"batch": batch, "int8": int8, "calib_data": calib_data})
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise ConfigError(f"--batch {batch} must lie in 1..{MAX_BATCH}", hint="or use --dynamic")
    target = Path(out) if out is not None else run_dir / "model.onnx"
    if target.suffix != ".onnx":
        raise ConfigError(f"--out {target}: an ONNX file must end in .onnx")
    check_output_file(target)
    return target


def _export_fp32(
    model: EmbeddingModel,
    images: torch.Tensor,
    written: Path,
    final: Path,
    opset: int | None,
    batch: int | None,
    metadata: dict[str, str],
    progress: Progress,
) -> ExportedFile:
    started = time.perf_counter()
    progress.stage("exporting fp32")
    _export_graph(model, images, written, opset, batch, metadata)
    max_diff = verify_onnx(written, model, images, FP32_TOLERANCE)
    return _exported(final, written, "fp32", started, {"max_abs_diff": max_diff})


def _export_fp16(
    fp32: Path,
    written: Path,
    final: Path,
    images: torch.Tensor,
    expected: np.ndarray,
    metadata: dict[str, str],
    progress: Progress,
) -> ExportedFile:
    started = time.perf_counter()
    progress.stage("converting to fp16")
    precision.convert_fp16(fp32, written, metadata | {"precision": "fp16"})
    check = _check_reduced(written, images, expected, "fp16", precision.FP16_MIN_COSINE)
    return _exported(final, written, "fp16", started, check)


def _export_int8(
    fp32: Path,
    written: Path,
    final: Path,
    images: torch.Tensor,
    expected: np.ndarray,
    metadata: dict[str, str],
    calibration: Calibration,
    input_size: int,
    batch: int | None,
    progress: Progress,
    warning_lines: list[str],
) -> ExportedFile:
    started = time.perf_counter()
    progress.stage("calibrating int8", total=len(calibration.samples))
    reader = precision.ImageCalibrationReader(
        calibration.samples, input_size, IMAGENET_MEAN, IMAGENET_STD, INPUT_NAME, batch, progress
    )
    precision.quantize_int8(
        fp32, written, reader, metadata | {"precision": "int8", "int8_for": calibration.int8_for}, calibration.int8_for
    )
    calibration.images = reader.used
    if reader.used < precision.CALIBRATION_WARN:
        warning_lines.append(
            f"int8 calibrated on {reader.used} images (fewer than {precision.CALIBRATION_WARN}): "
            "its ranges may not cover the images it will see"
        )
        log.warning("%s", warning_lines[-1])
    check = _check_reduced(written, images, expected, "int8", precision.INT8_MIN_COSINE)
    return _exported(final, written, "int8", started, check)


def _graph_opset(path: Path) -> int:
    return next(
        entry.version
        for entry in onnx.load(str(path), load_external_data=False).opset_import
        if entry.domain in ("", "ai.onnx")
    )


def _exported(final: Path, written: Path, precision_name: str, started: float, check: dict[str, float]) -> ExportedFile:
    return ExportedFile(final, precision_name, written.stat().st_size, time.perf_counter() - started, check)


def _check_reduced(
    path: Path, images: torch.Tensor, expected: np.ndarray, precision_name: str, floor: float
) -> dict[str, float]:
    """Per-embedding cosine of a reduced-precision file against PyTorch; ExportError below ``floor`` or non-finite."""
    got = OnnxRuntimeEmbedder.on_cpu(path).embed(images.numpy())
    hint = (
        "export without --half"
        if precision_name == "fp16"
        else "calibrate on images like the ones it will embed (--calib-data), or use --half"
    )
    return check_agreement(got, expected, floor, f"the {precision_name} model disagrees with PyTorch", hint)


def _calibration(calib_data: str | None, config: TrainConfig, prepared: PreparedData, int8_for: str) -> Calibration:
    """The int8 calibration images: the run's training split (its own data), or all of another source."""
    own = calib_data is None or _same_data(calib_data, config.data)
    pool = prepared.splits.train if own else load_source(calib_data).samples
    chosen = precision.pick_calibration(pool)
    return Calibration(
        calib_data or config.data,
        "train" if own else "all",
        calib_data is None,
        len(pool),
        len(chosen),
        int8_for,
        chosen,
    )


def _same_data(spec: str, run_data: str) -> bool:
    if spec == run_data:
        return True
    first, second = Path(spec).expanduser(), Path(run_data).expanduser()
    return first.exists() and second.exists() and first.resolve() == second.resolve()


def _score(
    model: EmbeddingModel,
    test: list[Sample],
    input_size: int,
    files: dict[str, ExportedFile],
    written: dict[str, Path],
    progress: Progress,
    warning_lines: list[str],
) -> tuple[dict[str, float] | None, int]:
    """Recall@1 and MAP@R on the test classes: PyTorch's (the reference) and each file's, through onnxruntime."""
    labels = class_indices(test)
    progress.stage("Recall@1 of PyTorch on the test classes")
    torch_embeddings, torch_labels = embed_with_torch(model, test, input_size, torch.device("cpu"))
    try:
        recall, map_at_r, _ = recall_and_map(torch_embeddings, torch_labels, ks=(1,))
    except DataError as exc:
        warning_lines.append(f"Recall@1 not measured: {exc.message}")
        return None, 0
    for name, exported in files.items():
        progress.stage(f"Recall@1 of {name} on the test classes", total=len(test))
        embeddings, kept = embed_samples(OnnxRuntimeEmbedder.on_cpu(written[name]), test, progress=progress)
        file_recall, file_map, _ = recall_and_map(torch.from_numpy(embeddings), labels[kept], ks=(1,))
        exported.recall_at_1, exported.map_at_r = file_recall[1], file_map
    return {"recall_at_1": recall[1], "map_at_r": map_at_r}, len(torch_labels)


def _export_graph(
    model: torch.nn.Module,
    images: torch.Tensor,
    path: Path,
    opset: int | None,
    batch: int | None,
    metadata: dict[str, str],
) -> None:
    example = images[: batch or 2]
    if batch is not None and len(example) < batch:
        example = example.repeat((batch + len(example) - 1) // len(example), 1, 1, 1)[:batch]
    dynamic = None if batch is not None else ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic,
                opset_version=opset,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; the user needs the one line
        raise ExportError(f"the ONNX exporter failed: {str(exc).splitlines()[0]}", hint="try another --opset") from None
    program.save(str(path))
    graph = onnx.load(str(path))
    precision.set_metadata(graph, metadata)
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
    got = OnnxRuntimeEmbedder.on_cpu(path).embed(images.numpy())
    with torch.no_grad():
        expected = model(images).numpy()
    max_diff = float(np.abs(got - expected).max())
    if not max_diff <= tolerance:
        raise ExportError(
            f"onnxruntime disagrees with PyTorch: max |Δ| {max_diff:.2e} > {tolerance:.0e}; nothing was written",
            hint="try another --opset, or report the backbone",
        )
    return max_diff


def read_metadata(path: str | Path) -> dict[str, str]:
    """The edgedml metadata of an exported ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}
