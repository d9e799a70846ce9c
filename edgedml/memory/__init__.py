"""Cross-batch memory (XBM) and its drift adapters (XBN, AXBN): small batches that see many negatives."""

from edgedml.config import MEMORY_KINDS
from edgedml.memory.adapters import AXBNAdapter, KalmanMoments, XBNAdapter, affine_to, moments, renormalize
from edgedml.memory.bank import STORAGE_DTYPES, CrossBatchMemory
from edgedml.memory.cross_batch import CrossBatchLoss, Gather, build_memory_adapter, local_gather


def resolve_memory_size(size: float, train_images: int) -> int:
    """``--memory-size``: a count (> 1) or a fraction (0, 1] of the training set."""
    if size <= 0:
        raise ValueError(f"memory size must be positive, got {size}")
    if size <= 1.0:
        return max(1, int(size * train_images))
    if not float(size).is_integer():
        raise ValueError(f"a memory size above 1 is a count and must be whole, got {size}")
    return int(size)


__all__ = [
    "MEMORY_KINDS",
    "STORAGE_DTYPES",
    "AXBNAdapter",
    "CrossBatchLoss",
    "CrossBatchMemory",
    "Gather",
    "KalmanMoments",
    "XBNAdapter",
    "affine_to",
    "build_memory_adapter",
    "local_gather",
    "moments",
    "renormalize",
    "resolve_memory_size",
]
