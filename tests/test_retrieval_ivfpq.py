"""The IVF-PQ path for large galleries, on a generated gallery: memory per vector and recall against exact search."""

from __future__ import annotations

import re

import faiss
import numpy as np
import pytest

from edgedml.errors import ConfigError
from edgedml.retrieval.faiss_store import train_index
from edgedml.retrieval.store import IndexParams, default_nlist, default_pq_m, resolve_params
from edgedml.retrieval.synthetic import clustered_gallery, recall_against_exact

COUNT, DIM = 12_000, 32
RECALL_FLOOR = 0.85  # 10-recall@10 against exact search; measured 0.93 at these settings (seed 0)


@pytest.fixture(scope="module")
def gallery():
    return clustered_gallery(COUNT, DIM, queries=300, clusters=200, seed=0)


def test_ivfpq_memory_per_vector_and_recall_against_exact(gallery):
    vectors, queries = gallery
    params = resolve_params(IndexParams("ivfpq", nprobe=8, pq_m=DIM // 2), COUNT, DIM)
    assert (params.nlist, params.pq_m, params.pq_bits) == (default_nlist(COUNT), DIM // 2, 8) == (307, 16, 8)
    flat = train_index(resolve_params(IndexParams("flat"), COUNT, DIM), vectors)
    compressed = train_index(params, vectors)
    flat_bytes = len(faiss.serialize_index(flat)) / COUNT
    pq_bytes = len(faiss.serialize_index(compressed)) / COUNT
    assert flat_bytes == pytest.approx(4 * DIM, rel=0.01)
    # 16 one-byte codes + an 8-byte id per vector, plus the coarse and PQ centroids spread over N
    overhead = (params.nlist * DIM + params.pq_m * 256 * (DIM // params.pq_m)) * 4 / COUNT
    assert pq_bytes == pytest.approx(params.pq_m + 8 + overhead, abs=1.0) and pq_bytes < flat_bytes / 4
    _, exact = flat.search(queries, 10)
    _, found = compressed.search(queries, 10)
    assert recall_against_exact(exact, exact) == 1.0
    assert recall_against_exact(found, exact) >= RECALL_FLOOR


def test_default_parameters_and_refusals():
    assert default_nlist(100_000) == 1265 and default_nlist(1000) == 25
    # one byte per dimension up to 64 bytes, then the largest divisor of the dimension <= 64
    assert [default_pq_m(d) for d in (6, 16, 64, 96, 100, 128, 512)] == [6, 16, 64, 48, 50, 64, 64]
    defaults = resolve_params(IndexParams("ivfpq"), COUNT, DIM)
    assert (defaults.pq_m, defaults.nprobe) == (DIM, 4)
    with pytest.raises(ConfigError, match="needs at least 9,984 gallery images"):
        resolve_params(IndexParams("ivfpq"), 5000, 64)
    with pytest.raises(ConfigError, match="--pq-m 7 must divide"):
        resolve_params(IndexParams("ivfpq", pq_m=7), COUNT, DIM)
    with pytest.raises(ConfigError, match=re.escape("--nprobe 400 must lie in 1..nlist")):
        resolve_params(IndexParams("ivf", nprobe=400), COUNT, DIM)


def test_recall_against_exact_by_hand():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_against_exact(np.array([[3, 9, 1], [7, 8, 9]]), exact) == pytest.approx((2 / 3 + 0) / 2)


def test_hnsw_recall_against_exact_and_ef_search(gallery):
    vectors, queries = gallery
    params = resolve_params(IndexParams("hnsw"), COUNT, DIM)
    assert (params.hnsw_m, params.ef_construction, params.ef_search) == (32, 100, 64)
    assert (params.nlist, params.nprobe, params.pq_m) == (None, None, None)  # no training
    flat = train_index(resolve_params(IndexParams("flat"), COUNT, DIM), vectors)
    graph = train_index(params, vectors)
    assert isinstance(graph, faiss.IndexHNSWFlat) and graph.hnsw.efConstruction == 100 and graph.ntotal == COUNT
    _, exact = flat.search(queries, 10)
    _, found = graph.search(queries, 10)
    assert recall_against_exact(found, exact) >= 0.95
    narrow = train_index(
        resolve_params(IndexParams("hnsw", hnsw_m=4, ef_construction=8, ef_search=10), COUNT, DIM), vectors
    )
    _, rough = narrow.search(queries, 10)
    assert recall_against_exact(rough, exact) < recall_against_exact(found, exact)  # the parameters are used


def test_hnsw_options_belong_to_hnsw():
    with pytest.raises(ConfigError, match="--ef-search applies to hnsw indexes, not flat"):
        resolve_params(IndexParams("flat", ef_search=32), None, None)
    with pytest.raises(ConfigError, match="--hnsw-m applies to hnsw indexes, not ivf"):
        resolve_params(IndexParams("ivf", hnsw_m=16), None, None)
    with pytest.raises(ConfigError, match="--nprobe applies to ivf and ivfpq indexes, not hnsw"):
        resolve_params(IndexParams("hnsw", nprobe=4), None, None)
    with pytest.raises(ConfigError, match="--ef-construction 0 must be at least 1"):
        resolve_params(IndexParams("hnsw", ef_construction=0), None, None)
