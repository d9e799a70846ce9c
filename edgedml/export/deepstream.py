"""DeepStream configuration for the exported model as a re-identification embedder.

Two blocks, written beside the engine:

- ``<engine>.nvinfer.txt``: a Gst-nvinfer ``[property]`` group that runs the model as a secondary
  inference on the detector's objects (``process-mode=2``), with no output parsing
  (``network-type=100``) and the raw embedding attached as tensor metadata (``output-tensor-meta=1``).
- ``<engine>.tracker-reid.yml``: the ``ReID:`` section of an NvDCF / NvDeepSORT tracker configuration
  (Gst-nvtracker's NvMultiObjectTracker), to paste into the tracker's YAML file.

DeepStream normalizes an input pixel x in [0, 255] as ``net_scale_factor * (x - offset_c)``: offsets are
per channel but the scale is one number, while training used ``(x / 255 - mean_c) / std_c``. The offsets
are exact (255 * mean); the scale that minimizes the largest relative error over the channels is
``2 / (a_min + a_max)`` with ``a_c = 255 * std_c``, and that error, ``(a_max - a_min) / (a_max + a_min)``,
is written into both files and the export summary (1.1% for the ImageNet std).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedml.export.runtime import OUTPUT_NAME, ModelInfo
from edgedml.io import write_text

# Gst-nvinfer network-mode and the tracker's ReID networkMode number the precisions differently.
NVINFER_NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
TRACKER_NETWORK_MODE = {"fp32": 0, "fp16": 1, "int8": 2}
COLOR_FORMAT = {"RGB": 0, "BGR": 1}
DEFAULT_TRACKER_WORKSPACE_MIB = 1000


@dataclass(frozen=True)
class Normalization:
    """DeepStream's ``net_scale_factor * (x - offsets)`` closest to training's per-channel normalization."""

    net_scale_factor: float
    offsets: tuple[float, float, float]
    exact_scales: tuple[float, float, float]  # 1 / (255 * std_c): what each channel would need
    max_relative_error: float  # max over channels of |net_scale_factor / exact_scale_c - 1|


def deepstream_normalization(mean: tuple[float, ...], std: tuple[float, ...]) -> Normalization:
    """Offsets 255 * mean; the scalar scale that minimizes the worst channel's relative error."""
    spans = [255.0 * s for s in std]  # a_c: the divisor each channel needs for x in [0, 255]
    scale = 2.0 / (min(spans) + max(spans))
    error = max(abs(scale * span - 1.0) for span in spans)
    offsets = tuple(255.0 * m for m in mean)
    return Normalization(scale, offsets, tuple(1.0 / span for span in spans), error)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DeepStreamFiles:
    nvinfer: Path
    tracker: Path
    normalization: Normalization

    def to_dict(self) -> dict[str, Any]:
        return {
            "nvinfer": str(self.nvinfer),
            "tracker": str(self.tracker),
            "net_scale_factor": self.normalization.net_scale_factor,
            "offsets": list(self.normalization.offsets),
            "max_relative_input_error": self.normalization.max_relative_error,
        }


def _header(info: ModelInfo, norm: Normalization, comment: str) -> list[str]:
    exact = ", ".join(f"{value:.8f}" for value in norm.exact_scales)
    return [
        f"{comment} Written by edgedml export --deepstream: {info.backbone or 'embedding'} model, "
        f"{info.dim}-d L2-normalized embeddings, "
        f"{info.input_size}x{info.input_size} {info.color_order} input, "
        "resized without keeping the aspect ratio (as in training).",
        f"{comment} Normalization: offsets = 255 * mean; "
        f"one net scale factor stands in for the per-channel 1 / (255 * std) = [{exact}],",
        f"{comment} chosen to minimize the worst channel's error: inputs differ from training's by at most "
        f"{norm.max_relative_error:.2%} (relative).",
    ]


