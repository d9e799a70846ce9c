"""What a cross-batch memory costs per training step, against no memory, and against pytorch-metric-learning.

One training step = tiny backbone forward on 32 x 32 images, loss, backward, AdamW step, at S = 32
(8 classes x 4 images), D = 128, labels from 1,000 classes (a many-class set like Stanford Online
Products), the memory filled before timing. Variants:
- ``none``: Shadow loss (batch-hard) on the batch alone, the baseline every ratio is against;
- ``ours-xbm`` / ``ours-axbn``: edgedml's memory around Shadow loss with batch-hard triplets, the default
  against a memory (AXBN also adapts the whole memory each step);
- ``ours-xbm-all``: the same with batch-all triplets (Shadow's sorted-cumulative-sum form);
- ``ours-xbm-triplet``: edgedml's memory around pytorch-metric-learning's TripletMarginLoss (batch-all, chunked);
- ``pml-cbm-hard``: pytorch-metric-learning's ``CrossBatchMemory`` around its ``TripletMarginLoss`` with a
  ``BatchHardMiner`` (like for like with ``ours-xbm``);
- ``pml-cbm-all``: the same with all triplets, PML's default (like for like with ``ours-xbm-all``).
Memory-loss only (no extra batch term) in every variant, as PML's CrossBatchMemory does.

Step time is the median of timed steps after warm-up steps; peak memory is the peak of bytes
allocated during one step (CPU allocation timeline), beyond the model, optimizer state and memory
buffers that exist before it. Run: ``python benchmarks/memory_overhead.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from edgedml.budget.trace import AllocationTimeline
from edgedml.losses import ShadowLoss, create_loss
from edgedml.memory import AXBNAdapter, CrossBatchLoss, CrossBatchMemory
from edgedml.models import build_model

BATCH, DIM, CLASSES, K, INPUT = 32, 128, 1000, 4, 32
SIZES = (0, 1024, 8192, 32768)
VARIANTS = ("ours-xbm", "ours-axbn", "ours-xbm-all", "ours-xbm-triplet", "pml-cbm-hard", "pml-cbm-all")
DEFAULT_VARIANTS = ("ours-xbm", "ours-axbn", "ours-xbm-all", "pml-cbm-hard", "pml-cbm-all")
# which of our variants each PML variant is compared with
LIKE_FOR_LIKE = {"pml-cbm-hard": ("ours-xbm", "ours-axbn"), "pml-cbm-all": ("ours-xbm-all", "ours-xbm-triplet")}


def make_loss(variant: str, memory_size: int):
    if memory_size == 0:
        return ShadowLoss(mining="hard")
    if variant.startswith("pml-cbm"):
        from pytorch_metric_learning.losses import CrossBatchMemory as PMLCrossBatchMemory
        from pytorch_metric_learning.losses import TripletMarginLoss
        from pytorch_metric_learning.miners import BatchHardMiner

        miner = BatchHardMiner() if variant == "pml-cbm-hard" else None
        return PMLCrossBatchMemory(TripletMarginLoss(margin=0.2), embedding_size=DIM, memory_size=memory_size, miner=miner)
    if variant == "ours-xbm-triplet":
        base = create_loss("triplet", 0.2, "all", True)
    else:
        base = ShadowLoss(mining="all" if variant == "ours-xbm-all" else "hard")
    adapter = AXBNAdapter(DIM) if variant == "ours-axbn" else None
    return CrossBatchLoss(base, CrossBatchMemory(memory_size, DIM), adapter, batch_term=False)


def batches(generator: torch.Generator):
    while True:
        classes = torch.randperm(CLASSES, generator=generator)[: BATCH // K]
        yield torch.randn(BATCH, 3, INPUT, INPUT, generator=generator), classes.repeat_interleave(K)


def fill(loss, memory_size: int, generator: torch.Generator) -> None:
    """Fill the memory with normalized random embeddings of random classes, as after many steps."""
    if memory_size == 0:
        return
    embeddings = F.normalize(torch.randn(memory_size, DIM, generator=generator), dim=1)
    labels = torch.randint(0, CLASSES, (memory_size,), generator=generator)
    if isinstance(loss, CrossBatchLoss):
        loss.memory.enqueue(embeddings, labels)
    else:
        loss.add_to_memory(embeddings, labels, memory_size)
        loss.has_been_filled = True


def measure(variant: str, memory_size: int, steps: int, warmup: int) -> tuple[float, int]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model("tiny", DIM)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = make_loss(variant, memory_size)
    fill(loss_fn, memory_size, generator)
    data = batches(generator)

    def step():
        images, labels = next(data)
        loss = loss_fn(model.embed_raw(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    with AllocationTimeline() as timeline:
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times), timeline.peak_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    base_time, base_peak = measure("none", 0, args.steps, args.warmup)
    print(f"S={BATCH}, D={DIM}, {CLASSES} classes, tiny backbone at {INPUT}px, {torch.get_num_threads()} threads; "
          f"no memory: {base_time * 1e3:.1f} ms/step, peak {base_peak / 2**20:.1f} MiB\n")
    print("| variant | M | step ms | step time / no memory | peak MiB | peak / no memory |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| none | 0 | {base_time * 1e3:.1f} | 1.00 | {base_peak / 2**20:.1f} | 1.00 |")
    results: dict[tuple[str, int], float] = {}
    for size in [s for s in args.sizes if s > 0]:
        for variant in args.variants:
            try:
                seconds, peak = measure(variant, size, args.steps, args.warmup)
            except (RuntimeError, MemoryError) as exc:  # an allocation the machine cannot make
                print(f"| {variant} | {size} | failed: {str(exc).splitlines()[0][:60]} | | | |")
                continue
            results[(variant, size)] = seconds
            print(f"| {variant} | {size} | {seconds * 1e3:.1f} | {seconds / base_time:.2f} | {peak / 2**20:.1f} | {peak / base_peak:.2f} |", flush=True)
    print()
    if ("ours-axbn", 8192) in results:
        overhead = results[("ours-axbn", 8192)] / base_time - 1
        print(f"target: AXBN at M=8192 costs <= 15% more step time than no memory: {'MET' if overhead <= 0.15 else 'MISSED'} (+{overhead:.0%})")
    for size in sorted({s for _, s in results}):
        for pml_variant, ours_variants in LIKE_FOR_LIKE.items():
            pml = results.get((pml_variant, size))
            ours = {v: results[(v, size)] for v in ours_variants if (v, size) in results}
            if pml is None or not ours:
                continue
            verdict = all(t < pml for t in ours.values())
            detail = ", ".join(f"{v} {pml / t:.2f}x the speed" for v, t in ours.items())
            print(f"target: our memory step faster than {pml_variant} at M={size}: {'MET' if verdict else 'MISSED'} ({detail})")

if __name__ == "__main__":
    main()
