"""What every command shares: the console, error rendering, logging set-up, result rendering."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgedml.errors import EdgedmlError

console = Console()
err_console = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]
DataOption = Annotated[
    str | None,
    typer.Option(
        "--data", help="digits, glyphs, an image folder (root/<class>/<image>) or a CSV manifest (path,label[,split])."
    ),
]
RunDirArgument = Annotated[Path, typer.Argument(help="A run directory written by edgedml train.", show_default=False)]
RerankOption = Annotated[
    str,
    typer.Option(
        "--rerank",
        help=(
            "none | qe: α-query expansion (the query plus its top 2 hits weighted by score^3, searched again: "
            "one more search) | kreciprocal: k-reciprocal re-ranking of the top 100 hits (Zhong et al. 2017: "
            "Jaccard distance of k-reciprocal neighbour sets, k1 20, k2 6, λ 0.3; two index searches per hit, "
            "some 50 times a plain search). Re-ranked scores are no longer cosines."
        ),
    ),
]


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def library_errors() -> Iterator[None]:
    """Turn the library's typed errors into one red line, a hint and a non-zero exit."""
    try:
        yield
    except EdgedmlError as exc:
        fail(exc.message, exc.hint, exc.exit_code)


def setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    logger = logging.getLogger("edgedml")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
        handler.setLevel(logging.INFO if verbose else logging.WARNING)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def metrics_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=escape(title), title_justify="left", min_width=len(title) + 4)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [(f"Recall@{k}", v) for k, v in metrics["recall_at_k"].items()]
    rows += [("MAP@R", metrics["map_at_r"]), ("R-precision", metrics["r_precision"])]
    rows += [("NMI", metrics["nmi"]), ("silhouette", metrics["silhouette"])]
    rows += [("queries", metrics["num_queries"]), ("classes", metrics["num_classes"])]
    return rows


def print_json(obj: Any) -> None:
    console.print_json(json.dumps(obj))
