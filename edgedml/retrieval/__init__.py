"""Retrieval with exported models.

A FAISS gallery index, search in it (optionally re-ranked), and evaluation of any model on its run's split.
"""

from edgedml.retrieval.evaluate import SplitSettings, evaluate_model, split_settings
from edgedml.retrieval.index import GalleryIndex, IndexMode, IndexSummary, build_index
from edgedml.retrieval.rerank import RERANK_METHODS, Rerank
from edgedml.retrieval.search import Hit, QueryResult, Searcher, search

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
    "search",
    "split_settings",
]
