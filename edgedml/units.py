"""Byte sizes as people write them (``2.5GiB``, ``800MiB``, ``3GB``) and as reports print them."""

from __future__ import annotations

import math

from edgedml.errors import ConfigError

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_HINT = "write e.g. 2.5GiB, 800MiB or 3GB"


def parse_bytes(text: str, option: str = "--budget") -> int:
    """``2.5GiB``, ``800MiB``, ``3GB``, ``1073741824`` -> bytes; a ConfigError naming ``option`` otherwise.

    The size must be finite and at least one byte once converted (``0.5B``, ``1e-12GiB``, ``nan``,
    ``inf`` and ``1e999GiB`` are refused).
    """
    if not isinstance(text, str):
        raise ConfigError(f"{option} {text!r} is not a size", hint=_HINT)
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = cleaned[len(number) :] or "b"
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not value > 0:
        raise ConfigError(f"{option} {text!r} is not a size", hint=_HINT)
    size = value * _UNITS[unit]
    if not math.isfinite(size):
        raise ConfigError(f"{option} {text!r} is not a finite size", hint=_HINT)
    if size < 1:
        raise ConfigError(f"{option} {text!r} is less than one byte", hint=_HINT)
    return int(size)


def format_bytes(value: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{int(value)} B"
