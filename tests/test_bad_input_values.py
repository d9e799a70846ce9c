"""Hostile option values: each is refused up front by the library's checks, with the allowed range in the
message and a hint that works, instead of passing validation and crashing later (or hanging).

Through the CLI every case exits non-zero with exactly one ``error:`` line naming the option, one ``hint:``
line, no traceback, and leaves the files it was given as they were.
"""

from __future__ import annotations

import math
import re
from importlib.resources import files

import pytest
import torch
import yaml
from helpers import assert_one_error, digests, sha256

from edgedml.budget.device import GIB, DeviceMemory
from edgedml.budget.planner import make_budget
from edgedml.budget.profiles import load_profile
from edgedml.config import MAX_SEED, TrainConfig
from edgedml.errors import ConfigError
from edgedml.export.bench import BenchPlan, check_threads, max_threads, parse_batches
from edgedml.export.formats import MAX_OPSET, MIN_OPSET, check_export_options, check_opset
from edgedml.units import parse_bytes


def hint_override(hint: str) -> dict[str, str]:
    """The option and value a ``for example --name value`` hint suggests, as a config override."""
    found = re.search(r"for example (--[a-z0-9-]+) (\S+)", hint)
    assert found, hint
    return {found.group(1)[2:].replace("-", "_"): found.group(2)}


# ---- edgedml train: every numeric option is range-checked before any work ---------------------------

BAD_TRAIN_VALUES = [
    ("--lr", "nan", "finite number > 0"),
    ("--lr", "inf", "finite number > 0"),
    ("--lr", "-0.1", "finite number > 0"),
    ("--margin", "-0.5", "finite number >= 0"),
    ("--margin", "nan", "finite number >= 0"),
    ("--weight-decay", "-1", "finite number >= 0"),
    ("--weight-decay", "nan", "finite number >= 0"),
    ("--memory-weight", "nan", "finite number >= 0"),
    ("--memory-weight", "-2", "finite number >= 0"),
    ("--distill-weight", "nan", "finite number >= 0"),
    ("--distill-weight", "inf", "finite number >= 0"),
    ("--distill-temperature", "0", "finite number > 0"),
    ("--distill-temperature", "nan", "finite number > 0"),
    ("--distill-temperature", "inf", "finite number > 0"),
    ("--feature-distill-weight", "nan", "finite number >= 0"),
    ("--axbn-q", "nan", "finite number >= 0"),
    ("--axbn-r", "-1", "finite number >= 0"),
    ("--axbn-p0", "inf", "finite number >= 0"),
    ("--axbn-gain-interval", "0", "1..1000000000"),
    ("--memory-warmup", "-1", "0..1000000000"),
    ("--feature-distill-delay", str(10**30), "0..1000000000"),
    ("--train-classes", "nan", "(0, 1)"),
    ("--val-fraction", "nan", "[0, 1)"),
    ("--crop-scale", "nan", "(0, 1]"),
    ("--seed", "-1", "0..4294967295"),
    ("--seed", str(2**32), "0..4294967295"),
    ("--input-size", "100000", "8..1024 pixels"),
    ("--input-size", "4", "8..1024 pixels"),
    ("--dim", "0", "1..8192"),
    ("--dim", "1000000", "1..8192"),
    ("--epochs", "0", "1..1000000"),
    ("--workers", "100000", "0..64"),
    ("--batch-size", "100000", "1..4096"),
    ("--samples-per-class", "100000", "2..2048"),
    ("--memory-size", "nan", "a fraction in (0, 1]"),
    ("--memory-size", "inf", "a fraction in (0, 1]"),
    ("--memory-size", "1e12", "at most 16777216"),
    ("--aux-dims", "512,99999", "1..8192"),
    ("--budget", "1e999GiB", "not a finite size"),
    ("--budget", "0.5B", "less than one byte"),
    ("--budget", "nan", "not a size"),
]


@pytest.mark.parametrize(("option", "value", "allowed"), BAD_TRAIN_VALUES)
def test_train_refuses_a_value_out_of_range_before_any_work(cli, tmp_path, image_folder, option, value, allowed):
    before = digests(image_folder)
    run = tmp_path / "run"
    options = ["--backbone", "tiny", "--device", "cpu", "--batch-size", "8", "--samples-per-class", "4"]
    if option in ("--batch-size", "--samples-per-class"):
        options = ["--backbone", "tiny", "--device", "cpu"]
    result = cli("train", "--data", image_folder, "--out", run, *options, option, value)
    assert_one_error(result, option, allowed)
    assert result.exit_code == 2, str(result)
    assert not run.exists()  # refused before the run directory was made
    assert digests(image_folder) == before


@pytest.mark.parametrize(("option", "value", "allowed"), [case for case in BAD_TRAIN_VALUES if case[0] != "--budget"])
def test_the_hint_of_a_range_error_is_a_value_that_validates(option, value, allowed):
    key = option[2:].replace("-", "_")
    base = {"batch_size": 8, "samples_per_class": 4}
    with pytest.raises(ConfigError) as raised:
        TrainConfig.from_sources(overrides={**base, key: value})
    hint = raised.value.hint
    assert hint, raised.value.message
    if "for example" in hint:
        TrainConfig.from_sources(overrides={**base, **hint_override(hint)})  # the hint's value passes
    else:  # --input-size and --crop-scale: leaving them out uses the data source's default
        assert "leave" in hint or "for example" in hint, hint
        TrainConfig.from_sources(overrides=base)


