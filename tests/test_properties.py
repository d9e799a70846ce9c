"""Property tests of the parsers: any input either parses to a valid value or raises the library's typed
``EdgedmlError`` (a ConfigError or DataError with a message), never another exception.

Covered: ``parse_bytes``, ``parse_batches``, ``TrainConfig.from_dict`` / ``from_sources`` with arbitrary
YAML-like values per key, CSV manifests written from generated rows (and raw bytes) read by ``load_source``,
and profile YAML files read by ``read_profile`` / ``load_profile``. Example counts are bounded so that the
file runs in well under a minute on two cores.
"""

from __future__ import annotations

import csv
import datetime
import math
import tempfile
from importlib.resources import files
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgedml.budget.profiles import PROFILE_KEYS, load_profile, read_profile
from edgedml.config import (
    AUTO,
    MAX_BATCH,
    MAX_DIM,
    MAX_INPUT_SIZE,
    MAX_SEED,
    MIN_INPUT_SIZE,
    TrainConfig,
)
from edgedml.data.sources import SPLITS, load_source
from edgedml.errors import ConfigError, DataError, EdgedmlError
from edgedml.export.bench import parse_batches
from edgedml.units import parse_bytes

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILE_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UNITS = ["", "b", "B", "kb", "KB", "mb", "MiB", "gib", "GiB", "tb", "TiB", "kib", "xb", "bytes"]
special_floats = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 1e308, 0.5, 1.5])
numbers = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    special_floats,
)


# ---- parse_bytes --------------------------------------------------------------------------------------

size_texts = st.one_of(
    st.text(max_size=30),
    st.builds(lambda n, u, pad: f"{pad}{n}{pad}{u}", numbers, st.sampled_from(UNITS), st.sampled_from(["", " "])),
    st.builds(lambda n, u: f"{n}{u}", st.text("0123456789.eE+-_ ", max_size=12), st.sampled_from(UNITS)),
)


@SETTINGS
@given(size_texts)
def test_parse_bytes_gives_a_whole_positive_size_or_a_config_error(text):
    try:
        size = parse_bytes(text, "--budget")
    except ConfigError as exc:
        assert exc.message.startswith("--budget ") and exc.hint
        return
    assert isinstance(size, int) and size >= 1


# ---- parse_batches ------------------------------------------------------------------------------------

batch_texts = st.one_of(
    st.text(max_size=30),
    st.lists(st.integers(min_value=-10, max_value=2 * MAX_BATCH), min_size=0, max_size=6).map(
        lambda xs: ",".join(map(str, xs))
    ),
    st.lists(st.sampled_from(["1", "8", " 32 ", "", "x", "1e3", "4096", "4097", "+2", "0"]), max_size=5).map(",".join),
)


@SETTINGS
@given(batch_texts)
def test_parse_batches_gives_distinct_sizes_in_range_or_a_config_error(text):
    try:
        batches = parse_batches(text)
    except ConfigError as exc:
        assert exc.message.startswith("--batch ")
        return
    assert batches and len(set(batches)) == len(batches)
    assert all(isinstance(b, int) and 1 <= b <= MAX_BATCH for b in batches)


# ---- TrainConfig ----------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.text(max_size=12),
    st.sampled_from(["auto", "64", " 8 ", "1e3", "1e-3", "nan", "inf", "-1", "0.5", "true", "2.5GiB", "0.5B"]),
    st.dates(min_value=datetime.date(1990, 1, 1), max_value=datetime.date(2100, 1, 1)),
)
yaml_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=5,
)
KEYS = TrainConfig.keys()
config_dicts = st.dictionaries(
    st.one_of(st.sampled_from(KEYS), st.sampled_from([k.replace("_", "-") for k in KEYS]), st.text(max_size=8)),
    yaml_values,
    max_size=6,
)


def assert_valid(config: TrainConfig) -> None:
    """What a config that passed validation guarantees to the code after it."""
    config.validate()  # idempotent
    assert isinstance(config.dim, int) and not isinstance(config.dim, bool) and 1 <= config.dim <= MAX_DIM
    assert isinstance(config.seed, int) and 0 <= config.seed <= MAX_SEED
    assert config.input_size is None or MIN_INPUT_SIZE <= config.input_size <= MAX_INPUT_SIZE
    for name in ("lr", "margin", "weight_decay", "memory_weight", "distill_weight", "distill_temperature"):
        value = getattr(config, name)
        assert isinstance(value, float) and math.isfinite(value) and value >= 0, name
    for name in ("axbn_q", "axbn_r", "axbn_p0", "feature_distill_weight"):
        assert math.isfinite(getattr(config, name)) and getattr(config, name) >= 0, name
    assert config.batch_size in (AUTO, None) or 1 <= config.batch_size <= MAX_BATCH
    assert config.memory_size == AUTO or config.memory_size > 0
    # the fine-tuning options: finite, non-negative, the frozen epochs within the run
    for name in ("warmup_epochs", "grad_clip"):
        value = getattr(config, name)
        assert isinstance(value, float) and math.isfinite(value) and value >= 0, name
    assert config.backbone_lr_mult is None or (math.isfinite(config.backbone_lr_mult) and config.backbone_lr_mult >= 0)
    assert config.warmup_steps is None or (isinstance(config.warmup_steps, int) and config.warmup_steps >= 0)
    assert isinstance(config.freeze_backbone_epochs, int) and 0 <= config.freeze_backbone_epochs <= config.epochs
    assert config.freeze_bn is None or isinstance(config.freeze_bn, bool)
    assert config.warmup_for(100) >= 0
    for name in ("hflip", "normalize", "amp", "feature_distill", "memory_batch_loss"):
        assert isinstance(getattr(config, name), bool), name
    assert all(isinstance(getattr(config, name), str) for name in ("data", "backbone", "loss", "aux_dims"))
    if config.budget is not None:
        assert parse_bytes(config.budget) >= 1


