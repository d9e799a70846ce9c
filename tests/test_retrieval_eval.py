"""`edgedml eval` of an exported model: the same test classes, and the same metrics as PyTorch on the same weights."""

from __future__ import annotations

import json

import onnx
import pytest

from edgedml.errors import ConfigError
from edgedml.retrieval.evaluate import evaluate_model
from edgedml.training.evaluate import evaluate_run


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory):
    from edgedml.export.onnx import export_onnx

    return (
        export_onnx(trained.run, out=tmp_path_factory.mktemp("export") / "model.onnx", evaluate=False)
        .files["fp32"]
        .path
    )


def test_exported_model_scores_what_pytorch_scores(model, trained):
    reference = evaluate_run(trained.run, device="cpu")
    exported = evaluate_model(model)
    assert (exported.num_queries, exported.num_classes) == (reference.num_queries, reference.num_classes) == (30, 3)
    assert exported.recall_at_k == reference.recall_at_k
    assert exported.map_at_r == pytest.approx(reference.map_at_r, abs=1e-3)
    assert exported.r_precision == pytest.approx(reference.r_precision, abs=1e-3)
    assert exported.nmi == pytest.approx(reference.nmi, abs=1e-2)
    summary = json.loads((trained.run / "summary.json").read_text())
    assert exported.recall_at_1 == pytest.approx(summary["recall_at_1"], abs=1e-6)


def test_cli_eval_takes_an_exported_model(cli, model, trained):
    result = cli("eval", model, "--json")
    assert result.exit_code == 0, str(result)
    metrics = json.loads(result.stdout)
    reference = json.loads(cli("eval", trained.run, "--json").stdout)
    assert metrics["recall_at_k"] == reference["recall_at_k"] and metrics["num_queries"] == 30
    assert metrics["map_at_r"] == pytest.approx(reference["map_at_r"], abs=1e-3)
    val = cli("eval", model, "--split", "val", "--json")
    assert val.exit_code == 0 and json.loads(val.stdout)["num_queries"] == 6
    table = cli("eval", model)
    assert table.exit_code == 0 and f"{model} on the test split" in table.output
    wrong = cli("eval", model, "--checkpoint", "last")
    assert wrong.exit_code == 2 and "applies to run directories" in wrong.output


def test_an_export_without_split_metadata_needs_data(model, tmp_path):
    graph = onnx.load(str(model))
    kept = [p for p in graph.metadata_props if p.key not in ("data", "seed")]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(graph, str(old))
    with pytest.raises(ConfigError, match=r"does not record the run's data split \(data, seed missing\)"):
        evaluate_model(old)
