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
``tensorrt`` is imported only when an engine is built or run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgedml import __version__
from edgedml.errors import ConfigError, ExportError, ModelError
from edgedml.export.runtime import INPUT_NAME, OUTPUT_NAME, BatchedEmbedder, ModelInfo
from edgedml.io import atomic_path, write_json, write_with

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "edgedml-tensorrt-engine"
SIDECAR_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_BATCH = 32
MAX_BATCH = 4096
# Without --workspace: a quarter of the memory the device (or --profile) leaves free after the CUDA context.
# TensorRT's own default is the whole device memory, which on a Jetson (memory shared with the OS) can
# starve the board during a build; a quarter leaves room for the tactics' buffers of the other builds,
# the engine itself and the application, and is far above what embedding backbones need.
WORKSPACE_FRACTION = 0.25
MIN_WORKSPACE = 64 << 20
# The engine is run on the run's check images and compared with the fp32 ONNX (onnxruntime, CPU), with
# the thresholds of the ONNX precision checks (edgedml.export.precision): fp32 engines may use TF32 on
# Ampere and newer, hence 0.9999 and not 1e-6; below 0.9 an int8 model is broken, not merely lossy.
ENGINE_MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.9}
JETSON_MARKER = Path("/etc/nv_tegra_release")


def install_hint() -> str:
    if JETSON_MARKER.exists():
        return ("on a Jetson TensorRT comes with JetPack: sudo apt install python3-libnvinfer, "
                "and create the venv with --system-site-packages so that it sees it")
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
    import torch

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
            raise ConfigError(f"batch range {self.min}/{self.opt}/{self.max} must satisfy 1 <= min <= opt <= max <= {MAX_BATCH}")

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
        raise ExportError(f"TensorRT {major} is too old: edgedml builds with TensorRT 10 or newer",
                          hint="JetPack 6.1+ on a Jetson; pip install 'edgedml[tensorrt]' on a desktop")
    if major >= 11:
        return PrecisionPlan(precision, precision, True, ())
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16") if fp16_fallback else ("INT8",)}[precision]
    return PrecisionPlan(precision, "int8" if precision == "int8" else "fp32", False, flags)


def parse_workspace(text: str) -> int:
    from edgedml.budget.planner import parse_bytes

    try:
        return parse_bytes(text)
    except ConfigError:
        raise ConfigError(f"--workspace {text!r} is not a size", hint="write e.g. 512MiB or 2GiB") from None


def workspace_from_device(device: Any) -> int:
    """``WORKSPACE_FRACTION`` of what ``device`` (a ``DeviceMemory``) leaves free after the CUDA context."""
    usable = device.free_bytes - (device.cuda_context_bytes or 0)
    return max(MIN_WORKSPACE, int(usable * WORKSPACE_FRACTION) >> 20 << 20)


def resolve_workspace(workspace: str | None, profile: str | None) -> tuple[int | None, str]:
    """(bytes, where they came from) from ``--workspace``, else ``--profile``; (None, ...) means probe the device."""
    if workspace is not None:
        return parse_workspace(workspace), f"--workspace {workspace}"
    if profile is not None:
        from edgedml.budget.profiles import load_profile

        return workspace_from_device(load_profile(profile)), f"{WORKSPACE_FRACTION:.0%} of profile {profile}'s free memory"
    return None, "device"


def probe_workspace() -> tuple[int, str]:
    from edgedml.budget.probes import probe_device

    device = probe_device()
    return workspace_from_device(device), f"{WORKSPACE_FRACTION:.0%} of {device.name}'s free memory"


def default_timing_cache(tensorrt_version: str, gpu: GpuInfo) -> Path:
    """One timing cache per TensorRT version and GPU, shared by every build on this machine."""
    import os
    import re

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
        engine=bytes(memoryview(serialized)), plan=plan, batch=batch, tensorrt_version=str(trt.__version__),
        input_shape=input_shape, workspace_bytes=workspace_bytes, timing_cache=Path(timing_cache) if timing_cache else None,
        timing_cache_reused=reused, seconds=time.perf_counter() - started,
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
            raise ConfigError(f"the ONNX has a fixed batch {shape[0]}; the engine cannot take batches {batch.min}..{batch.max}")
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
        log.warning("timing cache %s is unusable (%s); starting a new one", path, str(exc).splitlines()[0] if str(exc) else exc)
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


