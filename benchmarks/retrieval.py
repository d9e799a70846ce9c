"""Retrieval with an exported model: embedding throughput per runtime, and FAISS index types on a large gallery.

Part 1, embedding: a tiny 64-d model trained for one epoch on digits and exported to ONNX, run by every
runtime present (PyTorch, onnxruntime, TensorRT when installed) on preprocessed batches (model only) and
through ``embed_samples`` on the digits images (decode + preprocess + model: what ``edgedml index`` does).

Part 2, search: a generated gallery (``edgedml.retrieval.synthetic.clustered_gallery``: a mixture of
clusters on the unit sphere whose spread has a decaying spectrum; ``--decay 0`` for isotropic noise, the
hardest case) of N x 64 vectors and held-out queries, indexed flat (exact), IVF and IVF-PQ (8-bit codes,
dim / 4 and dim / 2 bytes): build time, bytes per vector (serialized index / N), queries/s (all queries in
one call, the same thread count for every index), and 10-recall@10 against exact search (the fraction of
the exact top 10 found), over a sweep of nprobe. The target: IVF-PQ finds >= 0.9 of exact's top 10 at
>= 10x exact's queries/s.

Run: ``python benchmarks/retrieval.py`` (100k x 64, about 2 minutes on 2 cores), ``--quick`` (20k, seconds).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from benchmark_tools import benchmark_parser

from edgedml.retrieval.faiss_store import set_nprobe, train_index
from edgedml.retrieval.store import IndexParams, default_nlist, resolve_params
from edgedml.retrieval.synthetic import clustered_gallery, recall_against_exact

NPROBES = (1, 2, 4, 8, 16, 32, 64)
TARGET_RECALL, TARGET_SPEEDUP = 0.9, 10.0


def tiny_exported_model(root: Path, dim: int) -> tuple[Path, Path]:
    from edgedml.config import TrainConfig
    from edgedml.export.onnx import export_onnx
    from edgedml.training import Trainer

    run = root / "run"
    options = dict(
        data="digits",
        backbone="tiny",
        dim=dim,
        input_size=32,
        batch_size=60,
        samples_per_class=12,
        epochs=1,
        device="cpu",
    )
    Trainer(TrainConfig.from_sources(overrides=options), run).fit()
    return run, export_onnx(run, evaluate=False).files["fp32"].path


def embedding_throughput(threads: int, dim: int, batch: int, repeats: int) -> list[dict]:
    import torch

    from edgedml.data import load_source
    from edgedml.export.runtime import OnnxRuntimeEmbedder, TorchEmbedder, embed_samples

    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run, onnx_path = tiny_exported_model(Path(tmp), dim)
        embedders = [
            TorchEmbedder(run, device="cpu"),
            OnnxRuntimeEmbedder(onnx_path, ["CPUExecutionProvider"], threads),
        ]
        try:
            from edgedml.export.engine import export_engine
            from edgedml.export.load import load_embedder

            embedders.append(load_embedder(export_engine(run, Path(tmp) / "model.engine").path))
        except Exception as exc:  # no TensorRT or no GPU here: say so in the table
            rows.append(
                {"runtime": "tensorrt", "note": f"not run ({type(exc).__name__}: {str(exc).splitlines()[0][:60]})"}
            )
        samples = load_source("digits").samples
        for embedder in embedders:
            images = (
                np.random.default_rng(0)
                .standard_normal((batch, 3, embedder.info.input_size, embedder.info.input_size))
                .astype(np.float32)
            )
            embedder.embed(images)  # warm-up
            started = time.perf_counter()
            for _ in range(repeats):
                embedder.embed(images)
            model_only = batch * repeats / (time.perf_counter() - started)
            started = time.perf_counter()
            embeddings, _ = embed_samples(embedder, samples, batch)
            end_to_end = len(embeddings) / (time.perf_counter() - started)
            rows.append({"runtime": embedder.runtime, "model_only": model_only, "end_to_end": end_to_end})
    return rows


def timed_search(index, queries: np.ndarray, k: int = 10, repeats: int = 3) -> tuple[np.ndarray, float]:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        _, ids = index.search(queries, k)
        best = min(best, time.perf_counter() - started)
    return ids, len(queries) / best


def index_sweep(count: int, dim: int, queries: int, decay: float, threads: int) -> tuple[list[dict], float]:
    faiss.omp_set_num_threads(threads)
    vectors, query_vectors = clustered_gallery(count, dim, queries=queries, decay=decay, seed=0)
    variants = [
        ("flat", IndexParams("flat")),
        ("ivf", IndexParams("ivf")),
        (f"ivfpq m={dim // 4}", IndexParams("ivfpq", pq_m=dim // 4)),
        (f"ivfpq m={dim // 2}", IndexParams("ivfpq", pq_m=dim // 2)),
        (f"ivfpq m={dim}", IndexParams("ivfpq", pq_m=dim)),
    ]
    rows, exact, exact_qps = [], None, 0.0
    for name, requested in variants:
        params = resolve_params(requested, count, dim)
        started = time.perf_counter()
        index = train_index(params, vectors)
        build_s = time.perf_counter() - started
        bytes_per_vector = len(faiss.serialize_index(index)) / count
        for nprobe in (None,) if params.type == "flat" else tuple(p for p in NPROBES if p <= params.nlist):
            set_nprobe(index, nprobe)
            ids, qps = timed_search(index, query_vectors)
            if exact is None:
                exact, exact_qps = ids, qps
            rows.append(
                {
                    "index": name,
                    "nlist": params.nlist,
                    "nprobe": nprobe,
                    "build_s": build_s,
                    "bytes_per_vector": bytes_per_vector,
                    "qps": qps,
                    "speedup": qps / exact_qps,
                    "recall": recall_against_exact(ids, exact),
                }
            )
    return rows, exact_qps


def print_tables(embedding: list[dict], search_rows: list[dict], args) -> None:
    print(
        f"\nembedding throughput (images/s, tiny 64-d model at 32 x 32, batch {args.batch}, {args.threads} thread(s))\n"
    )
    print("| runtime | model only | end to end (decode + preprocess + model) |")
    print("|---|---:|---:|")
    for row in embedding:
        if "note" in row:
            print(f"| {row['runtime']} | {row['note']} | |")
        else:
            print(f"| {row['runtime']} | {row['model_only']:,.0f} | {row['end_to_end']:,.0f} |")
    print(
        f"\nsearch: {args.count:,} x {args.dim} generated gallery (decay {args.decay}), "
        f"{args.queries:,} held-out queries, "
        f"top 10, {args.threads} thread(s); nlist default {default_nlist(args.count)}\n"
    )
    print("| index | nprobe | build s | bytes / vector | queries/s | speed-up vs exact | 10-recall@10 vs exact |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in search_rows:
        nprobe = "—" if row["nprobe"] is None else str(row["nprobe"])
        print(
            f"| {row['index']} | {nprobe} | {row['build_s']:.2f} | {row['bytes_per_vector']:.1f} | {row['qps']:,.0f} | "
            f"{row['speedup']:.1f}x | {row['recall']:.3f} |"
        )


def verdict(search_rows: list[dict]) -> str:
    pq = [row for row in search_rows if row["index"].startswith("ivfpq")]
    meeting = [row for row in pq if row["recall"] >= TARGET_RECALL]
    if not meeting:
        best = max(pq, key=lambda row: row["recall"])
        return (
            f"MISSED: no IVF-PQ setting finds {TARGET_RECALL} of exact's top 10 (best {best['recall']:.3f}, "
            f"{best['index']} nprobe {best['nprobe']}, {best['speedup']:.1f}x)"
        )
    best = max(meeting, key=lambda row: row["qps"])
    met = best["speedup"] >= TARGET_SPEEDUP
    return (
        f"{'MET' if met else 'MISSED'}: {best['index']} nprobe {best['nprobe']} finds {best['recall']:.3f} of exact's "
        f"top 10 at {best['speedup']:.1f}x exact's queries/s "
        f"({best['qps']:,.0f} vs {best['qps'] / best['speedup']:,.0f}), "
        f"{best['bytes_per_vector']:.1f} bytes per vector (target >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:.0f}x)"
    )


def main() -> None:
    parser = benchmark_parser(
        __doc__.splitlines()[0],
        threads="every runtime and index",
        threads_default=1,
        quick="20k gallery, 500 queries, fewer repeats",
    )
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument(
        "--decay", type=float, default=1.0, help="spectrum decay of the clusters' spread (0: isotropic)"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--skip-embedding", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.count, args.queries = min(args.count, 20_000), min(args.queries, 500)
    logging.basicConfig(level=logging.WARNING)
    embedding = (
        [] if args.skip_embedding else embedding_throughput(args.threads, 64, args.batch, 5 if args.quick else 20)
    )
    search_rows, _ = index_sweep(args.count, args.dim, args.queries, args.decay, args.threads)
    print_tables(embedding, search_rows, args)
    print("\n" + verdict(search_rows))


if __name__ == "__main__":
    main()
