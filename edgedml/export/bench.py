"""Latency and throughput of an exported (or PyTorch) embedding model, through the shared runtime interface.

Any :class:`~edgedml.export.runtime.Embedder` is timed the same way: inputs of the model's own
shape ``(batch, 3, input_size, input_size)`` (float32, seeded normal noise: latency does not depend
on pixel values), ``warmup`` untimed calls per batch size, then timed calls of ``embedder.embed``,
each measured with a monotonic clock around the whole call (host-to-device copy, inference and the
copy back included: what a caller of the model waits for). Per batch size we report the p50 / p90 /
p99 / mean latency of one call in milliseconds (percentiles linearly interpolated between the
sorted samples, numpy's default) and the throughput, images per second = batch x calls / total
time of the timed calls.

Threads: ``threads`` sets PyTorch's intra-op threads (``torch.set_num_threads``, process-wide and
restored afterwards) and onnxruntime's ``intra_op_num_threads`` to the same number, so that a
comparison between the two is a comparison of runtimes, not of thread counts.

A fixed-batch model (exported with ``--batch N``) is timed at its own batch only: any other batch
would be padded or split by the embedder and its latency would not be the model's.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from edgedml.config import MAX_BATCH
from edgedml.errors import ConfigError
from edgedml.export.load import load_embedder
from edgedml.export.runtime import Embedder
from edgedml.progress import SILENT, Progress

log = logging.getLogger(__name__)

DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_WARMUP = 5
DEFAULT_SECONDS = 2.0  # per batch size, when no iteration count is given
MIN_ITERATIONS = 10  # a time budget still times at least this many calls
PERCENTILES = (50, 90, 99)
MAX_SECONDS = 3600.0  # per batch size: an hour is far past a stable percentile (and inf or NaN never ends)
INPUT_SEED = 0

Clock = Callable[[], float]


@dataclass(frozen=True)
class BatchTiming:
    """The timed calls at one batch size: latencies of one ``embed`` call in ms, throughput in images/s."""

    batch: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float

    @classmethod
    def from_seconds(cls, batch: int, seconds: Sequence[float]) -> BatchTiming:
        """Summarize per-call durations (seconds) measured at ``batch`` images per call."""
        if not len(seconds):
            raise ValueError("no timed call to summarize")
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = (float(v) for v in np.percentile(ms, PERCENTILES))
        total_s = float(np.sum(seconds))
        return cls(
            batch=batch,
            iterations=len(ms),
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            mean_ms=float(ms.mean()),
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            images_per_s=batch * len(ms) / total_s if total_s > 0 else float("inf"),
        )


@dataclass
class BenchResult:
    """One model on one runtime and device, at one or more batch sizes."""

    model: str
    runtime: str
    precision: str
    device: str
    threads: int | None  # None: each runtime's own default
    input_size: int
    dim: int
    warmup: int
    timings: list[BatchTiming] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timings"] = [asdict(t) for t in self.timings]
        return data


# Calls per batch size: enough for stable p99s of the slowest model, bounded so that a typo cannot run for days.
MAX_CALLS = 100_000


@dataclass(frozen=True)
class BenchPlan:
    """How long to time each batch size: a fixed number of calls, or a time budget (at least MIN_ITERATIONS calls)."""

    warmup: int = DEFAULT_WARMUP
    iterations: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.iterations is not None and self.seconds is not None:
            raise ConfigError("--iters and --seconds exclude each other", hint="give one of them")
        if not 0 <= self.warmup <= MAX_CALLS:
            raise ConfigError(f"--warmup {self.warmup} must lie in 0..{MAX_CALLS:,}", hint="for example --warmup 5")
        if self.iterations is not None and not 1 <= self.iterations <= MAX_CALLS:
            raise ConfigError(f"--iters {self.iterations} must lie in 1..{MAX_CALLS:,}", hint="for example --iters 100")
        if self.seconds is not None and not 0 < self.seconds <= MAX_SECONDS:
            raise ConfigError(
                f"--seconds {self.seconds} must lie in (0, {MAX_SECONDS:g}]", hint="for example --seconds 2"
            )

    @property
    def budget_s(self) -> float | None:
        if self.iterations is not None:
            return None
        return DEFAULT_SECONDS if self.seconds is None else self.seconds


def parse_batches(text: str) -> list[int]:
    """``"1,8,32"`` -> [1, 8, 32]; anything else is a ConfigError naming ``--batch``."""
    try:
        batches = [int(part.strip()) for part in text.split(",")]
    except (ValueError, AttributeError):  # not integers, or not text at all
        batches = []
    if not batches or any(not 1 <= b <= MAX_BATCH for b in batches):
        raise ConfigError(
            f"--batch {text!r}: expected comma-separated batch sizes in 1..{MAX_BATCH}",
            hint="for example --batch 1,8,32",
        )
    if len(set(batches)) != len(batches):
        raise ConfigError(f"--batch {text!r}: a batch size is repeated", hint="list each batch size once")
    return batches


def resolve_batches(embedder: Embedder, batches: Sequence[int] | None) -> list[int]:
    """The batch sizes to time: ``batches``, or the defaults (a fixed-batch model: its own batch only)."""
    fixed = embedder.info.batch
    if batches is None:
        return [fixed] if fixed is not None else list(DEFAULT_BATCHES)
    wrong = [b for b in batches if fixed is not None and b != fixed]
    if wrong:
        raise ConfigError(
            f"--batch {','.join(map(str, wrong))}: {embedder.path} has a fixed batch of {fixed}",
            hint=f"use --batch {fixed}, or export the model with a dynamic batch to time other sizes",
        )
    return list(batches)


def bench_inputs(embedder: Embedder, batch: int, seed: int = INPUT_SEED) -> np.ndarray:
    """A (batch, 3, S, S) float32 batch of the model's own input shape."""
    size = embedder.info.input_size
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size), dtype=np.float32)


