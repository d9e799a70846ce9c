"""Measuring real peaks on a CUDA device, to check the planner's predictions against the allocator.

Each measurement builds the configuration's real model, optimizer and loss on the GPU, runs two
steps (so the optimizer state exists, as in steady state), resets the allocator's peak counter,
runs one more step and reads ``torch.cuda.max_memory_allocated`` above what was allocated before.
"""

from __future__ import annotations

import gc

import torch

from edgedml.config import TrainConfig
from edgedml.models import build_model
from edgedml.objective import StepOutputs, build_network, build_objective, make_optimizer


def measure_cuda_peak(config: TrainConfig, input_size: int, batch_size: int, memory_size: int = 0) -> int:
    """Peak bytes allocated by one steady-state training step on ``cuda`` (persistent state included)."""
    device = torch.device("cuda")
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    network = build_network(config, build_model(config.backbone, config.dim)).to(device)
    optimizer = make_optimizer(network, config)
    objective = build_objective(config, memory_size).to(device)
    if objective.memory_loss is not None:
        objective.memory_loss.fill_at_random(memory_size, config.samples_per_class)
    images = torch.randn(batch_size, 3, input_size, input_size, device=device)
    labels = torch.arange(batch_size, device=device) // config.samples_per_class
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=config.amp):
            embeddings, features, aux = network(images)
        scaler.scale(objective(StepOutputs(embeddings, features, aux, images), labels)).backward()
        scaler.step(optimizer)
        scaler.update()

    step()
    step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - baseline


def fit_line(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of bytes against batch size."""
    count = len(points)
    mean_x = sum(x for x, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    var_x = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var_x if var_x else 0.0
    return mean_y - slope * mean_x, slope
