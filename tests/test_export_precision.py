"""Reduced-precision ONNX: fp16 with the normalization in fp32, int8 Q/DQ calibrated on real images, both checked."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from edgedml.data import Sample
from edgedml.errors import ConfigError, ExportError
from edgedml.export import onnx as onnx_export
from edgedml.export import precision
from edgedml.export.onnx import check_images, export_onnx, read_metadata
from edgedml.metrics import cosine_check
from edgedml.progress import Progress
from edgedml.training.checkpoint import load_checkpoint, save_checkpoint


class Recorder(Progress):
    """Records the unit counts reported through ``advance``."""

    def __init__(self, counts: list[int]):
        self.counts = counts

    def advance(self, count: int = 1, status: str | None = None) -> None:
        self.counts.append(count)


def no_leftovers(folder):
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".onnx" or p.name == "export.json"]


# ---- locating the normalization ------------------------------------------------------------
def test_normalization_nodes_are_everything_after_the_last_gemm_or_matmul():
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="body"),
        helper.make_node("Relu", ["h"], ["r"], name="act"),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="head"),
        helper.make_node("Mul", ["y", "y"], ["sq"], name="square"),
        helper.make_node("ReduceSum", ["sq", "axes"], ["ss"], name="sum", keepdims=1),
        helper.make_node("Sqrt", ["ss"], ["norm"], name="sqrt"),
        helper.make_node("Div", ["y", "norm"], ["out"], name="divide"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2])],
    )
    assert precision.normalization_nodes(helper.make_model(graph)) == ["square", "sum", "sqrt", "divide"]
    headless = helper.make_graph(nodes[3:4], "g", [], [])
    with pytest.raises(ExportError, match="no Gemm/MatMul head"):
        precision.normalization_nodes(helper.make_model(headless))


def test_fp16_file_computes_the_normalization_from_an_fp32_copy_of_the_head_output(run_copy):
    summary = export_onnx(run_copy, half=True, evaluate=False)
    fp32_graph = onnx.load(str(summary.files["fp32"].path)).graph
    names = precision.normalization_nodes(onnx.load(str(summary.files["fp32"].path)))
    assert [node.op_type for node in fp32_graph.node if node.name in names] == ["ReduceL2", "Clip", "Expand", "Div"]
    graph = onnx.load(str(summary.files["fp16"].path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    for node in (n for n in graph.node if n.name in names):
        for name in node.input:
            producer = producers.get(name)
            if producer is not None and producer.op_type == "Cast":
                assert producer.attribute[0].i == TensorProto.FLOAT, f"{node.name} reads fp16 {name}"
    weights = {init.name: init.data_type for init in graph.initializer}
    assert (
        weights["head.weight"] == TensorProto.FLOAT16 and weights["backbone.features.0.0.weight"] == TensorProto.FLOAT16
    )
    assert graph.input[0].type.tensor_type.elem_type == graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert summary.files["fp16"].check["min_cosine"] >= 0.999
    assert read_metadata(summary.files["fp16"].path)["precision"] == "fp16"


# ---- fp16 overflow ---------------------------------------------------------------------------
class SumOfSquaresNormalization(torch.nn.Module):
    """The run's model with its normalization spelled x / sqrt(sum(x * x)) (as hand-written models and
    TensorRT's own lowering do): its x * x is the tensor that overflows fp16 first. onnxruntime on
    CPU computes a single ReduceL2 in fp32 internally, so only this form can show the overflow here."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        raw = self.model.embed_raw(images)
        return raw / (raw * raw).sum(dim=1, keepdim=True).sqrt()


@pytest.fixture
def large_norm_run(run_copy, monkeypatch):
    """The run with its head scaled so that every raw embedding's sum of squares exceeds fp16's 65504."""
    best = run_copy / "best.safetensors"
    tensors, metadata = load_checkpoint(best)
    model, _ = onnx_export.load_run_model(run_copy, device="cpu")
    with torch.no_grad():
        raw_norms = model.embed_raw(check_images(run_copy)).norm(dim=1)
    scale = 1000.0 / float(raw_norms.min())
    tensors["model.head.weight"] = tensors["model.head.weight"] * scale
    tensors["model.head.bias"] = tensors["model.head.bias"] * scale
    save_checkpoint(best, tensors, metadata)
    load = onnx_export.load_run_model

    def load_explicit(run_dir, checkpoint="best", device="auto"):
        loaded, config = load(run_dir, checkpoint, device)
        return SumOfSquaresNormalization(loaded).eval(), config

    monkeypatch.setattr(onnx_export, "load_run_model", load_explicit)
    with torch.no_grad():
        raw = load_explicit(run_copy)[0].model.embed_raw(check_images(run_copy))
    assert float((raw * raw).sum(dim=1).min()) > 65504 and float(raw.abs().max()) < 65504  # overflows only when squared
    return run_copy


