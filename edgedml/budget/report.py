"""The memory-budget report: what fits on a device, why, and what to run.

``edgedml profile`` writes into its ``--out`` folder:

- ``report.json``: device facts, the budget, the recommended configuration with its breakdown,
  the predicted peak against batch size and memory size, and (on a GPU) measured peaks;
- ``report.md``: the same for a person, with the plots;
- ``peak_vs_batch.png``, ``peak_vs_memory.png`` (with a memory), ``breakdown.png``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgedml.budget.device import DeviceMemory
from edgedml.budget.measure import fit_line, measure_step
from edgedml.budget.planner import Budget, StepTracer, budget_for, plan_config
from edgedml.config import AUTO, TrainConfig
from edgedml.data import class_disjoint_split, default_input_size, image_sizes, load_source
from edgedml.errors import ConfigError
from edgedml.io import write_json, write_text, write_with
from edgedml.memory import resolve_memory_size
from edgedml.units import format_bytes

log = logging.getLogger(__name__)
MIB = 1 << 20


@dataclass
class Report:
    device: DeviceMemory
    budget: Budget
    config: dict[str, Any]
    input_size: int
    train_images: int
    plan: dict[str, Any] | None
    failure: str | None
    batch_curve: list[dict[str, int]]
    memory_curve: list[dict[str, int]]
    measured: list[dict[str, Any]] = field(default_factory=list)
    measured_line: dict[str, float] | None = None  # least-squares bytes = intercept + slope * batch, and its check

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device.to_dict(),
            "budget": vars(self.budget),
            "config": self.config,
            "input_size": self.input_size,
            "train_images": self.train_images,
            "plan": self.plan,
            "fits": self.plan is not None,
            "failure": self.failure,
            "batch_curve": self.batch_curve,
            "memory_curve": self.memory_curve,
            "measured": self.measured,
            "measured_line": self.measured_line,
        }


def training_set_size(config: TrainConfig) -> tuple[int, int, int]:
    """(training images, training classes, input size) of the config's data, without decoding any image.

    The input size is the config's, else the trainer's default (for a folder or manifest it follows the
    images' sizes, here read from their headers: :func:`edgedml.data.default_input_size`).
    """
    source = load_source(config.data)
    splits = class_disjoint_split(source.samples, config.train_classes, config.val_fraction, config.seed)
    input_size = config.input_size or default_input_size(source, image_sizes(source.samples))[0]
    return len(splits.train), len(splits.train_classes), input_size


def build_report(config: TrainConfig, measure: bool = True) -> Report:
    train_images, train_classes, default_size = training_set_size(config)
    config, _ = config.with_default_batch(train_classes)
    input_size = config.input_size or default_size
    device, budget = budget_for(config)
    tracer = StepTracer(config, input_size)
    plan, failure = None, None
    try:
        found = plan_config(config, budget, input_size, train_images, train_classes, tracer)
        plan = found.to_dict()
        batch_size, memory_size = found.batch_size, found.memory_size
    except ConfigError as exc:
        failure = exc.message
        batch_size = config.samples_per_class * 2 if config.batch_size == AUTO else config.batch_size
        memory_size = (
            0
            if config.memory == "none"
            else (
                batch_size
                if config.memory_size == AUTO
                else resolve_memory_size(float(config.memory_size), train_images)
            )
        )
    batch_curve = _batch_curve(tracer, budget, config.samples_per_class, batch_size, memory_size)
    memory_curve = (
        _memory_curve(tracer, budget, batch_size, memory_size, train_images) if config.memory != "none" else []
    )
    measured = _measured(config, input_size, tracer, memory_size) if measure and torch.cuda.is_available() else []
    line = _line_check(measured, tracer, batch_size, memory_size) if measured else None
    return Report(
        device,
        budget,
        config.to_dict(),
        input_size,
        train_images,
        plan,
        failure,
        batch_curve,
        memory_curve,
        measured,
        line,
    )


def _line_check(
    measured: list[dict[str, Any]], tracer: StepTracer, batch_size: int, memory_size: int
) -> dict[str, float]:
    """Fit the measured peaks against batch size and compare the line at the chosen batch with the prediction."""
    intercept, slope = fit_line([(m["batch_size"], m["measured"]) for m in measured])
    extrapolated = intercept + slope * batch_size
    predicted = tracer.estimate(batch_size, memory_size).peak
    return {
        "intercept": intercept,
        "slope": slope,
        "batch_size": batch_size,
        "line_at_batch": extrapolated,
        "predicted_at_batch": predicted,
        "error": predicted / extrapolated - 1.0,
    }


def _point(tracer: StepTracer, budget: Budget, batch_size: int, memory_size: int) -> dict[str, int]:
    estimate = tracer.estimate(batch_size, memory_size)
    return {
        "batch_size": batch_size,
        "memory_size": memory_size,
        "peak": estimate.peak,
        "required": budget.required(estimate),
    }


def _batch_curve(tracer, budget, per_class: int, chosen: int, memory_size: int) -> list[dict[str, int]]:
    sizes = sorted({per_class * 2**i for i in range(1, 12) if per_class * 2**i <= max(512, 2 * chosen)} | {chosen})
    return [_point(tracer, budget, size, memory_size) for size in sizes]


def _memory_curve(tracer, budget, batch_size: int, chosen: int, train_images: int) -> list[dict[str, int]]:
    top = max(train_images, chosen)
    sizes = sorted({0, *[2**i for i in range(10, 20) if 2**i < top], top, chosen})
    return [_point(tracer, budget, batch_size, size) for size in sizes]


def _measured(config: TrainConfig, input_size: int, tracer: StepTracer, memory_size: int) -> list[dict[str, Any]]:
    rows = []
    for batch_size in (config.samples_per_class * 2, config.samples_per_class * 4, config.samples_per_class * 8):
        measured = measure_step(config, input_size, batch_size, memory_size, "cuda").allocated
        predicted = tracer.estimate(batch_size, memory_size).peak
        rows.append(
            {
                "batch_size": batch_size,
                "memory_size": memory_size,
                "measured": measured,
                "predicted": predicted,
                "error": predicted / measured - 1.0,
            }
        )
    return rows


# ---- writing ------------------------------------------------------------------------------


def write_report(report: Report, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.json", out_dir / "report.md"]
    plots = _plots(report, out_dir)
    write_json(paths[0], report.to_dict())
    write_text(paths[1], _markdown(report, [p.name for p in plots]))
    return paths + plots


def _plots(report: Report, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    written = []
    budget_mib = report.budget.available / MIB
    chosen = report.plan["batch_size"] if report.plan else None
    for name, curve, key, label in (
        ("peak_vs_batch.png", report.batch_curve, "batch_size", "batch size (images)"),
        ("peak_vs_memory.png", report.memory_curve, "memory_size", "cross-batch memory size (embeddings)"),
    ):
        if not curve:
            continue
        figure, axes = plt.subplots(figsize=(7, 4.2))
        xs = [p[key] for p in curve]
        axes.plot(xs, [p["peak"] / MIB for p in curve], "o-", label="predicted peak allocated")
        axes.plot(xs, [p["required"] / MIB for p in curve], "s--", label="needed: peak + margin + CUDA context")
        axes.axhline(budget_mib, color="tab:red", label=f"budget {format_bytes(report.budget.available)}")
        if key == "batch_size" and report.measured:
            axes.plot(
                [m["batch_size"] for m in report.measured],
                [m["measured"] / MIB for m in report.measured],
                "k^",
                label="measured (max_memory_allocated)",
            )
        if report.plan:
            value = report.plan[key]
            axes.axvline(value, color="tab:green", linestyle=":", label=f"recommended {value}")
        axes.set_xlabel(label)
        axes.set_ylabel("MiB")
        axes.set_title(
            f"{report.config['backbone']} @ {report.input_size}px on {report.device.name}"
            + (f", batch {chosen}" if key == "memory_size" and chosen else "")
        )
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        written.append(_save(figure, out_dir / name))
        plt.close(figure)
    breakdown = report.plan["estimate"]["breakdown"] if report.plan else None
    if breakdown:
        figure, axes = plt.subplots(figsize=(7, 3.6))
        margin = report.plan["required_bytes"] - report.budget.fixed - report.plan["estimate"]["peak"]
        names = [*breakdown, "CUDA context", "safety margin"]
        values = [breakdown[n] / MIB for n in breakdown] + [report.budget.fixed / MIB, margin / MIB]
        axes.barh(names, values, color="tab:blue")
        axes.invert_yaxis()
        axes.set_xlabel("MiB")
        axes.set_title(
            f"where the {format_bytes(report.plan['required_bytes'])} go "
            f"(batch {report.plan['batch_size']}, memory {report.plan['memory_size']})"
        )
        axes.grid(alpha=0.3, axis="x")
        figure.tight_layout()
        written.append(_save(figure, out_dir / "breakdown.png"))
        plt.close(figure)
    return written


def _save(figure, path: Path) -> Path:
    write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    return path


def _markdown(report: Report, plots: list[str]) -> str:
    device = report.device
    lines = [f"# Memory budget: {report.config['backbone']} @ {report.input_size}px on {device.name}", ""]
    if report.plan:
        plan = report.plan
        lines += [
            f"**Fits.** Recommended: `--batch-size {plan['batch_size']}`"
            + (f" `--memory-size {plan['memory_size']}`" if report.config["memory"] != "none" else "")
            + f" needs {format_bytes(plan['required_bytes'])} of a {format_bytes(report.budget.available)} budget "
            f"({plan['required_bytes'] / report.budget.available:.0%}).",
            "",
        ]
    else:
        lines += [f"**Does not fit.** {report.failure}", ""]
    lines += ["## Device", "", "| fact | value |", "|---|---|"]
    facts = device.to_dict()
    for key in (
        "source",
        "name",
        "total_bytes",
        "free_bytes",
        "used_bytes",
        "integrated",
        "reserved_bytes",
        "other_processes_bytes",
        "driver",
        "compute_capability",
        "cuda_context_bytes",
        "os_reserved_bytes",
        "safety_margin",
    ):
        value = facts.get(key)
        if value is None:
            continue
        lines.append(f"| {key} | {format_bytes(value) if key.endswith('_bytes') else value} |")
    for reason in device.fallbacks:
        lines.append(f"| probe skipped | {reason} |")
    lines += [
        "",
        "## Budget",
        "",
        f"{format_bytes(report.budget.available)} from {report.budget.source}; fixed cost (CUDA context) "
        f"{format_bytes(report.budget.fixed)}; safety margin {report.budget.safety_margin:.0%} of the predicted peak.",
        "",
    ]
    if report.plan:
        estimate = report.plan["estimate"]
        lines += ["## Breakdown of the recommended step", "", "| part | MiB | share of peak |", "|---|---:|---:|"]
        for name, value in estimate["breakdown"].items():
            lines.append(f"| {name.replace('_', ' ')} | {value / MIB:.1f} | {value / estimate['peak']:.0%} |")
        lines += [f"| **predicted peak allocated** | **{estimate['peak'] / MIB:.1f}** | 100% |", ""]
    lines += [
        "## Predicted peak against batch size",
        "",
        "| batch | memory | peak MiB | needed MiB | fits |",
        "|---:|---:|---:|---:|---|",
    ]
    lines += [_curve_row(p, report.budget) for p in report.batch_curve]
    if report.memory_curve:
        lines += [
            "",
            "## Predicted peak against memory size",
            "",
            "| batch | memory | peak MiB | needed MiB | fits |",
            "|---:|---:|---:|---:|---|",
        ]
        lines += [_curve_row(p, report.budget) for p in report.memory_curve]
    lines += ["", "## Measured on this GPU", ""]
    if report.measured:
        lines += ["| batch | memory | measured MiB | predicted MiB | error |", "|---:|---:|---:|---:|---:|"]
        lines += [
            f"| {m['batch_size']} | {m['memory_size']} | {m['measured'] / MIB:.1f} | {m['predicted'] / MIB:.1f} "
            f"| {m['error']:+.1%} |"
            for m in report.measured
        ]
        line = report.measured_line
        lines += [
            "",
            f"Measured line: {line['intercept'] / MIB:.1f} MiB + {line['slope'] / MIB:.2f} MiB per image; at batch "
            f"{line['batch_size']} it gives {line['line_at_batch'] / MIB:.1f} MiB against the predicted "
            f"{line['predicted_at_batch'] / MIB:.1f} MiB ({line['error']:+.1%}).",
        ]
    else:
        lines.append("No CUDA device here: the figures above are predictions only.")
    lines += ["", *[f"![{name}]({name})" for name in plots], ""]
    if report.plan:
        options = f"--batch-size {report.plan['batch_size']}" + (
            f" --memory-size {report.plan['memory_size']}" if report.config["memory"] != "none" else ""
        )
        lines += [
            "Next:",
            "",
            f"    edgedml train --data {report.config['data']} --backbone {report.config['backbone']} "
            f"--input-size {report.input_size} --dim {report.config['dim']} {options} --out runs/planned",
            "",
        ]
    return "\n".join(lines)


def _curve_row(point: dict[str, int], budget: Budget) -> str:
    fits = "yes" if point["required"] <= budget.available else "no"
    return (
        f"| {point['batch_size']} | {point['memory_size']} | {point['peak'] / MIB:.1f} "
        f"| {point['required'] / MIB:.1f} | {fits} |"
    )
