"""Re-ranking the hits of a gallery search: α-query expansion (optionally on database-side augmented vectors), and
k-reciprocal re-ranking, both computed from the FAISS index's own neighbours and bounded per query
(docs/methods.md §8).

Embeddings are L2-normalized: ``s(x, y) = x·y`` is the cosine similarity.

``qe``: α-weighted query expansion, αQE (Radenović, Tolias, Chum, "Fine-tuning CNN Image Retrieval with No Human
Annotation", TPAMI 2019, arXiv:1711.02512, Sec. 5; average query expansion: Chum et al., ICCV 2007). With
``x_1..x_n`` the query's top ``n = qe_n`` hits::

    q' = normalize(q + Σ_{i≤n} max(s(q, x_i), 0)^α · x_i)          α = qe_alpha

and ``q'`` searches the index again (the new hits' scores are ``s(q', x)``). With ``dba_n > 0``, database-side
augmentation first (DBA: Arandjelović, Zisserman, "Three things everyone should know to improve object retrieval",
CVPR 2012; α-weighted as in Radenović et al.): each of the top ``candidates`` hits ``c`` is replaced by
``x̃_c = normalize(x_c + Σ_{j≤dba_n} max(s(x_c, g_j), 0)^α · g_j)`` over its own ``dba_n`` nearest gallery rows
``g_j``; αQE is then taken over the augmented vectors and the candidates are ranked by ``s(q', x̃_c)``. A real DBA
augments the whole database offline; here only each query's candidates are, so the ranking stays within them.

``kreciprocal``: k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017, arXiv:1701.08398, Sec. 3; the authors' code github.com/zhunzhong07/
person-re-ranking). The universe is the probe ``p`` (the query) and the gallery; ``N(x, k)`` are the ``k + 1``
members nearest ``x``, itself first (the authors' code takes ``k + 1`` columns of the initial ranking)::

    d(x, y)    = ‖x − y‖² / max_z ‖x − z‖²                 squared Euclidean = 2 − 2 s(x, y), divided by its row's
                                                         maximum over the universe (the authors' code)
    R(x, k)    = {g ∈ N(x, k) : x ∈ N(g, k)}                                         k-reciprocal neighbours
    R*(x, k)   = R(x, k) ∪ R(c, k/2) for each c ∈ R(x, k) with |R(x, k) ∩ R(c, k/2)| ≥ 2/3 |R(c, k/2)|
                                                         (k/2 rounded; the authors' code tests > 2/3)
    V_x[g]     = exp(−d(x, g)) / Σ_{h ∈ R*(x, k1)} exp(−d(x, h))  for g ∈ R*(x, k1), else 0
    V_x        ← mean of V_g over the k2 members nearest x (itself included)   local query expansion
    d_J(p, g)  = 1 − Σ_j min(V_p[j], V_g[j]) / Σ_j max(V_p[j], V_g[j])                Jaccard distance
    d*(p, g)   = (1 − λ) d_J(p, g) + λ d(p, g)           k1 = 20, k2 = 6, λ = 0.3 (the paper's defaults)

Bounded: only the probe's top ``candidates`` hits C are re-ranked, and V is computed on the universe U = {p} ∪ C.
Each member's neighbour list is its true one: the probe's is its search, a candidate's comes from searching the
index with the candidate's stored vector (the probe inserted where its similarity ranks it). Members outside U keep
their places in those lists (so they still push others down the ranks) but are treated as absent: never a
reciprocal or QE neighbour. The row maxima of ``d`` come from a search for the farthest row (the nearest to
``−x``). Nothing of size gallery x gallery is built: per query, K + 1 searches of depth k1 and K + 1 of depth 1,
and (K + 1)² matrices. When C is the whole gallery this is exactly the paper's algorithm on the full matrix. The
re-ranked score is ``1 − d*(p, g)`` (higher is nearer; scores are comparable within one query only).

The index is read through two calls, whatever its backend (a gallery index of ``edgedml.retrieval.store``, FAISS
or Milvus, or a raw FAISS index): ``search(vectors, depth, nprobe)`` and ``vectors(rows)``, the stored vectors
(FAISS: ``reconstruct_batch``, an IVF index getting its direct map made once): exact for ``flat``, ``ivf`` and
``hnsw``, the product quantizer's approximations for ``ivfpq``, whose re-ranking is approximate too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgedml.errors import ConfigError

RERANK_METHODS = ("none", "qe", "kreciprocal")
_MISSING = -1  # a FAISS id or a universe member that is not there


@dataclass(frozen=True)
class Rerank:
    """How the hits of a search are re-ranked (module docstring; docs/methods.md §8 gives the measured defaults).

    - ``candidates``: K, the hits per query that ``kreciprocal`` and DBA re-rank (a search of ``top_k`` above
      it re-ranks ``top_k``);
    - ``qe_n``, ``qe_alpha``: αQE's n and α; ``dba_n``: DBA's neighbours per candidate (0: no DBA);
    - ``k1``, ``k2``, ``lambda_value``: k-reciprocal's k1, k2 and λ.
    """

    method: str = "none"
    candidates: int = 100
    qe_n: int = 2
    qe_alpha: float = 3.0
    dba_n: int = 0
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self) -> None:
        if self.method not in RERANK_METHODS:
            raise ConfigError(f"--rerank {self.method!r} is not one of {', '.join(RERANK_METHODS)}")
        for name, low in (("candidates", 1), ("qe_n", 1), ("dba_n", 0), ("k1", 1), ("k2", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"re-ranking {name} {getattr(self, name)} must be at least {low}")
        if self.k2 > self.k1 + 1:
            raise ConfigError(f"re-ranking k2 {self.k2} must be at most k1 + 1 = {self.k1 + 1}")
        if not self.qe_alpha >= 0:
            raise ConfigError(f"re-ranking qe_alpha {self.qe_alpha} must be at least 0")
        if not 0 <= self.lambda_value <= 1:
            raise ConfigError(f"re-ranking lambda_value {self.lambda_value} must be within [0, 1]")
        if self.method == "kreciprocal" and self.candidates < self.k1:
            raise ConfigError(
                f"k-reciprocal re-ranking needs candidates >= k1 ({self.candidates} < {self.k1})",
                hint="the probe's k1 nearest must all be candidates",
            )

    @classmethod
    def parse(cls, method: str | Rerank) -> Rerank:
        """The settings of ``--rerank method`` (the defaults of its method); a ``Rerank`` passes through."""
        return method if isinstance(method, Rerank) else cls(method=method)

    def first_depth(self, top_k: int) -> int:
        """How many hits the first search of a ``top_k`` search needs."""
        if self.method == "none":
            return top_k
        if self.method == "qe" and self.dba_n == 0:
            return max(top_k, self.qe_n)
        return max(top_k, self.candidates)


def rerank(
    index: Any,
    queries: np.ndarray,
    scores: np.ndarray,
    ids: np.ndarray,
    settings: Rerank,
    query_rows: np.ndarray | None = None,
    nprobe: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank the hits of a search of ``index`` (a gallery index, or a raw FAISS index, on L2-normalized vectors,
    inner product).

    queries: (Q, D) float, L2-normalized; scores, ids: (Q, H) the first search's hits, best first (id -1: none).
    ``query_rows`` (Q,): each query's own row when the queries are gallery rows (leave-one-out; their own rows
    must not be among the hits, and are kept out of every re-search); None for outside queries. ``nprobe``: what the
    re-searches of an IVF gallery index scan (default: the index's).

    Returns re-ranked (scores, ids), (Q, R), best first, padded with -inf / -1: R = H for ``qe`` without DBA (its
    second search goes as deep), min(H, candidates) for DBA and ``kreciprocal``. Scores: cosine for ``none``;
    ``s(q', x)`` for ``qe`` (``s(q', x̃)`` with DBA); ``1 − d*`` for ``kreciprocal``.
    """
    if settings.method == "none":
        return scores, ids
    queries = _normalized(np.asarray(queries, dtype=np.float64))
    rows = np.full(len(queries), _MISSING) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    gallery = IndexNeighbours(index, _list_depth(settings), nprobe)
    if settings.method == "qe" and settings.dba_n == 0:
        return _alpha_qe(gallery, queries, scores, ids, settings, rows)
    depth = min(ids.shape[1], settings.candidates)
    gallery.prefetch(ids[:, :depth])
    if settings.method == "kreciprocal":
        gallery.prefetch(np.hstack([ids[:, :depth], rows[:, None]]), farthest=True)
    one = _dba_qe if settings.method == "qe" else _k_reciprocal
    results = []
    for query, row, row_ids in zip(queries, rows, ids[:, :depth], strict=True):
        candidates = row_ids[row_ids >= 0]
        distances = one(gallery, query, int(row), candidates, settings) if len(candidates) else np.zeros(0)
        order = np.argsort(distances, kind="stable")
        results.append((1.0 - distances[order], candidates[order]))
    return _padded(results, depth)


