"""TensorRT engines: built from the exported ONNX on the device that will run them, described by a sidecar.

An engine is compiled for one GPU and one TensorRT release: it is not portable. ``build_engine`` parses
the ONNX with TensorRT's parser and builds with one optimization profile over the batch range, a
workspace limit and a timing cache kept between builds. Precision follows the TensorRT line:

- TensorRT 10 (JetPack 6): a weakly typed network; fp16 is the ``FP16`` builder flag on the fp32 ONNX,
  int8 is the Q/DQ ONNX with the ``INT8`` flag (plus ``FP16`` with ``--half``, for the layers outside
  Q/DQ pairs).
- TensorRT 11: networks are strongly typed and the precision flags and calibrators are gone; fp16 is
  built from the fp16 ONNX, int8 from the Q/DQ ONNX, and no precision flag is set.

``model.engine.json`` (the sidecar) records the TensorRT version, the GPU (name and compute capability),
the batch range, the builder settings and the model's metadata; ``TensorRTEmbedder`` reads it first and
refuses an engine built for another GPU or TensorRT version, saying to rebuild on this device. The
runtime uses TensorRT's name-based tensor API with PyTorch CUDA tensors as device buffers.
``tensorrt`` is imported only when an engine is built or run. The whole export (ONNX, operator
check, build, checked write, DeepStream) is ``edgedml.export.engine``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from edgedml import __version__
from edgedml.config import MAX_BATCH
from edgedml.errors import ConfigError, ExportError, ModelError
from edgedml.export.runtime import INPUT_NAME, OUTPUT_NAME, BatchedEmbedder, ModelInfo
from edgedml.io import write_with

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "edgedml-tensorrt-engine"
SIDECAR_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_BATCH = 32
JETSON_MARKER = Path("/etc/nv_tegra_release")


def install_hint() -> str:
    if JETSON_MARKER.exists():
        return (
            "on a Jetson TensorRT comes with JetPack: sudo apt install python3-libnvinfer, "
            "and create the venv with --system-site-packages so that it sees it"
        )
    return "pip install 'edgedml[tensorrt]' (NVIDIA's tensorrt wheels; needs an NVIDIA GPU and driver)"


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a one-line ExportError that says how to install it."""
    try:
        import tensorrt
    except ImportError:
        raise ExportError("TensorRT is not installed (import tensorrt failed)", hint=install_hint()) from None
    return tensorrt


def tensorrt_major(trt: ModuleType) -> int:
    return int(str(trt.__version__).split(".")[0])


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "compute_capability": self.compute_capability}


def current_gpu(index: int = 0) -> GpuInfo:
    """The CUDA device engines are built for and run on (through PyTorch)."""
    if not torch.cuda.is_available():
        raise ExportError(
            "no CUDA device: TensorRT engines are built and run on an NVIDIA GPU",
            hint="run this on the target device (a Jetson or a desktop GPU); --format onnx works on a CPU",
        )
    major, minor = torch.cuda.get_device_capability(index)
    return GpuInfo(torch.cuda.get_device_name(index), f"{major}.{minor}")


@dataclass(frozen=True)
class BatchRange:
    """The optimization profile's batch sizes (all three equal for a fixed-batch ONNX)."""

    min: int
    opt: int
    max: int

    @classmethod
    def fixed(cls, batch: int) -> BatchRange:
        return cls(batch, batch, batch)

    @classmethod
    def dynamic(cls, max_batch: int = DEFAULT_MAX_BATCH) -> BatchRange:
        # Kernels are tuned for the largest batch (throughput when indexing; smaller batches run correctly).
        return cls(1, max_batch, max_batch)

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max <= MAX_BATCH:
            raise ConfigError(
                f"batch range {self.min}/{self.opt}/{self.max} must satisfy 1 <= min <= opt <= max <= {MAX_BATCH}"
            )

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class PrecisionPlan:
    """How one TensorRT line builds one precision: which ONNX it parses, which flags it sets."""

    precision: str  # of the engine
    onnx_precision: str  # of the ONNX file it is built from
    strongly_typed: bool
    flags: tuple[str, ...]  # BuilderFlag names


def plan_precision(precision: str, major: int, fp16_fallback: bool = False) -> PrecisionPlan:
    """The build recipe for ``precision`` on TensorRT ``major`` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if major < 10:
        raise ExportError(
            f"TensorRT {major} is too old: edgedml builds with TensorRT 10 or newer",
            hint="JetPack 6.1+ on a Jetson; pip install 'edgedml[tensorrt]' on a desktop",
        )
    if major >= 11:
        return PrecisionPlan(precision, precision, True, ())
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16") if fp16_fallback else ("INT8",)}[precision]
    return PrecisionPlan(precision, "int8" if precision == "int8" else "fp32", False, flags)


def default_timing_cache(tensorrt_version: str, gpu: GpuInfo) -> Path:
    """One timing cache per TensorRT version and GPU, shared by every build on this machine."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgedml" / "tensorrt"
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu.name}-sm{gpu.compute_capability}-trt{tensorrt_version}").strip("-")
    return root / f"{slug}.timing-cache"