def make_sidecar(build: EngineBuild, gpu: GpuInfo, onnx_path: Path, metadata: dict[str, str], workspace_source: str) -> dict[str, Any]:
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
    import json

    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ConfigError(
            f"{engine_path}: no {path.name} beside it, so edgedml cannot tell what GPU and TensorRT it was built for",
            hint="rebuild it on this device: edgedml export RUN_DIR --format engine",
        )
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})", hint="rebuild the engine: edgedml export RUN_DIR --format engine") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise ConfigError(f"{path}: not an edgedml engine sidecar", hint="rebuild the engine: edgedml export RUN_DIR --format engine")
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

    def __init__(self, path: str | Path, sidecar: dict[str, Any] | None = None, trt: ModuleType | None = None, device_index: int = 0):
        import torch

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such TensorRT engine", hint="build one with edgedml export RUN_DIR --format engine")
        sidecar = sidecar if sidecar is not None else read_sidecar(path)
        trt = trt or import_tensorrt()
        check_compatible(sidecar, trt.__version__, current_gpu(device_index), path)
        data = path.read_bytes()
        if sidecar.get("engine_sha256") != sha256_bytes(data):
            raise ModelError(
                f"{path}: {sidecar_path(path).name} describes another engine (rebuilt or copied without its sidecar)",
                hint="rebuild it on this device: edgedml export RUN_DIR --format engine",
            )
        self.torch = torch
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
        torch = self.torch
        count = len(batch)
        if count < self.min_batch:  # a profile whose smallest batch is above this chunk: pad it
            batch = np.concatenate([batch, np.zeros((self.min_batch - count, *batch.shape[1:]), batch.dtype)])
        stream = torch.cuda.current_stream(self.device)
        images = torch.from_numpy(batch).to(self.device, dtype=self.input_dtype)
        self.context.set_input_shape(self.input_name, tuple(images.shape))
        output = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype, device=self.device)
        self.context.set_tensor_address(self.input_name, images.data_ptr())
        self.context.set_tensor_address(self.output_name, output.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ModelError(f"{self.path}: TensorRT failed to run a batch of {len(batch)}")
        stream.synchronize()
        return output[:count].float().cpu().numpy()


def torch_dtype(trt: ModuleType, data_type: Any) -> Any:
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if data_type not in table:
        raise ModelError(f"engine tensor type {data_type} is not float32 or float16")
    return table[data_type]


# ---- the whole export -----------------------------------------------------------------------------


@dataclass
class EngineExport:
    """What ``export_engine`` wrote and measured."""

    path: Path
    sidecar: Path
    size_bytes: int
    precision: str
    onnx_path: Path
    tensorrt_version: str
    gpu: GpuInfo
    batch: BatchRange
    workspace_bytes: int | None
    workspace_source: str
    timing_cache: Path | None
    build_seconds: float
    check: dict[str, float]
    deepstream: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "sidecar": str(self.sidecar), "size_bytes": self.size_bytes, "precision": self.precision,
            "onnx": str(self.onnx_path), "tensorrt_version": self.tensorrt_version, "gpu": self.gpu.to_dict(),
            "batch": self.batch.to_dict(), "workspace_bytes": self.workspace_bytes, "workspace_source": self.workspace_source,
            "timing_cache": str(self.timing_cache) if self.timing_cache else None, "build_seconds": self.build_seconds,
            "check": self.check, "deepstream": self.deepstream,
        }


def engine_paths(run_dir: Path, out: str | Path | None) -> tuple[Path, Path]:
    """(engine, fp32 ONNX) paths: ``RUN/model.engine`` + ``RUN/model.onnx``, or ``X.engine`` + ``X.onnx``."""
    engine = Path(out) if out is not None else run_dir / "model.engine"
    if engine.suffix not in (".engine", ".plan"):
        raise ConfigError(f"--out {engine}: a TensorRT engine must end in .engine or .plan")
    return engine, engine.with_suffix(".onnx")


