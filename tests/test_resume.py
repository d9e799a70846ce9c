"""Ctrl-C and resume give the weights of an uninterrupted run; a non-finite loss stops cleanly."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from edgedml.config import TrainConfig
from edgedml.errors import NonFiniteLossError, TrainingInterrupted
from edgedml.progress import Progress
from edgedml.training import Trainer

EPOCHS = 3
STEPS_PER_EPOCH = 6  # 24 training images in batches of 2 classes x 2 images


def make_config(data: Path, **changes) -> TrainConfig:
    options = {
        "data": str(data), "backbone": "tiny", "input_size": 16, "dim": 16, "batch_size": 4, "samples_per_class": 2,
        "epochs": EPOCHS, "device": "cpu", "seed": 3,
    }  # fmt: skip
    return TrainConfig.from_sources(overrides={**options, **changes})


def checkpoint_progress(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["progress"])


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    different = [key for key in expected if not torch.equal(actual[key], expected[key])]
    assert not different, f"tensors differ: {different}"


def metric_records(run: Path) -> list[dict]:
    """metrics.jsonl without its timing field, which legitimately differs between runs."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for record in records:
        record.pop("train_images_per_s")
    return records


class StepWatcher(Progress):
    """Turns the trainer's progress reports back into ``on_step(epoch, step)`` after each step (epoch
    0-based, step 1-based within it) and ``on_epoch_end(epoch)`` (1-based) after each epoch."""

    position = 0
    epochs_ended = 0

    def stage(self, description, total=None, done=0):
        if description == "train":
            self.position = done

    def advance(self, count=1, status=None):
        self.position += count
        epoch, step = divmod(self.position - 1, STEPS_PER_EPOCH)
        self.on_step(epoch, step + 1)

    def note(self, message):
        self.epochs_ended += 1
        self.on_epoch_end(self.epochs_ended)

    def on_step(self, epoch, step): ...

    def on_epoch_end(self, epoch): ...