@dataclass
class EngineBuild:
    """A serialized engine and how it was built (the sidecar's builder section)."""

    engine: bytes
    plan: PrecisionPlan
    batch: BatchRange
    tensorrt_version: str
    input_shape: list[int]
    workspace_bytes: int | None
    timing_cache: Path | None
    timing_cache_reused: bool
    seconds: float


def build_engine(
    onnx_path: str | Path,
    plan: PrecisionPlan,
    batch: BatchRange,
    workspace_bytes: int | None = None,
    timing_cache: str | Path | None = None,
    trt: ModuleType | None = None,
) -> EngineBuild:
    """Parse ``onnx_path`` and build a serialized engine; nothing is written but the timing cache."""
    started = time.perf_counter()
    trt = trt or import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        raise ExportError(
            f"TensorRT's ONNX parser rejected {onnx_path}: {errors[0] if errors else 'no error reported'}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
            hint="edgedml.export.trt_ops.check_tensorrt_ops lists the operators TensorRT 10 supports",
        )
    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for name in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    input_shape = _add_profile(builder, network, config, batch)
    reused = _load_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT could not build an engine from {onnx_path} (its messages above say why)",
            hint="give it more --workspace, or try another precision",
        )
    if timing_cache is not None:
        cache_bytes = bytes(memoryview(config.get_timing_cache().serialize()))
        write_with(timing_cache, lambda tmp: tmp.write_bytes(cache_bytes))
    return EngineBuild(
        engine=bytes(memoryview(serialized)),
        plan=plan,
        batch=batch,
        tensorrt_version=str(trt.__version__),
        input_shape=input_shape,
        workspace_bytes=workspace_bytes,
        timing_cache=Path(timing_cache) if timing_cache else None,
        timing_cache_reused=reused,
        seconds=time.perf_counter() - started,
    )


def _add_profile(builder: Any, network: Any, config: Any, batch: BatchRange) -> list[int]:
    """One optimization profile over the batch range for the ``images`` input; returns its ONNX shape."""
    tensor = network.get_input(0)
    for index in range(network.num_inputs):
        if network.get_input(index).name == INPUT_NAME:
            tensor = network.get_input(index)
    shape = list(tensor.shape)
    if shape[0] >= 0:  # a fixed-batch ONNX: the batch range must be that batch
        if (batch.min, batch.max) != (shape[0], shape[0]):
            raise ConfigError(
                f"the ONNX has a fixed batch {shape[0]}; the engine cannot take batches {batch.min}..{batch.max}"
            )
        return shape
    rest = tuple(shape[1:])
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, (batch.min, *rest), (batch.opt, *rest), (batch.max, *rest))
    config.add_optimization_profile(profile)
    return shape


def _load_timing_cache(config: Any, path: str | Path | None) -> bool:
    """Attach the timing cache in ``path`` (a fresh one if absent or unusable); True if one was reused."""
    data = b""
    if path is not None and Path(path).is_file():
        data = Path(path).read_bytes()
    try:
        cache = config.create_timing_cache(data)
        if config.set_timing_cache(cache, False):
            return bool(data)
    except Exception as exc:  # a corrupt file: TensorRT raises its own error types
        log.warning(
            "timing cache %s is unusable (%s); starting a new one", path, str(exc).splitlines()[0] if str(exc) else exc
        )
    else:
        log.warning("timing cache %s was made by another TensorRT version or GPU; starting a new one", path)
    config.set_timing_cache(config.create_timing_cache(b""), False)
    return False


