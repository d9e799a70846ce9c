"""TensorRT engines, the engine runtime, DeepStream configs and the parser-operator check.

Without TensorRT (CI, this machine) the builder is tested against a recording fake ``tensorrt`` module
injected into ``sys.modules``; one test builds and runs a real engine and skips, saying why, where
TensorRT or CUDA is missing. The operator check runs on real exported graphs on the CPU.
"""

from __future__ import annotations

import enum
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgedml.errors import ConfigError, ExportError, ModelError
from edgedml.export import engine as engine_export
from edgedml.export import tensorrt as trt_export
from edgedml.export.deepstream import deepstream_normalization, write_deepstream_configs
from edgedml.export.engine import resolve_workspace
from edgedml.export.load import load_embedder
from edgedml.export.runtime import ModelInfo
from edgedml.export.tensorrt import (
    BatchRange,
    GpuInfo,
    build_engine,
    check_compatible,
    make_sidecar,
    plan_precision,
    read_sidecar,
    sidecar_path,
)
from edgedml.export.trt_ops import SUPPORTED_OPS, check_tensorrt_ops

GPU = GpuInfo("NVIDIA Jetson Orin Nano", "8.7")
CHECKED = 30  # images the engine check runs: the shared run's 3 test classes x 10, all under CHECK_IMAGES = 32


# ---- a recording fake of the TensorRT Python API -------------------------------------------------


def fake_tensorrt(version: str = "10.3.0", fail_parse: bool = False, fail_build: bool = False) -> types.ModuleType:
    """A ``tensorrt`` module that records what the builder was asked to do.

    TensorRT 11 has no precision flags: its fake BuilderFlag lacks FP16/INT8, so setting one raises.
    The "engine" it serializes holds the ONNX model it parsed, so a test can run it with onnxruntime.
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls: dict = {"flags": [], "pools": {}, "profiles": [], "network_flags": None, "parsed": None, "cache_in": None}
    trt.calls = calls
    major = int(version.split(".")[0])
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag",
        {"STRONGLY_TYPED": 1} if major >= 11 else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
    )
    trt.BuilderFlag = enum.Enum("BuilderFlag", ["TF32", "REFIT"] if major >= 11 else ["FP16", "INT8", "TF32", "REFIT"])
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "TACTIC_SHARED_MEMORY"])
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "INT8"])

    class Logger:
        WARNING = 2

        def __init__(self, severity=None):
            self.severity = severity

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            calls["network_flags"] = flags
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, index):
            return self.inputs[index]

    class ParserError:
        def __str__(self):
            return (
                "In node 3 with name: /head/Unique and operator: Unique (importFallbackPluginImporter): "
                "UNSUPPORTED_NODE"
            )

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            calls["parsed"] = path
            if fail_parse:
                self.num_errors = 2
                return False
            graph_input = onnx.load(path).graph.input[0]
            shape = [d.dim_value if d.dim_value else -1 for d in graph_input.type.tensor_type.shape.dim]
            self.network.inputs.append(Tensor(graph_input.name, tuple(shape)))
            return True

        def get_error(self, index):
            return ParserError()

    class Profile:
        def set_shape(self, name, minimum, optimum, maximum):
            calls["profiles"].append((name, minimum, optimum, maximum))

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+tuned"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["pools"][pool.name] = size

        def set_flag(self, flag):
            calls["flags"].append(flag.name)

        def add_optimization_profile(self, profile):
            return 0

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls["cache_in"] = cache.data
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            # like a real engine, the fake carries the network itself (here: the ONNX it parsed), not a path
            return None if fail_build else b"FAKE-ENGINE:" + Path(calls["parsed"]).read_bytes()

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, index):
            return ["images", "embeddings"][index]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "images" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def create_execution_context(self):
            return object()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls["deserialized"] = bytes(data)
            return Engine()

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


@pytest.fixture
def exported(run_copy):
    """The shared tiny run with its fp32 ONNX (dynamic batch)."""
    from edgedml.export.onnx import export_onnx

    summary = export_onnx(run_copy)
    return run_copy, Path(summary.files["fp32"].path)


@pytest.fixture
def on_this_gpu(monkeypatch):
    """Pretend this CPU machine has the Orin's GPU, and run "engines" with onnxruntime on the ONNX they name."""
    monkeypatch.setattr(trt_export, "current_gpu", lambda index=0: GPU)
    monkeypatch.setattr(engine_export, "current_gpu", lambda index=0: GPU)

    def run_fake_engine(self, batch):
        import onnxruntime

        onnx_bytes = self.path.read_bytes().split(b":", 1)[1]
        session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: batch})[0]

    monkeypatch.setattr(trt_export.TensorRTEmbedder, "_run", run_fake_engine)


