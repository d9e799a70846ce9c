"""Small batches with a cross-batch memory against an 8x larger batch without one: test Recall@1 on unseen classes.

The claims under test (docs/methods.md §2-3; XBM, Wang et al. 2020; XBN; AXBN):

1. a memory at a small batch beats no memory at an 8x larger batch;
2. XBN (stored embeddings moved to the current batch's moments) beats plain XBM;
3. AXBN (Kalman-filtered moments) edges XBN at small batches.

What it runs, per data set (``--datasets``, default ``glyphs digits``) and seed (0..N-1):

- five configurations, trained through the library (``TrainConfig.from_sources`` + ``Trainer.fit``):
    * ``none@16``   batch 16, no memory (the control that isolates the memory's own effect);
    * ``xbm@16``    batch 16, XBM;
    * ``xbn@16``    batch 16, XBN;
    * ``axbn@16``   batch 16, AXBN with the library's defaults (q, r, p0, gain interval: docs/methods.md §3);
    * ``axbn-q1@16`` (not in the defaults) AXBN at the former default q = 1, r = 0.01, whose Kalman gain
      0.9994 makes it XBN;
    * ``none@128``  batch 128, no memory;
- batches of P classes x K images:
    * ``glyphs`` (142 training classes, ~48 training images each): K = 2 at both sizes, so batch 16
      holds 8 classes and batch 128 holds 64 (the many-classes / few-images regime of Stanford Online
      Products, where a batch sees a small share of the classes);
    * ``digits`` (5 training classes, ~145 images each, "for contrast"): K = 2 is impossible there
      (batch 16 would need 8 classes), and no single K gives both sizes at least 2 and at most 5 classes,
      so P = 4 is kept instead: 4 x 4 at batch 16 and 4 x 32 at batch 128. Every batch already sees
      nearly every class, the regime where a memory should matter least;
- the same number of epochs for every configuration of a data set (``--epochs``; default 10 on glyphs
  and 15 on digits, chosen to keep the whole benchmark near 25 minutes on 2 CPU cores), so batch 16
  takes 8x more optimizer steps than batch 128, at the same peak learning rate (1e-3, AdamW, cosine
  schedule over each run's own steps). ``none@16`` versus ``none@128`` shows what the extra steps
  alone are worth; claim 1 is judged on the raw comparison, as the papers state it;
- the tiny backbone, 32 px input, 64-d embeddings, Shadow loss with ``normalize: True`` (margin 0.2).
  With unit vectors Shadow is exactly a cosine triplet hinge, which is what the XBM / XBN / AXBN papers
  use: the memory then stores L2-normalized embeddings and XBN / AXBN adapt those normalized vectors and
  compare by cosine (docs/methods.md §3). (The quick start's ``normalize: False`` would make the memory hold
  raw projections, whose norms XBN's per-dimension affine map would also change: not the papers' setting);
- the same mining for all five configurations, ``hard`` (batch-hard: each anchor's farthest positive and
  nearest negative, in the batch and, with a memory on, in the memory). The library default would pick
  ``hard`` for the memory runs and ``all`` for the others, mixing a mining change into the comparison;
  ``--mining default`` restores that, ``--mining all|semihard`` forces another mode on all five;
- augmentation: glyphs ``crop_scale`` 1.0 (the set carries its own rotation / scale / shift copies and
  random crops cut accents off), digits the library's 0.6;
- memory: ``memory_size`` 1.0, a ring buffer as large as the training split (R_M = 1, the papers' main
  setting: XBM's SOP / In-shop memories are about the training-set size; it is also where stored
  embeddings are the oldest, i.e. where XBN's drift correction should matter most). fp32 storage, the
  batch loss kept next to the memory loss with weight 1 (``memory_batch_loss`` / ``memory_weight``
  defaults, as in the official XBM). Warm-up: one epoch of batch-16 iterations, but at most a quarter of
  the run (so ``--quick`` still uses its memory); the table states how many iterations used the memory;
- seeds 0..N-1 (``--seeds``, default 3). A seed fixes the initial weights, the validation split and the
  batch order, so the five configurations of one seed start from the same weights and comparisons are
  paired by seed.

Reported per configuration (mean ± std over seeds): test Recall@1 and MAP@R of the best-on-validation
checkpoint (the run's ``summary.json``), the untrained model's test Recall@1 (``untrained_recall_at_1``),
the best epoch, the iterations with the memory active, and wall seconds per run (whole ``fit``: untrained
evaluation, training, per-epoch validation, checkpoints, final test evaluation). Then one verdict table
per data set: for each claim the Recall@1 difference A − B in points (mean ± std of the per-seed paired
differences), the seeds on which A wins, and a verdict: "within noise" when |Δ| is at most the noise
level, max(seed std of A, seed std of B, std of the paired Δ), else "holds" (Δ > 0) or "does not hold"
(Δ < 0). With one seed there is no noise estimate and the verdict is the sign alone. A second table gives
the controls: each memory against ``none@16``, and ``none@16`` against ``none@128``.

Run (from the repository root; about 25 minutes on 2 CPU cores, nothing else running):

    python benchmarks/small_batch.py                             # glyphs + digits, 3 seeds
    python benchmarks/small_batch.py --datasets glyphs --json small_batch.json
    python benchmarks/small_batch.py --quick                     # smoke run: 1 seed, 1 epoch
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from benchmark_tools import (
    benchmark_parser,
    compare,
    fit_outcome,
    log_progress,
    markdown_table,
    noise_note,
    total_time_line,
    write_json_file,
)
from benchmark_tools import (
    fmt_mean_std as fmt,
)

from edgedml.config import MINING_MODES, TrainConfig
from edgedml.data import prepare_data
from edgedml.training import Trainer

# Everything the five configurations share (the data set adds its own part, the configuration its batch and memory).
SHARED: dict[str, Any] = {
    "backbone": "tiny",
    "input_size": 32,
    "dim": 64,
    "loss": "shadow",
    "normalize": True,
    "margin": 0.2,
    "lr": 1e-3,
    "optimizer": "adamw",
    "scheduler": "cosine",
    "memory_size": 1.0,
    "memory_storage": "fp32",
    "memory_weight": 1.0,
    "memory_batch_loss": True,
    "device": "auto",
}


@dataclass(frozen=True)
class DataSpec:
    overrides: dict[str, Any]
    samples_per_class: dict[int, int]  # batch size -> K
    default_epochs: int


DATASETS: dict[str, DataSpec] = {
    "glyphs": DataSpec({"data": "glyphs", "crop_scale": 1.0}, {16: 2, 128: 2}, default_epochs=10),
    "digits": DataSpec({"data": "digits", "crop_scale": 0.6}, {16: 4, 128: 32}, default_epochs=15),
}

# name -> (batch size, memory kind)
CONFIGS: dict[str, tuple[int, str]] = {
    "none@16": (16, "none"),
    "xbm@16": (16, "xbm"),
    "xbn@16": (16, "xbn"),
    "axbn@16": (16, "axbn"),
    "none@128": (128, "none"),
    "axbn-q1@16": (16, "axbn"),  # not in the defaults: AXBN at the former q = 1, whose gain 0.9994 makes it XBN
}
DEFAULT_CONFIGS = ("none@16", "xbm@16", "xbn@16", "axbn@16", "none@128")
# Per-config options on top of the library's defaults.
CONFIG_OVERRIDES: dict[str, dict[str, float]] = {"axbn-q1@16": {"axbn_q": 1.0}}
SMALL_BATCH = 16
WARMUP_MAX_FRACTION = 0.25  # warm-up: one epoch of batch-16 iterations, at most this share of the run

# (A, B, claim): the papers' claims, judged on Recall@1(A) - Recall@1(B)
CLAIMS: list[tuple[str, str, str]] = [
    ("xbm@16", "none@128", "memory@16 beats none@128 (XBM)"),
    ("xbn@16", "none@128", "memory@16 beats none@128 (XBN)"),
    ("axbn@16", "none@128", "memory@16 beats none@128 (AXBN)"),
    ("xbn@16", "xbm@16", "XBN beats XBM"),
    ("axbn@16", "xbn@16", "AXBN edges XBN"),
]
CONTROLS: list[tuple[str, str, str]] = [
    ("xbm@16", "none@16", "XBM helps at batch 16"),
    ("xbn@16", "none@16", "XBN helps at batch 16"),
    ("axbn@16", "none@16", "AXBN helps at batch 16"),
    ("none@16", "none@128", "batch 16 (8x steps) beats batch 128, no memory"),
]


# ---- one training run -------------------------------------------------------------------
@dataclass
class RunResult:
    dataset: str
    config: str
    seed: int
    batch_size: int
    samples_per_class: int
    memory: str
    mining: str
    epochs: int
    iterations: int
    memory_warmup: int
    memory_slots: int
    recall_at_1: float = float("nan")
    map_at_r: float = float("nan")
    untrained_recall_at_1: float = float("nan")
    untrained_map_at_r: float = float("nan")
    best_epoch: int = -1
    train_seconds: float = float("nan")  # summary's wall_s: the training steps only
    wall_seconds: float = float("nan")  # the whole fit, evaluations and checkpoints included
    val_recall_at_1: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)

    @property
    def memory_iterations(self) -> int:
        return 0 if self.memory == "none" else max(0, self.iterations - self.memory_warmup)


def split_sizes(dataset: str, seed: int) -> tuple[int, int]:
    """(training images, validation images) of the data set's split at this seed (splits use library defaults)."""
    defaults = TrainConfig()
    splits = prepare_data(
        DATASETS[dataset].overrides["data"], defaults.train_classes, defaults.val_fraction, seed
    ).splits
    return len(splits.train), len(splits.val)


