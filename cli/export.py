"""edgedml export: ship a run's embedding model; every export is verified against PyTorch before it is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgedml.cli.common import JsonOption, RunDirArgument, console, fail, library_errors, print_json, setup_logging


@dataclass(frozen=True)
class Format:
    suffix: str
    options: frozenset[str]  # the options this format accepts besides --out and --checkpoint
    description: str


# Checked before any work starts (as Ultralytics does): an option a format cannot use is an error.
FORMATS = {
    "onnx": Format(".onnx", frozenset({"batch", "dynamic", "opset"}), "ONNX, fp32, dynamic batch, checked with onnxruntime (max |Δ| <= 1e-4)"),
}


def export(
    run_dir: RunDirArgument,
    format_name: Annotated[str, typer.Option("--format", help="Target format: " + ", ".join(FORMATS) + ".")] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", help="Output file (default: inside the run directory).")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="A fixed batch size instead of a dynamic one.")] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Dynamic batch dimension (the default unless --batch).")] = False,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default: the exporter's).")] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best | last.")] = "best",
    json_output: JsonOption = False,
) -> None:
    """Export a trained run's embedding model (base head only) and verify it."""
    setup_logging()
    spec = FORMATS.get(format_name)
    if spec is None:
        fail(f"--format {format_name!r} is not one of {', '.join(FORMATS)}", hint="edgedml export --help lists them", code=2)
    given = {name for name, value in (("batch", batch), ("dynamic", dynamic or None), ("opset", opset)) if value is not None}
    unsupported = sorted(given - spec.options)
    if unsupported:
        fail(f"--format {format_name} does not take --{', --'.join(unsupported)}", code=2)
    if batch is not None and dynamic:
        fail("--batch and --dynamic exclude each other", hint="give one of them", code=2)
    from edgedml.export.onnx import export_onnx

    with library_errors():
        result = export_onnx(run_dir, out, opset=opset, batch=batch, checkpoint=checkpoint)
    if json_output:
        print_json(result.to_dict())
        return
    console.print(
        f"exported {escape(str(result.path))} ({result.size_bytes / 2**20:.2f} MiB) in {result.seconds:.1f} s; "
        f"onnxruntime matches PyTorch on {result.checked_images} test images (max |Δ| {result.max_abs_diff:.1e})",
        soft_wrap=True,
    )
    console.print(f"next: python -c \"import onnxruntime as ort; ort.InferenceSession('{escape(str(result.path))}')\"", soft_wrap=True)
