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

Two timings per variant, medians over steps taken round-robin across all variants (so a drift of
the machine's speed hits every variant alike): the whole training step, and the loss step alone
(adapt + enqueue + loss + backward into fixed embeddings: the work the memory implementation
decides). Peak memory is the peak of bytes allocated during one training step (CPU allocation
timeline), beyond the model, optimizer state and memory buffers that exist before it.
Run: ``python benchmarks/memory_overhead.py`` (a few minutes on 2 cores; nothing else should run).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F
from benchmark_tools import benchmark_parser

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
        return PMLCrossBatchMemory(
            TripletMarginLoss(margin=0.2), embedding_size=DIM, memory_size=memory_size, miner=miner
        )
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


class Runner:
    """One variant at one memory size: a model, an optimizer, a filled memory, and a stream of batches."""

    def __init__(self, variant: str, memory_size: int):
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.model = build_model("tiny", DIM)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.loss_fn = make_loss(variant, memory_size)
        fill(self.loss_fn, memory_size, generator)
        self.data = batches(generator)
        self.embeddings = F.normalize(torch.randn(BATCH, DIM, generator=generator), dim=1)
        self.step_times: list[float] = []
        self.loss_times: list[float] = []

    def train_step(self) -> None:
        images, labels = next(self.data)
        loss = self.loss_fn(self.model.embed_raw(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def loss_step(self) -> None:
        """The memory's own work: adapt, enqueue, loss against the memory, backward into the embeddings."""
        _, labels = next(self.data)
        self.loss_fn(self.embeddings.clone().requires_grad_(True), labels).backward()

    def timed(self, rounds: int) -> None:
        for _ in range(rounds):
            started = time.perf_counter()
            self.train_step()
            self.step_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            self.loss_step()
            self.loss_times.append(time.perf_counter() - started)

    def peak_bytes(self) -> int:
        with AllocationTimeline() as timeline:
            self.train_step()
        return timeline.peak_bytes()


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--rounds", type=int, default=5, help="round-robin passes over all variants")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant per round")
    args = parser.parse_args()
    configs = [("none", 0)] + [(v, m) for m in args.sizes if m > 0 for v in args.variants]
    runners = {}
    for variant, size in configs:
        try:
            runners[(variant, size)] = Runner(variant, size)
            runners[(variant, size)].timed(2)  # warm-up, discarded
        except (RuntimeError, MemoryError) as exc:  # an allocation the machine cannot make
            print(f"{variant} at M={size} failed: {str(exc).splitlines()[0][:80]}", file=sys.stderr)
    for runner in runners.values():
        runner.step_times.clear()
        runner.loss_times.clear()
    # Round-robin, so that drifts of the machine's speed hit every variant alike.
    for _ in range(args.rounds):
        for runner in runners.values():
            runner.timed(args.steps)
    base = runners[("none", 0)]
    base_step, base_loss = statistics.median(base.step_times), statistics.median(base.loss_times)
    base_peak = base.peak_bytes()
    print(
        f"S={BATCH}, D={DIM}, {CLASSES} classes, tiny backbone at {INPUT}px, {torch.get_num_threads()} threads, "
        f"median of {args.rounds * args.steps} steps each, round-robin\n"
    )
    print(
        "| variant | M | train step ms | step / no memory | loss step ms | loss step / no memory "
        "| peak MiB | peak / no memory |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    step, loss = {}, {}
    for (variant, size), runner in runners.items():
        step[(variant, size)] = statistics.median(runner.step_times)
        loss[(variant, size)] = statistics.median(runner.loss_times)
        peak = runner.peak_bytes()
        print(
            f"| {variant} | {size} | {step[(variant, size)] * 1e3:.1f} | {step[(variant, size)] / base_step:.2f} "
            f"| {loss[(variant, size)] * 1e3:.2f} | {loss[(variant, size)] / base_loss:.2f} "
            f"| {peak / 2**20:.1f} | {peak / base_peak:.2f} |"
        )
    print()
    if ("ours-axbn", 8192) in step:
        overhead = step[("ours-axbn", 8192)] / base_step - 1
        print(
            f"target: AXBN at M=8192 costs <= 15% more train-step time than no memory: "
            f"{'MET' if overhead <= 0.15 else 'MISSED'} ({overhead:+.0%})"
        )
    for size in sorted({s for _, s in step if s > 0}):
        for pml_variant, ours_variants in LIKE_FOR_LIKE.items():
            if (pml_variant, size) not in loss:
                continue
            ours = [v for v in ours_variants if (v, size) in loss]
            if not ours:
                continue
            verdict = all(
                loss[(v, size)] < loss[(pml_variant, size)] and step[(v, size)] < step[(pml_variant, size)]
                for v in ours
            )
            detail = ", ".join(
                f"{v}: loss step {loss[(pml_variant, size)] / loss[(v, size)]:.2f}x, "
                f"train step {step[(pml_variant, size)] / step[(v, size)]:.2f}x"
                for v in ours
            )
            print(
                f"target: our memory step faster than {pml_variant} at M={size}: "
                f"{'MET' if verdict else 'MISSED'} ({detail} the speed)"
            )


if __name__ == "__main__":
    main()
