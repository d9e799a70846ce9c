"""Small helpers the benchmark scripts share: progress lines, markdown tables, mean ± std.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they
import it as ``benchmark_tools``.
"""

from __future__ import annotations

import statistics
import sys


def log_progress(message: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(message, file=sys.stderr, flush=True)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_mean_std(values: list[float], digits: int = 2, scale: float = 1.0) -> str:
    """``mean ± std`` of ``values * scale`` to ``digits`` decimals."""
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
