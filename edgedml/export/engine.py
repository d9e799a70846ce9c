"""The whole TensorRT export of a run: checked ONNX, operator check, engine build, checked write, DeepStream.

``export_engine`` reads as its steps: ``_export_checked_onnx`` (the ONNX files of the precision asked
for, checked against PyTorch, and TensorRT's parser rules checked on the CPU, before ``tensorrt`` is
imported, so a machine without TensorRT learns whether the graph will parse), ``build_engine``
(:mod:`edgedml.export.tensorrt`), ``_write_checked_engine`` (the engine is written to a temporary file,
run against the fp32 ONNX and renamed only if it agrees; then its sidecar), and, if asked,
``write_deepstream_configs``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from edgedml.budget.device import DeviceMemory
from edgedml.budget.probes import probe_device
from edgedml.budget.profiles import load_profile
from edgedml.errors import ConfigError, ExportError
from edgedml.export.deepstream import write_deepstream_configs
from edgedml.export.load import ENGINE_SUFFIXES
from edgedml.export.onnx import ExportSummary, check_images, export_onnx, read_metadata
from edgedml.export.runtime import ModelInfo, OnnxRuntimeEmbedder, check_agreement
from edgedml.export.tensorrt import (
    BatchRange,
    EngineBuild,
    GpuInfo,
    PrecisionPlan,
    TensorRTEmbedder,
    build_engine,
    current_gpu,
    default_timing_cache,
    import_tensorrt,
    make_sidecar,
    plan_precision,
    sidecar_path,
    tensorrt_major,
)
from edgedml.export.trt_ops import check_tensorrt_ops, describe
from edgedml.io import atomic_path, check_output_file, write_json
from edgedml.progress import SILENT, Progress
from edgedml.units import parse_bytes

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


def workspace_from_device(device: DeviceMemory) -> int:
    """``WORKSPACE_FRACTION`` of what ``device`` leaves free after the CUDA context."""
    usable = device.free_bytes - (device.cuda_context_bytes or 0)
    return max(MIN_WORKSPACE, int(usable * WORKSPACE_FRACTION) >> 20 << 20)


def resolve_workspace(workspace: str | None, profile: str | None) -> tuple[int | None, str]:
    """(bytes, where they came from) from ``--workspace``, else ``--profile``; (None, ...) means probe the device."""
    if workspace is not None:
        return parse_bytes(workspace, "--workspace"), f"--workspace {workspace}"
    if profile is not None:
        return workspace_from_device(
            load_profile(profile)
        ), f"{WORKSPACE_FRACTION:.0%} of profile {profile}'s free memory"
    return None, "device"


def probe_workspace() -> tuple[int, str]:
    device = probe_device()
    return workspace_from_device(device), f"{WORKSPACE_FRACTION:.0%} of {device.name}'s free memory"


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
            "path": str(self.path),
            "sidecar": str(self.sidecar),
            "size_bytes": self.size_bytes,
            "precision": self.precision,
            "onnx": str(self.onnx_path),
            "tensorrt_version": self.tensorrt_version,
            "gpu": self.gpu.to_dict(),
            "batch": self.batch.to_dict(),
            "workspace_bytes": self.workspace_bytes,
            "workspace_source": self.workspace_source,
            "timing_cache": str(self.timing_cache) if self.timing_cache else None,
            "build_seconds": self.build_seconds,
            "check": self.check,
            "deepstream": self.deepstream,
        }


def engine_paths(run_dir: Path, out: str | Path | None) -> tuple[Path, Path]:
    """(engine, fp32 ONNX) paths: ``RUN/model.engine`` + ``RUN/model.onnx``, or ``X.engine`` + ``X.onnx``."""
    engine = Path(out) if out is not None else run_dir / "model.engine"
    if engine.suffix not in ENGINE_SUFFIXES:
        raise ConfigError(f"--out {engine}: a TensorRT engine must end in .engine or .plan")
    check_output_file(engine)
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
    progress: Progress = SILENT,
    trt: ModuleType | None = None,
) -> EngineExport:
    """Export ``run_dir``'s model as a TensorRT engine for this GPU: the module docstring lists the steps."""
    run_dir = Path(run_dir)
    engine_path, onnx_out = engine_paths(run_dir, out)
    batch = batch or BatchRange.dynamic()
    workspace_bytes, workspace_source = resolve_workspace(workspace, profile)
    precision = "int8" if int8 else "fp16" if half else "fp32"
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    # The ONNX files are made in a scratch folder beside the engine and moved into place (export.json last)
    # only once the engine is written and checked: a failed engine export changes no earlier export.
    with tempfile.TemporaryDirectory(prefix=f".{engine_path.name}.", dir=engine_path.parent) as scratch:
        staged = Path(scratch) / onnx_out.name
        summary = _export_checked_onnx(run_dir, staged, batch, checkpoint, half, int8, calib_data, opset, progress)
        trt = trt or _tensorrt_after(summary)
        gpu = current_gpu()
        plan = plan_precision(precision, tensorrt_major(trt), fp16_fallback=half and int8)
        staged_onnx = _onnx_for(plan, summary, str(trt.__version__))
        onnx_path = onnx_out.parent / staged_onnx.name
        if workspace_bytes is None:
            workspace_bytes, workspace_source = probe_workspace()
        cache = Path(timing_cache) if timing_cache is not None else default_timing_cache(str(trt.__version__), gpu)
        progress.stage(
            f"building the {precision} TensorRT engine (TensorRT {trt.__version__}, {gpu.name}; minutes on a Jetson)"
        )
        build = build_engine(staged_onnx, plan, batch, workspace_bytes, cache, trt=trt)
        sidecar = make_sidecar(build, gpu, onnx_path, read_metadata(staged_onnx), workspace_source)
        progress.stage("running the engine against the ONNX model")
        check = _write_checked_engine(engine_path, build, sidecar, trt, summary.path, run_dir)
        _move_onnx_into_place(summary, onnx_out.parent)
    result = EngineExport(
        path=engine_path,
        sidecar=sidecar_path(engine_path),
        size_bytes=len(build.engine),
        precision=precision,
        onnx_path=onnx_path,
        tensorrt_version=build.tensorrt_version,
        gpu=gpu,
        batch=batch,
        workspace_bytes=workspace_bytes,
        workspace_source=workspace_source,
        timing_cache=cache,
        build_seconds=build.seconds,
        check=check,
    )
    if deepstream:
        info = ModelInfo.from_metadata(sidecar["metadata"], str(engine_path))
        result.deepstream = write_deepstream_configs(
            engine_path, onnx_path, info, precision, batch.max, workspace_bytes
        ).to_dict()
    return result


