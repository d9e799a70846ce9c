"""Distributed data parallel training on PyTorch's own engine: ``torchrun --nproc-per-node N edgedml train ...``.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; we join the process group (gloo on CPU, NCCL on
GPUs), give each rank every WORLD_SIZE-th batch of the shared P x K schedule, wrap the model in
DDP, and all-gather the batch embeddings in rank order for the cross-batch memory so every
rank enqueues the same gathered batch and the memories never diverge (docs/methods.md §2).
Checkpoints, metrics and logs are written by rank 0 only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from edgedml.errors import TrainingError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_environment(device_type: str) -> DistributedContext:
    """Join the process group torchrun describes; a plain run is a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    context = DistributedContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend=backend)
    return context


def gather_in_rank_order(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All ranks' (S_r, D) embeddings and labels, concatenated by rank; and this rank's row offset.

    Batches may differ in size (an unreadable image drops out), so sizes are exchanged first.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([len(labels)], device=embeddings.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded_emb = embeddings.new_zeros(longest, embeddings.shape[1])
    padded_emb[: len(labels)] = embeddings
    padded_labels = labels.new_full((longest,), -1)
    padded_labels[: len(labels)] = labels
    gathered_emb = [torch.zeros_like(padded_emb) for _ in range(world)]
    gathered_labels = [torch.zeros_like(padded_labels) for _ in range(world)]
    dist.all_gather(gathered_emb, padded_emb)
    dist.all_gather(gathered_labels, padded_labels)
    all_emb = torch.cat([e[:n] for e, n in zip(gathered_emb, counts, strict=True)])
    all_labels = torch.cat([lab[:n] for lab, n in zip(gathered_labels, counts, strict=True)])
    return all_emb, all_labels, sum(counts[:rank])


def check_identical_across_ranks(state: dict[str, torch.Tensor], what: str) -> None:
    """Raise if any tensor of ``state`` differs between ranks (compared by a float64 checksum of its bytes)."""
    if not state:
        return
    checksums = torch.stack(
        [t.detach().double().flatten().sum() + t.detach().double().flatten().abs().sum() for t in state.values()]
    )
    gathered = [torch.zeros_like(checksums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksums)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise TrainingError(f"{what} diverged between ranks", hint="this is a bug in edgedml: please report it")


def synchronize(context: DistributedContext) -> None:
    """Wait for every rank (a no-op for a world of one)."""
    if context.enabled:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
