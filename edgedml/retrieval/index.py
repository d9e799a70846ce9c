"""A gallery index: the embeddings of a gallery under an exported model, in FAISS, with a manifest.

    INDEX_DIR/index.json          format version, the model (path, sha256, ModelInfo), index type and
                                  parameters, count, and the names of the current generation's files
    INDEX_DIR/index.<gen>.faiss   the FAISS index; row i is manifest row i
    INDEX_DIR/manifest.<gen>.csv  id,path,label: one row per embedded image (in-memory sources such as
                                  digits get ``<source>#<position>`` as their path)
    INDEX_DIR/.partial/           embedded chunks of an unfinished build (what a re-run resumes from)

Index types (inner product on L2-normalized embeddings = cosine similarity):

- ``flat``: exact search, ``4 * dim`` bytes per vector: the default.
- ``ivf``: an inverted file of ``nlist`` k-means cells; a query scans the ``nprobe`` nearest cells.
- ``ivfpq``: the same, each vector stored as ``pq_m`` one-byte product-quantizer codes (Jégou et al.,
  "Product quantization for nearest neighbor search", 2011): ``pq_m`` bytes per vector plus its 8-byte id.

A write never touches the current generation: the new generation's files are written beside it, then
``index.json`` (the commit point) is replaced atomically to name them, then the old files are removed.
An interrupted build leaves the previous index as it was, and its embedded chunks in ``.partial/``.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from edgedml import __version__
from edgedml.data import Sample, Source, class_disjoint_split, load_source, named_sources, scan_samples
from edgedml.data.images import DECODE_ERRORS, load_image
from edgedml.errors import ConfigError, DataError, ModelError
from edgedml.export.load import load_embedder
from edgedml.export.runtime import Embedder, ModelInfo, check_runtime_output, embed_samples, file_digest
from edgedml.io import write_json, write_with
from edgedml.progress import SILENT, Progress
from edgedml.retrieval.evaluate import SplitSettings, split_settings
from edgedml.retrieval.rerank import make_direct_map
from edgedml.training.evaluate import SPLIT_NAMES

log = logging.getLogger(__name__)

FORMAT = "edgedml-index"
FORMAT_VERSION = 1
META_FILE = "index.json"
META_KEYS = ("generation", "files", "model", "index", "dim", "count")
PARTIAL_DIR = ".partial"
INDEX_TYPES = ("flat", "ivf", "ivfpq")
GALLERY_SPLITS = ("all", *SPLIT_NAMES)
METRIC = "inner_product"
PQ_BITS = 8
PQ_POINTS_PER_CENTROID = 64
MIN_POINTS_PER_CELL = 39  # FAISS's k-means wants at least 39 training points per centroid
MIN_NLIST = 4
CHUNK_SIZE = 1024
# What ``build_index`` does with ``out``: ``new`` refuses an existing index, ``append`` embeds only the
# gallery's new images into it, ``overwrite`` replaces it (the old one stays until the new one is complete).
IndexMode = Literal["new", "append", "overwrite"]
INDEX_MODES: tuple[IndexMode, ...] = ("new", "append", "overwrite")


@dataclass(frozen=True)
class GalleryItem:
    """One gallery image: ``key`` identifies it in the manifest (a resolved path, or ``<source>#<position>``)."""

    key: str
    sample: Sample


@dataclass
class IndexParams:
    type: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "metric": METRIC,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "pq_m": self.pq_m,
            "pq_bits": self.pq_bits,
        }


@dataclass
class IndexSummary:
    """What ``build_index`` did: rows added (embedded now or resumed from ``.partial``), rows in the index."""

    path: Path
    count: int
    added: int
    resumed: int
    skipped: list[str]
    dim: int
    index: dict[str, Any]
    bytes_per_vector: float
    seconds: float
    embedded_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
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