def time_calls(
    embedder: Embedder,
    images: np.ndarray,
    count: int | None = None,
    budget_s: float | None = None,
    clock: Clock = time.perf_counter,
    progress: Progress = SILENT,
) -> list[float]:
    """Durations in seconds of ``count`` calls of ``embedder.embed(images)``, or of as many as fit ``budget_s``
    (at least MIN_ITERATIONS). ``progress.advance()`` after each call, outside the timed span."""
    if (count is None) == (budget_s is None):
        raise ValueError("give exactly one of count and budget_s")
    durations: list[float] = []
    spent = 0.0
    while (len(durations) < count) if count is not None else (spent < budget_s or len(durations) < MIN_ITERATIONS):
        started = clock()
        embedder.embed(images)
        durations.append(clock() - started)
        spent += durations[-1]
        progress.advance()
    return durations


def warm_up(embedder: Embedder, images: np.ndarray, calls: int) -> None:
    """Untimed calls: first-run allocations, kernel selection and caches are not what a steady caller sees."""
    for _ in range(calls):
        embedder.embed(images)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Set PyTorch's intra-op thread count for the block (process-wide), then restore it."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def open_model(
    path: str | Path, runtime: str | None = None, device: str = "cpu", threads: int | None = None
) -> Embedder:
    """Load a model for timing; ``threads`` goes to onnxruntime's session (PyTorch's are set by ``bench``)."""
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r} is not one of cpu, cuda")
    check_threads(threads)
    return load_embedder(path, runtime, device, threads=threads)


def max_threads() -> int:
    """The most ``--threads`` this machine takes: 4 per CPU. More only oversubscribes the cores, and a huge
    count makes onnxruntime and OpenMP start that many threads (``--threads 100000`` hangs)."""
    return 4 * (os.cpu_count() or 1)


def check_threads(threads: int | None) -> None:
    """``threads`` is None (each runtime's default) or lies in 1..max_threads(); a ConfigError naming --threads."""
    if threads is None:
        return
    most = max_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= most:
        raise ConfigError(
            f"--threads {threads} must lie in 1..{most} (4 x the {os.cpu_count() or 1} CPUs of this machine)",
            hint=f"for example --threads {os.cpu_count() or 1}, or leave it out for each runtime's default",
        )


def environment(threads: int | None) -> dict[str, Any]:
    """What a reader needs to compare timings across machines."""
    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        # Other work on the machine: with more busy threads than free cores, PyTorch's OpenMP barriers stall
        # far longer than onnxruntime's thread pool, and eager latency can grow 10-100x.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def bench(
    embedder: Embedder,
    batches: Sequence[int] | None = None,
    plan: BenchPlan | None = None,
    threads: int | None = None,
    device: str = "cpu",
    clock: Clock = time.perf_counter,
    progress: Progress = SILENT,
) -> BenchResult:
    """Time ``embedder`` at each batch size (warm-up first, not counted).

    Each batch size is a ``progress`` stage counting its timed calls; ``threads`` sets PyTorch's threads
    for the duration (give the same number to :func:`open_model` for onnxruntime).
    """
    plan = plan or BenchPlan()
    check_threads(threads)
    sizes = resolve_batches(embedder, batches)
    info = embedder.info
    result = BenchResult(
        model=str(embedder.path),
        runtime=embedder.runtime,
        precision=info.precision,
        device=device,
        threads=threads,
        input_size=info.input_size,
        dim=info.dim,
        warmup=plan.warmup,
    )
    with torch_threads(threads):
        result.environment = environment(threads)
        for batch in sizes:
            images = bench_inputs(embedder, batch)
            warm_up(embedder, images, plan.warmup)
            progress.stage(f"batch {batch}", total=plan.iterations)
            seconds = time_calls(embedder, images, plan.iterations, plan.budget_s, clock, progress)
            timing = BatchTiming.from_seconds(batch, seconds)
            log.info(
                "%s batch %d: p50 %.2f ms, %.0f images/s", embedder.path, batch, timing.p50_ms, timing.images_per_s
            )
            result.timings.append(timing)
    return result
