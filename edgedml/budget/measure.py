"""Measuring the real peak of a training step, to check the planner's predictions (docs/methods.md §5).

Each measurement builds the configuration's real model, optimizer and loss, runs two steps (so the
optimizer state exists, as in steady state), then measures a third:

- on ``cuda``: the allocator's counters, reset before it: ``torch.cuda.max_memory_allocated`` (what the
  planner predicts) and ``torch.cuda.max_memory_reserved`` (what the caching allocator holds, rounding
  and fragmentation included: what a Jetson's shared RAM pays), both above what was held before;
- on ``cpu``: the step's allocation timeline on real tensors (:mod:`edgedml.budget.trace`) plus the
  persistent state, a proxy that checks the tracing, not a CUDA allocator (there is no "reserved").
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from edgedml.budget.trace import AllocationTimeline
from edgedml.config import TrainConfig
from edgedml.models import build_model
from edgedml.objective import StepOutputs, build_network, build_objective, make_optimizer


@dataclass(frozen=True)
class MeasuredStep:
    """Peak bytes of one steady-state step, persistent state included."""

    allocated: int  # CUDA max_memory_allocated, or the CPU allocation timeline's peak
    reserved: int | None  # CUDA max_memory_reserved; None on a CPU
    how: str  # how ``allocated`` was measured


def measure_step(
    config: TrainConfig, input_size: int, batch_size: int, memory_size: int = 0, device: str = "cuda"
) -> MeasuredStep:
    """One steady-state training step of ``config`` at ``batch_size`` (and ``memory_size`` slots), measured on
    ``device``."""
    cuda_devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):  # seeded inside, the caller's random state untouched
        torch.manual_seed(0)
        return _measure_step(config, input_size, batch_size, memory_size, device)


def _measure_step(config: TrainConfig, input_size: int, batch_size: int, memory_size: int, device: str) -> MeasuredStep:
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        gc.collect()
        torch.cuda.empty_cache()
        allocated_before, reserved_before = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
        torch.cuda.reset_peak_memory_stats(device)
    network = build_network(config, build_model(config.backbone, config.dim)).to(device)
    optimizer = make_optimizer(network, config)
    objective = build_objective(config, memory_size).to(device)
    if objective.memory_loss is not None:
        objective.memory_loss.fill_at_random(memory_size, config.samples_per_class)
    images = torch.randn(batch_size, 3, input_size, input_size, device=device)
    labels = torch.arange(batch_size, device=device) // config.samples_per_class
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and on_cuda)
    amp_dtype = torch.float16 if on_cuda else torch.bfloat16

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=amp_dtype, enabled=config.amp):
            embeddings, features, aux = network(images)
        scaler.scale(objective(StepOutputs(embeddings, features, aux, images), labels)).backward()
        scaler.step(optimizer)
        scaler.update()

    step()
    step()
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return MeasuredStep(
            torch.cuda.max_memory_allocated(device) - allocated_before,
            torch.cuda.max_memory_reserved(device) - reserved_before,
            "cuda max_memory_allocated",
        )
    persistent = [*network.parameters(), *network.buffers(), *objective.buffers(), images]
    persistent += [
        value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)
    ]
    with AllocationTimeline() as timeline:
        step()
    held = sum(tensor.numel() * tensor.element_size() for tensor in persistent)
    return MeasuredStep(held + timeline.peak_bytes(), None, "cpu allocation timeline (proxy)")


def fit_line(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of bytes against batch size."""
    count = len(points)
    mean_x = sum(x for x, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    var_x = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var_x if var_x else 0.0
    return mean_y - slope * mean_x, slope