# ---- sidecar --------------------------------------------------------------------------------------


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_sidecar(
    build: EngineBuild, gpu: GpuInfo, onnx_path: Path, metadata: dict[str, str], workspace_source: str
) -> dict[str, Any]:
    """What a loader must know about an engine, and how it was made."""
    engine_metadata = dict(metadata)
    engine_metadata["precision"] = build.plan.precision
    engine_metadata["batch"] = str(build.batch.max) if build.batch.min == build.batch.max else "dynamic"
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "edgedml_version": __version__,
        "tensorrt_version": build.tensorrt_version,
        "gpu": gpu.to_dict(),
        "precision": build.plan.precision,
        "batch": build.batch.to_dict(),
        "input": {"name": INPUT_NAME, "shape": build.input_shape},
        "output": {"name": OUTPUT_NAME, "dim": int(metadata["embedding_dim"])},
        "engine_sha256": sha256_bytes(build.engine),
        "size_bytes": len(build.engine),
        "onnx": {"path": str(onnx_path), "precision": build.plan.onnx_precision},
        "builder": {
            "strongly_typed": build.plan.strongly_typed,
            "flags": list(build.plan.flags),
            "workspace_bytes": build.workspace_bytes,
            "workspace_source": workspace_source,
            "timing_cache": str(build.timing_cache) if build.timing_cache else None,
            "timing_cache_reused": build.timing_cache_reused,
            "seconds": round(build.seconds, 3),
        },
        "metadata": engine_metadata,
    }


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ConfigError(
            f"{engine_path}: no {path.name} beside it, so edgedml cannot tell what GPU and TensorRT it was built for",
            hint="rebuild it on this device: edgedml export RUN_DIR --format engine",
        )
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not valid JSON ({exc})", hint="rebuild the engine: edgedml export RUN_DIR --format engine"
        ) from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise ConfigError(
            f"{path}: not an edgedml engine sidecar", hint="rebuild the engine: edgedml export RUN_DIR --format engine"
        )
    return sidecar


def check_compatible(sidecar: dict[str, Any], tensorrt_version: str, gpu: GpuInfo, engine_path: str | Path) -> None:
    """Refuse an engine built for another TensorRT version or GPU (engines are not portable)."""
    built_gpu = sidecar.get("gpu", {})
    built = (sidecar.get("tensorrt_version"), built_gpu.get("name"), built_gpu.get("compute_capability"))
    here = (str(tensorrt_version), gpu.name, gpu.compute_capability)
    if built == here:
        return
    run = sidecar.get("metadata", {}).get("run") or "RUN_DIR"
    raise ModelError(
        f"{engine_path}: built with TensorRT {built[0]} for {built[1]} (sm {built[2]}), but this machine has "
        f"TensorRT {here[0]} and {here[1]} (sm {here[2]}); engines are not portable: rebuild it on this device "
        f"with edgedml export {run} --format engine",
    )


# ---- runtime --------------------------------------------------------------------------------------


class TensorRTEmbedder(BatchedEmbedder):
    """Runs an engine with TensorRT's name-based tensor API; the same interface as ``OnnxRuntimeEmbedder``."""

    runtime = "tensorrt"

    def __init__(
        self,
        path: str | Path,
        sidecar: dict[str, Any] | None = None,
        trt: ModuleType | None = None,
        device_index: int = 0,
    ):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"{path}: no such TensorRT engine", hint="build one with edgedml export RUN_DIR --format engine"
            )
        sidecar = sidecar if sidecar is not None else read_sidecar(path)
        trt = trt or import_tensorrt()
        check_compatible(sidecar, trt.__version__, current_gpu(device_index), path)
        data = path.read_bytes()
        if sidecar.get("engine_sha256") != sha256_bytes(data):
            raise ModelError(
                f"{path}: {sidecar_path(path).name} describes another engine (rebuilt or copied without its sidecar)",
                hint="rebuild it on this device: edgedml export RUN_DIR --format engine",
            )
        self.device = torch.device("cuda", device_index)
        self.trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.trt_runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ModelError(f"{path}: TensorRT could not deserialize the engine", hint="rebuild it on this device")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path}: expected one input and one output tensor, found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        super().__init__(path, ModelInfo.from_metadata(sidecar["metadata"], str(path)))
        self.min_batch = int(sidecar["batch"]["min"])
        self.max_batch = int(sidecar["batch"]["max"])
        self.sidecar = sidecar

    def _run(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        if count < self.min_batch:  # a profile whose smallest batch is above this chunk: pad it
            batch = np.concatenate([batch, np.zeros((self.min_batch - count, *batch.shape[1:]), batch.dtype)])
        stream = torch.cuda.current_stream(self.device)
        images = torch.from_numpy(batch).to(self.device, dtype=self.input_dtype)
        self.context.set_input_shape(self.input_name, tuple(images.shape))
        output = torch.empty(
            tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype, device=self.device
        )
        self.context.set_tensor_address(self.input_name, images.data_ptr())
        self.context.set_tensor_address(self.output_name, output.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ModelError(f"{self.path}: TensorRT failed to run a batch of {len(batch)}")
        stream.synchronize()
        return output[:count].float().cpu().numpy()


def torch_dtype(trt: ModuleType, data_type: Any) -> Any:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if data_type not in table:
        raise ModelError(f"engine tensor type {data_type} is not float32 or float16")
    return table[data_type]
