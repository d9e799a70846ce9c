"""Shared fixtures: a tiny ImageFolder data set, CLI options that train in about a second on CPU,
a CLI runner with a wide, colourless console, and one trained run shared by the read-only tests."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Two OpenMP threads on a 2-core machine that is also busy elsewhere make every conv 10-50x slower
# (threads spin at barriers); one thread keeps a tiny training run at about a second.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

NUM_CLASSES = 6
IMAGES_PER_CLASS = 10  # val_fraction 0.2 -> 2 validation images per training class (a query needs a same-class neighbour)
IMAGE_SIDE = 16


def write_image_folder(
    root: Path, classes: int = NUM_CLASSES, per_class: int = IMAGES_PER_CLASS, side: int = IMAGE_SIDE, seed: int = 0
) -> Path:
    """root/class<c>/<i>.png: stripes whose orientation and period depend on the class, with a random
    phase, a random tint and pixel noise per image, so a net can learn something but not trivially."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        period = 2 + c // 2
        axis = xx if c % 2 == 0 else yy
        for i in range(per_class):
            phase = rng.integers(0, period)
            stripes = ((axis + phase) // max(period // 2, 1) % 2).astype(np.float64)
            tint = rng.uniform(0.4, 1.0, size=3)
            image = 40 + 180 * stripes[..., None] * tint + rng.normal(0, 30, (side, side, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def shared_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("shared") / "images")


TINY_TRAIN_OPTIONS = [
    "--backbone", "tiny",
    "--input-size", "16",
    "--dim", "16",
    "--batch-size", "8",
    "--samples-per-class", "4",
    "--epochs", "2",
    "--device", "cpu",
]


@pytest.fixture
def tiny_train_options() -> list[str]:
    """CLI options that make `edgedml train` take about a second on CPU (2 epochs x 3 steps)."""
    return list(TINY_TRAIN_OPTIONS)


def with_option(options: Sequence[str], name: str, value: str) -> list[str]:
    """``options`` with ``name``'s value replaced (or the option appended)."""
    result = list(options)
    if name in result:
        result[result.index(name) + 1] = value
    else:
        result += [name, value]
    return result


class Cli:
    """Invokes the edgedml Typer app in-process with a wide console, so one-line messages stay one line."""

    env = {"COLUMNS": "500", "LINES": "50", "FORCE_COLOR": None, "NO_COLOR": "1", "TTY_COMPATIBLE": None}

    def __init__(self) -> None:
        from typer.testing import CliRunner

        from edgedml.cli.main import app

        self.app = app
        self.runner = CliRunner()

    def __call__(self, *args: str | os.PathLike, env: dict[str, str | None] | None = None):
        result = self.runner.invoke(self.app, [str(a) for a in args], env={**self.env, **(env or {})})
        return result


@pytest.fixture(scope="session")
def cli() -> Callable[..., object]:
    return Cli()


def output_of(result) -> str:
    return strip_ansi(result.output)


def error_lines(result) -> list[str]:
    return [line for line in output_of(result).splitlines() if line.startswith("error:")]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, shared_image_folder: Path, cli) -> Path:
    """A finished 2-epoch run, shared by tests that only read it (copy it with ``run_copy`` to change it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = cli("train", "--data", shared_image_folder, "--out", run, *TINY_TRAIN_OPTIONS)
    assert result.exit_code == 0, output_of(result)
    return run


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run_copy"
    shutil.copytree(trained_run, copy)
    return copy
