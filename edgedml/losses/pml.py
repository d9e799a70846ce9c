"""The baseline losses, from pytorch-metric-learning (the field's reference implementations).

Each wrapper L2-normalizes the embeddings, as the models' inference output is, and forwards
``ref_emb`` / ``ref_labels`` so a cross-batch memory wraps them exactly as it wraps Shadow.
``--mining`` selects the triplet miner: all triplets, batch-hard, or semi-hard.

Against a memory (``anchor_ref_index`` given) the pairs and triplets are built here, from the
label masks with each anchor's own slot removed (docs/methods.md §2), and stay bounded: pair losses
see the (S, N) pairs; the triplet loss uses batch-hard triplets, or, for batch-all and
semi-hard, enumerates at most ``CHUNK_TRIPLETS`` triplets at a time, accumulating gradients on a
detached copy of the embeddings so that no chunk's graph outlives it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgedml.losses.base import pair_masks

CHUNK_TRIPLETS = 1 << 21


class PMLLoss(nn.Module):
    """loss: a pytorch-metric-learning loss; miner: optional, run on the same inputs; kind: ``pairs`` | ``triplet``."""

    def __init__(
        self,
        loss: nn.Module,
        miner: nn.Module | None = None,
        kind: str = "pairs",
        mining: str = "all",
        margin: float = 0.2,
    ):
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.kind = kind
        self.mining = mining
        self.margin = margin

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        anchor_ref_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeddings = F.normalize(embeddings, dim=1)
        if anchor_ref_index is None:
            indices = self.miner(embeddings, labels, ref_emb, ref_labels) if self.miner is not None else None
            return self.loss(embeddings, labels, indices, ref_emb, ref_labels)
        ref_emb = F.normalize(ref_emb, dim=1)
        positive, negative = pair_masks(labels, ref_labels, anchor_ref_index)
        if self.kind == "pairs":
            return self._pairs(embeddings, labels, ref_emb, ref_labels, positive, negative)
        if self.mining == "hard":
            return self.loss(
                embeddings, labels, _batch_hard(embeddings, ref_emb, positive, negative), ref_emb, ref_labels
            )
        return _chunked_triplets(self, embeddings, labels, ref_emb, ref_labels, positive, negative)

    def _pairs(self, embeddings, labels, ref_emb, ref_labels, positive, negative) -> torch.Tensor:
        if self.miner is None:
            anchors_p, positives = torch.nonzero(positive, as_tuple=True)
            anchors_n, negatives = torch.nonzero(negative, as_tuple=True)
        else:
            anchors_p, positives, anchors_n, negatives = self.miner(embeddings, labels, ref_emb, ref_labels)
            keep = positive[anchors_p, positives]  # drop each anchor's own slot
            anchors_p, positives = anchors_p[keep], positives[keep]
        return self.loss(embeddings, labels, (anchors_p, positives, anchors_n, negatives), ref_emb, ref_labels)


@torch.no_grad()
def _cosine_distances(embeddings: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
    return 1.0 - embeddings @ ref_emb.T


def _batch_hard(embeddings, ref_emb, positive, negative):
    distances = _cosine_distances(embeddings, ref_emb)
    valid = positive.any(dim=1) & negative.any(dim=1)
    hardest_positive = distances.masked_fill(~positive, -float("inf")).argmax(dim=1)
    hardest_negative = distances.masked_fill(~negative, float("inf")).argmin(dim=1)
    anchors = torch.arange(len(distances), device=distances.device)[valid]
    return anchors, hardest_positive[valid], hardest_negative[valid]


def _triplet_chunks(distances, positive, negative, margin: float, semihard: bool):
    """Yield (anchors, positives, negatives) index tensors of at most ``CHUNK_TRIPLETS`` triplets."""
    for anchor in range(len(distances)):
        positives = torch.nonzero(positive[anchor]).squeeze(1)
        negatives = torch.nonzero(negative[anchor]).squeeze(1)
        if len(positives) == 0 or len(negatives) == 0:
            continue
        block = max(1, CHUNK_TRIPLETS // len(negatives))
        for start in range(0, len(positives), block):
            p = positives[start : start + block].repeat_interleave(len(negatives))
            n = negatives.repeat(min(block, len(positives) - start))
            if semihard:
                gap = distances[anchor, n] - distances[anchor, p]
                keep = (gap > 0) & (gap < margin)
                p, n = p[keep], n[keep]
            if len(p):
                yield torch.full_like(p, anchor), p, n


def _chunked_triplets(wrapper: PMLLoss, embeddings, labels, ref_emb, ref_labels, positive, negative) -> torch.Tensor:
    """Batch-all / semi-hard triplet loss against a large reference set, in bounded chunks.

    Returns a scalar whose value is the average over non-zero triplets and whose gradient
    w.r.t. ``embeddings`` is that of the full loss.
    """
    from pytorch_metric_learning.reducers import DoNothingReducer

    per_triplet = type(wrapper.loss)(margin=wrapper.margin, distance=wrapper.loss.distance, reducer=DoNothingReducer())
    leaf = embeddings.detach().requires_grad_(True)
    distances = _cosine_distances(leaf, ref_emb)
    total, nonzero = leaf.new_zeros(()), 0
    for triplet in _triplet_chunks(distances, positive, negative, wrapper.margin, wrapper.mining == "semihard"):
        with torch.enable_grad():
            losses = per_triplet(leaf, labels, triplet, ref_emb, ref_labels)["loss"]["losses"]
            chunk_sum = losses.sum()
            chunk_sum.backward()
        total += chunk_sum.detach()
        nonzero += int((losses > 0).sum())
    if nonzero == 0:
        return embeddings.sum() * 0.0
    gradient = leaf.grad / nonzero
    surrogate = (embeddings * gradient).sum()
    return surrogate - surrogate.detach() + total / nonzero


def cosine_triplet(margin: float = 0.2, mining: str = "all") -> PMLLoss:
    from pytorch_metric_learning import distances, losses, miners

    cosine = distances.CosineSimilarity()
    miner = {
        "all": None,
        "hard": miners.BatchHardMiner(distance=cosine),
        "semihard": miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=cosine),
    }[mining]
    return PMLLoss(
        losses.TripletMarginLoss(margin=margin, distance=cosine), miner, kind="triplet", mining=mining, margin=margin
    )


def contrastive() -> PMLLoss:
    from pytorch_metric_learning import losses

    return PMLLoss(losses.ContrastiveLoss())


def multi_similarity() -> PMLLoss:
    from pytorch_metric_learning import losses, miners

    return PMLLoss(losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner(epsilon=0.1))
