"""edgedml index: embed a gallery with an exported model into a FAISS index plus a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgedml.cli.common import JsonOption, console, fail, library_errors, print_json, setup_logging
from edgedml.cli.progress import RichProgress

ModelArgument = Annotated[
    Path, typer.Argument(help="An exported model (.onnx, TensorRT .engine) or a run directory.", show_default=False)
]
RuntimeOption = Annotated[
    str | None, typer.Option("--runtime", help="torch | onnxruntime | tensorrt (default: the file's).")
]
DeviceOption = Annotated[
    str, typer.Option("--device", help="cpu | cuda: where the model runs, and FAISS if it has GPU support.")
]


def index(
    model: ModelArgument,
    gallery: Annotated[
        str,
        typer.Option(
            "--gallery",
            help=(
                "Images to index: digits, glyphs, an image folder (root/<class>/<image>) or a CSV (path,label[,split])."
            ),
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="The index directory.", show_default=False)],
    split: Annotated[
        str,
        typer.Option(
            "--split", help="all | test | val | train: test = the classes the model never saw, split as its run did."
        ),
    ] = "all",
    index_type: Annotated[
        str | None,
        typer.Option("--index-type", help="flat (exact, default) | ivf | ivfpq (compressed, for large galleries)."),
    ] = None,
    nlist: Annotated[int | None, typer.Option("--nlist", help="IVF cells (default about 4 * sqrt(N)).")] = None,
    nprobe: Annotated[
        int | None, typer.Option("--nprobe", help="IVF cells a query scans (default 4); search can override it.")
    ] = None,
    pq_m: Annotated[
        int | None,
        typer.Option(
            "--pq-m",
            help=(
                "IVF-PQ bytes per vector: sub-quantizers, dividing the dimension "
                "(default: one per dimension, at most 64)."
            ),
        ),
    ] = None,
    append: Annotated[
        bool,
        typer.Option("--append", help="Add the gallery's new images to the index in --out (nothing is re-embedded)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the index in --out (kept until the new one is complete).")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per model call.")] = 64,
    runtime: RuntimeOption = None,
    device: DeviceOption = "cpu",
    json_output: JsonOption = False,
) -> None:
    """Index a gallery: embed its images with the model, write a FAISS index and a manifest of paths and labels."""
    setup_logging()
    if batch_size < 1:
        fail(f"--batch-size {batch_size} must be at least 1", code=2)
    if append and overwrite:
        fail("--append and --overwrite exclude each other", hint="give one of them", code=2)
    from edgedml.retrieval.index import build_index

    mode = "append" if append else "overwrite" if overwrite else "new"
    try:
        with library_errors(), RichProgress(hidden=json_output) as progress:
            summary = build_index(
                model,
                gallery,
                out,
                split=split,
                index_type=index_type,
                nlist=nlist,
                nprobe=nprobe,
                pq_m=pq_m,
                mode=mode,
                batch_size=batch_size,
                runtime=runtime,
                device=device,
                progress=progress,
            )
    except KeyboardInterrupt:
        fail(
            f"interrupted: the index in {out} is unchanged; embedded chunks are kept in {out}/.partial",
            hint="run the same command again to resume",
            code=130,
        )
    if json_output:
        print_json(summary.to_dict())
        return
    params = summary.index
    kind = params["type"] + (
        f" (nlist {params['nlist']}, nprobe {params['nprobe']}"
        + (f", {params['pq_m']} x {params['pq_bits']}-bit codes" if params["pq_m"] else "")
        + ")"
        if params["type"] != "flat"
        else ""
    )
    resumed = f", {summary.resumed:,} resumed from an interrupted run" if summary.resumed else ""
    rate = f" at {summary.embedded_per_s:,.0f} images/s" if summary.embedded_per_s else ""
    console.print(
        f"indexed {summary.added:,} new image(s){resumed}{rate}: {escape(str(summary.path))} holds {summary.count:,} "
        f"{summary.dim}-d vectors, {kind} index, {summary.bytes_per_vector:,.1f} bytes per vector",
        soft_wrap=True,
        highlight=False,
    )
    if summary.skipped:
        shown = ", ".join(summary.skipped[:5]) + (
            f" and {len(summary.skipped) - 5} more" if len(summary.skipped) > 5 else ""
        )
        console.print(
            f"skipped {len(summary.skipped)} unreadable image(s): {escape(shown)}", soft_wrap=True, highlight=False
        )
    console.print(
        f"next: edgedml search {escape(str(summary.path))} QUERY.png --top-k 10", soft_wrap=True, highlight=False
    )
