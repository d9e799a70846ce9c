"""Retrieval: metrics now; indexing and search with exported models come with the retrieval issue."""

from edgedml.retrieval.metrics import RECALL_KS, RetrievalMetrics, recall_and_map, retrieval_metrics

__all__ = ["RECALL_KS", "RetrievalMetrics", "recall_and_map", "retrieval_metrics"]
