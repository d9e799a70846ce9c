"""Retrieval: metrics, a FAISS gallery index built with an exported model, and search in it."""

from edgedml.retrieval.index import GalleryIndex, IndexSummary, build_index
from edgedml.retrieval.metrics import RECALL_KS, RetrievalMetrics, recall_and_map, retrieval_metrics
from edgedml.retrieval.search import Hit, QueryResult, Searcher, search

__all__ = [
    "RECALL_KS",
    "GalleryIndex",
    "Hit",
    "IndexSummary",
    "QueryResult",
    "RetrievalMetrics",
    "Searcher",
    "build_index",
    "recall_and_map",
    "retrieval_metrics",
    "search",
]
