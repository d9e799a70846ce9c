"""Adapting stored embeddings to representational drift: XBN and AXBN (seed 003; docs/methods.md §3).

Before the loss at each iteration every stored embedding is moved, per dimension, from the
memory's own moments to target moments::

    ẑ = (z − mean(R)) / std(R) · σ̂ + μ̂

- XBN: (μ̂, σ̂) are the current batch's mean and std.
- AXBN: (μ̂, σ̂) are Kalman-filter estimates of the data set's mean and std from the noisy batch
  observations: one scalar filter per dimension and statistic, static state model,
  ``P ← P + q``, ``K = P / (P + r/|B|)`` (recomputed every ``gain_interval`` iterations, held
  between), ``u ← u + K (v − u)``, ``P ← (1 − K) P``. With r = 0 the gain is 1 and AXBN is XBN.

Standard deviations are the unbiased estimators on both sides and are clamped away from zero.

The gain settles at ``steady_state_gain(q, r, batch)``: about ``sqrt(q |B| / r)`` when that is small, so
the filter averages the batch moments over roughly ``1 / K`` iterations. With the former defaults q = 1,
r = 0.01 it is 0.9994 at batch 16, and AXBN is XBN; the defaults (q = 1e-5, r = 0.01) give K = 0.118 at
batch 16 and 0.062 at batch 64. r is the per-item variance of one dimension (for L2-normalized D-dim
embeddings at most 1/D, 0.016 at 64-d); q the variance of the data set's moments' drift per iteration.
"""

from __future__ import annotations

import math

import torch
from torch import nn

STD_FLOOR = 1e-6


def moments(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and (unbiased, floored) std of (N, D) embeddings.

    Column sums go through one matrix product with a row of ones (BLAS), ten times faster on a
    CPU than a strided column reduction; the variance is formed in float64 from those sums.
    """
    count = len(embeddings)
    ones = embeddings.new_ones(1, count)
    sums = (ones @ embeddings).squeeze(0).double()
    if count < 2:
        return (sums / max(count, 1)).to(embeddings.dtype), torch.full_like(embeddings[0], STD_FLOOR)
    squares = (ones @ (embeddings * embeddings)).squeeze(0).double()
    variance = ((squares - sums * sums / count) / (count - 1)).clamp(min=0.0)
    mean, std = (sums / count).to(embeddings.dtype), variance.sqrt().to(embeddings.dtype)
    return mean, std.clamp(min=STD_FLOOR)


def affine_to(
    stored: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (D,), with ``stored * scale + shift`` having the target moments."""
    mean, std = moments(stored)
    scale = target_std / std
    return scale, target_mean - mean * scale


def renormalize(stored: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor) -> torch.Tensor:
    """Move (F, D) stored embeddings to the target per-dimension moments (a new tensor)."""
    scale, shift = affine_to(stored, target_mean, target_std)
    return torch.addcmul(shift, stored, scale)


class XBNAdapter(nn.Module):
    """Cross-batch normalization: match the memory to the current batch's first two moments.

    ``forward(stored, batch)`` returns the adapted copy; ``targets(batch)`` gives the moments
    alone, which the memory applies in place (one pass, no (M, D) temporary).
    """

    def targets(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return moments(batch)

    def forward(self, stored: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return renormalize(stored, *self.targets(batch))


class KalmanMoments(nn.Module):
    """Independent scalar Kalman filters, one per element of a (D,) statistic, static state model."""

    def __init__(self, dim: int, q: float, r: float, p0: float, gain_interval: int):
        super().__init__()
        if gain_interval < 1:
            raise ValueError(f"gain_interval must be >= 1, got {gain_interval}")
        self.q, self.r, self.gain_interval = q, r, gain_interval
        self.register_buffer("estimate", torch.zeros(dim))
        self.register_buffer("variance", torch.full((dim,), float(p0)))
        self.register_buffer("gain", torch.ones(dim))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, observation: torch.Tensor, batch_size: int) -> torch.Tensor:
        self.variance += self.q
        if int(self.steps) % self.gain_interval == 0:
            denominator = self.variance + self.r / batch_size
            self.gain.copy_(torch.where(denominator > 0, self.variance / denominator.clamp(min=1e-30), 1.0))
        self.estimate += self.gain * (observation - self.estimate)
        self.variance *= 1.0 - self.gain
        self.steps += 1
        return self.estimate.clone()


def steady_state_gain(q: float, r: float, batch_size: int) -> float:
    """The Kalman gain the filter converges to: the fixed point of ``P ← P + q``, ``K = P / (P + R)``,
    ``P ← (1 − K) P`` with ``R = r / batch_size``: the prior variance ``p = (q + sqrt(q² + 4qR)) / 2``."""
    noise = r / batch_size
    if noise <= 0.0:
        return 1.0
    prior = (q + math.sqrt(q * q + 4.0 * q * noise)) / 2.0
    return prior / (prior + noise)


class AXBNAdapter(nn.Module):
    """Adaptive cross-batch normalization: XBN with Kalman-filtered target moments."""

    def __init__(self, dim: int, q: float = 1e-5, r: float = 0.01, p0: float = 1.0, gain_interval: int = 100):
        super().__init__()
        self.mean_filter = KalmanMoments(dim, q, r, p0, gain_interval)
        self.std_filter = KalmanMoments(dim, q, r, p0, gain_interval)

    def targets(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the filters with this batch's moments; return the filtered (mean, std)."""
        batch_mean, batch_std = moments(batch)
        target_mean = self.mean_filter.update(batch_mean, len(batch))
        target_std = self.std_filter.update(batch_std, len(batch)).clamp(min=STD_FLOOR)
        return target_mean, target_std

    def forward(self, stored: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return renormalize(stored, *self.targets(batch))
