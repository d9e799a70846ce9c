"""Shadow loss against a cosine triplet loss: test Recall@1 per epoch, and the epochs each needs to converge.

What it measures (docs/methods.md §1; the paper claims Shadow needs ~1.5-2x fewer epochs than a
triplet loss to reach the same Recall@1):

- three losses, trained with one base configuration per data set (``--data``), the same mining
  (``--mining``, default: the base configuration's), margin, batches, augmentations and initial
  weights for each seed; only the loss options differ:
    * ``shadow``      Shadow loss with L2-normalized embeddings (the paper's default); with unit
                      vectors δ = 1 − cos, so it is mathematically a cosine triplet hinge;
    * ``shadow-raw``  Shadow loss on raw projections (``--no-normalize`` of ``edgedml train``),
                      the only variant that differs mathematically from a cosine triplet;
    * ``triplet``     pytorch-metric-learning's TripletMarginLoss with CosineSimilarity;
- base configurations:
    * ``glyphs`` (the default; 142 training classes, ~48 training images each, 142 unseen test
      classes): the library's defaults for ``edgedml train --data glyphs``, whatever they are at run
      time (tiny backbone, the glyphs' own input size, the default batch, mining, margin, optimizer,
      learning-rate warm-up and schedule); the report's header prints the resolved values;
    * ``digits``: the quick-start configuration (``edgedml.cli.quickstart.QUICKSTART``: digits 0-4
      for training, retrieval among the unseen digits 5-9), so the earlier numbers stay reproducible.
      On digits the claim cannot be resolved: the untrained network already scores 0.947;
- test-class Recall@1 after every epoch (a benchmark may look at the test classes each epoch; the
  trainer still selects its best checkpoint on validation). On glyphs (7,014 test images) this runs
  on a fixed subsample of the test split (``--eval-images``, default 2000 on glyphs, all on digits):
  stratified by class (each class keeps its share, at least 2 images), drawn with the run's seed, so
  every loss and epoch of a seed sees the same images. With fewer images of each class to find, its
  Recall@1 is lower than the whole split's (0.75 on 500 images vs 0.93 after 2 epochs): compare the
  curve's shape (epochs to 95%), not its level, with the full-test column;
- the same Recall@1 of the untrained model (epoch 0), to show how much of the final value training adds;
- epochs each run needs to reach 95% of its own final (last-epoch) Recall@1, and their ratio
  triplet / shadow and triplet / shadow-raw (ratio of the means, and the per-seed ratios' mean ± std),
  with a verdict on the claim: "within noise" when the per-seed mean ± std spans 1.0 (a std of 0 is no
  noise estimate), else "holds" when the ratio of means is at least 1.5, else "does not hold";
- from the run's summary (the best-on-validation weights, the full test split): Recall@1 and the
  silhouette (cosine) of the test classes;
- wall seconds per epoch, the median over a run's epochs (robust to other load on the machine):
  training, data loading, validation and checkpoints, not the per-epoch test evaluation added here.

It prints markdown tables (mean ± std over seeds) and the verdicts; ``--json PATH`` writes every raw curve
and each run's resolved configuration.

Cost on 2 CPU cores: a glyphs epoch of the tiny backbone at 32 px (105 steps of 64 images) is ~10-20 s of
training, plus ~2 s for validation and ~2 s for the 2000-image test evaluation; each run adds ~15 s (data,
the untrained and the final full-test evaluations). The default glyphs measurement (3 losses x 5 seeds x 8
epochs) is therefore ~45 minutes; ``--quick`` ~5 minutes; digits (15 epochs) ~10 minutes.

Run (from the repository root):

    python benchmarks/shadow_vs_triplet.py --json shadow_vs_triplet.json   # glyphs, 5 seeds x 8 epochs
    python benchmarks/shadow_vs_triplet.py --data digits                   # 5 seeds x 15 epochs, mining "all"
    python benchmarks/shadow_vs_triplet.py --mining hard --epochs 12
    python benchmarks/shadow_vs_triplet.py --quick                         # smoke run: 2 seeds x 2 epochs
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from benchmark_tools import (
    benchmark_parser,
    fmt_mean_std,
    log_progress,
    markdown_table,
    mean_std,
    positive_int,
    total_time_line,
    write_json_file,
)

from edgedml.cli.quickstart import QUICKSTART
from edgedml.config import MINING_MODES, TrainConfig
from edgedml.data import Sample
from edgedml.progress import Progress
from edgedml.training import Trainer
from edgedml.training.evaluate import evaluate_split


@dataclass(frozen=True)
class DataSpec:
    """A data set's base configuration (TrainConfig overrides) and the benchmark's defaults on it."""

    base: dict[str, Any]
    description: str
    default_epochs: int
    default_eval_images: int | None  # per-epoch test subsample; None: the whole test split


DATASETS: dict[str, DataSpec] = {
    "glyphs": DataSpec({"data": "glyphs"}, "the library's defaults for edgedml train --data glyphs", 8, 2000),
    "digits": DataSpec(QUICKSTART, "the quick-start configuration", 15, None),
}
# name -> TrainConfig overrides on top of the base (the loss options; everything else is shared).
VARIANTS: dict[str, dict[str, Any]] = {
    "shadow": {"loss": "shadow", "normalize": True},
    "shadow-raw": {"loss": "shadow", "normalize": False},
    "triplet": {"loss": "triplet"},
}
SHADOW_VARIANTS = ("shadow", "shadow-raw")
BASELINE = "triplet"
EPOCH_LINE = re.compile(r"epoch \d+: loss ")  # edgedml.training.trainer.epoch_line
REPORT_EPOCHS = (1, 2, 3, 5, 10)
TARGET_FRACTION = 0.95
CLAIMED_RATIO = 1.5  # the paper: 1.5-2x fewer epochs than triplet
QUICK_SEEDS, QUICK_EPOCHS, QUICK_EVAL_IMAGES = 2, 2, 500
# The resolved base configuration's values the report's header names (those the loss variants share).
HEADER_KEYS = (
    "backbone",
    "dim",
    "input_size",
    "crop_scale",
    "batch_size",
    "samples_per_class",
    "mining",
    "margin",
    "optimizer",
    "lr",
    "weight_decay",
    "scheduler",
    "warmup_epochs",
    "warmup_steps",
    "grad_clip",
)


# ---- one training run -------------------------------------------------------------------
@dataclass
class RunResult:
    """One (variant, seed) run: per-epoch curves (index 0 is epoch 1) and the run's summary values."""

    variant: str
    seed: int
    config: dict[str, Any] = field(default_factory=dict)  # the trainer's resolved configuration
    test_images: int = 0  # the whole test split
    eval_images: int = 0  # the per-epoch subsample of it
    steps_per_epoch: int = 0
    initial_test_recall_at_1: float = float("nan")
    test_recall_at_1: list[float] = field(default_factory=list)
    val_recall_at_1: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)
    silhouette: float = float("nan")
    best_epoch: int = -1
    best_test_recall_at_1: float = float("nan")  # full test split, best-on-validation weights

    @property
    def final_recall(self) -> float:
        return self.test_recall_at_1[-1]

    @property
    def epochs_to_target(self) -> int:
        return epochs_to_fraction(self.test_recall_at_1, TARGET_FRACTION)

    @property
    def seconds_per_epoch(self) -> float:
        return statistics.median(self.epoch_seconds)