# ---- building --------------------------------------------------------------------------------------


def test_tensorrt10_fp16_is_a_builder_flag_on_the_fp32_onnx_with_profile_workspace_and_timing_cache(exported, tmp_path):
    _run, onnx_path = exported
    trt = fake_tensorrt("10.3.0")
    cache = tmp_path / "cache" / "orin.timing-cache"
    cache.parent.mkdir()
    cache.write_bytes(b"earlier-tactics")
    plan = plan_precision("fp16", 10)
    assert (plan.onnx_precision, plan.strongly_typed, plan.flags) == ("fp32", False, ("FP16",))
    build = build_engine(
        onnx_path, plan, BatchRange.dynamic(16), workspace_bytes=512 << 20, timing_cache=cache, trt=trt
    )
    assert trt.calls["network_flags"] == 0  # weakly typed
    assert trt.calls["flags"] == ["FP16"]
    assert trt.calls["pools"] == {"WORKSPACE": 512 << 20}
    assert trt.calls["profiles"] == [("images", (1, 3, 16, 16), (16, 3, 16, 16), (16, 3, 16, 16))]
    assert trt.calls["cache_in"] == b"earlier-tactics" and build.timing_cache_reused
    assert cache.read_bytes() == b"earlier-tactics+tuned"  # serialized back after the build
    assert build.engine == b"FAKE-ENGINE:" + Path(onnx_path).read_bytes() and build.input_shape == [-1, 3, 16, 16]


def test_tensorrt10_int8_sets_int8_and_with_half_fp16_for_the_layers_outside_qdq():
    assert plan_precision("int8", 10) == trt_export.PrecisionPlan("int8", "int8", False, ("INT8",))
    assert plan_precision("int8", 10, fp16_fallback=True).flags == ("INT8", "FP16")


def test_tensorrt11_is_strongly_typed_sets_no_precision_flag_and_builds_from_the_reduced_onnx(exported, tmp_path):
    _run, onnx_path = exported
    for precision in ("fp16", "int8"):
        plan = plan_precision(precision, 11)
        assert (plan.onnx_precision, plan.strongly_typed, plan.flags) == (precision, True, ())
    trt = fake_tensorrt("11.0.0")
    build_engine(
        onnx_path, plan_precision("fp16", 11), BatchRange.fixed(1), timing_cache=tmp_path / "new.cache", trt=trt
    )
    assert trt.calls["network_flags"] == 1 << 1  # STRONGLY_TYPED
    assert trt.calls["flags"] == [] and trt.calls["pools"] == {}  # no flags; TensorRT's own workspace default
    assert trt.calls["cache_in"] == b""  # no cache yet: a fresh one, then written
    assert (tmp_path / "new.cache").read_bytes() == b"+tuned"
    with pytest.raises(ExportError, match="too old"):
        plan_precision("fp16", 8)


def test_fixed_batch_onnx_needs_that_batch_and_takes_no_profile(run_copy, tmp_path):
    from edgedml.export.onnx import export_onnx

    onnx_path = Path(export_onnx(run_copy, tmp_path / "b4.onnx", batch=4).files["fp32"].path)
    trt = fake_tensorrt()
    build = build_engine(onnx_path, plan_precision("fp32", 10), BatchRange.fixed(4), trt=trt)
    assert build.input_shape == [4, 3, 16, 16] and trt.calls["profiles"] == []
    with pytest.raises(ConfigError, match="fixed batch 4"):
        build_engine(onnx_path, plan_precision("fp32", 10), BatchRange.dynamic(8), trt=fake_tensorrt())
    with pytest.raises(ConfigError, match="1 <= min <= opt <= max"):
        BatchRange(4, 2, 8)


