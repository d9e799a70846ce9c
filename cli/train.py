"""edgedml train: train an embedding model; every option is also a key of --config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgedml.cli.common import (
    DataOption,
    JsonOption,
    console,
    fail,
    library_errors,
    metric_rows,
    metrics_table,
    print_json,
    setup_logging,
)
from edgedml.cli.progress import RichProgress
from edgedml.config import TrainConfig


def train(
    out: Annotated[Path | None, typer.Option("--out", help="Run directory to write (required for a new run).")] = None,
    data: DataOption = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file whose keys are these options.")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this directory.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --out.")] = False,
    loss: Annotated[
        str | None, typer.Option("--loss", help="shadow | triplet | contrastive | multisimilarity.")
    ] = None,
    mining: Annotated[
        str | None, typer.Option("--mining", help="all | hard | semihard triplets (shadow, triplet).")
    ] = None,
    margin: Annotated[float | None, typer.Option("--margin", help="Triplet margin.")] = None,
    normalize: Annotated[
        bool | None, typer.Option("--normalize/--no-normalize", help="Shadow: L2-normalize before the loss.")
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option("--backbone", help="tiny | mobilenetv2 | resnet18 | resnet34 | resnet50 | timm:<name>."),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights", help="Backbone weights: imagenet (downloaded once, then cached) or a .pth / .safetensors file."
        ),
    ] = None,
    dim: Annotated[int | None, typer.Option("--dim", help="Embedding dimension.")] = None,
    input_size: Annotated[
        int | None, typer.Option("--input-size", help="Input side in pixels (default: per data source).")
    ] = None,
    batch_size: Annotated[
        str | None,
        typer.Option(
            "--batch-size", help="Images per batch (P classes x K images), or auto: the largest that fits the budget."
        ),
    ] = None,
    samples_per_class: Annotated[
        int | None, typer.Option("--samples-per-class", help="K, images per class in a batch.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Training epochs (with --resume: extend to this many).")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="adamw | adam | sgd.")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="Weight decay.")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="cosine | none (after the warm-up).")] = None,
    warmup_epochs: Annotated[
        float | None, typer.Option("--warmup-epochs", help="Linear learning-rate warm-up, in epochs (default 1).")
    ] = None,
    warmup_steps: Annotated[
        int | None, typer.Option("--warmup-steps", help="The warm-up in steps instead (0 disables).")
    ] = None,
    backbone_lr_mult: Annotated[
        float | None,
        typer.Option("--backbone-lr-mult", help="Backbone lr = --lr x this (default 1; 0.1 with --weights)."),
    ] = None,
    freeze_bn: Annotated[
        bool | None,
        typer.Option("--freeze-bn/--no-freeze-bn", help="Freeze the backbone's BatchNorm (default: with --weights)."),
    ] = None,
    freeze_backbone_epochs: Annotated[
        int | None, typer.Option("--freeze-backbone-epochs", help="First epochs that train only the heads.")
    ] = None,
    grad_clip: Annotated[
        float | None, typer.Option("--grad-clip", help="Clip the gradients' global norm to this (0: off).")
    ] = None,
    train_classes: Annotated[
        float | None, typer.Option("--train-classes", help="Fraction of classes to train on.")
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option("--val-fraction", help="Fraction of training images for validation.")
    ] = None,
    crop_scale: Annotated[
        float | None, typer.Option("--crop-scale", help="Smallest random-crop area (1 disables).")
    ] = None,
    hflip: Annotated[bool | None, typer.Option("--hflip/--no-hflip", help="Random horizontal flips.")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="Cross-batch memory: none | xbm | xbn | axbn.")] = None,
    memory_size: Annotated[
        str | None,
        typer.Option("--memory-size", help="Slots: a count (8192), a fraction of the training set (0.5), or auto."),
    ] = None,
    memory_storage: Annotated[
        str | None, typer.Option("--memory-storage", help="fp32 | fp16 storage of the memory.")
    ] = None,
    memory_warmup: Annotated[
        int | None, typer.Option("--memory-warmup", help="Iterations before the memory is filled or used.")
    ] = None,
    memory_weight: Annotated[
        float | None, typer.Option("--memory-weight", help="w in batch_loss + w * memory_loss.")
    ] = None,
    memory_batch_loss: Annotated[
        bool | None, typer.Option("--memory-batch-loss/--no-memory-batch-loss", help="Keep the batch-only loss term.")
    ] = None,
    axbn_q: Annotated[float | None, typer.Option("--axbn-q", help="AXBN process noise q.")] = None,
    axbn_r: Annotated[float | None, typer.Option("--axbn-r", help="AXBN measurement noise r (0 gives XBN).")] = None,
    axbn_p0: Annotated[float | None, typer.Option("--axbn-p0", help="AXBN initial estimate variance.")] = None,
    axbn_gain_interval: Annotated[
        int | None, typer.Option("--axbn-gain-interval", help="AXBN iterations between gain updates.")
    ] = None,
    distill: Annotated[
        str | None, typer.Option("--distill", help="none | s2sd: distill auxiliary high-dimensional heads into --dim.")
    ] = None,
    aux_dims: Annotated[
        str | None, typer.Option("--aux-dims", help="S2SD head dimensions, e.g. 512,1024,1536,2048 (one: DSD).")
    ] = None,
    distill_weight: Annotated[
        float | None,
        typer.Option("--distill-weight", help="w, weight of the similarity distillation (default 1; the paper: 50)."),
    ] = None,
    distill_temperature: Annotated[
        float | None, typer.Option("--distill-temperature", help="T, distillation temperature.")
    ] = None,
    feature_distill: Annotated[
        bool | None,
        typer.Option("--feature-distill/--no-feature-distill", help="S2SD: also distill pooled features (MSDF)."),
    ] = None,
    feature_distill_weight: Annotated[
        float | None, typer.Option("--feature-distill-weight", help="Weight of the feature distillation.")
    ] = None,
    feature_distill_delay: Annotated[
        int | None, typer.Option("--feature-distill-delay", help="Iterations before feature distillation.")
    ] = None,
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="A trained run directory to distill from (post-hoc).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda.")] = None,
    budget: Annotated[str | None, typer.Option("--budget", help="Device memory this run may use, e.g. 2.5GiB.")] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="Plan for a device profile (edgedml profiles list).")
    ] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="Mixed precision (CUDA only).")] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Data-loading worker processes (default: on CUDA min(4, cores - 1), CPU 0)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Train an embedding model and evaluate it on classes it never saw."""
    setup_logging(verbose)
    from edgedml.training import Trainer  # torch: imported by the command, not by edgedml --help

    train_keys = set(TrainConfig.keys())
    given = {key: value for key, value in locals().items() if key in train_keys and value is not None}
    progress = RichProgress(transient=False, hidden=json_output)
    with library_errors():
        try:
            if resume is not None:
                changed = (
                    sorted(set(given) - {"epochs"}) + ["config"] * (config is not None) + ["out"] * (out is not None)
                )
                if changed:
                    options = ", ".join("--" + key.replace("_", "-") for key in changed)
                    fail(
                        f"--resume continues {resume} with its own config.yaml; it cannot take {options}",
                        hint="only --epochs may be given with --resume (to extend the run)",
                        code=2,
                    )
                trainer = Trainer.resume(resume, progress, epochs=epochs)
            else:
                if out is None:
                    fail("missing --out RUN_DIR", hint="name the directory the run should be written to", code=2)
                trainer = Trainer(TrainConfig.from_sources(config, given), out, progress)
            summary = trainer.fit(overwrite=overwrite)
        finally:
            progress.close()
    if not summary:  # another rank than 0 under torchrun: rank 0 reports the run
        return
    if json_output:
        print_json(summary)
        return
    console.print(
        metrics_table(
            f"test classes {', '.join(summary['test_classes'])} (never seen in training)", metric_rows(summary)
        )
    )
    root = escape(str(trainer.run.root))
    console.print(
        f"trained {summary['epochs']} epochs in {summary['wall_s']:.1f} s ({summary['train_images_per_s']:.0f} img/s); "
        f"best epoch {summary['best_epoch']}; run in {root}"
    )
    console.print(f"next: edgedml eval {root}")
