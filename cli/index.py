"""edgedml index: embed a gallery with an exported model into a FAISS index folder or a Milvus collection."""

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
CollectionOption = Annotated[
    str | None,
    typer.Option("--collection", help="The Milvus collection (an alias) of a Milvus index (default: gallery)."),
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
    out: Annotated[
        Path | None, typer.Option("--out", help="The index directory (--backend faiss).", show_default=False)
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            "--split", help="all | test | val | train: test = the classes the model never saw, split as its run did."
        ),
    ] = "all",
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="faiss (an index folder, --out) | milvus (a collection, --uri); default: faiss, "
            "milvus when --uri is given.",
        ),
    ] = None,
    uri: Annotated[
        str | None,
        typer.Option(
            "--uri",
            help="Milvus: PATH.db (Milvus Lite, embedded) or http://HOST:19530 (a standalone server or cluster; "
            "token from $MILVUS_TOKEN).",
            show_default=False,
        ),
    ] = None,
    collection: CollectionOption = None,
    index_type: Annotated[
        str | None,
        typer.Option(
            "--index-type",
            help="flat (exact, default) | ivf | ivfpq (compressed, for large galleries; not in Milvus Lite) | hnsw "
            "(a graph: fast, no training).",
        ),
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
    hnsw_m: Annotated[int | None, typer.Option("--hnsw-m", help="HNSW links per vector (default 32).")] = None,
    ef_construction: Annotated[
        int | None, typer.Option("--ef-construction", help="HNSW candidates while building (default 100).")
    ] = None,
    ef_search: Annotated[
        int | None, typer.Option("--ef-search", help="HNSW candidates a query explores (default 64, at least top-k).")
    ] = None,
    append: Annotated[
        bool,
        typer.Option("--append", help="Add the gallery's new images to the index (nothing is re-embedded)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the index (kept until the new one is complete).")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per model call.")] = 64,
    runtime: RuntimeOption = None,
    device: DeviceOption = "cpu",
    json_output: JsonOption = False,
) -> None:
    """Index a gallery: embed its images with the model into a FAISS index folder (--out) or a Milvus collection
    (--uri), with a manifest of paths and labels."""
    setup_logging()
    if batch_size < 1:
        fail(f"--batch-size {batch_size} must be at least 1", code=2)
    if append and overwrite:
        fail("--append and --overwrite exclude each other", hint="give one of them", code=2)
    if out is not None and uri is not None:
        fail("--out (a FAISS folder) and --uri (Milvus) exclude each other", hint="give one of them", code=2)
    if backend == "milvus" and uri is None:
        fail("--backend milvus needs --uri", hint="--uri gallery.db (Milvus Lite) or --uri http://HOST:19530", code=2)
    if uri is None and out is None:
        fail("give --out DIR (a FAISS index folder) or --uri (a Milvus database)", code=2)
    from edgedml.retrieval.index import build_index

    location = uri if uri is not None else out

    mode = "append" if append else "overwrite" if overwrite else "new"
    try:
        with library_errors(), RichProgress(hidden=json_output) as progress:
            summary = build_index(
                model,
                gallery,
                location,
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
                hnsw_m=hnsw_m,
                ef_construction=ef_construction,
                ef_search=ef_search,
                collection=collection,
                backend=backend,
            )
    except KeyboardInterrupt:
        kept = f"{out}/.partial" if uri is None else "rows no search sees until the build is committed"
        fail(
            f"interrupted: the index at {location} is unchanged; embedded chunks are kept ({kept})",
            hint="run the same command again to resume",
            code=130,
        )
    if json_output:
        print_json(summary.to_dict())
        return
    resumed = f", {summary.resumed:,} resumed from an interrupted run" if summary.resumed else ""
    rate = f" at {summary.embedded_per_s:,.0f} images/s" if summary.embedded_per_s else ""
    size = f", {summary.bytes_per_vector:,.1f} bytes per vector" if summary.bytes_per_vector is not None else ""
    console.print(
        f"indexed {summary.added:,} new image(s){resumed}{rate}: {escape(str(summary.path))} holds {summary.count:,} "
        f"{summary.dim}-d vectors, {index_kind(summary.index)} index{size}",
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
    where = str(summary.path) if uri is None else f"{uri} --collection {summary.collection}"
    console.print(f"next: edgedml search {escape(where)} QUERY.png --top-k 10", soft_wrap=True, highlight=False)


def index_kind(params: dict) -> str:
    """``flat``, ``ivf (nlist 64, nprobe 4)``, ``hnsw (M 32, efConstruction 100, ef 64)``..."""
    if params["type"] == "hnsw":
        return f"hnsw (M {params['hnsw_m']}, efConstruction {params['ef_construction']}, ef {params['ef_search']})"
    if params["type"] == "flat":
        return "flat"
    codes = f", {params['pq_m']} x {params['pq_bits']}-bit codes" if params["pq_m"] else ""
    return f"{params['type']} (nlist {params['nlist']}, nprobe {params['nprobe']}{codes})"