def test_parser_errors_and_a_failed_build_are_one_line_export_errors(exported):
    _, onnx_path = exported
    with pytest.raises(ExportError, match=r"parser rejected .*Unique.*\(and 1 more\)"):
        build_engine(onnx_path, plan_precision("fp32", 10), BatchRange.dynamic(), trt=fake_tensorrt(fail_parse=True))
    with pytest.raises(ExportError, match="could not build an engine") as failed:
        build_engine(onnx_path, plan_precision("fp32", 10), BatchRange.dynamic(), trt=fake_tensorrt(fail_build=True))
    assert "--workspace" in failed.value.hint


def test_workspace_from_the_option_or_a_quarter_of_a_profiles_free_memory():
    assert resolve_workspace("512MiB", "orin-nano-8gb") == (512 << 20, "--workspace 512MiB")  # the option wins
    # orin-nano-8gb: 8 GiB - 1.5 GiB OS - 0.5 GiB CUDA context = 6 GiB; a quarter is 1.5 GiB
    assert resolve_workspace(None, "orin-nano-8gb")[0] == 1536 << 20
    # desktop-24gb: 24 GiB - 0 - 0.5 GiB context = 23.5 GiB; a quarter is 5.875 GiB = 6016 MiB
    assert resolve_workspace(None, "desktop-24gb")[0] == 6016 << 20
    assert resolve_workspace(None, None) == (None, "device")  # probed on the device at build time
    with pytest.raises(ConfigError, match="--workspace 'lots'"):
        resolve_workspace("lots", None)


# ---- the whole export, sidecar and refusal to load elsewhere ------------------------------------


def test_export_engine_writes_a_checked_engine_and_a_sidecar_naming_tensorrt_and_the_gpu(
    run_copy, on_this_gpu, tmp_path
):
    trt = fake_tensorrt("10.3.0")
    result = engine_export.export_engine(
        run_copy,
        batch=BatchRange.dynamic(8),
        workspace="256MiB",
        timing_cache=tmp_path / "t.cache",
        deepstream=True,
        trt=trt,
    )
    assert result.path == run_copy / "model.engine" and result.path.read_bytes().startswith(b"FAKE-ENGINE:")
    sidecar = json.loads(
        (run_copy / "model.engine.json").read_text()
    )  # the sidecar is named after the engine, beside it
    assert result.sidecar == run_copy / "model.engine.json" and read_sidecar(result.path) == sidecar
    assert sidecar["tensorrt_version"] == "10.3.0" and sidecar["gpu"] == {"name": GPU.name, "compute_capability": "8.7"}
    assert sidecar["batch"] == {"min": 1, "opt": 8, "max": 8} and sidecar["precision"] == "fp32"
    assert sidecar["builder"]["workspace_bytes"] == 256 << 20 and sidecar["builder"]["flags"] == []
    assert sidecar["metadata"]["embedding_dim"] == "16" and sidecar["metadata"]["batch"] == "dynamic"
    assert sidecar["check"]["min_cosine"] > 0.99999  # the fake engine runs the same ONNX
    assert sidecar["check"]["images"] == CHECKED
    assert Path(result.deepstream["nvinfer"]).is_file() and Path(result.deepstream["tracker"]).is_file()
    # load_embedder picks TensorRT for .engine; with the fake module installed it runs like onnxruntime
    sys.modules["tensorrt"] = trt
    try:
        embedder = load_embedder(result.path)
        assert embedder.runtime == "tensorrt" and embedder.max_batch == 8 and embedder.info.dim == 16
        onnx_embedder = load_embedder(run_copy / "model.onnx")
        images = np.random.default_rng(0).normal(size=(11, 3, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(embedder.embed(images), onnx_embedder.embed(images), atol=1e-6)
    finally:
        del sys.modules["tensorrt"]


def turn_first_embedding(embeddings: np.ndarray, cosine: float) -> np.ndarray:
    """``embeddings`` with the first row turned, at its norm, by the angle whose cosine is ``cosine``.

    The other rows are kept.
    """
    turned = embeddings.astype(np.float64)
    row = turned[0]
    axis = np.zeros_like(row)
    axis[np.argmin(np.abs(row))] = 1.0
    away = axis - (axis @ row) / (row @ row) * row  # the part of that axis orthogonal to the row
    turned[0] = cosine * row + np.sqrt(1.0 - cosine**2) * np.linalg.norm(row) * away / np.linalg.norm(away)
    return turned.astype(np.float32)


@pytest.mark.parametrize(
    ("precision", "cosine", "passes"), [("fp16", 0.9995, True), ("fp16", 0.998, False), ("fp32", 0.999, False)]
)
def test_the_engine_check_measures_the_cosine_to_the_onnx_and_rejects_a_disagreeing_engine(
    run_copy, on_this_gpu, monkeypatch, precision, cosine, passes
):
    """A fake engine whose first embedding is turned by a known angle: its cosine is the min, the mean is
    (29 + cosine) / 30, and below the precision's threshold (fp32 0.9999, fp16 0.999) nothing is written."""
    embed = trt_export.TensorRTEmbedder.embed
    monkeypatch.setattr(
        trt_export.TensorRTEmbedder, "embed", lambda self, images: turn_first_embedding(embed(self, images), cosine)
    )

    def export():
        return engine_export.export_engine(
            run_copy,
            half=precision == "fp16",
            workspace="64MiB",
            timing_cache=run_copy / "t.cache",
            trt=fake_tensorrt(),
        )

    if passes:
        check = read_sidecar(export().path)["check"]
        assert check["images"] == CHECKED
        assert check["min_cosine"] == pytest.approx(cosine, abs=1e-6)
        assert check["mean_cosine"] == pytest.approx((CHECKED - 1 + cosine) / CHECKED, abs=1e-6)
        return
    threshold = {"fp32": "0.9999", "fp16": "0.999"}[precision]
    with pytest.raises(
        ExportError,
        match=(
            rf"^the {precision} engine disagrees with the fp32 ONNX: min cosine {cosine:.4f} < {threshold} "
            rf"over {CHECKED} test images; nothing was written$"
        ),
    ):
        export()
    assert not (run_copy / "model.engine").exists() and not sidecar_path(run_copy / "model.engine").exists()
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".")]  # no temporary engine left behind


