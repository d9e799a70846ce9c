"""edgedml quickstart: the whole pipeline on scikit-learn's digits, in under two minutes on a laptop CPU.

Steps, each a run directory under ``--out``:
1. ``shadow-64d``: Shadow loss, 64-d embedding, evaluated on the never-seen digits 5-9;
2. ``plain-16d`` and ``s2sd-16d``: a 16-d embedding trained alone, and the same with S2SD
   distilling 512- and 1024-d auxiliary heads into it;
3. export of the distilled 16-d model to ONNX in fp32, fp16 and int8, each checked against PyTorch
   and scored on the unseen digits;
4. the unseen digits written as an image folder (one image per class held out as a query), indexed
   with the int8 model, and the held-out queries searched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from edgedml.cli.common import console, library_errors, metric_rows, metrics_table, setup_logging
from edgedml.cli.export import export_table
from edgedml.cli.progress import RichProgress
from edgedml.config import TrainConfig
from edgedml.io import check_output_dir, check_owned, record_owned

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
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the quick-start runs (rewritten if the quick start wrote it).")
    ] = Path("runs/quickstart"),
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs of each run.")] = QUICKSTART["epochs"],
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Train on digits 0-4 with Shadow loss, evaluate retrieval on the unseen digits 5-9, distill to 16-d."""
    setup_logging()
    with library_errors():  # a folder holding anything but an earlier quick start's files is the user's: refused
        check_output_dir(out)
        check_owned(out)
    console.print(
        "[bold]edgedml quickstart[/]: Shadow loss on scikit-learn's handwritten digits; "
        "train on digits 0-4, retrieve among the never-seen digits 5-9.",
        soft_wrap=True,
    )
    try:
        _run_steps(out, {**QUICKSTART, "epochs": epochs, "seed": seed})
    finally:
        if out.is_dir():
            record_owned(out)  # what this run wrote, so that the next quick start may rewrite it


def _run_steps(out: Path, base: dict[str, Any]) -> None:
    main = _train("1/5 Shadow loss, 64-d embedding", base, out / "shadow-64d")
    console.print(metrics_table("retrieval on the unseen digits 5-9 (64-d)", metric_rows(main)))
    console.print(
        f"before training: Recall@1 {main['untrained_recall_at_1']:.4f}, MAP@R {main['untrained_map_at_r']:.4f}; "
        f"after: Recall@1 {main['recall_at_1']:.4f}, MAP@R {main['map_at_r']:.4f}",
        soft_wrap=True,
    )
    plain = _train(
        f"2/5 a {STUDENT_DIM}-d embedding trained alone", {**base, "dim": STUDENT_DIM}, out / f"plain-{STUDENT_DIM}d"
    )
    distilled = _train(
        f"3/5 the {STUDENT_DIM}-d embedding with S2SD (heads 512, 1024)",
        {**base, "dim": STUDENT_DIM, **S2SD},
        out / f"s2sd-{STUDENT_DIM}d",
    )
    console.print(
        _comparison([("shadow-64d", main), (f"plain-{STUDENT_DIM}d", plain), (f"s2sd-{STUDENT_DIM}d", distilled)])
    )
    shipped = _export("4/5 export the 16-d S2SD model: ONNX fp32, fp16, int8", out / f"s2sd-{STUDENT_DIM}d")
    index_dir, queries = _index_and_search(
        "5/5 index the unseen digits with the int8 model, search held-out queries", shipped, out
    )
    console.print(f"runs, exports and the index written to {escape(str(out))}", soft_wrap=True)
    console.print("next commands to try:")
    for command in (
        f"edgedml search {escape(str(index_dir))} {escape(str(queries[0]))} --top-k 5",
        f"edgedml bench {escape(str(shipped))} --batch 1,8,32",
        f"edgedml eval {escape(str(shipped))}",
        f"edgedml export {escape(str(out / f's2sd-{STUDENT_DIM}d'))} --format engine --half --deepstream   "
        "(on the Jetson or GPU that will run it)",
        "edgedml profile --profile orin-nano-8gb --backbone mobilenetv2 --input-size 128 --batch-size auto "
        "--out runs/orin-report",
        "edgedml train --data glyphs --batch-size 16 --samples-per-class 2 --memory axbn --memory-size 0.5 "
        "--memory-warmup 300 --out runs/glyphs",
        "edgedml train --data path/to/images --backbone mobilenetv2 --input-size 128 --out runs/mine",
    ):
        console.print(f"  {command}", soft_wrap=True)


def _train(title: str, overrides: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from edgedml.training import Trainer

    console.print(f"\n[bold]{escape(title)}[/]", soft_wrap=True)
    with library_errors(), RichProgress(transient=False) as progress:
        return Trainer(TrainConfig.from_sources(overrides=overrides), run_dir, progress).fit(overwrite=True)


def _export(title: str, run_dir: Path) -> Path:
    from edgedml.export.onnx import export_onnx

    console.print(f"\n[bold]{escape(title)}[/]", soft_wrap=True)
    with library_errors(), RichProgress() as progress:
        summary = export_onnx(run_dir, half=True, int8=True, progress=progress)
    console.print(export_table(summary))
    return summary.files["int8"].path


def _index_and_search(title: str, model: Path, out: Path) -> tuple[Path, list[Path]]:
    """Write digits 5-9 as an image folder, hold out one image per class, index the rest, search the held-out ones."""
    from edgedml.data import prepare_data, write_gallery_and_queries
    from edgedml.retrieval import build_index, search

    console.print(f"\n[bold]{escape(title)}[/]", soft_wrap=True)
    config = TrainConfig.from_sources(overrides=QUICKSTART)
    unseen = prepare_data("digits", config.train_classes, config.val_fraction, config.seed).splits.test
    gallery = out / "unseen-digits"
    queries = write_gallery_and_queries(unseen, gallery, out / "queries")
    with library_errors():
        summary = build_index(model, str(gallery), out / "index", mode="overwrite")
        results = search(out / "index", queries, top_k=5)
    console.print(
        f"indexed {summary.count} images of digits 5-9 in {summary.seconds:.1f} s "
        f"({summary.embedded_per_s:,.0f} images/s, "
        f"{summary.bytes_per_vector:.0f} bytes per vector); index in {escape(str(out / 'index'))}",
        soft_wrap=True,
    )
    table = Table(title="top 5 for each held-out query (label: score)", title_justify="left")
    table.add_column("query")
    for rank in range(1, 6):
        table.add_column(f"#{rank}", justify="right")
    for query, result in zip(queries, results, strict=True):
        cells = [
            f"{'[green]' if hit.label == query.stem else '[red]'}{escape(hit.label)}[/]: {hit.score:.3f}"
            for hit in result.hits
        ]
        table.add_row(escape(query.name), *cells)
    console.print(table)
    correct = sum(
        hit.label == query.stem for query, result in zip(queries, results, strict=True) for hit in result.hits
    )
    console.print(f"{correct} of {5 * len(queries)} neighbours share the query's digit", soft_wrap=True)
    return out / "index", queries


def _comparison(runs: list[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(title="what each step bought on the unseen digits", title_justify="left")
    for column in ("run", "dim", "exported params", "training params", "Recall@1", "MAP@R", "train s"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, summary in runs:
        dim = name.split("-")[-1]
        table.add_row(
            name,
            dim,
            f"{summary['parameters']:,}",
            f"{summary['parameters_training']:,}",
            f"{summary['recall_at_1']:.4f}",
            f"{summary['map_at_r']:.4f}",
            f"{summary['wall_s']:.1f}",
        )
    return table
