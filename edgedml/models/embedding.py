"""The embedding model: backbone -> pooled features -> Linear(F, dim) -> L2 normalization.

``forward`` returns the normalized embedding (what is exported and searched);
``embed_raw`` returns the head output before normalization, which is what a loss with its
own ``normalize`` option (Shadow) trains on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingModel(nn.Module):
    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, dim)
        self.dim = dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, F) pooled backbone features."""
        return self.backbone(images)

    def embed_raw(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, dim) unnormalized embedding."""
        return self.head(self.features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, dim) L2-normalized embedding."""
        return F.normalize(self.embed_raw(images), dim=1)