def nvinfer_config(
    info: ModelInfo,
    engine: Path,
    onnx: Path,
    precision: str,
    batch_size: int,
    gie_id: int = 2,
    operate_on_gie_id: int = 1,
) -> str:
    """A Gst-nvinfer config file: the model as a secondary embedder on the primary detector's objects."""
    norm = deepstream_normalization(info.mean, info.std)
    lines = [
        *_header(info, norm, "#"),
        "# The embedding is attached to each object as NvDsInferTensorMeta (output-tensor-meta=1); "
        "read it in a pad probe.",
        "[property]",
        "gpu-id=0",
        f"onnx-file={onnx.resolve()}",
        f"model-engine-file={engine.resolve()}",
        f"batch-size={batch_size}",
        f"network-mode={NVINFER_NETWORK_MODE[precision]}",
        f"net-scale-factor={norm.net_scale_factor:.10f}",
        "offsets=" + ";".join(f"{value:.4f}" for value in norm.offsets),
        f"model-color-format={COLOR_FORMAT[info.color_order]}",
        f"infer-dims=3;{info.input_size};{info.input_size}",
        "maintain-aspect-ratio=0",
        f"output-blob-names={OUTPUT_NAME}",
        "network-type=100",
        "output-tensor-meta=1",
        "process-mode=2",
        f"gie-unique-id={gie_id}",
        f"operate-on-gie-id={operate_on_gie_id}",
        "",
    ]
    return "\n".join(lines)


def tracker_reid_config(
    info: ModelInfo, engine: Path, onnx: Path, precision: str, batch_size: int, workspace_bytes: int | None
) -> str:
    """The ``ReID:`` section of an NvMultiObjectTracker (NvDCF / NvDeepSORT) YAML configuration."""
    norm = deepstream_normalization(info.mean, info.std)
    workspace_mib = workspace_bytes >> 20 if workspace_bytes else DEFAULT_TRACKER_WORKSPACE_MIB
    offsets = ", ".join(f"{value:.4f}" for value in norm.offsets)
    lines = [
        *_header(info, norm, "#"),
        "# Paste this section into the tracker's YAML (ll-config-file of [tracker]).",
        "ReID:",
        "  reidType: 2  # 1 NvDeepSORT association, 2 re-association (NvDCF), 3 both",
        f"  batchSize: {batch_size}  # at most the engine's largest batch",
        f"  workspaceSize: {workspace_mib}  # MiB, used if the tracker rebuilds the engine from onnxFile",
        f"  reidFeatureSize: {info.dim}",
        "  reidHistorySize: 100",
        f"  inferDims: [3, {info.input_size}, {info.input_size}]  # C, H, W",
        f"  networkMode: {TRACKER_NETWORK_MODE[precision]}  # fp32 0, fp16 1, int8 2",
        "  inputOrder: 0  # NCHW",
        f"  colorFormat: {COLOR_FORMAT[info.color_order]}  # RGB 0, BGR 1",
        f"  offsets: [{offsets}]",
        f"  netScaleFactor: {norm.net_scale_factor:.10f}",
        "  keepAspc: 0  # training resized without keeping the aspect ratio",
        "  addFeatureNormalization: 0  # the model already L2-normalizes its output",
        f"  onnxFile: {onnx.resolve()}",
        f"  modelEngineFile: {engine.resolve()}",
        "",
    ]
    return "\n".join(lines)


def write_deepstream_configs(
    engine: Path, onnx: Path, info: ModelInfo, precision: str, batch_size: int, workspace_bytes: int | None
) -> DeepStreamFiles:
    """Write ``<engine>.nvinfer.txt`` and ``<engine>.tracker-reid.yml`` beside the engine."""
    nvinfer = engine.with_name(engine.stem + ".nvinfer.txt")
    tracker = engine.with_name(engine.stem + ".tracker-reid.yml")
    write_text(nvinfer, nvinfer_config(info, engine, onnx, precision, batch_size))
    write_text(tracker, tracker_reid_config(info, engine, onnx, precision, batch_size, workspace_bytes))
    return DeepStreamFiles(nvinfer, tracker, deepstream_normalization(info.mean, info.std))