def stratified_subsample(samples: list[Sample], count: int | None, seed: int) -> list[Sample]:
    """About ``count`` of ``samples``, each class keeping its share (at least 2 images where it has them).

    Drawn with ``seed`` and returned in the split's order; None or a count of at least the split's size
    is the whole split.
    """
    if count is None or count >= len(samples):
        return list(samples)
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        by_class[sample.label].append(index)
    rng = random.Random(seed)
    chosen: list[int] = []
    for label in sorted(by_class):
        indices = by_class[label]
        share = min(len(indices), max(2, round(len(indices) * count / len(samples))))
        chosen += rng.sample(indices, share)
    return [samples[index] for index in sorted(chosen)]


class TestRecallRecorder(Progress):
    """Evaluates the test subsample after every epoch and times the epochs (without that evaluation).

    The trainer's display reports: the ``train`` stage starts (at step 0 of a new run), and a note
    ends each epoch, once its record is in the run's metrics.jsonl. Notes before training (what the
    run chose, e.g. a capped batch) are not epochs and are skipped.
    """

    def __init__(self, result: RunResult, eval_images: int | None):
        self.result = result
        self.eval_images = eval_images
        self.trainer: Trainer | None = None
        self.eval_samples: list[Sample] = []
        self._epoch_started: float | None = None  # None until the train stage starts

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer
        test = trainer.splits.test
        self.eval_samples = stratified_subsample(test, self.eval_images, trainer.config.seed)
        self.result.test_images, self.result.eval_images = len(test), len(self.eval_samples)

    def stage(self, description: str, total: int | None = None, done: int = 0) -> None:
        if description != "train":
            return
        if done == 0:
            self.result.initial_test_recall_at_1 = self._test_recall()
        self._epoch_started = time.perf_counter()

    def note(self, message: str) -> None:
        """The trainer's end-of-epoch line (``epoch N: loss ...``); its other notes (a capped batch, a collapse
        warning) are not epoch ends."""
        if self.trainer is None or self._epoch_started is None or not EPOCH_LINE.match(message):
            return
        record = json.loads(self.trainer.run.metrics.read_text(encoding="utf-8").splitlines()[-1])
        self.result.epoch_seconds.append(time.perf_counter() - self._epoch_started)
        self.result.train_loss.append(record["loss"])
        self.result.val_recall_at_1.append(record.get("val_recall_at_1", float("nan")))
        started = time.perf_counter()
        self.result.test_recall_at_1.append(self._test_recall())
        self.result.eval_seconds.append(time.perf_counter() - started)
        self._epoch_started = time.perf_counter()

    def _test_recall(self) -> float:
        trainer = self.trainer
        assert trainer is not None, "attach the trainer before fit()"
        metrics = evaluate_split(trainer.model, self.eval_samples, trainer.config.input_size, trainer.device, False)
        return metrics["recall_at_1"]