def test_an_engine_for_another_gpu_or_tensorrt_version_is_refused_with_rebuild_advice(
    run_copy, on_this_gpu, monkeypatch
):
    result = engine_export.export_engine(
        run_copy, workspace="64MiB", timing_cache=run_copy / "t.cache", trt=fake_tensorrt("10.3.0")
    )
    sys.modules["tensorrt"] = fake_tensorrt("10.7.0")
    try:
        with pytest.raises(
            ModelError,
            match=r"TensorRT 10.3.0 for NVIDIA Jetson Orin Nano .* TensorRT 10.7.0 .*rebuild it on this device",
        ):
            load_embedder(result.path)
        sys.modules["tensorrt"] = fake_tensorrt("10.3.0")
        monkeypatch.setattr(trt_export, "current_gpu", lambda index=0: GpuInfo("NVIDIA GeForce RTX 4060", "8.9"))
        with pytest.raises(
            ModelError, match=r"sm 8.7.*RTX 4060 \(sm 8.9\); engines are not portable: rebuild"
        ) as refused:
            load_embedder(result.path)
        assert (
            "\n" not in refused.value.message and f"edgedml export {run_copy} --format engine" in refused.value.message
        )
    finally:
        del sys.modules["tensorrt"]


def test_a_sidecar_that_describes_another_engine_or_none_at_all_is_refused(run_copy, on_this_gpu):
    trt = fake_tensorrt()
    result = engine_export.export_engine(run_copy, workspace="64MiB", timing_cache=run_copy / "t.cache", trt=trt)
    result.path.write_bytes(
        b"FAKE-ENGINE:" + str(run_copy / "model.onnx").encode() + b" "
    )  # rebuilt behind edgedml's back
    with pytest.raises(ModelError, match="describes another engine"):
        trt_export.TensorRTEmbedder(result.path, trt=trt)
    sidecar_path(result.path).unlink()
    with pytest.raises(ConfigError, match=re.escape("no model.engine.json beside it")):
        trt_export.TensorRTEmbedder(result.path, trt=trt)


def test_check_compatible_accepts_the_same_version_and_gpu():
    sidecar = {"tensorrt_version": "10.3.0", "gpu": GPU.to_dict(), "metadata": {}}
    check_compatible(sidecar, "10.3.0", GPU, "m.engine")
    with pytest.raises(ModelError, match="RUN_DIR --format engine"):
        check_compatible(sidecar, "10.3.0", GpuInfo(GPU.name, "8.6"), "m.engine")


