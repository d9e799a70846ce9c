"""The served index, generation by generation: a new generation committed is picked up without a restart.

An index changes only by a commit (``edgedml.retrieval.store``): a FAISS folder by replacing ``index.json``
atomically, a Milvus collection by switching its alias or listing a new partition. A look at the commit point
(:meth:`GalleryIndex.stamp`: a ``stat`` of index.json; Milvus: the collection behind the alias and its
generation, round trips to the server) at most every ``STAMP_SECONDS``, by the request that finds the last
look older, tells whether a new generation was committed. The new
generation is then loaded in a background thread while requests go on with the one they hold; the
reference to the current :class:`Generation` is swapped under a lock once the new one is fully read.
A request takes one :class:`Generation` when it starts and uses only that object to the end: no
request mixes two generations, and none waits for a load.

A load races with a writer: the writer removes the old generation's files right after its commit, so
``index.json`` may name files that are gone by the time they are opened; the load then retries with
the newer ``index.json``. (Milvus: an ``--overwrite`` drops the collection it replaced, so requests still on
the old generation fail until the new one is loaded; appends never disturb them.)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgedml.errors import DataError, ModelError
from edgedml.export.runtime import ModelInfo
from edgedml.retrieval.index import check_same_model, open_index
from edgedml.retrieval.store import GalleryIndex, Stamp

log = logging.getLogger(__name__)

STAMP_SECONDS = 0.2  # how stale a served generation may be: not a look at the commit point per request
LOAD_ATTEMPTS = 5
RETRY_SECONDS = 0.05
NO_STAMP: Stamp = (0, 0, 0)


@dataclass(frozen=True)
class Generation:
    """One committed generation, never changed once loaded: ``names`` holds each row's gallery-relative name."""

    index: GalleryIndex
    names: tuple[str, ...]
    stamp: Stamp

    @property
    def number(self) -> int:
        return self.index.generation

    @property
    def count(self) -> int:
        return self.index.count


@dataclass(frozen=True)
class ServedModel:
    """The model every generation must have been built with (checked as ``edgedml search --model`` checks it)."""

    path: Path
    digest: str
    info: ModelInfo


class LiveIndex:
    """The current generation of an index (a FAISS folder, or a Milvus URI and ``collection``), reloaded in the
    background when a new one is committed."""

    def __init__(
        self,
        location: str,
        model: ServedModel,
        generation: Generation,
        device: str = "cpu",
        collection: str | None = None,
    ):
        self.location, self.collection, self.model, self.device = location, collection, model, device
        self._generation = generation
        self._lock = threading.Lock()
        self._loading = False
        self._refused: Stamp | None = None  # a generation that cannot be served (another model): not retried
        self._looked = time.monotonic()  # when the commit point was last looked at
        self.stale: str | None = None  # why a newer generation on disk is not served

    @classmethod
    def serving(
        cls, index: GalleryIndex, location: str, model: ServedModel, device: str = "cpu", collection: str | None = None
    ) -> LiveIndex:
        """Serve ``index``, opened from ``location`` (and checked against ``model``)."""
        names = gallery_names(index.manifest.paths, index.home)
        return cls(location, model, Generation(index, names, index.opened or NO_STAMP), device, collection)

    def current(self) -> Generation:
        """The generation to serve a request with; starts loading a newer one if the commit point changed
        (looked at when the last look is ``STAMP_SECONDS`` old)."""
        now = time.monotonic()
        if now - self._looked < STAMP_SECONDS:
            return self._generation
        self._looked = now
        stamp = self._stamp()
        if stamp is not None and stamp != self._generation.stamp and stamp != self._refused:
            self._start_load()
        return self._generation

    def refresh(self) -> Generation:
        """Load the directory's current generation now and serve it (after a write of this server's own)."""
        generation = self._load()
        self._swap(generation)
        return generation

    def _stamp(self) -> Stamp | None:
        return self._generation.index.stamp()

    def _start_load(self) -> None:
        with self._lock:
            if self._loading:
                return
            self._loading = True
        threading.Thread(target=self._load_in_background, name="edgedml-index-reload", daemon=True).start()

    def _load_in_background(self) -> None:
        try:
            while True:
                stamp = self._stamp()
                if stamp is None or stamp in (self._generation.stamp, self._refused):
                    return
                try:
                    self._swap(self._load())
                except (DataError, ModelError) as exc:
                    self._refused = stamp
                    self.stale = exc.message
                    log.error("%s: not serving the new generation: %s", self.location, exc.message)
                    return
        finally:
            with self._lock:
                self._loading = False

    def _load(self) -> Generation:
        """The generation committed now, retried while a writer replaces it under the load."""
        error: DataError | None = None
        for attempt in range(LOAD_ATTEMPTS):
            try:
                index = open_index(self.location, self.collection, self.device)
            except DataError as exc:  # the files it named were removed by the next commit
                error = exc
                time.sleep(RETRY_SECONDS * (attempt + 1))
                continue
            check_same_model(index.meta, self.model.info, self.model.digest, str(self.model.path), strict=False)
            return Generation(index, gallery_names(index.manifest.paths, index.home), index.opened or NO_STAMP)
        raise error or DataError(f"{self.location}: cannot be read")

    def _swap(self, generation: Generation) -> None:
        """Serve ``generation`` unless a newer one is served already (a slower load finishing after a faster
        one); an older number is served only when it is what the directory holds now (an index rebuilt in place)."""
        with self._lock:
            current = self._generation
            if generation.number < current.number and generation.stamp != self._stamp():
                return
            if generation.number != current.number:
                log.info("%s: serving generation %d (%d rows)", self.location, generation.number, generation.count)
            self._generation = generation
            self.stale = None


def gallery_names(paths: Sequence[str], index_root: Path | None) -> tuple[str, ...]:
    """Each manifest row's name for clients, without the device's absolute paths.

    Uploaded images (files inside the index's folder, ``index_root``: a FAISS index directory, a Milvus Lite
    database's folder) are named relative to it (``uploads/cat/ab12.png``); other files relative to the deepest
    folder holding all of them (``class4/3.png``); rows of a bundled source keep their key (``digits#12``).
    """
    root = os.path.abspath(index_root) if index_root is not None else None
    outside = [path for path in paths if os.path.isabs(path) and not _inside(path, root)]
    common = os.path.commonpath([os.path.dirname(path) for path in outside]) if outside else root
    names = []
    for path in paths:
        if not os.path.isabs(path):
            names.append(path)
        else:
            names.append(os.path.relpath(path, root if _inside(path, root) else common))
    return tuple(names)


def _inside(path: str, folder: str | None) -> bool:
    return folder is not None and path.startswith(folder + os.sep)
