"""Search a gallery index with query images, embedded by the model that built the index, optionally re-ranked
(``edgedml.retrieval.rerank``).

The index is a FAISS folder or a Milvus collection (:func:`edgedml.retrieval.index.open_index`). The model is
the one named in the index's description unless another file is given (a moved or
re-exported copy); either way it must be the index's model: the same file (sha256), or one exported
from the same run (config hash) with the same dimension, e.g. an fp16 copy of the fp32 gallery model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgedml.data.images import check_image
from edgedml.data.sources import ImageRef, Sample
from edgedml.errors import ConfigError, DataError, ModelError
from edgedml.export.load import load_embedder
from edgedml.export.runtime import Embedder, embed_samples, file_digest
from edgedml.retrieval.index import check_same_model, open_index
from edgedml.retrieval.rerank import Rerank
from edgedml.retrieval.rerank import rerank as rerank_hits
from edgedml.retrieval.store import GalleryIndex

log = logging.getLogger(__name__)


@dataclass
class Hit:
    rank: int
    id: int
    path: str
    label: str
    score: float


@dataclass
class QueryResult:
    query: str
    hits: list[Hit]

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "hits": [asdict(hit) for hit in self.hits]}


class Searcher:
    """An index and its model, opened once for many searches."""

    def __init__(self, index: GalleryIndex, embedder: Embedder):
        self.index, self.embedder = index, embedder

    @classmethod
    def open(
        cls,
        location: str | Path,
        model: str | Path | None = None,
        runtime: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
        collection: str | None = None,
    ) -> Searcher:
        """``location``: a FAISS index folder, or a Milvus URI / ``.db`` file holding ``collection``.
        ``threads``: onnxruntime's intra-op threads (default: onnxruntime's own choice)."""
        index = open_index(location, collection, device)
        model_path = Path(model) if model is not None else Path(index.meta["model"]["path"])
        if model is None and not model_path.exists():
            raise DataError(
                f"{index.location}: its model {model_path} is gone",
                hint="pass the model's new location with --model",
            )
        digest = file_digest(model_path)
        if model is None and digest != index.meta["model"]["sha256"]:
            # The path comes from the index, not from the user: nothing is opened there unless it is that model.
            raise ModelError(
                f"{index.location}: {model_path} is no longer the model that built the index "
                f"(sha256 {digest[:12]} vs {index.meta['model']['sha256'][:12]})",
                hint="pass the index's model with --model, or rebuild the index with the new one",
            )
        embedder = load_embedder(model_path, runtime, device, threads=threads)
        check_same_model(index.meta, embedder.info, digest, str(model_path), strict=False)
        return cls(index, embedder)

    def search(
        self,
        queries: Sequence[ImageRef | Path],
        top_k: int = 10,
        nprobe: int | None = None,
        batch_size: int = 64,
        rerank: str | Rerank = "none",
    ) -> list[QueryResult]:
        """The ``top_k`` gallery rows nearest each query image (a file path or a uint8 array), re-ranked by
        ``rerank`` (see ``search_embeddings``)."""
        settings = Rerank.parse(rerank)  # before any work
        names = [_check_query(query, position) for position, query in enumerate(queries)]
        samples = [Sample(image=str(q) if isinstance(q, Path) else q, label="") for q in queries]
        embeddings, kept = embed_samples(self.embedder, samples, batch_size)
        if len(kept) != len(samples):
            bad = names[min(set(range(len(samples))) - set(kept))]
            raise DataError(f"query image {bad}: unreadable", hint="pass an image file Pillow can open")
        return self.search_embeddings(embeddings, names, top_k, nprobe, settings)

    def search_embeddings(
        self,
        embeddings: np.ndarray,
        names: Sequence[str],
        top_k: int = 10,
        nprobe: int | None = None,
        rerank: str | Rerank = "none",
    ) -> list[QueryResult]:
        """The ``top_k`` hits of each embedding (Q, dim), L2-normalized.

        A hit's ``score``: the cosine similarity (``none``); the cosine similarity to the expanded query
        (``qe``; with DBA, of the augmented gallery vector); ``1 - d*``, one minus k-reciprocal's final distance
        (``kreciprocal``). Hits are in the order of the score either way; re-ranked scores compare within a query.
        """
        settings = Rerank.parse(rerank)
        if top_k < 1:
            raise ConfigError(f"--top-k {top_k} must be at least 1")
        scores, ids = self._ranked(embeddings, top_k, nprobe, settings)
        manifest = self.index.manifest
        results = []
        for name, row_scores, row_ids in zip(names, scores, ids, strict=True):
            hits = [
                Hit(rank, int(row), manifest.paths[row], manifest.labels[row], float(score))
                for rank, (row, score) in enumerate(
                    ((r, s) for r, s in zip(row_ids, row_scores, strict=True) if r >= 0), 1
                )
            ]
            results.append(QueryResult(name, hits))
        return results

    def _ranked(
        self, embeddings: np.ndarray, top_k: int, nprobe: int | None, settings: Rerank
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids (Q, <= top_k) of the first search, re-ranked."""
        if settings.method != "none":
            settings = replace(settings, candidates=max(settings.candidates, top_k))  # re-rank every hit returned
        scores, ids = self.index.search(embeddings, settings.first_depth(top_k), nprobe)
        scores, ids = rerank_hits(self.index, embeddings, scores, ids, settings, nprobe=nprobe)
        return scores[:, :top_k], ids[:, :top_k]


def _check_query(query: ImageRef | Path, position: int) -> str:
    """The query's display name; a missing or undecodable file is an error naming it."""
    if isinstance(query, np.ndarray):
        return f"<array {position}>"
    reason = check_image(str(query))
    if reason is not None:
        raise DataError(f"query image {query}: {reason}", hint="pass an image file Pillow can open")
    return str(query)


def search(
    location: str | Path,
    queries: Sequence[ImageRef | Path],
    top_k: int = 10,
    model: str | Path | None = None,
    nprobe: int | None = None,
    runtime: str | None = None,
    device: str = "cpu",
    rerank: str | Rerank = "none",
    collection: str | None = None,
) -> list[QueryResult]:
    """Open the index at ``location`` with its model (or ``model``, checked against it) and search it."""
    settings = Rerank.parse(rerank)  # before any work
    searcher = Searcher.open(location, model, runtime, device, collection=collection)
    return searcher.search(queries, top_k, nprobe, rerank=settings)
