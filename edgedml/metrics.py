"""Retrieval metrics on a labelled set, leave-one-out: every item queries all the others.

- Recall@K: fraction of queries with at least one same-class item among the K nearest.
- R-precision and MAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020): with R the
  number of other items of the query's class, precision over the R nearest, and the mean of
  precision@i over the relevant positions among them, divided by R.
- NMI of k-means clusters (k = number of classes) against the labels.
- Silhouette with cosine distance.

Similarities are cosine (embeddings are L2-normalized), computed in query chunks so memory is
O(chunk x N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgedml.errors import DataError

RECALL_KS = (1, 2, 4, 8)


@dataclass
class RetrievalMetrics:
    recall_at_k: dict[int, float]
    map_at_r: float
    r_precision: float
    nmi: float
    silhouette: float
    num_queries: int
    num_classes: int

    @property
    def recall_at_1(self) -> float:
        return self.recall_at_k[1]

    def to_dict(self) -> dict:
        return {
            "recall_at_1": self.recall_at_1,
            "recall_at_k": {str(k): v for k, v in self.recall_at_k.items()},
            "map_at_r": self.map_at_r,
            "r_precision": self.r_precision,
            "nmi": self.nmi,
            "silhouette": self.silhouette,
            "num_queries": self.num_queries,
            "num_classes": self.num_classes,
        }


def ranked_neighbours(embeddings: torch.Tensor, depth: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and similarities of each item's ``depth`` nearest others: (N, depth) each."""
    normalized = F.normalize(embeddings.float(), dim=1)
    count = len(normalized)
    depth = min(depth, count - 1)
    indices, scores = [], []
    for start in range(0, count, chunk):
        sims = normalized[start : start + chunk] @ normalized.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -float("inf")
        top = sims.topk(depth, dim=1)
        indices.append(top.indices)
        scores.append(top.values)
    return torch.cat(indices), torch.cat(scores)


def neighbour_depth(labels: torch.Tensor, ks: tuple[int, ...] = RECALL_KS) -> int:
    """How deep each query's ranked list must go for Recall@max(ks) and MAP@R: max(max(ks), largest R)."""
    class_sizes = torch.bincount(labels.long().cpu())
    return int(max(max(ks), int(class_sizes.max()) - 1))


def metrics_from_neighbours(
    neighbours: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = RECALL_KS
) -> tuple[dict[int, float], float, float]:
    """Recall@K for each K, MAP@R and R-precision of ranked lists, leave-one-out.

    neighbours: (N, depth) long, row i the indices of item i's nearest others, best first (depth: at least
    ``neighbour_depth``, or all N - 1 others); labels: (N,).
    """
    labels = labels.long().cpu()
    r_per_query = torch.bincount(labels)[labels] - 1
    hits = labels[neighbours.long().cpu()] == labels[:, None]  # (N, depth)
    valid = r_per_query > 0  # a query with no other item of its class has nothing to retrieve
    if not bool(valid.any()):
        raise DataError(
            "no class has two or more images, so retrieval metrics are undefined",
            hint="evaluate on a split with at least two images per class",
        )
    recall = {k: float(hits[valid, :k].any(dim=1).float().mean()) for k in ks}
    positions = torch.arange(1, hits.shape[1] + 1)
    within_r = positions[None, :] <= r_per_query[:, None]
    relevant = hits & within_r
    precision_at_i = relevant.cumsum(dim=1).float() / positions
    r = r_per_query.clamp(min=1).float()
    map_at_r = (precision_at_i * relevant).sum(dim=1) / r
    r_precision = relevant.sum(dim=1).float() / r
    return recall, float(map_at_r[valid].mean()), float(r_precision[valid].mean())


def recall_and_map(
    embeddings: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = RECALL_KS
) -> tuple[dict[int, float], float, float]:
    """Recall@K for each K, MAP@R and R-precision of cosine rankings. embeddings: (N, D); labels: (N,)."""
    neighbours, _ = ranked_neighbours(embeddings.cpu(), neighbour_depth(labels, ks))
    return metrics_from_neighbours(neighbours, labels, ks)


def retrieval_metrics(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ks: tuple[int, ...] = RECALL_KS,
    seed: int = 0,
    neighbours: torch.Tensor | None = None,
) -> RetrievalMetrics:
    """All metrics; the ranked ones of ``neighbours`` (N, depth) when given (re-ranked lists), else of cosine."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score, silhouette_score

    if neighbours is None:
        recall, map_at_r, r_precision = recall_and_map(embeddings, labels, ks)
    else:
        recall, map_at_r, r_precision = metrics_from_neighbours(neighbours, labels, ks)
    points = F.normalize(embeddings.float(), dim=1).cpu().numpy().astype(np.float64)
    targets = labels.cpu().numpy()
    num_classes = len(np.unique(targets))
    clusters = KMeans(n_clusters=num_classes, n_init=4, random_state=seed).fit_predict(points)
    nmi = float(normalized_mutual_info_score(targets, clusters))
    silhouette = float(silhouette_score(points, targets, metric="cosine")) if num_classes > 1 else 0.0
    return RetrievalMetrics(
        recall_at_k=recall,
        map_at_r=map_at_r,
        r_precision=r_precision,
        nmi=nmi,
        silhouette=silhouette,
        num_queries=len(targets),
        num_classes=num_classes,
    )


def cosine_check(got: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """Per-row cosine similarity of two (N, D) embedding arrays: min and mean (NaN if ``got`` is not finite).

    How an exported model (fp16, int8, a TensorRT engine) is held against its reference.
    """
    if not np.isfinite(got).all():
        return {"min_cosine": float("nan"), "mean_cosine": float("nan")}
    dots = (got * expected).sum(axis=1)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    cosine = dots / np.maximum(norms, 1e-12)
    return {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}