def test_the_largest_seed_is_one_scikit_learn_takes_and_one_more_is_refused():
    from edgedml.metrics import retrieval_metrics

    config = TrainConfig.from_sources(overrides={"seed": MAX_SEED})
    assert config.seed == 2**32 - 1
    embeddings = torch.nn.functional.normalize(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.arange(12) // 3
    metrics = retrieval_metrics(embeddings, labels, seed=config.seed)  # KMeans for the NMI: the epoch's end
    assert 0.0 <= metrics.nmi <= 1.0
    with pytest.raises(ConfigError, match=re.escape("--seed must lie in 0..4294967295, got 4294967296")):
        TrainConfig.from_sources(overrides={"seed": MAX_SEED + 1})


def test_library_callers_get_the_same_checks_as_the_cli():
    config = TrainConfig(lr=math.nan)  # built directly, not through from_sources
    with pytest.raises(ConfigError, match="--lr must be a finite number > 0"):
        config.validate()
    with pytest.raises(ConfigError, match="dim must be int"):
        TrainConfig(dim=True).validate()


# ---- YAML values: no bool for a number, no float-looking text for an integer ------------------------


@pytest.mark.parametrize(
    ("text", "fragment", "fix"),
    [
        ("dim: true\n", "dim must be int", "dim: 64"),
        ("epochs: 1e3\n", "epochs must be int", "epochs: 1000"),  # YAML 1.1 reads 1e3 as a string
        ("lr: yes\n", "lr must be float", "lr: 0.001"),
        ("hflip: 1\n", "hflip must be true or false", "hflip: true"),
        ("margin: .nan\n", "--margin must be a finite number >= 0", "margin: 0.2"),
        ("lr: .inf\n", "--lr must be a finite number > 0", "lr: 0.001"),
        ("dim: null\n", "dim must be int, got null", "dim: 64"),
        ("backbone: [tiny]\n", "backbone must be str", 'backbone: "tiny"'),
        ("seed: 2001-13-01\n", "a value YAML cannot read", "seed: 0"),
    ],
)
def test_a_config_file_value_of_the_wrong_kind_is_one_error_and_the_fix_works(
    cli, tmp_path, image_folder, text, fragment, fix
):
    config = tmp_path / "cfg.yaml"
    config.write_text(text, encoding="utf-8")
    before = sha256(config)
    result = cli("train", "--config", config, "--data", image_folder, "--out", tmp_path / "run", "--device", "cpu")
    assert_one_error(result, fragment)
    if "finite" not in fragment:  # range errors name the option; type errors name the file and the key
        assert str(config) in result.error_lines[0], str(result)
    assert sha256(config) == before and not (tmp_path / "run").exists()
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(fix + "\n", encoding="utf-8")
    TrainConfig.from_sources(fixed)  # the corrected line loads


def test_numeric_text_is_coerced_but_bools_are_not_numbers(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text('dim: "64"\nlr: 1e-3\nepochs: 3.0\nmemory_size: "0.5"\nmemory: xbm\n', encoding="utf-8")
    config = TrainConfig.from_sources(path)
    assert (config.dim, config.lr, config.epochs, config.memory_size) == (64, 0.001, 3, 0.5)
    for key in ("dim", "lr", "memory_size", "batch_size", "seed"):
        with pytest.raises(ConfigError, match=f"{key} must be"):
            TrainConfig.from_sources(overrides={key: True})


# ---- byte sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1e999GiB", "not a finite size"),
        ("1e308TiB", "not a finite size"),  # finite as a number, infinite in bytes
        ("0.5B", "less than one byte"),
        ("1e-12GiB", "less than one byte"),
        ("nan", "not a size"),
        ("NaNGiB", "not a size"),
        ("inf", "not a size"),
        ("-1GiB", "not a size"),
    ],
)
def test_parse_bytes_refuses_infinite_nan_and_sub_byte_sizes(text, fragment):
    with pytest.raises(ConfigError) as raised:
        parse_bytes(text, "--budget")
    assert raised.value.message.startswith(f"--budget {text!r}") and fragment in raised.value.message
    assert parse_bytes(raised.value.hint.split("e.g. ")[1].split(",")[0]) == int(2.5 * GIB)  # the hint parses


# ---- a budget larger than the device ----------------------------------------------------------------


def test_a_budget_above_the_profile_total_is_refused(cli, tmp_path, image_folder, tiny_train_options):
    run = tmp_path / "run"
    args = ["train", "--data", image_folder, "--out", run, *tiny_train_options, "--profile", "orin-nano-8gb"]
    result = cli(*args, "--budget", "1e30TiB")
    assert_one_error(result, "--budget", "8.00 GiB total of NVIDIA Jetson Orin Nano 8GB", "profile:orin-nano-8gb")
    assert "at most 8.00 GiB" in result.hint_lines[0]
    assert not (run / "config.yaml").exists()
    device = load_profile("orin-nano-8gb")
    assert make_budget(device, parse_bytes("8GiB")).available == 8 * GIB  # the hint's limit itself is taken