class CtrlCAt(StepWatcher):
    """Sends SIGINT to this process once, right after step ``step`` (1-based) of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch: int, step: int):
        self.at = (epoch, step)
        self.sent = False

    def on_step(self, epoch: int, step: int) -> None:
        if (epoch, step) == self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_image_folder) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    summary = Trainer(make_config(shared_image_folder), run).fit()
    return run, summary


@pytest.mark.parametrize(
    ("epoch", "step"),
    [(1, 2), (0, 3), (1, STEPS_PER_EPOCH)],
    ids=["epoch2-step2", "epoch1-step3", "end-of-epoch2"],
)
def test_ctrl_c_then_resume_gives_the_uninterrupted_weights(uninterrupted, shared_image_folder, tmp_path, epoch, step):
    reference, reference_summary = uninterrupted
    run = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)
    callbacks = CtrlCAt(epoch, step)

    with pytest.raises(TrainingInterrupted) as caught:
        Trainer(make_config(shared_image_folder), run, callbacks).fit()

    assert callbacks.sent
    assert signal.getsignal(signal.SIGINT) is handler_before  # the trainer's handler is gone again
    error = caught.value
    assert error.exit_code == 130
    assert f"interrupted at epoch {epoch + 1}, step {step}" in error.message
    assert f"edgedml train --resume {run}" in error.hint
    progress = checkpoint_progress(run / "last.safetensors")
    assert (progress["epoch"], progress["step"]) == (epoch, step)
    assert progress["global_step"] == epoch * STEPS_PER_EPOCH + step
    assert len(metric_records(run)) == epoch  # only finished epochs are recorded
    assert not (run / "summary.json").exists()

    summary = Trainer.resume(run).fit()

    for name in ("best.safetensors", "last.safetensors"):
        assert_same_tensors(model_tensors(run / name), model_tensors(reference / name))
    last, reference_last = load_file(str(run / "last.safetensors")), load_file(str(reference / "last.safetensors"))
    assert_same_tensors(
        {k: v for k, v in last.items() if k.startswith("optimizer.")},
        {k: v for k, v in reference_last.items() if k.startswith("optimizer.")},
    )
    assert metric_records(run) == metric_records(reference)
    for key in ("recall_at_1", "recall_at_k", "map_at_r", "nmi", "best_epoch", "epochs"):
        assert summary[key] == reference_summary[key], key


def test_second_ctrl_c_aborts_without_saving(shared_image_folder, tmp_path, caplog):
    class CtrlCTwice(StepWatcher):
        def on_step(self, epoch, step):
            if (epoch, step) == (0, 2):
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)
    with caplog.at_level("WARNING", logger="edgedml"), pytest.raises(TrainingInterrupted) as caught:
        Trainer(make_config(shared_image_folder, epochs=1), run, CtrlCTwice()).fit()
    # the first Ctrl-C was the trainer's (a stop request), the second aborted at once
    assert any("Ctrl-C: stopping after this step" in r.getMessage() for r in caplog.records)
    assert signal.getsignal(signal.SIGINT) is handler_before
    assert not (run / "last.safetensors").exists()
    assert caught.value.message == "interrupted before the first checkpoint; no checkpoint was saved"
    assert caught.value.hint == "run the same command again"
    # ... and the hint works: the folder holds only what the stopped run left, which a new run takes over
    assert Trainer(make_config(shared_image_folder, epochs=1), run).fit()["epochs"] == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shared_image_folder, tmp_path, bad):
    run = tmp_path / "run"
    bad_step = STEPS_PER_EPOCH + 1  # 0-based global step: epoch 2, step 2

    class Watch(StepWatcher):
        last_after_epoch_1: tuple[bytes, int] | None = None
        params_before_bad_step: dict[str, torch.Tensor] | None = None

        def on_step(self, epoch, step):
            if trainer.progress.global_step == bad_step:  # the next step is the bad one
                self.params_before_bad_step = {k: p.detach().clone() for k, p in trainer.model.named_parameters()}

        def on_epoch_end(self, epoch):
            if epoch == 1:
                last = run / "last.safetensors"
                self.last_after_epoch_1 = (last.read_bytes(), last.stat().st_mtime_ns)

    watch = Watch()
    trainer = Trainer(make_config(shared_image_folder), run, watch)
    clean_forward = trainer.loss_fn.forward

    def poisoned_forward(*args, **kwargs):
        loss = clean_forward(*args, **kwargs)
        return loss * bad if trainer.progress.global_step == bad_step else loss

    trainer.loss_fn.forward = poisoned_forward
    handler_before = signal.getsignal(signal.SIGINT)

    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit()

    message = caught.value.message
    assert f"loss became {bad}" in message
    assert "epoch 2, step 2" in message and f"global step {bad_step + 1}" in message
    assert "weights were not updated" in message
    assert f"{run / 'last.safetensors'} holds the last checkpoint" in message  # it exists: the hint's state is real
    assert "--lr" in caught.value.hint
    assert signal.getsignal(signal.SIGINT) is handler_before

    last = run / "last.safetensors"
    assert watch.last_after_epoch_1 is not None
    assert (last.read_bytes(), last.stat().st_mtime_ns) == watch.last_after_epoch_1  # unchanged
    progress = checkpoint_progress(last)
    assert (progress["epoch"], progress["step"], progress["global_step"]) == (1, 0, STEPS_PER_EPOCH)
    assert len(metric_records(run)) == 1 and not (run / "summary.json").exists()
    # the optimizer never stepped on the bad loss
    assert_same_tensors({k: p.detach() for k, p in trainer.model.named_parameters()}, watch.params_before_bad_step)

    # and the run resumes from the last good checkpoint
    summary = Trainer.resume(run).fit()
    assert summary["epochs"] == EPOCHS
    assert len(metric_records(run)) == EPOCHS


def test_ctrl_c_through_the_cli_exits_130_with_the_resume_command(
    cli, image_folder, tiny_train_options, tmp_path, monkeypatch
):
    from edgedml.cli.progress import RichProgress

    advance = RichProgress.advance
    steps = []

    def advance_then_ctrl_c(self, count=1, status=None):
        advance(self, count, status)
        steps.append(status)
        if len(steps) == 2:  # epoch 1, step 2
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RichProgress, "advance", advance_then_ctrl_c)
    run = tmp_path / "run"
    result = cli("train", "--data", image_folder, "--out", run, *tiny_train_options)
    assert result.exit_code == 130, str(result)
    assert len(result.error_lines) == 1 and "interrupted at epoch 1, step 2" in result.error_lines[0]
    assert f"edgedml train --resume {run}" in result.output
    assert "Traceback" not in result.output
    assert checkpoint_progress(run / "last.safetensors")["step"] == 2

    monkeypatch.setattr(RichProgress, "advance", advance)
    result = cli("train", "--resume", run, "--json")
    assert result.exit_code == 0, str(result)
    assert json.loads(result.stdout)["epochs"] == 2
