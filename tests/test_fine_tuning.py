"""The fine-tuning recipe: warm-up, backbone learning-rate multiplier, frozen BatchNorm, frozen backbone epochs,
gradient clipping, and the defaults that fit the data (batch capped at the training classes)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from edgedml.config import TrainConfig, load_run_config
from edgedml.models import build_model
from edgedml.objective import build_network, make_optimizer
from edgedml.training import Trainer
from edgedml.training.run import config_hash
from edgedml.training.trainer import learning_rate


def config(**values) -> TrainConfig:
    return TrainConfig.from_sources(overrides={"data": "digits", **values})


def folder_config(folder, **values) -> TrainConfig:
    """A run on the shared tiny image folder that trains in about a second."""
    tiny = {"backbone": "tiny", "input_size": 16, "dim": 8, "batch_size": 8, "samples_per_class": 4, "device": "cpu"}
    return TrainConfig.from_sources(overrides={"data": str(folder), **tiny, **values})


# ---- the schedule -----------------------------------------------------------------------


def test_warmup_rises_linearly_then_the_cosine_decays_over_the_remaining_steps():
    cfg = config(lr=1.0, warmup_steps=4, epochs=2)
    total = 12
    values = [learning_rate(cfg, step, total, steps_per_epoch=6) for step in range(total)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # after the warm-up: 0.5 * (1 + cos(pi * k / 8)) for k = 0..7
    assert values[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])


def test_warmup_in_epochs_counts_the_run_s_steps_and_zero_disables_it():
    cfg = config(lr=2.0, warmup_epochs=0.5, scheduler="none")
    assert cfg.warmup_for(10) == 5
    assert [learning_rate(cfg, s, 100, 10) for s in (0, 4, 5, 50)] == pytest.approx([0.4, 2.0, 2.0, 2.0])
    off = config(lr=2.0, warmup_epochs=0, scheduler="cosine")
    assert learning_rate(off, 0, 100, 10) == pytest.approx(2.0)  # the old schedule: cosine from step 0
    assert config(warmup_steps=7, warmup_epochs=3).warmup_for(10) == 7  # steps win over epochs


# ---- parameter groups, BatchNorm, clipping ------------------------------------------------


def test_backbone_learning_rate_is_the_multiplier_times_the_heads():
    cfg = config(backbone="tiny", lr=1e-3, backbone_lr_mult=0.1, distill="s2sd", aux_dims="32")
    network = build_network(cfg, build_model("tiny", 8))
    optimizer = make_optimizer(network, cfg)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(1e-4) and groups["backbone"]["lr_mult"] == 0.1
    assert groups["heads"]["lr"] == pytest.approx(1e-3)
    backbone = {id(p) for p in network.model.backbone.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == backbone
    heads = {id(p) for p in groups["heads"]["params"]}
    assert {id(p) for p in network.model.head.parameters()} <= heads
    assert {id(p) for p in network.aux_heads.parameters()} <= heads  # S2SD heads at the heads' rate


def test_pretrained_weights_turn_on_frozen_bn_and_the_lower_backbone_rate(tmp_path):
    scratch = config()
    assert (scratch.freezes_bn, scratch.backbone_lr_multiplier) == (False, 1.0)
    pretrained = config(weights=str(tmp_path / "w.pth"))
    assert (pretrained.freezes_bn, pretrained.backbone_lr_multiplier) == (True, 0.1)
    assert config(weights="imagenet", freeze_bn=False, backbone_lr_mult=0.5).freezes_bn is False


def test_frozen_bn_keeps_statistics_and_affine_through_a_training_step():
    cfg = config(backbone="tiny", freeze_bn=True)
    network = build_network(cfg, build_model("tiny", 8))
    network.train()
    bns = [m for m in network.model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.weight.detach().clone()) for m in bns]
    optimizer = make_optimizer(network, cfg)
    embeddings, _, _ = network(torch.randn(6, 3, 16, 16) * 3 + 1)
    embeddings.pow(2).sum().backward()
    optimizer.step()
    assert all(not m.training for m in bns)
    for m, (mean, weight) in zip(bns, before, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.weight, weight)
        assert m.weight.grad is None
    assert network.model.head.weight.grad is not None


def test_a_frozen_backbone_takes_no_gradient_and_runs_in_eval_mode():
    cfg = config(backbone="tiny")
    network = build_network(cfg, build_model("tiny", 8))
    network.backbone_frozen = True
    network.train()
    assert not network.model.backbone.training and network.model.head.training
    embeddings, _, _ = network(torch.randn(4, 3, 16, 16))
    embeddings.sum().backward()
    assert all(p.grad is None for p in network.model.backbone.parameters())
    assert network.model.head.weight.grad is not None


# ---- whole runs ---------------------------------------------------------------------------


def test_freeze_backbone_epochs_then_clipped_fine_tuning(shared_image_folder, tmp_path):
    cfg = folder_config(shared_image_folder, epochs=2, freeze_backbone_epochs=1, grad_clip=0.05, warmup_steps=2)
    trainer = Trainer(cfg, tmp_path / "run")
    initial = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    trainer.config.epochs = 1  # stop after the frozen epoch to look at the weights
    trainer._train_epochs()
    after_frozen = trainer.model.backbone.state_dict()
    for key, value in initial.items():  # weights and BatchNorm statistics alike
        assert torch.equal(after_frozen[key], value), key
    trainer.config.epochs = 2
    trainer._train_epochs()
    moved = [k for k, v in trainer.model.backbone.state_dict().items() if not torch.equal(v, initial[k])]
    assert moved, "the backbone trained after its frozen epoch"
    records = [json.loads(line) for line in trainer.run.metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["grad_norm_max"] > 0.05 for r in records)  # the norm before clipping is what is recorded


def test_clipping_bounds_the_gradient_norm_the_optimizer_sees(shared_image_folder, tmp_path, monkeypatch):
    cfg = folder_config(shared_image_folder, epochs=1, grad_clip=0.01)
    trainer = Trainer(cfg, tmp_path / "run")
    seen: list[float] = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad for p in trainer.network.parameters() if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", recording_step)
    trainer._train_epochs()
    assert seen and max(seen) <= 0.01 * (1 + 1e-4)


def test_digits_and_glyphs_train_with_no_option_but_out(cli, tmp_path):
    result = cli("train", "--data", "digits", "--out", tmp_path / "d", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "batch 20 = 5 classes x 4 images" in result.output  # the run says what it chose
    written = yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())
    assert (written["batch_size"], written["samples_per_class"]) == (20, 4)
    assert (written["freeze_bn"], written["backbone_lr_mult"], written["warmup_epochs"]) == (False, 1.0, 1.0)
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["input_normalization"] == {
        "channels": "RGB",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }  # the ImageNet statistics pretrained weights expect, recorded in the run as in the export


@pytest.mark.slow
def test_glyphs_trains_with_no_option_but_out(cli, tmp_path):
    result = cli("train", "--data", "glyphs", "--out", tmp_path / "g", "--epochs", "1")
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((tmp_path / "g" / "config.yaml").read_text())
    assert written["batch_size"] == 64  # glyphs has 142 training classes: the default batch is not capped
    assert "classes x" not in result.output


def test_a_batch_the_user_set_that_cannot_be_formed_stays_an_error(cli, tmp_path):
    result = cli("train", "--data", "digits", "--out", tmp_path / "d", "--batch-size", "64", "--epochs", "1")
    assert result.exit_code != 0
    assert "16 classes" in result.output and "Traceback" not in result.output


# ---- runs written before these options existed ------------------------------------------------


def test_a_run_config_without_the_fine_tuning_keys_reads_as_before_and_keeps_its_hash(trained, tmp_path):
    written = yaml.safe_load((trained.run / "config.yaml").read_text())
    for key in ("warmup_epochs", "warmup_steps", "backbone_lr_mult", "freeze_bn", "freeze_backbone_epochs"):
        written.pop(key)
    written.pop("grad_clip")
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text(yaml.safe_dump(written))
    loaded = load_run_config(old)
    assert (loaded.warmup_epochs, loaded.freeze_bn, loaded.backbone_lr_mult, loaded.grad_clip) == (0.0, False, 1.0, 0.0)
    legacy = {k: v for k, v in loaded.to_dict().items() if k in written}
    canonical = json.dumps(legacy, sort_keys=True)
    assert config_hash(loaded) == hashlib.sha256(canonical.encode()).hexdigest()[:16]  # the hash it was saved with


def test_resume_keeps_the_recipe(shared_image_folder, cli, tmp_path, tiny_train_options):
    run = tmp_path / "run"
    options = [*tiny_train_options, "--freeze-bn", "--backbone-lr-mult", "0.5", "--warmup-steps", "3"]
    first = cli("train", "--data", shared_image_folder, "--out", run, *options)
    assert first.exit_code == 0, first.output
    resumed = cli("train", "--resume", run, "--epochs", "3")
    assert resumed.exit_code == 0, resumed.output
    config_after = yaml.safe_load((run / "config.yaml").read_text())
    assert (config_after["freeze_bn"], config_after["backbone_lr_mult"], config_after["warmup_steps"]) == (
        True,
        0.5,
        3,
    )
    state = load_file(run / "last.safetensors")
    assert any(key.startswith("optimizer.") for key in state)


# ---- a collapsed model is reported ------------------------------------------------------------


def test_concentration_is_the_length_of_the_mean_unit_vector():
    from edgedml.training.evaluate import concentration

    assert concentration(torch.tensor([[2.0, 0.0], [5.0, 0.0]])) == pytest.approx(1.0)  # one direction
    assert concentration(torch.tensor([[1.0, 0.0], [-3.0, 0.0]])) == pytest.approx(0.0)  # opposite
    assert concentration(torch.tensor([[1.0, 0.0], [0.0, 2.0]])) == pytest.approx(math.sqrt(0.5))


def test_a_run_whose_validation_embeddings_collapse_says_why_once(shared_image_folder, tmp_path, monkeypatch, caplog):
    cfg = folder_config(shared_image_folder, epochs=2, normalize=False)
    trainer = Trainer(cfg, tmp_path / "run")
    monkeypatch.setattr(trainer, "_validate", lambda: {"recall_at_1": 0.3, "map_at_r": 0.1, "concentration": 0.995})
    with caplog.at_level("WARNING", logger="edgedml"):
        trainer._train_epochs()
    warnings = [r.getMessage() for r in caplog.records if "collapsed onto one direction" in r.getMessage()]
    assert len(warnings) == 1 and "--normalize" in warnings[0] and "0.995" in warnings[0]
    records = [json.loads(line) for line in trainer.run.metrics.read_text().splitlines()]
    assert [r["val_concentration"] for r in records] == [0.995, 0.995]  # recorded every epoch


def test_workers_default_to_feeding_a_gpu_and_to_none_on_the_cpu(monkeypatch):
    import edgedml.config as config_module

    monkeypatch.setattr(config_module.os, "cpu_count", lambda: 6)
    assert config().workers_for("cuda") == 4  # at most 4, a core left for training
    assert config().workers_for("cpu") == 0
    monkeypatch.setattr(config_module.os, "cpu_count", lambda: 2)
    assert config().workers_for("cuda") == 1
    assert config(workers=3).workers_for("cuda") == 3  # the user's value is kept
