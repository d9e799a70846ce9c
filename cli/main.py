"""The ``edgedml`` Typer app: wires the commands; each lives in its own module and imports torch lazily."""

from __future__ import annotations

from typing import Annotated

import typer

from edgedml import __version__
from edgedml.cli.bench import bench
from edgedml.cli.eval import evaluate
from edgedml.cli.export import export
from edgedml.cli.index import index
from edgedml.cli.profile import profile
from edgedml.cli.profiles import profiles_app
from edgedml.cli.quickstart import quickstart
from edgedml.cli.search import search
from edgedml.cli.serve import serve
from edgedml.cli.train import train
from edgedml.cli.weights import weights_app

app = typer.Typer(
    name="edgedml",
    help="Train image-embedding models for retrieval on small NVIDIA devices, and ship them.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("train")(train)
app.command("eval")(evaluate)
app.command("quickstart")(quickstart)
app.add_typer(profiles_app, name="profiles")
app.command("profile")(profile)
app.command("export")(export)
app.command("index")(index)
app.command("search")(search)
app.command("serve")(serve)
app.command("bench")(bench)
app.add_typer(weights_app, name="weights")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgedml {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Train image-embedding models for retrieval on small NVIDIA devices, and ship them."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
