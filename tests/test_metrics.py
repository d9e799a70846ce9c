"""Retrieval metrics against a hand-worked example and a brute-force loop."""

from __future__ import annotations

import math

import pytest
import torch

from edgedml.metrics import recall_and_map, retrieval_metrics


def on_circle(degrees: list[float]) -> torch.Tensor:
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


# Six unit vectors at these angles; nearest neighbours follow angular distance.
ANGLES = [0, 11, 20, 32, 41, 55]
LABELS = torch.tensor([0, 1, 0, 0, 1, 1])


def test_hand_worked_example():
    """Ranked lists by hand (R = 2 for every query):
    q0: p1(1) p2(0) ...  -> R@1 0, top-R [miss, hit]: AP = (1/2)/2 = 0.25, R-prec 1/2
    q1: p2(0) p0(0) p3(0) p4(1) -> R@1 0, R@2 0, R@4 1, AP 0, R-prec 0
    q2: p1(1) p3(0) ...  -> AP 0.25, R-prec 1/2
    q3: p4(1) p2(0) ...  -> AP 0.25, R-prec 1/2
    q4: p3(0) p5(1) ...  -> AP 0.25, R-prec 1/2
    q5: p4(1) p3(0) ...  -> R@1 1, AP (1/1)/2 = 0.5, R-prec 1/2
    """
    recall, map_at_r, r_precision = recall_and_map(on_circle(ANGLES), LABELS, ks=(1, 2, 4))
    assert recall == pytest.approx({1: 1 / 6, 2: 5 / 6, 4: 1.0})
    assert map_at_r == pytest.approx(1.5 / 6)
    assert r_precision == pytest.approx(2.5 / 6)


def brute_force(embeddings: torch.Tensor, labels: list[int], k: int) -> tuple[float, float]:
    hits_at_k, average_precisions = 0, []
    for q in range(len(labels)):
        others = sorted((i for i in range(len(labels)) if i != q), key=lambda i: -float(embeddings[q] @ embeddings[i]))
        relevant = [labels[i] == labels[q] for i in others]
        hits_at_k += any(relevant[:k])
        r = sum(relevant)
        if r:
            precisions = [sum(relevant[: i + 1]) / (i + 1) for i in range(r) if relevant[i]]
            average_precisions.append(sum(precisions) / r)
    return hits_at_k / len(labels), sum(average_precisions) / len(average_precisions)


def test_matches_brute_force_on_random_embeddings():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(60, 8, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 5, (60,), generator=generator)
    recall, map_at_r, _ = recall_and_map(embeddings, labels, ks=(1, 4))
    for k in (1, 4):
        expected_recall, expected_map = brute_force(embeddings, labels.tolist(), k)
        assert recall[k] == pytest.approx(expected_recall)
    assert map_at_r == pytest.approx(expected_map)


def test_perfect_clusters_score_one():
    centers = torch.eye(3, dtype=torch.float64)
    embeddings = torch.cat([centers + 0.01 * torch.randn(3, 3, dtype=torch.float64) for _ in range(5)])
    labels = torch.arange(3).repeat(5)
    metrics = retrieval_metrics(embeddings, labels)
    assert metrics.recall_at_1 == 1.0
    assert metrics.map_at_r == pytest.approx(1.0)
    assert metrics.nmi == pytest.approx(1.0)
    assert metrics.silhouette > 0.9
    assert metrics.to_dict()["recall_at_k"] == {"1": 1.0, "2": 1.0, "4": 1.0, "8": 1.0}
