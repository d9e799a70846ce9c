"""Choosing the torch device for ``--device auto|cpu|cuda``."""

from __future__ import annotations

import torch

from edgedml.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch", hint="use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r} is not one of auto, cpu, cuda")
    return torch.device(name)
