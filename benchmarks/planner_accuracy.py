"""How well the memory planner predicts a training step's peak, and how long a plan takes.

For each configuration (MobileNetV2 at 128 px, the Jetson case; ResNet-18 at 96 px; the tiny net
with an AXBN memory) and batch 8..256, the predicted peak (``StepTracer``, fake tensors) is set
against:
- on a CUDA device: ``torch.cuda.max_memory_allocated`` of a real steady-state step
  (``edgedml.budget.measure``): the target is within +-10% at every batch size;
- without one: the allocation timeline of the same step on real CPU tensors, a proxy that
  checks the tracing and the combination of phases, not the CUDA allocator (no cuDNN
  workspaces, no 512-byte rounding), and is labelled as such.
Then the time of one whole plan (``plan_training`` with ``--batch-size auto``) on the CPU, target
under 5 s. Run: ``python benchmarks/planner_accuracy.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import time

import torch
from benchmark_tools import benchmark_parser

from edgedml.budget.measure import measure_step
from edgedml.budget.planner import Budget, StepTracer, plan_training
from edgedml.config import TrainConfig

MIB = 1 << 20
BATCHES = (8, 16, 32, 64, 128, 256)
CONFIGS = {
    "mobilenetv2@128": (dict(backbone="mobilenetv2", dim=128), 128, 0),
    "resnet18@96": (dict(backbone="resnet18", dim=128), 96, 0),
    "tiny@32+axbn": (dict(backbone="tiny", dim=128, memory="axbn", memory_warmup=0), 32, 8192),
}


def config(overrides: dict) -> TrainConfig:
    return TrainConfig.from_sources(overrides={"samples_per_class": 4, "batch_size": 16, "device": "cpu", **overrides})


def measured(cfg: TrainConfig, input_size: int, batch: int, memory_size: int) -> tuple[int, str]:
    """The same steady-state step, measured by the CUDA allocator, or traced on real CPU tensors without one."""
    step = measure_step(cfg, input_size, batch, memory_size, "cuda" if torch.cuda.is_available() else "cpu")
    return step.allocated, step.how


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"device: {device}; {torch.get_num_threads()} CPU threads\n")
    print("| config | batch | predicted MiB | measured MiB | measured by | error |")
    print("|---|---:|---:|---:|---|---:|")
    worst = 0.0
    for name in args.configs:
        overrides, input_size, memory_size = CONFIGS[name]
        cfg = config(overrides)
        tracer = StepTracer(cfg, input_size)
        for batch in args.batches:
            predicted = tracer.estimate(batch, memory_size).peak
            actual, how = measured(cfg, input_size, batch, memory_size)
            error = predicted / actual - 1.0
            worst = max(worst, abs(error))
            print(
                f"| {name} | {batch} | {predicted / MIB:.1f} | {actual / MIB:.1f} | {how} | {error:+.1%} |", flush=True
            )
    print(
        f"\nlargest |error|: {worst:.1%} (target: within 10% of max_memory_allocated on CUDA"
        + ("" if torch.cuda.is_available() else "; no CUDA device here, so the CUDA target was not measured")
        + ")"
    )
    print("\n| config | plan (auto batch, 2 GiB budget) | batch chosen | seconds |")
    print("|---|---|---:|---:|")
    slowest = 0.0
    for name in args.configs:
        overrides, input_size, memory_size = CONFIGS[name]
        cfg = config({**overrides, "batch_size": "auto"})
        started = time.perf_counter()
        plan = plan_training(
            cfg, Budget(2 << 30, 300 * MIB, 0.1, "benchmark"), input_size, 60_000, True, False, train_classes=10_000
        )
        seconds = time.perf_counter() - started
        slowest = max(slowest, seconds)
        print(f"| {name} | tracer built + search | {plan.batch_size} | {seconds:.2f} |", flush=True)
    print(
        f"\ntarget: a whole plan in under 5 s on a CPU: {'MET' if slowest < 5 else 'MISSED'} (slowest {slowest:.2f} s)"
    )


if __name__ == "__main__":
    main()
