"""edgedml export: ship a run's embedding model; every export is verified against PyTorch before it is written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgedml.cli.common import JsonOption, RunDirArgument, console, fail, library_errors, print_json, setup_logging
from edgedml.cli.progress import RichProgress
from edgedml.export.formats import FORMATS, INT8_TARGETS, check_export_options


def export(
    run_dir: RunDirArgument,
    format_name: Annotated[
        str,
        typer.Option(
            "--format",
            help="Target format: " + "; ".join(f"{name}: {spec.description}" for name, spec in FORMATS.items()) + ".",
        ),
    ] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", help="Output file (default: inside the run directory).")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="A fixed batch size instead of a dynamic one.")] = None,
    dynamic: Annotated[
        bool, typer.Option("--dynamic", help="Dynamic batch dimension (the default unless --batch).")
    ] = False,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default: the exporter's).")] = None,
    half: Annotated[
        bool, typer.Option("--half", help="Also write an fp16 ONNX (model.fp16.onnx); engine: fp16.")
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Also write an int8 Q/DQ ONNX (model.int8.onnx), calibrated on --calib-data; engine: int8."
        ),
    ] = False,
    calib_data: Annotated[
        str | None,
        typer.Option(
            "--calib-data", help="int8 calibration images: a data spec like --data (default: the run's training split)."
        ),
    ] = None,
    int8_for: Annotated[
        str | None,
        typer.Option(
            "--int8-for",
            help=(
                f"onnx: {' | '.join(INT8_TARGETS)}: tensorrt (symmetric, the default; also runs on onnxruntime), "
                "cpu (U8S8: onnxruntime's fast x86 path; TensorRT rejects it)."
            ),
        ),
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option("--max-batch", help="engine: largest batch of the dynamic profile (default 32).")
    ] = None,
    workspace: Annotated[
        str | None,
        typer.Option(
            "--workspace", help="engine: TensorRT workspace, e.g. 512MiB (default: 25% of the free device memory)."
        ),
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="engine: device profile whose free memory sets the workspace.")
    ] = None,
    timing_cache: Annotated[
        Path | None,
        typer.Option(
            "--timing-cache",
            help=(
                "engine: timing cache file reused across builds "
                "(default: per GPU and TensorRT version under ~/.cache/edgedml)."
            ),
        ),
    ] = None,
    deepstream: Annotated[
        bool, typer.Option("--deepstream", help="engine: also write DeepStream nvinfer and tracker ReID configs.")
    ] = False,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best | last.")] = "best",
    json_output: JsonOption = False,
) -> None:
    """Export a trained run's embedding model (base head only) and verify it."""
    setup_logging()
    given = {
        "batch": batch,
        "dynamic": dynamic,
        "opset": opset,
        "half": half,
        "int8": int8,
        "calib_data": calib_data,
        "int8_for": int8_for,
        "max_batch": max_batch,
        "workspace": workspace,
        "profile": profile,
        "timing_cache": timing_cache,
        "deepstream": deepstream,
    }
    with library_errors():
        check_export_options(format_name, given)
    if format_name == "engine":
        _export_engine(
            run_dir,
            out,
            batch,
            max_batch,
            opset,
            half,
            int8,
            calib_data,
            workspace,
            profile,
            timing_cache,
            checkpoint,
            deepstream,
            json_output,
        )
        return
    _export_onnx(run_dir, out, opset, batch, checkpoint, half, int8, calib_data, json_output, int8_for or "tensorrt")


def _export_onnx(
    run_dir: Path,
    out: Path | None,
    opset: int | None,
    batch: int | None,
    checkpoint: str,
    half: bool,
    int8: bool,
    calib_data: str | None,
    json_output: bool,
    int8_for: str = "tensorrt",
) -> None:
    from edgedml.export.onnx import export_onnx

    try:
        with library_errors(), RichProgress(hidden=json_output) as progress:
            summary = export_onnx(
                run_dir,
                out,
                opset=opset,
                batch=batch,
                checkpoint=checkpoint,
                half=half,
                int8=int8,
                calib_data=calib_data,
                progress=progress,
                int8_for=int8_for,
            )
    except KeyboardInterrupt:
        fail("interrupted: nothing was written, earlier exports are untouched", code=130)
    if json_output:
        print_json(summary.to_dict())
        return
    console.print(export_table(summary))
    if summary.reference is not None:
        console.print(
            f"Recall@1 and MAP@R on the {summary.test_images} images of the run's unseen test classes", soft_wrap=True
        )
    if summary.calibration is not None:
        calibration = summary.calibration
        origin = escape(calibration.data) + (" (the run's training split)" if calibration.split == "train" else "")
        if calibration.default:
            origin += ", the default without --calib-data"
        target = (
            "TensorRT and onnxruntime"
            if calibration.int8_for == "tensorrt"
            else "onnxruntime on a CPU (U8S8; TensorRT rejects it)"
        )
        console.print(f"int8 for {target}, calibrated on {calibration.images} images of {origin}", soft_wrap=True)
    final = list(summary.files.values())[-1]
    console.print(
        f"exported {escape(str(final.path))} ({final.size_bytes / 2**20:.2f} MiB); "
        f"summary in {escape(str(summary.summary_path))}\n"
        f"next: edgedml bench {escape(str(final.path))}",
        soft_wrap=True,
    )


