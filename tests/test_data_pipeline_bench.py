"""benchmarks/data_pipeline.py at its smallest settings (tiny backbone, 32 px, a dozen small JPEGs, one step): every
table has its rows, the JSON holds the raw numbers, and a second run reuses the generated images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "data_pipeline.py"
SMALLEST = [
    "--backbones", "tiny",
    "--input-size", "32",
    "--batch", "2x2",
    "--classes", "3",
    "--per-class", "4",
    "--image-size", "64x48",
    "--workers", "0", "1",
    "--steps", "1",
    "--model-steps", "1",
    "--warmup", "0",
    "--decode-sizes", "64x48", "256x192",
    "--decode-images", "1",
    "--reps", "1",
]  # fmt: skip


def run_bench(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *SMALLEST, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def table_rows(report: str, first_cell: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in report.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows if row[0].strip() == first_cell]


def test_the_smallest_run_reports_every_table_and_writes_its_json(tmp_path):
    data, out = tmp_path / "photos", tmp_path / "bench.json"
    done = run_bench("--data", str(data), "--json", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = done.stdout

    (model,) = table_rows(report, "tiny")[:1]
    assert model[1:3] == ["32 px", "4"] and float(model[3]) > 0
    loop = [row for row in table_rows(report, "tiny") if len(row) == 10]
    assert [row[1] for row in loop] == ["0", "1"] and all(row[9] in ("MET", "MISSED") for row in loop)
    decode = table_rows(report, "64x48") + table_rows(report, "256x192")
    # 32 px with a 0.6 crop needs a 48 px shorter side: 64x48 cannot shrink, 256x192 decodes at 1/4
    assert [(row[2], row[3]) for row in decode] == [
        ("full", "64x48"),
        ("draft (side >= 48)", "64x48"),
        ("full", "256x192"),
        ("draft (side >= 48)", "64x48"),
    ]
    assert sum(line.startswith(("MET: tiny", "MISSED: tiny")) for line in report.splitlines()) == 2
    assert "draft at 64x48: no reduction possible" in report and "draft at 256x192: decoded at 64x48" in report
    assert "torch thread(s) (PyTorch's default)" in report

    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["benchmark"] == "data_pipeline"
    assert [(r["backbone"], r["workers"]) for r in result["loop"]] == [("tiny", 0), ("tiny", 1)]
    assert all(len(r["waits_s"]) == len(r["steps_s"]) == 1 and r["share"] >= 0 for r in result["loop"])
    assert len(result["model_alone_s"]["tiny"]) == 1 and len(result["decode"]) == 4

    images = sorted(data.rglob("*.jpg"))
    assert len(images) == 3 * 4 + 2
    written = {path: path.stat().st_mtime_ns for path in images}
    again = run_bench("--data", str(data), "--workers", "0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in sorted(data.rglob("*.jpg"))} == written  # reused, not rewritten


def test_a_batch_of_more_classes_than_the_folder_holds_is_refused():
    done = run_bench("--batch", "4x2")
    assert done.returncode == 2 and "--batch 4x2 needs 4 classes, --classes is 3" in done.stderr
