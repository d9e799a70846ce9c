"""A run's training curves: ``RUN_DIR/curves.png``, redrawn from ``metrics.jsonl`` at the end of every epoch.

Three panels over the epochs: the mean training loss, the learning rate at the epoch's last step, and the
validation Recall@1 and MAP@R with the epoch whose weights are the best so far (the panel left empty, with a note,
when the run has no validation split). The epoch axis
spans the run's planned epochs, so the curves grow across a fixed axis while a run trains.

Drawing costs time every epoch, so the figure is built once per run and only its lines' data change; it is
rendered by the Agg canvas (no pyplot state: safe in any thread) at a low dpi, and written atomically like every
file of a run. A resumed run reads the epochs before the interruption back from ``metrics.jsonl``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgedml.io import write_figure

CURVE_KEYS = ("loss", "lr", "val_recall_at_1", "val_map_at_r")
DPI = 80
SIZE = (12.0, 3.4)  # inches: 960 x 272 px at DPI

Points = dict[str, tuple[list[int], list[float]]]


def curve_points(records: Sequence[dict[str, Any]]) -> Points:
    """Per key of ``CURVE_KEYS``, the epochs whose record holds a finite value for it, and those values."""
    points: Points = {key: ([], []) for key in CURVE_KEYS}
    for record in records:
        epoch = record.get("epoch")
        if not isinstance(epoch, int):
            continue
        for key in CURVE_KEYS:
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                points[key][0].append(epoch)
                points[key][1].append(float(value))
    return points


class CurvesFigure:
    """The figure of one run, built at the first :meth:`write` and updated at each later one."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self._figure = None
        self._lines: dict[str, Any] = {}
        self._axes: list[Any] = []
        self._no_validation = None
        self._best = None
        self._legend = None

    def write(self, records: Sequence[dict[str, Any]], path: str | Path) -> None:
        """Draw ``records`` (metrics.jsonl's, in epoch order) into ``path``."""
        if self._figure is None:
            self._build()
        points = curve_points(records)
        for key, line in self._lines.items():
            line.set_data(*points[key])
        last = max((max(epochs) for epochs, _ in points.values() if epochs), default=1)
        for axes in self._axes:
            axes.set_xlim(0.5, max(self.epochs, last) + 0.5)
            axes.relim()
            axes.autoscale_view(scalex=False)
        self._axes[1].set_ylim(bottom=0.0)
        self._axes[2].set_ylim(0.0, 1.02)
        validated = bool(points["val_recall_at_1"][0] or points["val_map_at_r"][0])
        self._no_validation.set_visible(not validated)
        self._legend.set_visible(validated)
        best = records[-1].get("best_epoch", 0) if records else 0
        self._best.set_xdata([best, best])
        self._figure.suptitle(f"training curves: epoch {last} of {max(self.epochs, last)}", fontsize=11)
        write_figure(self._figure, path, DPI)

    def _build(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        figure = Figure(figsize=SIZE, dpi=DPI)  # fixed margins: a layout engine would double the time to draw
        figure.subplots_adjust(left=0.06, right=0.99, bottom=0.17, top=0.83, wspace=0.25)
        FigureCanvasAgg(figure)
        loss, lr, validation = figure.subplots(1, 3)
        panels = (
            (loss, "training loss", "loss (epoch mean)"),
            (lr, "learning rate", "lr (end of epoch)"),
            (validation, "validation", "score"),
        )
        for axes, title, ylabel in panels:
            axes.set_title(title, fontsize=10)
            axes.set_xlabel("epoch")
            axes.set_ylabel(ylabel)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.grid(alpha=0.3)
        lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        style = {"marker": "o", "markersize": 3, "linewidth": 1.5}
        self._lines = {
            "loss": loss.plot([], [], color="tab:blue", **style)[0],
            "lr": lr.plot([], [], color="tab:purple", **style)[0],
            "val_recall_at_1": validation.plot([], [], color="tab:green", label="Recall@1", **style)[0],
            "val_map_at_r": validation.plot([], [], color="tab:orange", label="MAP@R", **style)[0],
        }
        self._best = validation.axvline(0, color="grey", linestyle=":", linewidth=1.2, label="best epoch")
        self._legend = validation.legend(loc="best", fontsize=9)
        self._no_validation = validation.text(
            0.5, 0.5, "no validation split", transform=validation.transAxes, ha="center", va="center", color="grey"
        )
        self._figure, self._axes = figure, [loss, lr, validation]
