"""What the server's endpoints do, without HTTP: search, embed, append, describe, preview.

:class:`SearchService` holds the model (loaded once) and the :class:`~edgedml.serve.live.LiveIndex`.
Each call takes the current generation once and answers from it alone, so a response's
``generation`` and ``count`` say which index it was computed from. Bad input raises the library's
typed errors (DataError, ConfigError and the two below), which the HTTP layer maps to 4xx statuses.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgedml.data import Sample
from edgedml.data.images import decode_upload
from edgedml.errors import ConfigError, DataError, EdgedmlError
from edgedml.export.runtime import embed_samples, file_digest
from edgedml.retrieval.rerank import RERANK_METHODS
from edgedml.retrieval.search import Searcher
from edgedml.serve.batching import BatchingEmbedder
from edgedml.serve.live import Generation, LiveIndex, ServedModel
from edgedml.serve.settings import MAX_TOP_K, ServeSettings, check_rerank, check_top_k
from edgedml.serve.thumbnails import Thumbnail, ThumbnailCache
from edgedml.serve.uploads import append_uploads, check_label

NAME_LENGTH = 120
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


class NotFound(DataError):
    """A gallery row the served generation does not hold, or whose image is gone."""


class WritesOff(EdgedmlError):
    """``POST /index`` on a server started without ``--allow-writes``."""


@dataclass(frozen=True)
class Upload:
    """One uploaded file: ``name`` as the client sent it, ``data`` its bytes."""

    name: str
    data: bytes


class SearchService:
    """One served index and its model."""

    def __init__(
        self,
        settings: ServeSettings,
        live: LiveIndex,
        embedder: BatchingEmbedder,
        thumbnails: ThumbnailCache | None = None,
    ):
        self.settings, self.live, self.embedder = settings, live, embedder
        self.thumbnails = thumbnails or ThumbnailCache()
        self._writing = threading.Lock()

    @classmethod
    def open(cls, settings: ServeSettings) -> SearchService:
        """Open the index and its model once (checked as ``edgedml search`` checks them)."""
        torch.set_num_threads(settings.threads)
        searcher = Searcher.open(
            settings.location, settings.model, settings.runtime, settings.device, settings.threads, settings.collection
        )
        if settings.allow_writes and settings.uploads is None and searcher.index.uploads_folder is None:
            raise ConfigError(
                f"--allow-writes: {searcher.index.location} keeps no files, so uploads need a folder",
                hint="add --uploads DIR (a folder the server stores uploaded images in)",
            )
        embedder = searcher.embedder
        model = ServedModel(Path(embedder.path), file_digest(embedder.path), embedder.info)
        live = LiveIndex.serving(searcher.index, settings.location, model, settings.device, settings.collection)
        return cls(settings, live, BatchingEmbedder(embedder, settings.batch_window_ms))

    @property
    def model(self) -> ServedModel:
        return self.live.model

    # ------------------------------------------------------------------------------------------ reads

    def health(self) -> dict[str, Any]:
        generation = self.live.current()
        return {"status": "ok", "generation": generation.number, "count": generation.count, "stale": self.live.stale}

    def info(self) -> dict[str, Any]:
        generation = self.live.current()
        info, settings = self.model.info, self.settings
        return {
            "model": {
                "file": self.model.path.name,
                "sha256": self.model.digest,
                "runtime": self.embedder.runtime,
                "precision": info.precision,
                "dim": info.dim,
                "input_size": info.input_size,
                "batch": info.batch,
                "backbone": info.backbone,
            },
            "index": {
                "generation": generation.number,
                "count": generation.count,
                "dim": generation.index.dim,
                **generation.index.params.to_dict(),
            },
            "server": {
                "top_k": settings.top_k,
                "max_top_k": MAX_TOP_K,
                "rerank": settings.rerank,
                "rerank_methods": list(RERANK_METHODS),
                "max_images": settings.max_images,
                "max_upload_mb": settings.max_upload_mb,
                "batch_window_ms": settings.batch_window_ms,
                "writes": settings.allow_writes,
                "auth": settings.token is not None,
            },
            # since the start: with micro-batching, images / calls is the mean batch of a model call
            "stats": {"model_calls": self.embedder.calls, "images_embedded": self.embedder.images},
        }

    def search(self, uploads: list[Upload], top_k: int, rerank: str | None = None) -> dict[str, Any]:
        """The ``top_k`` nearest gallery rows of each uploaded image, from one generation.

        A hit is ``{rank, id, label, score, name}``: ``id`` the manifest row, ``name`` its gallery-relative
        name (:func:`edgedml.serve.live.gallery_names`), ``score`` the cosine similarity (with ``rerank``, the
        re-ranked score, comparable within one query: :meth:`Searcher.search_embeddings`).
        """
        rerank = self.settings.rerank if rerank is None else rerank
        check_top_k(top_k)
        check_rerank(rerank)
        with self.embedder.expecting():
            images = self._decode(uploads)
            generation = self.live.current()
            results = Searcher(generation.index, self.embedder).search(images, top_k=top_k, rerank=rerank)
        return {
            **_generation_fields(generation),
            "top_k": top_k,
            "rerank": rerank,
            "results": [
                {
                    "query": upload.name,
                    "hits": [
                        {
                            "rank": hit.rank,
                            "id": hit.id,
                            "label": hit.label,
                            "score": hit.score,
                            "name": generation.names[hit.id],
                        }
                        for hit in result.hits
                    ],
                }
                for upload, result in zip(uploads, results, strict=True)
            ],
        }

    def embed(self, uploads: list[Upload]) -> dict[str, Any]:
        """Each uploaded image's L2-normalized embedding under the served model."""
        with self.embedder.expecting():
            images = self._decode(uploads)
            embeddings, _ = embed_samples(self.embedder, [Sample(image=image, label="") for image in images])
        return {
            "model_sha256": self.model.digest,
            "dim": self.model.info.dim,
            "results": [
                {"query": upload.name, "embedding": embedding.tolist()}
                for upload, embedding in zip(uploads, embeddings, strict=True)
            ],
        }

    def thumbnail(self, row: int) -> Thumbnail:
        """A preview of gallery row ``row`` of the current generation (rows keep their ids when appended to)."""
        generation = self.live.current()
        if not 0 <= row < generation.count:
            raise NotFound(f"no gallery row {row}: generation {generation.number} holds rows 0..{generation.count - 1}")
        try:
            return self.thumbnails.get(generation.index, row)
        except DataError as exc:
            raise NotFound(f"gallery row {row}: {exc.message}") from None

    # ------------------------------------------------------------------------------------------ writes

    def append(self, uploads: list[Upload], label: str) -> dict[str, Any]:
        """Store the uploads under ``label`` and append them to the index: a new generation, served at once.

        Writes of this server run one at a time; ``edgedml index --append`` from outside at the same
        moment is as unsafe as two such commands at once.
        """
        if not self.settings.allow_writes:
            raise WritesOff("writes are off: this server was started without --allow-writes")
        label = check_label(label)
        images = self._decode(uploads)
        with self._writing:
            summary = append_uploads(
                self.live.location,
                self.settings.uploads or self.live.current().index.uploads_folder,
                self._writing_model(),
                images,
                label,
                self.settings.runtime,
                self.settings.device,
                self.settings.collection,
            )
            generation = self.live.refresh()
        return {**_generation_fields(generation), "added": summary.added, "label": label}

    def _writing_model(self) -> Path:
        """The exact model file of the index (an append accepts no other): the served one, or the recorded one."""
        recorded = self.live.current().index.meta["model"]
        if self.model.digest == recorded["sha256"]:
            return self.model.path
        path = Path(recorded["path"])
        if not path.is_file() or file_digest(path) != recorded["sha256"]:
            raise ConfigError(
                f"appending needs the index's own model file ({path}); the server runs another copy",
                hint="serve the index with the model it was built with",
            )
        return path

    # ------------------------------------------------------------------------------------------ uploads

    def _decode(self, uploads: list[Upload]) -> list[np.ndarray]:
        if not uploads:
            raise ConfigError("no image uploaded: send one or more files in the form field 'images'")
        if len(uploads) > self.settings.max_images:
            raise ConfigError(
                f"{len(uploads)} images in one request; this server takes at most {self.settings.max_images}"
            )
        return [decode_upload(upload.data, upload.name) for upload in uploads]


def upload_name(filename: str | None, position: int) -> str:
    """An uploaded file's name as one short printable line (``image <n>`` when it has none)."""
    name = UNPRINTABLE.sub("?", (filename or "").strip())[:NAME_LENGTH]
    return name or f"image {position + 1}"


def _generation_fields(generation: Generation) -> dict[str, int]:
    return {"generation": generation.number, "count": generation.count}
