"""S2SD: the similarity KL by hand, detached teachers, the feature-distillation delay, base-only exports, resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from edgedml.config import TrainConfig
from edgedml.distill import AuxiliaryHeads, S2SDLoss, similarity_kl
from edgedml.errors import ConfigError
from edgedml.losses import ShadowLoss
from edgedml.training import Trainer
from edgedml.training.evaluate import load_run_model


def test_similarity_kl_by_hand():
    """B = 2, T = 2. Student rows [1, 0], [0, 1]: S_base = I. Teacher [1, 0], [0.6, 0.8]: S_t = [[1, .6], [.6, 1]].
    Row i: KL(p_t || p_base) = sum_j p_t[j] (log p_t[j] - log p_base[j]), p = softmax(S / T).
    Both rows are mirror images, so the sum is 2 * KL(row 0); times T² = 4, divided by B = 2."""
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    teacher = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    t = 2.0
    p_base = [math.exp(1 / t) / (math.exp(1 / t) + 1), 1 / (math.exp(1 / t) + 1)]
    p_teacher = [
        math.exp(1 / t) / (math.exp(1 / t) + math.exp(0.6 / t)),
        math.exp(0.6 / t) / (math.exp(1 / t) + math.exp(0.6 / t)),
    ]
    row = sum(pt * (math.log(pt) - math.log(pb)) for pt, pb in zip(p_teacher, p_base, strict=True))
    assert similarity_kl(student, teacher, t).item() == pytest.approx(2 * row * t**2 / 2, rel=1e-12)
    assert similarity_kl(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-12)


def heads_and_loss(feature_distill=False, delay=0):
    torch.manual_seed(0)
    heads = AuxiliaryHeads(in_features=12, dims=[16, 24])
    loss = S2SDLoss(
        ShadowLoss(), [ShadowLoss(), ShadowLoss()], weight=50.0, feature_distill=feature_distill, feature_delay=delay
    )
    return heads, loss


def test_distillation_sends_no_gradient_to_the_teacher_heads():
    heads, loss = heads_and_loss()
    features = torch.randn(8, 12)
    base = torch.randn(8, 6, requires_grad=True)
    labels = torch.arange(8) // 2
    aux = heads(features)
    student = F.normalize(base, dim=1)
    distill = torch.stack([similarity_kl(student, a, 1.0) for a in aux]).mean()
    distill.backward()
    assert base.grad is not None and base.grad.abs().sum() > 0
    assert all(p.grad is None for p in heads.parameters())  # teachers are detached
    # ... and they still learn from their own losses through the full objective
    loss(base.detach(), labels, heads(features), features).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.heads[0].parameters())


def test_feature_distillation_starts_exactly_at_its_delay():
    heads, loss = heads_and_loss(feature_distill=True, delay=3)
    features, base, labels = torch.randn(8, 12), torch.randn(8, 6), torch.arange(8) // 2
    aux = [a.detach() for a in heads(features)]
    without = S2SDLoss(ShadowLoss(), [ShadowLoss(), ShadowLoss()], weight=50.0)
    feature_term = 50.0 * similarity_kl(F.normalize(base, dim=1), F.normalize(features, dim=1), 1.0)
    for iteration in range(5):
        value = loss(base, labels, aux, features)
        expected = without(base, labels, aux, features) + (feature_term if iteration >= 3 else 0.0)
        torch.testing.assert_close(value, expected)


def test_total_combines_the_terms_as_methods_says():
    heads, loss = heads_and_loss()
    features, base, labels = torch.randn(8, 12), torch.randn(8, 6), torch.arange(8) // 2
    aux = [a.detach() for a in heads(features)]
    base_loss, aux_losses = ShadowLoss()(base, labels), [ShadowLoss()(a, labels) for a in aux]
    kls = [similarity_kl(F.normalize(base, dim=1), a, 1.0) for a in aux]
    expected = (base_loss + sum(aux_losses) / 2) / 2 + 50.0 * sum(kls) / 2
    torch.testing.assert_close(loss(base, labels, aux, features), expected)


def s2sd_config(**overrides) -> TrainConfig:
    options = dict(
        data="digits",
        batch_size=30,
        samples_per_class=6,
        dim=8,
        input_size=16,
        epochs=2,
        device="cpu",
        distill="s2sd",
        aux_dims="32,64",
        feature_distill=True,
        feature_distill_delay=5,
        scheduler="none",
    )
    return TrainConfig.from_sources(overrides={**options, **overrides})


def test_the_exported_model_is_the_base_head_only_and_resume_restores_s2sd(tmp_path):
    straight = Trainer(s2sd_config(), tmp_path / "straight")
    summary = straight.fit()
    best = load_file(str(tmp_path / "straight" / "best.safetensors"))
    assert all(key.startswith("model.") for key in best)
    assert summary["parameters_training"] - summary["parameters"] == sum(
        p.numel() for p in straight.network.aux_heads.parameters()
    )
    model, _ = load_run_model(tmp_path / "straight")
    assert not any("aux" in name for name, _ in model.named_parameters())
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 8)

    Trainer(s2sd_config(epochs=1), tmp_path / "resumed").fit()
    Trainer.resume(tmp_path / "resumed", epochs=2).fit()
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last.safetensors"))
    assert {k for k in a if k.startswith("aux.")} and int(a["loss.iteration"]) == int(b["loss.iteration"]) > 5
    for key in a:
        if key.startswith(("model.", "aux.", "loss.", "optimizer.")):
            assert torch.equal(a[key], b[key]), key


def test_post_hoc_teacher_stays_frozen_and_teaches(tmp_path):
    teacher_options = dict(
        data="digits", batch_size=30, samples_per_class=6, dim=32, input_size=16, epochs=1, device="cpu"
    )
    Trainer(TrainConfig.from_sources(overrides=teacher_options), tmp_path / "teacher").fit()
    before = load_file(str(tmp_path / "teacher" / "best.safetensors"))
    student = Trainer(
        TrainConfig.from_sources(overrides={**teacher_options, "dim": 4, "teacher": str(tmp_path / "teacher")}),
        tmp_path / "student",
    )
    teacher_module = student.loss_fn.loss.teacher
    assert not any(p.requires_grad for p in teacher_module.parameters())
    student.fit()
    for name, value in teacher_module.state_dict().items():
        assert torch.equal(value.cpu(), before["model." + name]), name  # weights and BatchNorm statistics untouched
    last = load_file(str(tmp_path / "student" / "last.safetensors"))
    assert not any(".teacher." in key or key.startswith("loss.teacher") for key in last)
    with pytest.raises(ConfigError, match=r"^--distill s2sd and --teacher are two ways to distill; choose one$"):
        TrainConfig.from_sources(overrides={**teacher_options, "distill": "s2sd", "teacher": "x"})


def test_s2sd_works_with_a_cross_batch_memory_holding_the_base_embedding(tmp_path):
    trainer = Trainer(s2sd_config(epochs=1, memory="xbn", memory_size=200, memory_warmup=2), tmp_path / "run")
    trainer.fit()
    last = load_file(str(tmp_path / "run" / "last.safetensors"))
    assert last["loss.base_loss.memory.embeddings"].shape == (200, 8)  # the base embedding's dimension, not a head's
    assert int(last["loss.base_loss.memory.filled"]) > 0
