"""Shadow loss against a cosine triplet loss: Recall@1 per epoch on digits, and epochs to converge.

What it measures (docs/methods.md §1; the paper claims Shadow needs ~1.5-2x fewer epochs than a
triplet loss to reach the same Recall@1):

- three losses, trained with the quick-start configuration (``edgedml.cli.quickstart.QUICKSTART``:
  digits 0-4 for training, retrieval among the unseen digits 5-9), the same mining, margin,
  batches, augmentations and initial weights for each seed:
    * ``shadow``      Shadow loss with L2-normalized embeddings (the paper's default); with unit
                      vectors δ = 1 − cos, so it is mathematically a cosine triplet hinge;
    * ``shadow-raw``  Shadow loss on raw projections (``--no-normalize`` of ``edgedml train``),
                      the only variant that differs mathematically from a cosine triplet;
    * ``triplet``     pytorch-metric-learning's TripletMarginLoss with CosineSimilarity;
- test-class Recall@1 after every epoch (a benchmark may look at the test classes each epoch;
  the trainer still selects its best checkpoint on validation);
- test Recall@1 of the untrained model (epoch 0), to show how much of the final value training adds;
- epochs each run needs to reach 95% of its own final (last-epoch) Recall@1;
- the silhouette (cosine) of the test classes from the run's summary (best-on-validation weights);
- wall seconds per epoch, the median over a run's epochs (robust to other load on the machine):
  training, data loading, validation and checkpoints, not the per-epoch test evaluation added here.

It prints a markdown table (mean ± std over seeds) and the ratio of epochs-to-95%,
triplet / shadow; ``--json PATH`` writes every raw curve.

Run (from the repository root; ~10 minutes on 2 CPU cores):

    python benchmarks/shadow_vs_triplet.py                      # 5 seeds x 15 epochs, mining "all"
    python benchmarks/shadow_vs_triplet.py --mining hard --json shadow_vs_triplet.json
    python benchmarks/shadow_vs_triplet.py --quick              # smoke run: 2 seeds x 4 epochs
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from benchmark_tools import benchmark_parser, fmt_mean_std, log_progress, markdown_table, write_json_file

from edgedml.cli.quickstart import QUICKSTART
from edgedml.config import MINING_MODES, TrainConfig
from edgedml.progress import Progress
from edgedml.training import Trainer
from edgedml.training.evaluate import evaluate_split

# name -> TrainConfig overrides on top of QUICKSTART (the loss options; everything else is shared).
VARIANTS: dict[str, dict[str, Any]] = {
    "shadow": {"loss": "shadow", "normalize": True},
    "shadow-raw": {"loss": "shadow", "normalize": False},
    "triplet": {"loss": "triplet"},
}
SHADOW_VARIANTS = ("shadow", "shadow-raw")
BASELINE = "triplet"
REPORT_EPOCHS = (1, 2, 3, 5, 10)
TARGET_FRACTION = 0.95


# ---- one training run -------------------------------------------------------------------
@dataclass
class RunResult:
    """One (variant, seed) run: per-epoch curves (index 0 is epoch 1) and the run's summary values."""

    variant: str
    seed: int
    initial_test_recall_at_1: float = float("nan")
    test_recall_at_1: list[float] = field(default_factory=list)
    val_recall_at_1: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    silhouette: float = float("nan")
    best_epoch: int = -1
    best_test_recall_at_1: float = float("nan")

    @property
    def final_recall(self) -> float:
        return self.test_recall_at_1[-1]

    @property
    def epochs_to_target(self) -> int:
        return epochs_to_fraction(self.test_recall_at_1, TARGET_FRACTION)

    @property
    def seconds_per_epoch(self) -> float:
        return statistics.median(self.epoch_seconds)


class TestRecallRecorder(Progress):
    """Evaluates the test classes after every epoch and times the epochs (without that evaluation).

    The trainer's display reports: the ``train`` stage starts (at step 0 of a new run), and a note
    ends each epoch, once its record is in the run's metrics.jsonl.
    """

    def __init__(self, result: RunResult):
        self.result = result
        self.trainer: Trainer | None = None
        self._epoch_started = 0.0

    def stage(self, description: str, total: int | None = None, done: int = 0) -> None:
        if description != "train":
            return
        if done == 0:
            self.result.initial_test_recall_at_1 = self._test_recall()
        self._epoch_started = time.perf_counter()

    def note(self, message: str) -> None:
        assert self.trainer is not None, "attach the trainer before fit()"
        record = json.loads(self.trainer.run.metrics.read_text(encoding="utf-8").splitlines()[-1])
        self.result.epoch_seconds.append(time.perf_counter() - self._epoch_started)
        self.result.train_loss.append(record["loss"])
        self.result.val_recall_at_1.append(record.get("val_recall_at_1", float("nan")))
        self.result.test_recall_at_1.append(self._test_recall())
        self._epoch_started = time.perf_counter()

    def _test_recall(self) -> float:
        trainer = self.trainer
        assert trainer is not None, "attach the trainer before fit()"
        config = trainer.config
        metrics = evaluate_split(trainer.model, trainer.splits.test, config.input_size, trainer.device, full=False)
        return metrics["recall_at_1"]


