"""The memory planner: exact counts, predictions against real steps, fitting to a budget, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgedml.budget import planner
from edgedml.budget.device import DeviceMemory
from edgedml.budget.planner import Budget, StepTracer, make_budget, plan_training
from edgedml.budget.trace import AllocationTimeline
from edgedml.config import TrainConfig
from edgedml.errors import ConfigError
from edgedml.models import build_model
from edgedml.objective import StepOutputs, build_network, build_objective, make_optimizer
from edgedml.units import format_bytes, parse_bytes

MIB = 1 << 20


def config(**overrides) -> TrainConfig:
    base = dict(backbone="tiny", dim=16, samples_per_class=4, batch_size=16, device="cpu")
    return TrainConfig.from_sources(overrides={**base, **overrides})


def test_parameters_gradients_and_optimizer_state_are_counted_exactly():
    """The tiny backbone at width 32 by hand: 4 conv3x3 (no bias) + BN (weight, bias) + head Linear(128, 16)."""
    widths = [(3, 32), (32, 64), (64, 128), (128, 128)]
    conv = sum(9 * cin * cout for cin, cout in widths)
    batch_norm = sum(2 * cout for _, cout in widths)
    head = 128 * 16 + 16
    parameter_bytes = 4 * (conv + batch_norm + head)
    running_stats_bytes = sum(4 * 2 * cout + 8 for _, cout in widths)  # mean, var (fp32) + num_batches_tracked (int64)
    tracer = StepTracer(config(optimizer="adamw"), input_size=16)
    assert tracer.parameters == parameter_bytes
    assert tracer.gradients == parameter_bytes
    assert tracer.buffers == running_stats_bytes
    parameter_tensors = 2 * len(widths) + len(widths) + 2  # conv weights, BN weight+bias, head weight+bias
    assert (
        tracer.optimizer_state == 2 * parameter_bytes + 4 * parameter_tensors
    )  # exp_avg, exp_avg_sq, a float32 step each
    assert StepTracer(config(optimizer="sgd"), input_size=16).optimizer_state == parameter_bytes  # momentum buffers
    # --freeze-bn: the BatchNorm affine parameters take no gradient and no AdamW state, and the planner knows it
    frozen = StepTracer(config(optimizer="adamw", freeze_bn=True), input_size=16)
    assert frozen.parameters == parameter_bytes
    assert frozen.gradients == parameter_bytes - 4 * batch_norm
    assert frozen.optimizer_state == 2 * (parameter_bytes - 4 * batch_norm) + 4 * (parameter_tensors - 2 * len(widths))


def real_step_peak(cfg: TrainConfig, input_size: int, batch_size: int, memory_size: int) -> int:
    """The trainer's steady-state step run on real tensors, its allocations traced: what the planner predicts."""
    torch.manual_seed(0)
    network = build_network(cfg, build_model(cfg.backbone, cfg.dim))
    optimizer = make_optimizer(network, cfg)
    objective = build_objective(cfg, memory_size)
    if objective.memory_loss is not None:
        objective.memory_loss.fill_at_random(memory_size, cfg.samples_per_class)
    images = torch.randn(batch_size, 3, input_size, input_size)
    labels = torch.arange(batch_size) // cfg.samples_per_class

    def step():
        optimizer.zero_grad(set_to_none=True)
        objective(StepOutputs(*network(images), images), labels).backward()
        optimizer.step()

    step()
    persistent = [*network.parameters(), *network.buffers(), *objective.buffers()]
    persistent += [v for state in optimizer.state.values() for v in state.values()]
    with AllocationTimeline() as timeline:
        step()
    return sum(t.numel() * t.element_size() for t in persistent) + timeline.peak_bytes() + images.numel() * 4


@pytest.mark.parametrize(
    ("overrides", "batch_size", "memory_size"),
    [
        ({}, 16, 0),
        ({}, 48, 0),
        ({"memory": "axbn", "memory_warmup": 0}, 24, 512),
        ({"loss": "triplet", "mining": "all"}, 32, 0),
        ({"distill": "s2sd", "aux_dims": "256,512", "feature_distill": True, "feature_distill_delay": 0}, 32, 0),
    ],
)
def test_prediction_matches_a_real_step_within_three_percent(overrides, batch_size, memory_size):
    cfg = config(**overrides)
    predicted = StepTracer(cfg, input_size=24).estimate(batch_size, memory_size).peak
    measured = real_step_peak(cfg, 24, batch_size, memory_size)
    assert abs(predicted / measured - 1) < 0.03, (format_bytes(predicted), format_bytes(measured))


