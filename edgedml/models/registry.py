"""Backbone registry: ``create_backbone(name, **kw)``; ``timm:<name>`` when timm is installed.

A backbone is an ``nn.Module`` mapping (B, 3, H, W) images to (B, F) pooled features and
exposing ``num_features = F``. Weights come from a local file only, never from a hub: an offline
Jetson must be able to build every model. ``load_backbone_weights`` reads torchvision ``.pth``/``.pt``
state dicts (without unpickling code), timm or edgedml ``.safetensors``, and renames timm's and older
edgedml layouts to the built-in backbones' torchvision names (``edgedml.models.convert``).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from edgedml.errors import ModelError
from edgedml.models.convert import CLASSIFIER_PREFIXES, TIMM_PREFIX, expected_format, to_torchvision_names
from edgedml.registry import Registry

backbones: Registry[nn.Module] = Registry("backbone")

TORCH_SUFFIXES = (".pth", ".pt")
SAFETENSORS_SUFFIX = ".safetensors"
# Keys under which training scripts commonly nest the model's state dict.
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict")
DDP_PREFIX = "module."
SAVE_HINT = "save the weights alone: torch.save(model.state_dict(), path)"


def create_backbone(name: str, weights: str | Path | None = None, **kwargs) -> nn.Module:
    if name.startswith(TIMM_PREFIX):
        model = _create_timm(name[len(TIMM_PREFIX) :], **kwargs)
    else:
        model = backbones.create(name, **kwargs)
    if weights is not None:
        load_backbone_weights(model, weights, name)
    return model


def load_backbone_weights(model: nn.Module, weights: str | Path, backbone_name: str) -> None:
    """Load a local weight file into ``model``: read -> unwrap -> drop the classifier -> rename -> check -> load.

    Every tensor the backbone has must be in the file with its shape, and nothing else may be (the classifier
    excepted); the error names the first tensor that is missing, unexpected or of another shape.
    """
    path = Path(weights)
    expected = expected_format(backbone_name)
    if not path.is_file():
        raise ModelError(f"--weights {path}: no such file", hint=f"pass a local file: {expected}")
    state = _unwrap(path, _read_weights(path))
    own = model.state_dict()
    state = {key: value for key, value in state.items() if key in own or not key.startswith(CLASSIFIER_PREFIXES)}
    state = to_torchvision_names(backbone_name, state)
    _check_tensors(path, own, state, expected)
    model.load_state_dict(state)


def _read_weights(path: Path) -> object:
    if path.suffix in TORCH_SUFFIXES:
        return _read_torch(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    raise ModelError(
        f"--weights {path}: unknown weight file type {path.suffix!r}",
        hint="pass a .safetensors file or a .pth/.pt state dict",
    )


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL (\S+)", str(exc))  # weights_only met a class: reading it would run code
        if refused is None:
            raise ModelError(f"--weights {path}: not a readable torch file", hint=SAVE_HINT) from None
        raise ModelError(
            f"--weights {path}: not a plain state dict (it pickles {refused.group(1)}); refusing to unpickle it",
            hint=SAVE_HINT,
        ) from None
    except Exception as exc:  # a truncated or foreign file: zipfile, EOF and runtime errors alike
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"--weights {path}: not a readable torch file ({first})", hint=SAVE_HINT) from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise ModelError(f"--weights {path}: not a readable safetensors file ({exc})") from None


def _unwrap(path: Path, loaded: object) -> dict[str, torch.Tensor]:
    """The state dict inside ``{"state_dict": ...}`` / ``{"model": ...}`` containers, without DDP's ``module.``."""
    state = loaded
    while isinstance(state, Mapping):
        inner = next((state[key] for key in CONTAINER_KEYS if isinstance(state.get(key), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ModelError(f"--weights {path}: not a state dict of tensors", hint=SAVE_HINT)
    if state and all(key.startswith(DDP_PREFIX) for key in state):
        return {key[len(DDP_PREFIX) :]: value for key, value in state.items()}
    return dict(state)


def _check_tensors(path: Path, own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], expected: str) -> None:
    """The first tensor the backbone has and the file lacks, or the file has and the backbone lacks, or whose shape
    differs, as a ModelError."""
    problem = _first_mismatch(own, state)
    if problem is not None:
        raise ModelError(f"--weights {path}: {problem}; expected {expected}", hint="is it for another backbone?")


def _first_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    missing = [key for key in own if key not in state]
    if missing:
        return f"tensor {missing[0]!r} missing ({len(missing)} of the backbone's {len(own)} missing)"
    unexpected = [key for key in state if key not in own]
    if unexpected:
        return f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} the backbone does not have)"
    for key, value in own.items():
        if state[key].shape != value.shape:
            return f"tensor {key!r} has shape {tuple(state[key].shape)}, the backbone's is {tuple(value.shape)}"
    return None


def _create_timm(name: str, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ModelError(
            f"backbone timm:{name} needs timm, which is not installed",
            hint="pip install 'edgedml[timm]' (with a torchvision build matching your torch)",
        ) from None
    if name not in timm.list_models():
        raise ModelError(f"timm has no model {name!r}", hint="see timm.list_models()")
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    model.num_features = int(model.num_features)
    return model
