"""DDP on gloo: every rank enqueues the same gathered batch, so the memories stay bit-identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from edgedml.losses import ShadowLoss
from edgedml.memory import AXBNAdapter, CrossBatchLoss, CrossBatchMemory
from edgedml.training.distributed import check_identical_across_ranks, gather_in_rank_order

WORLD = 2


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(100 + rank)  # each rank sees different data, as under DDP
        loss = CrossBatchLoss(ShadowLoss(), CrossBatchMemory(64, 8), AXBNAdapter(8), gather=gather_in_rank_order)
        for step in range(6):
            size = 6 if (rank + step) % 3 else 5  # uneven batches: an unreadable image dropped out
            embeddings = torch.randn(size, 8, requires_grad=True)
            labels = torch.randint(0, 3, (size,))
            loss(embeddings, labels).backward()
        check_identical_across_ranks(loss.state_dict(), "memory")
        save_file(
            {k: v.contiguous() for k, v in loss.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.safetensors")
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_keep_bit_identical_memories(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    first, second = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert int(first["memory.filled"]) == 64  # 6 steps of 11 or 12 gathered items wrapped the 64 slots
    assert int(first["memory.pointer"]) == (2 * 34) % 64  # each rank contributed 34 items
    assert (first["memory.labels"] >= 0).all()


def _diverge_main(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        check_identical_across_ranks({"x": torch.tensor([float(rank)])}, "the cross-batch memory")
    finally:
        dist.destroy_process_group()


def test_diverged_state_is_detected(tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="diverged between ranks"):
        mp.spawn(_diverge_main, args=(str(tmp_path / "init"),), nprocs=WORLD, join=True)


@pytest.mark.slow
def test_torchrun_runs_edgedml_train_unchanged(tmp_path):
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(WORLD),
        "-m",
        "edgedml.cli.main",
        "train",
        "--data",
        "digits",
        "--out",
        str(run),
        "--epochs",
        "2",
        "--batch-size",
        "20",
        "--samples-per-class",
        "4",
        "--memory",
        "xbn",
        "--memory-size",
        "512",
        "--memory-warmup",
        "5",
        # the fine-tuning recipe under DDP: a frozen first epoch (unused parameters), frozen BN, clipping
        "--freeze-backbone-epochs",
        "1",
        "--freeze-bn",
        "--grad-clip",
        "1.0",
        "--backbone-lr-mult",
        "0.5",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # as the README shows it, without --json: rank 0 renders the summary, the other rank prints nothing
    assert "Traceback" not in result.stderr and result.stdout.count("never seen in training") == 1
    summary = (run / "summary.json").read_text()
    assert '"recall_at_1"' in summary
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2  # written once, by rank 0
    tensors = load_file(str(run / "last.safetensors"))
    assert int(tensors["loss.memory.filled"]) > 0
    assert Path(run / "best.safetensors").is_file()
