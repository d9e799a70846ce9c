"""`edgedml train` through the CLI: what a run directory holds, configuration precedence, errors."""

from __future__ import annotations

import json
import math
import os

import pytest
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from edgedml.config import TrainConfig

SUMMARY_KEYS = {"recall_at_1", "recall_at_k", "map_at_r", "nmi", "silhouette", "epochs", "wall_s", "train_images_per_s"}


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def checkpoint_metadata(path):
    with safe_open(str(path), framework="pt") as handle:
        return {key: json.loads(value) for key, value in handle.metadata().items()}


def assert_one_line_error(result, *fragments):
    """Exactly one `error:` line, holding every fragment; no traceback anywhere."""
    assert len(result.error_lines) == 1, str(result)
    for fragment in fragments:
        assert fragment in result.error_lines[0], str(result)
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)


# ---- a successful run -------------------------------------------------------------------


def test_train_writes_a_complete_run_directory(trained, tiny_steps_per_epoch):
    run = trained.run
    for name in ("config.yaml", "metrics.jsonl", "best.safetensors", "last.safetensors", "summary.json", "train.log"):
        assert (run / name).is_file(), name

    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert list(config) == TrainConfig.keys()  # every key, in declaration order
    assert config["data"] == str(trained.data)
    assert config["input_size"] == 16  # resolved, not None
    assert (config["backbone"], config["dim"], config["epochs"], config["device"]) == ("tiny", 16, 2, "cpu")
    assert (config["batch_size"], config["samples_per_class"]) == (8, 4)
    assert (config["loss"], config["lr"], config["seed"]) == ("shadow", 1e-3, 0)  # defaults written out
    assert TrainConfig.from_sources(run / "config.yaml").to_dict() == config  # re-loadable as it is

    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert [m["global_step"] for m in metrics] == [tiny_steps_per_epoch, 2 * tiny_steps_per_epoch]
    for record in metrics:
        assert 0.0 <= record["val_recall_at_1"] <= 1.0
        assert 0.0 <= record["val_map_at_r"] <= 1.0
        assert math.isfinite(record["loss"]) and record["loss"] >= 0.0
    assert metrics[1]["lr"] < metrics[0]["lr"]  # cosine decay

    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert set(summary) >= SUMMARY_KEYS
    assert set(summary["recall_at_k"]) == {"1", "2", "4", "8"}
    assert summary["recall_at_1"] == summary["recall_at_k"]["1"]
    recalls = [summary["recall_at_k"][k] for k in ("1", "2", "4", "8")]
    assert recalls == sorted(recalls) and all(0.0 <= r <= 1.0 for r in recalls)
    assert 0.0 <= summary["map_at_r"] <= 1.0 and 0.0 <= summary["nmi"] <= 1.0 and -1.0 <= summary["silhouette"] <= 1.0
    assert summary["epochs"] == 2
    assert summary["wall_s"] > 0 and summary["train_images_per_s"] > 0
    assert summary["train_classes"] == ["class0", "class1", "class2"]
    assert summary["test_classes"] == ["class3", "class4", "class5"]  # never seen in training
    assert summary["images"] == {"train": 24, "val": 6, "test": 30}
    assert summary["best_epoch"] in (1, 2)
    assert summary["best_epoch"] == metrics[-1]["best_epoch"]

    best, last = load_file(str(run / "best.safetensors")), load_file(str(run / "last.safetensors"))
    assert best and all(key.startswith("model.") for key in best)
    assert {key for key in last if key.startswith("model.")} == set(best)
    assert any(key.startswith("optimizer.") for key in last) and "rng.torch" in last
    progress = checkpoint_metadata(run / "last.safetensors")["progress"]
    assert (progress["epoch"], progress["step"], progress["global_step"]) == (2, 0, 2 * tiny_steps_per_epoch)
    assert checkpoint_metadata(run / "best.safetensors")["epoch"] == summary["best_epoch"]

    assert "Recall@1" in trained.output and "MAP@R" in trained.output
    assert f"next: edgedml eval {run}" in trained.output


