"""edgedml eval: recompute the retrieval metrics of a run's model, or of an exported model through its runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgedml.cli.common import (
    DataOption,
    JsonOption,
    RerankOption,
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
    rerank: RerankOption = "none",
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="faiss | milvus: the split's leave-one-out lists searched in a temporary Milvus collection "
            "(Milvus Lite, or --uri), as the served index will search them.",
        ),
    ] = "faiss",
    uri: Annotated[
        str | None, typer.Option("--uri", help="With --backend milvus: a Milvus server for the temporary collection.")
    ] = None,
    examples: Annotated[
        Path | None,
        typer.Option(
            "--examples",
            help="Also draw example queries into this picture (.png, .jpg, .svg, .pdf): up to 8 of the split, half "
            "of them failures (a wrong top-1) when there are any, chosen with the run's seed, each with its top 5 "
            "among the split's other images, framed green (same class) or red (another class).",
        ),
    ] = None,
    embedding_plot: Annotated[
        Path | None,
        typer.Option(
            "--embedding-plot",
            help="Also draw the split's embeddings in 2-d, coloured by class, into this picture "
            "(a seeded random 3000 of them when there are more).",
        ),
    ] = None,
    projection: Annotated[
        str | None, typer.Option("--projection", help="pca | tsne: the --embedding-plot's projection.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Evaluate a trained run or an exported model: Recall@K, MAP@R, R-precision, NMI, silhouette.

    An exported model is scored on the split its run made (the file's metadata records it).
    """
    setup_logging()
    from edgedml.retrieval.evaluate import evaluate_embedded, evaluate_model

    pictures = examples is not None or embedding_plot is not None or projection is not None
    if pictures:
        from edgedml.retrieval.pictures import check_evaluation_pictures, evaluation_pictures

        with library_errors():
            check_evaluation_pictures(examples, embedding_plot, projection)  # before any work
    options = dict(
        data=data,
        split=split,
        checkpoint=checkpoint,
        runtime=runtime,
        device=device,
        rerank=rerank,
        backend=backend,
        uri=uri,
    )
    drawn = []
    with library_errors(), RichProgress(hidden=json_output) as progress:
        if pictures:  # the pictures show the lists the metrics scored (re-ranked with --rerank)
            evaluation = evaluate_embedded(model, progress=progress, **options)
            metrics = evaluation.metrics
            drawn = evaluation_pictures(
                evaluation.embedded, examples, embedding_plot, projection, evaluation.neighbours, split=split
            )
        else:
            metrics = evaluate_model(model, progress=progress, **options)
    result = {**metrics.to_dict(), "rerank": rerank}
    if json_output:
        print_json(result)
        return
    what = f"{model} ({checkpoint})" if model.is_dir() else str(model)
    reranked = "" if rerank == "none" else f", re-ranked ({rerank})"
    console.print(metrics_table(f"{what} on the {split} split{reranked}", metric_rows(result)))
    for picture in drawn:
        console.print(f"drew {picture}")