@SETTINGS
@given(config_dicts)
def test_train_config_from_overrides_is_valid_or_a_config_error(values):
    try:
        config = TrainConfig.from_sources(overrides=values)
    except ConfigError as exc:
        assert exc.message
        return
    assert_valid(config)


@SETTINGS
@given(config_dicts)
def test_train_config_from_dict_then_validate_is_valid_or_a_config_error(values):
    try:
        config = TrainConfig.from_dict(values, origin="cfg.yaml")
        config.validate()
    except ConfigError as exc:
        assert exc.message
        return
    assert_valid(config)


@FILE_SETTINGS
@given(st.one_of(config_dicts.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.text(max_size=80)))
def test_train_config_from_a_yaml_file_is_valid_or_a_config_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cfg.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            config = TrainConfig.from_sources(path)
        except ConfigError as exc:
            assert exc.message
            return
    assert_valid(config)


# ---- CSV manifests ----------------------------------------------------------------------------------------

cells = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        [
            *("imgs/a.png", "../x.png", "../../etc/shadow", "/abs/p.png", "~/p.png", "~nobody-here/p.png", "a\x00b"),
            *("path", "label", "split", "TRAIN", "val", "test", "bogus", "", " ", "\ufeffpath", "a,b", '"q"'),
        ]
    ),
)
rows = st.lists(st.lists(cells, min_size=0, max_size=4), min_size=0, max_size=6)


def check_source(source) -> None:
    for sample in source.samples:
        assert isinstance(sample.image, str) and sample.image and sample.label
        assert sample.split is None or sample.split in SPLITS


@FILE_SETTINGS
@given(rows, st.booleans())
def test_a_manifest_written_from_any_rows_loads_or_is_a_data_error(table, bom):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "set" / "m.csv"
        path.parent.mkdir()
        with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
            csv.writer(handle).writerows(table)
        try:
            source = load_source(str(path), min_classes=0)
        except DataError as exc:
            assert exc.message
            return
        check_source(source)
        for sample in source.samples:  # relative rows stayed inside the manifest's folder
            assert not sample.image.startswith("\ufeff")


@FILE_SETTINGS
@given(st.binary(max_size=200))
def test_a_manifest_of_any_bytes_loads_or_is_a_data_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.csv"
        path.write_bytes(data)
        try:
            source = load_source(str(path), min_classes=0)
        except DataError as exc:
            assert exc.message
            return
        check_source(source)


# ---- profile YAML -----------------------------------------------------------------------------------------

SHIPPED = yaml.safe_load((files("edgedml.profiles") / "orin-nano-8gb.yaml").read_text(encoding="utf-8"))
profile_changes = st.dictionaries(
    st.one_of(st.sampled_from(list(PROFILE_KEYS)), st.text(max_size=6)),
    st.one_of(yaml_values, numbers),
    max_size=3,
)


def write_yaml(path: Path, values: dict) -> None:
    path.write_text(yaml.safe_dump(values, allow_unicode=True, sort_keys=False), encoding="utf-8")


@FILE_SETTINGS
@given(profile_changes, st.lists(st.sampled_from(list(PROFILE_KEYS)), max_size=2))
def test_a_profile_file_with_any_values_loads_or_is_a_config_error(changes, removed):
    values = {key: value for key, value in {**SHIPPED, **changes}.items() if key not in removed}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "board.yaml"
        write_yaml(path, values)
        try:
            profile = read_profile(str(path))
            memory = load_profile(str(path))
        except ConfigError as exc:
            assert exc.message.startswith(str(path)) or str(path) in exc.message
            return
    assert 0 < profile["memory_gib"] <= 4096 and math.isfinite(profile["memory_gib"])
    assert 0 < memory.free_bytes <= memory.total_bytes and 0 <= profile["safety_margin"] < 1


@FILE_SETTINGS
@given(st.one_of(st.binary(max_size=200), st.text(max_size=120).map(lambda t: t.encode("utf-8"))))
def test_a_profile_file_of_any_bytes_loads_or_is_a_config_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "board.yaml"
        path.write_bytes(data)
        try:
            load_profile(str(path))
        except EdgedmlError as exc:
            assert isinstance(exc, ConfigError) and str(path) in exc.message
