"""edgedml bench: percentiles and throughput against hand-computed values, warm-up not counted, threads applied
to both runtimes, fixed-batch models, and the CLI on a real exported model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedml.errors import ConfigError
from edgedml.export.bench import (
    MIN_ITERATIONS,
    BatchTiming,
    BenchPlan,
    bench,
    open_model,
    parse_batches,
    resolve_batches,
)
from edgedml.export.onnx import export_onnx
from edgedml.export.runtime import ModelInfo

INPUT_SIZE = 16


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeEmbedder:
    """``embed`` advances an injected clock by the next of ``durations`` (seconds) and records what it saw."""

    runtime = "fake"

    def __init__(self, durations: list[float], clock: FakeClock, batch: int | None = None):
        self.path = Path("fake.onnx")
        self.info = ModelInfo(
            dim=8, input_size=INPUT_SIZE, mean=(0.5,) * 3, std=(0.5,) * 3, precision="int8", batch=batch
        )
        self.durations = list(durations)
        self.clock = clock
        self.shapes: list[tuple[int, ...]] = []
        self.torch_threads: list[int] = []

    def embed(self, images: np.ndarray) -> np.ndarray:
        self.shapes.append(images.shape)
        self.torch_threads.append(torch.get_num_threads())
        self.clock.now += self.durations.pop(0)
        return np.zeros((len(images), self.info.dim), np.float32)


def test_percentiles_and_throughput_by_hand_and_warm_up_not_counted():
    clock = FakeClock()
    warmup = [1.0, 2.0]  # slow first calls, which must not reach the statistics
    timed = [0.001 * k for k in (7, 3, 10, 1, 5, 9, 2, 8, 6, 4)]  # 1..10 ms, shuffled
    embedder = FakeEmbedder(warmup + timed, clock)
    result = bench(embedder, [4], BenchPlan(warmup=2, iterations=10), clock=clock)
    assert embedder.durations == []  # exactly 2 + 10 calls
    assert embedder.shapes == [(4, 3, INPUT_SIZE, INPUT_SIZE)] * 12  # the model's own input shape
    (timing,) = result.timings
    # sorted 1..10 ms, linear interpolation at (n - 1) q: p50 at 4.5 -> 5.5; p90 at 8.1 -> 9.1; p99 at 8.91 -> 9.91
    assert timing.batch == 4 and timing.iterations == 10
    assert (
        timing.p50_ms == pytest.approx(5.5)
        and timing.p90_ms == pytest.approx(9.1)
        and timing.p99_ms == pytest.approx(9.91)
    )
    assert (
        timing.mean_ms == pytest.approx(5.5)
        and timing.min_ms == pytest.approx(1.0)
        and timing.max_ms == pytest.approx(10.0)
    )
    assert timing.images_per_s == pytest.approx(4 * 10 / 0.055)  # 40 images in 55 ms
    assert (result.runtime, result.precision, result.input_size, result.dim, result.warmup) == (
        "fake",
        "int8",
        16,
        8,
        2,
    )


def test_each_batch_size_gets_its_own_warm_up_and_calls():
    clock = FakeClock()
    embedder = FakeEmbedder([0.5] + [0.002] * 3 + [0.5] + [0.004] * 3, clock)
    result = bench(embedder, [1, 8], BenchPlan(warmup=1, iterations=3), clock=clock)
    assert [s[0] for s in embedder.shapes] == [1, 1, 1, 1, 8, 8, 8, 8]
    assert [(t.batch, t.p50_ms, t.max_ms) for t in result.timings] == [
        (1, pytest.approx(2.0), pytest.approx(2.0)),
        (8, pytest.approx(4.0), pytest.approx(4.0)),
    ]
    assert result.timings[1].images_per_s == pytest.approx(8 / 0.004)


@pytest.mark.parametrize(
    ("call_s", "budget_s", "calls"), [(0.003, 0.02, MIN_ITERATIONS), (0.005, 0.098, 20), (0.004, 0.041, 11)]
)
def test_a_time_budget_times_calls_until_it_is_spent_but_at_least_the_minimum(call_s, budget_s, calls):
    clock = FakeClock()
    embedder = FakeEmbedder([call_s] * 100, clock)
    (timing,) = bench(embedder, [2], BenchPlan(warmup=0, seconds=budget_s), clock=clock).timings
    assert timing.iterations == calls and len(embedder.shapes) == calls


def test_batch_timing_of_one_call():
    timing = BatchTiming.from_seconds(3, [0.02])
    assert (timing.p50_ms, timing.p99_ms, timing.images_per_s) == (
        pytest.approx(20.0),
        pytest.approx(20.0),
        pytest.approx(150.0),
    )


def test_a_fixed_batch_model_is_timed_at_its_own_batch_only():
    embedder = FakeEmbedder([], FakeClock(), batch=4)
    assert resolve_batches(embedder, None) == [4]
    assert resolve_batches(embedder, [4]) == [4]
    with pytest.raises(ConfigError, match=r"--batch 1,8: fake.onnx has a fixed batch of 4") as caught:
        resolve_batches(embedder, [1, 4, 8])
    assert "--batch 4" in caught.value.hint
    assert resolve_batches(FakeEmbedder([], FakeClock()), None) == [1, 8, 32]


@pytest.mark.parametrize("text", ["", "x", "1,x", "1,,2", "0", "-1", "1.5", "5000", "8,8"])
def test_bad_batch_strings_name_the_option(text):
    with pytest.raises(ConfigError, match=r"^--batch '"):
        parse_batches(text)


def test_batch_strings():
    assert parse_batches("1,8,32") == [1, 8, 32]
    assert parse_batches(" 2, 4 ") == [2, 4]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"iterations": 3, "seconds": 1.0}, "exclude each other"),
        ({"warmup": -1}, "--warmup"),
        ({"iterations": 0}, "--iters"),
        ({"warmup": 100_001}, r"--warmup 100001 must lie in 0\.\.100,000"),
        ({"iterations": 10**9}, r"--iters 1000000000 must lie in 1\.\.100,000"),
        ({"seconds": 0.0}, "--seconds"),
    ],
)
def test_bad_plans(options, message):
    with pytest.raises(ConfigError, match=message):
        BenchPlan(**options)


def test_threads_apply_to_torch_during_the_run_and_are_restored():
    clock = FakeClock()
    before = torch.get_num_threads()
    embedder = FakeEmbedder([0.001] * 4, clock)
    result = bench(embedder, [1], BenchPlan(warmup=1, iterations=3), threads=before + 1, clock=clock)
    assert embedder.torch_threads == [before + 1] * 4
    assert torch.get_num_threads() == before
    assert result.threads == before + 1 and result.environment["torch_threads"] == before + 1


# ---- real models -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bench")
    dynamic = export_onnx(trained.run, out=folder / "dynamic.onnx")
    fixed = export_onnx(trained.run, out=folder / "fixed" / "fixed.onnx", batch=4)
    return {"dynamic": Path(dynamic.path), "fixed": Path(fixed.path), "run": trained.run}


def test_onnxruntime_gets_the_thread_count(exported):
    embedder = open_model(exported["dynamic"], threads=1)
    assert embedder.session.get_session_options().intra_op_num_threads == 1
    assert embedder.providers == ["CPUExecutionProvider"]


def test_cli_bench_onnx_json_and_out_file(cli, exported, tmp_path):
    out = tmp_path / "reports" / "bench.json"
    result = cli(
        "bench",
        exported["dynamic"],
        "--batch",
        "1,3",
        "--warmup",
        "1",
        "--iters",
        "4",
        "--threads",
        "1",
        "--json",
        "--out",
        out,
    )
    assert result.exit_code == 0, str(result)
    printed = json.loads(result.stdout)
    assert json.loads(out.read_text()) == printed
    assert (printed["runtime"], printed["precision"], printed["threads"], printed["input_size"]) == (
        "onnxruntime",
        "fp32",
        1,
        16,
    )
    assert [(t["batch"], t["iterations"]) for t in printed["timings"]] == [(1, 4), (3, 4)]
    for t in printed["timings"]:
        assert 0 < t["min_ms"] <= t["p50_ms"] <= t["p90_ms"] <= t["p99_ms"] <= t["max_ms"]
        assert t["images_per_s"] == pytest.approx(t["batch"] * 1e3 / t["mean_ms"])


def test_cli_bench_torch_table(cli, exported):
    result = cli("bench", exported["run"], "--batch", "2", "--warmup", "0", "--iters", "2")
    assert result.exit_code == 0, str(result)
    header = next(line for line in result.output.splitlines() if "p50 ms" in line)
    assert all(name in header for name in ("runtime", "precision", "batch", "p90 ms", "p99 ms", "images/s"))
    row = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("torch"))
    assert "fp32" in row and " 2 " in row


def test_cli_bench_fixed_batch(cli, exported):
    result = cli("bench", exported["fixed"], "--iters", "2", "--warmup", "0", "--json")
    assert result.exit_code == 0, str(result)
    assert [t["batch"] for t in json.loads(result.stdout)["timings"]] == [4]
    wrong = cli("bench", exported["fixed"], "--batch", "1,4")
    assert wrong.exit_code == 2
    assert wrong.error_lines == [f"error: --batch 1: {exported['fixed']} has a fixed batch of 4"]
    assert "--batch 4" in wrong.hint_lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "1,x"], "error: --batch '1,x'"),
        (["--iters", "2", "--seconds", "1"], "exclude each other"),
        (["--runtime", "torch"], "--runtime torch cannot run"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--threads", "0"], "--threads 0"),
    ],
)
def test_cli_bench_errors_are_one_line(cli, exported, args, message):
    result = cli("bench", exported["dynamic"], *args)
    assert result.exit_code == 2, str(result)
    assert len(result.error_lines) == 1 and message in result.error_lines[0]