def test_unreadable_image_is_skipped_and_logged(cli, image_folder, tiny_train_options, tmp_path):
    broken = image_folder / "class0" / "broken.png"
    broken.write_bytes(b"this is not a png")
    run = tmp_path / "run"
    result = cli("train", "--data", image_folder, "--out", run, *tiny_train_options, "--epochs", "1", "--json")
    assert result.exit_code == 0, str(result)
    assert "broken.png" in (run / "train.log").read_text(encoding="utf-8")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["skipped_images"] == 1


def test_json_prints_the_summary(cli, image_folder, tiny_train_options, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "--data", image_folder, "--out", run, *tiny_train_options, "--epochs", "1", "--json")
    assert result.exit_code == 0, str(result)
    printed = json.loads(result.stdout)  # stdout holds the JSON alone; progress goes to stderr
    assert set(printed) >= SUMMARY_KEYS
    assert printed == json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert printed["epochs"] == 1


# ---- configuration ----------------------------------------------------------------------


def test_config_file_keys_are_the_options_and_the_command_line_wins(cli, image_folder, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": str(image_folder),
                "backbone": "tiny",
                "input_size": 16,
                "dim": 16,
                "batch_size": 8,
                "samples-per-class": 4,  # the option's spelling works too
                "epochs": 5,
                "device": "cpu",
                "lr": 0.002,
                "seed": 7,
            }
        ),
        encoding="utf-8",
    )
    run = tmp_path / "run"
    result = cli("train", "--config", cfg, "--out", run, "--epochs", "1", "--dim", "8")
    assert result.exit_code == 0, str(result)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["epochs"] == 1 and config["dim"] == 8  # command line over file
    assert config["lr"] == 0.002 and config["seed"] == 7 and config["samples_per_class"] == 4  # file over defaults
    assert config["optimizer"] == "adamw"  # defaults under both
    assert len(read_metrics(run)) == 1
    assert load_file(str(run / "best.safetensors"))["model.head.weight"].shape[0] == 8


