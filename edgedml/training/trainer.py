"""The training loop: P x K batches, a metric-learning loss, per-epoch validation, atomic checkpoints.

Reproducible and resumable: batches and augmentations are pure functions of (seed, epoch,
step), the learning rate a function of the global step, and ``last.safetensors`` stores the
optimizer, the step and the RNG, so a run resumed after Ctrl-C ends with the same weights as
one that was never interrupted. A NaN or infinite loss stops the run before the weights are
touched, leaving the last good checkpoint in place.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from edgedml import __version__
from edgedml.budget.planner import Plan, cap_cuda_process, plan_for_config
from edgedml.budget.probes import check_allocator_settings
from edgedml.config import AUTO, TrainConfig
from edgedml.data import (
    ImageDataset,
    PKSampler,
    PreparedData,
    Splits,
    collate_skip_bad,
    prepare_data,
    sample_seed,
    train_transform,
)
from edgedml.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from edgedml.errors import CheckpointError, ConfigError, NonFiniteLossError, TrainingError, TrainingInterrupted
from edgedml.io import append_jsonl, check_output_dir, read_jsonl, write_json, write_text
from edgedml.memory import local_gather, resolve_memory_size
from edgedml.models import EmbeddingModel, build_model, upgrade_model_state
from edgedml.models.pretrained import resolve_weights
from edgedml.objective import Objective, StepOutputs, build_network, build_objective, make_optimizer
from edgedml.progress import SILENT
from edgedml.progress import Progress as Display
from edgedml.training.checkpoint import (
    AUX,
    LOSS,
    MODEL,
    RNG,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
    strip_prefix,
    with_prefix,
)
from edgedml.training.curves import CurvesFigure
from edgedml.training.device import resolve_device
from edgedml.training.distributed import (
    DistributedContext,
    check_identical_across_ranks,
    cleanup,
    gather_in_rank_order,
    init_from_environment,
    synchronize,
)
from edgedml.training.evaluate import EVAL_BATCH, evaluate_split, load_run_model
from edgedml.training.run import RunDir, config_hash
from edgedml.units import format_bytes

log = logging.getLogger(__name__)
TEST_STAGE = "evaluating the best weights on the unseen test classes"
# Validation embeddings whose unit vectors average to this length point (nearly) one way: a collapsed model.
# Healthy glyphs runs measure 0.45-0.6, the collapsed raw-Shadow runs 0.99 (docs/methods.md §7).
COLLAPSED = 0.97


@dataclass
class TrainProgress:
    """Where training stands; saved in ``last.safetensors`` metadata."""

    epoch: int = 0
    step: int = 0  # next step within ``epoch``
    global_step: int = 0
    best_score: list[float] = field(default_factory=lambda: [-1.0, -1.0])  # (val Recall@1, val MAP@R)
    best_epoch: int = -1
    images_seen: int = 0
    train_seconds: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_batches: int = 0
    epoch_grad_norm_max: float = 0.0
    skipped_images: list[str] = field(default_factory=list)
    untrained: dict[str, float] = field(default_factory=dict)  # test Recall@1 / MAP@R before training


class Trainer:
    """One training run: ``Trainer(config, run_dir).fit()``, or ``Trainer.resume(run_dir).fit()``.

    Construction resolves the configuration (``resolve_config``: a new object, the caller's is left
    as given), joins the process group under torchrun, caps this process's CUDA allocations at the
    plan's budget, and builds the data, the network, the objective and the optimizer. ``display``
    renders progress (stages, steps, a line per epoch); the library itself only logs.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path, display: Display = SILENT):
        check_output_dir(run_dir)  # before any work
        self.run = RunDir(Path(run_dir))
        self.display = display
        self.device = resolve_device(config.device)
        if config.amp and self.device.type != "cuda":
            raise ConfigError(f"--amp needs CUDA, this run is on {self.device.type}", hint="drop --amp")
        prepared = prepare_data(config.data, config.train_classes, config.val_fraction, config.seed)
        self.splits: Splits = prepared.splits
        self.skipped = prepared.skipped
        self.config, self.plan, notes = resolve_config(config, prepared, self.device.type)
        self.dist = self._join_process_group()
        for note in notes:  # what the run chose for the user (rank 0 only: the others' display is silent)
            log.info("%s", note)
            self.display.note(note)
        self._cap_cuda()
        self.class_to_index = {name: i for i, name in enumerate(self.splits.train_classes)}
        self.dataset = ImageDataset(
            self.splits.train,
            self.class_to_index,
            train_transform(self.config.input_size, self.config.crop_scale, self.config.hflip),
        )
        self.sampler = self._sampler()
        torch.manual_seed(self.config.seed)
        weights = resolve_weights(self.config.backbone, self.config.weights, self.display)
        self.model: EmbeddingModel = build_model(self.config.backbone, self.config.dim, weights).to(self.device)
        self.network = build_network(self.config, self.model).to(self.device)
        self.forward_train: nn.Module = self._parallel(self.network)
        self.loss_fn = self._build_objective().to(self.device)
        self.optimizer = make_optimizer(self.network, self.config)
        self._trainable = [p for p in self.network.parameters() if p.requires_grad]  # what clipping sees, per step
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.config.amp)
        self.progress = TrainProgress(skipped_images=self.skipped)
        self._stop_requested = False
        self._warned_collapse = False
        self._curves: CurvesFigure | None = CurvesFigure(self.config.epochs)  # None once drawing has failed
        self._replaces: RunDir | None = None  # with --overwrite: the old run, until the new one's first checkpoint
        val_counts = Counter(s.label for s in self.splits.val)
        self._can_validate = any(count >= 2 for count in val_counts.values())
        if self.splits.val and not self._can_validate:
            log.warning("no validation class has 2 images; selecting the latest epoch (raise --val-fraction)")

    def _join_process_group(self) -> DistributedContext:
        """Under torchrun: join the process group, and train on this rank's GPU."""
        context = init_from_environment(self.device.type)
        if context.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", context.local_rank)
        if not context.is_main:  # rank 0 reports: the others neither draw progress nor repeat its warnings
            self.display = SILENT
            logging.getLogger("edgedml").setLevel(logging.ERROR)
        return context

    def _cap_cuda(self) -> None:
        """Cap this process's CUDA allocations at the plan's budget (process-wide; a no-op off CUDA)."""
        if self.plan is not None and cap_cuda_process(self.plan.budget, self.device) is not None:
            log.info("CUDA allocations capped at %s", format_bytes(self.plan.budget.available - self.plan.budget.fixed))

    def _sampler(self) -> PKSampler:
        sampler = PKSampler(
            self.dataset.labels, self.config.classes_per_batch, self.config.samples_per_class, self.config.seed
        )
        if len(sampler) < self.dist.world_size:
            raise ConfigError(
                f"an epoch has {len(sampler)} batches, fewer than the {self.dist.world_size} ranks",
                hint="lower --batch-size or use fewer processes",
            )
        return sampler

    def _parallel(self, network: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return network
        device_ids = [self.dist.local_rank] if self.device.type == "cuda" else None
        # In the frozen-backbone epochs the backbone's parameters take no gradient, which DDP must be told.
        unused = self.config.freeze_backbone_epochs > 0
        return DistributedDataParallel(network, device_ids=device_ids, find_unused_parameters=unused)

    def _build_objective(self) -> Objective:
        config = self.config
        memory_size = 0
        if config.memory != "none":
            memory_size = resolve_memory_size(config.memory_size, len(self.splits.train))
            total_steps = config.epochs * self.steps_per_epoch
            if config.memory_warmup >= total_steps:
                log.warning(
                    "--memory-warmup %d >= the run's %d iterations: "
                    "the memory will never be used (lower --memory-warmup)",
                    config.memory_warmup,
                    total_steps,
                )
            log.info(
                "cross-batch memory: %s, %d slots x %d dims (%s)",
                config.memory,
                memory_size,
                config.dim,
                config.memory_storage,
            )
        teacher = None
        if config.teacher is not None:
            teacher_model, teacher_config = load_run_model(config.teacher, device=str(self.device.type))
            teacher = (teacher_model, teacher_config.input_size)
            log.info("distilling from the frozen %d-d model of %s", teacher_config.dim, config.teacher)
        gather = gather_in_rank_order if self.dist.enabled else local_gather
        return build_objective(config, memory_size, gather, teacher)

    @property
    def steps_per_epoch(self) -> int:
        """Each rank takes every world_size-th batch of the shared schedule."""
        return len(self.sampler) // self.dist.world_size

    def _rank_batches(self, epoch: int) -> list[list[int]]:
        batches = self.sampler.batches(epoch)[self.dist.rank :: self.dist.world_size]
        return batches[: self.steps_per_epoch]

    # ---- public -------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: str | Path, display: Display = SILENT, epochs: int | None = None) -> Trainer:
        """The run in ``run_dir`` at its last checkpoint, to train to its own epochs or to ``epochs`` (more)."""
        run = RunDir(Path(run_dir))
        config = run.load_config()
        if not run.last.is_file():
            raise CheckpointError(
                f"{run.root}: the run stopped before its first checkpoint, so there is nothing to resume",
                hint=f"start it again: edgedml train --config {run.config} --out {run.root}",
            )
        if epochs is not None:  # validated like any option, before anything is loaded or written
            config = TrainConfig.from_sources(overrides={**config.to_dict(), "epochs": epochs})
        trainer = cls(config, run.root, display)
        trainer._restore(load_checkpoint(run.last))
        done = trainer.progress.epoch + (trainer.progress.step > 0)
        if config.epochs < done:
            raise ConfigError(
                f"--epochs {config.epochs}: the run in {run.root} has already trained {done} epoch(s)",
                hint=f"give --epochs {done + 1} or more to extend it, or evaluate it: edgedml eval {run.root}",
            )
        return trainer

    def fit(self, overwrite: bool = False) -> dict[str, Any]:
        """Train to ``config.epochs``, then evaluate the best weights on the test classes.

        A new run refuses a directory that already holds one unless ``overwrite``; then it trains in
        ``RUN/.overwrite`` and replaces the old run's files only at its first checkpoint, so a run that fails
        or is interrupted before it has one leaves the old run as it was.
        """
        fresh = self.progress.global_step == 0
        if fresh:
            self._check_target(overwrite)
        # Every rank has looked before rank 0 writes the new run's config.yaml: otherwise a slower rank
        # would find it and refuse the directory as an existing run.
        synchronize(self.dist)
        main = self.dist.is_main
        if main and fresh:
            self._prepare_target()
        handler = _attach_log_file(self.run.log) if main else None
        try:
            if main:
                write_text(self.run.config, self.config.to_yaml())  # on resume, records an extended --epochs
            if fresh and main:
                if self.skipped:
                    log.warning("skipped %d unusable image(s): %s", len(self.skipped), "; ".join(self.skipped))
                # The baseline the summary compares with: what training bought on the unseen classes.
                self.progress.untrained = self._test_metrics(full=False)
            self._train_epochs()
            return self._finish() if main else {}
        except KeyboardInterrupt:
            if self._replaces is None and self.run.last.is_file():
                raise  # a second Ctrl-C after a checkpoint: abort at once, the checkpoint stays
            raise TrainingInterrupted(
                f"interrupted before the first checkpoint; {self._state_on_disk()}",
                hint="run the same command again",
            ) from None
        finally:
            if handler is not None:
                logging.getLogger("edgedml").removeHandler(handler)
                handler.close()
            if self._replaces is not None:  # never reached a checkpoint: the new run goes, the old one stays
                shutil.rmtree(self.run.root, ignore_errors=True)
                self.run, self._replaces = self._replaces, None
            if self.dist.enabled:
                cleanup()

    def _check_target(self, overwrite: bool) -> None:
        """A new run may take an empty folder, or one whose run stopped before its first checkpoint."""
        if self.run.holds_run() and not overwrite:
            raise CheckpointError(
                f"{self.run.root} already holds a run",
                hint=f"resume it with --resume {self.run.root}, pick another --out, or pass --overwrite",
            )
        if self.run.config.is_file() and not self.run.holds_run() and not self.run.holds_leftover():
            raise CheckpointError(
                f"--out {self.run.root} holds a config.yaml that edgedml train did not write",
                hint="pick another --out (edgedml writes config.yaml into the run directory)",
            )

    def _prepare_target(self) -> None:
        """Rank 0, new run: train beside an existing run (``--overwrite``), or clear what a stopped run left."""
        self.run.root.mkdir(parents=True, exist_ok=True)
        if self.run.holds_run():
            staging = self.run.staging
            shutil.rmtree(staging.root, ignore_errors=True)
            staging.root.mkdir()
            self.run, self._replaces = staging, self.run
        else:
            self.run.remove_files()

    def _promote(self) -> None:
        """The first checkpoint of an ``--overwrite`` run: its files replace the old run's."""
        target = self._replaces
        if target is None:
            return
        target.replace_with(self.run)
        self.run, self._replaces = target, None
        log.info("the new run replaced the previous one in %s", target.root)

    def _state_on_disk(self) -> str:
        """What the run's folder holds now, for an error's message."""
        if self._replaces is not None:
            return f"{self._replaces.root} still holds the previous run, untouched"
        if self.run.last.is_file():
            return f"{self.run.last} holds the last checkpoint"
        return "no checkpoint was saved"

    # ---- loop ---------------------------------------------------------------------
    def _train_epochs(self) -> None:
        config, progress = self.config, self.progress
        steps = self.steps_per_epoch
        self.display.stage("train", total=config.epochs * steps, done=progress.epoch * steps + progress.step)
        while progress.epoch < config.epochs:
            self._set_train_mode()
            batches = self._rank_batches(progress.epoch)
            keys = [
                [(index, sample_seed(config.seed, progress.epoch, b, pos)) for pos, index in enumerate(batch)]
                for b, batch in enumerate(batches)
            ]
            loader = DataLoader(
                self.dataset,
                batch_sampler=keys[progress.step :],
                collate_fn=collate_skip_bad,
                num_workers=config.workers,
                pin_memory=self.device.type == "cuda",  # lets the copy to the GPU overlap (non_blocking)
            )
            with self._stop_on_ctrl_c():
                for batch in loader:
                    self._train_step(batch)
                    if self._stop_agreed():
                        self._save_last()
                        raise TrainingInterrupted(
                            f"interrupted at epoch {progress.epoch + 1}, step {progress.step}; saved {self.run.last}",
                            hint=f"resume with: edgedml train --resume {self.run.root}",
                        )
            self._end_epoch()

    def _set_train_mode(self) -> None:
        """Training mode for this epoch (after a validation left the model in eval mode): the backbone frozen in
        the first ``freeze_backbone_epochs``, BatchNorm statistics frozen with ``freeze_bn``."""
        frozen = self.progress.epoch < self.config.freeze_backbone_epochs
        if frozen != self.network.backbone_frozen:
            log.info("epoch %d: backbone %s", self.progress.epoch + 1, "frozen" if frozen else "trained")
        self.network.backbone_frozen = frozen
        self.network.train()

    @contextmanager
    def _stop_on_ctrl_c(self) -> Iterator[None]:
        """First Ctrl-C: finish the step, save ``last`` and stop. Second: abort at once, saving nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            log.warning("Ctrl-C: stopping after this step and saving %s (press again to abort)", self.run.last)

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop_agreed(self) -> bool:
        """Under DDP every rank stops at the same step, when any rank saw Ctrl-C."""
        if not self.dist.enabled:
            return self._stop_requested
        flag = torch.tensor([float(self._stop_requested)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _train_step(self, batch) -> None:
        progress, config = self.progress, self.config
        started = time.perf_counter()
        if batch is not None:
            images, labels, _ = batch
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device)
            lr = self._lr(progress.global_step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            with (
                self._out_of_memory_is_an_error(),
                torch.autocast(self.device.type, dtype=torch.float16, enabled=config.amp),
            ):
                embeddings, features, aux = self.forward_train(images)
            with self._out_of_memory_is_an_error():
                loss = self.loss_fn(StepOutputs(embeddings, features, aux, images), labels)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss became {loss.item()} at epoch {progress.epoch + 1}, step {progress.step + 1} "
                    f"(global step {progress.global_step + 1}); weights were not updated; {self._state_on_disk()}",
                    hint="train again with a lower --lr (a new --out, or --overwrite), or check the data",
                )
            self.optimizer.zero_grad(set_to_none=True)
            with self._out_of_memory_is_an_error():
                self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(
                self._trainable, config.grad_clip if config.grad_clip > 0 else math.inf
            )  # the norm before clipping, recorded either way
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if torch.isfinite(norm):
                progress.epoch_grad_norm_max = max(progress.epoch_grad_norm_max, float(norm))
            progress.epoch_loss_sum += loss.item()
            progress.epoch_batches += 1
            progress.images_seen += len(images)
        elapsed = time.perf_counter() - started
        progress.train_seconds += elapsed
        progress.step += 1
        progress.global_step += 1
        rate = (len(batch[0]) / elapsed) if batch is not None and elapsed > 0 else 0.0
        loss_so_far = progress.epoch_loss_sum / max(progress.epoch_batches, 1)
        self.display.advance(1, f"epoch {progress.epoch + 1}/{config.epochs}  loss {loss_so_far:.4f}  {rate:.0f} img/s")

    @contextmanager
    def _out_of_memory_is_an_error(self) -> Iterator[None]:
        """Inside the CUDA cap an overrun raises here, in-process: say so with the plan's numbers."""
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            planned = f"; the plan predicted a peak of {format_bytes(self.plan.estimate.peak)}" if self.plan else ""
            raise TrainingError(
                f"CUDA out of memory at epoch {self.progress.epoch + 1}, step {self.progress.step + 1}{planned}; "
                f"{self._state_on_disk()}",
                hint="train again with a lower --batch-size or --memory-size, or a larger --budget",
            ) from None

    def _end_epoch(self) -> None:
        progress = self.progress
        if self.dist.enabled:
            check_identical_across_ranks(self._objective_state(), "the cross-batch memory")
        record: dict[str, Any] = {
            "epoch": progress.epoch + 1,
            "global_step": progress.global_step,
            "loss": progress.epoch_loss_sum / max(progress.epoch_batches, 1),
            "lr": self._lr(max(progress.global_step - 1, 0)),
            "grad_norm_max": progress.epoch_grad_norm_max,
            "train_images_per_s": progress.images_seen / max(progress.train_seconds, 1e-9),
        }
        if self._can_validate and self.dist.is_main:
            record.update({f"val_{k}": v for k, v in self._validate().items()})
            score = [record["val_recall_at_1"], record["val_map_at_r"]]  # MAP@R breaks Recall@1 ties
        else:
            score = [float(progress.epoch), 0.0]  # no validation split: the latest epoch is the best
        progress.epoch += 1
        progress.step = 0
        progress.epoch_loss_sum, progress.epoch_batches, progress.epoch_grad_norm_max = 0.0, 0, 0.0
        if score > progress.best_score:
            progress.best_score, progress.best_epoch = score, progress.epoch
            if self.dist.is_main:
                save_checkpoint(self.run.best, with_prefix(MODEL, self.model.state_dict()), self._model_metadata())
        record["best_epoch"] = progress.best_epoch
        if self.dist.is_main:
            append_jsonl(self.run.metrics, record)
            self._draw_curves()
        self._save_last()
        if self.dist.is_main:
            self.display.note(epoch_line(record))
            if "val_concentration" in record:
                self._warn_if_collapsed(record["val_concentration"])

    def _draw_curves(self) -> None:
        """Redraw curves.png from metrics.jsonl; a picture that cannot be drawn never stops the run."""
        if self._curves is None:
            return
        started = time.perf_counter()
        try:
            self._curves.write(read_jsonl(self.run.metrics), self.run.curves)
        except Exception as exc:  # matplotlib missing or broken, a full disk: the run matters more than its picture
            log.warning(
                "could not draw %s (%s: %s); training goes on without it", self.run.curves, type(exc).__name__, exc
            )
            self._curves = None
            return
        log.debug("drew %s in %.0f ms", self.run.curves, 1000 * (time.perf_counter() - started))

    def _warn_if_collapsed(self, value: float) -> None:
        """Once per run: the validation embeddings all point one way, so retrieval (by direction) cannot work."""
        if value < COLLAPSED or self._warned_collapse:
            return
        self._warned_collapse = True
        cause = (
            "Shadow on raw projections (--no-normalize) can tell classes apart by length alone; train with --normalize"
            if self.config.loss == "shadow" and not self.config.normalize
            else "lower --lr, or check the labels"
        )
        message = (
            f"after epoch {self.progress.epoch}: the validation embeddings have collapsed onto one direction "
            f"(mean unit vector of length {value:.3f}); {cause}"
        )
        log.warning("%s", message)
        self.display.note(message)

    def _test_metrics(self, full: bool):
        with self._out_of_memory_is_an_error():
            return evaluate_split(
                self.model,
                self.splits.test,
                self.config.input_size,
                self.device,
                full,
                self.config.seed,
                self._eval_batch,
            )

    def _validate(self) -> dict[str, float]:
        with self._out_of_memory_is_an_error():
            return evaluate_split(
                self.model, self.splits.val, self.config.input_size, self.device, False, 0, self._eval_batch
            )

    @property
    def _eval_batch(self) -> int:
        """Inside a memory plan, evaluation embeds in batches of the planned training batch, which the plan covers
        (a no-grad forward holds less than the training step); without a plan, the usual evaluation batch."""
        return self.config.batch_size if self.plan is not None else EVAL_BATCH

    def _finish(self) -> dict[str, Any]:
        self.display.stage(TEST_STAGE)
        tensors, _ = load_checkpoint(self.run.best)
        self.model.load_state_dict(upgrade_model_state(self.config.backbone, strip_prefix(MODEL, tensors)))
        metrics = self._test_metrics(full=True)
        progress = self.progress
        summary = {
            **metrics.to_dict(),
            "untrained_recall_at_1": progress.untrained.get("recall_at_1"),
            "untrained_map_at_r": progress.untrained.get("map_at_r"),
            "epochs": progress.epoch,
            "best_epoch": progress.best_epoch,
            "wall_s": progress.train_seconds,
            "train_images_per_s": progress.images_seen / max(progress.train_seconds, 1e-9),
            "parameters": sum(p.numel() for p in self.model.parameters()),  # the exported model
            "parameters_training": sum(p.numel() for p in self.network.parameters()),  # with S2SD's auxiliary heads
            "train_classes": self.splits.train_classes,
            "test_classes": self.splits.test_classes,
            "images": {"train": len(self.splits.train), "val": len(self.splits.val), "test": len(self.splits.test)},
            "skipped_images": len(progress.skipped_images),
            "config_hash": config_hash(self.config),
            # what the model expects, as the export records it: RGB in [0, 1], then (x - mean) / std per channel
            "input_normalization": {"channels": "RGB", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "edgedml_version": __version__,
            "device": str(self.device),
        }
        write_json(self.run.summary, summary)
        return summary

    # ---- state --------------------------------------------------------------------
    def _lr(self, global_step: int) -> float:
        """The heads' learning rate at ``global_step``: a linear warm-up from 0 over the warm-up steps, then
        constant (``scheduler: none``) or a cosine decay to 0 over the remaining steps; the backbone's is this
        times ``backbone_lr_mult``."""
        return learning_rate(self.config, global_step, self.config.epochs * self.steps_per_epoch, self.steps_per_epoch)

    def _model_metadata(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "config_hash": config_hash(self.config), "epoch": self.progress.epoch}

    def _save_last(self) -> None:
        if not self.dist.is_main:
            return
        optimizer_tensors, optimizer_meta = optimizer_to_flat(self.optimizer)
        tensors = {
            **with_prefix(MODEL, self.model.state_dict()),
            **with_prefix(AUX, self._aux_state()),  # S2SD heads: training only, never in best.safetensors
            **with_prefix(LOSS, self._objective_state()),  # the cross-batch memory and its filters
            **optimizer_tensors,
            RNG + "torch": torch.get_rng_state(),
        }
        metadata = {
            **self._model_metadata(),
            "progress": vars(self.progress),
            "optimizer": optimizer_meta,
            "scaler": self.scaler.state_dict(),
        }
        save_checkpoint(self.run.last, tensors, metadata)
        self._promote()

    def _aux_state(self) -> dict[str, torch.Tensor]:
        return self.network.aux_heads.state_dict() if self.network.aux_heads is not None else {}

    def _objective_state(self) -> dict[str, torch.Tensor]:
        """The objective's own state (memory, filters, counters); a frozen teacher is not the run's state."""
        return {k: v for k, v in self.loss_fn.loss.state_dict().items() if not k.startswith("teacher.")}

    def _restore(self, checkpoint: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> None:
        tensors, metadata = checkpoint
        if metadata.get("config_hash") != config_hash(_without_epochs(self.config, metadata)):
            raise CheckpointError(
                f"{self.run.last} was written by a different configuration than {self.run.config}",
                hint="restore the run's config.yaml, or start a new run",
            )
        try:
            self.model.load_state_dict(upgrade_model_state(self.config.backbone, strip_prefix(MODEL, tensors)))
            if self.network.aux_heads is not None:
                self.network.aux_heads.load_state_dict(strip_prefix(AUX, tensors))
            self.loss_fn.loss.load_state_dict(strip_prefix(LOSS, tensors), strict=self.config.teacher is None)
            optimizer_from_flat(self.optimizer, tensors, metadata["optimizer"])
            if metadata.get("scaler"):
                self.scaler.load_state_dict(metadata["scaler"])
            torch.set_rng_state(tensors[RNG + "torch"])
            self.progress = TrainProgress(**metadata["progress"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:  # a damaged or hand-edited checkpoint
            what = f"{exc.args[0]!r} missing" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            again = f"train it again: edgedml train --config {self.run.config} --out {self.run.root} --overwrite"
            if self.run.best.is_file():
                again = f"its best weights still evaluate and export (edgedml eval {self.run.root}); or {again}"
            raise CheckpointError(
                f"{self.run.last}: incomplete or damaged ({what}), so the run cannot be resumed", hint=again
            ) from None


def _without_epochs(config: TrainConfig, metadata: dict[str, Any]) -> TrainConfig:
    """The config as saved in the checkpoint, so that extending --epochs on resume is allowed."""
    saved_epochs = metadata.get("config", {}).get("epochs", config.epochs)
    return TrainConfig(**{**config.to_dict(), "epochs": saved_epochs})


def resolve_config(
    config: TrainConfig, prepared: PreparedData, device_type: str = "cpu"
) -> tuple[TrainConfig, Plan | None, list[str]]:
    """The run's configuration with every derived value filled in, as a new object, and its memory plan.

    The input size and crop scale follow the data source unless set; a budget, a device profile or an
    ``auto`` size is fitted by the planner (``auto`` becomes the chosen size, a fixed size is checked).
    """
    resolved = dataclasses.replace(
        config,
        input_size=config.input_size or prepared.default_input_size,
        crop_scale=config.crop_scale if config.crop_scale is not None else prepared.default_crop_scale,
        freeze_bn=config.freezes_bn,
        backbone_lr_mult=config.backbone_lr_multiplier,
        workers=config.workers_for(device_type),
    )
    resolved, batch_note = resolved.with_default_batch(len(prepared.splits.train_classes))
    size_note = prepared.input_size_note if config.input_size is None else None
    notes = [note for note in (size_note, batch_note) if note]
    if not resolved.needs_plan:
        return resolved, None, notes
    plan, device_memory = plan_for_config(
        resolved, resolved.input_size, len(prepared.splits.train), len(prepared.splits.train_classes)
    )
    if device_memory.integrated:
        check_allocator_settings(device_memory)
    resolved = dataclasses.replace(
        resolved,
        batch_size=plan.batch_size if resolved.batch_size == AUTO else resolved.batch_size,
        memory_size=plan.memory_size if resolved.memory_size == AUTO else resolved.memory_size,
    )
    return resolved, plan, notes


def learning_rate(config: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """The schedule of :meth:`Trainer._lr`, for a run of ``total`` steps."""
    warmup = min(config.warmup_for(steps_per_epoch), total)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.scheduler == "none":
        return config.lr
    decay = max(total - warmup, 1)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(step - warmup, decay) / decay))


def epoch_line(record: dict[str, Any]) -> str:
    """One line for the display at the end of an epoch."""
    val = (
        f"  val R@1 {record['val_recall_at_1']:.4f}  MAP@R {record['val_map_at_r']:.4f}"
        if "val_recall_at_1" in record
        else ""
    )
    return f"epoch {record['epoch']}: loss {record['loss']:.4f}{val}"


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("edgedml")
    package_logger.addHandler(handler)
    if package_logger.level == logging.NOTSET or package_logger.level > logging.INFO:
        package_logger.setLevel(logging.INFO)
    return handler