def test_fp16_with_large_norms_passes_because_the_normalization_stays_fp32(large_norm_run):
    summary = export_onnx(large_norm_run, half=True, evaluate=False)
    assert summary.files["fp16"].check["min_cosine"] >= 0.999
    assert summary.files["fp16"].path.is_file()


def test_normalization_stored_in_fp16_fails_the_check_and_writes_nothing(large_norm_run, monkeypatch):
    # The bare converter with a node block list still stores x * x between the blocked nodes in fp16.
    monkeypatch.setattr(precision, "keep_fp32_between", lambda model, blocked: None)
    for leftover in large_norm_run.glob("model*.onnx"):
        leftover.unlink()
    with pytest.raises(ExportError, match=re.escape("fp16 model disagrees with PyTorch: min cosine 0.0000")):
        export_onnx(large_norm_run, half=True, evaluate=False)
    assert no_leftovers(large_norm_run)


# ---- int8 ------------------------------------------------------------------------------------
def test_calibration_reader_fills_a_fixed_batch_with_its_own_images_and_counts_what_it_used():
    samples = [Sample(image=np.full((4, 4), 10 * i, np.uint8), label=str(i % 2)) for i in range(6)]
    seen: list[int] = []
    reader = precision.ImageCalibrationReader(
        samples, 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "images", batch=4, progress=Recorder(seen)
    )
    batches = []
    while (feed := reader.get_next()) is not None:
        batches.append(feed["images"])
    assert [b.shape for b in batches] == [(4, 3, 4, 4)] * 2 and seen == [4, 2] and reader.used == 6
    first_pixels = [round(float(b[i, 0, 0, 0]) * 255) for b in batches for i in range(4)]
    assert first_pixels == [0, 10, 20, 30, 40, 50, 40, 50]
    dynamic = precision.ImageCalibrationReader(samples, 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "images", batch=None)
    assert dynamic.get_next()["images"].shape == (6, 3, 4, 4) and dynamic.get_next() is None


def test_calibration_choice_is_capped_evenly_spaced_and_deterministic():
    assert precision.pick_calibration(list(range(10)), cap=4) == [0, 3, 6, 9]
    assert precision.pick_calibration(list(range(3)), cap=4) == [0, 1, 2]


def test_cosine_check_by_hand_and_non_finite_output():
    expected = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    got = np.array([[1.0, 1.0], [0.0, 2.0]], np.float32)  # cosines 1/sqrt(2) and 1
    check = cosine_check(got, expected)
    assert check["min_cosine"] == pytest.approx(2**-0.5) and check["mean_cosine"] == pytest.approx((2**-0.5 + 1) / 2)
    assert np.isnan(cosine_check(np.array([[np.inf, 0.0]], np.float32), expected[:1])["min_cosine"])


def test_half_and_int8_export_checked_scored_and_summarised(run_copy, trained):
    summary = export_onnx(run_copy, half=True, int8=True, calib_data=str(trained.data))
    assert list(summary.files) == ["fp32", "fp16", "int8"]
    assert [f.path.name for f in summary.files.values()] == ["model.onnx", "model.fp16.onnx", "model.int8.onnx"]
    for name, exported in summary.files.items():
        assert exported.path.stat().st_size == exported.size_bytes and exported.precision == name
        metadata = read_metadata(exported.path)
        assert (metadata["precision"], metadata["batch"], metadata["embedding_dim"]) == (name, "dynamic", "16")
        assert 0.0 <= exported.recall_at_1 <= 1.0 and 0.0 <= exported.map_at_r <= 1.0
    sizes = [f.size_bytes for f in summary.files.values()]
    assert sizes[0] > sizes[1] > sizes[2]
    assert summary.files["int8"].check["min_cosine"] >= precision.INT8_MIN_COSINE
    assert summary.files["fp32"].recall_at_1 == pytest.approx(summary.reference["recall_at_1"], abs=1e-6)
    # the run's own data: its training split (3 classes x 8 images after the validation carve-out),
    # test classes untouched
    assert summary.calibration.to_dict() == {
        "data": str(trained.data),
        "split": "train",
        "default": False,
        "available": 24,
        "images": 24,
        "int8_for": "tensorrt",
    }
    assert summary.warnings and "fewer than 300" in summary.warnings[0]
    int8_graph = onnx.load(str(summary.files["int8"].path)).graph
    ops = [node.op_type for node in int8_graph.node]
    assert ops.count("QuantizeLinear") >= 5 and "ReduceL2" in ops and ops[-1] == "Div"  # normalization not quantized
    assert any(
        init.data_type == TensorProto.INT8 and len(init.dims) == 4 for init in int8_graph.initializer
    )  # conv weights
    saved = json.loads((run_copy / "export.json").read_text())
    assert saved["files"]["int8"]["check"] == summary.files["int8"].check and saved["calibration"]["images"] == 24