def real_model_step(cfg: TrainConfig, input_size: int, batch_size: int) -> tuple[int, int]:
    """The planner's model step (forward, backward of its stand-in loss, optimizer step) on real CPU tensors, traced.

    Returns (bytes alive after the forward pass, peak bytes of the step), the input images counted once in each:
    what ``StepTracer.model_step`` predicts from fake tensors."""
    torch.manual_seed(0)
    network = build_network(cfg, build_model(cfg.backbone, cfg.dim))
    optimizer = make_optimizer(network, cfg)
    images = torch.randn(batch_size, 3, input_size, input_size)

    def step(timeline: AllocationTimeline | None = None) -> int:
        optimizer.zero_grad(set_to_none=True)
        embeddings, _, aux = network(images)
        after_forward = timeline.mark() if timeline is not None else 0
        (embeddings.float().square().mean() + sum(a.float().square().mean() for a in aux)).backward()
        optimizer.step()
        return after_forward

    step()  # the optimizer state exists from here on, as in steady state
    with AllocationTimeline() as timeline:
        after_forward = step(timeline)
    images_bytes = batch_size * 3 * input_size * input_size * 4  # float32, allocated before the timeline
    return timeline.live_bytes(after_forward) + images_bytes, timeline.peak_bytes() + images_bytes


MODEL_STEP_CONFIGS = [{}, {"optimizer": "sgd"}, {"distill": "s2sd", "aux_dims": "64"}]


@pytest.mark.parametrize("overrides", MODEL_STEP_CONFIGS)
def test_model_step_from_two_fake_traces_matches_real_steps_at_other_batch_sizes(overrides, monkeypatch):
    """Traced on fake tensors at batches 8 and 16 only, the step is extrapolated to 40 and 100 and compared with the
    same step run on real tensors at 40 and 100: the activations exactly, the peak never below the real one; and with
    fake traces taken at 40 and 100 themselves, exactly."""
    monkeypatch.setattr(planner, "_trace_device", lambda: "cpu")  # fake and real on the same device everywhere
    traced = []
    trace = StepTracer._trace_model_step
    monkeypatch.setattr(
        StepTracer, "_trace_model_step", lambda self, batch_size: traced.append(batch_size) or trace(self, batch_size)
    )
    cfg = config(**overrides)
    tracer = StepTracer(cfg, input_size=16)
    for batch_size in (40, 100):
        activations, peak = tracer.model_step(batch_size)
        real_activations, real_peak = real_model_step(cfg, 16, batch_size)
        assert activations == real_activations, (batch_size, activations - real_activations)
        assert real_peak <= peak < 1.03 * real_peak, (batch_size, peak - real_peak)
    assert traced == [8, 16]  # 40 and 100 were extrapolated, never traced
    direct = StepTracer(cfg, input_size=16)
    direct._affine = False  # no extrapolation: each batch size traced as it is
    assert [direct.model_step(b) for b in (40, 100)] == [tracer.model_step(b) for b in (40, 100)]
    assert traced == [8, 16, 40, 100]


@pytest.mark.parametrize("overrides", MODEL_STEP_CONFIGS)
def test_model_step_peak_equals_a_real_steps_peak(overrides, monkeypatch):
    monkeypatch.setattr(planner, "_trace_device", lambda: "cpu")
    cfg = config(**overrides)
    tracer = StepTracer(cfg, input_size=16)
    for batch_size in (40, 100):
        assert tracer.model_step(batch_size)[1] == real_model_step(cfg, 16, batch_size)[1], batch_size


def test_auto_batch_is_the_largest_multiple_of_k_that_fits():
    cfg = config(batch_size="auto")
    tracer = StepTracer(cfg, input_size=16)
    budget = Budget(available=40 * MIB, fixed=2 * MIB, safety_margin=0.1, source="test")
    plan = plan_training(cfg, budget, 16, train_images=800, auto_batch=True, auto_memory=False, tracer=tracer)
    assert plan.batch_size % 4 == 0
    assert budget.fits(tracer.estimate(plan.batch_size))
    assert not budget.fits(tracer.estimate(plan.batch_size + 4))
    assert plan.to_dict()["required_bytes"] <= budget.available


