"""edgedml quickstart: the whole pipeline on scikit-learn's digits, in under two minutes on a laptop CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgedml.cli.common import console, library_errors, metric_rows, metrics_table, setup_logging

# Tuned for 2 CPU cores: 5 training digits x 12 images per batch, 32 px, the tiny backbone.
QUICKSTART = {
    "data": "digits",
    "backbone": "tiny",
    "dim": 64,
    "loss": "shadow",
    "normalize": False,  # raw shadow projections: on unit vectors Shadow is exactly a cosine triplet
    "mining": "all",
    "batch_size": 60,
    "samples_per_class": 12,
    "epochs": 12,
    "lr": 1e-3,
    "device": "auto",
}


def quickstart(
    out: Annotated[Path, typer.Option("--out", help="Where to write the quick-start run (replaced if present).")] = Path("runs/quickstart"),
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = QUICKSTART["epochs"],
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Train on digits 0-4 with Shadow loss, evaluate retrieval on the unseen digits 5-9."""
    setup_logging()
    from edgedml.cli.progress import RichTrainProgress
    from edgedml.config import TrainConfig
    from edgedml.training import Trainer

    console.print("[bold]edgedml quickstart[/]: Shadow loss on scikit-learn's handwritten digits; "
                  "train on digits 0-4, retrieve among the never-seen digits 5-9.")
    progress = RichTrainProgress()
    with library_errors():
        try:
            config = TrainConfig.from_sources(overrides={**QUICKSTART, "epochs": epochs, "seed": seed})
            trainer = Trainer(config, out, progress)
            summary = trainer.fit(overwrite=True)
        finally:
            progress.close()
    console.print(metrics_table("retrieval on the unseen digits 5-9", metric_rows(summary)))
    console.print(
        f"before training: Recall@1 {summary['untrained_recall_at_1']:.4f}, MAP@R {summary['untrained_map_at_r']:.4f}; "
        f"after: Recall@1 {summary['recall_at_1']:.4f}, MAP@R {summary['map_at_r']:.4f}",
        soft_wrap=True,
    )
    console.print(f"trained in {summary['wall_s']:.1f} s ({summary['train_images_per_s']:.0f} img/s); run written to {escape(str(out))}", soft_wrap=True)
    console.print("next commands to try:")
    for command in (
        f"edgedml eval {escape(str(out))}",
        "edgedml train --data digits --loss triplet --out runs/triplet --batch-size 60 --samples-per-class 12",
        "edgedml train --data path/to/images --backbone mobilenetv2 --input-size 128 --out runs/mine",
    ):
        console.print(f"  {command}", soft_wrap=True)
