"""Serving under load: `edgedml serve` over HTTP against the per-call wall time of `edgedml search`, with 1 and 16
concurrent clients, micro-batching off and on.

Set-up (about a minute on 2 cores): a tiny 64-d model trained for one epoch on digits and exported to fp32 ONNX
(``retrieval.tiny_exported_model``, the retrieval benchmark's), an index of the digits test split (the classes
the model never saw), and ``--queries`` query images: seeded gallery rows written as PNG files, so that the CLI
and the server get the same bytes. ``--index DIR`` takes an existing index (its model as index.json names it)
instead.

Measured, all in one run:

- the baseline: ``edgedml search INDEX QUERY.png --top-k 10 --json`` as a subprocess, ``--cli-calls`` calls on
  different queries: the median wall time per call (start-up, model load and search: what a script calling the
  CLI per image pays);
- the server: ``edgedml serve INDEX --port 0 --batch-window-ms W`` as its own process (a real uvicorn on
  loopback, access log on), one per ``--windows`` W, all started up front and warmed up with 20 requests;
  ``--clients`` concurrent clients (httpx, asyncio, one process) each POST one query image per request to
  ``/search`` (top 10) in a loop for ``--seconds`` s per setting or until ``--max-requests`` requests: p50 /
  p99 latency per request, requests/s, errors (a status other than 200, a malformed answer, a transport
  error), and from ``/info`` the model calls the server made (images per model call: what micro-batching
  collected). Each setting's time is cut into ``--rounds`` slices and the windows' servers take turns, so
  that drift of the machine (other processes) falls on every window alike. The clients share the machine's
  cores with the server, as they would on a device serving a local application.

Verdicts (MET / MISSED): the server's p50 with 1 client at most 1/20 of the CLI's per-call wall time (with the
default window); for each window, 16 clients' requests/s above 1 client's; 0 errors. Then whether
micro-batching pays: requests/s at 16 clients with each window against window 0 (pays at >= 1.05x).

Run (from the repository root; the full setting takes about 3 minutes, best with nothing else running):

    python benchmarks/serve_load.py                           # 30 s per setting, windows 0 and 3 ms
    python benchmarks/serve_load.py --seconds 3 --cli-calls 3   # smoke run
    python benchmarks/serve_load.py --index path/to/index --json serve-load.json
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from benchmark_tools import benchmark_parser, log_progress, markdown_table, positive_int, write_json_file

TARGET_CLI_RATIO = 20.0  # the server's p50 for one query at most 1/20 of the CLI's wall time per call
BATCHING_PAYS = 1.05  # requests/s ratio at which micro-batching counts as paying
WARMUP_REQUESTS = 20
START_SECONDS = 120
COMMAND = [sys.executable, "-m", "edgedml.cli.main"]


@dataclass
class LoadResult:
    window_ms: float
    clients: int
    requests: int
    seconds: float
    errors: int
    wrong_labels: int  # top hit's label differs from the query row's (a sanity check, not an error)
    p50_ms: float
    p99_ms: float
    model_calls: int
    images_embedded: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def images_per_call(self) -> float:
        return self.images_embedded / self.model_calls if self.model_calls else 0.0


@dataclass(frozen=True)
class Query:
    path: Path
    data: bytes
    label: str


# ---- set-up -------------------------------------------------------------------------------
def build_index_dir(root: Path) -> Path:
    from retrieval import tiny_exported_model

    from edgedml.retrieval import build_index

    _, model = tiny_exported_model(root, dim=64)
    build_index(model, "digits", root / "index", split="test")
    return root / "index"


def write_queries(index_dir: Path, count: int, folder: Path) -> list[Query]:
    """``count`` seeded gallery rows as PNG files (the same bytes for the CLI and the server)."""
    from edgedml.retrieval import open_index

    index = open_index(index_dir)
    rows = np.random.default_rng(0).choice(index.count, size=min(count, index.count), replace=False)
    folder.mkdir(parents=True, exist_ok=True)
    queries = []
    for row in rows.tolist():
        path = folder / f"query-{row}.png"
        index.image(row).save(path)
        queries.append(Query(path, path.read_bytes(), index.manifest.labels[row]))
    return queries


# ---- the CLI baseline ---------------------------------------------------------------------
def cli_wall_times(index_dir: Path, queries: list[Query], calls: int) -> list[float]:
    times = []
    for query in queries[:calls]:
        started = time.perf_counter()
        done = subprocess.run(
            [*COMMAND, "search", str(index_dir), str(query.path), "--top-k", "10", "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"edgedml search failed:\n{done.stdout}{done.stderr}")
        log_progress(f"  edgedml search call {len(times)}/{calls}: {times[-1]:.2f} s")
    return times


# ---- the server ---------------------------------------------------------------------------
class Server:
    """``edgedml serve`` as a subprocess on a free loopback port."""

    def __init__(self, index_dir: Path, window_ms: float):
        command = [*COMMAND, "serve", str(index_dir), "--port", "0", "--batch-window-ms", str(window_ms)]
        env = {**os.environ, "COLUMNS": "1000", "NO_COLOR": "1"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.url = self._read_url()

    def _read_url(self) -> str:
        found: list[str] = []

        def reading() -> None:
            for line in self.process.stdout:
                if "POST /search" in line:  # access log lines: drop, keep the pipe flowing
                    continue
                self.lines.append(line)
                match = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
                if match:
                    found.append(match.group(1))

        threading.Thread(target=reading, daemon=True).start()
        deadline = time.monotonic() + START_SECONDS
        while not found and time.monotonic() < deadline and self.process.poll() is None:
            time.sleep(0.05)
        if not found:
            self.stop()
            raise SystemExit("edgedml serve did not start:\n" + "".join(self.lines))
        return found[0]

    def stats(self) -> dict[str, int]:
        return httpx.get(self.url + "info", timeout=30).json()["stats"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def drive(url: str, queries: list[Query], clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """``clients`` concurrent loops of one-image /search requests, for ``seconds`` or ``max_requests`` in all.

    Each client has its own ``httpx.AsyncClient`` (one keep-alive connection): one pool shared by 16 loops
    measured at half the requests/s of separate clients against ``/health`` on 2 cores (httpx's pool, not the
    server, was the limit).
    """
    latencies: list[float] = []
    counts = {"errors": 0, "wrong": 0, "issued": 0}
    deadline = time.perf_counter() + seconds

    async def one_client(offset: int) -> None:
        position = offset
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while time.perf_counter() < deadline and counts["issued"] < max_requests:
                counts["issued"] += 1
                query = queries[position % len(queries)]
                position += clients
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "search", files={"images": (query.path.name, query.data, "image/png")}, data={"top_k": "10"}
                    )
                    hits = response.json()["results"][0]["hits"] if response.status_code == 200 else None
                except (httpx.HTTPError, ValueError, KeyError, IndexError):
                    hits = None
                latencies.append(time.perf_counter() - started)
                if not hits:
                    counts["errors"] += 1
                elif hits[0]["label"] != query.label:
                    counts["wrong"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(one_client(offset) for offset in range(clients)))
    elapsed = time.perf_counter() - started
    return {"latencies": latencies, "seconds": elapsed, **counts}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] if ordered else float("nan")


def load_runs(index_dir: Path, queries: list[Query], args) -> list[LoadResult]:
    """Every (window, clients) setting, the windows' servers driven in turn in ``--rounds`` slices each, so that
    the machine's drift (other processes) falls on all of them alike."""
    servers = {}
    try:
        for window in args.windows:
            servers[window] = Server(index_dir, window)
            log_progress(f"  server with --batch-window-ms {window:g} at {servers[window].url}")
            asyncio.run(drive(servers[window].url, queries, 1, seconds=60, max_requests=WARMUP_REQUESTS))
        results = []
        for clients in args.clients:
            slices = {window: [] for window in args.windows}
            for _ in range(args.rounds):
                for window, server in servers.items():
                    before = server.stats()
                    run = asyncio.run(
                        drive(
                            server.url,
                            queries,
                            clients,
                            args.seconds / args.rounds,
                            max(1, args.max_requests // args.rounds),
                        )
                    )
                    slices[window].append((run, before, server.stats()))
            for window in args.windows:
                results.append(merged(window, clients, slices[window]))
                log_progress(
                    f"    window {window:g} ms, {clients} client(s): {results[-1].requests_per_s:,.0f} requests/s, "
                    f"p50 {results[-1].p50_ms:.1f} ms, p99 {results[-1].p99_ms:.1f} ms, {results[-1].errors} errors"
                )
    finally:
        for server in servers.values():
            server.stop()
    for server in servers.values():
        if server.process.returncode not in (0, None):
            raise SystemExit(f"edgedml serve exited with {server.process.returncode}:\n" + "".join(server.lines))
    return results


def merged(window: float, clients: int, slices: list[tuple[dict, dict, dict]]) -> LoadResult:
    """One setting's slices as one result: all latencies, the summed time, the server's model calls in between."""
    latencies = [latency for run, _, _ in slices for latency in run["latencies"]]
    return LoadResult(
        window_ms=window,
        clients=clients,
        requests=len(latencies),
        seconds=sum(run["seconds"] for run, _, _ in slices),
        errors=sum(run["errors"] for run, _, _ in slices),
        wrong_labels=sum(run["wrong"] for run, _, _ in slices),
        p50_ms=1000 * percentile(latencies, 0.50),
        p99_ms=1000 * percentile(latencies, 0.99),
        model_calls=sum(after["model_calls"] - before["model_calls"] for _, before, after in slices),
        images_embedded=sum(after["images_embedded"] - before["images_embedded"] for _, before, after in slices),
    )


# ---- report -------------------------------------------------------------------------------
def report(cli_seconds: list[float], results: list[LoadResult], args) -> list[str]:
    cli_ms = 1000 * statistics.median(cli_seconds)
    print(
        f"\nedgedml search: median {cli_ms:,.0f} ms per call over {len(cli_seconds)} calls "
        f"(min {1000 * min(cli_seconds):,.0f}, max {1000 * max(cli_seconds):,.0f})\n"
    )
    rows = [
        [
            f"{r.window_ms:g}",
            str(r.clients),
            f"{r.requests:,}",
            f"{r.requests_per_s:,.1f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.errors),
            f"{r.images_per_call:.2f}",
            f"{cli_ms / r.p50_ms:,.0f}x",
        ]
        for r in results
    ]
    header = ["batch window ms", "clients", "requests", "requests/s", "p50 ms", "p99 ms", "errors"]
    print(markdown_table([*header, "images / model call", "CLI call / p50"], rows))
    print(
        f"\n{args.seconds:g} s per setting in {args.rounds} slices taken in turn (at most {args.max_requests:,} "
        "requests), one query image per request; the clients run on the same cores as the server."
    )
    verdicts = verdict_lines(cli_ms, results, args.default_window)
    print()
    for line in verdicts:
        print(line)
    return verdicts


def verdict_lines(cli_ms: float, results: list[LoadResult], default_window: float) -> list[str]:
    lines = []
    by = {(r.window_ms, r.clients): r for r in results}
    single = by.get((default_window, 1))
    if single is not None:
        budget = cli_ms / TARGET_CLI_RATIO
        lines.append(
            f"{'MET' if single.p50_ms <= budget else 'MISSED'}: the server's p50 for one query with 1 client "
            f"{single.p50_ms:.2f} ms <= 1/{TARGET_CLI_RATIO:g} of edgedml search's {cli_ms:,.0f} ms per call "
            f"= {budget:,.0f} ms ({cli_ms / single.p50_ms:,.0f}x faster)"
        )
    windows = sorted({r.window_ms for r in results})
    most = max(r.clients for r in results)
    for window in windows:
        one, many = by.get((window, 1)), by.get((window, most))
        if one is not None and many is not None and most > 1:
            raised = many.requests_per_s > one.requests_per_s
            lines.append(
                f"{'MET' if raised else 'MISSED'}: {most} clients raise requests/s over 1 client at window "
                f"{window:g} ms: {many.requests_per_s:,.1f} vs {one.requests_per_s:,.1f} "
                f"({many.requests_per_s / one.requests_per_s:.2f}x)"
            )
    errors, requests = sum(r.errors for r in results), sum(r.requests for r in results)
    lines.append(f"{'MET' if errors == 0 else 'MISSED'}: {errors} errors in {requests:,} requests")
    off = by.get((0.0, most))
    for window in windows:
        on = by.get((window, most))
        if window == 0 or off is None or on is None:
            continue
        ratio = on.requests_per_s / off.requests_per_s
        lines.append(
            f"micro-batching {window:g} ms at {most} clients {'pays' if ratio >= BATCHING_PAYS else 'does not pay'}: "
            f"{on.requests_per_s:,.1f} vs {off.requests_per_s:,.1f} requests/s ({ratio:.2f}x), p50 {on.p50_ms:.2f} vs "
            f"{off.p50_ms:.2f} ms, {on.images_per_call:.2f} images per model call"
        )
    return lines


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], json_out="the raw numbers")
    parser.add_argument("--index", type=Path, default=None, help="an existing index (default: build one on digits)")
    parser.add_argument("--seconds", type=float, default=30.0, help="load time per setting (default 30)")
    parser.add_argument("--max-requests", type=positive_int, default=200_000, help="requests per setting at most")
    parser.add_argument(
        "--clients", type=positive_int, nargs="+", default=[1, 16], help="concurrent clients (default 1 16)"
    )
    parser.add_argument(
        "--windows", type=float, nargs="+", default=[0.0, 3.0], help="--batch-window-ms values (default 0 3)"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="slices each setting's time is split into, in turn (default 3)"
    )
    parser.add_argument("--cli-calls", type=positive_int, default=5, help="edgedml search calls timed (default 5)")
    parser.add_argument("--queries", type=positive_int, default=64, help="distinct query images (default 64)")
    args = parser.parse_args()
    from edgedml.serve.settings import DEFAULT_BATCH_WINDOW_MS

    args.default_window = DEFAULT_BATCH_WINDOW_MS if DEFAULT_BATCH_WINDOW_MS in args.windows else args.windows[0]
    logging.getLogger("edgedml").setLevel(logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log_progress("set-up: model and index" if args.index is None else f"set-up: queries from {args.index}")
        index_dir = args.index or build_index_dir(root)
        queries = write_queries(index_dir, args.queries, root / "queries")
        log_progress(f"baseline: {args.cli_calls} edgedml search calls")
        cli_seconds = cli_wall_times(index_dir, queries, args.cli_calls)
        results = load_runs(index_dir, queries, args)
    verdicts = report(cli_seconds, results, args)
    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s on {os.cpu_count()} CPU cores.")
    if args.json is not None:
        payload = {
            "cli_seconds": cli_seconds,
            "runs": [asdict(r) | {"requests_per_s": r.requests_per_s} for r in results],
            "verdicts": verdicts,
        }
        write_json_file(args.json, "serve_load", payload)


if __name__ == "__main__":
    main()