def test_int8_for_cpu_is_u8s8_with_int32_biases_and_trt_rejects_it_while_the_default_passes(run_copy, tmp_path):
    from edgedml.export.trt_ops import check_tensorrt_ops

    default = export_onnx(run_copy, out=tmp_path / "trt" / "m.onnx", int8=True, evaluate=False)
    cpu = export_onnx(run_copy, out=tmp_path / "cpu" / "m.onnx", int8=True, int8_for="cpu", evaluate=False)
    for summary, activation, runs_on in ((default, TensorProto.INT8, "tensorrt"), (cpu, TensorProto.UINT8, "cpu")):
        graph = onnx.load(str(summary.files["int8"].path)).graph
        initializers = {init.name: init for init in graph.initializer}
        zero_points = [initializers[node.input[2]] for node in graph.node if node.op_type == "QuantizeLinear"]
        assert zero_points and {z.data_type for z in zero_points} == {activation}
        assert read_metadata(summary.files["int8"].path)["int8_for"] == runs_on == summary.calibration.int8_for
        assert summary.files["int8"].check["min_cosine"] >= precision.INT8_MIN_COSINE
    cpu_graph = onnx.load(str(cpu.files["int8"].path)).graph
    assert any(init.data_type == TensorProto.INT32 for init in cpu_graph.initializer)  # quantized biases
    assert check_tensorrt_ops(default.files["int8"].path) == []
    rejected = check_tensorrt_ops(cpu.files["int8"].path)
    assert rejected and any("INT32" in issue.reason for issue in rejected)
    with pytest.raises(ConfigError, match="--int8-for 'gpu' is not one of tensorrt, cpu"):
        export_onnx(run_copy, int8=True, int8_for="gpu")


def test_cli_int8_for_needs_int8_and_the_onnx_format(cli, run_copy):
    alone = cli("export", run_copy, "--int8-for", "cpu")
    assert alone.exit_code == 2 and "--int8-for needs --int8" in alone.output
    engine = cli("export", run_copy, "--format", "engine", "--int8", "--int8-for", "cpu")
    assert engine.exit_code == 2 and "--format engine does not take --int8-for" in engine.output


def test_int8_calibrated_on_blank_images_is_broken_and_writes_nothing(run_copy, tmp_path):
    blank = tmp_path / "blank"
    for label in ("a", "b"):
        (blank / label).mkdir(parents=True)
        for i in range(5):  # the ImageNet mean colour: normalized, every input is ~0 and every range collapses
            Image.fromarray(np.full((16, 16, 3), (124, 116, 104), np.uint8)).save(blank / label / f"{i}.png")
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"int8 model disagrees with PyTorch: min cosine 0\.\d+ < 0\.9"):
        export_onnx(run_copy, out=out / "m.onnx", int8=True, calib_data=str(blank), evaluate=False)
    assert no_leftovers(out)
    with pytest.raises(ConfigError, match="--calib-data needs --int8"):
        export_onnx(run_copy, calib_data=str(blank))