def run_config(data: str, variant: str, seed: int, epochs: int, mining: str | None) -> TrainConfig:
    """The data set's base with the benchmark's epochs, mining (None: the base's) and seed, and the variant's loss."""
    overrides = {**DATASETS[data].base, **VARIANTS[variant], "epochs": epochs, "seed": seed}
    if mining is not None:
        overrides["mining"] = mining
    return TrainConfig.from_sources(overrides=overrides)


def train_one(args: argparse.Namespace, variant: str, seed: int, workdir: Path) -> RunResult:
    config = run_config(args.data, variant, seed, args.epochs, args.mining)
    result = RunResult(variant=variant, seed=seed)
    recorder = TestRecallRecorder(result, args.eval_images)
    trainer = Trainer(config, workdir / f"{variant}-seed{seed}", recorder)
    recorder.attach(trainer)
    result.config, result.steps_per_epoch = trainer.config.to_dict(), trainer.steps_per_epoch
    summary = trainer.fit(overwrite=True)
    result.silhouette = summary["silhouette"]
    result.best_epoch = summary["best_epoch"]
    result.best_test_recall_at_1 = summary["recall_at_1"]
    return result


def run_all(args: argparse.Namespace, seeds: list[int]) -> dict[str, list[RunResult]]:
    results: dict[str, list[RunResult]] = {name: [] for name in args.variants}
    with tempfile.TemporaryDirectory(prefix="shadow_vs_triplet-") as tmp:
        for seed in seeds:
            for name in args.variants:
                started = time.perf_counter()
                result = train_one(args, name, seed, Path(tmp))
                results[name].append(result)
                log_progress(
                    f"{name:<10} seed {seed}: final Recall@1 {result.final_recall:.4f}, "
                    f"95% at epoch {result.epochs_to_target}, {result.seconds_per_epoch:.1f} s / epoch "
                    f"+ {statistics.median(result.eval_seconds):.1f} s test eval "
                    f"({result.eval_images} images), {time.perf_counter() - started:.1f} s in all"
                )
    return results


# ---- statistics --------------------------------------------------------------------------
def epochs_to_fraction(curve: list[float], fraction: float) -> int:
    """First epoch (1-based) whose value reaches ``fraction`` of the curve's last value."""
    target = fraction * curve[-1]
    return next(epoch for epoch, value in enumerate(curve, start=1) if value >= target)


def fmt(values: list[float], digits: int = 3) -> str:
    return fmt_mean_std(values, digits)


def ratio_of_means(numerator: list[int], denominator: list[int]) -> float:
    return statistics.fmean(numerator) / statistics.fmean(denominator)


def paired_ratios(numerator: list[int], denominator: list[int]) -> list[float]:
    """Per-seed ratios (both lists are in the same seed order)."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def claim_verdict(ratio: float, per_seed: list[float]) -> str:
    """The paper's claim on one ratio of epochs-to-95%, triplet / shadow (see the module docstring)."""
    mean, std = mean_std(per_seed)
    if std > 0 and mean - std <= 1.0 <= mean + std:  # one seed, or equal ratios: no noise estimate
        return "within noise"
    return "holds" if ratio >= CLAIMED_RATIO else "does not hold"


