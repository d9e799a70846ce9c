"""Building a gallery index, whatever its backend: the embeddings of a gallery under an exported model, with
a manifest of paths and labels (``edgedml.retrieval.store``).

Where it goes decides the backend (:func:`open_index`, :func:`open_target`): a folder is a FAISS index
(``edgedml.retrieval.faiss_store``), a ``PATH.db`` file or an ``http(s)://``/``tcp://`` URI a Milvus collection
(``edgedml.retrieval.milvus_store``). Both commit each write as a new generation that readers pick up whole,
and both keep the rows of an interrupted build for the same command to resume from.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgedml import __version__
from edgedml.data import Sample, Source, class_disjoint_split, load_source, scan_samples
from edgedml.errors import ConfigError, DataError, ModelError
from edgedml.export.load import load_embedder
from edgedml.export.runtime import Embedder, ModelInfo, check_runtime_output, embed_samples, file_digest
from edgedml.progress import SILENT, Progress
from edgedml.retrieval.evaluate import SplitSettings, split_settings
from edgedml.retrieval.faiss_store import FaissIndex, FaissTarget
from edgedml.retrieval.milvus_store import MilvusIndex, MilvusTarget, is_milvus_location
from edgedml.retrieval.store import (
    BACKENDS,
    FORMAT,
    FORMAT_VERSION,
    GalleryIndex,
    GalleryItem,
    IndexParams,
    IndexTarget,
    Staging,
    resolve_params,
    with_search_defaults,
)
from edgedml.training.evaluate import SPLIT_NAMES

log = logging.getLogger(__name__)

GALLERY_SPLITS = ("all", *SPLIT_NAMES)
CHUNK_SIZE = 1024
# What ``build_index`` does with ``out``: ``new`` refuses an existing index, ``append`` embeds only the
# gallery's new images into it, ``overwrite`` replaces it (the old one stays until the new one is complete).
IndexMode = Literal["new", "append", "overwrite"]
INDEX_MODES: tuple[IndexMode, ...] = ("new", "append", "overwrite")


@dataclass
class IndexSummary:
    """What ``build_index`` did: rows added (embedded now or resumed from an interrupted run), rows in the index.
    ``bytes_per_vector``: None where the backend does not say (Milvus)."""

    path: str
    count: int
    added: int
    resumed: int
    skipped: list[str]
    dim: int
    index: dict[str, Any]
    bytes_per_vector: float | None
    seconds: float
    embedded_per_s: float
    backend: str = "faiss"
    collection: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "backend": self.backend,
            "collection": self.collection,
            "count": self.count,
            "added": self.added,
            "resumed": self.resumed,
            "skipped": self.skipped,
            "dim": self.dim,
            "index": self.index,
            "bytes_per_vector": self.bytes_per_vector,
            "seconds": self.seconds,
            "embedded_per_s": self.embedded_per_s,
        }


# ---------------------------------------------------------------------------------------------- backends


def backend_of(location: str | Path, backend: str | None = None) -> str:
    """``backend`` if given (checked), else the location's: Milvus for ``PATH.db`` and server URIs, FAISS else."""
    if backend is None:
        return "milvus" if is_milvus_location(location) else "faiss"
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


def open_index(
    location: str | Path, collection: str | None = None, device: str = "cpu", backend: str | None = None
) -> GalleryIndex:
    """The committed index at ``location``: a FAISS folder, or a Milvus URI / ``.db`` file and ``collection``."""
    if backend_of(location, backend) == "milvus":
        return MilvusIndex.open(str(location), collection, device)
    if collection is not None:
        raise ConfigError(f"--collection applies to Milvus indexes; {location} is a FAISS index folder")
    return FaissIndex.open(location, device)


def open_target(
    location: str | Path, collection: str | None = None, device: str = "cpu", backend: str | None = None
) -> IndexTarget:
    """Where ``build_index`` writes: a FAISS folder, or a Milvus URI / ``.db`` file and ``collection``."""
    if backend_of(location, backend) == "milvus":
        return MilvusTarget(str(location), collection)
    if collection is not None:
        raise ConfigError(f"--collection applies to Milvus indexes; {location} is a FAISS index folder")
    return FaissTarget(location, device)


# ---------------------------------------------------------------------------------------------- gallery