def test_tensorrt11_export_builds_from_the_fp16_onnx(run_copy, on_this_gpu):
    trt = fake_tensorrt("11.0.0")
    result = engine_export.export_engine(
        run_copy, half=True, workspace="64MiB", timing_cache=run_copy / "t.cache", trt=trt
    )
    # built from the fp16 ONNX (staged beside the engine, then moved into place), with no precision flag
    assert Path(trt.calls["parsed"]).name == "model.fp16.onnx" and trt.calls["flags"] == []
    assert result.onnx_path == run_copy / "model.fp16.onnx" and result.onnx_path.is_file()
    sidecar = read_sidecar(result.path)
    assert (
        sidecar["precision"] == "fp16"
        and sidecar["onnx"]["precision"] == "fp16"
        and sidecar["builder"]["strongly_typed"]
    )
    assert sidecar["check"]["min_cosine"] >= 0.999


def test_make_sidecar_records_a_fixed_batch(tmp_path):
    build = trt_export.EngineBuild(
        b"x", plan_precision("fp16", 10), BatchRange.fixed(4), "10.3.0", [4, 3, 16, 16], None, None, False, 1.0
    )
    sidecar = make_sidecar(
        build, GPU, tmp_path / "m.onnx", {"embedding_dim": "16", "batch": "4", "precision": "fp32"}, "device"
    )
    assert sidecar["metadata"]["batch"] == "4" and sidecar["metadata"]["precision"] == "fp16"
    assert (
        sidecar["engine_sha256"] == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    )  # SHA-256 of b"x"


# ---- the CLI -----------------------------------------------------------------------------------------