def export_engine(
    run_dir: str | Path,
    out: str | Path | None = None,
    half: bool = False,
    int8: bool = False,
    calib_data: str | None = None,
    batch: BatchRange | None = None,
    workspace: str | None = None,
    profile: str | None = None,
    timing_cache: str | Path | None = None,
    checkpoint: str = "best",
    opset: int | None = None,
    deepstream: bool = False,
    callbacks: Any = None,
    trt: ModuleType | None = None,
) -> EngineExport:
    """ONNX export (checked), operator check, engine build, run check against the ONNX, sidecar; optionally DeepStream configs.

    The operator check runs before ``tensorrt`` is imported, so a machine without TensorRT learns whether
    the graph will parse. The engine is written to a temporary file, run, and renamed only if it passed.
    ``callbacks`` is an ``edgedml.export.onnx.ExportCallbacks`` (progress of every step).
    """
    from edgedml.export.onnx import ExportCallbacks, export_onnx, read_metadata
    from edgedml.export.trt_ops import check_tensorrt_ops, describe

    callbacks = callbacks or ExportCallbacks()
    stage = callbacks.on_stage
    run_dir = Path(run_dir)
    engine_path, onnx_out = engine_paths(run_dir, out)
    batch = batch or BatchRange.dynamic()
    workspace_bytes, workspace_source = resolve_workspace(workspace, profile)
    precision = "int8" if int8 else "fp16" if half else "fp32"
    summary = export_onnx(
        run_dir, onnx_out, opset=opset, batch=batch.max if batch.min == batch.max else None, checkpoint=checkpoint,
        half=half, int8=int8, calib_data=calib_data, callbacks=callbacks,
    )
    stage("checking the graph against TensorRT's ONNX operators")
    for exported in summary.files.values():
        problems = check_tensorrt_ops(exported.path)
        if problems:
            raise ExportError(
                f"{exported.path}: TensorRT's ONNX parser will reject {len(problems)} node(s): {describe(problems)}",
                hint="change the backbone or the --opset; the ONNX file itself is fine for onnxruntime",
            )
    if trt is None:
        try:
            trt = import_tensorrt()
        except ExportError as exc:
            written = ", ".join(Path(f.path).name for f in summary.files.values())
            raise ExportError(f"{exc.message}; {written} written and every operator is one TensorRT 10 parses", exc.hint) from None
    gpu = current_gpu()
    plan = plan_precision(precision, tensorrt_major(trt), fp16_fallback=half and int8)
    if plan.onnx_precision not in summary.files:
        raise ExportError(f"TensorRT {trt.__version__} builds {precision} from the {plan.onnx_precision} ONNX, which was not exported")
    onnx_path = Path(summary.files[plan.onnx_precision].path)
    metadata = read_metadata(onnx_path)
    if workspace_bytes is None:
        workspace_bytes, workspace_source = probe_workspace()
    cache = Path(timing_cache) if timing_cache is not None else default_timing_cache(str(trt.__version__), gpu)
    stage(f"building the {precision} TensorRT engine (TensorRT {trt.__version__}, {gpu.name}; minutes on a Jetson)")
    build = build_engine(onnx_path, plan, batch, workspace_bytes, cache, trt=trt)
    sidecar = make_sidecar(build, gpu, onnx_path, metadata, workspace_source)
    stage("running the engine against the ONNX model")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(build.engine)
        check = check_engine(TensorRTEmbedder(tmp, sidecar=sidecar, trt=trt), Path(summary.files["fp32"].path), run_dir, precision)
        sidecar["check"] = check
    write_json(sidecar_path(engine_path), sidecar)
    result = EngineExport(
        path=engine_path, sidecar=sidecar_path(engine_path), size_bytes=len(build.engine), precision=precision,
        onnx_path=onnx_path, tensorrt_version=build.tensorrt_version, gpu=gpu, batch=batch, workspace_bytes=workspace_bytes,
        workspace_source=workspace_source, timing_cache=cache, build_seconds=build.seconds, check=check,
    )
    if deepstream:
        from edgedml.export.deepstream import write_deepstream_configs

        result.deepstream = write_deepstream_configs(
            engine_path, onnx_path, ModelInfo.from_metadata(sidecar["metadata"], str(engine_path)), precision, batch.max, workspace_bytes,
        ).to_dict()
    return result


def check_engine(embedder: TensorRTEmbedder, reference_onnx: Path, run_dir: Path, precision: str) -> dict[str, float]:
    """Cosine between the engine's and the fp32 ONNX's embeddings of the run's check images."""
    from edgedml.export.onnx import check_images
    from edgedml.export.runtime import OnnxRuntimeEmbedder

    images = check_images(run_dir).numpy()
    reference = OnnxRuntimeEmbedder(reference_onnx, ["CPUExecutionProvider"]).embed(images)
    got = embedder.embed(images)
    cosine = np.sum(got * reference, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12)
    check = {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()), "images": int(len(images))}
    if not check["min_cosine"] >= ENGINE_MIN_COSINE[precision]:
        raise ExportError(
            f"the {precision} engine disagrees with the fp32 ONNX: min cosine {check['min_cosine']:.4f} < "
            f"{ENGINE_MIN_COSINE[precision]} over {len(images)} test images; nothing was written",
            hint="build in fp32 (or fp16) instead",
        )
    return check