def flat_index(vectors: np.ndarray) -> Any:
    """An exact inner-product FAISS index of ``vectors`` (N, D), row i holding vector i."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def search_excluding(index: Any, queries: np.ndarray, depth: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ids (Q, depth) of each query's ``depth`` nearest rows other than its own row ``rows[i]``."""
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), depth + 1)
    return _dropping(scores, ids, rows, depth)


def leave_one_out_neighbours(embeddings: np.ndarray, depth: int, settings: Rerank, index: Any = None) -> np.ndarray:
    """Each item's ``depth`` nearest others (N, depth) after re-ranking, on an exact index of ``embeddings``
    (``index``: one holding them, row i vector i, e.g. a Milvus collection; default a flat FAISS index).

    The first ``candidates`` are re-ranked (all of them for ``qe`` without DBA, whose second search goes
    ``depth`` deep); beyond them the list goes on in the plain search's order (``with_original_tail``).
    """
    count = len(embeddings)
    depth = min(depth, count - 1)
    rows = np.arange(count)
    index = flat_index(embeddings) if index is None else index
    scores, ids = search_excluding(index, embeddings, min(max(depth, settings.candidates), count - 1), rows)
    _, reranked = rerank(index, embeddings, scores, ids, settings, query_rows=rows)
    return with_original_tail(reranked, ids)[:, :depth]


