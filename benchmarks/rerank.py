"""Re-ranking (``edgedml.retrieval.rerank``): what αQE, DBA + αQE and k-reciprocal re-ranking gain in test
Recall@1 / MAP@R on unseen classes, and what they add to a query's time.

What it runs, per data set (``--datasets``, default ``glyphs digits``): one model trained through the library
(``TrainConfig.from_sources`` + ``Trainer.fit``; glyphs: the library defaults, 142 unseen test classes of about
50 images; digits: the quick start's settings, 5 unseen digits of about 180 images), a few epochs on the CPU. Its
test split is embedded (``edgedml.retrieval.evaluate.embed_split``, as ``edgedml eval`` does) and put in an exact
FAISS index (``flat``), then every item queries all the others (leave-one-out) under each re-ranking setting:

- ``none``: the plain search, the baseline;
- ``αQE n, α``: the query plus its top n hits weighted by score^α, searched again, for n 1 2 3 5 10 at α 3 and
  n 2 5 at α 1;
- ``DBA+αQE n``: each of the top 100 candidates augmented with its n nearest gallery rows, then αQE with the same
  n over the augmented vectors, n 1 2 3 5, α 3;
- ``k-reciprocal K``: Zhong et al.'s re-ranking of the top K candidates (k1 20, k2 6, λ 0.3), K 50 100 200.

The metrics are those of ``edgedml eval --rerank`` (``leave_one_out_neighbours``: the first K re-ranked, where
MAP@R needs more the rest in the plain order; Recall@1 and MAP@R from ``metrics_from_neighbours``). The time is
that of serving: a seeded sample of queries (``--timed``, default 200) searched one at a time on one FAISS
thread, the plain search (the hits a re-ranking needs) and the re-ranking step alone timed apart in the same run;
"added ms / query" is the re-ranking step's median, "× plain" its ratio to the plain search's median. Rows
marked "(default)" are ``Rerank.parse("qe")`` and ``Rerank.parse("kreciprocal")``: what ``--rerank qe`` /
``kreciprocal`` run. A verdict per data set: a setting "pays" when it gains at least 0.5 points of MAP@R without
losing more than 0.5 points of Recall@1; named are the best of those, the cheapest, and the largest MAP@R gain of
all when it costs Recall@1. One model per data set: the differences are paired (same embeddings, same queries) and
carry no seed noise, only the queries' sampling.

Run (from the repository root; about 6.5 minutes on 2 CPU cores, under a load of 3 from other work):

    python benchmarks/rerank.py                       # glyphs 3 epochs, digits 6 epochs
    python benchmarks/rerank.py --datasets digits --json rerank.json
    python benchmarks/rerank.py --quick               # smoke run: 1 epoch, 400 test items, 20 timed queries
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from benchmark_tools import (
    benchmark_parser,
    log_progress,
    markdown_table,
    positive_int,
    total_time_line,
    write_json_file,
)

from edgedml.cli.quickstart import QUICKSTART
from edgedml.config import TrainConfig
from edgedml.metrics import RECALL_KS, metrics_from_neighbours, neighbour_depth
from edgedml.retrieval.evaluate import embed_split
from edgedml.retrieval.rerank import Rerank, flat_index, leave_one_out_neighbours, rerank, search_excluding
from edgedml.training import Trainer

PAYS_MAP, PAYS_RECALL_LOSS = 0.5, 0.5  # points: the gain in MAP@R a setting must bring, the Recall@1 it may lose
DATASETS = {
    "glyphs": ({"data": "glyphs"}, 3),
    "digits": ({key: value for key, value in QUICKSTART.items() if key != "epochs"}, 6),
}


@dataclass(frozen=True)
class Setting:
    label: str
    rerank: Rerank


def settings() -> list[Setting]:
    qe, kreciprocal = Rerank.parse("qe"), Rerank.parse("kreciprocal")
    rows = [Setting("none", Rerank())]
    for n, alpha in [(1, 3.0), (2, 3.0), (3, 3.0), (5, 3.0), (10, 3.0), (2, 1.0), (5, 1.0)]:
        rows.append(Setting(f"αQE n={n}, α={alpha:g}", Rerank("qe", qe_n=n, qe_alpha=alpha)))
    for n in (1, 2, 3, 5):
        rows.append(Setting(f"DBA+αQE n={n}, α=3", Rerank("qe", qe_n=n, dba_n=n, qe_alpha=3.0)))
    for candidates in (50, 100, 200):
        rows.append(Setting(f"k-reciprocal K={candidates}", Rerank("kreciprocal", candidates=candidates)))
    return [Setting(f"{s.label} (default)" if s.rerank in (qe, kreciprocal) else s.label, s.rerank) for s in rows]


@dataclass
class Row:
    label: str
    recall_at_1: float
    map_at_r: float
    r_precision: float
    metrics_seconds: float  # all queries at once (the eval path)
    added_ms: float  # per query, one query at a time (the serving path)
    plain_ms: float


def train(dataset: str, epochs: int, root: Path) -> Path:
    overrides, _ = DATASETS[dataset]
    config = TrainConfig.from_sources(overrides={**overrides, "epochs": epochs, "device": "cpu"})
    out = root / dataset
    summary = Trainer(config, out).fit()
    log_progress(f"{dataset}: trained {epochs} epoch(s), test R@1 {summary['recall_at_1']:.4f}")
    return out


def timed_queries(embeddings: np.ndarray, setting: Rerank, sample: np.ndarray) -> tuple[float, float]:
    """Median ms per query of the plain search and of the re-ranking step, one query at a time (one untimed first)."""
    index = flat_index(embeddings)
    depth = min(setting.first_depth(max(RECALL_KS)), len(embeddings) - 1)
    plain, added = [], []
    for row in np.concatenate([sample[:1], sample]):
        query, rows = embeddings[row : row + 1], np.array([row])
        started = time.perf_counter()
        scores, ids = search_excluding(index, query, depth, rows)
        searched = time.perf_counter()
        rerank(index, query, scores, ids, setting, query_rows=rows)
        plain.append(searched - started)
        added.append(time.perf_counter() - searched)
    return 1000 * float(np.median(plain[1:])), 1000 * float(np.median(added[1:]))


def measure(embeddings: np.ndarray, labels: torch.Tensor, setting: Setting, sample: np.ndarray) -> Row:
    started = time.perf_counter()
    neighbours = leave_one_out_neighbours(embeddings, neighbour_depth(labels, RECALL_KS), setting.rerank)
    seconds = time.perf_counter() - started
    recall, map_at_r, r_precision = metrics_from_neighbours(torch.from_numpy(neighbours), labels)
    plain_ms, added_ms = timed_queries(embeddings, setting.rerank, sample)
    return Row(setting.label, recall[1], map_at_r, r_precision, seconds, added_ms, plain_ms)


def evaluate(dataset: str, run: Path, limit: int | None, timed: int, seed: int) -> tuple[list[Row], int, int]:
    embedded = embed_split(run, split="test", device="cpu")
    embeddings, labels = embedded.embeddings, embedded.labels
    if limit is not None and limit < len(embeddings):
        keep = np.sort(np.random.default_rng(seed).choice(len(embeddings), limit, replace=False))
        embeddings, labels = embeddings[keep], labels[torch.from_numpy(keep)]
    sample = np.random.default_rng(seed).choice(len(embeddings), min(timed, len(embeddings)), replace=False)
    rows = []
    for setting in settings():
        rows.append(measure(embeddings, labels, setting, sample))
        row = rows[-1]
        log_progress(
            f"{dataset} {row.label}: R@1 {row.recall_at_1:.4f} MAP@R {row.map_at_r:.4f}, "
            f"+{row.added_ms:.2f} ms/query, all queries {row.metrics_seconds:.1f} s"
        )
    return rows, len(embeddings), len(torch.unique(labels))


def table(rows: list[Row]) -> str:
    base = rows[0]
    header = [
        "re-ranking",
        "R@1 (%)",
        "Δ R@1",
        "MAP@R (%)",
        "Δ MAP@R",
        "R-precision (%)",
        "plain search ms / query",
        "added ms / query (× plain)",
    ]
    lines = [
        [
            row.label,
            f"{100 * row.recall_at_1:.2f}",
            "—" if row is base else f"{100 * (row.recall_at_1 - base.recall_at_1):+.2f}",
            f"{100 * row.map_at_r:.2f}",
            "—" if row is base else f"{100 * (row.map_at_r - base.map_at_r):+.2f}",
            f"{100 * row.r_precision:.2f}",
            f"{row.plain_ms:.3f}",
            "—" if row is base else f"+{row.added_ms:.2f} (×{row.added_ms / row.plain_ms:.0f})",
        ]
        for row in rows
    ]
    return markdown_table(header, lines)


def verdict(dataset: str, rows: list[Row]) -> str:
    base = rows[0]

    def gains(row: Row) -> tuple[float, float]:
        return 100 * (row.recall_at_1 - base.recall_at_1), 100 * (row.map_at_r - base.map_at_r)

    def said(row: Row) -> str:
        recall, map_at_r = gains(row)
        return f"{row.label} (MAP@R {map_at_r:+.2f}, R@1 {recall:+.2f} points, +{row.added_ms:.2f} ms/query)"

    paying = [r for r in rows[1:] if gains(r)[1] >= PAYS_MAP and gains(r)[0] >= -PAYS_RECALL_LOSS]
    largest = max(rows[1:], key=lambda r: gains(r)[1])
    if not paying:
        return f"Verdict on {dataset}: re-ranking does not pay here; the largest MAP@R gain is {said(largest)}."
    best = max(paying, key=lambda r: gains(r)[1])
    cheapest = min(paying, key=lambda r: r.added_ms)
    cheap_text = "" if cheapest is best else f"; the cheapest that pays: {said(cheapest)}"
    largest_text = "" if largest is best else f"; the largest MAP@R gain of all, at a Recall@1 cost: {said(largest)}"
    return (
        f"Verdict on {dataset}: re-ranking pays (MAP@R +{PAYS_MAP} points or more, Recall@1 down "
        f"{PAYS_RECALL_LOSS} at most) in {len(paying)} of {len(rows) - 1} settings; the best of them: "
        f"{said(best)}{cheap_text}{largest_text}."
    )


def main() -> None:
    parser = benchmark_parser(
        __doc__.splitlines()[0],
        datasets=list(DATASETS),
        epochs="glyphs 3, digits 6",
        threads="PyTorch's training (FAISS runs on one thread: a serving process's query)",
        threads_default=2,
        json_out="every setting's numbers",
        quick="1 epoch, 400 test items per data set, 20 timed queries",
    )
    parser.add_argument("--timed", type=positive_int, default=200, help="queries timed one at a time (default 200)")
    args = parser.parse_args()
    limit = None
    if args.quick:
        args.epochs, limit, args.timed = 1, 400, 20
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="edgedml-rerank-") as tmp:
        for dataset in args.datasets:
            epochs = args.epochs or DATASETS[dataset][1]
            run = train(dataset, epochs, Path(tmp))
            rows, count, classes = evaluate(dataset, run, limit, args.timed, seed=0)
            results[dataset] = {"epochs": epochs, "items": count, "classes": classes, "rows": rows}
    total = time.perf_counter() - started
    if args.json:
        payload = {d: {**r, "rows": [asdict(row) for row in r["rows"]]} for d, r in results.items()}
        write_json_file(args.json, "rerank", {"datasets": payload, "total_seconds": total})
    for dataset, result in results.items():
        print(
            f"\n## {dataset}: {result['epochs']} epoch(s), test split {result['items']} items of {result['classes']} "
            f"unseen classes, leave-one-out on a flat index; {min(args.timed, result['items'])} queries timed one "
            f"at a time, FAISS on 1 thread\n"
        )
        print(table(result["rows"]))
        print(f"\n{verdict(dataset, result['rows'])}")
    print(total_time_line(total))


if __name__ == "__main__":
    main()
