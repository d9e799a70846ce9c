"""FAISS indexes against Milvus Lite on one generated gallery: build time, queries/s at 1 and 16 clients, recall.

The gallery is the retrieval benchmark's (``edgedml.retrieval.synthetic.clustered_gallery``, N x 64, decay 1,
seed 0) with held-out queries from the same clusters. Each configuration is built on it, then measured:

- build s: FAISS: train + add. Milvus Lite: insert (batches of 5,000 rows: INT64 id, VARCHAR path
  ``g/<i>.png`` and label, FLOAT_VECTOR(64)) + flush + create_index + load_collection, i.e. until a search
  uses the index (checked, see below);
- bytes / vector: FAISS: the serialized index / N (as in ``benchmarks/retrieval.py``). Milvus Lite: everything
  its ``.db`` folder holds on disk / N: the parquet segment (id, path, label, raw vector) and the index sidecar,
  which for IVF_FLAT and HNSW holds the raw vectors a second time;
- queries/s with 1 client (one query per search call, in turn) and with 16 client threads (each issuing
  single-query searches against the same index). The threads cycle through the held-out queries; a
  measurement stops after ``--searches`` searches or ``--seconds``, whichever comes first, and reports the best
  of 3 runs sharing that budget. FAISS uses ``--threads`` OpenMP threads (default 1) for builds and 1 client,
  and 1 per client thread at 16 clients, so the parallelism there is the threads', not OpenMP's; the same
  counts hold for Milvus Lite, whose indexes are FAISS in this process (each thread sets its own: libgomp
  keeps the count per thread). On a shared 2-core machine two OpenMP threads make a single-query flat
  search 30x slower, not faster, whenever another process holds a core;
- 10-recall@10 against FAISS flat's exact top 10 (all held-out queries);
- ratios of queries/s against FAISS flat (exact search) at the same client count, measured in the same run.

FAISS: flat, IVF and IVF-PQ with the library's defaults (``edgedml.retrieval.index``: nlist about 4 sqrt(N),
nprobe 4, pq_m 64 at 64-d), and ``IndexHNSWFlat`` (M 32, efConstruction 100) over efSearch 16/32/64/128.
Milvus Lite (``MilvusClient("<tmp>/<index>.db")``, metric IP): FLAT, IVF_FLAT (FAISS's nlist and nprobe),
IVF_PQ (m 64, nbits 8) and HNSW (M 32, efConstruction 100, the same ef sweep). The 16 Milvus clients share one
``MilvusClient`` (pymilvus shares one gRPC channel per URI, and gRPC channels are thread-safe); one extra row
gives every thread its own ``MilvusClient(..., dedicated=True)`` channel.

What Milvus Lite 3.x is (read from its package): not the C++ Milvus. ``MilvusClient("x.db")`` starts, inside
this Python process, a gRPC server (``milvus_lite.adapter.grpc``, a 10-worker thread pool) in front of a
pure-Python engine (``milvus_lite.engine``: WAL, memtable, parquet segments, compaction) whose per-segment
vector indexes are FAISS (``milvus_lite.index.factory``: FLAT is a NumPy brute force, IVF_FLAT is
``IndexIVFFlat``, HNSW is ``IndexHNSWFlat``; IVF_PQ raises NotImplementedError, "reserved for a future
phase"). Every search is a protobuf round trip over loopback to threads that share this process's GIL, and
the engine then walks every row of every segment in Python before it asks the index
(``search.executor_indexed``: ``_update_max_seqs`` and ``_build_local_mask``, the newest-version and tombstone
masks, a dict lookup and an ``is_deleted`` call per row and query: 94% of the engine's time in a profile at
20k rows); FLAT copies all vectors per query. So it is slower than FAISS called directly, by a margin that
grows with N, and 16 clients add little. The report splits a query's time into the index's search, the rest of
the engine, and the client/gRPC path.

Two Milvus Lite pitfalls this script avoids: index build parameters must be nested,
``add_index(..., params={"params": {"nlist": 1265}})``; pymilvus sends flat ``params={"nlist": 1265}`` as
top-level keys, which Milvus Lite ignores (it builds nlist 128: "clustering N points to 128 centroids").
And IVF_PQ created before the data are flushed fails only in the background build (a logged error);
``describe_index`` still says Finished with every row indexed, and searches silently run brute force on the
unindexed segment. Here the index is created after the flush (the build runs inside create_index, so an
error surfaces), every segment's attached index is checked (type, nlist, M, efConstruction), and every
measured search is counted at the index class it reaches (no brute-force call for IVF or HNSW).

Why one would still move to Milvus (standalone or cluster, not Lite), none of which is measured here:
sharding a gallery too large for one machine over query nodes; replicas for throughput and availability;
scalar filtering in the same query (``label == "shoes"``, a date range) without a second store; many
concurrent writers and deletes with a WAL, compaction and consistency levels; durability and backups; and one
server that many processes and hosts query, instead of an index file each process loads. Milvus Lite is the
same API on a laptop, for a prototype that later points at a server URI.

Run: ``python benchmarks/vector_db.py`` (100k x 64, about 4 minutes on 2 cores), ``--quick`` (20k, about 1.5
minutes), ``--json FILE`` for the raw numbers.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from benchmark_tools import benchmark_parser, log_progress, markdown_table, write_json_file

from edgedml.retrieval.faiss_store import set_nprobe, train_index
from edgedml.retrieval.store import IndexParams, default_nlist, resolve_params
from edgedml.retrieval.synthetic import clustered_gallery, recall_against_exact

K = 10
CLIENTS = 16
REPEATS = 3  # each queries/s measurement: the best of 3 runs, each with a third of the budget
EF_SEARCHES = (16, 32, 64, 128)
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 100
TARGET_RECALL = 0.95
INSERT_BATCH = 5_000
LATENCY_QUERIES = 200  # alternating client / engine searches for the latency split (at most)
RECALL_BATCH = 100  # queries per Milvus search call when measuring recall (not timed)
SCALE_COUNT = 100_000_000
COLLECTION, VECTOR_FIELD = "gallery", "vec"
MILVUS_CLASSES = {"FLAT": "BruteForceIndex", "IVF_FLAT": "FaissIvfFlatIndex", "IVF_PQ": "?", "HNSW": "FaissHnswIndex"}

SearchOne = Callable[[np.ndarray], Any]


# ---------------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Budget:
    """The bound of one queries/s measurement: ``searches`` single-query searches or ``seconds``, what comes first."""

    seconds: float
    searches: int


def throughput(searchers: Sequence[SearchOne], queries: np.ndarray, budget: Budget, warmup: int = 3) -> dict:
    """Queries/s of single-query searches by ``len(searchers)`` threads (one: the calling thread).

    Thread ``t`` uses ``searchers[t]``; the threads take the held-out queries in turn (cycling through them)
    until ``budget.searches`` are issued or ``budget.seconds`` have passed.
    """
    for i in range(min(warmup, len(queries))):
        searchers[0](queries[i : i + 1])
    lock = threading.Lock()
    state = {"next": 0}
    errors: list[BaseException] = []
    deadline = time.perf_counter() + budget.seconds

    def worker(search: SearchOne) -> None:
        try:
            OpenMP.apply()
            while True:
                with lock:
                    i = state["next"]
                    if i >= budget.searches or time.perf_counter() >= deadline:
                        return
                    state["next"] = i + 1
                j = i % len(queries)
                search(queries[j : j + 1])
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    started = time.perf_counter()
    deadline = started + budget.seconds
    if len(searchers) == 1:
        worker(searchers[0])
    else:
        threads = [threading.Thread(target=worker, args=(s,)) for s in searchers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return {"qps": state["next"] / elapsed, "searches": state["next"], "seconds": elapsed}


class OpenMP:
    """FAISS's OpenMP thread count for every thread that builds or searches.

    ``faiss.omp_set_num_threads`` sets the calling thread's count only (libgomp keeps it per thread): threads
    started later, ours and Milvus Lite's gRPC workers, would use the default (all cores). So each of them
    applies ``OpenMP.threads`` itself before it calls FAISS.
    """

    threads = 1

    @classmethod
    def apply(cls) -> None:
        faiss.omp_set_num_threads(cls.threads)

    @classmethod
    @contextlib.contextmanager
    def using(cls, threads: int):
        previous, cls.threads = cls.threads, threads
        cls.apply()
        try:
            yield
        finally:
            cls.threads = previous
            cls.apply()


def best_throughput(searchers: Sequence[SearchOne], queries: np.ndarray, budget: Budget) -> dict:
    """The best of ``REPEATS`` runs, each with a ``REPEATS``-th of the budget (keeps other processes' load out)."""
    part = Budget(budget.seconds / REPEATS, max(1, budget.searches // REPEATS))
    runs = [throughput(searchers, queries, part) for _ in range(REPEATS)]
    best = max(runs, key=lambda run: run["qps"])
    return {**best, "searches": sum(run["searches"] for run in runs), "runs_qps": [run["qps"] for run in runs]}


def both_client_counts(searchers_1: SearchOne, searchers_n: Sequence[SearchOne], queries, budget: Budget) -> dict:
    one = best_throughput([searchers_1], queries, budget)
    with OpenMP.using(1):
        many = best_throughput(searchers_n, queries, budget)
    return {"qps_1": one["qps"], "searches_1": one["searches"], "qps_n": many["qps"], "searches_n": many["searches"]}


# ---------------------------------------------------------------------------------------------- FAISS


def faiss_rows(vectors: np.ndarray, queries: np.ndarray, budget: Budget) -> tuple[list[dict], np.ndarray]:
    """Rows for FAISS flat / IVF / IVF-PQ (library defaults) and HNSW over the ef sweep; the exact top 10."""
    count, dim = vectors.shape
    rows: list[dict] = []
    exact = None
    variants = [("flat", IndexParams("flat")), ("IVF", IndexParams("ivf")), ("IVF-PQ", IndexParams("ivfpq"))]
    for name, requested in variants:
        params = resolve_params(requested, count, dim)
        log_progress(f"FAISS {name}: building")
        started = time.perf_counter()
        index = train_index(params, vectors)
        build_s = time.perf_counter() - started
        set_nprobe(index, params.nprobe)
        _, ids = index.search(queries, K)
        if exact is None:
            exact = ids
        built = {
            "flat": "exact",
            "IVF": f"nlist {params.nlist}",
            "IVF-PQ": f"nlist {params.nlist}, m {params.pq_m} x {params.pq_bits} bit",
        }[name]
        log_progress(f"FAISS {name}: measuring")
        rows.append(
            {
                "system": "FAISS",
                "index": name,
                "built": built,
                "search": "—" if params.nprobe is None else f"nprobe {params.nprobe}",
                "build_s": build_s,
                "bytes_per_vector": len(faiss.serialize_index(index)) / count,
                "recall": recall_against_exact(ids, exact),
                **both_client_counts(
                    lambda q, i=index: i.search(q, K), [lambda q, i=index: i.search(q, K)] * CLIENTS, queries, budget
                ),
            }
        )
    log_progress("FAISS HNSW: building")
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(vectors)
    build_s = time.perf_counter() - started
    size = len(faiss.serialize_index(index)) / count
    for ef in EF_SEARCHES:
        index.hnsw.efSearch = ef
        _, ids = index.search(queries, K)
        log_progress(f"FAISS HNSW ef {ef}: measuring")
        rows.append(
            {
                "system": "FAISS",
                "index": "HNSW",
                "built": f"M {HNSW_M}, efC {HNSW_EF_CONSTRUCTION}",
                "search": f"ef {ef}",
                "ef": ef,
                "build_s": build_s,
                "bytes_per_vector": size,
                "recall": recall_against_exact(ids, exact),
                **both_client_counts(
                    lambda q: index.search(q, K), [lambda q: index.search(q, K)] * CLIENTS, queries, budget
                ),
            }
        )
    return rows, exact


# ---------------------------------------------------------------------------------------------- Milvus Lite


class IndexCalls:
    """Counts the searches reaching each Milvus Lite index class (and their params and time), in-process.

    The executor builds a throw-away BruteForceIndex for a segment that has no index, so a brute-force
    search on an unindexed segment shows up here as BruteForceIndex calls.
    """

    def __init__(self):
        from milvus_lite.index import factory
        from milvus_lite.index.brute_force import BruteForceIndex
        from milvus_lite.index.faiss_hnsw import FaissHnswIndex
        from milvus_lite.index.faiss_ivf_flat import FaissIvfFlatIndex

        self.lock = threading.Lock()
        self.reset()
        for cls in (BruteForceIndex, FaissIvfFlatIndex, FaissHnswIndex):
            self._wrap(cls)
        original_build = factory.build_index_from_spec

        def build_index_from_spec(spec, vectors):  # runs in a gRPC worker thread: its own OpenMP count
            OpenMP.apply()
            return original_build(spec, vectors)

        factory.build_index_from_spec = build_index_from_spec  # Segment imports it from there at each build

    def reset(self) -> None:
        self.calls: collections.Counter = collections.Counter()
        self.params: set[str] = set()
        self.seconds = 0.0
        self.masked = 0

    def _wrap(self, cls) -> None:
        original, name, calls = cls.search, cls.__name__, self

        def search(index, queries, top_k, valid_mask=None, params=None):
            OpenMP.apply()
            started = time.perf_counter()
            result = original(index, queries, top_k, valid_mask, params)
            with calls.lock:
                calls.calls[name] += 1
                calls.params.add(json.dumps(dict(params or {}), sort_keys=True))
                calls.masked += valid_mask is not None
                calls.seconds += time.perf_counter() - started
            return result

        cls.search = search


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class MilvusCollection:
    """One Milvus Lite database holding the gallery under one index type: built, checked, searched, closed."""

    def __init__(self, root: Path, index_type: str, build_params: dict):
        from milvus_lite.server_manager import server_manager_instance
        from pymilvus import MilvusClient

        self.path = root / f"{index_type.lower()}.db"
        self.index_type, self.build_params = index_type, build_params
        self.client = MilvusClient(str(self.path))
        self.extra_clients: list = []
        _, self.db, _ = server_manager_instance._servers[os.path.abspath(self.path)]  # private: for the checks only

    def build(self, vectors: np.ndarray) -> dict:
        from pymilvus import DataType, MilvusClient, MilvusException

        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("path", DataType.VARCHAR, max_length=64)
        schema.add_field("label", DataType.VARCHAR, max_length=32)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=vectors.shape[1])
        self.client.create_collection(COLLECTION, schema=schema)
        started = time.perf_counter()
        for start in range(0, len(vectors), INSERT_BATCH):
            batch = vectors[start : start + INSERT_BATCH].tolist()
            self.client.insert(
                COLLECTION,
                [
                    {
                        "id": start + j,
                        "path": f"g/{start + j}.png",
                        "label": f"class-{(start + j) % 100}",
                        VECTOR_FIELD: vector,
                    }
                    for j, vector in enumerate(batch)
                ],
            )
        inserted = time.perf_counter()
        self.client.flush(COLLECTION)
        flushed = time.perf_counter()
        index_params = self.client.prepare_index_params()
        # nested: pymilvus sends a flat params={...} as top-level keys, which Milvus Lite ignores
        index_params.add_index(
            VECTOR_FIELD,
            index_type=self.index_type,
            index_name=VECTOR_FIELD,
            metric_type="IP",
            params={"params": self.build_params},
        )
        error = None
        try:
            self.client.create_index(COLLECTION, index_params)
            self.client.load_collection(COLLECTION)
        except MilvusException as exc:
            error = exc.message
        indexed = time.perf_counter()
        col = self.db.get_collection(COLLECTION)
        col._wait_for_bg()  # no compaction/index build left running
        description = self.client.describe_index(COLLECTION, VECTOR_FIELD)
        segments = col._segments_snapshot()
        return {
            "insert_s": inserted - started,
            "flush_s": flushed - inserted,
            "index_s": indexed - flushed,
            "build_s": indexed - started,
            "error": error,
            "describe_index": description,
            "segments": [self._segment_check(seg) for seg in segments],
            "bytes": du(self.path),
            "index_file_bytes": sum(du(p) for p in self.path.rglob("indexes")),
            "data_file_bytes": sum(du(p) for p in self.path.rglob("data") if p.is_dir()),
        }

    def _segment_check(self, segment) -> dict:
        index = segment.indexes.get(VECTOR_FIELD)
        check = {"rows": segment.num_rows, "index": type(index).__name__ if index is not None else None}
        faiss_index = getattr(index, "_index", None)
        if faiss_index is not None and hasattr(faiss_index, "nlist"):
            check["nlist"] = int(faiss_index.nlist)
        if faiss_index is not None and hasattr(faiss_index, "hnsw"):
            check["M"] = int(faiss_index.hnsw.nb_neighbors(1))
            check["efConstruction"] = int(faiss_index.hnsw.efConstruction)
        return check

    def verified(self, built: dict) -> str | None:
        """None when every segment holds the index asked for with its parameters; else what is wrong."""
        want = MILVUS_CLASSES[self.index_type]
        for seg in built["segments"]:
            if seg["index"] != want:
                return f"segment of {seg['rows']:,} rows holds {seg['index'] or 'no index'}, not {want}"
            for key in ("nlist", "M", "efConstruction"):
                if key in self.build_params and seg.get(key) != self.build_params[key]:
                    return f"segment index has {key} {seg.get(key)}, not {self.build_params[key]}"
        return None if built["segments"] else "no segment"

    def searcher(self, search_params: dict, client=None) -> SearchOne:
        client = client or self.client

        def search(query: np.ndarray):
            return client.search(
                COLLECTION,
                data=query.tolist(),
                limit=K,
                anns_field=VECTOR_FIELD,
                output_fields=["path"],
                search_params={"metric_type": "IP", "params": search_params},
            )

        return search

    def dedicated_searchers(self, search_params: dict) -> list[SearchOne]:
        from pymilvus import MilvusClient

        if not self.extra_clients:
            self.extra_clients = [MilvusClient(str(self.path), dedicated=True) for _ in range(CLIENTS)]
        return [self.searcher(search_params, client) for client in self.extra_clients]

    def ids(self, queries: np.ndarray, search_params: dict) -> np.ndarray:
        search = self.searcher(search_params)
        found = np.full((len(queries), K), -1, dtype=np.int64)
        for start in range(0, len(queries), RECALL_BATCH):
            for row, hits in enumerate(search(queries[start : start + RECALL_BATCH])):
                found[start + row, : len(hits)] = [hit["id"] for hit in hits]
        return found

    def latency_split(self, queries: np.ndarray, search_params: dict, calls: IndexCalls, seconds: float) -> dict:
        """Median ms of one single-query search via the client, on the engine directly (no client, no gRPC),
        and inside the index; the two calls alternate query by query, so other load hits both alike."""
        col = self.db.get_collection(COLLECTION)
        search = self.searcher(search_params)
        client, engine, index = [], [], []
        started = time.perf_counter()
        for i in range(min(LATENCY_QUERIES, len(queries))):
            if time.perf_counter() - started > seconds:
                break
            query = queries[i : i + 1]
            before, t0 = calls.seconds, time.perf_counter()
            search(query)
            t1, middle = time.perf_counter(), calls.seconds
            col.search(
                query_vectors=query.tolist(),
                top_k=K,
                metric_type="IP",
                anns_field=VECTOR_FIELD,
                output_fields=["path"],
                search_params=search_params,
            )
            t2 = time.perf_counter()
            client.append(t1 - t0)
            engine.append(t2 - t1)
            index += [middle - before, calls.seconds - middle]
        return {
            "client_ms": 1000 * statistics.median(client),
            "engine_ms": 1000 * statistics.median(engine),
            "index_ms": 1000 * statistics.median(index),
            "latency_queries": len(client),
        }

    def close(self) -> None:
        from milvus_lite.server_manager import server_manager_instance

        for client in [*self.extra_clients, self.client]:
            client.close()
        server_manager_instance.release_server(str(self.path))


def milvus_rows(
    vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray, nlist: int, nprobe: int, budget: Budget, root: Path
) -> tuple[list[dict], list[dict]]:
    """Rows for Milvus Lite FLAT / IVF_FLAT / IVF_PQ / HNSW, and one check record per configuration."""
    calls = IndexCalls()
    configurations = [
        ("FLAT", {}, "exact", [{}]),
        ("IVF_FLAT", {"nlist": nlist}, f"nlist {nlist}", [{"nprobe": nprobe}]),
        (
            "IVF_PQ",
            {"nlist": nlist, "m": vectors.shape[1], "nbits": 8},
            f"nlist {nlist}, m {vectors.shape[1]} x 8 bit",
            [{"nprobe": nprobe}],
        ),
        (
            "HNSW",
            {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
            f"M {HNSW_M}, efC {HNSW_EF_CONSTRUCTION}",
            [{"ef": ef} for ef in EF_SEARCHES],
        ),
    ]
    rows, checks = [], []
    for index_type, build_params, built_text, settings in configurations:
        log_progress(f"Milvus Lite {index_type}: inserting and building")
        collection = MilvusCollection(root, index_type, build_params)
        try:
            built = collection.build(vectors)
            problem = collection.verified(built)
            check = {"index": index_type, **built, "problem": problem, "searches": []}
            checks.append(check)
            base = {
                "system": "Milvus Lite",
                "index": index_type,
                "built": built_text,
                "build_s": built["build_s"],
                "bytes_per_vector": built["bytes"] / len(vectors),
            }
            if problem is not None:
                rows.append({**base, "search": "—", "note": built["error"] or problem})
                log_progress(f"Milvus Lite {index_type}: not measured ({problem})")
                continue
            for params in settings:
                text = ", ".join(f"{k} {v}" for k, v in params.items()) or "—"
                log_progress(f"Milvus Lite {index_type} {text}: measuring")
                calls.reset()
                found = collection.ids(queries, params)
                measured = both_client_counts(
                    collection.searcher(params), [collection.searcher(params)] * CLIENTS, queries, budget
                )
                if index_type == "HNSW" and params.get("ef") == 64:
                    with OpenMP.using(1):
                        measured["qps_n_dedicated"] = best_throughput(
                            collection.dedicated_searchers(params), queries, budget
                        )["qps"]
                requests, seen, masked = calls.calls.copy(), sorted(calls.params), calls.masked
                split = collection.latency_split(queries, params, calls, min(budget.seconds, 3.0))
                check["searches"].append(
                    {"params": params, "index_calls": dict(requests), "params_seen": seen, "masked_calls": masked}
                )
                row = {
                    **base,
                    "search": text,
                    "recall": recall_against_exact(found, exact),
                    **measured,
                    **split,
                    "index_calls": dict(requests),
                }
                if "ef" in params:
                    row["ef"] = params["ef"]
                wrong = {name: n for name, n in requests.items() if name != MILVUS_CLASSES[index_type]}
                if wrong:
                    row["note"] = f"searches reached {wrong} (not only {MILVUS_CLASSES[index_type]})"
                rows.append(row)
        finally:
            collection.close()
            shutil.rmtree(collection.path, ignore_errors=True)
    return rows, checks


# ---------------------------------------------------------------------------------------------- report


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def print_report(rows: list[dict], checks: list[dict], args, loads: dict) -> None:
    flat = next(r for r in rows if r["system"] == "FAISS" and r["index"] == "flat")
    print(
        f"\nvector search: {args.count:,} x {args.dim} generated gallery (decay {args.decay}, seed 0), "
        f"{args.queries:,} held-out queries, top {K}; each qps measurement: at most {args.searches:,} single-query "
        f"searches or {args.seconds:g} s, best of {REPEATS} runs; FAISS OpenMP threads {args.threads} for builds "
        "and 1 client, "
        f"1 at {CLIENTS} clients (threads); 16 Milvus clients share one MilvusClient\n"
    )
    header = [
        "system",
        "index",
        "built",
        "search",
        "build s",
        "bytes / vector",
        "qps 1 client",
        "vs FAISS flat",
        f"qps {CLIENTS} clients",
        "vs FAISS flat",
        "10-recall@10",
    ]
    table = []
    for r in rows:
        if "qps_1" not in r:
            table.append(
                [
                    r["system"],
                    r["index"],
                    r["built"],
                    r["search"],
                    "—",
                    "—",
                    f"not implemented in Milvus Lite {milvus_version()}"
                    if "reserved for a future phase" in (r.get("note") or "")
                    else f"not measured: {r.get('note')}",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        table.append(
            [
                r["system"],
                r["index"],
                r["built"],
                r["search"],
                f"{r['build_s']:.1f}",
                f"{r['bytes_per_vector']:.0f}",
                f"{r['qps_1']:,.0f}",
                ratio(r["qps_1"], flat["qps_1"]),
                f"{r['qps_n']:,.0f}",
                ratio(r["qps_n"], flat["qps_n"]),
                f"{r['recall']:.3f}",
            ]
        )
    print(markdown_table(header, table))

    dedicated = [r for r in rows if "qps_n_dedicated" in r]
    for r in dedicated:
        print(
            f"\nMilvus Lite {r['index']} {r['search']}, {CLIENTS} threads each with its own MilvusClient "
            f"(dedicated=True channel): {r['qps_n_dedicated']:,.0f} queries/s (shared client: {r['qps_n']:,.0f})"
        )

    print(
        "\nwhere a Milvus Lite query's time goes (1 client, median ms of a single-query search; the call via "
        "MilvusClient and the direct engine call alternate query by query)\n"
    )
    split_rows = []
    for r in rows:
        if r["system"] == "Milvus Lite" and "client_ms" in r:
            split_rows.append(
                [
                    r["index"],
                    r["search"],
                    f"{r['client_ms']:.2f}",
                    f"{r['engine_ms']:.2f}",
                    f"{r['index_ms']:.3f}",
                    f"{r['engine_ms'] - r['index_ms']:.2f}",
                    f"{r['client_ms'] - r['engine_ms']:.2f}",
                ]
            )
    print(
        markdown_table(
            [
                "index",
                "search",
                "via MilvusClient",
                "engine called directly",
                "of which the FAISS/NumPy index",
                "engine, rest (Python)",
                "client + gRPC + protobuf",
            ],
            split_rows,
        )
    )
    faiss_ms = {(r["index"], r["search"]): 1000 / r["qps_1"] for r in rows if r["system"] == "FAISS"}
    print(
        "\n(FAISS called directly, 1 client: "
        + ", ".join(
            f"{name} {search if search != '—' else ''} {ms:.3f} ms".replace("  ", " ")
            for (name, search), ms in faiss_ms.items()
        )
        + ")"
    )

    print("\nchecks: each Milvus Lite index was built and used\n")
    for check in checks:
        segs = "; ".join(
            ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in s.items())
            for s in check["segments"]
        )
        described = check["describe_index"] or {}
        line = (
            f"- {check['index']}: insert {check['insert_s']:.1f} s + flush {check['flush_s']:.1f} s + "
            f"create_index/load "
            f"{check['index_s']:.1f} s; segments: {segs}; describe_index: state {described.get('state')}, params "
            f"{described.get('params')}, indexed_rows {described.get('indexed_rows')}; on disk "
            f"{check['bytes'] / 1e6:.1f} MB (data parquet {check['data_file_bytes'] / 1e6:.1f} MB, index sidecar "
            f"{check['index_file_bytes'] / 1e6:.1f} MB)"
        )
        if check["problem"]:
            line += f"; NOT MEASURED: {check['problem']}"
            if check["error"]:
                line += f" (create_index raised: {check['error']})"
        for search in check["searches"]:
            line += f"; searches {search['params'] or '{}'} reached {search['index_calls']}"
        print(line)

    print(f"\nscale: bytes per vector measured here, for {SCALE_COUNT / 1e6:.0f}M images at {args.dim}-d\n")
    seen, scale_rows = set(), []
    for r in rows:
        key = (r["system"], r["index"])
        if key in seen:
            continue
        seen.add(key)
        where = "RAM (serialized index)" if r["system"] == "FAISS" else "disk (.db folder; RAM: segment + index)"
        if "qps_1" not in r:
            scale_rows.append([r["system"], r["index"], "—", "—", "no index built (see the checks)"])
            continue
        scale_rows.append(
            [
                r["system"],
                r["index"],
                f"{r['bytes_per_vector']:.0f}",
                f"{r['bytes_per_vector'] * SCALE_COUNT / 1e9:,.1f} GB",
                where,
            ]
        )
    print(
        markdown_table(["system", "index", "bytes / vector", f"{SCALE_COUNT / 1e6:.0f}M vectors", "what"], scale_rows)
    )
    print(f"(raw float32 vectors alone: {4 * args.dim} B each, {4 * args.dim * SCALE_COUNT / 1e9:.1f} GB)")

    print("\n" + "\n".join(verdicts(rows)))
    print(
        f"\nload average (1 min) at start {loads['start']:.2f}, at end {loads['end']:.2f} on {os.cpu_count()} cores"
        + (" — above 2: timings may be inflated by other work" if max(loads.values()) > 2 else "")
    )


def milvus_version() -> str:
    import milvus_lite

    return milvus_lite.__version__


def label(row: dict) -> str:
    return row["index"] if row["search"] == "—" else f"{row['index']} {row['search']}"


def slower(milvus_qps: float, faiss_qps: float) -> str:
    if milvus_qps <= faiss_qps:
        return (
            f"{faiss_qps / milvus_qps:.0f}x slower"
            if faiss_qps >= 1.5 * milvus_qps
            else (f"{faiss_qps / milvus_qps:.2f}x slower")
        )
    return f"{milvus_qps / faiss_qps:.2f}x faster"


def verdicts(rows: list[dict]) -> list[str]:
    lines = []
    faiss_by = {(r["index"], r["search"]): r for r in rows if r["system"] == "FAISS"}
    counterpart = {"FLAT": "flat", "IVF_FLAT": "IVF", "IVF_PQ": "IVF-PQ", "HNSW": "HNSW"}
    for r in rows:
        if r["system"] != "Milvus Lite":
            continue
        other = faiss_by.get((counterpart[r["index"]], r["search"]))
        if "qps_1" not in r:
            other = next((f for (name, _), f in faiss_by.items() if name == counterpart[r["index"]]), None)
            lines.append(
                f"Milvus Lite {r['index']}: no numbers — "
                + (
                    "not implemented in Milvus Lite " + milvus_version()
                    if "future phase" in (r.get("note") or "")
                    else str(r.get("note"))
                )
                + (
                    f" (FAISS IVF-PQ: {other['bytes_per_vector']:.0f} bytes per vector, recall {other['recall']:.3f})"
                    if other is not None
                    else ""
                )
            )
            continue
        if other is None:
            continue
        lines.append(
            f"Milvus Lite {label(r)} vs FAISS {label(other)}: "
            f"{slower(r['qps_1'], other['qps_1'])} at 1 client ({r['qps_1']:,.0f} vs {other['qps_1']:,.0f} qps), "
            f"{slower(r['qps_n'], other['qps_n'])} at {CLIENTS} clients ({r['qps_n']:,.0f} vs "
            f"{other['qps_n']:,.0f}); build {r['build_s']:.1f} vs {other['build_s']:.1f} s"
            + (f" ({r['build_s'] / other['build_s']:.1f}x)" if other["build_s"] >= 0.1 else "")
            + "; "
            f"{r['bytes_per_vector'] / other['bytes_per_vector']:.1f}x "
            f"the bytes per vector; recall {r['recall']:.3f} vs {other['recall']:.3f}"
        )
    for system in ("FAISS", "Milvus Lite"):
        hnsw = [r for r in rows if r["system"] == system and r["index"] == "HNSW" and "recall" in r]
        meeting = [r for r in hnsw if r["recall"] >= TARGET_RECALL]
        if hnsw:
            lines.append(
                f"{system} HNSW (M {HNSW_M}, efC {HNSW_EF_CONSTRUCTION}): "
                + (
                    f"efSearch {meeting[0]['ef']} is the smallest reaching >= {TARGET_RECALL} of exact's top 10 "
                    f"({meeting[0]['recall']:.3f} at {meeting[0]['qps_1']:,.0f} qps)"
                    if meeting
                    else f"no efSearch in {EF_SEARCHES} reaches {TARGET_RECALL} "
                    f"(best {max(r['recall'] for r in hnsw):.3f})"
                )
            )
    split = [r for r in rows if r["system"] == "Milvus Lite" and "client_ms" in r]
    if split:
        worst = max(split, key=lambda r: r["client_ms"])
        best = min(split, key=lambda r: r["client_ms"])
        lines.append(
            "why Milvus Lite is slower: of its "
            f"{best['client_ms']:.1f}-{worst['client_ms']:.1f} ms per query, the index itself takes "
            f"{min(r['index_ms'] for r in split):.2f}-{max(r['index_ms'] for r in split):.2f} ms; the rest is its "
            "pure-Python engine (per query it walks every row of every segment to build newest-version and "
            "tombstone masks, then merges in Python: grows with N) and the in-process gRPC/protobuf round trip, all "
            f"under this process's GIL, so {CLIENTS} clients reach only "
            f"{min(r['qps_n'] / r['qps_1'] for r in split):.2f}-{max(r['qps_n'] / r['qps_1'] for r in split):.2f}x "
            "the 1-client queries/s (its server has 10 worker threads)"
        )
    lines.append(
        "why one would still move to Milvus (standalone/cluster; not measured here): sharding over query nodes, "
        "replicas, scalar filtering on fields such as label in the same query, many concurrent writers and deletes, "
        "durability and one server for many processes — see the module docstring"
    )
    return lines


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = benchmark_parser(
        __doc__.splitlines()[0],
        json_out="the raw numbers (rows, Milvus Lite build checks, load averages)",
        quick="20k gallery, 200 queries, 1.5 s or 5000 searches per measurement",
    )
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1_000, help="held-out queries (default 1000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time bound of each qps measurement (default 5)")
    parser.add_argument(
        "--searches", type=int, default=20_000, help="count bound of each qps measurement (default 20000)"
    )
    parser.add_argument("--decay", type=float, default=1.0, help="spectrum decay of the clusters' spread")
    parser.add_argument(
        "--threads", type=int, default=1, help="FAISS OpenMP threads: builds and 1-client searches (default 1)"
    )
    args = parser.parse_args()
    if args.quick:
        args.count, args.queries = min(args.count, 20_000), min(args.queries, 200)
        args.seconds, args.searches = min(args.seconds, 1.5), min(args.searches, 5_000)
    logging.basicConfig(level=logging.WARNING)
    # pymilvus asks for AllocTimestamp, which Milvus Lite does not implement (pymilvus ignores the answer)
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    OpenMP.threads = args.threads
    OpenMP.apply()
    loads = {"start": os.getloadavg()[0]}
    started = time.perf_counter()
    vectors, queries = clustered_gallery(args.count, args.dim, queries=args.queries, decay=args.decay, seed=0)
    budget = Budget(args.seconds, args.searches)
    rows, exact = faiss_rows(vectors, queries, budget)
    ivf = resolve_params(IndexParams("ivf"), args.count, args.dim)
    assert ivf.nlist == default_nlist(args.count)
    with tempfile.TemporaryDirectory(prefix="vector_db_") as tmp:
        milvus, checks = milvus_rows(vectors, queries, exact, ivf.nlist, ivf.nprobe, budget, Path(tmp))
    rows += milvus
    loads["end"] = os.getloadavg()[0]
    print_report(rows, checks, args, loads)
    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s.")
    if args.json:
        import pymilvus

        write_json_file(
            args.json,
            "vector_db",
            {
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "versions": {
                    "faiss": faiss.__version__,
                    "pymilvus": pymilvus.__version__,
                    "milvus_lite": milvus_version(),
                },
                "rows": rows,
                "milvus_checks": checks,
                "load_average": loads,
            },
        )


if __name__ == "__main__":
    main()