def with_original_tail(reranked: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Each row of ``reranked`` ids (Q, R) followed by the ``original`` ids (Q, H) it lacks, in their order: (Q, H)."""
    merged = np.full(original.shape, _MISSING, dtype=np.int64)
    for row, (head, ranked) in enumerate(zip(reranked, original, strict=True)):
        head = head[head >= 0]
        tail = ranked[(ranked >= 0) & ~np.isin(ranked, head)]
        both = np.concatenate([head, tail])[: original.shape[1]]
        merged[row, : len(both)] = both
    return merged


def make_direct_map(index: Any) -> None:
    """Let an IVF index ``reconstruct`` its rows (8 bytes per vector), unless it can already; other indexes
    reconstruct as they are. It changes the index: a shared one gets it once, before concurrent searches
    (:class:`~edgedml.retrieval.faiss_store.FaissIndex` does when it opens an IVF index)."""
    import faiss

    with contextlib.suppress(RuntimeError):  # not an IVF index
        ivf = faiss.extract_index_ivf(index)
        if ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()


class RawFaiss:
    """A raw FAISS index read as a gallery index is: ``search(vectors, k, nprobe)`` (its own nprobe) and
    ``vectors(rows)`` (its direct map made on first use)."""

    def __init__(self, index: Any):
        self.index, self.dim = index, index.d
        self._direct_map = False

    def search(self, vectors: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(vectors, k)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        if not self._direct_map:
            make_direct_map(self.index)
            self._direct_map = True
        return self.index.reconstruct_batch(rows)


class IndexNeighbours:
    """What re-ranking reads from an index: searches, stored vectors, and each row's ``depth`` nearest other rows
    and farthest distance, each searched once per ``rerank`` call. ``index``: anything with ``search(vectors, k,
    nprobe)`` and ``vectors(rows)`` (a gallery index), or a raw FAISS index."""

    def __init__(self, index: Any, depth: int, nprobe: int | None = None):
        self.index = index if hasattr(index, "vectors") else RawFaiss(index)
        self.depth, self.nprobe = depth, nprobe
        self._lists: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._farthest: dict[int, float] = {}

    def search(self, vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids (len(vectors), depth), padded with -inf / -1 past the index's rows."""
        scores, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), depth, self.nprobe)
        missing = depth - ids.shape[1]
        if missing > 0:
            scores = np.hstack([scores, np.full((len(scores), missing), -np.inf, dtype=scores.dtype)])
            ids = np.hstack([ids, np.full((len(ids), missing), _MISSING, dtype=ids.dtype)])
        return scores, ids

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of ``rows`` (any shape; -1 gives zeros), L2-normalized, float64: rows.shape + (D,)."""
        flat = np.asarray(rows, dtype=np.int64).reshape(-1)
        vectors = np.zeros((len(flat), self.index.dim), dtype=np.float64)
        present = flat >= 0
        if present.any():
            vectors[present] = _normalized(self.index.vectors(flat[present]).astype(np.float64))
        return vectors.reshape(*np.shape(rows), self.index.dim)

    def prefetch(self, rows: np.ndarray, farthest: bool = False) -> None:
        """Search the neighbour lists (and with ``farthest`` the farthest distances) of all ``rows`` at once."""
        flat = dict.fromkeys(np.asarray(rows, dtype=np.int64).reshape(-1).tolist())
        known = self._farthest if farthest else self._lists
        wanted = np.array([r for r in flat if r >= 0 and r not in known], dtype=np.int64)
        if not len(wanted):
            return
        vectors = self.vectors(wanted)
        if farthest:
            self._farthest.update(zip(wanted.tolist(), self.farthest_of(vectors).tolist(), strict=True))
            return
        scores, ids = _dropping(*self.search(vectors, self.depth + 1), wanted, self.depth)
        self._lists.update((row, (ids[i], scores[i])) for i, row in enumerate(wanted.tolist()))

    def neighbours(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids and similarities (len(rows), depth) of each row's nearest other rows, best first (id -1: none)."""
        self.prefetch(rows)
        lists = [self._lists[int(r)] for r in rows]
        return np.stack([ids for ids, _ in lists]), np.stack([scores for _, scores in lists])

    def farthest(self, rows: np.ndarray) -> np.ndarray:
        """The largest squared distance from each of ``rows`` to any gallery row: (len(rows),)."""
        self.prefetch(rows, farthest=True)
        return np.array([self._farthest[int(r)] for r in rows])

    def farthest_of(self, vectors: np.ndarray) -> np.ndarray:
        """The largest squared distance ``2 − 2 min_g s(x, g)`` from each vector to a gallery row (the row nearest
        ``−x``): (len(vectors),)."""
        scores, _ = self.search(-vectors, 1)
        return 2.0 + 2.0 * scores[:, 0].astype(np.float64)


