"""Allocation timelines: every tensor storage created inside a block, when it appears and when it dies.

Works on real tensors and under ``FakeTensorMode`` (nothing is allocated then), so the peak
memory of a step can be measured on a CPU for sizes that would not fit anywhere. Unlike a
plain peak counter, the timeline can be re-read without chosen storages (the inputs, their
gradients), which is how the loss benchmarks report "memory beyond the embeddings".
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


@dataclass
class AllocationTimeline(TorchDispatchMode):
    """Use as a context manager; afterwards ``peak_bytes(exclude=...)`` reads the peak."""

    events: list[tuple[int, int]] = field(default_factory=list)  # (storage key, +bytes on birth / -bytes on death)
    _live: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()
        self._gc_was_enabled = False

    def __enter__(self):
        # Storages caught in reference cycles die whenever the collector runs; with it paused,
        # lifetimes follow reference counts only and the same step gives the same timeline.
        # (No collection on entry: storages born before the block are never recorded.)
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            if self._gc_was_enabled:
                gc.enable()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage: not an allocation.
        inputs = {storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(output):
            if isinstance(tensor, torch.Tensor) and storage_key(tensor) not in inputs:
                self._record(tensor)
        return output

    def _record(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = size
        self.events.append((key, size))
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        size = self._live.pop(key, None)
        if size is not None:
            self.events.append((key, -size))

    def mark(self) -> int:
        """A position in the timeline (the number of events so far), to split a step into phases."""
        return len(self.events)

    def live_bytes(self, until: int | None = None) -> int:
        """Bytes alive after the first ``until`` events (all of them by default)."""
        return sum(delta for _, delta in self.events[:until])

    def deltas(self) -> list[int]:
        """The signed byte changes, in order."""
        return [delta for _, delta in self.events]

    def peak_bytes(self, exclude: set[int] | frozenset[int] = frozenset()) -> int:
        """The highest live byte count, leaving out the storages in ``exclude``."""
        return running_peak(delta for key, delta in self.events if key not in exclude)


def running_peak(deltas: Iterable[int]) -> int:
    """The highest running sum of signed allocation sizes (0 if it never rises above the start)."""
    live = peak = 0
    for delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak
