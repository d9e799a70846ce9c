"""Triplet hinge terms ``max(0, d(a,p) - d(a,n) + m)`` from an (S, N) distance matrix, without a triplet cube.

batch-all and semi-hard never form the (S, P, N) tensor of triplets. For each anchor the
negative distances are sorted once; for a positive with threshold ``x = d(a,p) + m`` the
non-zero terms are the negatives with ``d(a,n) < x``, and their sum is
``count * x - (sum of those negative distances)``, read off a cumulative sum with
``searchsorted``. Memory and gradient are (S, N) scalars, whatever S, N or D, and no shape
depends on the data (so fake-tensor memory tracing works): the terms are dense, with a zero
count wherever there is no triplet.

Modes (``mining``):
- ``all``: every valid (a, p, n);
- ``hard``: per anchor, the farthest positive and the nearest negative (batch-hard);
- ``semihard``: triplets with d(a,p) < d(a,n) < d(a,p) + m (pytorch-metric-learning's definition).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgedml.losses.base import LossTerms

INF = float("inf")


def triplet_terms(
    distances: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float, mining: str
) -> LossTerms:
    """distances: (S, N) float; positive, negative: (S, N) bool masks."""
    if mining == "hard":
        return _batch_hard(distances, positive, negative, margin)
    if mining in ("all", "semihard"):
        return _sorted_band(distances, positive, negative, margin, semihard=mining == "semihard")
    raise ValueError(f"unknown mining mode {mining!r}")


def _batch_hard(distances, positive, negative, margin) -> LossTerms:
    hardest_positive = distances.masked_fill(~positive, -INF).amax(dim=1)
    hardest_negative = distances.masked_fill(~negative, INF).amin(dim=1)
    valid = positive.any(dim=1) & negative.any(dim=1)
    hinge = F.relu(hardest_positive - hardest_negative + margin)
    losses = torch.where(valid, hinge, torch.zeros_like(hinge))
    anchors = torch.arange(len(losses), device=losses.device)
    return LossTerms(losses=losses, counts=(losses > 0).to(losses.dtype), anchors=anchors)


def _sorted_band(distances, positive, negative, margin, semihard: bool) -> LossTerms:
    negatives_sorted, _ = distances.masked_fill(~negative, INF).sort(dim=1)
    finite = negatives_sorted.masked_fill(torch.isinf(negatives_sorted), 0.0)
    cumulative = F.pad(finite.cumsum(dim=1), (1, 0))  # (S, N+1): sum of the first j negatives
    threshold = (distances + margin).masked_fill(~positive, -INF)
    sorted_keys = negatives_sorted.detach().contiguous()
    upper = torch.searchsorted(sorted_keys, threshold.detach().contiguous(), side="left")
    if semihard:
        floor = distances.masked_fill(~positive, -INF).detach().contiguous()
        lower = torch.minimum(torch.searchsorted(sorted_keys, floor, side="right"), upper)
    else:
        lower = torch.zeros_like(upper)
    counts = (upper - lower).to(distances.dtype)  # zero wherever (a, j) is not a positive pair
    band_sum = cumulative.gather(1, upper) - cumulative.gather(1, lower)
    per_pair = counts * threshold.masked_fill(~positive, 0.0) - band_sum
    anchors = torch.arange(len(distances), device=distances.device)[:, None].expand_as(per_pair)
    return LossTerms(losses=per_pair, counts=counts, anchors=anchors)
