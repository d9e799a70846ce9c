"""Exported models against PyTorch eager on CPU: latency of onnxruntime fp32 / fp16 / int8, and what int8 costs in
Recall@1.

The claims under test (the export issue):

1. onnxruntime fp32 at batch 1 takes at most 0.7x the latency of PyTorch eager on CPU;
2. int8 (onnxruntime static quantization) keeps Recall@1 on digits' unseen classes within 1 point of fp32.

What it runs, per built-in backbone (``--backbones``, default ``tiny mobilenetv2 resnet18``), all through
the library:

- ``tiny`` (accuracy and latency): the quick start's digits run (``edgedml.cli.quickstart.QUICKSTART``
  through ``TrainConfig.from_sources`` + ``Trainer.fit`` on the CPU: Shadow loss on raw projections,
  batch-all mining, 64-d, batch 60 = 5 classes x 12, AdamW 1e-3 with a cosine schedule, 12 epochs,
  digits' default 32 px), trained on digits 0-4 and tested on the unseen digits 5-9;
- ``mobilenetv2`` and ``resnet18`` (latency only) at 128 px (``--input-size-large``; the README's example
  size for edge devices; 224 px makes the full setting far longer than 10 minutes on 2 cores), 64-d:
  untrained runs (the seeded initial weights written as a run directory, no training step). Latency
  does not depend on the weights, and a short from-scratch digits run does not give these two weights
  worth measuring accuracy on (two epochs of MobileNetV2 at 128 px took 90 s and reached Recall@1 0.25,
  chance level), so their Recall@1 is not reported;
- the agreed export API: ``export_onnx(run, half=True, int8=True)`` writes model.onnx, model.fp16.onnx and
  model.int8.onnx (dynamic batch; int8 calibrated on the run's own training images), each checked
  against PyTorch; for ``tiny`` with ``evaluate=True``, which reports each file's Recall@1 on the run's
  test split (the unseen classes); PyTorch's own Recall@1 is the run's ``summary.json`` (best weights,
  same split);
- latency with :mod:`edgedml.export.bench`'s primitives, the same the ``edgedml bench`` command uses:
  PyTorch eager (``TorchEmbedder``: ``inference_mode``, numpy in, numpy out) and onnxruntime
  (``OnnxRuntimeEmbedder``, CPUExecutionProvider, default graph optimizations = ORT_ENABLE_ALL) on the same
  seeded (batch, 3, S, S) float32 inputs, with the same thread count (``--threads``, default PyTorch's own
  default: ``torch.set_num_threads`` and onnxruntime's ``intra_op_num_threads``). Per batch size (1 / 8 / 32)
  each runtime gets ``--warmup`` untimed calls, then the runtimes are timed round-robin in ``--rounds``
  rounds (each round times every runtime in turn for about ``--seconds / --rounds``), so that machine drift
  (other processes, clock changes) falls on all of them alike. Every runtime gets at least 10 timed calls
  per batch size.

Reported: per backbone and batch, p50 / p90 / p99 latency (ms per call), images/s, and the p50 ratio
to PyTorch eager measured in the same run; per backbone, Recall@1 of PyTorch, fp32, fp16 and int8 and the
int8-minus-fp32 difference in points; then a verdict line per claim and backbone (MET / MISSED with the
numbers; the latency claim on p50 at batch 1, the accuracy claim as |int8 - fp32| <= 1 point).

Run (from the repository root; the full setting takes about 10 minutes on 2 CPU cores with nothing else
running):

    python benchmarks/export.py                          # tiny, mobilenetv2, resnet18; batches 1 8 32
    python benchmarks/export.py --threads 2 --json export-bench.json
    python benchmarks/export.py --backbones tiny --batches 1
    python benchmarks/export.py --quick                  # smoke run: 2 tiny epochs, 64 px, batches 1 8, short timing
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from benchmark_tools import benchmark_parser, log_progress, markdown_table

from edgedml.cli.quickstart import QUICKSTART
from edgedml.config import TrainConfig
from edgedml.export.bench import BatchTiming, bench_inputs, environment, time_calls, torch_threads, warm_up
from edgedml.export.onnx import export_onnx
from edgedml.export.runtime import Embedder, OnnxRuntimeEmbedder, TorchEmbedder
from edgedml.io import write_json, write_text
from edgedml.models import build_model
from edgedml.training import Trainer
from edgedml.training.checkpoint import MODEL, save_checkpoint, with_prefix
from edgedml.training.run import RunDir, config_hash

SPEEDUP_TARGET = 0.7  # onnxruntime fp32 p50 / PyTorch eager p50 at batch 1, at most
RECALL_TARGET = 1.0  # |int8 - fp32| Recall@1 in points, at most
BUSY_LOAD = 0.5  # a 1-minute load average above this before the run: something else is running
MIN_CALLS = 10  # timed calls per runtime and batch size, at least
PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu")  # int8: for TensorRT (S8S8); int8-cpu: U8S8 for onnxruntime on x86
EAGER = "torch eager"


@dataclass(frozen=True)
class BackboneSpec:
    input_size: int
    epochs: int  # 0: an untrained run, for latency only


FULL = {
    "tiny": BackboneSpec(32, QUICKSTART["epochs"]),
    "mobilenetv2": BackboneSpec(128, 0),
    "resnet18": BackboneSpec(128, 0),
}
QUICK = {"tiny": BackboneSpec(32, 2), "mobilenetv2": BackboneSpec(64, 0), "resnet18": BackboneSpec(64, 0)}


@dataclass
class BackboneResult:
    backbone: str
    input_size: int
    epochs: int
    train_seconds: float
    export_seconds: float
    parameters: int
    recall_at_1: dict[str, float | None]  # EAGER and each precision; None: not measured (an untrained run)
    file_sizes: dict[str, int]  # precision -> bytes
    timings: dict[str, list[BatchTiming]] = field(default_factory=dict)  # runtime label -> one per batch size

    def p50(self, label: str, batch: int) -> float:
        return next(t.p50_ms for t in self.timings[label] if t.batch == batch)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timings"] = {label: [asdict(t) for t in timings] for label, timings in self.timings.items()}
        return data


# ---- train and export ---------------------------------------------------------------------
def run_config(backbone: str, spec: BackboneSpec, seed: int) -> TrainConfig:
    overrides = {
        **QUICKSTART,
        "backbone": backbone,
        "input_size": spec.input_size,
        "epochs": max(spec.epochs, 1),
        "device": "cpu",
        "seed": seed,
    }
    return TrainConfig.from_sources(overrides=overrides)


def train(backbone: str, spec: BackboneSpec, seed: int, workdir: Path) -> tuple[Path, dict[str, Any], float]:
    run = workdir / backbone
    started = time.perf_counter()
    summary = Trainer(run_config(backbone, spec, seed), run).fit(overwrite=True)
    return run, summary, time.perf_counter() - started


def untrained_run(backbone: str, spec: BackboneSpec, seed: int, workdir: Path) -> tuple[Path, int]:
    """A run directory holding the seeded initial weights as ``best``: what export and TorchEmbedder read."""
    config = run_config(backbone, spec, seed)
    torch.manual_seed(seed)
    model = build_model(config.backbone, config.dim)
    run = RunDir(workdir / backbone)
    write_text(run.config, config.to_yaml())
    save_checkpoint(
        run.best,
        with_prefix(MODEL, model.state_dict()),
        {"config": config.to_dict(), "config_hash": config_hash(config), "epoch": 0},
    )
    return run.root, sum(p.numel() for p in model.parameters())


def export(run: Path, precisions: list[str], evaluate: bool):
    """Export the precisions asked for; returns (the main summary, precision -> ExportedFile, seconds).

    ``int8-cpu`` is a second int8 export with ``int8_for="cpu"`` (U8S8) into ``run/int8-cpu/``.
    """
    started = time.perf_counter()
    summary = export_onnx(run, half="fp16" in precisions, int8="int8" in precisions, evaluate=evaluate)
    files = dict(summary.files)
    if "int8-cpu" in precisions:
        cpu = export_onnx(run, out=run / "int8-cpu" / "model.onnx", int8=True, int8_for="cpu", evaluate=evaluate)
        files["int8-cpu"] = cpu.files["int8"]
    return summary, files, time.perf_counter() - started


# ---- latency ------------------------------------------------------------------------------
def open_runtimes(run: Path, files: dict[str, Path], threads: int) -> dict[str, Embedder]:
    embedders: dict[str, Embedder] = {EAGER: TorchEmbedder(run, device="cpu")}
    for precision, path in files.items():
        embedders[f"onnxruntime {precision}"] = OnnxRuntimeEmbedder(path, ["CPUExecutionProvider"], threads=threads)
    return embedders


def calls_per_round(embedder: Embedder, images, seconds: float, rounds: int) -> int:
    """Enough calls for ``seconds`` over ``rounds`` rounds (and MIN_CALLS in all), from one timed probe call."""
    (probe,) = time_calls(embedder, images, count=1)
    return max(math.ceil(MIN_CALLS / rounds), round(seconds / rounds / max(probe, 1e-6)))


def time_round_robin(
    embedders: dict[str, Embedder], batch: int, warmup: int, seconds: float, rounds: int
) -> dict[str, BatchTiming]:
    """Warm every runtime up, then time them in turn, ``rounds`` times, on the same inputs."""
    images = bench_inputs(next(iter(embedders.values())), batch)
    for embedder in embedders.values():
        warm_up(embedder, images, warmup)
    counts = {label: calls_per_round(e, images, seconds, rounds) for label, e in embedders.items()}
    samples: dict[str, list[float]] = {label: [] for label in embedders}
    for _ in range(rounds):
        for label, embedder in embedders.items():
            samples[label] += time_calls(embedder, images, count=counts[label])
    return {label: BatchTiming.from_seconds(batch, durations) for label, durations in samples.items()}


# ---- one backbone -------------------------------------------------------------------------
def run_backbone(backbone: str, spec: BackboneSpec, args: argparse.Namespace, workdir: Path) -> BackboneResult:
    trained = spec.epochs > 0
    if trained:
        run, summary, train_s = train(backbone, spec, args.seed, workdir)
        parameters, eager_recall = summary["parameters"], summary["recall_at_1"]
        log_progress(
            f"{backbone}: trained {spec.epochs} epoch(s) at {spec.input_size} px in {train_s:.0f} s, "
            f"test Recall@1 {eager_recall:.4f}"
        )
    else:
        (run, parameters), train_s, eager_recall = untrained_run(backbone, spec, args.seed, workdir), 0.0, None
    exported, exported_files, export_s = export(run, args.precisions, evaluate=trained)
    files = {p: Path(exported_files[p].path) for p in args.precisions}
    if exported.reference is not None:  # PyTorch on the same test images as the exported files
        eager_recall = exported.reference["recall_at_1"]
    recalls = {EAGER: eager_recall, **{p: exported_files[p].recall_at_1 for p in args.precisions}}
    log_progress(
        f"{backbone}: exported {', '.join(args.precisions)} in {export_s:.0f} s; Recall@1 "
        + ", ".join(f"{p} {fmt_recall(recalls[p])}" for p in args.precisions)
    )
    result = BackboneResult(
        backbone=backbone,
        input_size=spec.input_size,
        epochs=spec.epochs,
        train_seconds=train_s,
        export_seconds=export_s,
        parameters=parameters,
        recall_at_1=recalls,
        file_sizes={p: exported_files[p].size_bytes for p in args.precisions},
    )
    embedders = open_runtimes(run, files, args.threads)
    with torch_threads(args.threads):
        for batch in args.batches:
            timings = time_round_robin(embedders, batch, args.warmup, args.seconds, args.rounds)
            for label, timing in timings.items():
                result.timings.setdefault(label, []).append(timing)
            log_progress(
                f"{backbone}: batch {batch}: " + ", ".join(f"{label} {t.p50_ms:.2f} ms" for label, t in timings.items())
            )
    return result


# ---- report -------------------------------------------------------------------------------
def fmt_recall(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def latency_table(results: list[BackboneResult], batches: list[int]) -> str:
    header = ["backbone", "runtime", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s", "p50 × torch eager"]
    rows = []
    for result in results:
        for batch in batches:
            eager = result.p50(EAGER, batch)
            for label, timings in result.timings.items():
                t = next(t for t in timings if t.batch == batch)
                rows.append(
                    [
                        f"{result.backbone} ({result.input_size} px)",
                        label,
                        str(batch),
                        f"{t.p50_ms:.2f}",
                        f"{t.p90_ms:.2f}",
                        f"{t.p99_ms:.2f}",
                        f"{t.images_per_s:.0f}",
                        f"{t.p50_ms / eager:.2f}×",
                    ]
                )
    return markdown_table(header, rows)


def recall_table(results: list[BackboneResult], precisions: list[str]) -> str:
    header = [
        "backbone",
        "epochs",
        "torch R@1",
        *(f"{p} R@1" for p in precisions),
        "int8 − fp32 (points)",
        *(f"{p} MiB" for p in precisions),
    ]
    rows = []
    for r in results:
        rows.append(
            [
                r.backbone,
                str(r.epochs) if r.epochs else "untrained",
                fmt_recall(r.recall_at_1[EAGER]),
                *(fmt_recall(r.recall_at_1[p]) for p in precisions),
                f"{int8_gap(r):+.2f}" if int8_gap(r) is not None else "n/a",
                *(f"{r.file_sizes[p] / 2**20:.2f}" for p in precisions),
            ]
        )
    return markdown_table(header, rows)


def int8_gap(result: BackboneResult, precision: str = "int8") -> float | None:
    fp32, int8 = result.recall_at_1.get("fp32"), result.recall_at_1.get(precision)
    return None if fp32 is None or int8 is None else 100 * (int8 - fp32)


def verdicts(results: list[BackboneResult], batches: list[int]) -> list[str]:
    lines = []
    for r in results:
        if 1 in batches and "onnxruntime fp32" in r.timings:
            ort, eager = r.p50("onnxruntime fp32", 1), r.p50(EAGER, 1)
            ratio = ort / eager
            lines.append(
                f"{'MET' if ratio <= SPEEDUP_TARGET else 'MISSED'}: {r.backbone} ({r.input_size} px) onnxruntime fp32 "
                f"at batch 1 is {ratio:.2f}× PyTorch eager (p50 {ort:.2f} ms vs {eager:.2f} ms; "
                f"target <= {SPEEDUP_TARGET}×)"
            )
        for precision in ("int8", "int8-cpu"):
            gap = int8_gap(r, precision)
            if gap is not None:
                lines.append(
                    f"{'MET' if abs(gap) <= RECALL_TARGET else 'MISSED'}: {r.backbone} {precision} Recall@1 "
                    f"{r.recall_at_1[precision]:.4f} vs fp32 {r.recall_at_1['fp32']:.4f} on digits 5-9 "
                    f"({gap:+.2f} points; target within {RECALL_TARGET:.0f})"
                )
    return lines


def report(results: list[BackboneResult], args: argparse.Namespace, total_s: float, load_before: float | None) -> str:
    load = "n/a" if load_before is None else f"{load_before:.1f}"
    parts = [
        f"Latency on CPU, {args.threads} thread(s) for PyTorch and onnxruntime alike; {args.warmup} warm-up calls, "
        f"then {args.rounds} round-robin rounds of about {args.seconds / args.rounds:.2f} s per runtime and batch "
        "(ms per call of embed(), numpy in and out):",
        "",
        latency_table(results, args.batches),
        "",
        "Recall@1 on digits' unseen classes (5-9) and file sizes:",
        "",
        recall_table(results, args.precisions),
        "",
        *verdicts(results, args.batches),
        "",
        f"Total wall time {total_s:.0f} s ({total_s / 60:.1f} min); torch {torch.__version__}, "
        f"onnxruntime {environment(args.threads)['onnxruntime']}, {os.cpu_count()} CPUs, "
        f"1-minute load average {load} before the run.",
    ]
    return "\n".join(parts)


# ---- command line -------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(
        __doc__.split("\n\n")[0].replace("\n", " "),
        threads="both runtimes",
        json_out="the raw numbers",
        quick="2 tiny epochs, 64 px, batches 1 8, short timing",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backbones", nargs="+", choices=list(FULL), default=list(FULL))
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=list(PRECISIONS),
        help="onnxruntime precisions (fp32 is always exported: the reference)",
    )
    parser.add_argument(
        "--batches", nargs="+", type=int, default=None, help="batch sizes (default 1 8 32; --quick: 1 8)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per runtime and batch size")
    parser.add_argument(
        "--seconds", type=float, default=None, help="timed seconds per runtime and batch size (default 2; --quick 0.3)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="round-robin rounds (default 5; --quick 2)")
    parser.add_argument(
        "--input-size-large", type=int, default=None, help="px of mobilenetv2 and resnet18 (default 128; --quick 64)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if "fp32" not in args.precisions:
        args.precisions.insert(0, "fp32")
    args.batches = args.batches or ([1, 8] if args.quick else [1, 8, 32])
    args.seconds = args.seconds or (0.3 if args.quick else 2.0)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.threads = args.threads or torch.get_num_threads()
    base = QUICK if args.quick else FULL
    args.specs = {name: base[name] for name in args.backbones}
    for name in set(args.specs) - {"tiny"}:
        args.specs[name] = BackboneSpec(args.input_size_large or base[name].input_size, base[name].epochs)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    described = ", ".join(
        f"{n} ({s.input_size} px, {f'{s.epochs} epochs' if s.epochs else 'untrained'})" for n, s in args.specs.items()
    )
    log_progress(
        f"backbones {described}; "
        f"precisions {' '.join(args.precisions)}; batches {' '.join(map(str, args.batches))}; {args.threads} threads"
    )
    load = environment(args.threads)["load_average_1min"]
    if load is not None and load > BUSY_LOAD:
        log_progress(
            f"warning: the machine is busy (1-minute load average {load:.1f}): timings will be noisy, and PyTorch's "
            "OpenMP threads stall far more than onnxruntime's when other work holds a core"
        )
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        for name, spec in args.specs.items():
            results.append(run_backbone(name, spec, args, Path(tmp)))
    total = time.perf_counter() - started
    if args.json:  # first: the raw numbers survive whatever happens to the report
        write_json(
            args.json,
            {
                "settings": {k: v for k, v in vars(args).items() if k not in ("json", "specs")},
                "environment": environment(args.threads),
                "load_average_before": load,
                "total_seconds": total,
                "results": [r.to_dict() for r in results],
                "verdicts": verdicts(results, args.batches),
            },
        )
        log_progress(f"raw numbers written to {args.json}")
    print(report(results, args, total, load))


if __name__ == "__main__":
    main()