def warmup_iterations(train_images: int, epochs: int) -> int:
    """One epoch of batch-16 iterations, at most a quarter of the batch-16 run."""
    steps_per_epoch = max(1, train_images // SMALL_BATCH)
    return min(steps_per_epoch, int(WARMUP_MAX_FRACTION * epochs * steps_per_epoch))


def run_config(dataset: str, config: str, seed: int, epochs: int, mining: str, warmup: int) -> TrainConfig:
    batch_size, memory = CONFIGS[config]
    spec = DATASETS[dataset]
    overrides = {
        **SHARED,
        **spec.overrides,
        "batch_size": batch_size,
        "samples_per_class": spec.samples_per_class[batch_size],
        "memory": memory,
        "memory_warmup": warmup,
        "mining": None if mining == "default" else mining,
        "epochs": epochs,
        "seed": seed,
        **CONFIG_OVERRIDES.get(config, {}),
    }
    return TrainConfig.from_sources(overrides=overrides)


def train_one(
    dataset: str, config_name: str, seed: int, epochs: int, mining: str, train_images: int, workdir: Path
) -> RunResult:
    warmup = warmup_iterations(train_images, epochs)
    started = time.perf_counter()
    config = run_config(dataset, config_name, seed, epochs, mining, warmup)
    trainer = Trainer(config, workdir / f"{dataset}-{config_name.replace('@', '-')}-seed{seed}")
    iterations = epochs * trainer.steps_per_epoch
    if config.memory != "none" and warmup >= iterations:
        raise SystemExit(
            f"{dataset} {config_name}: warm-up {warmup} >= {iterations} iterations, the memory would never be used"
        )
    memory = getattr(trainer.loss_fn, "memory", None)
    summary = trainer.fit(overwrite=True)
    wall = time.perf_counter() - started
    return RunResult(
        dataset=dataset,
        config=config_name,
        seed=seed,
        batch_size=config.batch_size,
        samples_per_class=config.samples_per_class,
        memory=config.memory,
        mining=str(config.mining),
        epochs=epochs,
        iterations=iterations,
        memory_warmup=warmup if config.memory != "none" else 0,
        memory_slots=memory.size if memory is not None else 0,
        untrained_map_at_r=summary["untrained_map_at_r"],
        **fit_outcome(summary, trainer.run.metrics, wall),
    )


def run_all(
    datasets: list[str], configs: list[str], seeds: list[int], epochs: dict[str, int], mining: str
) -> dict[str, dict[str, list[RunResult]]]:
    results: dict[str, dict[str, list[RunResult]]] = {d: {c: [] for c in configs} for d in datasets}
    total_runs = len(datasets) * len(configs) * len(seeds)
    done = 0
    with tempfile.TemporaryDirectory(prefix="small_batch-") as tmp:
        for dataset in datasets:
            for seed in seeds:
                train_images, _ = split_sizes(dataset, seed)
                for name in configs:
                    result = train_one(dataset, name, seed, epochs[dataset], mining, train_images, Path(tmp))
                    results[dataset][name].append(result)
                    done += 1
                    log_progress(
                        f"[{done}/{total_runs}] {dataset:<6} {name:<8} seed {seed}: test R@1 {result.recall_at_1:.4f} "
                        f"MAP@R {result.map_at_r:.4f} (untrained {result.untrained_recall_at_1:.4f}), "
                        f"best epoch {result.best_epoch}/{result.epochs}, {result.iterations} it "
                        f"({result.memory_iterations} with memory), {result.wall_seconds:.1f} s"
                    )
    return results


# ---- report -------------------------------------------------------------------------------
def results_table(runs: dict[str, list[RunResult]]) -> str:
    header = [
        "config",
        "batch (P x K)",
        "memory (slots)",
        "mining",
        "iterations (with memory)",
        "test R@1 (%)",
        "test MAP@R (%)",
        "untrained R@1 (%)",
        "best epoch",
        "s / run",
    ]
    rows = []
    for name, results in runs.items():
        if not results:
            continue
        first = results[0]
        memory = "none" if first.memory == "none" else f"{first.memory} ({first.memory_slots})"
        rows.append(
            [
                name,
                f"{first.batch_size} ({first.batch_size // first.samples_per_class} x {first.samples_per_class})",
                memory,
                first.mining,
                f"{first.iterations} ({first.memory_iterations})",
                fmt([r.recall_at_1 for r in results], scale=100),
                fmt([r.map_at_r for r in results], scale=100),
                fmt([r.untrained_recall_at_1 for r in results], scale=100),
                fmt([float(r.best_epoch) for r in results], digits=1),
                fmt([r.wall_seconds for r in results], digits=1),
            ]
        )
    return markdown_table(header, rows)


def comparison_table(
    runs: dict[str, list[RunResult]], pairs: list[tuple[str, str, str]], first_column: str
) -> str | None:
    rows = []
    for a, b, claim in pairs:
        if not runs.get(a) or not runs.get(b):
            continue
        c = compare(runs[a], runs[b])
        rows.append(
            [
                claim,
                f"{a} − {b}",
                fmt(c.deltas),
                f"{c.wins}/{len(c.deltas)}",
                f"{c.noise:.2f}",
                c.verdict,
            ]
        )
    if not rows:
        return None
    header = [first_column, "A − B", "Δ R@1 (points, mean ± std)", "seeds A > B", "noise (points)", "verdict"]
    return markdown_table(header, rows)


def report(
    results: dict[str, dict[str, list[RunResult]]], epochs: dict[str, int], seeds: list[int], mining: str
) -> str:
    parts = []
    for dataset, runs in results.items():
        spec = DATASETS[dataset]
        title = (
            f"## {dataset}: {epochs[dataset]} epoch(s) for every config, seeds {seeds[0]}..{seeds[-1]} "
            f"(mean ± std over {len(seeds)} seed(s)); tiny backbone, 32 px, dim {SHARED['dim']}, Shadow "
            f"(normalize, margin {SHARED['margin']}), mining {mining}, crop_scale {spec.overrides['crop_scale']}, "
            f"memory_size {SHARED['memory_size']} of the training split, batch loss kept"
        )
        parts += [title, "", results_table(runs), ""]
        claims = comparison_table(runs, CLAIMS, "paper claim")
        if claims:
            parts += [f"Paper claims on {dataset} (Δ = test Recall@1 of A minus B, paired by seed):", "", claims, ""]
        controls = comparison_table(runs, CONTROLS, "control")
        if controls:
            parts += [f"Controls on {dataset}:", "", controls, ""]
    parts.append(
        "test R@1 / MAP@R: unseen test classes, best-on-validation checkpoint (summary.json); untrained R@1: the same "
        "test split before training; best epoch: 1-based, chosen on validation Recall@1; s / run: the whole fit "
        "(untrained and final test evaluation, training, per-epoch validation, checkpoints). "
        + noise_note("A", "B", len(seeds))
    )
    return "\n".join(parts)


def write_json(
    path: Path,
    results: dict[str, dict[str, list[RunResult]]],
    epochs: dict[str, int],
    seeds: list[int],
    mining: str,
    total_s: float,
) -> None:
    payload = {
        "shared": SHARED,
        "datasets": {d: {**asdict(DATASETS[d]), "epochs": epochs[d]} for d in results},
        "configs": {name: {"batch_size": b, "memory": m} for name, (b, m) in CONFIGS.items()},
        "mining": mining,
        "seeds": seeds,
        "total_seconds": total_s,
        "runs": {
            dataset: {
                name: [{**asdict(r), "memory_iterations": r.memory_iterations} for r in rs] for name, rs in runs.items()
            }
            for dataset, runs in results.items()
        },
        "comparisons": {
            dataset: [
                {"a": a, "b": b, "claim": claim, **compare(runs[a], runs[b]).to_dict()}
                for a, b, claim in CLAIMS + CONTROLS
                if runs.get(a) and runs.get(b)
            ]
            for dataset, runs in results.items()
        },
    }
    write_json_file(path, "small_batch", payload)


# ---- command line -------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(
        "Test Recall@1 at batch 16 with none / XBM / XBN / AXBN against batch 128 without a memory.",
        datasets=list(DATASETS),
        seeds=3,
        epochs=", ".join(f"{name} {spec.default_epochs}" for name, spec in DATASETS.items()),
        threads="PyTorch, via torch.set_num_threads",
        json_out="every run's numbers",
        quick="1 seed, 1 epoch",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=list(DEFAULT_CONFIGS),
        help="configurations to run (default: all but axbn-q1@16)",
    )
    parser.add_argument(
        "--mining",
        choices=[*MINING_MODES, "default"],
        default="hard",
        help="mining for every config (default hard; 'default': the library's, hard with a memory, else all)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = 1, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    epochs = {d: args.epochs or DATASETS[d].default_epochs for d in args.datasets}
    log_progress(
        f"{len(args.datasets)} data set(s) x {len(args.configs)} configs x {len(seeds)} seed(s), epochs "
        + ", ".join(f"{d} {e}" for d, e in epochs.items())
        + f", mining={args.mining}, {torch.get_num_threads()} torch threads"
    )
    started = time.perf_counter()
    results = run_all(args.datasets, args.configs, seeds, epochs, args.mining)
    total = time.perf_counter() - started
    print(report(results, epochs, seeds, args.mining))
    print(total_time_line(total))
    if args.json:
        write_json(args.json, results, epochs, seeds, args.mining, total)
        log_progress(f"raw numbers written to {args.json}")


if __name__ == "__main__":
    main()
