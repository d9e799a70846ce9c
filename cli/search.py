"""edgedml search: the nearest gallery images of query images, with the model that built the index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgedml.cli.common import JsonOption, console, fail, library_errors, print_json, setup_logging
from edgedml.cli.index import DeviceOption, RuntimeOption


def search(
    index_dir: Annotated[Path, typer.Argument(help="An index directory written by edgedml index.", show_default=False)],
    images: Annotated[list[Path], typer.Argument(help="Query image files.", show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Results per query.")] = 10,
    model: Annotated[
        Path | None, typer.Option("--model", help="The index's model at another location (checked against the index).")
    ] = None,
    nprobe: Annotated[int | None, typer.Option("--nprobe", help="IVF cells to scan (default: the index's).")] = None,
    runtime: RuntimeOption = None,
    device: DeviceOption = "cpu",
    json_output: JsonOption = False,
) -> None:
    """Search an index with query images: the top-k gallery images with their paths, labels and cosine scores."""
    setup_logging()
    if top_k < 1:
        fail(f"--top-k {top_k} must be at least 1", code=2)
    from edgedml.retrieval.search import search as search_index

    with library_errors():
        results = search_index(
            index_dir, images, top_k=top_k, model=model, nprobe=nprobe, runtime=runtime, device=device
        )
    if json_output:
        print_json([result.to_dict() for result in results])
        return
    for result in results:
        table = Table(title=escape(f"{result.query}: top {len(result.hits)}"), title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("score", justify="right")
        table.add_column("label")
        table.add_column("path", overflow="fold")
        table.add_column("id", justify="right")
        for hit in result.hits:
            table.add_row(str(hit.rank), f"{hit.score:.4f}", escape(hit.label), escape(hit.path), str(hit.id))
        console.print(table)
