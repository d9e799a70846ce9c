"""Measuring real peaks on a CUDA device, to check the planner's predictions against the allocator.

Each measurement builds the configuration's real model, optimizer and loss on the GPU, runs two
steps (so the optimizer state exists, as in steady state), resets the allocator's peak counter,
runs one more step and reads ``torch.cuda.max_memory_allocated`` above what was allocated before.
"""

from __future__ import annotations

import gc

import torch
import torch.nn.functional as F

from edgedml.config import TrainConfig


def measure_cuda_peak(config: TrainConfig, input_size: int, batch_size: int, memory_size: int = 0) -> int:
    """Peak bytes allocated by one steady-state training step on ``cuda`` (persistent state included)."""
    from edgedml.budget.planner import _loss
    from edgedml.models import build_model
    from edgedml.training.trainer import make_optimizer

    device = torch.device("cuda")
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    model = build_model(config.backbone, config.dim).to(device)
    optimizer = make_optimizer(model, config)
    loss_fn = _loss(config, memory_size, batch_size).to(device)
    if memory_size:
        stored = F.normalize(torch.randn(memory_size, config.dim, device=device), dim=1)
        loss_fn.memory.enqueue(stored, torch.randint(0, max(2, memory_size // config.samples_per_class), (memory_size,), device=device))
        loss_fn.iteration.fill_(loss_fn.warmup_iters)
    images = torch.randn(batch_size, 3, input_size, input_size, device=device)
    labels = torch.arange(batch_size, device=device) // config.samples_per_class
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=config.amp):
            embeddings = model.embed_raw(images)
        scaler.scale(loss_fn(embeddings.float(), labels)).backward()
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