def gallery_items(spec: str, split: str = "all", settings: SplitSettings | None = None) -> list[GalleryItem]:
    """The images of a data spec to index: all of them, or one split made with the model's ``settings``."""
    if split not in GALLERY_SPLITS:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(GALLERY_SPLITS)}")
    # nothing is trained on a whole gallery: it may hold a single class
    source = load_source(spec, min_classes=0) if split == "all" else load_source(spec)
    keys = {id(sample): _sample_key(source, position, sample) for position, sample in enumerate(source.samples)}
    if split == "all":
        chosen = source.samples
    else:
        scan = scan_samples(source.samples)
        chosen = getattr(
            class_disjoint_split(scan.usable, settings.train_classes, settings.val_fraction, settings.seed), split
        )
    if not chosen:
        raise DataError(f"--gallery {spec}: the {split} split holds no image", hint="choose another --split")
    return [GalleryItem(keys[id(sample)], sample) for sample in chosen]


def _sample_key(source: Source, position: int, sample: Sample) -> str:
    if isinstance(sample.image, str):
        return str(Path(sample.image).expanduser().resolve())
    return f"{source.name}#{position}"


def check_same_model(meta: dict[str, Any], info: ModelInfo, digest: str, source: str, strict: bool) -> None:
    """The model must be the index's: the same file (sha256), or, unless ``strict``, the same run and dimension."""
    model = meta["model"]
    if digest == model["sha256"]:
        return
    same_run = info.config_hash == model["info"].get("config_hash") and info.dim == model["info"].get("dim")
    if strict or not same_run:
        raise ModelError(
            f"{source} is not the model that built the index (sha256 {digest[:12]} vs {model['sha256'][:12]}, "
            f"dim {info.dim} vs {model['info'].get('dim')}, "
            f"config {info.config_hash or '?'} vs {model['info'].get('config_hash') or '?'})",
            hint=f"use the index's model {model['path']}, or build a new index with this one",
        )
    log.warning(
        "%s differs from the index's model file (sha256 %s vs %s) but comes from the same run (config %s, %d-d)",
        source,
        digest[:12],
        model["sha256"][:12],
        info.config_hash,
        info.dim,
    )


# ---------------------------------------------------------------------------------------------- build


def build_index(
    model: str | Path,
    gallery: str,
    out: str | Path,
    split: str = "all",
    index_type: str | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    mode: IndexMode = "new",
    batch_size: int = 64,
    runtime: str | None = None,
    device: str = "cpu",
    chunk_size: int = CHUNK_SIZE,
    progress: Progress = SILENT,
    hnsw_m: int | None = None,
    ef_construction: int | None = None,
    ef_search: int | None = None,
    collection: str | None = None,
    backend: str | None = None,
) -> IndexSummary:
    """Embed ``gallery`` with ``model`` and write (``mode`` new or overwrite) or extend (append) the index at ``out``:
    a FAISS folder, or a Milvus URI / ``.db`` file with ``collection`` (:func:`open_target`).

    Progress: one stage counting the images to index, starting at those already embedded (resumed from an
    interrupted run). Ctrl-C (KeyboardInterrupt) keeps every finished chunk (FAISS: in ``out/.partial``; Milvus:
    inserted rows no search sees yet); the same call resumes from there. The steps: check the options and the
    target, embed with resume, commit the new generation.
    """
    started = time.perf_counter()
    if mode not in INDEX_MODES:
        raise ConfigError(f"index mode {mode!r} is not one of {', '.join(INDEX_MODES)}")
    target = open_target(out, collection, device, backend)
    replaced, extending = target.existing(mode)
    requested = IndexParams(index_type or "flat", nlist, nprobe, pq_m, None, hnsw_m, ef_construction, ef_search)
    _check_options(extending, requested, index_type)
    target.check_supported(extending.params if extending is not None else requested)
    embedder = load_embedder(model, runtime, device)
    digest = file_digest(model)
    if extending is not None:
        check_same_model(extending.meta, embedder.info, digest, str(model), strict=True)
    items = gallery_items(gallery, split, split_settings(embedder) if split != "all" else None)
    if extending is not None:
        present = set(extending.manifest.paths)
        items = [item for item in items if item.key not in present]
        params = with_search_defaults(extending.params, nprobe, ef_search)
    else:  # too small a gallery for IVF: refuse before embedding
        params = resolve_params(requested, len(items), embedder.info.dim)
    staging = target.staging(digest, embedder.info.dim, params, extending, {item.key for item in items})
    embedded = _embed_with_resume(staging, embedder, items, batch_size, chunk_size, progress)
    rows = staging.rows(items)
    if extending is None and not rows:
        raise DataError(
            f"--gallery {gallery}: none of its {len(items)} image(s) could be read"
            if items
            else f"--gallery {gallery}: no image to index",
            hint="check the files listed in the warning" if items else "add images to the gallery",
        )
    count = len(rows) + (extending.count if extending is not None else 0)
    bytes_per_vector = None
    if extending is None or rows or params != extending.params:
        description = _description(model, digest, embedder, params, count, extending, replaced, gallery, split, rows)
        keys, labels = [item.key for item in rows], [item.sample.label for item in rows]
        bytes_per_vector = target.commit(staging, keys, labels, params, description, extending, replaced)
    staging.remove()
    return IndexSummary(
        path=target.location if isinstance(target, MilvusTarget) else str(out),
        count=count,
        added=len(rows),
        resumed=embedded.resumed,
        skipped=[item.key for item in items if item.key in staging.skipped],
        dim=embedder.info.dim,
        index=params.to_dict(),
        bytes_per_vector=bytes_per_vector,
        seconds=time.perf_counter() - started,
        embedded_per_s=embedded.rate,
        backend="milvus" if isinstance(target, MilvusTarget) else "faiss",
        collection=target.name if isinstance(target, MilvusTarget) else None,
    )


