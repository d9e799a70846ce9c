"""The export formats and the options each takes, checked before any work starts (the Ultralytics pattern).

The CLI renders this table and passes what the user gave through :func:`check_export_options`; the
library owns the rules, so the command line and the library cannot disagree about which option a
format takes. This module imports nothing heavy (``edgedml export --help`` reads it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgedml.errors import ConfigError

INT8_TARGETS = ("tensorrt", "cpu")
# The opsets torch's dynamo exporter (torch 2.13, pinned in constraints.txt) writes as asked: below 18 (its
# torchlib's opset) it tries a down-conversion that fails for these models and silently keeps 18; 23 is the
# newest opset torch declares (torch.onnx._constants.ONNX_MAX_OPSET); above onnx's newest it silently keeps 18.
MIN_OPSET, MAX_OPSET = 18, 23


@dataclass(frozen=True)
class Format:
    options: frozenset[str]  # the options this format accepts besides --out and --checkpoint
    description: str


FORMATS: dict[str, Format] = {
    "onnx": Format(
        frozenset({"batch", "dynamic", "opset", "half", "int8", "calib_data", "int8_for"}),
        "ONNX fp32 (+ fp16 / int8 Q/DQ copies), checked with onnxruntime against PyTorch, "
        "Recall@1 of each on the test classes",
    ),
    "engine": Format(
        frozenset(
            {
                "batch",
                "dynamic",
                "opset",
                "half",
                "int8",
                "calib_data",
                "max_batch",
                "workspace",
                "profile",
                "timing_cache",
                "deepstream",
            }
        ),
        "TensorRT engine built on this GPU from the checked ONNX; "
        "sidecar model.engine.json records TensorRT version and GPU",
    ),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_export_options(format_name: str, given: Mapping[str, object]) -> Format:
    """The format, if every option in ``given`` (name -> value; None or False: not given) may be used with it."""
    spec = FORMATS.get(format_name)
    if spec is None:
        raise ConfigError(
            f"--format {format_name!r} is not one of {', '.join(FORMATS)}", hint="edgedml export --help lists them"
        )
    present = {name for name, value in given.items() if value is not None and value is not False}
    unsupported = sorted(present - spec.options)
    if unsupported:
        raise ConfigError(f"--format {format_name} does not take {', '.join(_flag(name) for name in unsupported)}")
    for first, second, why in (
        ("batch", "dynamic", ""),
        ("batch", "max_batch", " (a fixed batch and a dynamic range)"),
    ):
        if {first, second} <= present:
            raise ConfigError(f"{_flag(first)} and {_flag(second)} exclude each other{why}", hint="give one of them")
    for option in ("calib_data", "int8_for"):
        if option in present and "int8" not in present:
            raise ConfigError(f"{_flag(option)} needs --int8", hint="add --int8")
    int8_for = given.get("int8_for")
    if int8_for is not None:
        check_int8_target(int8_for)
    check_opset(given.get("opset"))
    return spec


def check_opset(opset: object) -> None:
    """``--opset`` is None (the exporter's default) or an opset the exporter really writes: MIN_OPSET..MAX_OPSET."""
    if opset is None:
        return
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"--opset {opset} must lie in {MIN_OPSET}..{MAX_OPSET} (the opsets torch's ONNX exporter writes)",
            hint=f"use --opset {MIN_OPSET} for the widest runtime support, or leave it out for the exporter's default",
        )


def check_int8_target(int8_for: object) -> None:
    """``--int8-for`` must name one of INT8_TARGETS."""
    if int8_for not in INT8_TARGETS:
        raise ConfigError(f"--int8-for {int8_for!r} is not one of {', '.join(INT8_TARGETS)}")
