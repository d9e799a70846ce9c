"""Will TensorRT's ONNX parser take this graph? A CPU-only check, run before TensorRT is imported.

``SUPPORTED_OPS`` is the operator support matrix of onnx-tensorrt (``docs/operators.md``) for TensorRT 10,
the line JetPack 6 ships (10.3): every operator marked supported, in the default ONNX domain, with the
TensorRT 10 minor release that added it where that is later than 10.0 (from onnx-tensorrt's changelog).
Anything else (an operator marked unsupported there, a custom domain such as ``com.microsoft``, an opset
outside the parser's range) is reported with the node's name, so a user without a GPU learns early
which layer of the model will not parse. A few restrictions from the same table that our graphs can hit
are checked too: Q/DQ zero points must be 0 (symmetric int8), Reduce* axes must be constants, pooling
is 2D or 3D only.

TensorRT 11 accepts the same operators (its parser is a superset); the check is a lower bound, not a
substitute for building the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# TensorRT 10.0 parses opsets 9..20; later 10.x releases extend the top (10.15: 24). 20 is what JetPack 6's
# TensorRT 10.3 is documented for, and what PyTorch's exporter writes by default.
OPSET_RANGE = (9, 20)
ONNX_DOMAINS = ("", "ai.onnx")

_SINCE_10_0 = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
"""
# onnx-tensorrt CHANGELOG: DeformConv 10.1; window functions 10.4; STFT 10.5; Attention 10.14;
# RMSNormalization, RotaryEmbedding, TensorScatter 10.15.
_LATER = {
    "DeformConv": (10, 1),
    "BlackmanWindow": (10, 4),
    "HammingWindow": (10, 4),
    "HannWindow": (10, 4),
    "STFT": (10, 5),
    "Attention": (10, 14),
    "RMSNormalization": (10, 15),
    "RotaryEmbedding": (10, 15),
    "TensorScatter": (10, 15),
}
SUPPORTED_OPS: dict[str, tuple[int, int]] = {**{name: (10, 0) for name in _SINCE_10_0.split()}, **_LATER}

_QUANTIZE_OPS = ("QuantizeLinear", "DequantizeLinear")
_POOL_OPS = ("AveragePool", "MaxPool", "LpPool")
# Opset from which a Reduce* operator takes its axes as an input instead of an attribute.
_REDUCE_AXES_INPUT = {name: 18 for name in SUPPORTED_OPS if name.startswith("Reduce")} | {"ReduceSum": 13}


@dataclass(frozen=True)
class UnsupportedNode:
    """One node TensorRT's ONNX parser will reject (``node`` is "(model)" for whole-graph problems)."""

    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}): {self.reason}"


def check_tensorrt_ops(model: Any, tensorrt_version: tuple[int, int] = (10, 3)) -> list[UnsupportedNode]:
    """The nodes of ``model`` (an ``onnx.ModelProto`` or a path) that TensorRT ``tensorrt_version``'s parser rejects.

    Subgraphs (``If``/``Loop``/``Scan`` bodies) are checked too. An empty list means every operator is in
    the support matrix; it does not prove the engine builds (shapes, memory and kernels are TensorRT's).
    """
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    opset = next((entry.version for entry in model.opset_import if entry.domain in ONNX_DOMAINS), None)
    problems: list[UnsupportedNode] = []
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(
            UnsupportedNode(
                "(model)",
                "opset",
                f"opset {opset} is outside TensorRT 10's {OPSET_RANGE[0]}..{OPSET_RANGE[1]}; export with --opset 20",
            )
        )
    constants = _constant_names(model.graph)
    for node in _walk(model.graph):
        reason = _node_problem(node, opset or OPSET_RANGE[1], constants, tensorrt_version)
        if reason:
            problems.append(
                UnsupportedNode(
                    node.name or "(unnamed)",
                    node.op_type if not node.domain else f"{node.domain}::{node.op_type}",
                    reason,
                )
            )
    return problems


def _node_problem(node: Any, opset: int, constants: dict[str, Any], version: tuple[int, int]) -> str | None:
    if node.domain not in ONNX_DOMAINS:
        return f"custom domain {node.domain!r} needs a TensorRT plugin"
    since = SUPPORTED_OPS.get(node.op_type)
    if since is None:
        return "not in TensorRT's ONNX operator support matrix"
    if since > version:
        return f"needs TensorRT {since[0]}.{since[1]} or newer (checked for {version[0]}.{version[1]})"
    if node.op_type in _QUANTIZE_OPS:
        return _zero_point_problem(node, constants)
    if node.op_type in _POOL_OPS:
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [])
        if kernel and len(kernel) not in (2, 3):
            return f"{len(kernel)}D pooling; TensorRT pools in 2D or 3D only"
    if (
        node.op_type in _REDUCE_AXES_INPUT
        and opset >= _REDUCE_AXES_INPUT[node.op_type]
        and len(node.input) > 1
        and node.input[1]
        and node.input[1] not in constants
    ):
        return f"axes input {node.input[1]!r} is computed at run time; TensorRT needs constant axes"
    return None


def _zero_point_problem(node: Any, constants: dict[str, Any]) -> str | None:
    """TensorRT quantizes symmetrically to int8: a zero point must be a constant 0 of type int8."""
    from onnx import TensorProto, numpy_helper

    if len(node.input) < 3 or not node.input[2]:
        return None  # no zero point: 0, and the output type is uint8 only if a zero point says so
    if node.input[2] not in constants:
        return f"zero point {node.input[2]!r} is not a constant"
    tensor = constants[node.input[2]]
    if tensor is None:  # a Constant given as value_int(s): nothing to read the type from
        return None
    if tensor.data_type == TensorProto.INT32:
        return (
            "dequantizes an INT32 tensor (an int32-quantized bias); TensorRT dequantizes INT8/FP8/INT4 only: "
            "keep biases in float (onnxruntime: extra_options QuantizeBias=False)"
        )
    if tensor.data_type not in (TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4):
        return (
            f"zero point {node.input[2]!r} is {TensorProto.DataType.Name(tensor.data_type)}; TensorRT quantizes to INT8"
        )
    if numpy_helper.to_array(tensor).any():
        return (
            f"zero point {node.input[2]!r} is not 0; TensorRT quantizes symmetrically "
            "(onnxruntime: extra_options ActivationSymmetric=True)"
        )
    return None


def _constant_names(graph: Any) -> dict[str, Any]:
    """Initializers and Constant-node outputs (with their tensor, when it is a plain ``value``)."""
    constants: dict[str, Any] = {init.name: init for init in graph.initializer}
    for node in _walk(graph):
        if node.op_type == "Constant" and node.domain in ONNX_DOMAINS:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            constants[node.output[0]] = value
    return constants


def _walk(graph: Any) -> Iterator[Any]:
    """Every node of ``graph`` and of the subgraphs in its attributes."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _walk(attribute.g)
            for subgraph in attribute.graphs:
                yield from _walk(subgraph)


def describe(problems: list[UnsupportedNode], limit: int = 5) -> str:
    """One line naming the first ``limit`` problems."""
    shown = "; ".join(str(problem) for problem in problems[:limit])
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return shown + more
