"""The input size of an image folder or manifest follows its images: the median shorter side, rounded to the nearest
multiple of 32, within 32..224, with a note that says how it was chosen; digits keep their fixed 32 px; the scan
records the sizes it reads anyway, and the budget report picks the same size from the headers alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgedml.budget.report import training_set_size
from edgedml.config import TrainConfig
from edgedml.data import Sample, default_input_size, image_sizes, load_source, prepare_data, scan_samples
from edgedml.data.sources import input_size_for_sides

CLASSES = ("ant", "bee", "cat", "dog")  # 4 classes: the fewest a class-disjoint split takes


def write_folder(root: Path, sizes: list[tuple[int, int]], suffix: str = "png") -> Path:
    """Every class gets one image of each (width, height) in ``sizes``."""
    rng = np.random.default_rng(0)
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, (width, height) in enumerate(sizes):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.{suffix}")
    return root


def prepared(root: Path):
    return prepare_data(str(root), train_classes=0.5, val_fraction=0.2, seed=0)


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(40, 30)] * 3 + [(70, 50)] * 2, 32),  # median shorter side 30 -> 32
        ([(40, 30)] * 2 + [(70, 50)] * 3, 64),  # 50 -> 64
        ([(40, 30), (70, 50)], 32),  # median of 30 and 50 is 40 -> 32
    ],
)
def test_a_folder_of_small_images_gets_the_rounded_median_shorter_side(tmp_path, sizes, expected):
    data = prepared(write_folder(tmp_path / "images", sizes))
    assert data.default_input_size == expected


def test_the_note_says_how_the_size_was_chosen(tmp_path):
    data = prepared(write_folder(tmp_path / "images", [(40, 30)] * 2 + [(70, 50)] * 3))
    assert data.input_size_note == (
        "input size 64 px: the median shorter side of the 20 images is 50 px, rounded to a multiple of 32 within 32-224"
    )


def test_large_images_are_capped_at_224(tmp_path):
    data = prepared(write_folder(tmp_path / "images", [(640, 480), (500, 375)], suffix="jpg"))
    assert data.default_input_size == 224
    assert data.input_size_note == (
        "input size 224 px: the median shorter side of the 8 images is 427.5 px, "
        "capped at 224 (set --input-size to train larger)"
    )


def test_tiny_images_are_raised_to_32(tmp_path):
    data = prepared(write_folder(tmp_path / "images", [(12, 10), (9, 14)]))
    assert data.default_input_size == 32
    assert data.input_size_note == (
        "input size 32 px: the median shorter side of the 8 images is 9.5 px, raised to the smallest input size, 32"
    )


@pytest.mark.parametrize(
    ("sides", "expected"),
    [([15], 32), ([47], 32), ([48], 64), ([79], 64), ([80], 96), ([208], 224), ([1000], 224), ([30, 50], 32)],
)
def test_rounding_is_to_the_nearest_multiple_of_32_halves_up(sides, expected):
    assert input_size_for_sides(sides)[0] == expected


def test_a_csv_manifest_follows_its_images_too(tmp_path):
    root = write_folder(tmp_path / "images", [(70, 50)])
    manifest = tmp_path / "images" / "data.csv"
    manifest.write_text("".join(f"{label}/0.png,{label}\n" for label in CLASSES), encoding="utf-8")
    assert prepared(manifest).default_input_size == 64
    assert load_source(str(root)).input_size_from_images and load_source(str(manifest)).input_size_from_images


def test_digits_keep_their_fixed_size_and_no_note():
    data = prepare_data("digits", train_classes=0.5, val_fraction=0.2, seed=0)  # 8x8 images: the rule would say 32
    assert data.default_input_size == 32 and data.input_size_note is None
    source = load_source("digits")
    assert default_input_size(source, [(500, 500)]) == (32, None)  # a fixed default ignores the sizes


# --------------------------------------------------------------------------- where the sizes come from


def test_the_scan_records_the_size_of_each_usable_image(tmp_path):
    root = write_folder(tmp_path / "images", [(40, 30), (70, 50)])
    (root / "ant" / "broken.png").write_bytes(b"not an image")
    array = np.zeros((6, 9), np.uint8)
    samples = [*load_source(str(root)).samples, Sample(image=array, label="ant")]

    scan = scan_samples(samples)

    assert len(scan.usable) == len(scan.sizes) == 9 and len(scan.skipped) == 1
    expected = [(9, 6) if isinstance(s.image, np.ndarray) else Image.open(s.image).size for s in scan.usable]
    assert scan.sizes == expected


def test_image_sizes_read_headers_and_skip_what_does_not_open(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (320, 200)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:-400])  # the header survives, the pixels do not
    (tmp_path / "junk.png").write_bytes(b"junk")
    samples = [Sample(str(tmp_path / name), "a") for name in ("good.jpg", "truncated.jpg", "junk.png", "gone.png")]
    assert image_sizes(samples) == [(320, 200), (320, 200)]
    assert scan_samples(samples[:2]).skipped == [(samples[1].image, "unreadable (OSError)")]  # the scan decodes it


def test_the_budget_report_takes_the_same_size_from_the_headers(tmp_path):
    root = write_folder(tmp_path / "images", [(40, 30)] * 2 + [(70, 50)] * 3)
    assert training_set_size(TrainConfig(data=str(root)))[2] == prepared(root).default_input_size == 64
    assert training_set_size(TrainConfig(data=str(root), input_size=96))[2] == 96
