"""edgedml quickstart: the whole pipeline on scikit-learn's digits, in under two minutes on a laptop CPU.

Steps, each a run directory under ``--out``:
1. ``shadow-64d``: Shadow loss, 64-d embedding, evaluated on the never-seen digits 5-9;
2. ``plain-16d`` and ``s2sd-16d``: a 16-d embedding trained alone, and the same with S2SD
   distilling 512- and 1024-d auxiliary heads into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

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
STUDENT_DIM = 16
# MSD with two heads. The paper's distillation weight (50, the library default) swamps Shadow's loss
# scale on digits and costs the student 8-14 points of Recall@1; 1 lifts its MAP@R (benchmarks/s2sd.py).
S2SD = {"distill": "s2sd", "aux_dims": "512,1024", "distill_weight": 1.0}


def quickstart(
    out: Annotated[Path, typer.Option("--out", help="Folder for the quick-start runs (replaced if present).")] = Path("runs/quickstart"),
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs of each run.")] = QUICKSTART["epochs"],
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Train on digits 0-4 with Shadow loss, evaluate retrieval on the unseen digits 5-9, distill to 16-d."""
    setup_logging()
    console.print("[bold]edgedml quickstart[/]: Shadow loss on scikit-learn's handwritten digits; "
                  "train on digits 0-4, retrieve among the never-seen digits 5-9.", soft_wrap=True)
    base = {**QUICKSTART, "epochs": epochs, "seed": seed}
    main = _train("1/3 Shadow loss, 64-d embedding", base, out / "shadow-64d")
    console.print(metrics_table("retrieval on the unseen digits 5-9 (64-d)", metric_rows(main)))
    console.print(
        f"before training: Recall@1 {main['untrained_recall_at_1']:.4f}, MAP@R {main['untrained_map_at_r']:.4f}; "
        f"after: Recall@1 {main['recall_at_1']:.4f}, MAP@R {main['map_at_r']:.4f}",
        soft_wrap=True,
    )
    plain = _train(f"2/3 a {STUDENT_DIM}-d embedding trained alone", {**base, "dim": STUDENT_DIM}, out / f"plain-{STUDENT_DIM}d")
    distilled = _train(f"3/3 the {STUDENT_DIM}-d embedding with S2SD (heads 512, 1024)", {**base, "dim": STUDENT_DIM, **S2SD}, out / f"s2sd-{STUDENT_DIM}d")
    console.print(_comparison([("shadow-64d", main), (f"plain-{STUDENT_DIM}d", plain), (f"s2sd-{STUDENT_DIM}d", distilled)]))
    console.print(f"runs written to {escape(str(out))}", soft_wrap=True)
    console.print("next commands to try:")
    for command in (
        f"edgedml eval {escape(str(out / 'shadow-64d'))}",
        f"edgedml profile --profile orin-nano-8gb --backbone mobilenetv2 --input-size 128 --batch-size auto --out {escape(str(out / 'orin-report'))}",
        "edgedml train --data glyphs --batch-size 16 --samples-per-class 2 --memory axbn --memory-size 0.5 --memory-warmup 300 --out runs/glyphs",
        "edgedml train --data path/to/images --backbone mobilenetv2 --input-size 128 --out runs/mine",
    ):
        console.print(f"  {command}", soft_wrap=True)


def _train(title: str, overrides: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from edgedml.cli.progress import RichTrainProgress
    from edgedml.config import TrainConfig
    from edgedml.training import Trainer

    console.print(f"\n[bold]{escape(title)}[/]", soft_wrap=True)
    progress = RichTrainProgress()
    with library_errors():
        try:
            return Trainer(TrainConfig.from_sources(overrides=overrides), run_dir, progress).fit(overwrite=True)
        finally:
            progress.close()


def _comparison(runs: list[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(title="what each step bought on the unseen digits", title_justify="left")
    for column in ("run", "dim", "exported params", "training params", "Recall@1", "MAP@R", "train s"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, summary in runs:
        dim = name.split("-")[-1]
        table.add_row(
            name, dim, f"{summary['parameters']:,}", f"{summary['parameters_training']:,}",
            f"{summary['recall_at_1']:.4f}", f"{summary['map_at_r']:.4f}", f"{summary['wall_s']:.1f}",
        )
    return table
