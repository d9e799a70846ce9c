"""Peak memory of one forward+backward of a loss alone, as the batch size S and dimension D grow.

Compares, on the same batch-all triplets (P classes x K=4 images per batch):
- Shadow loss (edgedml), which works on the (S, N) matrix of shadow distances only;
- ``torch.nn.TripletMarginLoss`` fed the explicit (anchor, positive, negative) embeddings, the
  naive implementation whose buffers are (triplets x D);
- pytorch-metric-learning's ``TripletMarginLoss`` (distance-matrix based, all triplets).

"Loss memory" is the peak of the bytes allocated inside the measured block, not counting the
input embeddings and their gradient (which every loss needs). On the CPU it is read from an
allocation timeline (``edgedml.budget.trace``): on real tensors where they fit in host memory,
under PyTorch's ``FakeTensorMode`` (shapes only, nothing allocated) where they do not. On a
CUDA device it is also measured with ``torch.cuda.max_memory_allocated``.

Run: ``python benchmarks/loss_memory.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import contextlib
import json

import torch
from benchmark_tools import benchmark_parser
from torch._subclasses.fake_tensor import FakeTensorMode

from edgedml.budget.trace import AllocationTimeline, storage_key
from edgedml.losses import ShadowLoss

SIZES = (64, 128, 256, 512)
DIMS = (64, 512, 2048)
K = 4
MARGIN = 0.2
REAL_LIMIT_BYTES = 2 << 30  # naive triplet buffers larger than this are traced under fake tensors


def all_triplets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool)
    cube = positive[:, :, None] & ~same[:, None, :]
    return torch.nonzero(cube, as_tuple=True)


def shadow_step(embeddings, labels, triplets):
    return ShadowLoss(margin=MARGIN, mining="all")(embeddings, labels)


def naive_step(embeddings, labels, triplets):
    anchors, positives, negatives = triplets
    normalized = torch.nn.functional.normalize(embeddings, dim=1)
    loss_fn = torch.nn.TripletMarginLoss(margin=MARGIN)
    return loss_fn(normalized[anchors], normalized[positives], normalized[negatives])


def pml_step(embeddings, labels, triplets):
    from pytorch_metric_learning.losses import TripletMarginLoss

    return TripletMarginLoss(margin=MARGIN)(embeddings, labels)


LOSSES = {"shadow": shadow_step, "naive_triplet": naive_step, "pml_triplet": pml_step}


def traced_bytes(step, size: int, dim: int, fake: bool) -> int:
    labels = torch.arange(size) // K
    triplets = all_triplets(labels)
    with FakeTensorMode() if fake else contextlib.nullcontext():
        embeddings = torch.randn(size, dim, requires_grad=True)
        if fake:
            triplets = tuple(torch.empty(len(t), dtype=torch.long) for t in triplets)
        with AllocationTimeline() as timeline:
            step(embeddings, labels, triplets).backward()
        return timeline.peak_bytes(exclude={storage_key(embeddings.grad)})


def cuda_bytes(step, size: int, dim: int) -> int:
    """Peak CUDA bytes above the inputs, the gradient included (the allocator cannot tell it apart)."""
    device = torch.device("cuda")
    labels = (torch.arange(size) // K).to(device)
    triplets = tuple(t.to(device) for t in all_triplets(labels.cpu()))
    embeddings = torch.randn(size, dim, device=device, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step(embeddings, labels, triplets).backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure(sizes, dims) -> list[dict]:
    rows = []
    for size in sizes:
        triplet_count = len(all_triplets(torch.arange(size) // K)[0])
        for dim in dims:
            row = {"S": size, "D": dim, "triplets": triplet_count}
            for name, step in LOSSES.items():
                fake = name == "naive_triplet" and 3 * triplet_count * dim * 4 > REAL_LIMIT_BYTES
                row[name] = traced_bytes(step, size, dim, fake)
                row[f"{name}_method"] = "fake" if fake else "real"
                if torch.cuda.is_available():
                    row[f"{name}_cuda"] = cuda_bytes(step, size, dim) if not fake else None
            rows.append(row)
    return rows


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.2f}"


def print_table(rows: list[dict]) -> None:
    print("| S | D | triplets | Shadow MiB | naive triplet MiB | PML triplet MiB | Shadow / naive | Shadow / PML |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        naive_mark = " (fake)" if row["naive_triplet_method"] == "fake" else ""
        print(
            f"| {row['S']} | {row['D']} | {row['triplets']:,} | {mib(row['shadow'])} "
            f"| {mib(row['naive_triplet'])}{naive_mark} | {mib(row['pml_triplet'])} "
            f"| {row['shadow'] / row['naive_triplet']:.4f} | {row['shadow'] / row['pml_triplet']:.3f} |"
        )
    if any("shadow_cuda" in row for row in rows):
        print("\nCUDA max_memory_allocated above the inputs (gradient included), MiB:")
        print("| S | D | Shadow | naive triplet | PML triplet |")
        print("|---:|---:|---:|---:|---:|")
        for row in rows:
            print(
                f"| {row['S']} | {row['D']} | {mib(row['shadow_cuda'])} | {mib(row['naive_triplet_cuda'])} "
                f"| {mib(row['pml_triplet_cuda'])} |"
            )
    else:
        print("\n(no CUDA device: CPU allocation timeline only)")


def check_targets(rows: list[dict]) -> None:
    by_size: dict[int, set[int]] = {}
    for row in rows:
        by_size.setdefault(row["S"], set()).add(row["shadow"])
    growth = {size: max(v) - min(v) for size, v in by_size.items()}
    flat = all(g <= size * size * 4 for size, g in growth.items())
    print(
        f"\ntarget 1, Shadow loss memory does not grow with D: {'MET' if flat else 'MISSED'} "
        f"(largest spread over D at fixed S: {max(growth.values()) / 2**20:.3f} MiB)"
    )
    for row in rows:
        if row["S"] == 256 and row["D"] == 512:
            ratio = row["shadow"] / row["naive_triplet"]
            print(
                f"target 2, Shadow <= 1/4 of naive triplet at S=256, D=512: {'MET' if ratio <= 0.25 else 'MISSED'} "
                f"(ratio {ratio:.4f})"
            )


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], json_out="the raw rows (as well as the tables)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    args = parser.parse_args()
    rows = measure(args.sizes, args.dims)
    print_table(rows)
    check_targets(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
