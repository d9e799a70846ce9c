"""`edgedml eval`, the top-level app (help, version, lazy torch import) and `edgedml quickstart`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import edgedml


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


# ---- eval -------------------------------------------------------------------------------


def test_eval_reproduces_the_training_summary(cli, trained):
    summary = read_json(trained.run / "summary.json")
    result = cli("eval", trained.run, "--json")
    assert result.exit_code == 0, str(result)
    metrics = json.loads(result.stdout)
    assert metrics["recall_at_1"] == pytest.approx(summary["recall_at_1"], abs=1e-6)
    assert metrics["map_at_r"] == pytest.approx(summary["map_at_r"], abs=1e-6)
    assert metrics["recall_at_k"] == pytest.approx(summary["recall_at_k"], abs=1e-6)
    assert metrics["r_precision"] == pytest.approx(summary["r_precision"], abs=1e-6)
    assert (metrics["num_queries"], metrics["num_classes"]) == (30, 3)  # the 3 unseen test classes


def test_eval_on_the_validation_split_matches_model_selection(cli, trained):
    summary = read_json(trained.run / "summary.json")
    records = [json.loads(line) for line in (trained.run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    best = records[summary["best_epoch"] - 1]
    result = cli("eval", trained.run, "--split", "val", "--json")
    assert result.exit_code == 0, str(result)
    metrics = json.loads(result.stdout)
    assert (metrics["num_queries"], metrics["num_classes"]) == (6, 3)
    # the best weights are those validated at the best epoch
    assert metrics["recall_at_1"] == pytest.approx(best["val_recall_at_1"], abs=1e-6)
    assert metrics["map_at_r"] == pytest.approx(best["val_map_at_r"], abs=1e-6)


def test_eval_prints_a_table(cli, trained):
    result = cli("eval", trained.run, "--checkpoint", "last")
    assert result.exit_code == 0, str(result)
    assert f"{trained.run} (last) on the test split" in result.output
    for row in ("Recall@1", "Recall@8", "MAP@R", "R-precision", "NMI", "silhouette"):
        assert row in result.output


def test_eval_rejects_an_unknown_checkpoint(cli, trained):
    result = cli("eval", trained.run, "--checkpoint", "nope")
    assert result.exit_code != 0, str(result)
    assert len(result.error_lines) == 1 and "--checkpoint 'nope'" in result.error_lines[0]
    assert "best, last" in result.error_lines[0]
    assert "Traceback" not in result.output


def test_eval_rejects_an_unknown_split(cli, trained):
    result = cli("eval", trained.run, "--split", "everything")
    assert result.exit_code != 0, str(result)
    assert len(result.error_lines) == 1 and "--split 'everything'" in result.error_lines[0]


def test_eval_of_a_folder_that_is_not_a_run(cli, shared_image_folder):
    result = cli("eval", shared_image_folder)
    assert result.exit_code != 0, str(result)
    assert len(result.error_lines) == 1, str(result)
    assert str(shared_image_folder) in result.error_lines[0] and "not a run directory" in result.error_lines[0]
    assert "Traceback" not in result.output


def test_eval_of_a_run_without_best_weights(cli, run_copy):
    (run_copy / "best.safetensors").unlink()
    result = cli("eval", run_copy)
    assert result.exit_code != 0, str(result)
    assert len(result.error_lines) == 1 and "best.safetensors" in result.error_lines[0]


# ---- the app ----------------------------------------------------------------------------


def test_help_lists_the_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0, str(result)
    for command in ("train", "eval", "quickstart"):
        assert command in result.output


def test_no_arguments_shows_help(cli):
    result = cli()
    assert result.exit_code in (0, 2), str(result)  # click >= 8.2 exits 2 for no_args_is_help
    assert "Usage" in result.output
    for command in ("train", "eval", "quickstart"):
        assert command in result.output


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0, str(result)
    assert result.output.strip() == f"edgedml {edgedml.__version__}"


def test_train_help_lists_its_options(cli):
    result = cli("train", "--help")
    assert result.exit_code == 0, str(result)
    for option in ("--out", "--data", "--config", "--resume", "--overwrite", "--loss", "--epochs", "--json"):
        assert option in result.output


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from edgedml.cli.main import app, main\n"
        "assert 'torch' not in sys.modules, 'importing edgedml.cli.main imported torch'\n"
        "sys.argv = ['edgedml', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "assert 'torch' not in sys.modules, 'edgedml --help imported torch'\n"
        "print('no torch')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout and done.stdout.strip().endswith("no torch")


# ---- quickstart -------------------------------------------------------------------------


@pytest.mark.slow
def test_quickstart_keeps_its_promise(cli, tmp_path):
    out = tmp_path / "quickstart"
    result = cli("quickstart", "--out", out)
    assert result.exit_code == 0, str(result)
    summary = read_json(out / "shadow-64d" / "summary.json")
    assert summary["test_classes"] == ["5", "6", "7", "8", "9"]  # digits never seen in training
    assert summary["recall_at_1"] >= 0.85, summary
    # Recall@1 of digits is high even for random features; training must buy ranking quality.
    assert summary["map_at_r"] > summary["untrained_map_at_r"] + 0.05, summary
    assert "before training: Recall@1" in result.output
    plain, distilled = read_json(out / "plain-16d" / "summary.json"), read_json(out / "s2sd-16d" / "summary.json")
    assert plain["parameters"] == distilled["parameters"] < distilled["parameters_training"]  # heads never exported
    for name, run in (("plain-16d", plain), ("s2sd-16d", distilled)):
        row = next(line for line in result.output.splitlines() if name in line and "Recall" not in line)
        assert f"{run['recall_at_1']:.4f}" in row
    # step 4: the distilled model exported in three precisions, each scored next to PyTorch
    export = read_json(out / "s2sd-16d" / "export.json")
    assert export["reference"]["recall_at_1"] == pytest.approx(distilled["recall_at_1"])
    recalls = {precision: entry["recall_at_1"] for precision, entry in export["files"].items()}
    assert set(recalls) == {"fp32", "fp16", "int8"}
    assert abs(recalls["int8"] - recalls["fp32"]) <= 0.01, recalls
    # step 5: the unseen digits indexed with the int8 file, one image per class held out as a query
    index_meta = read_json(out / "index" / "index.json")
    queries = sorted((out / "queries").glob("*.png"))
    assert [q.stem for q in queries] == ["5", "6", "7", "8", "9"]
    assert index_meta["count"] == len(list((out / "unseen-digits").rglob("*.png"))) == 896 - 5
    assert Path(index_meta["model"]["path"]).name == "model.int8.onnx"
    shown = re.search(r"(\d+) of 25 neighbours share the query's digit", result.output)
    assert shown is not None and int(shown.group(1)) >= 13, result.output  # chance among 5 digits is 5 of 25
    searched = cli("search", out / "index", queries[1], "--top-k", "3", "--json")
    assert searched.exit_code == 0, str(searched)
    hits = json.loads(searched.output)[0]["hits"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[2]["score"]
    assert "next commands to try" in result.output
    assert f"edgedml search {out / 'index'}" in result.output
    assert "edgedml train --data" in result.output
