"""Hostile input and faults across commands: one `error:` line that names the file or option, a hint that works in
the state the tool left, no traceback, and every file that was there before unchanged (sha256)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import assert_one_error, digests
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edgedml.config import TrainConfig
from edgedml.errors import NonFiniteLossError
from edgedml.retrieval.faiss_store import META_FILE
from edgedml.training import Trainer

TINY = {
    "backbone": "tiny",
    "input_size": 16,
    "dim": 16,
    "batch_size": 8,
    "samples_per_class": 4,
    "epochs": 2,
    "device": "cpu",
}
TINY_OPTIONS = [
    "--backbone", "tiny", "--input-size", "16", "--dim", "16", "--batch-size", "8", "--samples-per-class", "4",
    "--epochs", "1", "--device", "cpu",
]  # fmt: skip


def export_fp32(run: Path, out: Path, **options) -> Path:
    from edgedml.export.onnx import export_onnx

    return export_onnx(run, out=out, evaluate=False, **options).files["fp32"].path


# ---- data already there is never destroyed ----------------------------------------------------------


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_resume_with_epochs_below_one_is_refused_and_changes_nothing(cli, run_copy, epochs):
    before = digests(run_copy)
    result = cli("train", "--resume", run_copy, "--epochs", epochs)
    assert_one_error(result, "--epochs", code=2)
    assert digests(run_copy) == before


def test_resume_with_fewer_epochs_than_trained_is_refused_and_the_hint_works(cli, run_copy):
    before = digests(run_copy)
    result = cli("train", "--resume", run_copy, "--epochs", "1")
    assert_one_error(result, "--epochs 1", "has already trained 2 epoch(s)", code=2)
    assert "--epochs 3" in result.hint_lines[0] and f"edgedml eval {run_copy}" in result.hint_lines[0]
    assert digests(run_copy) == before
    assert cli("eval", run_copy, "--json").exit_code == 0


def test_overwrite_that_fails_before_its_first_checkpoint_leaves_the_old_run(
    shared_image_folder, run_copy, monkeypatch
):
    (run_copy / "model.onnx").write_bytes(b"the user's export")  # not a run file: never touched
    before = digests(run_copy)
    trainer = Trainer(TrainConfig.from_sources(overrides={"data": str(shared_image_folder), **TINY}), run_copy)
    clean_forward = trainer.loss_fn.forward
    steps = []

    def nan_at_step_two(*args, **kwargs):
        steps.append(1)
        loss = clean_forward(*args, **kwargs)
        return loss * float("nan") if len(steps) == 2 else loss

    monkeypatch.setattr(trainer.loss_fn, "forward", nan_at_step_two)
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit(overwrite=True)
    assert f"{run_copy} still holds the previous run, untouched" in caught.value.message
    assert digests(run_copy) == before and not (run_copy / ".overwrite").exists()


def test_overwrite_replaces_the_run_files_at_the_first_checkpoint_and_keeps_the_others(shared_image_folder, run_copy):
    (run_copy / "model.onnx").write_bytes(b"the user's export")
    old_last = (run_copy / "last.safetensors").read_bytes()
    config = TrainConfig.from_sources(overrides={"data": str(shared_image_folder), **TINY, "epochs": 1, "seed": 7})
    summary = Trainer(config, run_copy).fit(overwrite=True)
    assert summary["epochs"] == 1 and (run_copy / "last.safetensors").read_bytes() != old_last
    assert (run_copy / "model.onnx").read_bytes() == b"the user's export"
    assert TrainConfig.from_sources(run_copy / "config.yaml").seed == 7 and not (run_copy / ".overwrite").exists()
    assert len((run_copy / "metrics.jsonl").read_text().splitlines()) == 1  # the old run's records are gone


def test_a_run_that_stopped_before_its_first_checkpoint_says_so_and_the_hint_works(cli, shared_image_folder, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig.from_sources(overrides={"data": str(shared_image_folder), **TINY, "epochs": 1})
    run.mkdir()
    (run / "config.yaml").write_text(Trainer(config, run).config.to_yaml())  # what such a run leaves
    result = cli("train", "--resume", run)
    assert_one_error(result, "stopped before its first checkpoint", "nothing to resume")
    command = result.hint_lines[0].split("start it again: ", 1)[1]
    assert command == f"edgedml train --config {run / 'config.yaml'} --out {run}"
    assert cli(*command.split()[1:]).exit_code == 0 and (run / "last.safetensors").is_file()


def test_a_nan_before_any_checkpoint_says_none_was_saved_and_the_same_run_can_start_again(
    shared_image_folder, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    config = TrainConfig.from_sources(overrides={"data": str(shared_image_folder), **TINY, "epochs": 1})
    trainer = Trainer(config, run)
    clean = type(trainer.loss_fn).forward
    monkeypatch.setattr(
        trainer.loss_fn, "forward", lambda outputs, labels: clean(trainer.loss_fn, outputs, labels) * float("nan")
    )
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit()
    assert "no checkpoint was saved" in caught.value.message
    assert Trainer(config, run).fit()["epochs"] == 1  # no --overwrite needed: nothing of a run was there


def test_a_last_checkpoint_without_optimizer_state_cannot_resume_and_says_what_still_works(cli, run_copy):
    tensors = load_file(str(run_copy / "last.safetensors"))
    with safe_open(str(run_copy / "last.safetensors"), framework="pt") as handle:
        metadata = dict(handle.metadata())
    del metadata["optimizer"]
    save_file(tensors, str(run_copy / "last.safetensors"), metadata=metadata)
    before = digests(run_copy)
    result = cli("train", "--resume", run_copy, "--epochs", "3")
    assert_one_error(result, "last.safetensors: incomplete or damaged", "'optimizer' missing")
    assert f"edgedml eval {run_copy}" in result.hint_lines[0] and "--overwrite" in result.hint_lines[0]
    assert digests(run_copy) == before
    assert cli("eval", run_copy, "--json").exit_code == 0


def test_index_append_removes_only_the_files_the_index_wrote(cli, trained, tmp_path):
    model = export_fp32(trained.run, tmp_path / "model.onnx")
    out = tmp_path / "index"
    first = tmp_path / "first"
    shutil.copytree(trained.data / "class0", first / "class0")
    shutil.copytree(trained.data / "class1", first / "class1")
    assert cli("index", model, "--gallery", first, "--out", out).exit_code == 0
    (out / "index.notes.txt").write_text("mine")
    (out / "manifest.backup.csv").write_text("mine too")
    result = cli("index", model, "--gallery", trained.data, "--out", out, "--append")
    assert result.exit_code == 0, str(result)
    assert (out / "index.notes.txt").read_text() == "mine" and (out / "manifest.backup.csv").read_text() == "mine too"
    assert sorted(p.name for p in out.glob("*.faiss")) == ["index.2.faiss"]


def test_quickstart_refuses_a_folder_holding_the_users_files(cli, tmp_path):
    out = tmp_path / "mine"
    (out / "queries").mkdir(parents=True)
    (out / "queries" / "holiday.jpg").write_bytes(b"not the quick start's")
    before = digests(out)
    result = cli("quickstart", "--out", out)
    assert_one_error(result, f"--out {out}", "queries/holiday.jpg", code=2)
    assert digests(out) == before


# ---- damaged index files ----------------------------------------------------------------------------


@pytest.fixture
def built_index(cli, trained, tmp_path) -> tuple[Path, Path]:
    model = export_fp32(trained.run, tmp_path / "model.onnx")
    out = tmp_path / "index"
    assert cli("index", model, "--gallery", trained.data, "--out", out).exit_code == 0
    return model, out


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda meta: meta.update(generation="../../x"), "generation '../../x' is not a whole number"),
        (lambda meta: meta.pop("count"), "damaged, count missing"),
        (lambda meta: meta["files"].update(index="/etc/passwd"), "not the index's own"),
    ],
    ids=["generation-path", "missing-key", "absolute-file"],
)
def test_a_damaged_index_json_is_refused_and_overwrite_rebuilds_it(cli, trained, built_index, damage, expected):
    model, out = built_index
    meta = json.loads((out / META_FILE).read_text())
    damage(meta)
    (out / META_FILE).write_text(json.dumps(meta))
    before = digests(out)
    result = cli("search", out, trained.data / "class0" / "0.png")
    assert_one_error(result, str(out / META_FILE), expected)
    assert digests(out) == before
    rebuild = (
        result.hint_lines[0].split("rebuild it: ", 1)[1].replace("MODEL", str(model)).replace("SPEC", str(trained.data))
    )
    assert cli(*rebuild.split()[1:]).exit_code == 0
    assert cli("search", out, trained.data / "class0" / "0.png").exit_code == 0


def test_a_deleted_faiss_file_is_refused_and_the_hinted_overwrite_works(cli, trained, built_index):
    model, out = built_index
    (out / "index.1.faiss").unlink()
    result = cli("search", out, trained.data / "class0" / "0.png")
    assert_one_error(result, "the index files are missing or damaged")
    assert "--overwrite" in result.hint_lines[0]
    assert cli("index", model, "--gallery", trained.data, "--out", out, "--overwrite").exit_code == 0
    assert cli("search", out, trained.data / "class0" / "0.png").exit_code == 0


def test_search_opens_the_recorded_model_only_if_it_is_still_that_model(cli, trained, built_index, tmp_path):
    model, out = built_index
    other = export_fp32(trained.run, tmp_path / "other.onnx", batch=2)  # a different file, same run
    shutil.copyfile(other, model)  # the path index.json records now holds another file
    result = cli("search", out, trained.data / "class0" / "0.png")
    assert_one_error(result, "is no longer the model that built the index", "sha256")
    assert "--model" in result.hint_lines[0]


def test_eval_refuses_recorded_data_that_is_not_here_and_says_which_data_it_reads(cli, trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained.data, data)
    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    config = (run / "config.yaml").read_text().replace(str(trained.data), str(data))
    (run / "config.yaml").write_text(config)
    model = export_fp32(run, tmp_path / "model.onnx")
    shutil.rmtree(data)
    result = cli("eval", model)
    assert_one_error(result, "its metadata names the data", str(data), "does not exist")
    assert f"edgedml eval {model} --data PATH" in result.hint_lines[0]
    again = cli("eval", model, "--data", trained.data)
    assert again.exit_code == 0 and f"of {trained.data}, split as model.onnx's run" in again.output


# ---- output paths -----------------------------------------------------------------------------------


def test_output_paths_that_cannot_be_written_are_refused_before_any_work(cli, trained, tmp_path, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (("train", "--data", trained.data, "--out", a_file, *TINY_OPTIONS), f"--out {a_file} is a file"),
        (("export", trained.run, "--out", a_file / "m.onnx"), f"{a_file} is a file, so nothing can be written"),
        (("profile", "--data", trained.data, "--out", a_file), f"--out {a_file} is a file"),
        (("quickstart", "--out", a_file / "q"), f"{a_file} is a file"),
    ]
    for arguments, expected in cases:
        assert_one_error(cli(*arguments), expected, code=2)
    assert a_file.read_text() == "x"
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    monkeypatch.setattr("edgedml.io.os.access", lambda path, mode: Path(path) != read_only)  # root writes anywhere
    model = export_fp32(trained.run, tmp_path / "model.onnx")
    result = cli("bench", model, "--iters", "1", "--batch", "1", "--out", read_only / "bench.json")
    assert_one_error(result, f"{read_only} is not writable", code=2)
    assert not list(read_only.iterdir())


def test_a_failed_engine_export_changes_no_earlier_export(cli, run_copy, monkeypatch):
    import sys

    assert cli("export", run_copy, "--half").exit_code == 0
    before = digests(run_copy)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt fails, after the ONNX export and its checks
    result = cli("export", run_copy, "--format", "engine", "--half", "--workspace", "256MiB")
    assert_one_error(result, "TensorRT is not installed", "nothing was written")
    assert digests(run_copy) == before  # export.json and the earlier model.onnx / model.fp16.onnx untouched