def _check_options(extending: GalleryIndex | None, requested: IndexParams, index_type: str | None) -> None:
    """Option errors before any work."""
    if extending is None:
        resolve_params(requested, count=None, dim=None)
        return
    if index_type is not None and index_type != extending.params.type:
        raise ConfigError(
            f"--index-type {index_type}: {extending.location} is a {extending.params.type} index",
            hint="append keeps the index type",
        )
    fixed = ("nlist", "pq_m", "hnsw_m", "ef_construction")
    if any(getattr(requested, name) is not None for name in fixed):
        raise ConfigError(
            "--nlist, --pq-m, --hnsw-m and --ef-construction are fixed when the index is built; --append keeps them"
        )


@dataclass(frozen=True)
class _Embedded:
    resumed: int  # images found embedded (or skipped) by an interrupted run
    rate: float  # images embedded per second by this call (0 if none)


def _embed_with_resume(
    staging: Staging,
    embedder: Embedder,
    items: list[GalleryItem],
    batch_size: int,
    chunk_size: int,
    progress: Progress,
) -> _Embedded:
    """Embed the items ``staging`` does not hold yet, chunk by chunk (each chunk stored as it is done)."""
    resumed = len(staging.embedded) + len(staging.skipped)
    todo = [item for item in items if item.key not in staging.embedded and item.key not in staging.skipped]
    progress.stage("embedding", total=len(items), done=len(items) - len(todo))
    started = time.perf_counter()
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        embeddings, kept = embed_samples(embedder, [item.sample for item in chunk], batch_size, progress)
        check_runtime_output(embeddings, embedder.info, str(embedder.path))
        stored = [chunk[i] for i in kept]
        skipped = sorted({item.key for item in chunk} - {item.key for item in stored})
        staging.store(stored, embeddings, skipped)
    seconds = time.perf_counter() - started
    done = sum(item.key in staging.embedded or item.key in staging.skipped for item in items) - resumed
    return _Embedded(resumed, done / seconds if seconds > 0 and done > 0 else 0.0)


def _description(
    model: str | Path,
    digest: str,
    embedder: Embedder,
    params: IndexParams,
    count: int,
    extending: GalleryIndex | None,
    replaced: dict[str, Any] | None,
    gallery: str,
    split: str,
    rows: list[GalleryItem],
) -> dict[str, Any]:
    """What the next generation's description says (a FAISS folder's index.json, a Milvus collection's property):
    the generation after the one extended or replaced, the model, the parameters, the gallery history."""
    previous = extending.meta if extending is not None else replaced
    history = list(extending.meta["galleries"]) if extending is not None else []
    history.append({"spec": gallery, "split": split, "added": len(rows), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "edgedml_version": __version__,
        "generation": previous["generation"] + 1 if previous is not None else 1,
        "model": {
            "path": str(Path(model).resolve()),
            "sha256": digest,
            "runtime": embedder.runtime,
            "info": embedder.info.to_dict(),
        },
        "index": params.to_dict(),
        "dim": embedder.info.dim,
        "count": count,
        "galleries": history,
    }