def run_config(variant: str | None, seed: int, epochs: int, mining: str) -> TrainConfig:
    """QUICKSTART with the benchmark's epochs, mining and seed, and the variant's loss options (None: shared part)."""
    overrides = {**QUICKSTART, **VARIANTS.get(variant or "", {}), "mining": mining, "epochs": epochs, "seed": seed}
    return TrainConfig.from_sources(overrides=overrides)


def train_one(variant: str, seed: int, epochs: int, mining: str, workdir: Path) -> RunResult:
    config = run_config(variant, seed, epochs, mining)
    result = RunResult(variant=variant, seed=seed)
    recorder = TestRecallRecorder(result)
    trainer = Trainer(config, workdir / f"{variant}-seed{seed}", recorder)
    recorder.trainer = trainer
    summary = trainer.fit(overwrite=True)
    result.silhouette = summary["silhouette"]
    result.best_epoch = summary["best_epoch"]
    result.best_test_recall_at_1 = summary["recall_at_1"]
    return result


def run_all(variants: list[str], seeds: list[int], epochs: int, mining: str) -> dict[str, list[RunResult]]:
    results: dict[str, list[RunResult]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="shadow_vs_triplet-") as tmp:
        for seed in seeds:
            for name in variants:
                started = time.perf_counter()
                result = train_one(name, seed, epochs, mining, Path(tmp))
                results[name].append(result)
                log_progress(
                    f"{name:<10} seed {seed}: final Recall@1 {result.final_recall:.4f}, "
                    f"95% at epoch {result.epochs_to_target}, {time.perf_counter() - started:.1f} s"
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
                fmt([r.silhouette for r in runs]),
                fmt([r.seconds_per_epoch for r in runs], digits=2),
            ]
        )
    return markdown_table(header, rows)


def ratio_table(results: dict[str, list[RunResult]]) -> str | None:
    if BASELINE not in results:
        return None
    baseline = results[BASELINE]
    rows = []
    for name in (n for n in SHADOW_VARIANTS if n in results):
        runs = results[name]
        epochs_b, epochs_s = [r.epochs_to_target for r in baseline], [r.epochs_to_target for r in runs]
        rows.append(
            [
                f"{BASELINE} / {name}",
                f"{ratio_of_means(epochs_b, epochs_s):.2f}",
                fmt(paired_ratios(epochs_b, epochs_s), digits=2),
                f"{max_curve_gap(baseline, runs):.4f}",
            ]
        )
    header = [
        "epochs to 95% of final",
        "ratio of means",
        "per-seed ratio (mean ± std)",
        "max abs. R@1 gap (any seed, epoch)",
    ]
    return markdown_table(header, rows)


def report(results: dict[str, list[RunResult]], epochs: int, seeds: list[int], mining: str) -> str:
    margin = run_config(None, seeds[0], epochs, mining).margin
    title = (
        f"Shadow vs cosine triplet on digits (quick-start config, mining={mining}, margin={margin}, "
        f"{epochs} epochs, seeds {seeds[0]}..{seeds[-1]}; mean ± std over {len(seeds)} seeds; "
        "Recall@1 on the unseen test digits after each epoch)"
    )
    parts = [title, "", results_table(results, epochs)]
    ratios = ratio_table(results)
    if ratios:
        ratio_note = (
            "Ratio > 1: Shadow reaches 95% of its final Recall@1 in fewer epochs than triplet (the paper claims 1.5-2)."
        )
        parts += ["", ratios, "", ratio_note]
    notes = (
        "silhouette: cosine, test digits, the best-on-validation checkpoint (the run's summary); "
        "s / epoch: median epoch wall time of each run, without the per-epoch test evaluation."
    )
    parts.append(notes)
    return "\n".join(parts)


def write_json(path: Path, results: dict[str, list[RunResult]], args: argparse.Namespace, seeds: list[int]) -> None:
    payload = {
        "shared_config": run_config(None, seeds[0], args.epochs, args.mining).to_dict(),
        "variants": VARIANTS,
        "seeds": seeds,
        "target_fraction": TARGET_FRACTION,
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
    parser = benchmark_parser(
        "Recall@1 per epoch on digits for Shadow loss and a cosine triplet loss at the same mining.",
        seeds=5,
        epochs=15,
        threads="PyTorch, via torch.set_num_threads",
        json_out="every raw curve",
        quick="2 seeds x 4 epochs",
    )
    parser.add_argument(
        "--mining", choices=MINING_MODES, default="all", help="triplet mining for every loss (default all)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="losses to compare (default: all three)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = 2, 4
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    log_progress(
        f"{len(args.variants)} losses x {len(seeds)} seeds x {args.epochs} epochs, "
        f"mining={args.mining}, {torch.get_num_threads()} torch threads"
    )
    results = run_all(args.variants, seeds, args.epochs, args.mining)
    print(report(results, args.epochs, seeds, args.mining))
    if args.json:
        write_json(args.json, results, args, seeds)
        log_progress(f"raw curves written to {args.json}")


if __name__ == "__main__":
    main()