def max_curve_gap(a: list[RunResult], b: list[RunResult]) -> float:
    """Largest |Recall@1 difference| between two losses' runs at the same seed and epoch."""
    return max(
        abs(x - y)
        for ra, rb in zip(a, b, strict=True)
        for x, y in zip(ra.test_recall_at_1, rb.test_recall_at_1, strict=True)
    )


# ---- report -------------------------------------------------------------------------------
def results_table(results: dict[str, list[RunResult]], epochs: int) -> str:
    shown = [e for e in REPORT_EPOCHS if e < epochs]
    header = [
        "loss",
        "R@1 ep 0 (init)",
        *(f"R@1 ep {e}" for e in shown),
        f"R@1 final (ep {epochs})",
        "epochs to 95% of final",
        "full-test R@1 (best ckpt)",
        "silhouette",
        "s / epoch",
    ]
    rows = []
    for name, runs in results.items():
        rows.append(
            [
                name,
                fmt([r.initial_test_recall_at_1 for r in runs]),
                *(fmt([r.test_recall_at_1[e - 1] for r in runs]) for e in shown),
                fmt([r.final_recall for r in runs]),
                fmt([float(r.epochs_to_target) for r in runs], digits=1),
                fmt([r.best_test_recall_at_1 for r in runs]),
                fmt([r.silhouette for r in runs]),
                fmt([r.seconds_per_epoch for r in runs], digits=2),
            ]
        )
    return markdown_table(header, rows)


def ratio_rows(results: dict[str, list[RunResult]]) -> list[tuple[str, float, list[float], float]]:
    """(shadow variant, ratio of means, per-seed ratios, max curve gap) of triplet's epochs-to-95% over each."""
    if BASELINE not in results:
        return []
    baseline = results[BASELINE]
    epochs_b = [r.epochs_to_target for r in baseline]
    rows = []
    for name in (n for n in SHADOW_VARIANTS if n in results):
        epochs_s = [r.epochs_to_target for r in results[name]]
        rows.append(
            (
                name,
                ratio_of_means(epochs_b, epochs_s),
                paired_ratios(epochs_b, epochs_s),
                max_curve_gap(baseline, results[name]),
            )
        )
    return rows


def ratio_table(rows: list[tuple[str, float, list[float], float]]) -> str:
    header = [
        "epochs to 95% of final",
        "ratio of means",
        "per-seed ratio (mean ± std)",
        "max abs. R@1 gap (any seed, epoch)",
        "claim 1.5-2x fewer epochs",
    ]
    table = [
        [f"{BASELINE} / {name}", f"{ratio:.2f}", fmt(per_seed, digits=2), f"{gap:.4f}", claim_verdict(ratio, per_seed)]
        for name, ratio, per_seed, gap in rows
    ]
    return markdown_table(header, table)


def verdict_lines(rows: list[tuple[str, float, list[float], float]]) -> list[str]:
    lines = []
    for name, ratio, per_seed, _ in rows:
        mean, std = mean_std(per_seed)
        lines.append(
            f'Verdict, paper\'s claim "Shadow needs 1.5-2x fewer epochs than triplet" ({name}): '
            f"{claim_verdict(ratio, per_seed)} (triplet / {name} epochs to 95% of final: ratio of means "
            f"{ratio:.2f}, per-seed {mean:.2f} ± {std:.2f} over {len(per_seed)} seeds)."
        )
    return lines


def base_config_line(results: dict[str, list[RunResult]]) -> str:
    """The resolved base configuration (the first run's; the variants share it but for the loss options)."""
    first = next(iter(results.values()))[0]
    config = first.config
    shown = ", ".join(f"{key}={config[key]}" for key in HEADER_KEYS if key in config)
    return (
        f"Resolved base config: data={config['data']}, {shown}; "
        f"{first.steps_per_epoch} steps / epoch, {config['epochs']} epochs."
    )


def eval_line(results: dict[str, list[RunResult]]) -> str:
    runs = [r for runs in results.values() for r in runs]
    test_images = {r.test_images for r in runs}
    eval_images = sorted({r.eval_images for r in runs})
    eval_seconds = statistics.median(s for r in runs for s in r.eval_seconds)
    sizes = "/".join(str(n) for n in eval_images)
    if eval_images == sorted(test_images):
        subset = f"the whole test split ({sizes} images)"
    else:
        subset = (
            f"a stratified subsample of {sizes} of the {'/'.join(str(n) for n in sorted(test_images))} test images, "
            "drawn with each seed: the same images for every loss and epoch of a seed"
        )
    return f"Per-epoch Recall@1 (ep 0 .. final) on {subset}; {eval_seconds:.1f} s per evaluation (median)."


