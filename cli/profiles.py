"""edgedml profiles list | show NAME: the device profiles that --profile plans for."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from edgedml.budget.profiles import PROFILE_KEYS, list_profiles, read_profile
from edgedml.cli.common import JsonOption, console, library_errors, print_json

profiles_app = typer.Typer(
    name="profiles",
    help="Device profiles: plan for a device you do not have with --profile NAME.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ProfileArgument = Annotated[
    str,
    typer.Argument(
        help="A profile name (edgedml profiles list) or a YAML file with the same keys.", show_default=False
    ),
]


@profiles_app.command("list")
def list_profiles_command(json_output: JsonOption = False) -> None:
    """List the shipped device profiles: memory, compute capability, FP16/INT8/DLA, JetPack/TensorRT."""
    with library_errors():
        profiles = [read_profile(name) for name in list_profiles()]
    if json_output:
        print_json(profiles)
        return
    table = Table(title="device profiles", title_justify="left")
    columns = (
        ("name", "left"),
        ("memory", "right"),
        ("integrated", "left"),
        ("CC", "left"),
        ("FP16/INT8/DLA", "left"),
        ("JetPack/TensorRT", "left"),
        ("description", "left"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify, no_wrap=column != "description")
    for profile in profiles:
        table.add_row(
            profile["name"],
            f"{profile['memory_gib']:g} GiB",
            _cell(profile["integrated"]),
            profile["compute_capability"],
            f"{_cell(profile['fp16'])}/{_cell(profile['int8'])}/{profile['dla_cores']}",
            f"{_cell(profile['jetpack'])}/{_cell(profile['tensorrt_major'])}",
            escape(profile["description"]),
        )
    console.print(table)
    console.print("[dim]next:[/] edgedml profiles show NAME, or plan for one with --profile NAME", highlight=False)


@profiles_app.command("show")
def show(name: ProfileArgument, json_output: JsonOption = False) -> None:
    """Every key of one profile, with what it means."""
    with library_errors():
        profile = read_profile(name)
    if json_output:
        print_json(profile)
        return
    table = Table(title=escape(f"profile {profile['name']}: {profile['description']}"), title_justify="left")
    table.add_column("key", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("meaning")
    for key, value in profile.items():
        table.add_row(key, escape(_cell(value, yes="true", no="false", none="null")), PROFILE_KEYS[key].meaning)
    console.print(table)


def _cell(value: Any, yes: str = "yes", no: str = "no", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, bool):
        return yes if value else no
    return str(value)
