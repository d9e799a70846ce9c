"""edgedml eval: recompute the retrieval metrics of a run's model, or of an exported model through its runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgedml.cli.common import (
    DataOption,
    JsonOption,
    console,
    library_errors,
    metric_rows,
    metrics_table,
    print_json,
    setup_logging,
)
from edgedml.cli.index import RuntimeOption
from edgedml.cli.progress import RichProgress


def evaluate(
    model: Annotated[
        Path,
        typer.Argument(help="A run directory, or a model it exported (.onnx, TensorRT .engine).", show_default=False),
    ],
    data: DataOption = None,
    split: Annotated[str, typer.Option("--split", help="test (unseen classes) | val | train.")] = "test",
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best | last (run directories).")] = "best",
    runtime: RuntimeOption = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    json_output: JsonOption = False,
) -> None:
    """Evaluate a trained run or an exported model: Recall@K, MAP@R, R-precision, NMI, silhouette.

    An exported model is scored on the split its run made (the file's metadata records it).
    """
    setup_logging()
    from edgedml.retrieval.evaluate import evaluate_model

    with library_errors(), RichProgress(hidden=json_output) as progress:
        metrics = evaluate_model(
            model, data=data, split=split, checkpoint=checkpoint, runtime=runtime, device=device, progress=progress
        )
    result = metrics.to_dict()
    if json_output:
        print_json(result)
        return
    what = f"{model} ({checkpoint})" if model.is_dir() else str(model)
    console.print(metrics_table(f"{what} on the {split} split", metric_rows(result)))
