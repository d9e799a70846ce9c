"""edgedml profile: what fits on a device (this one, or a profile's), why, and what to run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgedml.cli.common import DataOption, JsonOption, console, library_errors, print_json, setup_logging
from edgedml.config import TrainConfig
from edgedml.io import check_output_dir
from edgedml.units import format_bytes


def profile(
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json, report.md and the plots.")],
    profile_name: Annotated[
        str | None,
        typer.Option(
            "--profile",
            help="Plan for this device profile (edgedml profiles list) or YAML file; default: this machine.",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Training config YAML (the keys of edgedml train).")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option("--budget", help="Memory this run may use, e.g. 2.5GiB (default: what the device has free)."),
    ] = None,
    data: DataOption = None,
    backbone: Annotated[str | None, typer.Option("--backbone", help="Backbone name.")] = None,
    input_size: Annotated[int | None, typer.Option("--input-size", help="Input side in pixels.")] = None,
    dim: Annotated[int | None, typer.Option("--dim", help="Embedding dimension.")] = None,
    batch_size: Annotated[str | None, typer.Option("--batch-size", help="Images per batch, or auto.")] = None,
    samples_per_class: Annotated[
        int | None, typer.Option("--samples-per-class", help="K, images per class in a batch.")
    ] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="Loss name.")] = None,
    mining: Annotated[str | None, typer.Option("--mining", help="all | hard | semihard.")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="none | xbm | xbn | axbn.")] = None,
    memory_size: Annotated[
        str | None, typer.Option("--memory-size", help="Count, fraction of the training set, or auto.")
    ] = None,
    memory_storage: Annotated[str | None, typer.Option("--memory-storage", help="fp32 | fp16.")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="adamw | adam | sgd.")] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="Plan for mixed precision.")] = None,
    measure: Annotated[bool, typer.Option("--measure/--no-measure", help="On a GPU, also measure real peaks.")] = True,
    json_output: JsonOption = False,
) -> None:
    """Predict a training configuration's peak memory, fit it to a budget, and write a report."""
    setup_logging()
    from edgedml.budget.report import build_report, write_report

    train_keys = set(TrainConfig.keys())
    given = {key: value for key, value in locals().items() if key in train_keys and value is not None}
    if profile_name is not None:
        given["profile"] = profile_name
    with library_errors():
        check_output_dir(out)  # before the report is computed
        report = build_report(TrainConfig.from_sources(config, given), measure=measure)
        paths = write_report(report, out)
    if json_output:
        print_json(report.to_dict())
        return
    if report.plan:
        plan = report.plan
        console.print(
            f"[bold green]fits[/]: batch {plan['batch_size']}, memory {plan['memory_size']}: needs "
            f"{format_bytes(plan['required_bytes'])} of {format_bytes(report.budget.available)} "
            f"on {escape(report.device.name)}",
            soft_wrap=True,
        )
    else:
        console.print(f"[bold red]does not fit[/]: {escape(report.failure or '')}", soft_wrap=True)
    for path in paths:
        console.print(f"  wrote {escape(str(path))}", soft_wrap=True)
    console.print(f"next: open {escape(str(out / 'report.md'))}", soft_wrap=True)
