"""Generated galleries for testing and benchmarking indexes at sizes no bundled data set reaches.

A mixture of ``clusters`` Gaussian clusters on the unit sphere. Each point is its cluster's centre
plus noise whose spectrum decays as ``1 / i ** decay`` over a random basis (trained embeddings have a
decaying spectrum; ``decay = 0`` gives isotropic noise, the hardest case for any compressed index:
every within-cluster distance is then nearly the same), L2-normalized. ``spread`` is the noise's
norm relative to the centre's.
"""

from __future__ import annotations

import numpy as np


def clustered_gallery(
    count: int,
    dim: int,
    queries: int = 1000,
    clusters: int = 1000,
    spread: float = 0.6,
    decay: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(count, dim) gallery and (queries, dim) held-out queries from the same clusters, float32, unit norm."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scales = np.arange(1, dim + 1, dtype=np.float64) ** -decay
    scales /= np.linalg.norm(scales)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]

    def draw(n: int) -> np.ndarray:
        noise = (rng.standard_normal((n, dim)) * scales) @ basis.T
        points = centres[rng.integers(0, clusters, n)] + spread * noise
        return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)

    return draw(count), draw(queries)


def recall_against_exact(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k ids that ``found`` (Q, k) holds (k-recall@k)."""
    return float(
        np.mean([len(set(f.tolist()) & set(e.tolist())) / exact.shape[1] for f, e in zip(found, exact, strict=True)])
    )