def _list_depth(settings: Rerank) -> int:
    """Neighbours per gallery row a method reads (one more for DBA: the query's own row may be among them)."""
    if settings.method == "kreciprocal":
        return settings.k1
    return settings.dba_n + 1


# ---------------------------------------------------------------------------------------------- αQE and DBA


def _expanded(vectors: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, alpha: float) -> np.ndarray:
    """normalize(x + Σ_i max(s_i, 0)^α · n_i) per row: vectors (..., D), neighbours (..., n, D), similarities
    (..., n) (-inf for a missing neighbour: weight 0)."""
    weights = np.maximum(np.nan_to_num(similarities, neginf=0.0), 0.0) ** alpha
    return _normalized(vectors + np.einsum("...n,...nd->...d", weights, neighbours))


def _alpha_qe(
    gallery: IndexNeighbours, queries: np.ndarray, scores: np.ndarray, ids: np.ndarray, s: Rerank, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    top = ids[:, : s.qe_n]
    similarities = np.where(top >= 0, scores[:, : s.qe_n], -np.inf)
    expanded = _expanded(queries, gallery.vectors(top), similarities, s.qe_alpha)
    depth = ids.shape[1]
    new_scores, new_ids = gallery.search(expanded, depth + 1)
    return _dropping(new_scores, new_ids, rows, depth)


def _dba_qe(gallery: IndexNeighbours, query: np.ndarray, row: int, candidates: np.ndarray, s: Rerank) -> np.ndarray:
    """DBA on the candidates, αQE over the augmented vectors: ``1 − s(q', x̃_c)`` per candidate (a distance)."""
    neighbour_ids, neighbour_scores = gallery.neighbours(candidates)
    neighbour_scores, neighbour_ids = _dropping(neighbour_scores, neighbour_ids, np.full(len(candidates), row), s.dba_n)
    neighbour_scores = np.where(neighbour_ids >= 0, neighbour_scores, -np.inf)
    augmented = _expanded(gallery.vectors(candidates), gallery.vectors(neighbour_ids), neighbour_scores, s.qe_alpha)
    similarities = augmented @ query
    top = np.argsort(-similarities, kind="stable")[: s.qe_n]
    expanded = _expanded(query, augmented[top], similarities[top], s.qe_alpha)
    return 1.0 - augmented @ expanded


# ---------------------------------------------------------------------------------------------- k-reciprocal


def _k_reciprocal(
    gallery: IndexNeighbours, query: np.ndarray, row: int, candidates: np.ndarray, s: Rerank
) -> np.ndarray:
    """d*(p, c) for each candidate c: (K,). Universe members are numbered 0 (the probe) and 1 + i (candidate i)."""
    vectors = np.vstack([query[None, :], gallery.vectors(candidates)])
    similarities = vectors @ vectors.T
    distances = np.maximum(2.0 - 2.0 * similarities, 0.0)
    np.fill_diagonal(distances, 0.0)
    probe_farthest = gallery.farthest([row]) if row >= 0 else gallery.farthest_of(query[None, :])
    farthest = np.maximum(np.concatenate([probe_farthest, gallery.farthest(candidates)]), distances.max(axis=1))
    distances /= np.maximum(farthest, np.finfo(np.float64).tiny)[:, None]
    lists = _universe_lists(gallery, row, candidates, similarities[1:, 0], s.k1)
    reciprocal = _reciprocal(lists, s.k1 + 1)
    expanded = _expansion(reciprocal, _reciprocal(lists, round(s.k1 / 2) + 1))
    weights = np.where(expanded, np.exp(-distances), 0.0)
    encoding = weights / weights.sum(axis=1, keepdims=True)
    nearest = _members(lists, s.k2).astype(np.float64)
    encoding = (nearest / nearest.sum(axis=1, keepdims=True)) @ encoding
    shared = np.minimum(encoding[0], encoding[1:]).sum(axis=1)
    jaccard = 1.0 - shared / np.maximum(encoding[0], encoding[1:]).sum(axis=1)
    return (1.0 - s.lambda_value) * jaccard + s.lambda_value * distances[0, 1:]


def _universe_lists(
    gallery: IndexNeighbours, row: int, candidates: np.ndarray, probe_similarities: np.ndarray, depth: int
) -> np.ndarray:
    """Each member's ``depth + 1`` nearest members, itself first, by their true ranks: (K + 1, depth + 1) member
    numbers, -1 for a gallery row outside the universe (or none).

    The probe's list is its own search (the candidates, in order). A candidate's is its gallery neighbours with the
    probe in it: as its own row (leave-one-out), or inserted after the rows more similar than the probe.
    """
    count = len(candidates)
    probe = np.full(depth + 1, _MISSING)
    probe[: min(count + 1, depth + 1)] = np.arange(min(count + 1, depth + 1))
    neighbour_ids, neighbour_scores = gallery.neighbours(candidates)
    members = _member_numbers(neighbour_ids, candidates, row)
    if row < 0:
        members = _inserted(members, (neighbour_scores > probe_similarities[:, None]).sum(axis=1))
    own = np.arange(1, count + 1)[:, None]
    return np.vstack([probe[None, :], np.hstack([own, members[:, :depth]])])


def _member_numbers(ids: np.ndarray, candidates: np.ndarray, row: int) -> np.ndarray:
    """Gallery ids -> member numbers: 1 + the candidate's position, 0 for the probe's own row, else -1."""
    order = np.argsort(candidates)
    ranked = candidates[order]
    at = np.searchsorted(ranked, ids).clip(max=len(ranked) - 1)
    members = np.where((ranked[at] == ids) & (ids >= 0), order[at] + 1, _MISSING)
    if row >= 0:
        members[ids == row] = 0
    return members


def _inserted(members: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Each row of ``members`` with the probe (0) inserted at ``positions[row]``: one column wider."""
    padded = np.hstack([members, np.full((len(members), 1), _MISSING)])
    shifted = np.hstack([np.full((len(members), 1), _MISSING), members])
    columns = np.arange(padded.shape[1])[None, :]
    at = positions[:, None]
    return np.where(columns < at, padded, np.where(columns == at, 0, shifted))


def _members(lists: np.ndarray, width: int) -> np.ndarray:
    """(M, M) bool: [x, g] when g is among the first ``width`` entries of x's list."""
    head = lists[:, :width]
    present = head >= 0
    member = np.zeros((len(lists), len(lists)), dtype=bool)
    member[np.nonzero(present)[0], head[present]] = True
    return member


def _reciprocal(lists: np.ndarray, width: int) -> np.ndarray:
    """R(x, width − 1) as an (M, M) bool matrix: g in x's first ``width`` and x in g's."""
    member = _members(lists, width)
    return member & member.T


def _expansion(reciprocal: np.ndarray, half: np.ndarray) -> np.ndarray:
    """R*(x, k1): R(x, k1) joined by R(c, k1/2) for each c in it that shares at least 2/3 of R(c, k1/2) with it."""
    sizes = half.sum(axis=1)
    overlap = reciprocal.astype(np.float64) @ half.T.astype(np.float64)  # [x, c] = |R(x, k1) ∩ R(c, k1/2)|
    joins = reciprocal & (3 * overlap >= 2 * sizes[None, :])
    return reciprocal | (joins.astype(np.float64) @ half.astype(np.float64) > 0)


# ---------------------------------------------------------------------------------------------- helpers


def _normalized(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def _dropping(scores: np.ndarray, ids: np.ndarray, rows: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``depth`` hits of each row other than ``rows[i]`` (-1: drop nothing), order kept."""
    order = np.argsort((ids == np.asarray(rows)[:, None]) & (ids >= 0), axis=1, kind="stable")[:, :depth]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _padded(results: list[tuple[np.ndarray, np.ndarray]], depth: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.full((len(results), depth), -np.inf, dtype=np.float32)
    ids = np.full((len(results), depth), _MISSING, dtype=np.int64)
    for i, (row_scores, row_ids) in enumerate(results):
        scores[i, : len(row_ids)] = row_scores
        ids[i, : len(row_ids)] = row_ids
    width = max((len(row_ids) for _, row_ids in results), default=0)
    return scores[:, :width], ids[:, :width]
