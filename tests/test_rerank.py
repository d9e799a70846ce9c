"""Re-ranking: k-reciprocal against the paper's algorithm on the full matrix, αQE and DBA against hand-computed values,
the bounded version on a large gallery, and --rerank through search, eval and the CLI."""

from __future__ import annotations

import itertools
import json
import math
import time
import tracemalloc
import typing

import faiss
import numpy as np
import pytest
import torch

from edgedml.cli.common import RerankOption
from edgedml.errors import ConfigError
from edgedml.metrics import neighbour_depth, ranked_neighbours, recall_and_map
from edgedml.retrieval import Searcher, build_index
from edgedml.retrieval.evaluate import (
    embed_split,
    evaluate_embedded,
    evaluate_model,
    reranked_metrics,
    reranked_neighbours,
)
from edgedml.retrieval.rerank import (
    RERANK_METHODS,
    Rerank,
    flat_index,
    leave_one_out_neighbours,
    rerank,
    search_excluding,
    with_original_tail,
)
from edgedml.retrieval.synthetic import clustered_gallery


def reference_k_reciprocal(universe: np.ndarray, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """Zhong et al.'s algorithm as the authors' code computes it, on the full (M, M) matrix of ``universe`` (M, D),
    one member at a time (with the paper's ≥ 2/3): the final distances d* (M, M)."""
    distance = ((universe[:, None, :] - universe[None, :, :]) ** 2).sum(axis=2)
    distance = distance / distance.max(axis=1, keepdims=True)
    rank = np.argsort(distance, axis=1, kind="stable")
    count = len(universe)

    def k_reciprocal(i: int, k: int) -> np.ndarray:
        return np.array([g for g in rank[i, : k + 1] if i in rank[g, : k + 1]])

    encoding = np.zeros((count, count))
    for i in range(count):
        reciprocal = k_reciprocal(i, k1)
        expansion = list(reciprocal)
        for candidate in reciprocal:
            half = k_reciprocal(candidate, int(np.around(k1 / 2)))
            if len(np.intersect1d(half, reciprocal)) >= 2 / 3 * len(half):
                expansion.extend(half)
        expansion = np.unique(expansion)
        weights = np.exp(-distance[i, expansion])
        encoding[i, expansion] = weights / weights.sum()
    encoding = np.stack([encoding[rank[i, :k2]].mean(axis=0) for i in range(count)])
    jaccard = np.array(
        [
            [
                1 - np.minimum(encoding[i], encoding[j]).sum() / np.maximum(encoding[i], encoding[j]).sum()
                for j in range(count)
            ]
            for i in range(count)
        ]
    )
    return (1 - lambda_value) * jaccard + lambda_value * distance


@pytest.fixture(scope="module")
def clusters() -> tuple[np.ndarray, np.ndarray]:
    """60 gallery vectors of 6 clusters in 8-d and 3 outside queries (float32, unit norm)."""
    return clustered_gallery(60, 8, queries=3, clusters=6, spread=0.8, seed=1)


PARAMETERS = [(20, 6, 0.3), (6, 3, 0.5), (4, 1, 0.0)]


@pytest.mark.parametrize(("k1", "k2", "lambda_value"), PARAMETERS)
def test_k_reciprocal_matches_the_full_matrix_when_the_candidates_are_the_gallery(clusters, k1, k2, lambda_value):
    gallery, queries = clusters
    settings = Rerank("kreciprocal", candidates=len(gallery), k1=k1, k2=k2, lambda_value=lambda_value)
    index = flat_index(gallery)
    scores, ids = index.search(queries, len(gallery))
    reranked_scores, reranked_ids = rerank(index, queries, scores, ids, settings)
    assert reranked_ids.shape == (3, 60)
    for query, row_scores, row_ids in zip(queries, reranked_scores, reranked_ids, strict=True):
        universe = np.vstack([query[None, :], gallery]).astype(np.float64)  # the probe, then the gallery
        expected = reference_k_reciprocal(universe, k1, k2, lambda_value)[0, 1:]
        np.testing.assert_allclose(1 - row_scores, expected[row_ids], atol=1e-6)
        np.testing.assert_allclose(expected[row_ids], np.sort(expected), atol=1e-6)
        if lambda_value > 0:  # with λ = 0 many candidates tie at d_J = 1, in either order
            np.testing.assert_array_equal(row_ids, np.argsort(expected, kind="stable"))


@pytest.mark.parametrize(("k1", "k2", "lambda_value"), PARAMETERS[:2])
def test_leave_one_out_k_reciprocal_matches_the_full_matrix(clusters, k1, k2, lambda_value):
    gallery, _ = clusters
    settings = Rerank("kreciprocal", candidates=len(gallery), k1=k1, k2=k2, lambda_value=lambda_value)
    index, rows = flat_index(gallery), np.arange(len(gallery))
    scores, ids = search_excluding(index, gallery, len(gallery) - 1, rows)
    assert not (ids == rows[:, None]).any()
    reranked_scores, reranked_ids = rerank(index, gallery, scores, ids, settings, query_rows=rows)
    expected = reference_k_reciprocal(gallery.astype(np.float64), k1, k2, lambda_value)
    for row in rows:
        others = np.delete(np.arange(len(gallery)), row)
        np.testing.assert_array_equal(reranked_ids[row], others[np.argsort(expected[row, others], kind="stable")])
        np.testing.assert_allclose(1 - reranked_scores[row], expected[row, reranked_ids[row]], atol=1e-6)


def test_bounded_k_reciprocal_reorders_the_top_candidates_only(clusters):
    gallery, queries = clusters
    index = flat_index(gallery)
    scores, ids = index.search(queries, 30)
    settings = Rerank("kreciprocal", candidates=25)
    reranked_scores, reranked_ids = rerank(index, queries, scores, ids, settings)
    assert reranked_ids.shape == (3, 25)
    for row_ids, original in zip(reranked_ids, ids, strict=True):
        assert sorted(row_ids.tolist()) == sorted(original[:25].tolist())
    assert (np.diff(reranked_scores, axis=1) <= 0).all()
    # one query at a time (a fresh neighbour cache each) gives what the batch gives
    for i in range(3):
        alone = rerank(index, queries[i : i + 1], scores[i : i + 1], ids[i : i + 1], settings)
        np.testing.assert_array_equal(alone[1][0], reranked_ids[i])
        np.testing.assert_allclose(alone[0][0], reranked_scores[i])


def test_an_ivf_index_reranks_like_the_flat_one(clusters):
    """The vectors come back from an IVF index through its direct map; scanning every cell, it is exact."""
    gallery, queries = clusters
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(8), 8, 2, faiss.METRIC_INNER_PRODUCT)
    ivf.train(gallery)
    ivf.add(gallery)
    ivf.nprobe = 2
    flat = flat_index(gallery)
    for settings in (Rerank("kreciprocal", candidates=30), Rerank("qe", dba_n=2)):
        expected = rerank(flat, queries, *flat.search(queries, 30), settings)
        got = rerank(ivf, queries, *ivf.search(queries, 30), settings)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[0], expected[0], atol=1e-6)


