"""edgedml bench: latency percentiles and throughput of a model on one runtime, after a warm-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from edgedml.cli.common import JsonOption, console, fail, library_errors, print_json, setup_logging
from edgedml.cli.progress import RichProgress
from edgedml.io import check_output_file, write_json


def bench(
    model: Annotated[
        Path,
        typer.Argument(
            help="A run directory (PyTorch), an .onnx file (onnxruntime) or a TensorRT .engine/.plan.",
            show_default=False,
        ),
    ],
    runtime: Annotated[
        str | None, typer.Option("--runtime", help="torch | onnxruntime | tensorrt (default: what MODEL needs).")
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option("--batch", help="Comma-separated batch sizes (default 1,8,32; a fixed-batch model: its own)."),
    ] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls per batch size before timing.")] = 5,
    iters: Annotated[int | None, typer.Option("--iters", help="Timed calls per batch size.")] = None,
    seconds: Annotated[
        float | None,
        typer.Option("--seconds", help="Time each batch size this long instead (at least 10 calls; default 2)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="CPU threads for PyTorch and onnxruntime alike (default: each runtime's own)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda.")] = "cpu",
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result to this JSON file.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Time a model: p50/p90/p99 latency per batch and images/s, after a warm-up."""
    setup_logging()
    from edgedml.export.bench import BenchPlan, open_model, parse_batches
    from edgedml.export.bench import bench as run_bench

    with library_errors():
        if out is not None:
            check_output_file(out)  # before anything is timed: the measurements are not lost to a bad path
        batches = parse_batches(batch) if batch is not None else None
        plan = BenchPlan(warmup=warmup, iterations=iters, seconds=seconds)
        embedder = open_model(model, runtime, device, threads)
        try:
            with RichProgress(hidden=json_output) as progress:
                result = run_bench(embedder, batches, plan, threads, device, progress=progress)
        except KeyboardInterrupt:
            fail("interrupted; nothing was written", code=130)
    data = result.to_dict()
    if out is not None:
        write_json(out, data)
    if json_output:
        print_json(data)
        return
    console.print(results_table(data))
    if out is not None:
        console.print(f"written to {escape(str(out))}", soft_wrap=True)


def results_table(data: dict[str, Any]) -> Table:
    threads = {None: "default threads", 1: "1 thread"}.get(data["threads"], f"{data['threads']} threads")
    title = f"{data['model']} on {data['device']}, {threads}, {data['warmup']} warm-up calls per batch"
    table = Table(
        title=escape(title),
        title_justify="left",
        box=box.HORIZONTALS,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for name in ("runtime", "precision", "batch", "calls", "p50 ms", "p90 ms", "p99 ms", "mean ms", "images/s"):
        table.add_column(name, justify="left" if name in ("runtime", "precision") else "right")
    for timing in data["timings"]:
        table.add_row(
            data["runtime"],
            data["precision"],
            str(timing["batch"]),
            str(timing["iterations"]),
            *(f"{timing[key]:.2f}" for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")),
            f"{timing['images_per_s']:.1f}",
        )
    return table
