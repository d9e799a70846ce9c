"""The baseline losses, from pytorch-metric-learning (the field's reference implementations).

Each wrapper L2-normalizes the embeddings, as the models' inference output is, and forwards
``ref_emb`` / ``ref_labels`` so a cross-batch memory wraps them exactly as it wraps Shadow.
``--mining`` selects the triplet miner: all triplets, batch-hard, or semi-hard.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PMLLoss(nn.Module):
    """loss: a pytorch-metric-learning loss; miner: an optional miner run on the same inputs."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None):
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeddings = F.normalize(embeddings, dim=1)
        indices = self.miner(embeddings, labels, ref_emb, ref_labels) if self.miner is not None else None
        return self.loss(embeddings, labels, indices, ref_emb, ref_labels)


def cosine_triplet(margin: float = 0.2, mining: str = "all") -> PMLLoss:
    from pytorch_metric_learning import distances, losses, miners

    cosine = distances.CosineSimilarity()
    miner = {
        "all": None,
        "hard": miners.BatchHardMiner(distance=cosine),
        "semihard": miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=cosine),
    }[mining]
    return PMLLoss(losses.TripletMarginLoss(margin=margin, distance=cosine), miner)


def contrastive() -> PMLLoss:
    from pytorch_metric_learning import losses

    return PMLLoss(losses.ContrastiveLoss())


def multi_similarity() -> PMLLoss:
    from pytorch_metric_learning import losses, miners

    return PMLLoss(losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner(epsilon=0.1))