def test_bounded_k_reciprocal_on_a_large_gallery_builds_nothing_of_its_size():
    """50k x 16 gallery, 100 candidates: an N x N float matrix would be 10 GB, one N-wide row per candidate 20 MB."""
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((50_000, 16)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[:5] + 0.05 * rng.standard_normal((5, 16)).astype(np.float32)
    index = flat_index(gallery)
    scores, ids = index.search(queries, 100)
    tracemalloc.start()
    started = time.perf_counter()
    _, reranked_ids = rerank(index, queries, scores, ids, Rerank("kreciprocal"))
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert reranked_ids.shape == (5, 100) and (reranked_ids >= 0).all()
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB traced"
    assert seconds < 10


# ---------------------------------------------------------------------------------------------- αQE and DBA

# Unit vectors in the plane; the query q = (1, 0) has similarities 0.8, 0.6, 0, -1 with them.
PLANE = np.array([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
QUERY = np.array([[1.0, 0.0]], dtype=np.float32)


def test_alpha_query_expansion_by_hand():
    """Top 2 at α = 3: q' = q + 0.8³ x1 + 0.6³ x0 = (1 + 0.4096 + 0.1296, 0.3072 + 0.1728) = (1.5392, 0.48),
    ‖q'‖ = sqrt(2.59953664); new scores q'·x / ‖q'‖."""
    index = flat_index(PLANE)
    scores, ids = index.search(QUERY, 4)
    assert ids[0].tolist() == [1, 0, 2, 3]
    got_scores, got_ids = rerank(index, QUERY, scores, ids, Rerank("qe", qe_n=2, qe_alpha=3.0))
    norm = math.sqrt(2.59953664)
    expected = {1: (1.5392 * 0.8 + 0.48 * 0.6) / norm, 0: (1.5392 * 0.6 + 0.48 * 0.8) / norm, 2: 0.48 / norm}
    expected[3] = -1.5392 / norm
    assert got_ids[0].tolist() == [1, 0, 2, 3]
    assert got_scores[0] == pytest.approx([expected[i] for i in (1, 0, 2, 3)], abs=1e-6)
    # α = 0 with n = 1: the plain average of the query and its top hit
    got_scores, _ = rerank(index, QUERY, scores, ids, Rerank("qe", qe_n=1, qe_alpha=0.0))
    mean = np.array([1.8, 0.6]) / math.hypot(1.8, 0.6)
    assert got_scores[0, 0] == pytest.approx(float(mean @ PLANE[1]), abs=1e-6)


def test_dba_then_alpha_query_expansion_by_hand():
    """dba_n = 1, qe_n = 1, α = 3. Each vector's nearest other row: x0 -> x1 (s 0.96), x1 -> x0 (0.96), x2 -> x0
    (0.8), x3 -> x2 (0; weight 0). Augmented: x̃0 = x0 + 0.96³ x1, x̃1 = x1 + 0.96³ x0, x̃2 = x2 + 0.8³ x0, x̃3 = x3,
    each normalized; the query's top augmented hit then expands it: q' = q + s(q, x̃)³ x̃."""
    index = flat_index(PLANE)
    scores, ids = index.search(QUERY, 4)
    got_scores, got_ids = rerank(index, QUERY, scores, ids, Rerank("qe", qe_n=1, dba_n=1, qe_alpha=3.0))
    x = PLANE.astype(np.float64)
    w = 0.96**3
    augmented = np.array([x[0] + w * x[1], x[1] + w * x[0], x[2] + 0.8**3 * x[0], x[3]])
    augmented /= np.linalg.norm(augmented, axis=1, keepdims=True)
    q = np.array([1.0, 0.0])
    top = int(np.argmax(augmented @ q))
    assert top == 1  # x̃1 = (0.8 + 0.5308, 0.6 + 0.7078) / ‖·‖ leans further towards q than x̃0
    expanded = q + (augmented[top] @ q) ** 3 * augmented[top]
    expanded /= np.linalg.norm(expanded)
    expected = augmented @ expanded
    assert got_ids[0].tolist() == np.argsort(-expected).tolist()
    assert got_scores[0] == pytest.approx(np.sort(expected)[::-1], abs=1e-6)


def test_leave_one_out_query_expansion_never_returns_the_query():
    gallery, _ = clustered_gallery(40, 8, queries=1, clusters=4, seed=2)
    index, rows = flat_index(gallery), np.arange(40)
    scores, ids = search_excluding(index, gallery, 10, rows)
    for settings in (Rerank("qe", qe_n=3), Rerank("qe", qe_n=2, dba_n=3, candidates=10)):
        _, got = rerank(index, gallery, scores, ids, settings, query_rows=rows)
        assert got.shape == (40, 10) and not (got == rows[:, None]).any()
        assert all(len(set(row.tolist())) == 10 for row in got)


# ---------------------------------------------------------------------------------------------- settings, metrics


def test_settings_and_their_errors():
    assert RERANK_METHODS == ("none", "qe", "kreciprocal")
    assert Rerank.parse("kreciprocal") == Rerank("kreciprocal")
    assert Rerank.parse(Rerank("qe", qe_n=5)).qe_n == 5
    with pytest.raises(ConfigError, match=r"^--rerank 'knn' is not one of none, qe, kreciprocal$"):
        Rerank.parse("knn")
    with pytest.raises(ConfigError, match="needs candidates >= k1"):
        Rerank("kreciprocal", candidates=10)
    with pytest.raises(ConfigError, match="lambda_value 2"):
        Rerank("kreciprocal", lambda_value=2)
    assert Rerank("qe").first_depth(10) == 10 and Rerank("qe", dba_n=2).first_depth(10) == 100
    assert Rerank().first_depth(7) == 7


def test_the_cli_help_states_the_defaults():
    text = typing.get_args(RerankOption)[1].help
    qe, kreciprocal = Rerank.parse("qe"), Rerank.parse("kreciprocal")
    assert qe.dba_n == 0 and f"top {qe.qe_n} hits" in text and f"score^{qe.qe_alpha:g}" in text
    assert f"top {kreciprocal.candidates} hits" in text
    assert f"k1 {kreciprocal.k1}, k2 {kreciprocal.k2}, λ {kreciprocal.lambda_value:g}" in text


def test_with_original_tail():
    original = np.array([[5, 4, 3, 2, 1], [1, 2, 3, 4, 5]])
    reranked = np.array([[3, 5, -1], [9, 1, 2]])
    assert with_original_tail(reranked, original).tolist() == [[3, 5, 4, 2, 1], [9, 1, 2, 3, 4]]


def test_without_reranking_the_leave_one_out_lists_are_the_cosine_ranking():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(80, 8, generator=generator), dim=1)
    labels = torch.randint(0, 4, (80,), generator=generator)
    depth = neighbour_depth(labels)
    got = leave_one_out_neighbours(embeddings.numpy(), depth, Rerank())
    expected, _ = ranked_neighbours(embeddings, depth)
    np.testing.assert_array_equal(got, expected.numpy())
    from edgedml.metrics import metrics_from_neighbours

    assert metrics_from_neighbours(torch.from_numpy(got), labels) == recall_and_map(embeddings, labels)


# ---------------------------------------------------------------------------------------------- search, eval, CLI


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory):
    from edgedml.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("export") / "model.onnx"
    return export_onnx(trained.run, out=out, evaluate=False).files["fp32"].path


@pytest.fixture(scope="module")
def index_dir(model, trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("rerank-index") / "index"
    build_index(model, str(trained.data), out)
    return out


def test_searcher_returns_top_k_reranked_hits(model, trained, index_dir):
    searcher = Searcher.open(index_dir)
    queries = [trained.data / "class4" / "3.png", trained.data / "class1" / "0.png"]
    plain = searcher.search(queries, top_k=5)
    for rerank_setting in ("qe", "kreciprocal", Rerank("kreciprocal", candidates=20), Rerank("qe", dba_n=2)):
        for top_k in (5, 30):
            results = searcher.search(queries, top_k=top_k, rerank=rerank_setting)
            for result, before in zip(results, plain, strict=True):
                assert [h.rank for h in result.hits] == list(range(1, top_k + 1))
                assert len({h.id for h in result.hits}) == top_k
                assert all(a.score >= b.score for a, b in itertools.pairwise(result.hits))
                assert result.hits[0].label == before.hits[0].label == result.query.split("/")[-2]
    with pytest.raises(ConfigError, match="--rerank 'fast'"):
        searcher.search(queries, rerank="fast")


def test_eval_with_reranking(model, trained):
    plain = evaluate_model(model)
    for method in ("qe", "kreciprocal"):
        reranked = evaluate_model(model, rerank=method)
        assert reranked.num_queries == plain.num_queries == 30
        assert (reranked.nmi, reranked.silhouette) == (plain.nmi, plain.silhouette)
        assert 0 <= reranked.map_at_r <= 1 and 0 <= reranked.recall_at_1 <= 1
    # a run directory is embedded through PyTorch with reranking: the exported model's numbers
    from_run = evaluate_model(trained.run, rerank="kreciprocal", device="cpu")
    expected = reranked_metrics(embed_split(model), Rerank.parse("kreciprocal"))
    assert from_run.recall_at_k == expected.recall_at_k
    assert from_run.map_at_r == pytest.approx(expected.map_at_r, abs=1e-3)
    with pytest.raises(ConfigError, match="--rerank 'x'"):
        evaluate_model(model, rerank="x")


def test_eval_pictures_show_the_lists_the_metrics_scored(model, cli, tmp_path):
    evaluation = evaluate_embedded(model, rerank="kreciprocal")
    settings = Rerank.parse("kreciprocal")
    assert np.array_equal(evaluation.neighbours, reranked_neighbours(evaluation.embedded, settings))
    assert evaluation.metrics.map_at_r == evaluate_model(model, rerank="kreciprocal").map_at_r
    assert evaluate_embedded(model).neighbours is None  # plain: the pictures rank by cosine
    examples = tmp_path / "examples.png"
    result = cli("eval", model, "--rerank", "kreciprocal", "--examples", examples, "--json")
    assert result.exit_code == 0, str(result)
    recorded = json.loads(result.stdout)
    assert recorded["rerank"] == "kreciprocal"
    assert recorded["map_at_r"] == pytest.approx(evaluation.metrics.map_at_r)
    assert examples.stat().st_size > 0


def test_cli_rerank(cli, model, trained, index_dir):
    query = trained.data / "class4" / "3.png"
    found = cli("search", index_dir, query, "-k", "4", "--rerank", "kreciprocal", "--json")
    assert found.exit_code == 0, str(found)
    hits = json.loads(found.stdout)[0]["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4] and hits[0]["label"] == "class4"
    table = cli("search", index_dir, query, "-k", "2", "--rerank", "qe")
    assert table.exit_code == 0 and "top 2, re-ranked (qe)" in table.output
    bad = cli("search", index_dir, query, "--rerank", "best")
    assert bad.exit_code == 2 and "--rerank 'best' is not one of none, qe, kreciprocal" in bad.output
    evaluated = cli("eval", model, "--rerank", "kreciprocal", "--json")
    assert evaluated.exit_code == 0, str(evaluated)
    assert json.loads(evaluated.stdout)["num_queries"] == 30
    shown = cli("eval", model, "--rerank", "qe")
    assert shown.exit_code == 0 and f"{model} on the test split, re-ranked (qe)" in shown.output
    bad = cli("eval", model, "--rerank", "best")
    assert bad.exit_code == 2 and "--rerank 'best' is not one of none, qe, kreciprocal" in bad.output
