"""Retrieval with exported models.

A gallery index (FAISS folder or Milvus collection), search in it (optionally re-ranked), and evaluation of any
model on its run's split.
"""

from edgedml.retrieval.evaluate import SplitSettings, evaluate_model, split_settings
from edgedml.retrieval.index import IndexMode, IndexSummary, build_index, open_index
from edgedml.retrieval.rerank import RERANK_METHODS, Rerank
from edgedml.retrieval.search import Hit, QueryResult, Searcher, search
from edgedml.retrieval.store import GalleryIndex

__all__ = [
    "RERANK_METHODS",
    "GalleryIndex",
    "Hit",
    "IndexMode",
    "IndexSummary",
    "QueryResult",
    "Rerank",
    "Searcher",
    "SplitSettings",
    "build_index",
    "evaluate_model",
    "open_index",
    "search",
    "split_settings",
]
