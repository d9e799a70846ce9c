"""edgedml search: the nearest gallery images of query images, with the model that built the index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgedml.cli.common import JsonOption, RerankOption, console, fail, library_errors, print_json, setup_logging
from edgedml.cli.index import CollectionOption, DeviceOption, RuntimeOption


def search(
    index_dir: Annotated[
        str,
        typer.Argument(
            help="An index written by edgedml index: its folder, or a Milvus PATH.db / http://HOST:19530 URI.",
            show_default=False,
        ),
    ],
    images: Annotated[list[Path], typer.Argument(help="Query image files.", show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Results per query.")] = 10,
    model: Annotated[
        Path | None, typer.Option("--model", help="The index's model at another location (checked against the index).")
    ] = None,
    nprobe: Annotated[int | None, typer.Option("--nprobe", help="IVF cells to scan (default: the index's).")] = None,
    runtime: RuntimeOption = None,
    device: DeviceOption = "cpu",
    rerank: RerankOption = "none",
    collection: CollectionOption = None,
    show: Annotated[
        Path | None,
        typer.Option(
            "--show",
            help="Also draw the results into this picture (.png, .jpg, .svg, .pdf): a row per query, its hits "
            "framed green when their label is the query's, red when not. A query's label is the name of its "
            "folder (.../<label>/<file>) when the index has that label; otherwise its hits are framed grey.",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Search an index with query images: the top-k gallery images with their paths, labels and cosine scores
    (or re-ranked scores, with --rerank)."""
    setup_logging()
    if top_k < 1:
        fail(f"--top-k {top_k} must be at least 1", code=2)
    from edgedml.retrieval.rerank import Rerank
    from edgedml.retrieval.search import Searcher

    with library_errors():
        settings = Rerank.parse(rerank)  # before any work
        if show is not None:
            from edgedml.retrieval.pictures import check_picture_path, write_search_grid

            check_picture_path(show, "--show")  # before any work
        searcher = Searcher.open(index_dir, model, runtime, device, collection=collection)
        results = searcher.search(images, top_k, nprobe, rerank=settings)
        if show is not None:
            write_search_grid(results, searcher.index, images, show)
    if json_output:
        print_json([result.to_dict() for result in results])
        return
    reranked = "" if rerank == "none" else f", re-ranked ({rerank})"
    for result in results:
        table = Table(title=escape(f"{result.query}: top {len(result.hits)}{reranked}"), title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("score", justify="right")
        table.add_column("label")
        table.add_column("path", overflow="fold")
        table.add_column("id", justify="right")
        for hit in result.hits:
            table.add_row(str(hit.rank), f"{hit.score:.4f}", escape(hit.label), escape(hit.path), str(hit.id))
        console.print(table)
    if show is not None:
        console.print(f"drew the results in {escape(str(show))}")
