"""The compute / reduce split shared by edgedml's losses (pytorch-metric-learning's design).

A loss implements :meth:`BaseMetricLoss.compute_loss`, returning :class:`LossTerms`: one
loss value per element (an anchor-positive pair, or an anchor) with the number of triplets
it sums over and the anchor it belongs to. A reducer turns the terms into the scalar.
Every loss accepts reference embeddings (``ref_emb``, ``ref_labels``) so that a cross-batch
memory can wrap it without special cases.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LossTerms:
    """losses: float, any shape, each element a sum over ``counts`` non-zero triplets (same shape);
    anchors: long, same shape, the anchor each element belongs to. Elements with count 0 hold 0."""

    losses: torch.Tensor
    counts: torch.Tensor
    anchors: torch.Tensor


class AvgNonZeroReducer:
    """Sum of all triplet losses divided by the number of non-zero triplets (0 when there are none)."""

    def __call__(self, terms: LossTerms, embeddings: torch.Tensor) -> torch.Tensor:
        if terms.losses.numel() == 0:
            return embeddings.sum() * 0.0
        return terms.losses.sum() / terms.counts.sum().clamp(min=1)


class BaseMetricLoss(nn.Module, ABC):
    """Base class: subclasses write ``compute_loss``; ``forward`` reduces.

    embeddings: (S, D) float; labels: (S,) long; ref_emb: (N, D) float or None (then the
    batch is its own reference); ref_labels: (N,) long; anchor_ref_index: (S,) long, the slot
    of each anchor's own copy in ``ref_emb`` (-1 if absent), so an item is never its own positive.
    """

    def __init__(self, reducer: AvgNonZeroReducer | None = None):
        super().__init__()
        self.reducer = reducer or AvgNonZeroReducer()

    @abstractmethod
    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
        anchor_ref_index: torch.Tensor | None,
    ) -> LossTerms:
        """Per-element losses with their triplet counts and anchors; see :class:`LossTerms`."""

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        anchor_ref_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if (ref_emb is None) != (ref_labels is None):
            raise ValueError("ref_emb and ref_labels must be given together")
        terms = self.compute_loss(embeddings, labels, ref_emb, ref_labels, anchor_ref_index)
        return self.reducer(terms, embeddings)


def pair_masks(
    labels: torch.Tensor, ref_labels: torch.Tensor, anchor_ref_index: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative masks, (S, N) bool; the anchor's own slot is neither."""
    same = labels[:, None] == ref_labels[None, :]
    if anchor_ref_index is None:
        return same, ~same
    own_slot = torch.zeros_like(same)
    rows = torch.arange(len(labels), device=labels.device)
    own_slot[rows, anchor_ref_index.clamp(min=0)] = anchor_ref_index >= 0
    return same & ~own_slot, ~same
