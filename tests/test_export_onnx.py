"""ONNX export: verified against PyTorch, self-describing, dynamic or fixed batch, nothing written on failure."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgedml.export import onnx as onnx_export
from edgedml.export.onnx import export_onnx, read_metadata
from edgedml.training.evaluate import load_run_model
from edgedml.training.run import config_hash


def run_both(path, model, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(batch, 3, 16, 16)
    with torch.no_grad():
        expected = model(images).numpy()
    return session.run(None, {"images": images.numpy()})[0], expected


def test_dynamic_export_matches_pytorch_at_any_batch_and_describes_itself(run_copy):
    result = export_onnx(run_copy)
    fp32 = result.files["fp32"]
    assert list(result.files) == ["fp32"] and result.path == fp32.path == run_copy / "model.onnx"
    assert fp32.path.stat().st_size == fp32.size_bytes and fp32.precision == "fp32"
    assert fp32.check["max_abs_diff"] <= 1e-4 and result.checked_images > 0
    model, config = load_run_model(run_copy)
    for batch in (1, 7):
        got, expected = run_both(result.path, model, batch)
        assert got.shape == (batch, config.dim)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # L2 normalization is in the graph
    metadata = read_metadata(result.path)
    assert metadata["embedding_dim"] == str(config.dim) and metadata["input_size"] == "16"
    assert metadata["color_order"] == "RGB" and metadata["mean"].startswith("[0.485")
    assert metadata["config_hash"] == config_hash(config)
    assert (metadata["precision"], metadata["batch"]) == ("fp32", "dynamic")
    graph_input = onnx.load(str(result.path)).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # a symbolic batch dimension


def test_fixed_batch_export(run_copy, tmp_path):
    result = export_onnx(run_copy, out=tmp_path / "fixed.onnx", batch=4, evaluate=False)
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 16, 16]
    assert read_metadata(result.path)["batch"] == "4" and result.batch == 4
    assert result.files["fp32"].recall_at_1 is None and result.reference is None


def test_summary_scores_the_test_classes_like_training_did_and_is_saved(run_copy, trained):
    result = export_onnx(run_copy)
    run_summary = json.loads((trained.run / "summary.json").read_text())
    # PyTorch's reference is the run's own test-class evaluation, and onnxruntime's fp32 ranks the same
    assert result.reference["recall_at_1"] == pytest.approx(run_summary["recall_at_1"], abs=1e-6)
    assert result.reference["map_at_r"] == pytest.approx(run_summary["map_at_r"], abs=1e-6)
    assert result.files["fp32"].recall_at_1 == pytest.approx(result.reference["recall_at_1"], abs=1e-6)
    assert result.test_images == run_summary["num_queries"] == 30
    saved = json.loads((run_copy / "export.json").read_text())
    assert saved == json.loads(json.dumps(result.to_dict())) and result.summary_path == run_copy / "export.json"
    assert saved["files"]["fp32"]["path"] == str(run_copy / "model.onnx") and saved["calibration"] is None


def test_a_failed_check_writes_nothing_and_keeps_the_old_file(run_copy, monkeypatch):
    previous = run_copy / "model.onnx"
    previous.write_bytes(b"the previous export")
    monkeypatch.setattr(onnx_export, "FP32_TOLERANCE", -1.0)  # no export can pass
    with pytest.raises(onnx_export.ExportError, match="onnxruntime disagrees"):
        export_onnx(run_copy)
    assert previous.read_bytes() == b"the previous export"
    assert not (run_copy / "export.json").exists()
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_cli_export_and_its_option_table(cli, run_copy, tmp_path):
    result = cli("export", run_copy, "--out", tmp_path / "m.onnx")
    assert result.exit_code == 0, str(result)
    assert "exported" in result.output and "|Δ| " in result.output
    assert f"next: edgedml bench {tmp_path / 'm.onnx'}" in result.output
    assert cli("export", run_copy, "--format", "tflite").exit_code == 2
    assert cli("export", run_copy, "--max-batch", "8").exit_code == 2  # an engine option
    both = cli("export", run_copy, "--batch", "2", "--dynamic")
    assert both.exit_code == 2 and "exclude each other" in both.output
    wrong = cli("export", run_copy, "--out", tmp_path / "m.bin")
    assert wrong.exit_code != 0 and ".onnx" in wrong.output


def test_s2sd_heads_never_reach_the_export(tmp_path):
    from edgedml.config import TrainConfig
    from edgedml.training import Trainer

    options = dict(
        data="digits",
        batch_size=30,
        samples_per_class=6,
        dim=8,
        input_size=16,
        epochs=1,
        device="cpu",
        distill="s2sd",
        aux_dims="64",
    )
    Trainer(TrainConfig.from_sources(overrides=options), tmp_path / "run").fit()
    result = export_onnx(tmp_path / "run")
    graph = onnx.load(str(result.path)).graph
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim][1] == 8
    assert not any("aux" in init.name for init in graph.initializer)
