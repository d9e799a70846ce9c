"""edgedml weights download NAME | list: the ImageNet weights that --weights imagenet uses, in the local cache."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgedml.cli.common import JsonOption, console, library_errors, print_json, setup_logging
from edgedml.cli.progress import RichProgress

weights_app = typer.Typer(
    name="weights",
    help="ImageNet backbone weights: fetch them once (--weights imagenet), then train offline.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="Download from this mirror (https; default: $EDGEDML_WEIGHTS_URL, else download.pytorch.org).",
    ),
]


@weights_app.command("download")
def download_command(
    name: Annotated[str, typer.Argument(help="A backbone with ImageNet weights (edgedml weights list).")],
    force: Annotated[bool, typer.Option("--force", help="Download again even when the file is cached.")] = False,
    base_url: BaseUrlOption = None,
) -> None:
    """Download a backbone's ImageNet weights into the cache, check their sha256, and print the cached path."""
    setup_logging()
    from edgedml.models.pretrained import download_weights  # torch: imported by the command, not by --help

    with library_errors(), RichProgress() as progress:
        path = download_weights(name, progress, base_url=base_url, force=force)
    typer.echo(str(path))


@weights_app.command("list")
def list_command(base_url: BaseUrlOption = None, json_output: JsonOption = False) -> None:
    """List the ImageNet weights: file, whether it is cached, where, and how it is checked."""
    from edgedml.models.pretrained import weights_status

    with library_errors():
        rows = weights_status(base_url)
    if json_output:
        print_json([row.to_dict() for row in rows])
        return
    table = Table(title="ImageNet weights (--weights imagenet)", title_justify="left")
    for column in ("name", "file", "cached", "path", "checksum"):
        table.add_column(column, overflow="fold")
    for row in rows:
        cached = "yes" if row.cached else "no"
        table.add_row(escape(row.name), escape(row.file), cached, escape(row.path), escape(row.checksum))
    console.print(table)
