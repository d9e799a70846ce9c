"""Small helpers the benchmark scripts share: the command line, progress lines, markdown tables, mean ± std,
paired-by-seed comparisons with a verdict, and the raw-numbers JSON file.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they
import it as ``benchmark_tools``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


# ---- command line -------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def benchmark_parser(
    description: str,
    *,
    datasets: Sequence[str] | None = None,
    seeds: int | None = None,
    epochs: int | str | None = None,
    threads: str | None = None,
    threads_default: int | None = None,
    json_out: str | None = None,
    quick: str | None = None,
    **parser_options: Any,
) -> argparse.ArgumentParser:
    """An argument parser holding the options the benchmarks share, each with one name, type and help text.

    Each keyword left at None leaves its option out; the script adds its own options to the parser it gets.

    - ``datasets``: ``--datasets NAME [NAME ...]``, choices and default these names (all of them);
    - ``seeds``: ``--seeds N``, seeds 0..N-1, default ``seeds``;
    - ``epochs``: ``--epochs N``, training epochs of every run: an int is the default; a string says what the
      script uses when the option is not given (the value is then None);
    - ``threads``: ``--threads N``, what the threads are for; default ``threads_default``, None: the script's
      choice, named in the help as PyTorch's default;
    - ``json_out``: ``--json PATH``, what the script writes there (a ``Path``; None when not given);
    - ``quick``: ``--quick``, what the smoke run does (the script applies it after parsing).

    ``--seeds`` and ``--epochs`` are checked to be positive (``positive_int``). ``parser_options`` go to
    ``ArgumentParser``.
    """
    parser = argparse.ArgumentParser(description=description, **parser_options)
    if datasets is not None:
        parser.add_argument(
            "--datasets",
            nargs="+",
            choices=list(datasets),
            default=list(datasets),
            help=f"data sets (default: {' '.join(datasets)})",
        )
    if seeds is not None:
        parser.add_argument(
            "--seeds", type=positive_int, default=seeds, metavar="N", help=f"number of seeds, 0..N-1 (default {seeds})"
        )
    if epochs is not None:
        default_text = f"default {epochs}" if isinstance(epochs, int) else f"default: {epochs}"
        parser.add_argument(
            "--epochs",
            type=positive_int,
            default=epochs if isinstance(epochs, int) else None,
            metavar="N",
            help=f"training epochs of every run ({default_text})",
        )
    if threads is not None:
        default_text = "PyTorch's default" if threads_default is None else str(threads_default)
        parser.add_argument(
            "--threads",
            type=int,
            default=threads_default,
            metavar="N",
            help=f"threads for {threads} (default: {default_text})",
        )
    if json_out is not None:
        parser.add_argument(
            "--json", type=Path, default=None, metavar="PATH", help=f"write {json_out} to this JSON file"
        )
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
    return parser


# ---- output -------------------------------------------------------------------------------
def log_progress(message: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(message, file=sys.stderr, flush=True)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def total_time_line(seconds: float) -> str:
    """The closing line of a training benchmark's report."""
    return f"\nTotal wall time: {seconds:.0f} s ({seconds / 60:.1f} min), {torch.get_num_threads()} torch threads."


def write_json_file(path: Path, benchmark: str, payload: dict[str, Any]) -> None:
    """The raw numbers as indented JSON: ``{"benchmark": name, **payload}`` with the torch version and thread count."""
    data = {"benchmark": benchmark, **payload, "torch": torch.__version__, "threads": torch.get_num_threads()}
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


# ---- statistics ---------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_mean_std(values: list[float], digits: int = 2, scale: float = 1.0) -> str:
    """``mean ± std`` of ``values * scale`` to ``digits`` decimals."""
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


@dataclass
class Comparison:
    """The claim "A beats B" on test Recall@1, judged on runs paired by seed."""

    deltas: list[float]  # per seed, Recall@1 points (A - B)
    map_deltas: list[float]  # per seed, MAP@R points (A - B)
    noise: float  # points: max(seed std of A, seed std of B, std of the deltas)
    wins: int  # seeds on which A's Recall@1 is higher

    @property
    def mean(self) -> float:
        return statistics.fmean(self.deltas)

    @property
    def verdict(self) -> str:
        """The verdict words: within noise when |mean Δ| <= noise (one seed: when Δ = 0), else holds / does not hold."""
        if len(self.deltas) > 1 and abs(self.mean) <= self.noise:
            return "within noise"
        if self.mean == 0:
            return "within noise"
        return "holds" if self.mean > 0 else "does not hold"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": self.mean, "verdict": self.verdict}


def compare(a: Iterable[Any], b: Iterable[Any]) -> Comparison:
    """A against B on the seeds both have: runs with ``seed``, ``recall_at_1`` and ``map_at_r`` (fractions)."""
    a, b = list(a), list(b)
    ra = {r.seed: 100 * r.recall_at_1 for r in a}
    rb = {r.seed: 100 * r.recall_at_1 for r in b}
    ma = {r.seed: 100 * r.map_at_r for r in a}
    mb = {r.seed: 100 * r.map_at_r for r in b}
    seeds = sorted(set(ra) & set(rb))
    deltas = [ra[s] - rb[s] for s in seeds]
    stds = [mean_std([ra[s] for s in seeds])[1], mean_std([rb[s] for s in seeds])[1], mean_std(deltas)[1]]
    return Comparison(deltas, [ma[s] - mb[s] for s in seeds], max(stds), sum(d > 0 for d in deltas))


def noise_note(a: str, b: str, seeds: int) -> str:
    """The report's definition of the noise level, for ``seeds`` seeds (A and B named as ``a`` and ``b``)."""
    return f'noise = max(seed std of {a}, seed std of {b}, std of the paired Δ); |Δ| <= noise is "within noise"' + (
        " (one seed: no noise estimate, the verdict is the sign of Δ)." if seeds < 2 else "."
    )


# ---- training runs ------------------------------------------------------------------------
def fit_outcome(summary: dict[str, Any], metrics_path: Path, wall_seconds: float) -> dict[str, Any]:
    """The run-result fields every training benchmark takes from a finished fit.

    ``summary`` is the fit's summary (``summary.json``), ``metrics_path`` the run's per-epoch metrics (JSON lines),
    ``wall_seconds`` the time of the whole fit. Keys: test ``recall_at_1`` / ``map_at_r`` and
    ``untrained_recall_at_1``, ``best_epoch``, ``train_seconds`` (summary ``wall_s``: the training steps only),
    ``wall_seconds``, and the per-epoch ``val_recall_at_1`` and ``train_loss``.
    """
    records = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {
        "recall_at_1": summary["recall_at_1"],
        "map_at_r": summary["map_at_r"],
        "untrained_recall_at_1": summary["untrained_recall_at_1"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": summary["wall_s"],
        "wall_seconds": wall_seconds,
        "val_recall_at_1": [r.get("val_recall_at_1", float("nan")) for r in records],
        "train_loss": [r["loss"] for r in records],
    }