def _export_checked_onnx(
    run_dir: Path,
    onnx_out: Path,
    batch: BatchRange,
    checkpoint: str,
    half: bool,
    int8: bool,
    calib_data: str | None,
    opset: int | None,
    progress: Progress,
) -> ExportSummary:
    """The ONNX files the engine is built from (checked against PyTorch), and TensorRT's operator rules on each."""
    summary = export_onnx(
        run_dir,
        onnx_out,
        opset=opset,
        batch=batch.max if batch.min == batch.max else None,
        checkpoint=checkpoint,
        half=half,
        int8=int8,
        calib_data=calib_data,
        progress=progress,
    )
    progress.stage("checking the graph against TensorRT's ONNX operators")
    for exported in summary.files.values():
        problems = check_tensorrt_ops(exported.path)
        if problems:
            raise ExportError(
                f"{exported.path}: TensorRT's ONNX parser will reject {len(problems)} node(s): {describe(problems)}",
                hint="change the backbone or the --opset; the ONNX file itself is fine for onnxruntime",
            )
    return summary


def _tensorrt_after(summary: ExportSummary) -> ModuleType:
    """``tensorrt``, or an error that also says that the graph would parse (nothing is written)."""
    try:
        return import_tensorrt()
    except ExportError as exc:
        raise ExportError(
            f"{exc.message}; nothing was written, and every operator of the exported graph is one TensorRT 10 parses",
            f"{exc.hint}; or export ONNX here (--format onnx) and build the engine on the device",
        ) from None


def _move_onnx_into_place(summary: ExportSummary, folder: Path) -> None:
    """The staged ONNX files to ``folder``, then their export.json naming the files where they now are."""
    for exported in summary.files.values():
        final = folder / exported.path.name
        os.replace(exported.path, final)
        exported.path = final
    summary.summary_path = folder / summary.summary_path.name
    write_json(summary.summary_path, summary.to_dict())


def _onnx_for(plan: PrecisionPlan, summary: ExportSummary, tensorrt_version: str) -> Path:
    if plan.onnx_precision not in summary.files:
        raise ExportError(
            f"TensorRT {tensorrt_version} builds {plan.precision} from the {plan.onnx_precision} ONNX, "
            "which was not exported"
        )
    return Path(summary.files[plan.onnx_precision].path)


def _write_checked_engine(
    engine_path: Path, build: EngineBuild, sidecar: dict[str, Any], trt: ModuleType, reference_onnx: Path, run_dir: Path
) -> dict[str, float]:
    """Write the engine to a temporary file, run it against the fp32 ONNX, rename it only if it agrees.

    Then write the sidecar.
    """
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(build.engine)
        check = check_engine(
            TensorRTEmbedder(tmp, sidecar=sidecar, trt=trt), reference_onnx, run_dir, build.plan.precision
        )
        sidecar["check"] = check
    write_json(sidecar_path(engine_path), sidecar)
    return check


def check_engine(embedder: TensorRTEmbedder, reference_onnx: Path, run_dir: Path, precision: str) -> dict[str, float]:
    """Cosine between the engine's and the fp32 ONNX's embeddings of the run's check images."""
    images = check_images(run_dir).numpy()
    reference = OnnxRuntimeEmbedder.on_cpu(reference_onnx).embed(images)
    check = check_agreement(
        embedder.embed(images),
        reference,
        ENGINE_MIN_COSINE[precision],
        f"the {precision} engine disagrees with the fp32 ONNX",
        "build in fp32 (or fp16) instead",
    )
    return {**check, "images": len(images)}