def export_table(summary) -> Table:
    """One row per exported file (precision, file, size, worst check, Recall@1, MAP@R) under PyTorch's reference row."""
    table = Table(
        title=f"exported in {summary.seconds:.1f} s; checked against PyTorch on {summary.checked_images} test images",
        title_justify="left",
    )
    for column in ("precision", "file", "size", "check (worst)", "Recall@1", "MAP@R"):
        table.add_column(column, justify="right" if column in ("size", "Recall@1", "MAP@R") else "left", no_wrap=True)
    if summary.reference is not None:
        table.add_row(
            "PyTorch",
            escape(summary.run_dir.name),
            "",
            "reference",
            f"{summary.reference['recall_at_1']:.4f}",
            f"{summary.reference['map_at_r']:.4f}",
        )
    for exported in summary.files.values():
        check = exported.check
        passed = f"|Δ| {check['max_abs_diff']:.1e}" if "max_abs_diff" in check else f"cos {check['min_cosine']:.6f}"
        scores = (
            ("", "") if exported.recall_at_1 is None else (f"{exported.recall_at_1:.4f}", f"{exported.map_at_r:.4f}")
        )
        table.add_row(
            exported.precision, escape(exported.path.name), f"{exported.size_bytes / 2**20:.2f} MiB", passed, *scores
        )
    return table


def _export_engine(
    run_dir: Path,
    out: Path | None,
    batch: int | None,
    max_batch: int | None,
    opset: int | None,
    half: bool,
    int8: bool,
    calib_data: str | None,
    workspace: str | None,
    profile: str | None,
    timing_cache: Path | None,
    checkpoint: str,
    deepstream: bool,
    json_output: bool,
) -> None:
    from edgedml.export.engine import export_engine
    from edgedml.export.tensorrt import BatchRange

    with library_errors():
        batch_range = (
            BatchRange.fixed(batch)
            if batch is not None
            else BatchRange.dynamic(max_batch)
            if max_batch
            else BatchRange.dynamic()
        )
        with RichProgress(hidden=json_output) as progress:
            result = export_engine(
                run_dir,
                out,
                half=half,
                int8=int8,
                calib_data=calib_data,
                batch=batch_range,
                workspace=workspace,
                profile=profile,
                timing_cache=timing_cache,
                checkpoint=checkpoint,
                opset=opset,
                deepstream=deepstream,
                progress=progress,
            )
    if json_output:
        print_json(result.to_dict())
        return
    batches = (
        f"batch {result.batch.max}"
        if result.batch.min == result.batch.max
        else f"batch {result.batch.min}..{result.batch.max}"
    )
    console.print(
        f"built {escape(str(result.path))} ({result.size_bytes / 2**20:.2f} MiB, {result.precision}, {batches}) "
        f"in {result.build_seconds:.1f} s "
        f"with TensorRT {result.tensorrt_version} on {escape(result.gpu.name)}; min cosine to the fp32 ONNX "
        f"{result.check['min_cosine']:.5f} on {result.check['images']} test images; "
        f"sidecar {escape(result.sidecar.name)}",
        soft_wrap=True,
    )
    if result.deepstream:
        console.print(
            f"DeepStream: {escape(result.deepstream['nvinfer'])}, {escape(result.deepstream['tracker'])} "
            f"(net-scale-factor {result.deepstream['net_scale_factor']:.8f}; "
            f"inputs within {result.deepstream['max_relative_input_error']:.2%} of training's)",
            soft_wrap=True,
        )
    console.print(
        f"next: edgedml bench {escape(str(result.path))}   "
        f"(this engine runs only on {escape(result.gpu.name)} with TensorRT {result.tensorrt_version})",
        soft_wrap=True,
    )
