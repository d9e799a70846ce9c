"""Training configuration: YAML keys equal the options, unknown keys get a suggestion, values are checked."""

from __future__ import annotations

import pytest
import yaml

from edgedml.config import TrainConfig
from edgedml.errors import ConfigError


def test_precedence_defaults_then_file_then_options(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("batch-size: 32\nepochs: 3\nlr: 0.01\n")
    config = TrainConfig.from_sources(path, {"epochs": 7, "lr": None})
    assert (config.batch_size, config.epochs, config.lr, config.dim) == (32, 7, 0.01, TrainConfig().dim)


def test_round_trip_through_yaml(tmp_path):
    config = TrainConfig.from_sources(overrides={"dim": 16, "loss": "triplet", "normalize": False})
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert yaml.safe_load(path.read_text())["dim"] == 16
    assert TrainConfig.from_sources(path) == config


def test_unknown_key_suggests_the_close_one(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("batchsize: 32\n")
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_sources(path)
    assert "batchsize" in info.value.message and str(path) in info.value.message
    assert info.value.hint == "did you mean 'batch_size'?"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"mining": "hardest"}, "--mining"),
        ({"batch_size": 30, "samples_per_class": 4}, "multiple"),
        ({"samples_per_class": 1}, "at least 2"),
        ({"batch_size": 4, "samples_per_class": 4}, "at least 2 classes"),
        ({"train_classes": 1.0}, "--train-classes"),
        ({"lr": 0}, "--lr"),
        ({"optimizer": "lamb"}, "--optimizer"),
    ],
)
def test_bad_values_name_the_option(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig.from_sources(overrides=overrides)


def test_yaml_types_are_checked(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="epochs must be int"):
        TrainConfig.from_sources(path)
    path.write_text("normalize: 3\n")
    with pytest.raises(ConfigError, match="normalize must be true or false"):
        TrainConfig.from_sources(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_sources(path)
