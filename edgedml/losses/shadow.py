"""Shadow loss (Khan et al., arXiv 2311.14012; docs/methods.md §1): a memory-linear triplet loss.

Similarity is the scalar projection ("shadow") of x on the anchor direction,
``π_a(x) = a·x / ‖a‖``, and the distance is ``δ(a,x) = |‖a‖ − π_a(x)|``; the loss is the
triplet hinge ``max(0, δ(a,p) − δ(a,n) + m)``. Everything comes from one Gram matrix
``G = E Rᵀ``: ``‖a‖ = sqrt(G_aa)``, ``a·x = G_ax``. The loss-specific state is the (S, N)
matrix of δ values, never differences of D-vectors.

With ``normalize=True`` (the paper's choice) embeddings are L2-normalized before the loss,
again in Gram space (``cos = G_ax / (‖a‖‖x‖)``), so ‖a‖ = 1 and δ = 1 − cos: the loss then
equals a cosine triplet hinge.
"""

from __future__ import annotations

import torch

from edgedml.losses.base import BaseMetricLoss, LossTerms, pair_masks
from edgedml.losses.gram import gram_and_norms
from edgedml.losses.triplets import triplet_terms

EPS = 1e-12


def shadow_distances(
    embeddings: torch.Tensor, ref_emb: torch.Tensor | None = None, normalize: bool = True
) -> torch.Tensor:
    """δ(a, x) for every anchor a in ``embeddings`` (S, D) and x in ``ref_emb`` (N, D); returns (S, N)."""
    gram, anchor_norms, ref_norms = gram_and_norms(embeddings, ref_emb)
    if normalize:
        cosine = gram / (anchor_norms[:, None] * ref_norms[None, :]).clamp(min=EPS)
        return (1.0 - cosine).abs()
    safe_norms = anchor_norms.clamp(min=EPS)[:, None]
    return (safe_norms - gram / safe_norms).abs()


class ShadowLoss(BaseMetricLoss):
    """margin: m; mining: ``all`` | ``hard`` | ``semihard``; normalize: L2-normalize first."""

    def __init__(self, margin: float = 0.2, mining: str = "all", normalize: bool = True, **kwargs):
        super().__init__(**kwargs)
        if mining not in ("all", "hard", "semihard"):
            raise ValueError(f"unknown mining mode {mining!r}")
        self.margin = margin
        self.mining = mining
        self.normalize = normalize

    def compute_loss(self, embeddings, labels, ref_emb, ref_labels, anchor_ref_index) -> LossTerms:
        if ref_emb is None:
            ref_labels = labels
            anchor_ref_index = torch.arange(len(labels), device=labels.device)
        distances = shadow_distances(embeddings, ref_emb, self.normalize)
        positive, negative = pair_masks(labels, ref_labels, anchor_ref_index)
        return triplet_terms(distances, positive, negative, self.margin, self.mining)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}, normalize={self.normalize}"