def test_cli_without_tensorrt_checks_the_graph_then_says_how_to_install_it(cli, run_copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    monkeypatch.setattr(trt_export, "JETSON_MARKER", Path("/nonexistent/nv_tegra_release"))
    result = cli("export", run_copy, "--format", "engine", "--workspace", "256MiB")
    assert result.exit_code == 1, str(result)
    assert result.error_lines == [
        "error: TensorRT is not installed (import tensorrt failed); "
        "nothing was written, and every operator of the exported graph is one TensorRT 10 parses"
    ]
    assert "pip install 'edgedml[tensorrt]'" in result.hint_lines[0] and "--format onnx" in result.hint_lines[0]
    before = sorted(p.name for p in run_copy.iterdir())
    assert not any(name.startswith(("model.", "export.json", ".model.engine")) for name in before)  # all or nothing
    monkeypatch.setattr(trt_export, "JETSON_MARKER", run_copy / "config.yaml")  # any existing file: "a Jetson"
    assert "python3-libnvinfer" in trt_export.install_hint()


def test_cli_engine_options_are_checked_against_the_format_table(cli, run_copy):
    wrong = cli("export", run_copy, "--format", "onnx", "--workspace", "1GiB")
    assert wrong.exit_code == 2 and "does not take --workspace" in wrong.output
    both = cli("export", run_copy, "--format", "engine", "--batch", "4", "--max-batch", "8")
    assert both.exit_code == 2 and "exclude each other" in both.output
    bad_out = cli("export", run_copy, "--format", "engine", "--out", run_copy / "m.onnx")
    assert bad_out.exit_code == 2 and ".engine or .plan" in bad_out.output


def test_cli_engine_end_to_end_with_the_fake(cli, run_copy, on_this_gpu, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.3.0"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    result = cli(
        "export", run_copy, "--format", "engine", "--half", "--max-batch", "4", "--workspace", "128MiB", "--deepstream"
    )
    assert result.exit_code == 0, str(result)
    assert "built " in result.output and "fp16, batch 1..4" in result.output and "next: edgedml bench" in result.output
    assert "net-scale-factor 0.01731377" in result.output and "1.10%" in result.output
    assert sys.modules["tensorrt"].calls["flags"] == ["FP16"]
    caches = list((tmp_path / "xdg" / "edgedml" / "tensorrt").iterdir())
    assert [c.name for c in caches] == ["NVIDIA-Jetson-Orin-Nano-sm8.7-trt10.3.0.timing-cache"]


# ---- DeepStream --------------------------------------------------------------------------------------


def test_deepstream_normalization_by_hand():
    norm = deepstream_normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # 255 * std = 58.395, 57.12, 57.375; the minimax scale is 2 / (57.12 + 58.395)
    assert norm.net_scale_factor == pytest.approx(2 / 115.515, rel=1e-12)
    assert norm.max_relative_error == pytest.approx(1.275 / 115.515, rel=1e-9)  # 1.104%
    assert norm.offsets == pytest.approx((123.675, 116.28, 103.53))
    # the error is the same at both extremes (that is what makes it the minimax) and smaller in between
    errors = [abs(norm.net_scale_factor * 255 * s - 1) for s in (0.229, 0.224, 0.225)]
    assert errors[0] == pytest.approx(errors[1]) and errors[2] < errors[0]
    exact = deepstream_normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert exact.net_scale_factor == pytest.approx(1 / 63.75) and exact.max_relative_error == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("precision", "nvinfer_mode", "tracker_mode"), [("fp32", 0, 0), ("fp16", 2, 1), ("int8", 1, 2)]
)
def test_deepstream_config_files(tmp_path, precision, nvinfer_mode, tracker_mode):
    info = ModelInfo(
        dim=128, input_size=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), backbone="mobilenetv2"
    )
    files = write_deepstream_configs(tmp_path / "model.engine", tmp_path / "model.onnx", info, precision, 16, 512 << 20)
    nvinfer = files.nvinfer.read_text()
    assert files.nvinfer.name == "model.nvinfer.txt" and "[property]" in nvinfer
    for line in (
        f"network-mode={nvinfer_mode}",
        "net-scale-factor=0.0173137688",
        "offsets=123.6750;116.2800;103.5300",
        "model-color-format=0",
        "infer-dims=3;64;64",
        "batch-size=16",
        "network-type=100",
        "output-tensor-meta=1",
        "process-mode=2",
        f"model-engine-file={tmp_path / 'model.engine'}",
        f"onnx-file={tmp_path / 'model.onnx'}",
    ):
        assert line in nvinfer.splitlines(), line
    assert "at most 1.10% (relative)" in nvinfer
    import yaml

    reid = yaml.safe_load(files.tracker.read_text())["ReID"]
    assert reid["reidFeatureSize"] == 128 and reid["inferDims"] == [3, 64, 64] and reid["networkMode"] == tracker_mode
    assert (
        reid["batchSize"] == 16 and reid["workspaceSize"] == 512 and reid["colorFormat"] == 0 and reid["keepAspc"] == 0
    )
    assert reid["netScaleFactor"] == pytest.approx(2 / 115.515, rel=1e-8) and reid["offsets"] == [
        123.675,
        116.28,
        103.53,
    ]
    assert reid["addFeatureNormalization"] == 0 and reid["modelEngineFile"] == str(tmp_path / "model.engine")


# ---- the parser-operator check --------------------------------------------------------------------


def test_operator_table_has_what_our_backbones_use_and_not_what_tensorrt_lacks():
    for op in (
        "Conv",
        "Relu",
        "Clip",
        "MaxPool",
        "Add",
        "ReduceMean",
        "ReduceL2",
        "Gemm",
        "Div",
        "Expand",
        "Cast",
        "QuantizeLinear",
        "DequantizeLinear",
    ):
        assert SUPPORTED_OPS[op] == (10, 0)
    for op in ("Unique", "NonMaxSuppressionV2", "MatMulInteger", "ConvInteger", "QLinearConv", "StringNormalizer"):
        assert op not in SUPPORTED_OPS
    assert SUPPORTED_OPS["Attention"] == (10, 14)