def test_unknown_config_key_suggests_the_right_one(cli, image_folder, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {image_folder}\nbatchsize: 8\n", encoding="utf-8")
    run = tmp_path / "run"
    result = cli("train", "--config", cfg, "--out", run, "--device", "cpu")
    assert result.exit_code == 2, str(result)
    assert_one_line_error(result, "batchsize")
    assert "did you mean 'batch_size'" in result.output
    assert not run.exists()


def test_missing_config_file_is_one_error_line(cli, tmp_path):
    result = cli("train", "--config", tmp_path / "nope.yaml", "--out", tmp_path / "run")
    assert result.exit_code == 2, str(result)
    assert_one_line_error(result, "nope.yaml", "does not exist")


def test_bad_choice_names_the_option(cli, image_folder, tiny_train_options, tmp_path):
    result = cli("train", "--data", image_folder, "--out", tmp_path / "run", *tiny_train_options, "--mining", "hardest")
    assert result.exit_code == 2, str(result)
    assert_one_line_error(result, "--mining", "hardest", "all, hard, semihard")
    assert "did you mean 'hard'" in result.output
    assert not (tmp_path / "run").exists()


def test_batch_size_must_be_a_multiple_of_samples_per_class(
    cli, image_folder, tiny_train_options, tmp_path, set_option
):
    options = set_option(tiny_train_options, "--batch-size", "10")
    result = cli("train", "--data", image_folder, "--out", tmp_path / "run", *options)
    assert result.exit_code == 2, str(result)
    assert_one_line_error(result, "--batch-size 10", "--samples-per-class 4")
    assert result.hint_lines == ["hint: use --batch-size 8"]


# ---- existing runs, --overwrite, --resume ----------------------------------------------------


def test_existing_run_dir_needs_overwrite(cli, run_copy, trained, tiny_train_options, set_option):
    summary_before = (run_copy / "summary.json").read_bytes()
    result = cli("train", "--data", trained.data, "--out", run_copy, *tiny_train_options)
    assert result.exit_code != 0, str(result)
    assert_one_line_error(result, str(run_copy), "already holds a run")
    assert f"--resume {run_copy}" in result.output and "--overwrite" in result.output
    assert (run_copy / "summary.json").read_bytes() == summary_before  # untouched

    options = set_option(tiny_train_options, "--epochs", "1")
    result = cli("train", "--data", trained.data, "--out", run_copy, *options, "--overwrite", "--seed", "3")
    assert result.exit_code == 0, str(result)
    assert len(read_metrics(run_copy)) == 1  # the old run's two lines are gone
    assert yaml.safe_load((run_copy / "config.yaml").read_text(encoding="utf-8"))["seed"] == 3
    assert json.loads((run_copy / "summary.json").read_text(encoding="utf-8"))["epochs"] == 1


def test_resume_takes_no_option_but_epochs(cli, run_copy):
    last_before = (run_copy / "last.safetensors").read_bytes()
    result = cli("train", "--resume", run_copy, "--lr", "0.1")
    assert result.exit_code == 2, str(result)
    assert_one_line_error(result, "--lr", str(run_copy))
    assert "only --epochs" in result.output
    assert (run_copy / "last.safetensors").read_bytes() == last_before

    result = cli("train", "--resume", run_copy, "--out", run_copy / "elsewhere")
    assert result.exit_code == 2, str(result)
    assert_one_line_error(result, "--out")


def test_resume_extends_a_finished_run(cli, run_copy, tiny_steps_per_epoch):
    metrics_before = (run_copy / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    result = cli("train", "--resume", run_copy, "--epochs", "3", "--json")
    assert result.exit_code == 0, str(result)
    lines = (run_copy / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert lines[:2] == metrics_before  # the first two epochs are kept, not retrained
    third = json.loads(lines[2])
    assert third["epoch"] == 3 and third["global_step"] == 3 * tiny_steps_per_epoch
    summary = json.loads((run_copy / "summary.json").read_text(encoding="utf-8"))
    assert summary["epochs"] == 3 and json.loads(result.stdout)["epochs"] == 3
    progress = checkpoint_metadata(run_copy / "last.safetensors")["progress"]
    assert (progress["epoch"], progress["step"]) == (3, 0)


def test_resume_of_a_missing_run_fails_cleanly(cli, tmp_path):
    result = cli("train", "--resume", tmp_path / "nothing")
    assert result.exit_code != 0, str(result)
    assert_one_line_error(result, str(tmp_path / "nothing"), "not a run directory")


# ---- other errors -----------------------------------------------------------------------


def test_missing_out_is_a_usage_error_with_a_hint(cli, image_folder, tiny_train_options):
    result = cli("train", "--data", image_folder, *tiny_train_options)
    assert result.exit_code == 2, str(result)
    assert_one_line_error(result, "--out")
    assert len(result.hint_lines) == 1


def test_missing_data_path_is_one_clean_error_line(cli, tiny_train_options, tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    run = tmp_path / "run"
    result = cli("train", "--data", missing, "--out", run, *tiny_train_options)
    assert result.exit_code not in (0, None), str(result)
    assert_one_line_error(result, str(missing), "no such file or folder")
    assert "digits" in result.hint_lines[0]  # the hint names the built-in source
    assert not run.exists()


def test_amp_needs_cuda(cli, image_folder, tiny_train_options, tmp_path):
    result = cli("train", "--data", image_folder, "--out", tmp_path / "run", *tiny_train_options, "--amp")
    assert result.exit_code != 0, str(result)
    assert_one_line_error(result, "--amp", "needs CUDA")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("loss", ["triplet", "contrastive", "multisimilarity"])
def test_baseline_losses_train(cli, image_folder, tiny_train_options, tmp_path, set_option, loss):
    run = tmp_path / loss
    options = set_option(tiny_train_options, "--epochs", "1")
    result = cli("train", "--data", image_folder, "--out", run, *options, "--loss", loss, "--json")
    assert result.exit_code == 0, str(result)
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["loss"] == loss
    summary = json.loads(result.stdout)
    assert summary["epochs"] == 1 and 0.0 <= summary["recall_at_1"] <= 1.0
    (record,) = read_metrics(run)
    assert math.isfinite(record["loss"])


def test_unknown_loss_lists_the_known_ones(cli, image_folder, tiny_train_options, tmp_path):
    result = cli("train", "--data", image_folder, "--out", tmp_path / "run", *tiny_train_options, "--loss", "nope")
    assert result.exit_code != 0, str(result)
    assert_one_line_error(result, "nope")
    assert "contrastive, multisimilarity, shadow, triplet" in result.hint_lines[0]


# ---- regressions: bugs found and fixed while writing these tests ----


def test_error_message_shows_brackets_in_paths_verbatim(cli, tiny_train_options, tmp_path):
    missing = tmp_path / "[bold]photos"
    result = cli("train", "--data", missing, "--out", tmp_path / "run", *tiny_train_options)
    assert result.exit_code == 1, str(result)
    assert_one_line_error(result, str(missing))


def test_error_message_with_a_closing_tag_in_a_path_is_no_traceback(cli, tiny_train_options, tmp_path):
    missing = tmp_path / "[/x]"
    result = cli("train", "--data", missing, "--out", tmp_path / "run", *tiny_train_options)
    assert result.exit_code == 1, str(result)
    assert_one_line_error(result, str(missing))


def test_long_error_stays_one_line_at_80_columns(cli, tiny_train_options, tmp_path):
    missing = tmp_path / ("deep" * 20) / "folder"
    result = cli("train", "--data", missing, "--out", tmp_path / "run", *tiny_train_options, env={"COLUMNS": "80"})
    assert result.exit_code == 1, str(result)
    assert_one_line_error(result, str(missing), "no such file or folder")


def test_metrics_jsonl_is_strict_json_with_singleton_validation_classes(
    cli, tmp_path, tiny_train_options, make_image_folder
):
    data = make_image_folder(tmp_path / "images", per_class=8)  # 20% of 8 -> 1 validation image per class
    run = tmp_path / "run"
    result = cli("train", "--data", data, "--out", run, *tiny_train_options)
    assert result.exit_code == 0, str(result)

    def reject(constant):
        raise ValueError(f"not JSON: {constant}")

    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line, parse_constant=reject)
        assert all(math.isfinite(record[key]) for key in ("val_recall_at_1", "val_map_at_r") if key in record)


def test_run_files_respect_the_umask(trained):
    previous = os.umask(0)
    os.umask(previous)
    expected = 0o666 & ~previous
    modes = {p.name: p.stat().st_mode & 0o777 for p in trained.run.iterdir()}
    assert modes == {name: expected for name in modes}, modes


@pytest.mark.parametrize(
    ("loss", "memory"), [("shadow", "axbn"), ("triplet", "xbm"), ("contrastive", "xbn"), ("multisimilarity", "axbn")]
)
def test_every_loss_trains_with_a_cross_batch_memory(
    cli, shared_image_folder, tiny_train_options, tmp_path, loss, memory
):
    run = tmp_path / "run"
    result = cli(
        "train",
        "--data",
        shared_image_folder,
        "--out",
        run,
        *tiny_train_options,
        "--loss",
        loss,
        "--memory",
        memory,
        "--memory-size",
        "0.5",
        "--memory-warmup",
        "1",
        "--json",
    )
    assert result.exit_code == 0, str(result)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["memory"], config["mining"]) == (memory, "hard")  # batch-hard is the default against a memory
    tensors = load_file(str(run / "last.safetensors"))
    assert int(tensors["loss.memory.filled"]) > 0
    assert int(tensors["loss.iteration"]) == 2 * 3  # every step went through the memory wrapper


def test_memory_warmup_longer_than_the_run_is_said_loudly(cli, shared_image_folder, tiny_train_options, tmp_path):
    result = cli(
        "train", "--data", shared_image_folder, "--out", tmp_path / "run", *tiny_train_options, "--memory", "xbm"
    )
    assert result.exit_code == 0, str(result)
    assert "the memory will never be used" in result.output