def report(results: dict[str, list[RunResult]], args: argparse.Namespace, seeds: list[int]) -> str:
    spec = DATASETS[args.data]
    mining = args.mining or "the base config's"
    title = (
        f"Shadow vs cosine triplet on {args.data} ({spec.description}; mining: {mining}; {args.epochs} epochs, "
        f"seeds {seeds[0]}..{seeds[-1]}; mean ± std over {len(seeds)} seeds; Recall@1 on the unseen test classes "
        "after each epoch)"
    )
    parts = [title, "", base_config_line(results), eval_line(results), "", results_table(results, args.epochs)]
    rows = ratio_rows(results)
    if rows:
        ratio_note = (
            "Ratio > 1: Shadow reaches 95% of its final Recall@1 in fewer epochs than triplet (the paper claims "
            "1.5-2). Verdict: within noise when the per-seed mean ± std spans 1.0 (std > 0), else holds when the "
            f"ratio of means is >= {CLAIMED_RATIO}, else does not hold."
        )
        parts += ["", ratio_table(rows), "", ratio_note, *verdict_lines(rows)]
    notes = (
        "full-test R@1 and silhouette (cosine): the whole test split, the best-on-validation checkpoint (the run's "
        "summary; a subsample's R@1 is lower: fewer images of each class to find); s / epoch: median epoch wall "
        "time of each run, without the per-epoch test evaluation."
    )
    parts += ["", notes]
    return "\n".join(parts)


def write_json(path: Path, results: dict[str, list[RunResult]], args: argparse.Namespace, seeds: list[int]) -> None:
    payload = {
        "data": args.data,
        "base_overrides": DATASETS[args.data].base,
        "mining": args.mining,
        "epochs": args.epochs,
        "eval_images": args.eval_images,
        "variants": VARIANTS,
        "seeds": seeds,
        "target_fraction": TARGET_FRACTION,
        "ratios": {
            f"{BASELINE}/{name}": {
                "ratio_of_means": ratio,
                "per_seed": per_seed,
                "max_curve_gap": gap,
                "verdict": claim_verdict(ratio, per_seed),
            }
            for name, ratio, per_seed, gap in ratio_rows(results)
        },
        "runs": {
            name: [
                {**asdict(r), "final_recall_at_1": r.final_recall, "epochs_to_target": r.epochs_to_target} for r in runs
            ]
            for name, runs in results.items()
        },
    }
    write_json_file(path, "shadow_vs_triplet", payload)


# ---- command line -------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = ", ".join(f"{name} {spec.default_epochs}" for name, spec in DATASETS.items())
    parser = benchmark_parser(
        "Test Recall@1 per epoch for Shadow loss and a cosine triplet loss at the same mining; epochs to converge.",
        seeds=5,
        epochs=defaults,
        threads="PyTorch, via torch.set_num_threads",
        json_out="every raw curve",
        quick=f"{QUICK_SEEDS} seeds x {QUICK_EPOCHS} epochs, a {QUICK_EVAL_IMAGES}-image test subsample",
    )
    parser.add_argument("--data", choices=list(DATASETS), default="glyphs", help="data set (default glyphs)")
    parser.add_argument(
        "--mining",
        choices=MINING_MODES,
        default=None,
        help="triplet mining for every loss (default: the base config's; digits: all)",
    )
    parser.add_argument(
        "--eval-images",
        type=positive_int,
        default=None,
        metavar="N",
        help="per-epoch test evaluation on a seeded stratified subsample of about N test images "
        "(default: glyphs 2000, digits the whole split)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="losses to compare (default: all three)",
    )
    args = parser.parse_args(argv)
    spec = DATASETS[args.data]
    if args.quick:
        args.seeds, args.epochs = QUICK_SEEDS, QUICK_EPOCHS
        args.eval_images = args.eval_images or QUICK_EVAL_IMAGES
    args.epochs = args.epochs or spec.default_epochs
    args.eval_images = args.eval_images or spec.default_eval_images
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    log_progress(
        f"{args.data}: {len(args.variants)} losses x {len(seeds)} seeds x {args.epochs} epochs, "
        f"mining={args.mining or 'config default'}, per-epoch test images={args.eval_images or 'all'}, "
        f"{torch.get_num_threads()} torch threads"
    )
    started = time.perf_counter()
    results = run_all(args, seeds)
    print(report(results, args, seeds))
    print(total_time_line(time.perf_counter() - started))
    if args.json:
        write_json(args.json, results, args, seeds)
        log_progress(f"raw curves written to {args.json}")


if __name__ == "__main__":
    main()