def test_auto_memory_fills_the_rest_up_to_the_training_set():
    cfg = config(batch_size=16, memory="xbm", memory_size="auto", memory_warmup=0)
    tracer = StepTracer(cfg, input_size=16)
    roomy = Budget(available=1 << 34, fixed=0, safety_margin=0.1, source="test")
    assert plan_training(cfg, roomy, 16, 900, auto_batch=False, auto_memory=True, tracer=tracer).memory_size == 900
    tight = Budget(available=roomy.required(tracer.estimate(16, 300)), fixed=0, safety_margin=0.1, source="test")
    chosen = plan_training(cfg, tight, 16, 900, auto_batch=False, auto_memory=True, tracer=tracer).memory_size
    assert 300 <= chosen < 900
    assert tight.fits(tracer.estimate(16, chosen)) and not tight.fits(tracer.estimate(16, chosen + 1))


def test_budget_too_small_says_what_the_minimum_needs_and_what_to_change():
    cfg = config(batch_size="auto")
    with pytest.raises(ConfigError) as info:
        plan_training(cfg, Budget(2 * MIB, 0, 0.1, "--budget"), 16, 800, auto_batch=True, auto_memory=False)
    assert "nothing fits: batch 8" in info.value.message and "--budget" in info.value.message
    assert "--batch-size" in info.value.hint and "--budget" in info.value.hint


def test_explicit_budget_wins_over_free_memory_and_sizes_parse():
    device = DeviceMemory(
        source="test",
        name="gpu",
        total_bytes=8 << 30,
        free_bytes=6 << 30,
        used_bytes=2 << 30,
        cuda_context_bytes=300 * MIB,
    )
    assert make_budget(device).available == 6 << 30
    budget = make_budget(device, parse_bytes("2.5GiB"))
    assert (budget.available, budget.fixed, budget.source) == (int(2.5 * (1 << 30)), 300 * MIB, "--budget")
    assert parse_bytes("800MiB") == 800 * MIB and parse_bytes("3GB") == 3 * 10**9 and parse_bytes("1024") == 1024
    with pytest.raises(ConfigError, match="not a size"):
        parse_bytes("lots")


def test_train_with_auto_batch_records_the_chosen_size(tmp_path):
    from edgedml.training import Trainer

    folder = tmp_path / "images"
    for c in range(6):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (16, 16), (40 * c, 10 * i, 0)).save(folder / f"c{c}" / f"{i}.png")
    cfg = TrainConfig.from_sources(
        overrides=dict(
            data=str(folder),
            backbone="tiny",
            dim=8,
            input_size=16,
            batch_size="auto",
            samples_per_class=2,
            budget="60MiB",
            epochs=1,
            device="cpu",
        )
    )
    trainer = Trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.config.batch_size, int) and trainer.config.batch_size % 2 == 0
    assert trainer.plan is not None and trainer.plan.batch_size == trainer.config.batch_size
    trainer.fit()
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert f"batch_size: {trainer.config.batch_size}" in saved and "budget: 60MiB" in saved