def _synthetic_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    init = [
        helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("zp_uint8", TensorProto.UINT8, [], [128]),
        helper.make_tensor("zp_int8", TensorProto.INT8, [], [0]),
        helper.make_tensor("zp_int8_shifted", TensorProto.INT8, [], [-3]),
        helper.make_tensor("bias_int32", TensorProto.INT32, [4], [1, 2, 3, 4]),
        helper.make_tensor("zp_int32", TensorProto.INT32, [], [0]),
    ]
    nodes = [
        helper.make_node("Relu", ["images"], ["a"], name="relu"),
        helper.make_node("Unique", ["a"], ["b"], name="/head/Unique"),
        helper.make_node("FusedGemm", ["a"], ["c"], name="ms_gemm", domain="com.microsoft"),
        helper.make_node("QuantizeLinear", ["a", "scale", "zp_uint8"], ["q"], name="q_asymmetric"),
        helper.make_node("QuantizeLinear", ["a", "scale", "zp_int8"], ["q8"], name="q_symmetric"),
        helper.make_node("QuantizeLinear", ["a", "scale", "zp_int8_shifted"], ["q8s"], name="q_shifted"),
        helper.make_node("DequantizeLinear", ["bias_int32", "scale", "zp_int32"], ["bias"], name="bias_dq"),
        helper.make_node("Shape", ["a"], ["axes"], name="shape"),
        helper.make_node("ReduceSum", ["a", "axes"], ["s"], name="sum_runtime_axes"),
        helper.make_node("Attention", ["a", "a", "a"], ["att"], name="attention"),
        helper.make_node("Identity", ["s"], ["out"], name="identity"),
    ]
    graph = helper.make_graph(nodes, "synthetic", [x], [y], init)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    )


def test_operator_check_names_each_unsupported_node_and_why():
    problems = {p.node: p for p in check_tensorrt_ops(_synthetic_model())}
    assert set(problems) == {
        "/head/Unique",
        "ms_gemm",
        "q_asymmetric",
        "q_shifted",
        "bias_dq",
        "sum_runtime_axes",
        "attention",
    }
    assert "support matrix" in problems["/head/Unique"].reason
    assert problems["ms_gemm"].op_type == "com.microsoft::FusedGemm" and "plugin" in problems["ms_gemm"].reason
    assert "UINT8" in problems["q_asymmetric"].reason
    assert "not 0" in problems["q_shifted"].reason and "ActivationSymmetric" in problems["q_shifted"].reason
    assert "INT32" in problems["bias_dq"].reason and "QuantizeBias=False" in problems["bias_dq"].reason
    assert "constant axes" in problems["sum_runtime_axes"].reason
    assert "10.14" in problems["attention"].reason
    assert "attention" not in {p.node for p in check_tensorrt_ops(_synthetic_model(), tensorrt_version=(10, 15))}


def test_operator_check_flags_an_opset_outside_the_parsers_range():
    model = _synthetic_model()
    model.opset_import[0].version = 8
    assert check_tensorrt_ops(model)[0].node == "(model)"


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tiny", "mobilenetv2", "resnet18"])
def test_exported_backbones_parse_in_every_precision(
    backbone, cli, shared_image_folder, tmp_path, set_option, tiny_train_options
):
    from edgedml.export.onnx import export_onnx

    options = set_option(
        set_option(set_option(tiny_train_options, "--backbone", backbone), "--epochs", "1"), "--input-size", "32"
    )
    trained = cli("train", "--data", shared_image_folder, "--out", tmp_path / "run", *options)
    assert trained.exit_code == 0, str(trained)
    summary = export_onnx(tmp_path / "run", half=True, int8=True)
    assert set(summary.files) == {"fp32", "fp16", "int8"}
    for exported_file in summary.files.values():
        graph = onnx.load(str(exported_file.path))
        assert check_tensorrt_ops(graph) == [], exported_file.path
    int8_ops = {node.op_type for node in onnx.load(str(summary.files["int8"].path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= int8_ops  # the Q/DQ zero points were checked, not absent


# ---- a real engine -----------------------------------------------------------------------------------


def _real_tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'edgedml[tensorrt]', or JetPack on a Jetson)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


@pytest.mark.skipif(_real_tensorrt_missing() is not None, reason=str(_real_tensorrt_missing()))
def test_real_engine_matches_onnxruntime(run_copy, tmp_path):
    result = engine_export.export_engine(run_copy, batch=BatchRange.dynamic(8), timing_cache=tmp_path / "t.cache")
    embedder = load_embedder(result.path)
    images = np.random.default_rng(0).normal(size=(13, 3, 16, 16)).astype(np.float32)
    expected = load_embedder(run_copy / "model.onnx").embed(images)
    np.testing.assert_allclose(embedder.embed(images), expected, atol=2e-3)
    assert result.check["min_cosine"] >= 0.9999
    rebuilt = engine_export.export_engine(run_copy, batch=BatchRange.dynamic(8), timing_cache=tmp_path / "t.cache")
    assert read_sidecar(rebuilt.path)["builder"]["timing_cache_reused"]
