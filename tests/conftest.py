"""Shared fixtures: a tiny ImageFolder data set, CLI options that train in about a second on CPU,
an in-process CLI runner with a wide colourless console, and one trained run for read-only tests."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from helpers import CliResult
from PIL import Image

# On a 2-core machine that is busy elsewhere, two OpenMP threads make each tiny conv 10-50x slower
# (threads wait at barriers for a core); one thread keeps a tiny training run at about a second.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

NUM_CLASSES = 6
# val_fraction 0.2 of 10 images -> 2 validation images per training class, so every validation
# query has a same-class neighbour (with 8 images there is 1, and validation MAP@R is NaN).
IMAGES_PER_CLASS = 10
IMAGE_SIDE = 16

TINY_TRAIN_OPTIONS = [
    "--backbone", "tiny",
    "--input-size", "16",
    "--dim", "16",
    "--batch-size", "8",
    "--samples-per-class", "4",
    "--epochs", "2",
    "--device", "cpu",
]  # fmt: skip
# With the data set below: 3 training classes x 8 images = 24 images, 3 steps per epoch;
# 6 validation images; 30 test images of 3 unseen classes.
TINY_STEPS_PER_EPOCH = 3


def write_image_folder(
    root: Path, classes: int = NUM_CLASSES, per_class: int = IMAGES_PER_CLASS, side: int = IMAGE_SIDE, seed: int = 0
) -> Path:
    """root/class<c>/<i>.png: stripes whose orientation and period depend on the class, with a random
    phase, a random tint and pixel noise per image: learnable, but not so easy that the loss is 0."""
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


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def make_image_folder():
    """``make_image_folder(root, classes=6, per_class=10, side=16, seed=0)`` writes a data set and returns root."""
    return write_image_folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """6 classes x 10 PNGs of 16x16 px under tmp_path/images."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def shared_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same data set, once per session, for runs shared between tests (never modify it)."""
    return write_image_folder(tmp_path_factory.mktemp("shared") / "images")


@pytest.fixture
def tiny_train_options() -> list[str]:
    """CLI options that make `edgedml train` take about a second on CPU (2 epochs x 3 steps)."""
    return list(TINY_TRAIN_OPTIONS)


@pytest.fixture
def tiny_steps_per_epoch() -> int:
    return TINY_STEPS_PER_EPOCH


def with_option(options: Sequence[str], name: str, value: str) -> list[str]:
    """``options`` with ``name`` set to ``value`` (replaced in place, or appended)."""
    result = list(options)
    if name in result:
        result[result.index(name) + 1] = value
    else:
        result += [name, value]
    return result


@pytest.fixture(scope="session")
def set_option():
    return with_option


class Cli:
    """Invokes the ``edgedml`` Typer app in-process.

    The console is made wide (COLUMNS) so that messages holding long tmp paths are not wrapped by
    rich at the default 80 columns, and colourless so that the text can be compared.
    """

    env: ClassVar[dict[str, str | None]] = {"COLUMNS": "1000", "LINES": "50", "NO_COLOR": "1", "FORCE_COLOR": None}

    def __init__(self) -> None:
        from typer.testing import CliRunner

        from edgedml.cli.main import app

        self.app = app
        self.runner = CliRunner()

    def __call__(self, *args: str | os.PathLike, env: dict[str, str | None] | None = None) -> CliResult:
        result = self.runner.invoke(self.app, [str(a) for a in args], env={**self.env, **(env or {})})
        return CliResult(
            exit_code=result.exit_code,
            output=ANSI.sub("", result.output),
            stdout=ANSI.sub("", result.stdout),
            exception=result.exception,
        )


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


@dataclass
class TrainedRun:
    run: Path
    data: Path
    output: str


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, shared_image_folder: Path, cli: Cli) -> TrainedRun:
    """A finished 2-epoch run written by `edgedml train`, shared by tests that only read it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = cli("train", "--data", shared_image_folder, "--out", run, *TINY_TRAIN_OPTIONS)
    assert result.exit_code == 0, str(result)
    return TrainedRun(run=run, data=shared_image_folder, output=result.output)


@pytest.fixture
def run_copy(trained: TrainedRun, tmp_path: Path) -> Path:
    """A private copy of the shared trained run, free to be extended or overwritten."""
    copy = tmp_path / "run_copy"
    shutil.copytree(trained.run, copy)
    return copy
