"""The Milvus backend: a gallery index in a Milvus collection (docs/milvus.md).

The location is a URI: a local ``PATH.db`` is Milvus Lite (embedded, file-backed, started in process), an
``http://``, ``https://`` or ``tcp://`` URI a Milvus standalone server or cluster (the same client; a token, if the
server wants one, comes from ``$MILVUS_TOKEN``). The user-facing name (``--collection``, default ``gallery``) is an
alias onto a physical collection ``<name>__<n>``:

    fields       id INT64 primary key (the manifest row), path VARCHAR, label VARCHAR,
                 embedding FLOAT_VECTOR(dim), metric IP
    properties   ``edgedml.index``: the description (what a FAISS folder's index.json holds, without file names)
                 plus ``partitions``, the committed partitions that searches name
                 ``edgedml.staging``: the model (sha256), dimension and index parameters it was created for
    partitions   ``_default`` (the build), ``g<generation>`` (each append)

Generations: a new build (or ``--overwrite``) inserts into a new physical collection chunk by chunk as the chunks
are embedded; the alias is switched to it once it is indexed and loaded (the commit), then the one it replaced is
dropped. An append inserts into a new partition ``g<generation>``; rewriting ``edgedml.index`` to list it (one
property update) is the commit. Until then no search names the partition, so an interrupted append is invisible
and an interrupted build leaves the alias where it was; a re-run resumes from the rows already inserted.

Index types: flat -> FLAT, ivf -> IVF_FLAT (nlist; search nprobe), ivfpq -> IVF_PQ (nlist, m, nbits 8; search
nprobe), hnsw -> HNSW (M, efConstruction; search ef). Milvus Lite has no IVF_PQ: refused before any work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgedml import __version__
from edgedml.errors import ConfigError, DataError, EdgedmlError
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

DEFAULT_COLLECTION = "gallery"
SERVER_SCHEMES = ("http://", "https://", "tcp://")
INDEX_PROPERTY = "edgedml.index"
STAGING_PROPERTY = "edgedml.staging"
BUILD_PARTITION = "_default"
MILVUS_TYPES = {"flat": "FLAT", "ivf": "IVF_FLAT", "ivfpq": "IVF_PQ", "hnsw": "HNSW"}
LITE_LACKS = ("ivfpq",)
PATH_LENGTH = 4096
LABEL_LENGTH = 1024
READ_BATCH = 4096  # rows per query_iterator batch when the manifest is read
INSERT_BATCH = 1024
CONNECT_SECONDS = 10.0
TOKEN_VARIABLE = "MILVUS_TOKEN"
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
UPLOADS_SUFFIX = ".uploads"


def is_milvus_location(location: str | Path) -> bool:
    """A Milvus Lite file (``.db``) or a Milvus server URI, rather than a FAISS index folder."""
    text = str(location)
    return text.endswith(".db") or text.startswith(SERVER_SCHEMES)


def is_lite(uri: str) -> bool:
    return not uri.startswith(SERVER_SCHEMES)


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise ConfigError(
            "the Milvus backend needs pymilvus, which is not installed", hint="pip install 'edgedml[milvus]'"
        ) from None
    # pymilvus logs every refused call and a warning per query iterator; its errors reach the user as ours
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    return pymilvus


_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def connect(uri: str, must_exist: bool, cached: bool = True):
    """A MilvusClient for ``uri`` (one per URI and process, shared: its calls are thread-safe)."""
    pymilvus = _pymilvus()
    if is_lite(uri):
        path = Path(uri).expanduser()
        if must_exist and not path.exists():  # Milvus Lite 3 keeps a folder, earlier versions a file
            raise DataError(
                f"--uri {uri}: no Milvus Lite database there",
                hint=f"build one: edgedml index MODEL --gallery SPEC --backend milvus --uri {uri}",
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = str(path.resolve())
    token = os.environ.get(TOKEN_VARIABLE, "")
    with _clients_lock:
        if cached and (uri, token) in _clients:
            return _clients[uri, token]
        try:
            client = pymilvus.MilvusClient(uri=uri, token=token, timeout=CONNECT_SECONDS)
        except pymilvus.exceptions.MilvusException as exc:
            if is_lite(uri) and _locked_elsewhere(Path(uri)):
                raise ConfigError(
                    f"--uri {uri}: another process has this Milvus Lite database open "
                    "(Milvus Lite serves one process at a time)",
                    hint="stop that process (an edgedml serve, say) first, or use a Milvus server for several",
                ) from None
            raise ConfigError(
                f"--uri {uri}: no Milvus answers there ({_reason(exc)})",
                hint="start Milvus (docs/milvus.md) or correct --uri",
            ) from None
        if cached:
            _clients[uri, token] = client
        return client


def _locked_elsewhere(folder: Path) -> bool:
    """Another process holds Milvus Lite's advisory lock on the database folder (its ``LOCK`` file)."""
    import fcntl

    try:
        with open(folder / "LOCK", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def close_connections() -> None:
    """Close this process's Milvus clients and stop its Milvus Lite servers, releasing their databases
    (Milvus Lite lets one process at a time open a database; a process exiting releases them too)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()
    with contextlib.suppress(ImportError):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_all()


def _reason(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())[:300]


@contextlib.contextmanager
def _answers(where: str, doing: str) -> Iterator[None]:
    """A refused Milvus call as one DataError line naming the location."""
    exceptions = _pymilvus().exceptions
    try:
        yield
    except exceptions.MilvusException as exc:
        raise DataError(f"{where}: {doing} failed ({_reason(exc)})") from None


def check_collection_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or "__" in name:
        raise ConfigError(
            f"--collection {name!r} is not a Milvus name without '__' (letters, digits and _, not starting with a "
            "digit, at most 200)"
        )
    return name


def _where(uri: str, name: str) -> str:
    return f"--uri {uri} --collection {name}"


def _committed(client, uri: str, name: str) -> tuple[str, dict[str, Any]] | None:
    """(the physical collection the alias ``name`` points at, its description); None when nothing is there."""
    with _answers(_where(uri, name), "reading the collection"):
        if name not in client.list_aliases().get("aliases", []):
            if client.has_collection(name):
                raise ConfigError(
                    f"{_where(uri, name)}: a collection edgedml did not write (it is no alias of an edgedml index)",
                    hint="give another --collection",
                )
            return None
        physical = client.describe_alias(name)["collection_name"]
        described = client.describe_collection(physical)
    return physical, _description(described, uri, name)


def _schema_of(dim: int):
    pymilvus = _pymilvus()
    schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
    schema.add_field("path", pymilvus.DataType.VARCHAR, max_length=PATH_LENGTH)
    schema.add_field("label", pymilvus.DataType.VARCHAR, max_length=LABEL_LENGTH)
    schema.add_field("embedding", pymilvus.DataType.FLOAT_VECTOR, dim=dim)
    return schema


def _fields(described: dict[str, Any]) -> dict[str, str]:
    return {field["name"]: getattr(field["type"], "name", str(field["type"])) for field in described["fields"]}


EXPECTED_FIELDS = {"id": "INT64", "path": "VARCHAR", "label": "VARCHAR", "embedding": "FLOAT_VECTOR"}


def _description(described: dict[str, Any], uri: str, name: str) -> dict[str, Any]:
    """The edgedml description of a collection, refused unless it has edgedml's schema and a description."""
    fields = _fields(described)
    if fields != EXPECTED_FIELDS:
        found, wanted = (", ".join(f"{k} {v}" for k, v in spec.items()) for spec in (fields, EXPECTED_FIELDS))
        raise ConfigError(
            f"{_where(uri, name)}: the collection has another schema ({found}; an edgedml index has {wanted})",
            hint="give another --collection",
        )
    raw = described.get("properties", {}).get(INDEX_PROPERTY)
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(
            f"{_where(uri, name)}: the collection holds no edgedml index description", hint="give another --collection"
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(
            f"{_where(uri, name)}: index format {version} (written by edgedml {meta.get('edgedml_version', '?')}) is "
            f"newer than this edgedml ({__version__}) reads (format {FORMAT_VERSION})",
            hint="upgrade edgedml",
        )
    return meta


def _search_params(params: IndexParams, top_k: int, nprobe: int | None) -> dict[str, Any]:
    if params.type == "hnsw":
        if nprobe is not None:
            raise ConfigError("--nprobe applies to ivf and ivfpq indexes; this one is hnsw")
        return {"ef": max(params.ef_search, top_k)}
    if params.type in ("ivf", "ivfpq"):
        return {"nprobe": nprobe or params.nprobe}
    return {}


def _index_params(client, params: IndexParams):
    """Milvus's index of ``params``; each build parameter is given flat (Milvus servers) and nested under
    ``params`` (what Milvus Lite reads)."""
    build = {
        "flat": {},
        "ivf": {"nlist": params.nlist},
        "ivfpq": {"nlist": params.nlist, "m": params.pq_m, "nbits": params.pq_bits},
        "hnsw": {"M": params.hnsw_m, "efConstruction": params.ef_construction},
    }[params.type]
    index_params = client.prepare_index_params()
    index_params.add_index(
        field_name="embedding",
        index_type=MILVUS_TYPES[params.type],
        metric_type="IP",
        params={**build, "params": build} if build else {},
    )
    return index_params


def _read_rows(client, physical: str, partition: str, fields: list[str]) -> list[dict[str, Any]]:
    """Every row of one partition (``id`` and ``fields``), in batches: fine up to millions of rows."""
    iterator = client.query_iterator(
        physical, batch_size=READ_BATCH, filter="id >= 0", output_fields=fields, partition_names=[partition]
    )
    rows: list[dict[str, Any]] = []
    try:
        while batch := iterator.next():
            rows.extend(batch)
    finally:
        iterator.close()
    return rows


# ---------------------------------------------------------------------------------------------- reading


class MilvusIndex(GalleryIndex):
    """One committed generation of a Milvus collection: searches name only its committed partitions, so a
    generation appended later (or being appended) never shows in it. The manifest is read once, when opened."""

    def __init__(self, client, uri: str, name: str, physical: str, meta: dict[str, Any], manifest: Manifest):
        self.client, self.uri, self.name, self.physical = client, uri, name, physical
        self.meta, self.manifest = meta, manifest

    @classmethod
    def open(cls, uri: str | Path, collection: str | None = None, device: str = "cpu") -> MilvusIndex:
        """``device`` is where Milvus runs, not chosen here."""
        uri, name = str(uri), check_collection_name(collection or DEFAULT_COLLECTION)
        client = connect(uri, must_exist=True)
        committed = _committed(client, uri, name)
        if committed is None:
            raise DataError(
                f"{_where(uri, name)}: no such index",
                hint=f"build one: edgedml index MODEL --gallery SPEC --backend milvus --uri {uri} --collection {name}",
            )
        return cls.read(client, uri, name, *committed)

    @classmethod
    def read(cls, client, uri: str, name: str, physical: str, meta: dict[str, Any]) -> MilvusIndex:
        manifest = Manifest()
        with _answers(_where(uri, name), "loading the collection"):
            # a server (or a Lite database opened by a new process) starts with collections released
            client.load_collection(physical)
        with _answers(_where(uri, name), "reading the manifest"):
            rows = [row for part in meta["partitions"] for row in _read_rows(client, physical, part, ["path", "label"])]
        rows.sort(key=lambda row: row["id"])
        if [row["id"] for row in rows] != list(range(meta["count"])):
            raise DataError(
                f"{_where(uri, name)}: the committed partitions hold {len(rows)} rows, not ids 0..{meta['count'] - 1}",
                hint="rebuild it with --overwrite",
            )
        manifest.paths.extend(row["path"] for row in rows)
        manifest.labels.extend(row["label"] for row in rows)
        return cls(client, uri, name, physical, meta, manifest)

    @property
    def location(self) -> str:
        return f"{self.uri} (collection {self.name})"

    @property
    def home(self) -> Path | None:
        return Path(self.uri).expanduser().resolve().parent if is_lite(self.uri) else None

    @property
    def uploads_folder(self) -> Path | None:
        return Path(str(Path(self.uri).expanduser().resolve()) + UPLOADS_SUFFIX) if is_lite(self.uri) else None

    @property
    def opened(self) -> tuple[str, int]:
        return self.physical, self.generation

    def stamp(self) -> tuple[str, int] | None:
        try:
            committed = _committed(self.client, self.uri, self.name)
        except EdgedmlError:
            return None
        return None if committed is None else (committed[0], int(committed[1]["generation"]))

    def search(self, embeddings: np.ndarray, top_k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = self.check_query(embeddings)
        top_k = min(top_k, self.count)
        search_params = {"metric_type": "IP", "params": _search_params(self.params, top_k, nprobe)}
        scores = np.full((len(queries), top_k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), top_k), -1, dtype=np.int64)
        if not len(queries) or not top_k:
            return scores, ids
        with _answers(self.location, "search"):
            results = self.client.search(
                self.physical,
                data=queries.tolist(),
                limit=top_k,
                anns_field="embedding",
                search_params=search_params,
                partition_names=self.meta["partitions"],
                output_fields=["id"],
            )
        for row, hits in enumerate(results):
            hits = list(hits)[:top_k]
            ids[row, : len(hits)] = [hit["id"] for hit in hits]
            scores[row, : len(hits)] = [hit["distance"] for hit in hits]
        return scores, ids

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        wanted = sorted(set(rows.tolist()))
        with _answers(self.location, "reading vectors"):
            found = self.client.get(self.physical, ids=wanted, output_fields=["embedding"])
        by_id = {int(row["id"]): row["embedding"] for row in found}
        missing = [row for row in wanted if row not in by_id]
        if missing:
            raise DataError(f"{self.location}: no stored vector for rows {missing[:5]}")
        return np.array([by_id[row] for row in rows.tolist()], dtype=np.float32).reshape(len(rows), self.dim)


@contextlib.contextmanager
def scratch_index(vectors: np.ndarray, uri: str | None = None) -> Iterator[MilvusIndex]:
    """A flat Milvus index of ``vectors`` (N, dim), row i holding vector i: a collection in a temporary Milvus Lite
    database, or a temporary collection at ``uri``; removed at exit."""
    with tempfile.TemporaryDirectory(prefix="edgedml-milvus-") as folder:
        where = uri or str(Path(folder) / "scratch.db")
        client = connect(where, must_exist=False, cached=uri is not None)
        name = f"edgedml_scratch_{uuid.uuid4().hex[:12]}"
        params = IndexParams("flat")
        meta = {"generation": 1, "dim": vectors.shape[1], "count": len(vectors), "index": params.to_dict()}
        try:
            with _answers(_where(where, name), "creating a scratch collection"):
                client.create_collection(
                    name, schema=_schema_of(vectors.shape[1]), index_params=_index_params(client, params)
                )
                for start in range(0, len(vectors), INSERT_BATCH):
                    client.insert(
                        name,
                        [
                            {"id": start + i, "path": "", "label": "", "embedding": vector.tolist()}
                            for i, vector in enumerate(vectors[start : start + INSERT_BATCH])
                        ],
                    )
                client.load_collection(name)
            yield MilvusIndex(client, where, name, name, {**meta, "partitions": [BUILD_PARTITION]}, Manifest())
        finally:
            with contextlib.suppress(Exception):
                client.drop_collection(name)
            if uri is None:
                client.close()


# ---------------------------------------------------------------------------------------------- writing


class MilvusTarget(IndexTarget):
    """A collection (alias) at a Milvus URI to write: new, appended to, or replaced."""

    def __init__(self, uri: str | Path, collection: str | None = None):
        self.uri, self.name = str(uri), check_collection_name(collection or DEFAULT_COLLECTION)
        self.client = connect(self.uri, must_exist=False)
        self.current: str | None = None  # the physical collection the alias points at

    @property
    def location(self) -> str:
        return f"{self.uri} (collection {self.name})"

    def existing(self, mode: str) -> tuple[dict[str, Any] | None, MilvusIndex | None]:
        committed = _committed(self.client, self.uri, self.name)
        if committed is None:
            return None, None
        self.current, meta = committed
        if mode == "append":
            return meta, MilvusIndex.read(self.client, self.uri, self.name, *committed)
        if mode == "new":
            raise ConfigError(
                f"{_where(self.uri, self.name)} already holds an index of {meta['count']:,} images",
                hint="--append adds new images to it, --overwrite replaces it",
            )
        return meta, None

    def check_supported(self, params: IndexParams) -> None:
        if params.type in LITE_LACKS and is_lite(self.uri):
            raise ConfigError(
                f"--index-type {params.type}: Milvus Lite ({self.uri}) has no {MILVUS_TYPES[params.type]} index",
                hint="use a Milvus server (--uri http://HOST:19530), or --index-type ivf or hnsw",
            )

    def staging(
        self, digest: str, dim: int, params: IndexParams, extending: GalleryIndex | None, keys: set[str]
    ) -> _MilvusStaging:
        """Rows of another gallery left by an interrupted run are dropped: every staged row becomes a row."""
        state = {"model_sha256": digest, "dim": dim, "index": params.to_dict()}
        for attempt in range(2):
            if isinstance(extending, MilvusIndex):
                staging = self._partition_staging(extending)
            else:
                staging = self._collection_staging(state, params)
            stray = set(staging.embedded) - keys
            if not stray or attempt:
                return staging
            log.warning(
                "%s: the unfinished build holds %d image(s) not in this gallery; starting over",
                self.location,
                len(stray),
            )
            with _answers(self.location, "dropping the unfinished build"):
                if isinstance(extending, MilvusIndex):
                    self.client.drop_partition(staging.physical, staging.partition)
                else:
                    self.client.drop_collection(staging.physical)
        raise AssertionError("unreachable")

    def _partition_staging(self, extending: MilvusIndex) -> _MilvusStaging:
        """Partition ``g<next generation>`` of the current collection, resumed if an append left rows there."""
        partition = f"g{extending.generation + 1}"
        with _answers(self.location, "preparing the append"):
            if not self.client.has_partition(extending.physical, partition):
                self.client.create_partition(extending.physical, partition)
        return _MilvusStaging(self.client, self.location, extending.physical, partition, extending.count)

    def _collection_staging(self, state: dict[str, Any], params: IndexParams) -> _MilvusStaging:
        """The physical collection an interrupted build of the same model and parameters left, or a new one;
        collections of other unfinished builds are dropped (as a FAISS folder's ``.partial`` of another model)."""
        with _answers(self.location, "preparing the build"):
            numbered = {
                name: int(name.rpartition("__")[2])
                for name in self.client.list_collections()
                if name.startswith(self.name + "__") and name.rpartition("__")[2].isdigit()
            }
            for name in sorted(numbered, key=numbered.get):
                if name == self.current:
                    continue
                properties = self.client.describe_collection(name).get("properties", {})
                if properties.get(STAGING_PROPERTY) == json.dumps(state, sort_keys=True):
                    return _MilvusStaging(self.client, self.location, name, BUILD_PARTITION, 0)
                log.warning("%s: dropping %s, an unfinished build of another model or index", self.location, name)
                self.client.drop_collection(name)
            physical = f"{self.name}__{max(numbered.values(), default=0) + 1}"
        try:
            self.client.create_collection(
                physical,
                schema=_schema_of(state["dim"]),
                index_params=_index_params(self.client, params),
                properties={STAGING_PROPERTY: json.dumps(state, sort_keys=True)},
            )
        except _pymilvus().exceptions.MilvusException as exc:
            raise ConfigError(
                f"--index-type {params.type}: {self.uri} refuses a {MILVUS_TYPES[params.type]} index ({_reason(exc)})",
                hint="choose another --index-type",
            ) from None
        return _MilvusStaging(self.client, self.location, physical, BUILD_PARTITION, 0)

    def commit(
        self,
        staging: _MilvusStaging,
        keys: list[str],
        labels: list[str],
        params: IndexParams,
        description: dict[str, Any],
        extending: MilvusIndex | None,
        replaced: dict[str, Any] | None,
    ) -> None:
        """A build: index and load the new collection, then point the alias at it (the commit), then drop the
        collection it replaced. An append: list its partition in the description (the commit)."""
        client, physical = self.client, staging.physical
        partitions = [BUILD_PARTITION] if extending is None else list(extending.meta["partitions"])
        with _answers(self.location, "committing"):
            if extending is not None and not keys:
                client.drop_partition(physical, staging.partition)
            elif extending is not None:
                partitions.append(staging.partition)
            client.flush(physical)
            client.load_collection(physical)
            client.alter_collection_properties(
                physical, properties={INDEX_PROPERTY: json.dumps({**description, "partitions": partitions})}
            )
            if extending is None:
                if self.current is not None:
                    client.alter_alias(physical, self.name)
                else:
                    client.create_alias(physical, self.name)
        if extending is None and self.current is not None and self.current != physical:
            try:
                with _answers(self.location, f"dropping the replaced {self.current}"):
                    client.release_collection(self.current)
                    client.drop_collection(self.current)
            except DataError as exc:
                log.warning("%s (the new index is committed)", exc.message)
        return None


class _MilvusStaging(Staging):
    """Rows inserted into one partition of a physical collection that no committed generation lists yet;
    ``embedded`` maps each key to its row id (ids ``first_row`` on, in the order inserted)."""

    def __init__(self, client, location: str, physical: str, partition: str, first_row: int):
        self.client, self.location, self.physical, self.partition = client, location, physical, partition
        self.first_row = first_row
        self.skipped: set[str] = set()
        with _answers(location, "reading the rows of the unfinished build"):
            rows = sorted(_read_rows(client, physical, partition, ["path"]), key=lambda row: row["id"])
        if [row["id"] for row in rows] != list(range(first_row, first_row + len(rows))):
            raise DataError(
                f"{location}: {physical}/{partition} holds rows that do not follow the index's",
                hint="rebuild it with --overwrite",
            )
        self.embedded: dict[str, int] = {row["path"]: int(row["id"]) for row in rows}
        if rows:
            log.info("resuming: %d image(s) already inserted in %s/%s", len(rows), physical, partition)

    def store(self, items: list[GalleryItem], embeddings: np.ndarray, skipped: list[str]) -> None:
        first = self.first_row + len(self.embedded)
        rows = [
            {"id": first + i, "path": item.key, "label": item.sample.label, "embedding": vector.tolist()}
            for i, (item, vector) in enumerate(zip(items, embeddings, strict=True))
        ]
        with _answers(self.location, "inserting"):
            for start in range(0, len(rows), INSERT_BATCH):
                self.client.insert(self.physical, rows[start : start + INSERT_BATCH], partition_name=self.partition)
        self.embedded.update((row["path"], row["id"]) for row in rows)
        self.skipped.update(skipped)

    def rows(self, items: list[GalleryItem]) -> list[GalleryItem]:
        """The staged items in the order of their row ids."""
        by_key = {item.key: item for item in items}
        return [by_key[key] for key in sorted(self.embedded, key=self.embedded.get)]

    def remove(self) -> None:
        """The rows are the committed generation's now: nothing to remove."""