def test_make_budget_checks_a_library_callers_budget_against_the_device():
    device = DeviceMemory(source="test", name="gpu", total_bytes=8 << 30, free_bytes=6 << 30, used_bytes=2 << 30)
    with pytest.raises(ConfigError, match=r"--budget 16 GiB is more than the 8.00 GiB total of gpu \(test\)"):
        make_budget(device, 16 << 30)
    with pytest.raises(ConfigError, match="less than one byte"):
        make_budget(device, 0)
    assert make_budget(device, 7 << 30).available == 7 << 30  # above what is free, below the total: allowed


# ---- profile values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (".inf", "memory_gib must be a finite number"),
        (".nan", "memory_gib must be a finite number"),
        ("-8.0", "memory_gib must be > 0"),
        ("1000000.0", "memory_gib must be <= 4096"),
        ("1.0e6", "memory_gib must be float"),  # YAML 1.1 reads 1.0e6 as text
    ],
)
def test_a_profile_with_infinite_nan_or_negative_memory_is_refused_naming_the_file(cli, tmp_path, value, fragment):
    text = (files("edgedml.profiles") / "orin-nano-8gb.yaml").read_text(encoding="utf-8")
    path = tmp_path / "board.yaml"
    path.write_text(re.sub(r"^memory_gib: .*$", f"memory_gib: {value}", text, flags=re.M), encoding="utf-8")
    before = sha256(path)
    result = cli("profiles", "show", path)
    assert_one_error(result, str(path), fragment)
    assert "edgedml profiles show orin-nano-8gb" in result.hint_lines[0]
    assert cli("profiles", "show", "orin-nano-8gb").exit_code == 0  # the hint's command works
    assert sha256(path) == before
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_profile(str(path))


# ---- edgedml bench ----------------------------------------------------------------------------------


def test_bench_refuses_100000_threads_instead_of_hanging(cli, trained):
    before = digests(trained.run)
    result = cli("bench", trained.run, "--threads", "100000", "--iters", "1", "--batch", "1")
    assert_one_error(result, "--threads 100000", f"1..{max_threads()}")
    assert digests(trained.run) == before
    suggested = int(re.search(r"--threads (\d+)", result.hint_lines[0]).group(1))
    check_threads(suggested)  # the hint's count is accepted


def test_thread_and_time_bounds_in_the_library():
    for bad in (0, -1, max_threads() + 1, 10**5, True):
        with pytest.raises(ConfigError, match="--threads"):
            check_threads(bad)
    check_threads(None)
    check_threads(1)
    check_threads(max_threads())
    for seconds in (math.inf, math.nan, 0.0, -1.0, 1e9):
        with pytest.raises(ConfigError, match="--seconds"):
            BenchPlan(seconds=seconds)
    assert BenchPlan(seconds=2.0).budget_s == 2.0


def test_bench_seconds_inf_is_refused_through_the_cli(cli, trained):
    result = cli("bench", trained.run, "--seconds", "inf", "--batch", "1")
    assert_one_error(result, "--seconds inf", "(0, 3600]")


@pytest.mark.parametrize("text", ["", "0", "1,,8", "8,8", "4097", "1e3", "-1", "x"])
def test_parse_batches_refuses_with_the_range(text):
    with pytest.raises(ConfigError, match=re.escape(f"--batch {text!r}")):
        parse_batches(text)


# ---- edgedml export --opset -------------------------------------------------------------------------


@pytest.mark.parametrize("opset", ["1", "17", "24", "100"])
def test_export_refuses_an_opset_the_exporter_does_not_write(cli, trained, tmp_path, opset):
    before = digests(trained.run)
    out = tmp_path / "model.onnx"
    result = cli("export", trained.run, "--opset", opset, "--out", out)
    assert_one_error(result, f"--opset {opset}", f"{MIN_OPSET}..{MAX_OPSET}")
    assert result.exit_code == 2 and not out.exists() and not (tmp_path / "export.json").exists()
    assert digests(trained.run) == before


def test_opset_range_in_the_library():
    for bad in (0, 1, 17, 24, 100, True, "18"):
        with pytest.raises(ConfigError, match="--opset"):
            check_opset(bad)
    for good in (None, MIN_OPSET, 20, MAX_OPSET):
        check_opset(good)
    with pytest.raises(ConfigError, match="--opset 7"):
        check_export_options("engine", {"opset": 7})


def test_export_at_the_hints_opset_writes_that_opset(cli, trained, tmp_path):
    import onnx

    out = tmp_path / "model.onnx"
    result = cli("export", trained.run, "--opset", str(MIN_OPSET), "--out", out)
    assert result.exit_code == 0, str(result)
    versions = [entry.version for entry in onnx.load(str(out)).opset_import if entry.domain in ("", "ai.onnx")]
    assert versions == [MIN_OPSET]
    assert yaml.safe_load((tmp_path / "export.json").read_text())["opset"] == MIN_OPSET
