"""Backbones (registry + built-ins in plain torch, torchvision's layer names), weight-name conversion, the embedding
model."""

from __future__ import annotations

from edgedml.models import backbones as _builtin  # noqa: F401  (registers the built-in backbones)
from edgedml.models.convert import timm_to_torchvision, upgrade_legacy_state, upgrade_model_state
from edgedml.models.embedding import EmbeddingModel
from edgedml.models.registry import backbones, create_backbone, load_backbone_weights


def build_model(backbone: str, dim: int, weights: str | None = None) -> EmbeddingModel:
    return EmbeddingModel(create_backbone(backbone, weights=weights), dim)


__all__ = [
    "EmbeddingModel",
    "backbones",
    "build_model",
    "create_backbone",
    "load_backbone_weights",
    "timm_to_torchvision",
    "upgrade_legacy_state",
    "upgrade_model_state",
]