def test_cli_int8_with_a_fixed_batch_defaults_to_the_training_split(cli, run_copy, tmp_path):
    out = tmp_path / "m.onnx"
    result = cli("export", run_copy, "--int8", "--batch", "4", "--out", out)
    assert result.exit_code == 0, str(result)
    assert (
        "int8 for TensorRT and onnxruntime, calibrated on 24 images" in result.output
        and "the default without --calib-data" in result.output
    )
    assert "fewer than 300" in result.output
    row = next(line for line in result.output.splitlines() if "m.int8.onnx" in line and "cos 0." in line)
    assert "MiB" in row
    assert f"next: edgedml bench {tmp_path / 'm.int8.onnx'}" in result.output
    dims = onnx.load(str(tmp_path / "m.int8.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 16, 16]
    assert json.loads((tmp_path / "export.json").read_text())["calibration"]["default"] is True
    lone = cli("export", run_copy, "--calib-data", "digits")
    assert lone.exit_code == 2 and "--calib-data needs --int8" in lone.output


def test_cli_ctrl_c_during_int8_calibration_writes_nothing_and_keeps_the_old_files(cli, run_copy, monkeypatch):
    (run_copy / "model.onnx").write_bytes(b"the previous export")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(precision, "quantize_int8", interrupted)
    result = cli("export", run_copy, "--half", "--int8")
    assert result.exit_code == 130 and "interrupted: nothing was written" in result.output
    assert (run_copy / "model.onnx").read_bytes() == b"the previous export"
    assert not (run_copy / "model.fp16.onnx").exists() and not (run_copy / "export.json").exists()
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".")]


# ---- int8 calibration over many batches -----------------------------------------------------
def tiny_embedding_model(path, batch: int, size: int) -> None:
    """Conv -> Relu -> pool -> Gemm head -> L2 normalization, fixed batch: a model that calibrates in a blink."""
    rng = np.random.default_rng(0)
    weights = {
        "conv.w": rng.normal(size=(4, 3, 3, 3)),
        "conv.b": rng.normal(size=4),
        "head.w": rng.normal(size=(4, 2)),
        "head.b": rng.normal(size=2),
    }
    nodes = [
        helper.make_node("Conv", ["images", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "head.w", "head.b"], ["raw"], name="head"),
        helper.make_node("ReduceL2", ["raw"], ["norm"], name="l2", axes=[1], keepdims=1),
        helper.make_node("Div", ["raw", "norm"], ["embeddings"], name="divide"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [batch, 2])],
        [onnx.numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def input_scale(model_path) -> float:
    """The scale of the QuantizeLinear that quantizes the model's input (symmetric int8: max |input| / 127)."""
    graph = onnx.load(str(model_path)).graph
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    (quantize,) = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name]
    return float(initializers[quantize.input[1]])


def calibrate_tiny(tmp_path, levels: list[int], batch: int = 2, size: int = 4) -> float:
    """int8-quantize the tiny model on grey images of the given levels (0-255, in order); return the input's scale."""
    tmp_path.mkdir(exist_ok=True)
    source, target = tmp_path / "tiny.onnx", tmp_path / "tiny.int8.onnx"
    tiny_embedding_model(source, batch, size)
    samples = [Sample(image=np.full((size, size), level, np.uint8), label=str(i % 3)) for i, level in enumerate(levels)]
    reader = precision.ImageCalibrationReader(samples, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "images", batch=batch)
    precision.quantize_int8(source, target, reader, {})
    assert reader.used == len(levels)
    return input_scale(target)


@pytest.mark.parametrize("bright_batch", [0, 9, 16])
def test_int8_ranges_come_from_every_calibration_batch_not_only_the_last_few(tmp_path, bright_batch):
    # 17 batches of 2: more than two groups of 8, the count onnxruntime's CalibMaxIntermediateOutputs=8 cleared
    # without measuring. Only one batch is bright (255); the input's range must still reach it wherever it is.
    dim = [51] * 34
    bright = dim.copy()
    bright[2 * bright_batch : 2 * bright_batch + 2] = [255, 255]
    assert calibrate_tiny(tmp_path / "dim", dim) == pytest.approx(0.2 / 127, rel=1e-3)
    assert calibrate_tiny(tmp_path / "bright", bright) == pytest.approx(1.0 / 127, rel=1e-3)


def test_int8_calibration_on_an_exact_multiple_of_eight_batches_succeeds_and_keeps_scalars(tmp_path, monkeypatch):
    # 16 batches: with CalibMaxIntermediateOutputs=8 the list was empty at the end ("No data is collected").
    # The memory bound rests on what onnxruntime keeps per batch: one min and one max scalar per calibrated tensor.
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    kept: list[tuple[int, set]] = []
    compute = MinMaxCalibrater.compute_data

    def recording(self):
        sizes = {value.size for outputs in self.intermediate_outputs for value in outputs if value is not None}
        kept.append((len(self.intermediate_outputs), sizes))
        return compute(self)

    monkeypatch.setattr(MinMaxCalibrater, "compute_data", recording)
    levels = [51] * 32
    levels[0] = 255  # the first image of the first batch
    assert calibrate_tiny(tmp_path, levels) == pytest.approx(1.0 / 127, rel=1e-3)
    assert kept[0] == (16, {1})