@dataclass
class Manifest:
    paths: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def write(self, path: Path) -> None:
        def writer(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                rows = csv.writer(handle)
                rows.writerow(["id", "path", "label"])
                rows.writerows(zip(range(len(self.paths)), self.paths, self.labels, strict=True))

        write_with(path, writer)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        manifest = cls()
        with path.open(newline="", encoding="utf-8") as handle:
            for expected, row in enumerate(csv.DictReader(handle)):
                if int(row["id"]) != expected:
                    raise DataError(f"{path}: row ids are not 0..N-1 in order (row {expected} has id {row['id']})")
                manifest.paths.append(row["path"])
                manifest.labels.append(row["label"])
        return manifest


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


# ---------------------------------------------------------------------------------------------- faiss


def default_nlist(count: int) -> int:
    """About 4 * sqrt(N) cells, with at least 39 training points per cell."""
    return max(1, min(round(4 * math.sqrt(count)), count // MIN_POINTS_PER_CELL))


MAX_DEFAULT_PQ_M = 64


def default_pq_m(dim: int) -> int:
    """One one-byte sub-quantizer per dimension (4x smaller than flat), at most 64 bytes.

    That is the largest divisor of dim <= 64.

    On the generated 100k x 64 galleries of ``benchmarks/retrieval.py`` two dimensions per byte (m = 32)
    levels off at 0.88-0.92 of exact search's top 10 whatever nprobe (the codes' error, not the cells,
    limits it); one per byte reaches 0.96-0.98. Low-dimensional embeddings (the S2SD students) have
    little redundancy to squeeze; from 128 dimensions up, 64 bytes is two or more dimensions per byte.
    """
    return max(m for m in range(1, min(dim, MAX_DEFAULT_PQ_M) + 1) if dim % m == 0)


def default_nprobe(nlist: int) -> int:
    """4 cells: on the generated 100k x 64 galleries IVF finds 0.98-1.0 and IVF-PQ 0.96-0.98 of exact's top 10 there."""
    return min(nlist, 4)


def resolve_params(params: IndexParams, count: int | None, dim: int | None) -> IndexParams:
    """Fill the defaults for a gallery of ``count`` vectors and refuse what cannot be trained.

    With ``count`` and ``dim`` None, only the options are checked (what needs no gallery).
    """
    if params.type not in INDEX_TYPES:
        raise ConfigError(f"--index-type {params.type!r} is not one of {', '.join(INDEX_TYPES)}")
    if params.type == "flat":
        for name in ("nlist", "nprobe", "pq_m"):
            if getattr(params, name) is not None:
                raise ConfigError(f"--{name.replace('_', '-')} applies to ivf and ivfpq indexes, not flat")
        return IndexParams("flat")
    if params.pq_m is not None and params.type != "ivfpq":
        raise ConfigError("--pq-m applies to ivfpq indexes")
    for name in ("nlist", "nprobe", "pq_m"):
        value = getattr(params, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value} must be at least 1")
    if count is None or dim is None:
        return params
    nlist = params.nlist or default_nlist(count)
    needed = max(MIN_NLIST, nlist) * MIN_POINTS_PER_CELL
    if params.type == "ivfpq":
        needed = max(needed, (1 << PQ_BITS) * MIN_POINTS_PER_CELL)
    if count < needed:
        raise ConfigError(
            f"--index-type {params.type} with nlist {nlist} needs at least {needed:,} gallery images to train; "
            f"this gallery has {count:,}",
            hint="use --index-type flat (exact search, and fast at this size)",
        )
    pq_m = None
    if params.type == "ivfpq":
        pq_m = params.pq_m or default_pq_m(dim)
        if dim % pq_m:
            raise ConfigError(f"--pq-m {pq_m} must divide the embedding dimension {dim}")
    nprobe = params.nprobe or default_nprobe(nlist)
    if not 1 <= nprobe <= nlist:
        raise ConfigError(f"--nprobe {nprobe} must lie in 1..nlist ({nlist})")
    return IndexParams(params.type, nlist, nprobe, pq_m, PQ_BITS if pq_m else None)


def new_faiss_index(params: IndexParams, dim: int):
    import faiss

    if params.type == "flat":
        return faiss.IndexFlatIP(dim)
    quantizer = faiss.IndexFlatIP(dim)
    if params.type == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, params.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, params.nlist, params.pq_m, params.pq_bits, faiss.METRIC_INNER_PRODUCT)
        # 64 x 256 = 16,384 training residuals per sub-quantizer instead of FAISS's 65,536: with one
        # dimension per sub-quantizer this cuts training on 100k x 64 from 63 s to 17 s at equal recall
        # (0.972-0.975 of exact's top 10 at nprobe 2 on the benchmark's gallery).
        index.pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
    return index


def set_nprobe(index, nprobe: int | None) -> None:
    import faiss

    if nprobe is not None:
        faiss.extract_index_ivf(index).nprobe = nprobe


def on_device(index, device: str):
    """The index on a GPU when asked for (``cuda``) and this faiss has GPU support; the CPU index otherwise."""
    import faiss

    if not device.startswith("cuda"):
        return index
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        log.info("faiss has no GPU support here (pip install 'edgedml[faiss-gpu]'); searching on the CPU")
        return index
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, int(device.partition(":")[2] or 0), index)
    gpu_index.resources_owner = resources
    return gpu_index


def to_cpu(index):
    import faiss

    return (
        faiss.index_gpu_to_cpu(index) if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__ else index
    )


# ---------------------------------------------------------------------------------------------- index dir


class GalleryIndex:
    """An index directory opened for reading: ``meta`` (index.json), the FAISS ``index``, the ``manifest``.

    ``device``: where searches run (``cuda``: a GPU copy, placed once when the index is opened, if this
    faiss has GPU support); ``index`` itself stays the CPU index that ``--append`` extends and writes.
    """

    def __init__(self, root: Path, meta: dict[str, Any], index, manifest: Manifest, device: str = "cpu"):
        self.root, self.meta, self.index, self.manifest = root, meta, index, manifest
        if self.params.type != "flat":
            # what reconstruct (re-ranking reads stored vectors) needs, made now: searches never change the index
            make_direct_map(index)
        self.searched = on_device(index, device)
        if self.params.type != "flat":
            set_nprobe(self.searched, self.params.nprobe)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def params(self) -> IndexParams:
        spec = self.meta["index"]
        return IndexParams(spec["type"], spec.get("nlist"), spec.get("nprobe"), spec.get("pq_m"), spec.get("pq_bits"))

    @classmethod
    def open(cls, root: str | Path, device: str = "cpu") -> GalleryIndex:
        import faiss

        root = Path(root)
        meta = read_meta(root)
        files = meta["files"]
        try:
            index = faiss.read_index(str(root / files["index"]))
            manifest = Manifest.read(root / files["manifest"])
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise DataError(
                f"{root}: the index files are missing or damaged ({str(exc).splitlines()[0]})",
                hint=_rebuild_hint(root),
            ) from None
        if not index.ntotal == len(manifest) == meta["count"] or index.d != meta["dim"]:
            raise DataError(
                f"{root}: index ({index.ntotal} x {index.d}), manifest ({len(manifest)} rows) and index.json "
                f"({meta['count']} x {meta['dim']}) disagree",
                hint=_rebuild_hint(root),
            )
        return cls(root, meta, index, manifest, device)

    @property
    def generation(self) -> int:
        return int(self.meta["generation"])

    def image(self, row: int, min_side: int | None = None) -> Image.Image:
        """Gallery row ``row``'s image as RGB: its file, or the bundled source's sample for ``<source>#<position>``.

        Only what the manifest lists is ever opened. ``min_side``: a large JPEG may decode at reduced scale
        with its shorter side still at least this (a thumbnail's size). Raises DataError when it is unreadable.
        """
        if not 0 <= row < len(self.manifest):
            raise DataError(f"{self.root}: no gallery row {row} (the index holds {len(self.manifest)})")
        key = self.manifest.paths[row]
        name, hash_sign, position = key.rpartition("#")
        try:
            if hash_sign and name in named_sources and position.isdigit():
                return load_image(_bundled_samples(name)[int(position)].image)
            return load_image(key, min_side)
        except (IndexError, *DECODE_ERRORS) as exc:
            raise DataError(f"gallery image {key}: unreadable ({type(exc).__name__})") from None

    def search(self, embeddings: np.ndarray, top_k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row ids of the ``top_k`` nearest rows: (Q, k) each; id -1 where fewer were found."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ModelError(f"query embeddings are {embeddings.shape}, the index holds {self.dim}-d vectors")
        if self.params.type != "flat":
            set_nprobe(self.searched, nprobe or self.params.nprobe)
        return self.searched.search(np.ascontiguousarray(embeddings, dtype=np.float32), min(top_k, self.count))


@functools.cache
def _bundled_samples(name: str) -> list[Sample]:
    """A bundled source's samples, in the order its ``<source>#<position>`` keys count them (built once)."""
    return load_source(name, min_classes=0).samples


def read_meta(root: Path) -> dict[str, Any]:
    path = root / META_FILE
    if not path.is_file():
        raise DataError(
            f"{root}: no {META_FILE}, so not an index directory",
            hint="build one with edgedml index MODEL --gallery SPEC --out DIR",
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not an edgedml index description", hint=_rebuild_hint(root))
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexTooNew(
            f"{path}: index format {version} (written by edgedml {meta.get('edgedml_version', '?')}) is newer than "
            f"this edgedml ({__version__}) reads (format {FORMAT_VERSION})",
            hint="upgrade edgedml, or rebuild the index with this version into another folder",
        )
    _check_description(meta, path)
    return meta


class IndexTooNew(DataError):
    """An index written by a newer edgedml: not to be read, nor replaced by this one."""


def _check_description(meta: dict[str, Any], path: Path) -> None:
    """Every key the index needs, and file names that are the index's own (never a path out of its folder)."""
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise DataError(f"{path}: damaged, {', '.join(missing)} missing", hint=_rebuild_hint(path.parent))
    generation = meta["generation"]
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
        raise DataError(
            f"{path}: generation {generation!r} is not a whole number >= 1", hint=_rebuild_hint(path.parent)
        )
    own = {"index": f"index.{generation}.faiss", "manifest": f"manifest.{generation}.csv"}
    if meta["files"] != own:
        raise DataError(
            f"{path}: names files {meta['files']!r}, not the index's own {own!r}", hint=_rebuild_hint(path.parent)
        )


def _rebuild_hint(root: Path) -> str:
    return f"rebuild it: edgedml index MODEL --gallery SPEC --out {root} --overwrite"


def _replaced_description(out: Path) -> dict[str, Any] | None:
    """The description of the index ``--overwrite`` replaces; None (its files then stay) if it is damaged."""
    try:
        return read_meta(out)
    except IndexTooNew:
        raise
    except DataError as exc:
        log.warning("%s; replacing it (the files it named are left in place)", exc.message)
        return None


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
) -> IndexSummary:
    """Embed ``gallery`` with ``model`` and write (``mode`` new or overwrite) or extend (append) the index in ``out``.

    Progress: one stage counting the images to index, starting at those already embedded (resumed
    from ``out/.partial``). Ctrl-C (KeyboardInterrupt) keeps every finished chunk in ``.partial``; the
    same call resumes from there. The steps: check the options and ``out``, embed with resume, create
    or extend the FAISS index, commit the new generation.
    """
    started = time.perf_counter()
    out = Path(out)
    replaced, extending = _open_target(out, mode)
    requested = _check_options(extending, index_type, nlist, nprobe, pq_m)
    embedder = load_embedder(model, runtime, device)
    digest = file_digest(model)
    if extending is not None:
        check_same_model(extending.meta, embedder.info, digest, str(model), strict=True)
    items = gallery_items(gallery, split, split_settings(embedder) if split != "all" else None)
    if extending is not None:
        present = set(extending.manifest.paths)
        items = [item for item in items if item.key not in present]
    else:  # too small a gallery for IVF: refuse before embedding
        resolve_params(requested, len(items), embedder.info.dim)
    partial = _Partial(out / PARTIAL_DIR, digest)
    embedded = _embed_with_resume(partial, embedder, items, batch_size, chunk_size, progress)
    rows = [item for item in items if item.key in partial.embeddings]
    if extending is None and not rows:
        raise DataError(
            f"--gallery {gallery}: none of its {len(items)} image(s) could be read"
            if items
            else f"--gallery {gallery}: no image to index",
            hint="check the files listed in the warning" if items else "add images to the gallery",
        )
    vectors = (
        np.stack([partial.embeddings[item.key] for item in rows])
        if rows
        else np.zeros((0, embedder.info.dim), np.float32)
    )
    if extending is not None:
        index, manifest, params, generation = _extend(extending, vectors, nprobe)
    else:
        index, manifest, params, generation = _create(requested, vectors, device, replaced)
    manifest.paths.extend(item.key for item in rows)
    manifest.labels.extend(item.sample.label for item in rows)
    if extending is None or rows or nprobe is not None:
        size = _commit(
            out,
            generation,
            index,
            manifest,
            params,
            embedder,
            model,
            digest,
            gallery,
            split,
            len(rows),
            extending.meta if extending is not None else None,
            replaced,
        )
    else:  # nothing new to append: the index stays as it is
        size = (out / extending.meta["files"]["index"]).stat().st_size
    partial.remove()
    return IndexSummary(
        path=out,
        count=len(manifest),
        added=len(rows),
        resumed=embedded.resumed,
        skipped=[item.key for item in items if item.key in partial.skipped],
        dim=embedder.info.dim,
        index=params.to_dict(),
        bytes_per_vector=size / max(1, len(manifest)),
        seconds=time.perf_counter() - started,
        embedded_per_s=embedded.rate,
    )


def _open_target(out: Path, mode: IndexMode) -> tuple[dict[str, Any] | None, GalleryIndex | None]:
    """(the description of the index already in ``out``, that index opened to be extended with ``append``);
    Nones where there is none. Refuses what ``mode`` cannot do with ``out``. ``overwrite`` reads only the
    description, so an index whose FAISS or manifest file is damaged can still be replaced."""
    if mode not in INDEX_MODES:
        raise ConfigError(f"index mode {mode!r} is not one of {', '.join(INDEX_MODES)}")
    if (out / META_FILE).exists():
        if mode == "append":
            existing = GalleryIndex.open(out)
            return existing.meta, existing
        if mode == "new":
            raise ConfigError(
                f"--out {out} already holds an index of {read_meta(out)['count']:,} images",
                hint="--append adds new images to it, --overwrite replaces it",
            )
        return _replaced_description(out), None
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(p.name != PARTIAL_DIR for p in out.iterdir()):
        raise ConfigError(f"--out {out}: folder is not empty and holds no index", hint="give a new or empty folder")
    return None, None


def _check_options(
    extending: GalleryIndex | None, index_type: str | None, nlist: int | None, nprobe: int | None, pq_m: int | None
) -> IndexParams:
    """The index parameters asked for; option errors before any work."""
    requested = IndexParams(index_type or "flat", nlist, nprobe, pq_m)
    if extending is None:
        resolve_params(requested, count=None, dim=None)
        return requested
    if index_type is not None and index_type != extending.params.type:
        raise ConfigError(
            f"--index-type {index_type}: {extending.root} is a {extending.params.type} index",
            hint="append keeps the index type",
        )
    if nlist is not None or pq_m is not None:
        raise ConfigError("--nlist and --pq-m are fixed when the index is built; --append keeps them")
    return requested


@dataclass(frozen=True)
class _Embedded:
    resumed: int  # images found embedded (or skipped) in .partial
    rate: float  # images embedded per second by this call (0 if none)


def _embed_with_resume(
    partial: _Partial,
    embedder: Embedder,
    items: list[GalleryItem],
    batch_size: int,
    chunk_size: int,
    progress: Progress,
) -> _Embedded:
    """Embed the items ``partial`` does not hold yet, chunk by chunk (each chunk saved as it is done)."""
    resumed = len(partial.embeddings) + len(partial.skipped)
    todo = [item for item in items if item.key not in partial.embeddings and item.key not in partial.skipped]
    progress.stage("embedding", total=len(items), done=len(items) - len(todo))
    started = time.perf_counter()
    for start in range(0, len(todo), chunk_size):
        partial.embed_chunk(embedder, todo[start : start + chunk_size], batch_size, progress)
    seconds = time.perf_counter() - started
    done = sum(item.key in partial.embeddings or item.key in partial.skipped for item in items) - resumed
    return _Embedded(resumed, done / seconds if seconds > 0 and done > 0 else 0.0)


def _extend(existing: GalleryIndex, vectors: np.ndarray, nprobe: int | None) -> tuple[Any, Manifest, IndexParams, int]:
    """The existing index with ``vectors`` added (and a new default nprobe if given): the next generation."""
    params = existing.params
    if nprobe is not None:
        params = resolve_params(
            IndexParams(params.type, params.nlist, nprobe, params.pq_m), existing.count, existing.dim
        )
    existing.index.add(vectors)
    return existing.index, existing.manifest, params, existing.meta["generation"] + 1


def _create(
    requested: IndexParams, vectors: np.ndarray, device: str, replaced: dict[str, Any] | None
) -> tuple[Any, Manifest, IndexParams, int]:
    """A new index trained on and holding ``vectors``; the generation after the one it replaces."""
    params = resolve_params(requested, len(vectors), vectors.shape[1])
    generation = replaced["generation"] + 1 if replaced is not None else 1
    return train_index(params, vectors, device), Manifest(), params, generation


def train_index(params: IndexParams, vectors: np.ndarray, device: str = "cpu"):
    """A FAISS index of ``params`` (resolved) trained on and holding ``vectors``: (N, dim) float32."""
    index = new_faiss_index(params, vectors.shape[1])
    if params.type == "flat":
        index.add(vectors)
        return index
    working = on_device(index, device)
    working.train(vectors)
    working.add(vectors)
    index = to_cpu(working)
    set_nprobe(index, params.nprobe)
    return index


def _commit(
    out: Path,
    generation: int,
    index,
    manifest: Manifest,
    params: IndexParams,
    embedder: Embedder,
    model: str | Path,
    digest: str,
    gallery: str,
    split: str,
    added: int,
    previous: dict[str, Any] | None,
    replaced: dict[str, Any] | None,
) -> int:
    """Write the new generation's files, then index.json (the commit point), then remove the files of the
    generation it replaces (``replaced``: its description; nothing else in ``out`` is touched).
    ``previous``: the description whose gallery history an append continues."""
    import faiss

    files = {"index": f"index.{generation}.faiss", "manifest": f"manifest.{generation}.csv"}
    write_with(out / files["index"], lambda tmp: faiss.write_index(to_cpu(index), str(tmp)))
    manifest.write(out / files["manifest"])
    history = list(previous["galleries"]) if previous is not None else []
    history.append({"spec": gallery, "split": split, "added": added, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "edgedml_version": __version__,
        "generation": generation,
        "files": files,
        "model": {
            "path": str(Path(model).resolve()),
            "sha256": digest,
            "runtime": embedder.runtime,
            "info": embedder.info.to_dict(),
        },
        "index": params.to_dict(),
        "dim": int(index.d),
        "count": len(manifest),
        "galleries": history,
    }
    write_json(out / META_FILE, meta)
    for name in (replaced or {}).get("files", {}).values():
        if name not in files.values():
            (out / name).unlink(missing_ok=True)
    return (out / files["index"]).stat().st_size


class _Partial:
    """Embedded chunks of an unfinished build: ``chunk-<n>.npz`` holding keys, embeddings and skipped keys."""

    def __init__(self, root: Path, digest: str):
        self.root = root
        self.digest = digest
        self.embeddings: dict[str, np.ndarray] = {}
        self.skipped: set[str] = set()
        state = root / "state.json"
        if state.is_file():
            if json.loads(state.read_text(encoding="utf-8")).get("model_sha256") == digest:
                self._load()
            else:
                log.warning("%s holds chunks embedded by another model; starting over", root)
                shutil.rmtree(root)

    def _load(self) -> None:
        for chunk in sorted(self.root.glob("chunk-*.npz")):
            with np.load(chunk, allow_pickle=False) as data:
                self.embeddings.update(zip(data["keys"].tolist(), data["embeddings"], strict=True))
                self.skipped.update(data["skipped"].tolist())
        if self.embeddings or self.skipped:
            log.info(
                "resuming: %d image(s) already embedded in %s", len(self.embeddings) + len(self.skipped), self.root
            )

    def embed_chunk(self, embedder: Embedder, items: list[GalleryItem], batch_size: int, progress: Progress) -> None:
        embeddings, kept = embed_samples(embedder, [item.sample for item in items], batch_size, progress)
        check_runtime_output(embeddings, embedder.info, str(embedder.path))
        keys = [items[i].key for i in kept]
        skipped = sorted({item.key for item in items} - set(keys))
        if not self.root.is_dir():
            self.root.mkdir(parents=True)
            write_json(self.root / "state.json", {"model_sha256": self.digest})
        name = self.root / f"chunk-{len(list(self.root.glob('chunk-*.npz'))):06d}.npz"

        def writer(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(
                    handle, keys=np.array(keys, dtype=str), embeddings=embeddings, skipped=np.array(skipped, dtype=str)
                )

        write_with(name, writer)
        self.embeddings.update(zip(keys, embeddings, strict=True))
        self.skipped.update(skipped)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
