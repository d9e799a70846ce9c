"""The FAISS backend: a gallery index in one folder, with a manifest.

    INDEX_DIR/index.json          format version, the model (path, sha256, ModelInfo), index type and
                                  parameters, count, and the names of the current generation's files
    INDEX_DIR/index.<gen>.faiss   the FAISS index; row i is manifest row i
    INDEX_DIR/manifest.<gen>.csv  id,path,label: one row per embedded image (in-memory sources such as
                                  digits get ``<source>#<position>`` as their path)
    INDEX_DIR/.partial/           embedded chunks of an unfinished build (what a re-run resumes from)

Index types (``edgedml.retrieval.store``): ``flat`` IndexFlatIP, ``ivf`` IndexIVFFlat, ``ivfpq`` IndexIVFPQ,
``hnsw`` IndexHNSWFlat, all inner product.

A write never touches the current generation: the new generation's files are written beside it, then
``index.json`` (the commit point) is replaced atomically to name them, then the old files are removed.
An interrupted build leaves the previous index as it was, and its embedded chunks in ``.partial/``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgedml import __version__
from edgedml.errors import ConfigError, DataError
from edgedml.io import write_json, write_with
from edgedml.retrieval.rerank import make_direct_map
from edgedml.retrieval.store import (
    FORMAT,
    FORMAT_VERSION,
    GalleryIndex,
    GalleryItem,
    IndexParams,
    IndexTarget,
    Manifest,
    Staging,
)

log = logging.getLogger(__name__)

META_FILE = "index.json"
META_KEYS = ("generation", "files", "model", "index", "dim", "count")
PARTIAL_DIR = ".partial"
UPLOADS_DIR = "uploads"
PQ_POINTS_PER_CENTROID = 64

FileStamp = tuple[int, int, int]  # (inode, mtime ns, size) of index.json


def index_stamp(root: Path) -> FileStamp | None:
    """What changes whenever ``index.json`` is replaced (a commit); None while it cannot be read."""
    try:
        stat = os.stat(root / META_FILE)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


# ---------------------------------------------------------------------------------------------- faiss


def new_faiss_index(params: IndexParams, dim: int):
    import faiss

    if params.type == "flat":
        return faiss.IndexFlatIP(dim)
    if params.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
        return index
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
    """The index on a GPU when asked for (``cuda``) and this faiss has GPU support; the CPU index otherwise
    (FAISS has no GPU HNSW: an HNSW index stays on the CPU)."""
    import faiss

    if not device.startswith("cuda") or isinstance(index, faiss.IndexHNSW):
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


def train_index(params: IndexParams, vectors: np.ndarray, device: str = "cpu"):
    """A FAISS index of ``params`` (resolved) trained on and holding ``vectors``: (N, dim) float32."""
    index = new_faiss_index(params, vectors.shape[1])
    if params.type in ("flat", "hnsw"):
        index.add(vectors)
        return index
    working = on_device(index, device)
    working.train(vectors)
    working.add(vectors)
    index = to_cpu(working)
    set_nprobe(index, params.nprobe)
    return index


# ---------------------------------------------------------------------------------------------- manifest


def write_manifest(manifest: Manifest, path: Path) -> None:
    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            rows = csv.writer(handle)
            rows.writerow(["id", "path", "label"])
            rows.writerows(zip(range(len(manifest.paths)), manifest.paths, manifest.labels, strict=True))

    write_with(path, writer)


def read_manifest(path: Path) -> Manifest:
    manifest = Manifest()
    with path.open(newline="", encoding="utf-8") as handle:
        for expected, row in enumerate(csv.DictReader(handle)):
            if int(row["id"]) != expected:
                raise DataError(f"{path}: row ids are not 0..N-1 in order (row {expected} has id {row['id']})")
            manifest.paths.append(row["path"])
            manifest.labels.append(row["label"])
    return manifest


# ---------------------------------------------------------------------------------------------- reading


class FaissIndex(GalleryIndex):
    """An index directory opened for reading: ``meta`` (index.json), the FAISS ``index``, the ``manifest``.

    ``device``: where searches run (``cuda``: a GPU copy, placed once when the index is opened, if this
    faiss has GPU support); ``index`` itself stays the CPU index that ``--append`` extends and writes.
    """

    def __init__(
        self,
        root: Path,
        meta: dict[str, Any],
        index,
        manifest: Manifest,
        device: str = "cpu",
        opened: FileStamp | None = None,
    ):
        self.root, self.meta, self.index, self.manifest = root, meta, index, manifest
        self._opened = opened
        if self.params.type in ("ivf", "ivfpq"):
            # what reconstruct (re-ranking reads stored vectors) needs, made now: searches never change the index
            make_direct_map(index)
        self.searched = on_device(index, device)
        if self.params.type in ("ivf", "ivfpq"):
            set_nprobe(self.searched, self.params.nprobe)

    @classmethod
    def open(cls, root: str | Path, device: str = "cpu") -> FaissIndex:
        import faiss

        root = Path(root)
        stamp = index_stamp(root)  # before reading: a commit after it is seen as a newer generation
        meta = read_meta(root)
        files = meta["files"]
        try:
            index = faiss.read_index(str(root / files["index"]))
            manifest = read_manifest(root / files["manifest"])
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
        return cls(root, meta, index, manifest, device, stamp)

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def home(self) -> Path:
        return self.root

    @property
    def uploads_folder(self) -> Path:
        return self.root / UPLOADS_DIR

    @property
    def opened(self) -> FileStamp | None:
        return self._opened

    def stamp(self) -> FileStamp | None:
        return index_stamp(self.root)

    def search(self, embeddings: np.ndarray, top_k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = self.check_query(embeddings)
        top_k = min(top_k, self.count)
        params = self.params
        if params.type == "hnsw":
            import faiss

            if nprobe is not None:
                raise ConfigError("--nprobe applies to ivf and ivfpq indexes; this one is hnsw")
            search_params = faiss.SearchParametersHNSW(efSearch=max(params.ef_search, top_k))
            return self.searched.search(queries, top_k, params=search_params)
        if params.type != "flat":
            set_nprobe(self.searched, nprobe or params.nprobe)
        return self.searched.search(queries, top_k)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))


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
    own = _files(generation)
    if meta["files"] != own:
        raise DataError(
            f"{path}: names files {meta['files']!r}, not the index's own {own!r}", hint=_rebuild_hint(path.parent)
        )


def _files(generation: int) -> dict[str, str]:
    return {"index": f"index.{generation}.faiss", "manifest": f"manifest.{generation}.csv"}


def _rebuild_hint(root: Path) -> str:
    return f"rebuild it: edgedml index MODEL --gallery SPEC --out {root} --overwrite"


# ---------------------------------------------------------------------------------------------- writing


class FaissTarget(IndexTarget):
    """An index folder to write: new, extended (``append``) or replaced (``overwrite``) generation by generation."""

    def __init__(self, out: str | Path, device: str = "cpu"):
        self.out, self.device = Path(out), device

    @property
    def location(self) -> str:
        return str(self.out)

    def existing(self, mode: str) -> tuple[dict[str, Any] | None, FaissIndex | None]:
        """``overwrite`` reads only the description, so an index whose FAISS or manifest file is damaged can
        still be replaced."""
        out = self.out
        if (out / META_FILE).exists():
            if mode == "append":
                existing = FaissIndex.open(out)
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

    def staging(
        self, digest: str, dim: int, params: IndexParams, extending: GalleryIndex | None, keys: set[str]
    ) -> _Partial:
        return _Partial(self.out / PARTIAL_DIR, digest)

    def commit(
        self,
        staging: _Partial,
        keys: list[str],
        labels: list[str],
        params: IndexParams,
        description: dict[str, Any],
        extending: FaissIndex | None,
        replaced: dict[str, Any] | None,
    ) -> float:
        """Write the new generation's files, then index.json (the commit point), then remove the files of the
        generation it replaces (nothing else in the folder is touched)."""
        import faiss

        vectors = np.stack([staging.embedded[key] for key in keys]) if keys else np.zeros((0, description["dim"]))
        vectors = vectors.astype(np.float32)
        if extending is not None:
            index, manifest = extending.index, extending.manifest
            index.add(vectors)
        else:
            index, manifest = train_index(params, vectors, self.device), Manifest()
        manifest.paths.extend(keys)
        manifest.labels.extend(labels)
        files = _files(description["generation"])
        out = self.out
        write_with(out / files["index"], lambda tmp: faiss.write_index(to_cpu(index), str(tmp)))
        write_manifest(manifest, out / files["manifest"])
        write_json(out / META_FILE, {**description, "files": files})
        for name in (replaced or {}).get("files", {}).values():
            if name not in files.values():
                (out / name).unlink(missing_ok=True)
        return (out / files["index"]).stat().st_size / max(1, len(manifest))


def _replaced_description(out: Path) -> dict[str, Any] | None:
    """The description of the index ``--overwrite`` replaces; None (its files then stay) if it is damaged."""
    try:
        return read_meta(out)
    except IndexTooNew:
        raise
    except DataError as exc:
        log.warning("%s; replacing it (the files it named are left in place)", exc.message)
        return None


class _Partial(Staging):
    """Embedded chunks of an unfinished build: ``chunk-<n>.npz`` holding keys, embeddings and skipped keys."""

    def __init__(self, root: Path, digest: str):
        self.root = root
        self.digest = digest
        self.embedded: dict[str, np.ndarray] = {}
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
                self.embedded.update(zip(data["keys"].tolist(), data["embeddings"], strict=True))
                self.skipped.update(data["skipped"].tolist())
        if self.embedded or self.skipped:
            log.info("resuming: %d image(s) already embedded in %s", len(self.embedded) + len(self.skipped), self.root)

    def store(self, items: list[GalleryItem], embeddings: np.ndarray, skipped: list[str]) -> None:
        keys = [item.key for item in items]
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
        self.embedded.update(zip(keys, embeddings, strict=True))
        self.skipped.update(skipped)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
