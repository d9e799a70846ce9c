"""benchmarks/gpu_check.py: its dry run exercises every section on the CPU, so the GPU check cannot rot unseen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run_check(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the real check would run (minutes)")
def test_without_a_gpu_the_real_check_refuses_and_names_the_dry_run(tmp_path):
    done = run_check("--out", str(tmp_path))
    assert done.returncode == 2
    assert "no CUDA device is visible to torch; run with --dry-run" in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow
def test_the_dry_run_runs_every_section_on_the_cpu_and_writes_its_json(tmp_path):
    done = run_check("--dry-run", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text(encoding="utf-8"))
    sections = result["sections"]
    assert list(sections) == ["probes", "planner", "budget", "commands", "parity"]
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(sections, "ok")
    assert result["dry_run"] is True and result["environment"]["cuda_available"] is False

    probe = sections["probes"]["rows"][0]
    assert probe["probe"] == "host" and 0 < probe["free_mib"] <= probe["total_mib"]

    planner = sections["planner"]["rows"]
    assert len(planner) == 4 and all(row["measured_by"] == "cpu allocation timeline (proxy)" for row in planner)
    # on real CPU tensors the step the planner predicts from fake ones is the step measured, byte for byte
    assert all(abs(row["error_allocated"]) < 1e-3 for row in planner), planner
    assert sections["planner"]["verdict"] is None  # the +-10% CUDA target is not judged on a CPU

    budget = sections["budget"]
    assert [row["budget"] for row in budget["rows"]] == ["64MiB", "256MiB"]
    for row, limit_mib in zip(budget["rows"], (64, 256), strict=True):
        assert row["batch_chosen"] % 4 == 0 and row["required_mib"] <= limit_mib and row["steps"] > 0
    assert budget["nothing_fits"].startswith("nothing fits: batch 128 with memory 0 needs")
    assert budget["in_process_overrun"].startswith("skipped: needs CUDA")

    steps = sections["commands"]["rows"]
    assert [row["step"] for row in steps] == ["train", "eval", "export onnx", "bench torch", "bench onnx"]
    assert all(row["exit_code"] == 0 for row in steps), steps
    assert "(onnxruntime on cpu)" in steps[-1]["summary"] and sections["commands"]["onnx_on_gpu"] is False

    parity = sections["parity"]["rows"]
    assert {(row["backbone"], row["library"]) for row in parity} == {
        (backbone, library)
        for backbone in ("resnet18", "resnet34", "resnet50", "mobilenetv2")
        for library in ("torchvision", "timm")
    }
    for row in parity:  # here torchvision does not import; where it does, its own weights must give its features
        assert "does not import here" in row.get("skipped", "") or row["max_abs_difference"] <= 1e-5, row
    assert "## planner: ok" in done.stdout and "| tiny@32 b16 |" in done.stdout
