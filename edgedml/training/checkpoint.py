"""Checkpoints in safetensors: tensors plus JSON metadata, loaded without unpickling anything.

``best.safetensors`` holds the model weights; ``last.safetensors`` also holds what resuming
needs (optimizer state, epoch and step, the AMP scaler, RNG state and running totals).
Keys are prefixed by what they belong to: ``model.`` (the exported embedding model), ``aux.`` (S2SD's
training-only heads), ``loss.`` (a cross-batch memory's buffers and filter state, S2SD's counter),
``optimizer.``, ``rng.``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from edgedml import __version__
from edgedml.errors import CheckpointError
from edgedml.io import write_with

MODEL = "model."
AUX = "aux."
LOSS = "loss."
OPTIMIZER = "optimizer."
RNG = "rng."


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write tensors and JSON-encoded metadata atomically."""
    ready = {key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()}
    encoded = {key: json.dumps(value) for key, value in metadata.items()}
    encoded["edgedml_version"] = json.dumps(__version__)
    write_with(path, lambda tmp: save_file(ready, str(tmp), metadata=encoded))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found", hint="is this a run directory written by edgedml train?")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
        metadata = {key: json.loads(value) for key, value in raw.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({exc})", hint="restore it from a copy or retrain"
        ) from None
    return tensors, metadata


def with_prefix(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def strip_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (by key) and JSON-able values."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIMIZER}{param_id}.{name}"] = value
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in strip_prefix(OPTIMIZER, tensors).items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
