"""Device profiles: plan for a device you do not have (``--profile orin-nano-8gb``).

One typed, commented YAML file per device ships in the ``edgedml.profiles`` package (``profiles/*.yaml``
in the source tree); a user file with the same keys works too (``--profile ./my-board.yaml``). Every key
is checked before anything is planned: unknown keys and names are errors with a close-match suggestion,
values must have the declared type and lie in range. ``load_profile`` turns a profile into the same
``DeviceMemory`` record a probe returns on the device itself.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from edgedml.budget.device import GIB, DeviceMemory
from edgedml.config import parse_yaml, read_text_file, suggest
from edgedml.errors import ConfigError

PROFILE_PACKAGE = "edgedml.profiles"
PROFILE_SUFFIXES = (".yaml", ".yml")
VERSION = re.compile(r"^\d+(\.\d+)*$")
COMPUTE_CAPABILITY = re.compile(r"^\d+\.\d+$")
# No single device a profile describes has more memory (an H200 has 141 GB, a GH200 superchip 624 GB in all);
# the bound keeps a typo like 8e9 (bytes, not GiB) from planning for a device that cannot exist.
MAX_MEMORY_GIB = 4096.0


@dataclass(frozen=True)
class ProfileKey:
    """One key of the profile schema: its YAML type, whether null is allowed, and a range check that
    returns what is wrong (or None)."""

    kind: str  # str | float | int | bool
    meaning: str
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None


def _at_least(low: float, inclusive: bool = True, high: float | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = value >= low if inclusive else value > low
        if not ok:
            return f"must be {'>=' if inclusive else '>'} {low}"
        if high is not None and not value <= high:
            return f"must be <= {high}"
        return None

    return check


def _pattern(regex: re.Pattern[str], example: str) -> Callable[[Any], str | None]:
    return lambda value: None if regex.match(value) else f"must look like {example!r}"


def _fraction(value: Any) -> str | None:
    return None if 0.0 <= value < 1.0 else "must lie in [0, 1)"


PROFILE_KEYS: dict[str, ProfileKey] = {
    "name": ProfileKey("str", "profile name, as given to --profile (the file name without .yaml)"),
    "description": ProfileKey("str", "the device in words"),
    "memory_gib": ProfileKey(
        "float",
        "physical memory in GiB (shared by CPU and GPU when integrated)",
        check=_at_least(0, inclusive=False, high=MAX_MEMORY_GIB),
    ),
    "integrated": ProfileKey("bool", "the GPU shares system RAM with the CPU (Jetson)"),
    "os_reserved_gib": ProfileKey(
        "float",
        "typical OS, desktop and carve-out footprint on shared memory, GiB (0 for desktop cards)",
        check=_at_least(0),
    ),
    "cuda_context_gib": ProfileKey(
        "float", "typical CUDA context with the libraries PyTorch loads, GiB", check=_at_least(0)
    ),
    "compute_capability": ProfileKey(
        "str", "CUDA compute capability, major.minor", check=_pattern(COMPUTE_CAPABILITY, "8.7")
    ),
    "fp16": ProfileKey("bool", "fast FP16 arithmetic"),
    "int8": ProfileKey("bool", "INT8 inference in TensorRT"),
    "dla_cores": ProfileKey("int", "Deep Learning Accelerator cores usable by TensorRT", check=_at_least(0)),
    "jetpack": ProfileKey(
        "str",
        "newest JetPack release line for the device; null for desktop GPUs",
        nullable=True,
        check=_pattern(VERSION, "6.2"),
    ),
    "tensorrt_major": ProfileKey(
        "int", "TensorRT major version (of that JetPack on a Jetson)", nullable=True, check=_at_least(1)
    ),
    "safety_margin": ProfileKey(
        "float", "fraction of the budget kept free for allocator fragmentation", check=_fraction
    ),
}
QUOTE_HINTS = {"compute_capability": '"8.7"', "jetpack": '"6.2"'}


def list_profiles() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(
        entry.name[: -len(".yaml")] for entry in files(PROFILE_PACKAGE).iterdir() if entry.name.endswith(".yaml")
    )


def read_profile(name: str) -> dict[str, Any]:
    """The validated mapping of a shipped profile name or a YAML file path, keys in file order."""
    origin, text = _profile_text(name)
    loaded = parse_yaml(text, origin)
    if not isinstance(loaded, dict):
        raise ConfigError(f"{origin}: expected a mapping of key: value, got {type(loaded).__name__}")
    return validate_profile(loaded, origin)


def load_profile(name: str) -> DeviceMemory:
    """A profile as the planner sees it, in the terms of a probe on the device.

    A probe reads free memory before this process creates its CUDA context, so a profile's free memory is
    memory - OS footprint too (used = the OS footprint); the context cost goes into ``cuda_context_bytes``,
    which the planner (``make_budget``) subtracts as a fixed cost. Subtracting it here as well would count
    it twice.
    """
    profile = read_profile(name)
    total = round(profile["memory_gib"] * GIB)
    os_reserved = round(profile["os_reserved_gib"] * GIB)
    cuda_context = round(profile["cuda_context_gib"] * GIB)
    major, minor = (int(part) for part in profile["compute_capability"].split("."))
    return DeviceMemory(
        source=f"profile:{profile['name']}",
        name=profile["description"],
        total_bytes=total,
        free_bytes=total - os_reserved,
        used_bytes=os_reserved,
        integrated=profile["integrated"],
        compute_capability=(major, minor),
        cuda_context_bytes=cuda_context,
        os_reserved_bytes=os_reserved,
        safety_margin=profile["safety_margin"],
    )


def validate_profile(values: dict[Any, Any], origin: str) -> dict[str, Any]:
    """Check every key against ``PROFILE_KEYS``; ``origin`` (the file) starts every message."""
    known = list(PROFILE_KEYS)
    for key in values:
        if key not in PROFILE_KEYS:
            raise ConfigError(f"{origin}: unknown key {key!r}", hint=suggest(str(key), known))
    missing = [key for key in known if key not in values]
    if missing:
        raise ConfigError(
            f"{origin}: missing {', '.join(missing)}",
            hint=(
                "every key is required (null where allowed); "
                "start from a shipped one: edgedml profiles show orin-nano-8gb"
            ),
        )
    clean: dict[str, Any] = {}
    for key, value in values.items():
        spec = PROFILE_KEYS[key]
        if value is None and spec.nullable:
            clean[key] = None
            continue
        if not _has_kind(value, spec.kind):
            hint = (
                f"quote it: {key}: {QUOTE_HINTS[key]}"
                if key in QUOTE_HINTS and isinstance(value, (int, float))
                else _range_hint(key)
            )
            raise ConfigError(
                f"{origin}: {key} must be {spec.kind}{' or null' if spec.nullable else ''}, got {value!r}", hint=hint
            )
        if spec.kind == "float":
            try:
                value = float(value)
            except OverflowError:  # an integer too large for a float
                value = math.inf
            if not math.isfinite(value):
                raise ConfigError(f"{origin}: {key} must be a finite number, got {value!r}", hint=_range_hint(key))
        problem = spec.check(value) if spec.check else None
        if problem:
            raise ConfigError(f"{origin}: {key} {problem}, got {value!r}", hint=_range_hint(key))
        clean[key] = value
    if clean["os_reserved_gib"] + clean["cuda_context_gib"] >= clean["memory_gib"]:
        raise ConfigError(
            f"{origin}: os_reserved_gib + cuda_context_gib leave no memory of memory_gib {clean['memory_gib']}"
        )
    return clean


def _range_hint(key: str) -> str:
    return f"{key} is the {PROFILE_KEYS[key].meaning}; edgedml profiles show orin-nano-8gb shows values that load"


def _has_kind(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):  # YAML true is not a number
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float))
    return isinstance(value, str)


def _profile_text(name: str) -> tuple[str, str]:
    """(origin for messages, YAML text) of a shipped profile name or a path to a user file (UTF-8; a file in
    another encoding is a ConfigError naming it)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"--profile {name!r} is not a profile name", hint="see edgedml profiles list")
    if name.endswith(PROFILE_SUFFIXES) or "/" in name or "\\" in name:
        path = Path(name)
        if not path.is_file():
            stem = path.name.rsplit(".", 1)[0]
            if stem in list_profiles():
                hint = f"the shipped profile is named without .yaml: --profile {stem}"
            else:
                hint = "pass an existing YAML file, or a name from edgedml profiles list"
            raise ConfigError(f"profile file {path} does not exist", hint=hint)
        return str(path), read_text_file(path, "profile file")
    resource = files(PROFILE_PACKAGE) / f"{name}.yaml"
    if not resource.is_file():
        known = list_profiles()
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        suggestion = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown device profile {name!r}", hint=f"{suggestion}known profiles: {', '.join(known)}")
    return str(resource), resource.read_text(encoding="utf-8")
