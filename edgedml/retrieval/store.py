"""What every gallery-index backend shares: index parameters, the manifest, and the two interfaces.

- :class:`GalleryIndex`: a committed index opened for reading (``search``, ``vectors``, ``image``, ``stamp``);
  ``edgedml search``, ``eval``, ``serve`` and re-ranking read every backend through it alone.
- :class:`IndexTarget` and :class:`Staging`: where ``edgedml.retrieval.index.build_index`` writes (what is there,
  the rows of an unfinished build that a re-run resumes from, the commit of a new generation).

Backends: ``faiss_store`` (an index folder) and ``milvus_store`` (a Milvus collection behind an alias).

Index types (inner product on L2-normalized embeddings = cosine similarity):

- ``flat``: exact search, ``4 * dim`` bytes per vector: the default.
- ``ivf``: an inverted file of ``nlist`` k-means cells; a query scans the ``nprobe`` nearest cells.
- ``ivfpq``: the same, each vector stored as ``pq_m`` one-byte product-quantizer codes (Jégou et al.,
  "Product quantization for nearest neighbor search", 2011): ``pq_m`` bytes per vector plus its 8-byte id.
- ``hnsw``: a hierarchical navigable small-world graph (Malkov, Yashunin, "Efficient and robust approximate
  nearest neighbor search using Hierarchical Navigable Small World graphs", TPAMI 2018, arXiv:1603.09320):
  ``hnsw_m`` links per node, built with ``ef_construction`` candidates, searched with ``ef_search``; no training,
  so it suits galleries of any size and appends as they come.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgedml.data import Sample, load_source, named_sources
from edgedml.data.images import DECODE_ERRORS, load_image
from edgedml.errors import ConfigError, DataError, ModelError

FORMAT = "edgedml-index"
FORMAT_VERSION = 1
INDEX_TYPES = ("flat", "ivf", "ivfpq", "hnsw")
BACKENDS = ("faiss", "milvus")
METRIC = "inner_product"
PQ_BITS = 8
MIN_POINTS_PER_CELL = 39  # FAISS's k-means wants at least 39 training points per centroid
MIN_NLIST = 4
MAX_DEFAULT_PQ_M = 64
# HNSW defaults, measured with FAISS on edgedml.retrieval.synthetic.clustered_gallery(20000, 64) and 500 held-out
# queries (docs/milvus.md): M 32, efConstruction 100 find 0.993 / 0.997 / 1.000 of exact search's top 10 at
# ef 16 / 32 / 64 (M 16: 0.986 / 0.995 / 1.000, half the links' memory); ef 64 costs 0.06 ms a query on one core.
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 100
DEFAULT_EF_SEARCH = 64
IVF_OPTIONS = ("nlist", "nprobe")
HNSW_OPTIONS = ("hnsw_m", "ef_construction", "ef_search")

Stamp = Hashable  # what a location's commit point says: changes whenever a new generation is committed


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
    hnsw_m: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "metric": METRIC,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "pq_m": self.pq_m,
            "pq_bits": self.pq_bits,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
        }

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> IndexParams:
        """The parameters an index description records (an index written before ``hnsw`` lacks its keys)."""
        return cls(
            spec["type"],
            *(spec.get(name) for name in ("nlist", "nprobe", "pq_m", "pq_bits", "hnsw_m", "ef_construction")),
            spec.get("ef_search"),
        )


def option(name: str) -> str:
    """A parameter's command-line option: ``pq_m`` -> ``--pq-m``, ``hnsw_m`` -> ``--hnsw-m``."""
    return "--" + name.replace("_", "-")


