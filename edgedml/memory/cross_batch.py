"""A metric loss wrapped with a cross-batch memory, in the order docs/methods.md §2-3 states.

Each iteration, once warm-up is over:
1. adapt the stored embeddings to the current batch (XBN / AXBN) and write them back;
2. enqueue the batch's (detached) embeddings: all ranks' batches, gathered in rank order, so
   that every rank's memory stays identical under DDP;
3. compare the batch against the whole memory, each item's own slot removed from its positives;
4. ``loss = batch_loss + w · memory_loss`` (the official XBM always keeps the batch term, w = 1;
   ``batch_term=False`` drops it, as the XBN paper found possible).
During warm-up the memory is neither filled nor used: early embeddings are worthless.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgedml.memory.adapters import AXBNAdapter, XBNAdapter, affine_to
from edgedml.memory.bank import CrossBatchMemory

# (embeddings (S, D), labels (S,)) -> (all ranks' embeddings, all labels, offset of this rank's rows)
Gather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, int]]


def local_gather(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    return embeddings, labels, 0


class CrossBatchLoss(nn.Module):
    """loss: any edgedml / pytorch-metric-learning wrapper accepting ``ref_emb`` and ``anchor_ref_index``."""

    def __init__(
        self,
        loss: nn.Module,
        memory: CrossBatchMemory,
        adapter: nn.Module | None = None,
        warmup_iters: int = 0,
        memory_weight: float = 1.0,
        batch_term: bool = True,
        gather: Gather = local_gather,
    ):
        super().__init__()
        self.loss = loss
        self.memory = memory
        self.adapter = adapter
        self.warmup_iters = warmup_iters
        self.memory_weight = memory_weight
        self.batch_term = batch_term
        self.gather = gather
        self.normalize_stored = getattr(loss, "normalize", True)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    @property
    def active(self) -> bool:
        return int(self.iteration) >= self.warmup_iters

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings: (S, D) as the loss takes them (unnormalized for Shadow); labels: (S,)."""
        active = self.active
        self.iteration += 1
        if not active:
            return self.loss(embeddings, labels)
        stored = F.normalize(embeddings.detach(), dim=1) if self.normalize_stored else embeddings.detach()
        all_stored, all_labels, offset = self.gather(stored.float(), labels)
        self._adapt(all_stored)
        slots = self.memory.enqueue(all_stored, all_labels)[offset : offset + len(labels)]
        ref_emb, ref_labels = self.memory.contents()
        memory_loss = self.loss(embeddings, labels, ref_emb=ref_emb, ref_labels=ref_labels, anchor_ref_index=slots)
        if not self.batch_term:
            return memory_loss
        return self.loss(embeddings, labels) + self.memory_weight * memory_loss

    @torch.no_grad()
    def fill_at_random(self, count: int, samples_per_class: int, generator: torch.Generator | None = None) -> None:
        """Fill ``count`` slots with random unit vectors and end the warm-up: the steady state in which
        a step's memory is planned or measured. ``samples_per_class`` sets how many labels there are."""
        device = self.memory.embeddings.device
        stored = F.normalize(
            torch.randn(count, self.memory.embeddings.shape[1], generator=generator, device=device), dim=1
        )
        labels = torch.randint(0, max(2, count // samples_per_class), (count,), generator=generator, device=device)
        self.memory.enqueue(stored, labels)
        self.iteration.fill_(self.warmup_iters)

    @torch.no_grad()
    def _adapt(self, batch: torch.Tensor) -> None:
        if self.adapter is None or int(self.memory.filled) < 2:
            return
        stored, _ = self.memory.contents()
        self.memory.transform_(*affine_to(stored, *self.adapter.targets(batch)))


def build_memory_adapter(kind: str, dim: int, q: float, r: float, p0: float, gain_interval: int) -> nn.Module | None:
    """``xbm`` -> no adapter; ``xbn`` -> batch moments; ``axbn`` -> Kalman-filtered moments."""
    if kind == "xbm":
        return None
    if kind == "xbn":
        return XBNAdapter()
    if kind == "axbn":
        return AXBNAdapter(dim, q=q, r=r, p0=p0, gain_interval=gain_interval)
    raise ValueError(f"unknown memory kind {kind!r}")
