"""edgedml eval: recompute the retrieval metrics of a run's best model."""

from __future__ import annotations

from typing import Annotated

import typer

from edgedml.cli.common import DataOption, JsonOption, RunDirArgument, console, library_errors, metric_rows, metrics_table, print_json, setup_logging


def evaluate(
    run_dir: RunDirArgument,
    data: DataOption = None,
    split: Annotated[str, typer.Option("--split", help="test (unseen classes) | val | train.")] = "test",
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best | last.")] = "best",
    json_output: JsonOption = False,
) -> None:
    """Evaluate a trained run: Recall@K, MAP@R, R-precision, NMI, silhouette."""
    setup_logging()
    from edgedml.training.evaluate import evaluate_run

    with library_errors():
        metrics = evaluate_run(run_dir, data=data, split=split, checkpoint=checkpoint)
    result = metrics.to_dict()
    if json_output:
        print_json(result)
        return
    console.print(metrics_table(f"{run_dir} ({checkpoint}) on the {split} split", metric_rows(result)))