def default_nlist(count: int) -> int:
    """About 4 * sqrt(N) cells, with at least 39 training points per cell."""
    return max(1, min(round(4 * math.sqrt(count)), count // MIN_POINTS_PER_CELL))


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
    _check_applicable(params)
    for name in (*IVF_OPTIONS, "pq_m", *HNSW_OPTIONS):
        value = getattr(params, name)
        if value is not None and value < 1:
            raise ConfigError(f"{option(name)} {value} must be at least 1")
    if params.type == "flat":
        return IndexParams("flat")
    if params.type == "hnsw":
        return IndexParams(
            "hnsw",
            hnsw_m=params.hnsw_m or DEFAULT_HNSW_M,
            ef_construction=params.ef_construction or DEFAULT_EF_CONSTRUCTION,
            ef_search=params.ef_search or DEFAULT_EF_SEARCH,
        )
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
            hint="use --index-type flat (exact search, and fast at this size) or hnsw (no training)",
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


def _check_applicable(params: IndexParams) -> None:
    """Each option given belongs to the index type asked for."""
    for name in IVF_OPTIONS:
        if getattr(params, name) is not None and params.type not in ("ivf", "ivfpq"):
            raise ConfigError(f"{option(name)} applies to ivf and ivfpq indexes, not {params.type}")
    if params.pq_m is not None and params.type != "ivfpq":
        raise ConfigError("--pq-m applies to ivfpq indexes")
    for name in HNSW_OPTIONS:
        if getattr(params, name) is not None and params.type != "hnsw":
            raise ConfigError(f"{option(name)} applies to hnsw indexes, not {params.type}")


def with_search_defaults(params: IndexParams, nprobe: int | None, ef_search: int | None) -> IndexParams:
    """An index's parameters with a new default nprobe or ef_search (what ``--append`` may change)."""
    resolve_params(IndexParams(params.type, nprobe=nprobe, ef_search=ef_search), count=None, dim=None)
    if nprobe is not None and not 1 <= nprobe <= (params.nlist or 0):
        raise ConfigError(f"--nprobe {nprobe} must lie in 1..nlist ({params.nlist})")
    return replace(params, nprobe=nprobe or params.nprobe, ef_search=ef_search or params.ef_search)


@dataclass
class Manifest:
    """Each gallery row's key (``paths``) and label: row i of the index is entry i."""

    paths: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


# ---------------------------------------------------------------------------------------------- reading


class GalleryIndex(ABC):
    """A committed gallery index opened for reading, whatever its backend.

    ``meta``: its description (format, generation, model {path, sha256, runtime, info}, index parameters, dim,
    count, galleries history); ``manifest``: each row's key and label, read once when opened.
    """

    meta: dict[str, Any]
    manifest: Manifest

    @property
    @abstractmethod
    def location(self) -> str:
        """Where it is, for messages: a folder, or a Milvus URI and collection."""

    @property
    @abstractmethod
    def home(self) -> Path | None:
        """The folder its files live in, if any: clients see rows inside it named relative to it."""

    @property
    @abstractmethod
    def uploads_folder(self) -> Path | None:
        """Where images uploaded to a server of this index are stored (None: the server must be told)."""

    @property
    @abstractmethod
    def opened(self) -> Stamp:
        """The commit point as it was when this generation was read."""

    @abstractmethod
    def stamp(self) -> Stamp | None:
        """The location's commit point now (None while it cannot be read); differs from ``opened`` after a commit."""

    @abstractmethod
    def search(self, embeddings: np.ndarray, top_k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row ids of the ``top_k`` nearest rows of each embedding (Q, dim): (Q, min(top_k, count))
        each, best first; id -1 where fewer were found."""

    @abstractmethod
    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of ``rows`` (n,) (each a row of this index): (n, dim) float32."""

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def generation(self) -> int:
        return int(self.meta["generation"])

    @property
    def params(self) -> IndexParams:
        return IndexParams.from_dict(self.meta["index"])

    def check_query(self, embeddings: np.ndarray) -> np.ndarray:
        """The embeddings as contiguous float32, refused unless (Q, dim)."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ModelError(f"query embeddings are {embeddings.shape}, the index holds {self.dim}-d vectors")
        return np.ascontiguousarray(embeddings, dtype=np.float32)

    def image(self, row: int, min_side: int | None = None) -> Image.Image:
        """Gallery row ``row``'s image as RGB: its file, or the bundled source's sample for ``<source>#<position>``.

        Only what the manifest lists is ever opened. ``min_side``: a large JPEG may decode at reduced scale
        with its shorter side still at least this (a thumbnail's size). Raises DataError when it is unreadable.
        """
        if not 0 <= row < len(self.manifest):
            raise DataError(f"{self.location}: no gallery row {row} (the index holds {len(self.manifest)})")
        key = self.manifest.paths[row]
        name, hash_sign, position = key.rpartition("#")
        try:
            if hash_sign and name in named_sources and position.isdigit():
                return load_image(_bundled_samples(name)[int(position)].image)
            return load_image(key, min_side)
        except (IndexError, *DECODE_ERRORS) as exc:
            raise DataError(f"gallery image {key}: unreadable ({type(exc).__name__})") from None


@functools.cache
def _bundled_samples(name: str) -> list[Sample]:
    """A bundled source's samples, in the order its ``<source>#<position>`` keys count them (built once)."""
    return load_source(name, min_classes=0).samples


# ---------------------------------------------------------------------------------------------- writing


class Staging(ABC):
    """The rows of a build not committed yet: what a re-run after an interruption resumes from.

    ``embedded``: the keys stored so far (in the order they become rows); ``skipped``: keys found unreadable.
    """

    embedded: dict[str, Any]
    skipped: set[str]

    @abstractmethod
    def store(self, items: list[GalleryItem], embeddings: np.ndarray, skipped: list[str]) -> None:
        """Keep one embedded chunk: ``items`` with their ``embeddings`` (len(items), dim), and the keys skipped."""

    @abstractmethod
    def remove(self) -> None:
        """Forget the staged rows once they are committed."""

    def rows(self, items: list[GalleryItem]) -> list[GalleryItem]:
        """The staged ``items`` in the order they become rows."""
        return [item for item in items if item.key in self.embedded]


class IndexTarget(ABC):
    """Where ``build_index`` writes: a folder or a Milvus collection, new, appended to or replaced."""

    @property
    @abstractmethod
    def location(self) -> str:
        """For messages and the summary."""

    @abstractmethod
    def existing(self, mode: str) -> tuple[dict[str, Any] | None, GalleryIndex | None]:
        """(the description of the index there, that index opened when ``mode`` is append); Nones where there is
        none. Refuses what ``mode`` cannot do with the location."""

    def check_supported(self, params: IndexParams) -> None:  # noqa: B027 (most backends take every type)
        """Refuse, before any work, an index type this backend does not build."""

    @abstractmethod
    def staging(
        self, digest: str, dim: int, params: IndexParams, extending: GalleryIndex | None, keys: set[str]
    ) -> Staging:
        """The rows of an unfinished build of this model (``digest``) into the location, or a new empty staging;
        ``keys``: the gallery's, those a staged row may have."""

    @abstractmethod
    def commit(
        self,
        staging: Staging,
        keys: list[str],
        labels: list[str],
        params: IndexParams,
        description: dict[str, Any],
        extending: GalleryIndex | None,
        replaced: dict[str, Any] | None,
    ) -> float | None:
        """Make ``keys`` (rows in that order after ``extending``'s) the next generation, described by
        ``description`` (its generation, count, model, history); returns the bytes per vector where known."""
