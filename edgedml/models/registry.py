"""Backbone registry: ``create_backbone(name, **kw)``; ``timm:<name>`` when timm is installed.

A backbone is an ``nn.Module`` mapping (B, 3, H, W) images to (B, F) pooled features and
exposing ``num_features = F``. Weights come from a local ``.safetensors`` file only, never
from a hub: an offline Jetson must be able to build every model.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgedml.errors import ModelError
from edgedml.registry import Registry

backbones: Registry[nn.Module] = Registry("backbone")

TIMM_PREFIX = "timm:"


def create_backbone(name: str, weights: str | Path | None = None, **kwargs) -> nn.Module:
    if name.startswith(TIMM_PREFIX):
        model = _create_timm(name[len(TIMM_PREFIX) :], **kwargs)
    else:
        model = backbones.create(name, **kwargs)
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def load_backbone_weights(model: nn.Module, weights: str | Path) -> None:
    from safetensors.torch import load_file

    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"--weights {path}: no such file", hint="pass a local .safetensors file")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise ModelError(f"--weights {path}: not a readable safetensors file ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ModelError(
            f"--weights {path}: {len(missing)} backbone tensors missing, e.g. {missing[0]!r}",
            hint="the file must hold this backbone's state_dict",
        )
    if unexpected:
        raise ModelError(f"--weights {path}: unexpected tensor {unexpected[0]!r}", hint="is it for another backbone?")


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
