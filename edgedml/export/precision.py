"""Reduced-precision ONNX models: fp16 conversion and int8 static quantization, with their checks.

- **fp16** uses onnxruntime's maintained converter (``onnxruntime.transformers.float16``) with fp32
  inputs and outputs. The L2 normalization after the head stays in fp32: its sum of squares
  overflows fp16 (max 65504) as soon as a raw embedding's norm passes 256. The converter alone is
  not enough: it wraps every blocked node in its own Cast pair, so a tensor *between* two blocked
  nodes (``x * x`` before ``ReduceSum``) would still be stored in fp16; :func:`convert_fp16` keeps
  the whole normalization subgraph in fp32.
- **int8** is QDQ quantization (QuantizeLinear/DequantizeLinear pairs, which TensorRT and
  onnxruntime both fuse) by ``onnxruntime.quantization.quantize_static`` after ``quant_pre_process``:
  per-channel int8 weights, int8 activations whose ranges (MinMax) are measured on calibration
  images, the normalization excluded. For TensorRT (the default target) everything is symmetric
  (zero points 0) and biases stay float, as TensorRT requires of Q/DQ graphs, so the same file also
  feeds an int8 engine. For onnxruntime on a CPU (``target="cpu"``) activations are unsigned and
  asymmetric and biases int32 (U8S8, onnxruntime's fast path on x86: the S8S8 file runs no faster
  than fp32 there, benchmarks/export.py); TensorRT's parser rejects that file.
- **int8 calibration** uses every chosen image (:func:`pick_calibration`: at most ``CALIBRATION_CAP``, evenly
  spaced over the classes), and its memory is bounded without onnxruntime's ``CalibMaxIntermediateOutputs``
  (which, on the onnxruntime versions we use, discards all but the last partial group of batches): the
  :class:`ImageCalibrationReader` decodes one batch at a time, and onnxruntime's MinMax calibrator keeps, per
  batch, only the minimum and maximum of each calibrated tensor (two scalars per tensor), never the activations.
  At most ``ceil(CALIBRATION_CAP / batch) x tensors x 2`` floats (32 batches for a dynamic-batch model).

The normalization nodes are found from the graph's structure, not from names: they are the nodes
downstream of the head, the last Gemm/MatMul on the way to the output (docs/methods.md §6).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from torch.utils.data import DataLoader

from edgedml.data import ImageDataset, collate_skip_bad, eval_transform
from edgedml.errors import DataError, ExportError
from edgedml.export.formats import check_int8_target
from edgedml.progress import SILENT, Progress

log = logging.getLogger(__name__)

HEAD_OPS = ("Gemm", "MatMul")
FP16_MIN_COSINE = 0.999
# A correctly calibrated int8 embedding stays within a few degrees of fp32 (cosine > 0.99; 0.998 on
# digits). Below 0.9 (26 degrees) an embedding can land nearer another class than its own: the
# model is broken (wrong calibration data, saturated ranges), not merely lossy.
INT8_MIN_COSINE = 0.9
CALIBRATION_CAP = 1000
CALIBRATION_WARN = 300
CALIBRATION_BATCH = 32


def normalization_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes after the head (the last Gemm/MatMul): the L2 normalization, in graph order."""
    nodes = list(model.graph.node)
    heads = [node for node in nodes if node.op_type in HEAD_OPS]
    if not heads:
        raise ExportError("the exported graph has no Gemm/MatMul head; cannot locate the L2 normalization")
    reached = set(heads[-1].output)
    tail: list[str] = []
    changed = True
    while changed:  # nodes need not be in topological order once converters have appended Casts
        changed = False
        for node in nodes:
            if node.name not in tail and reached.intersection(node.input):
                tail.append(node.name)
                reached.update(node.output)
                changed = True
    order = {node.name: i for i, node in enumerate(nodes)}
    return sorted(tail, key=order.__getitem__)


def keep_fp32_between(model: onnx.ModelProto, blocked: list[str]) -> None:
    """Drop the value_info of tensors a blocked node produces, so the converter casts none of them to fp16."""
    blocked_set = set(blocked)
    produced = {name for node in model.graph.node if node.name in blocked_set for name in node.output}
    kept = [info for info in model.graph.value_info if info.name not in produced]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)


