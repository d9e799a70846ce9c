"""S2SD self-distillation against plain training: test Recall@1 on unseen classes at low embedding dimensions.

The claim under test (docs/methods.md §4; Roth et al., "Simultaneous Similarity-based Self-Distillation for
Deep Metric Learning", ICML 2021): training a low-dimensional embedding next to high-dimensional
auxiliary heads whose batch similarities it distills gives up to +7 points Recall@1 over the same
dimension trained alone, at a negligible training-time cost (the heads are dropped at export).

What it runs, per data set (``--datasets``, default ``glyphs digits``), target dimension (``--dims``,
default 16 32 64) and seed (0..N-1, ``--seeds``, default 3), all through the library
(``TrainConfig.from_sources`` + ``Trainer.fit``):

- methods (``--methods``), on top of the same base configuration:
    * ``plain``     no distillation: the target dimension trained alone;
    * ``dsd``       DSD, one auxiliary head of 1024 dims. The paper's DSD uses one 2048-d head; 1024 is
                    used here because on the tiny backbone (128 pooled features, 0.24 M parameters) a
                    2048-d head alone adds 4.5 M parameters and ~40% to a glyphs epoch over a 1024-d one,
                    and the 2048-d head is still exercised by MSD;
    * ``msd``       MSD, heads 512, 1024, 1536, 2048 (the paper's and the official code's default);
    * ``msdf``      MSD + feature distillation (the normalized, detached pooled features as one more
                    teacher), switched on after about one epoch of iterations (``feature_distill_delay``
                    = the run's steps per epoch, at most half the run so that a 1-epoch ``--quick`` run
                    still uses it), feature weight = distillation weight;
    * ``msd-w0``    (ablation, not in the defaults) MSD's four heads and their losses without the
                    similarity distillation (w = 0): the heads' losses also train the shared backbone,
                    and this separates that effect from the distillation's;
    * each S2SD method at two distillation weights w: ``dsd`` / ``msd`` / ``msdf`` at w = 50 (the paper's
      and the library's default) and ``dsd-w1`` / ``msd-w1`` / ``msdf-w1`` at w = 1. On digits with
      Shadow loss on raw projections (``normalize: False``, the quick-start setting) w = 50 was seen to
      swamp Shadow's loss scale (the KL term is computed on normalized embeddings, Shadow on raw ones)
      and cost the 16-d student 8-14 points of Recall@1, while w = 1 helped MAP@R; both are measured.
      Temperature T = 1 everywhere (the paper's default);
- default methods: the seven above (all but the ablation) on digits; on glyphs ``plain dsd msd msdf
  msd-w1`` (the w = 1 variants of DSD and MSDF are cut there to keep the whole benchmark near 30 minutes
  on 2 CPU cores; they cost about 7 more minutes at 2 glyphs epochs:
  ``--methods plain dsd msd msdf dsd-w1 msd-w1 msdf-w1``);
- base configuration: the quick start's (``edgedml.cli.quickstart.QUICKSTART``): tiny backbone, 32 px,
  Shadow loss with ``normalize: False`` and batch-all mining (margin 0.2), AdamW at 1e-3 with a cosine
  schedule over each run's steps; the dimension is the benchmark's target dim. Per data set:
    * ``glyphs`` (142 training classes, ~48 training images each: the many-class set): batch 64 =
      32 classes x 2 images (the paper's own batches on SOP hold 2 images per class, and a batch of many
      classes gives the similarity matrices the most structure to distill), ``crop_scale`` 1.0 (the set
      carries its own rotation / scale / shift copies; crops cut accents off), 32 px;
    * ``digits`` (5 training classes, ~145 images each): the quick start unchanged, batch 60 = 5 x 12,
      the library's crop_scale 0.6;
- the same number of epochs for every method of a data set: ``--epochs-glyphs`` (default 2) and
  ``--epochs-digits`` (default 12, the quick start's). A glyphs epoch is ~4 s of training steps plain
  and ~9 s with the four MSD heads, plus ~9 s per run of evaluations (untrained and final test, 7,000
  images); 2 glyphs epochs is what fits the 30-minute budget (the paper trains for 150 epochs, so this is
  the short-schedule regime of an edge device, not the paper's);
- a seed fixes the validation split, the base model's initial weights (the auxiliary heads are built
  after the model, from the same seeded generator, so they do not shift it), the batch order and the
  augmentations: the methods of one seed start from the same base weights and see the same batches,
  and comparisons are paired by seed.

Reported per data set and dimension (mean ± std over seeds): test Recall@1 and MAP@R of the
best-on-validation checkpoint (the run's ``summary.json``); the best epoch; training seconds per epoch
(summary ``wall_s`` / epochs: the training steps only, without data loading and evaluation; the median
over seeds) and its ratio to plain at the same dimension; peak memory of one training step as predicted
by the memory planner (``StepTracer(config, input_size).estimate(batch_size).peak``, traced on fake
tensors, within ~2% of a traced real CPU step: parameters, gradients, AdamW state and activations; the
heads' parameters and optimizer state dominate it here) and its ratio to plain; the parameters exported
(the base model, what inference runs) and trained (with the heads). Then one verdict table per data set
for the claim "S2SD (each method) beats plain at the same dim": the paired Recall@1 difference in points
(mean ± std of the per-seed differences), the same for MAP@R, the seeds on which S2SD wins, the noise
level max(seed std of S2SD, seed std of plain, std of the paired Δ), and a verdict: "within noise" when
|Δ| <= noise, else "holds" (Δ > 0) or "does not hold" (Δ < 0); with one seed the verdict is the sign.
Then the largest mean gain observed against the paper's "up to +7", and a cost table per method (median
over dims of the per-dim ratios to plain) against "negligible training-time cost" (taken as <= 1.10x).

Run (from the repository root; ~28 minutes on 2 CPU cores with nothing else running):

    python benchmarks/s2sd.py                                  # glyphs + digits, dims 16 32 64, 3 seeds
    python benchmarks/s2sd.py --datasets digits --json s2sd.json
    python benchmarks/s2sd.py --datasets glyphs --methods plain msd msd-w1 --dims 32
    python benchmarks/s2sd.py --quick                          # smoke run: 1 seed, 1 epoch, dim 16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from benchmark_tools import (
    Comparison,
    benchmark_parser,
    compare,
    fit_outcome,
    log_progress,
    markdown_table,
    noise_note,
    positive_int,
    total_time_line,
    write_json_file,
)
from benchmark_tools import (
    fmt_mean_std as fmt,
)

from edgedml.budget.planner import StepTracer
from edgedml.cli.quickstart import QUICKSTART
from edgedml.config import TrainConfig
from edgedml.data import prepare_data
from edgedml.training import Trainer

MIB = 2**20
PAPER_GAIN = 7.0  # points of Recall@1, the paper's "up to +7"
NEGLIGIBLE = 1.10  # a training-time ratio to plain at most this counts as negligible


@dataclass(frozen=True)
class DataSpec:
    overrides: dict[str, Any]  # on top of QUICKSTART
    default_epochs: int
    default_methods: tuple[str, ...]


@dataclass(frozen=True)
class Method:
    label: str
    aux_dims: str | None = None  # None: no distillation
    weight: float = 0.0
    feature: bool = False

    def overrides(self, feature_delay: int) -> dict[str, Any]:
        if self.aux_dims is None:
            return {"distill": "none"}
        extra: dict[str, Any] = {
            "distill": "s2sd",
            "aux_dims": self.aux_dims,
            "distill_weight": self.weight,
            "distill_temperature": 1.0,
        }
        if self.feature:
            extra.update(feature_distill=True, feature_distill_weight=self.weight, feature_distill_delay=feature_delay)
        return extra


_DEFAULTS = TrainConfig()
DSD_DIMS = "1024"
MSD_DIMS = "512,1024,1536,2048"
METHODS: dict[str, Method] = {
    "plain": Method("plain"),
    "dsd": Method("DSD w=50", DSD_DIMS, 50.0),
    "msd": Method("MSD w=50", MSD_DIMS, 50.0),
    "msdf": Method("MSDF w=50", MSD_DIMS, 50.0, feature=True),
    "dsd-w1": Method("DSD w=1", DSD_DIMS, 1.0),
    "msd-w1": Method("MSD w=1", MSD_DIMS, 1.0),
    # The library's defaults for --distill s2sd: its auxiliary heads and distillation weight.
    "s2sd": Method(f"S2SD defaults (w={_DEFAULTS.distill_weight:g})", _DEFAULTS.aux_dims, _DEFAULTS.distill_weight),
    "msdf-w1": Method("MSDF w=1", MSD_DIMS, 1.0, feature=True),
    # Ablation, not run by default: the four heads and their losses (which also train the shared backbone)
    # without the similarity distillation, to separate the distillation's effect from the heads' extra losses.
    "msd-w0": Method("MSD w=0", MSD_DIMS, 0.0),
}
PAPER_WEIGHT = 50.0
BASELINE = "plain"

DATASETS: dict[str, DataSpec] = {
    "glyphs": DataSpec(
        {"data": "glyphs", "batch_size": 64, "samples_per_class": 2, "crop_scale": 1.0, "input_size": 32},
        default_epochs=2,
        default_methods=("plain", "dsd", "msd", "msdf", "msd-w1"),
    ),
    "digits": DataSpec(
        {
            "data": "digits",
            "batch_size": QUICKSTART["batch_size"],
            "samples_per_class": QUICKSTART["samples_per_class"],
        },
        default_epochs=QUICKSTART["epochs"],
        default_methods=("plain", "dsd", "msd", "msdf", "dsd-w1", "msd-w1", "msdf-w1"),
    ),
}
DEFAULT_DIMS = (16, 32, 64)
FEATURE_DELAY_MAX_FRACTION = 0.5  # MSDF: one epoch of iterations, at most half the run


# ---- one training run -------------------------------------------------------------------
@dataclass
class RunResult:
    dataset: str
    method: str
    dim: int
    seed: int
    aux_dims: str
    distill_weight: float
    feature_delay: int  # MSDF: iterations before the feature distillation starts (-1: none)
    epochs: int
    iterations: int
    input_size: int
    recall_at_1: float = float("nan")
    map_at_r: float = float("nan")
    untrained_recall_at_1: float = float("nan")
    best_epoch: int = -1
    train_seconds: float = float("nan")  # summary's wall_s: the training steps only
    wall_seconds: float = float("nan")  # the whole fit, evaluations and checkpoints included
    parameters: int = 0  # the exported model
    parameters_training: int = 0  # with the auxiliary heads
    val_recall_at_1: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds / self.epochs


def steps_per_epoch(dataset: str, seed: int) -> int:
    """The trainer's steps per epoch at this seed's split (training images // batch size, at least 1)."""
    defaults = TrainConfig()
    splits = prepare_data(
        DATASETS[dataset].overrides["data"], defaults.train_classes, defaults.val_fraction, seed
    ).splits
    return max(1, len(splits.train) // DATASETS[dataset].overrides["batch_size"])


def feature_delay(steps: int, epochs: int) -> int:
    return min(steps, int(FEATURE_DELAY_MAX_FRACTION * steps * epochs))


def run_config(dataset: str, method: str, dim: int, seed: int, epochs: int, delay: int) -> TrainConfig:
    overrides = {
        **QUICKSTART,
        **DATASETS[dataset].overrides,
        **METHODS[method].overrides(delay),
        "dim": dim,
        "epochs": epochs,
        "seed": seed,
    }
    return TrainConfig.from_sources(overrides=overrides)


def train_one(dataset: str, method: str, dim: int, seed: int, epochs: int, delay: int, workdir: Path) -> RunResult:
    started = time.perf_counter()
    config = run_config(dataset, method, dim, seed, epochs, delay)
    trainer = Trainer(config, workdir / f"{dataset}-{method}-{dim}d-seed{seed}")
    summary = trainer.fit(overwrite=True)
    wall = time.perf_counter() - started
    spec = METHODS[method]
    return RunResult(
        dataset=dataset,
        method=method,
        dim=dim,
        seed=seed,
        aux_dims=spec.aux_dims or "",
        distill_weight=spec.weight,
        feature_delay=delay if spec.feature else -1,
        epochs=summary["epochs"],
        iterations=summary["epochs"] * trainer.steps_per_epoch,
        input_size=trainer.config.input_size,
        parameters=summary["parameters"],
        parameters_training=summary["parameters_training"],
        **fit_outcome(summary, trainer.run.metrics, wall),
    )


def predicted_peak(dataset: str, method: str, dim: int, epochs: int, input_size: int) -> int:
    """The planner's predicted peak bytes of one training step (seed-independent; MSDF planned with its feature
    term)."""
    config = run_config(dataset, method, dim, 0, epochs, 0)
    return StepTracer(config, input_size).estimate(config.batch_size).peak


# Results: dataset -> method -> dim -> runs (seed order)
Results = dict[str, dict[str, dict[int, list[RunResult]]]]
Peaks = dict[str, dict[str, dict[int, int]]]


def run_all(
    plan: dict[str, list[str]], dims: list[int], seeds: list[int], epochs: dict[str, int]
) -> tuple[Results, Peaks]:
    results: Results = {d: {m: {dim: [] for dim in dims} for m in methods} for d, methods in plan.items()}
    total_runs = sum(len(methods) for methods in plan.values()) * len(dims) * len(seeds)
    done = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="s2sd-") as tmp:
        for dataset, methods in plan.items():
            for seed in seeds:
                steps = steps_per_epoch(dataset, seed)
                delay = feature_delay(steps, epochs[dataset])
                for dim in dims:
                    for method in methods:
                        result = train_one(dataset, method, dim, seed, epochs[dataset], delay, Path(tmp))
                        results[dataset][method][dim].append(result)
                        done += 1
                        elapsed = time.perf_counter() - started
                        log_progress(
                            f"[{done}/{total_runs}] {dataset:<6} {METHODS[method].label:<10} {dim:>3}-d seed {seed}: "
                            f"test R@1 {result.recall_at_1:.4f} MAP@R {result.map_at_r:.4f}, best epoch "
                            f"{result.best_epoch}/{result.epochs}, {result.seconds_per_epoch:.2f} s/epoch, "
                            f"{result.wall_seconds:.1f} s run, {elapsed / 60:.1f} min elapsed"
                        )
    peaks: Peaks = {}
    for dataset, methods in plan.items():
        peaks[dataset] = {
            m: {
                dim: predicted_peak(dataset, m, dim, epochs[dataset], results[dataset][m][dim][0].input_size)
                for dim in dims
            }
            for m in methods
        }
        log_progress(f"{dataset}: predicted peaks traced")
    return results, peaks


# ---- statistics --------------------------------------------------------------------------
def median_seconds_per_epoch(runs: list[RunResult]) -> float:
    return statistics.median(r.seconds_per_epoch for r in runs)


# (method, dim) -> the claim "the method beats plain at this dim" (A = the method, B = plain), in run order
Comparisons = dict[tuple[str, int], Comparison]


def comparisons(runs: dict[str, dict[int, list[RunResult]]]) -> Comparisons:
    if BASELINE not in runs:
        return {}
    out: Comparisons = {}
    for method, by_dim in runs.items():
        if method == BASELINE:
            continue
        for dim, results in by_dim.items():
            if results and runs[BASELINE][dim]:
                out[(method, dim)] = compare(results, runs[BASELINE][dim])
    return out


# ---- report -------------------------------------------------------------------------------
def heads_text(method: str) -> str:
    spec = METHODS[method]
    if spec.aux_dims is None:
        return "none"
    return spec.aux_dims + (" + features" if spec.feature else "")


def results_table(runs: dict[str, dict[int, list[RunResult]]], peaks: dict[str, dict[int, int]]) -> str:
    header = [
        "dim",
        "method",
        "aux heads",
        "test R@1 (%)",
        "test MAP@R (%)",
        "best epoch",
        "train s / epoch (× plain)",
        "predicted peak MiB (× plain)",
        "parameters exported / training",
    ]
    dims = sorted({dim for by_dim in runs.values() for dim in by_dim})
    rows = []
    for dim in dims:
        base = runs.get(BASELINE, {}).get(dim) or []
        base_seconds = median_seconds_per_epoch(base) if base else float("nan")
        base_peak = peaks.get(BASELINE, {}).get(dim, 0)
        for method, by_dim in runs.items():
            results = by_dim.get(dim) or []
            if not results:
                continue
            seconds = median_seconds_per_epoch(results)
            peak = peaks[method][dim]
            first = results[0]
            rows.append(
                [
                    str(dim),
                    METHODS[method].label,
                    heads_text(method),
                    fmt([r.recall_at_1 for r in results], scale=100),
                    fmt([r.map_at_r for r in results], scale=100),
                    fmt([float(r.best_epoch) for r in results], digits=1),
                    f"{seconds:.2f} ({seconds / base_seconds:.2f}×)",
                    f"{peak / MIB:.0f} ({peak / base_peak:.2f}×)" if base_peak else f"{peak / MIB:.0f}",
                    f"{first.parameters / 1e6:.3f} M / {first.parameters_training / 1e6:.3f} M",
                ]
            )
    return markdown_table(header, rows)


def verdict_table(comps: Comparisons) -> str:
    header = [
        "claim",
        "Δ R@1 (points, mean ± std)",
        "Δ MAP@R (points, mean ± std)",
        "seeds S2SD > plain",
        "noise (points)",
        "verdict",
    ]
    rows = [
        [
            f"{METHODS[method].label} beats plain at {dim}-d",
            fmt(c.deltas),
            fmt(c.map_deltas),
            f"{c.wins}/{len(c.deltas)}",
            f"{c.noise:.2f}",
            c.verdict,
        ]
        for (method, dim), c in sorted(comps.items(), key=lambda item: (list(METHODS).index(item[0][0]), item[0][1]))
    ]
    return markdown_table(header, rows)


def largest_gain_line(dataset: str, comps: Comparisons) -> str:
    def best_of(chosen: Comparisons) -> str:
        (method, dim), best = max(chosen.items(), key=lambda item: item[1].mean)
        return (
            f"{best.mean:+.2f} points ({METHODS[method].label}, {dim}-d, "
            f"{best.wins}/{len(best.deltas)} seeds, {best.verdict})"
        )

    best_delta, (best_method, best_dim) = max(
        ((d, key) for key, c in comps.items() for d in c.deltas), key=lambda pair: pair[0]
    )
    holds = sum(c.verdict == "holds" for c in comps.values())
    at_paper_weight = {key: c for key, c in comps.items() if METHODS[key[0]].weight == PAPER_WEIGHT}
    paper_text = f"; at the paper's w = {PAPER_WEIGHT:.0f}: {best_of(at_paper_weight)}" if at_paper_weight else ""
    return (
        f"Largest mean Recall@1 gain over plain on {dataset}: {best_of(comps)}{paper_text}; largest single-seed gain "
        f"{best_delta:+.2f} ({METHODS[best_method].label}, {best_dim}-d). The paper: up to "
        f"+{PAPER_GAIN:.0f}. The claim holds beyond noise in {holds} of {len(comps)} (method, dim) pairs."
    )


def cost_table(runs: dict[str, dict[int, list[RunResult]]], peaks: dict[str, dict[int, int]]) -> str | None:
    if BASELINE not in runs:
        return None
    rows = []
    for method, by_dim in runs.items():
        if method == BASELINE:
            continue
        time_ratios, peak_ratios, param_ratios = [], [], []
        for dim, results in by_dim.items():
            base = runs[BASELINE].get(dim)
            if not results or not base:
                continue
            time_ratios.append(median_seconds_per_epoch(results) / median_seconds_per_epoch(base))
            peak_ratios.append(peaks[method][dim] / peaks[BASELINE][dim])
            param_ratios.append(results[0].parameters_training / results[0].parameters)
        if not time_ratios:
            continue
        ratio = statistics.median(time_ratios)
        rows.append(
            [
                METHODS[method].label,
                f"{ratio:.2f}× ({min(time_ratios):.2f}-{max(time_ratios):.2f})",
                f"{statistics.median(peak_ratios):.2f}×",
                f"{statistics.median(param_ratios):.1f}×",
                "holds" if ratio <= NEGLIGIBLE else "does not hold",
            ]
        )
    if not rows:
        return None
    header = [
        "method",
        "train s / epoch vs plain (median over dims; range)",
        "predicted peak vs plain",
        "parameters trained / exported",
        f'"negligible training-time cost" (<= {NEGLIGIBLE:.2f}×)',
    ]
    return markdown_table(header, rows)


def report(results: Results, peaks: Peaks, epochs: dict[str, int], seeds: list[int]) -> str:
    parts = []
    for dataset, runs in results.items():
        spec = DATASETS[dataset]
        first = next((r for by_dim in runs.values() for rs in by_dim.values() for r in rs), None)
        iterations = f", {first.iterations} iterations" if first else ""
        delays = sorted(
            {r.feature_delay for by_dim in runs.values() for rs in by_dim.values() for r in rs if r.feature_delay >= 0}
        )
        delay_text = f", MSDF features after {'/'.join(map(str, delays))} iterations" if delays else ""
        batch, k = spec.overrides["batch_size"], spec.overrides["samples_per_class"]
        crop = spec.overrides.get("crop_scale", "library default 0.6")
        title = (
            f"## {dataset}: {epochs[dataset]} epoch(s) for every method{iterations}, seeds {seeds[0]}..{seeds[-1]} "
            f"(mean ± std over {len(seeds)} seed(s)); quick-start base: tiny backbone, 32 px, Shadow (normalize False, "
            f"mining {QUICKSTART['mining']}), batch {batch} ({batch // k} x {k}), crop_scale {crop}, T = 1{delay_text}"
        )
        parts += [title, "", results_table(runs, peaks[dataset]), ""]
        comps = comparisons(runs)
        if comps:
            parts += [
                f"Claim on {dataset}: S2SD beats plain at the same dim (Δ = S2SD minus plain, paired by seed):",
                "",
                verdict_table(comps),
                "",
                largest_gain_line(dataset, comps),
                "",
            ]
        costs = cost_table(runs, peaks[dataset])
        if costs:
            parts += [f"Training cost on {dataset} (ratios to plain at the same dim):", "", costs, ""]
    parts.append(
        "test R@1 / MAP@R: unseen test classes, best-on-validation checkpoint (summary.json); best epoch: 1-based, "
        "chosen on validation Recall@1; train s / epoch: summary wall_s / epochs (training steps only, no data "
        "loading or evaluation), median over seeds; predicted peak: the memory planner's StepTracer estimate of one "
        "training step's peak (fake-tensor trace, within ~2% of a traced real CPU step), the same for every seed; "
        "parameters exported: the "
        "base model kept at export, training: with the auxiliary heads. " + noise_note("S2SD", "plain", len(seeds))
    )
    return "\n".join(parts)


def write_json(
    path: Path, results: Results, peaks: Peaks, epochs: dict[str, int], seeds: list[int], total_s: float
) -> None:
    payload = {
        "base": QUICKSTART,
        "datasets": {d: {**asdict(DATASETS[d]), "epochs": epochs[d]} for d in results},
        "methods": {name: asdict(m) for name, m in METHODS.items()},
        "seeds": seeds,
        "total_seconds": total_s,
        "predicted_peak_bytes": {
            d: {m: {str(dim): b for dim, b in by_dim.items()} for m, by_dim in p.items()} for d, p in peaks.items()
        },
        "runs": {
            dataset: {
                method: {
                    str(dim): [{**asdict(r), "seconds_per_epoch": r.seconds_per_epoch} for r in rs]
                    for dim, rs in by_dim.items()
                }
                for method, by_dim in runs.items()
            }
            for dataset, runs in results.items()
        },
        "comparisons": {
            dataset: [{"method": method, "dim": dim, **c.to_dict()} for (method, dim), c in comparisons(runs).items()]
            for dataset, runs in results.items()
        },
    }
    write_json_file(path, "s2sd", payload)


# ---- command line -------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(
        "Test Recall@1 of low-dimensional embeddings: plain training against S2SD (DSD / MSD / MSDF).",
        datasets=list(DATASETS),
        seeds=3,
        threads="PyTorch, via torch.set_num_threads",
        json_out="every run's numbers",
        quick="1 seed, 1 epoch, dim 16 (unless --dims)",
    )
    parser.add_argument(
        "--dims",
        nargs="+",
        type=positive_int,
        default=None,
        help="target embedding dimensions (default: 16 32 64; --quick: 16)",
    )
    parser.add_argument(
        "--epochs-glyphs",
        type=positive_int,
        default=None,
        help=f"epochs of every glyphs run (default {DATASETS['glyphs'].default_epochs})",
    )
    parser.add_argument(
        "--epochs-digits",
        type=positive_int,
        default=None,
        help=f"epochs of every digits run (default {DATASETS['digits'].default_epochs})",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=None,
        help="methods for every data set (default: digits plain and the six S2SD variants; "
        "glyphs plain dsd msd msdf msd-w1; msd-w0 is an ablation)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs_glyphs, args.epochs_digits = 1, 1, 1
        args.dims = args.dims or [16]
    args.dims = args.dims or list(DEFAULT_DIMS)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    given = {"glyphs": args.epochs_glyphs, "digits": args.epochs_digits}
    epochs = {d: given[d] or DATASETS[d].default_epochs for d in args.datasets}
    plan = {d: list(args.methods or DATASETS[d].default_methods) for d in args.datasets}
    for methods in plan.values():  # the baseline first: every comparison needs it
        methods.sort(key=lambda m: m != BASELINE)
    log_progress(
        "; ".join(f"{d}: {epochs[d]} epoch(s), methods {' '.join(plan[d])}" for d in args.datasets)
        + f"; dims {' '.join(map(str, args.dims))}; {len(seeds)} seed(s); {torch.get_num_threads()} torch threads"
    )
    started = time.perf_counter()
    results, peaks = run_all(plan, sorted(set(args.dims)), seeds, epochs)
    total = time.perf_counter() - started
    if args.json:  # first: the raw numbers survive whatever happens to the report
        write_json(args.json, results, peaks, epochs, seeds, total)
        log_progress(f"raw numbers written to {args.json}")
    print(report(results, peaks, epochs, seeds))
    print(total_time_line(total))


if __name__ == "__main__":
    main()