def test_profile_command_writes_a_report_that_reads_back(tmp_path):
    from typer.testing import CliRunner

    from edgedml.cli.main import app

    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "profile",
            "--out",
            str(out),
            "--backbone",
            "tiny",
            "--input-size",
            "16",
            "--dim",
            "16",
            "--batch-size",
            "auto",
            "--memory",
            "xbn",
            "--memory-size",
            "auto",
            "--budget",
            "48MiB",
            "--no-measure",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["fits"] and report["plan"]["required_bytes"] <= report["budget"]["available"] == 48 * MIB
    assert report["plan"]["memory_size"] > 0 and report["memory_curve"]
    assert set(report["plan"]["estimate"]["breakdown"]) >= {
        "parameters",
        "gradients",
        "optimizer_state",
        "activations",
        "loss_buffers",
        "cross_batch_memory",
    }
    markdown = (out / "report.md").read_text()
    assert "**Fits.**" in markdown and f"--batch-size {report['plan']['batch_size']}" in markdown
    for name in ("peak_vs_batch.png", "peak_vs_memory.png", "breakdown.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 300
    small = CliRunner().invoke(
        app, ["profile", "--out", str(tmp_path / "tiny"), "--backbone", "tiny", "--budget", "1MiB", "--no-measure"]
    )
    assert small.exit_code == 0 and "does not fit" in small.output
    assert json.loads((tmp_path / "tiny" / "report.json").read_text())["fits"] is False


def real_loss_step_peak(cfg: TrainConfig, batch_size: int, memory_size: int) -> int:
    """Peak bytes of the objective's forward + backward on real tensors (the test's own random embeddings and a
    filled memory), beyond the step's inputs: what ``StepTracer.loss_step`` predicts."""
    generator = torch.Generator().manual_seed(1234)  # not the planner's seed: allocations must not depend on the data
    objective = build_objective(cfg, memory_size)
    memory = objective.memory_loss
    if memory is not None:
        memory.fill_at_random(memory_size, cfg.samples_per_class, generator)
    aux_dims = [int(d) for d in cfg.aux_dims.split(",")] if cfg.distill == "s2sd" else []
    outputs = StepOutputs(
        embeddings=torch.randn(batch_size, cfg.dim, generator=generator, requires_grad=True),
        features=torch.randn(batch_size, 128, generator=generator, requires_grad=True),  # the tiny backbone's 4 * 32
        aux=[
            F.normalize(torch.randn(batch_size, d, generator=generator), dim=1).requires_grad_(True) for d in aux_dims
        ],
    )
    labels = torch.arange(batch_size) // cfg.samples_per_class
    with AllocationTimeline() as timeline:
        objective(outputs, labels).backward()
    return timeline.peak_bytes()


@pytest.mark.parametrize(
    "overrides", [{}, {"memory": "xbn", "memory_warmup": 0}, {"distill": "s2sd", "aux_dims": "64"}]
)
def test_loss_step_from_three_traces_matches_real_steps_at_other_batch_sizes(overrides, monkeypatch):
    """The loss step is traced at batches 8, 16 and 24 and interpolated to 40 and 100; a real run of the objective at
    40 and 100 gives the same peak, and the memory bank is counted by hand: 300 x 16 float32 embeddings, 300 int64
    labels, an int64 pointer and fill count."""
    traced = []
    trace = StepTracer._trace_loss_step
    monkeypatch.setattr(StepTracer, "_trace_loss_step", lambda self, b, m: traced.append(b) or trace(self, b, m))
    tracer = StepTracer(config(**overrides), input_size=16)
    memory_size = 300 if "memory" in overrides else 0
    bank_bytes = 300 * 16 * 4 + 300 * 8 + 8 + 8 if memory_size else 0
    for batch_size in (40, 100):
        assert tracer.loss_step(batch_size, memory_size) == (
            bank_bytes,
            real_loss_step_peak(tracer.config, batch_size, memory_size),
        )
    assert traced == [8, 16, 24]  # 40 and 100 were interpolated, never traced


def test_measured_line_is_fitted_and_checked_against_the_prediction():
    """Peaks measured on real steps at batches 24, 32 and 48 (from 24 on, the tiny model's step is affine in the batch)
    are fitted by a line; at batch 64 the line must give the real step's peak, and the planner's prediction is
    compared with it."""
    from edgedml.budget.measure import fit_line
    from edgedml.budget.report import _line_check

    assert fit_line([(8, 100), (16, 180), (32, 340)]) == pytest.approx((20.0, 10.0))
    cfg = config()
    tracer = StepTracer(cfg, input_size=16)
    measured = [{"batch_size": b, "measured": real_step_peak(cfg, 16, b, 0)} for b in (24, 32, 48)]
    check = _line_check(measured, tracer, 64, 0)
    slope, intercept = np.polyfit([m["batch_size"] for m in measured], [m["measured"] for m in measured], 1)
    assert (check["intercept"], check["slope"]) == (pytest.approx(intercept, rel=1e-9), pytest.approx(slope, rel=1e-9))
    real_at_64 = real_step_peak(cfg, 16, 64, 0)
    assert check["line_at_batch"] == pytest.approx(real_at_64, rel=1e-3)
    assert check["predicted_at_batch"] == tracer.estimate(64).peak
    assert check["error"] == pytest.approx(tracer.estimate(64).peak / (intercept + 64 * slope) - 1, abs=1e-9)
    assert abs(check["error"]) < 0.02
