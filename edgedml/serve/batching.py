"""Micro-batching: the queries of concurrent requests embedded in one model call.

A model may run a batch in less time than its images one by one (one session call, one kernel launch,
one thread hand-off), so a server under load may do better collecting the queries of concurrent
requests and embedding them together. The first caller to reach the model leads a batch: it waits
while requests that announced themselves (:meth:`BatchingEmbedder.expecting`, entered when a request
starts decoding its uploads) have not reached the model yet, for at most ``window_ms`` and until
``max_batch`` images are queued; then it runs the model on every queued image and hands each caller its
rows. A request alone never waits: with no other request on its way, the leader runs at once.
Whether batching pays depends on the model and the device: ``benchmarks/serve_load.py`` measures it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgedml.export.runtime import Embedder, ModelInfo

DEFAULT_MAX_BATCH = 64


@dataclass
class _Call:
    images: np.ndarray  # (N, 3, H, W) float32
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class BatchingEmbedder:
    """An :class:`~edgedml.export.runtime.Embedder` whose ``embed`` may be called from many threads at once.

    ``window_ms`` 0: each call goes straight to ``embedder`` (concurrent calls run concurrently).
    ``calls`` and ``images`` count the model calls made and the images they embedded.
    """

    def __init__(self, embedder: Embedder, window_ms: float, max_batch: int = DEFAULT_MAX_BATCH):
        self.embedder = embedder
        self.window = window_ms / 1000
        self.max_batch = max_batch
        self.calls = 0
        self.images = 0
        self._condition = threading.Condition()
        self._queued: list[_Call] = []
        self._coming = 0  # requests announced by ``expecting`` that have not called ``embed`` yet
        self._announced = threading.local()
        self._counting = threading.Lock()

    @property
    def runtime(self) -> str:
        return self.embedder.runtime

    @property
    def path(self) -> Path:
        return self.embedder.path

    @property
    def info(self) -> ModelInfo:
        return self.embedder.info

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce that this thread will call ``embed`` soon (a leader waits for it, within the window)."""
        with self._condition:
            self._coming += 1
        self._announced.pending = True
        try:
            yield
        finally:
            self._arrived()

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> (N, dim) float32, as the wrapped embedder computes it."""
        if self.window <= 0:
            self._arrived()
            return self._run_model(images)
        call = _Call(images)
        with self._condition:
            self._queued.append(call)
            leader = len(self._queued) == 1
        self._arrived()
        if leader:
            self._run(self._collect())
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _arrived(self) -> None:
        """This thread's announced request reached the model (or ended without it): a leader need not wait."""
        if getattr(self._announced, "pending", False):
            self._announced.pending = False
            with self._condition:
                self._coming -= 1
                self._condition.notify_all()

    def _queued_images(self) -> int:
        return sum(len(call.images) for call in self._queued)

    def _collect(self) -> list[_Call]:
        """The calls queued once no announced request is on its way, the window is over, or the batch is full."""
        deadline = time.monotonic() + self.window
        with self._condition:
            while self._coming > 0 and self._queued_images() < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            batch, self._queued = self._queued, []
        return batch

    def _run(self, batch: list[_Call]) -> None:
        try:
            embeddings = self._run_model(np.concatenate([call.images for call in batch]))
            start = 0
            for call in batch:
                call.result = embeddings[start : start + len(call.images)]
                start += len(call.images)
        except BaseException as exc:  # every waiting caller gets the model's error, none waits forever
            for call in batch:
                call.error = exc
        finally:
            for call in batch:
                call.done.set()

    def _run_model(self, images: np.ndarray) -> np.ndarray:
        embeddings = self.embedder.embed(images)
        with self._counting:
            self.calls += 1
            self.images += len(images)
        return embeddings