def convert_fp16(source: Path, target: Path, metadata: dict[str, str]) -> list[str]:
    """Write an fp16 copy of ``source`` to ``target`` (fp32 I/O, normalization in fp32); return the fp32 nodes."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(source)))
    blocked = normalization_nodes(model)
    keep_fp32_between(model, blocked)
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked, disable_shape_infer=True)
    set_metadata(converted, metadata)
    onnx.save(converted, str(target))
    return blocked


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed calibration images to onnxruntime's calibrator, decoding one batch at a time.

    A fixed-batch model gets batches of exactly its size (the last one filled with the images it
    already holds, so no blank image skews the ranges). ``progress.advance(n)`` after each batch.
    """

    def __init__(
        self, samples: list, input_size: int, mean, std, input_name: str, batch: int | None, progress: Progress = SILENT
    ):
        self.samples = samples
        self.input_size, self.mean, self.std = input_size, mean, std
        self.input_name = input_name
        self.batch = batch
        self.progress = progress
        self.used = 0
        self._batches: Iterator[np.ndarray] | None = None

    def _iterate(self) -> Iterator[np.ndarray]:
        dataset = ImageDataset(
            self.samples, {s.label: 0 for s in self.samples}, eval_transform(self.input_size, self.mean, self.std)
        )
        loader = DataLoader(dataset, batch_size=self.batch or CALIBRATION_BATCH, collate_fn=collate_skip_bad)
        for start, loaded in zip(range(0, len(self.samples), loader.batch_size), loader, strict=True):
            self.progress.advance(min(loader.batch_size, len(self.samples) - start))
            if loaded is None:
                continue
            images = loaded[0].numpy()
            self.used += len(images)
            if self.batch is not None and len(images) < self.batch:
                images = np.resize(images, (self.batch, *images.shape[1:]))  # repeats the batch's own images
            yield images

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self._iterate()
        images = next(self._batches, None)
        return None if images is None else {self.input_name: images}


def pick_calibration(samples: list, cap: int = CALIBRATION_CAP) -> list:
    """At most ``cap`` samples, evenly spaced over the list (which is grouped by class): deterministic."""
    if len(samples) <= cap:
        return list(samples)
    return [samples[i] for i in np.linspace(0, len(samples) - 1, cap).round().astype(int)]


def quantize_int8(
    source: Path, target: Path, reader: ImageCalibrationReader, metadata: dict[str, str], runs_on: str = "tensorrt"
) -> list[str]:
    """Write a QDQ int8 copy of ``source`` to ``target``, calibrated on ``reader``, for ``runs_on`` (one of
    ``edgedml.export.formats.INT8_TARGETS``).

    Returns the names of the nodes left in fp32 (the normalization).
    """
    check_int8_target(runs_on)
    with tempfile.TemporaryDirectory(prefix="edgedml-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # symbolic shape inference cannot follow the normalization's Expand; onnx's own inference can
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        excluded = normalization_nodes(onnx.load(str(prepared)))
        # No CalibMaxIntermediateOutputs: onnxruntime's MinMaxCalibrater (read on 1.32, the same in earlier releases)
        # *clears* its list of batch outputs when it reaches that count, without computing their ranges, so the ranges
        # came from the last partial group of batches only, and a batch count that is a multiple of it raised "No data
        # is collected". Without the option every batch counts, and the memory is still bounded: the reader decodes one
        # batch at a time, at most CALIBRATION_CAP images, and per batch the calibrator keeps only the augmented
        # model's ReduceMin/ReduceMax outputs, one scalar each per calibrated tensor (quantize_static never asks it for
        # per-channel activation ranges), i.e. ceil(CALIBRATION_CAP / batch) x tensors x 2 floats. (Older releases also
        # keep the model's own output of each batch: at most CALIBRATION_CAP embeddings more.)
        options: dict[str, object] = {}
        if runs_on == "tensorrt":  # TensorRT's Q/DQ rules: zero points 0, float biases
            options |= {"ActivationSymmetric": True, "QuantizeBias": False}
        quantize_static(
            str(prepared),
            str(target),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            activation_type=QuantType.QInt8 if runs_on == "tensorrt" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            extra_options=options,
        )
    if reader.used == 0:
        raise DataError("no calibration image could be decoded", hint="check the images of --calib-data")
    quantized = onnx.load(str(target))
    set_metadata(quantized, metadata)
    onnx.save(quantized, str(target))
    return excluded
