"""Metric-learning losses: Shadow (ours) and the pytorch-metric-learning baselines, behind one registry."""

from __future__ import annotations

from torch import nn

from edgedml.losses.base import AvgNonZeroReducer, BaseMetricLoss, LossTerms, pair_masks
from edgedml.losses.gram import gram_and_norms
from edgedml.losses.pml import PMLLoss, contrastive, cosine_triplet, multi_similarity
from edgedml.losses.shadow import ShadowLoss, shadow_distances
from edgedml.losses.triplets import triplet_terms
from edgedml.registry import Registry

losses: Registry[nn.Module] = Registry("loss")
losses.register("shadow")(ShadowLoss)
losses.register("triplet")(cosine_triplet)
losses.register("contrastive")(contrastive)
losses.register("multisimilarity")(multi_similarity)

# Which options each loss reads; the others are reported as unused instead of silently ignored.
LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "shadow": ("margin", "mining", "normalize"),
    "triplet": ("margin", "mining"),
    "contrastive": (),
    "multisimilarity": (),
}


def create_loss(name: str, margin: float, mining: str, normalize: bool) -> nn.Module:
    given = {"margin": margin, "mining": mining, "normalize": normalize}
    return losses.create(name, **{key: given[key] for key in LOSS_OPTIONS.get(name, ())})


__all__ = [
    "LOSS_OPTIONS",
    "AvgNonZeroReducer",
    "BaseMetricLoss",
    "LossTerms",
    "PMLLoss",
    "ShadowLoss",
    "create_loss",
    "gram_and_norms",
    "losses",
    "pair_masks",
    "shadow_distances",
    "triplet_terms",
]
