"""Reduced-size JPEG decoding (Pillow's ``draft``): close to a full decode once resized, never below the side the
transform needs, and nothing changes for other formats and in-memory arrays."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edgedml.data.transforms as transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import data_pipeline

from edgedml.data import ImageDataset, Sample, eval_transform, load_image, train_transform
from edgedml.data.transforms import RandomResizedCrop, Resize, pil_to_tensor, resize

# Measured on the 1600x1200 test photo below (Pillow 13, libjpeg-turbo), on the 0..1 scale: a 1/4-scale decode
# (400x300) resized to 224 differs from the full decode resized to 224 by 0.0013 on average (0.34 / 255), a 1/2-scale
# decode (800x600, what a 224 px random-resized crop needs) by 0.0006 (0.15 / 255). The bound leaves 3x headroom.
MEAN_DIFFERENCE_BOUND = 1 / 255


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """The data-pipeline benchmark's photo-like image (gradients, hard-edged shapes, sensor noise)."""
    return data_pipeline.photo(width, height, np.random.default_rng(seed))


def write_jpeg(path: Path, width: int, height: int, mode: str = "RGB") -> Path:
    photo(width, height).convert(mode).save(path, format="JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jpeg(tmp_path_factory.mktemp("decode") / "photo.jpg", 1600, 1200)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    ("min_side", "decoded"),
    [(224, (400, 300)), (RandomResizedCrop(224).decode_side, (800, 600))],
    ids=["eval-224", "train-crop-224"],
)
def test_draft_then_resize_matches_full_decode_then_resize(large_jpeg, min_side, decoded):
    full = pil_to_tensor(load_image(str(large_jpeg)))
    drafted = load_image(str(large_jpeg), min_side=min_side)

    assert full.shape == (3, 1200, 1600)
    assert drafted.size == decoded  # really reduced: 1/4 and 1/2 scale
    difference = (resize(full, 224) - resize(pil_to_tensor(drafted), 224)).abs()
    assert float(difference.mean()) < MEAN_DIFFERENCE_BOUND


# --------------------------------------------------------------------------- the side never drops below the need


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (333, 999), (1000, 1000), (90, 70)])
def test_draft_keeps_the_shorter_side_at_least_min_side_at_the_smallest_scale(tmp_path, size):
    path = str(write_jpeg(tmp_path / "image.jpg", *size))
    shorter = min(size)
    for min_side in (1, 8, 59, 60, 61, 79, 80, 81, 119, 120, 121, 224, 239, 240, 241, 480, 2000):
        decoded = load_image(path, min_side=min_side).size
        scale = max(s for s in (1, 2, 4, 8) if s == 1 or s * min_side <= shorter)
        assert decoded == (math.ceil(size[0] / scale), math.ceil(size[1] / scale)), (size, min_side)
        assert min(decoded) >= min(min_side, shorter), (size, min_side)  # an image smaller than the need: full size


def test_grey_and_cmyk_jpegs_decode_reduced_to_rgb(tmp_path):
    for mode in ("L", "CMYK"):
        image = load_image(str(write_jpeg(tmp_path / f"{mode}.jpg", 640, 480, mode)), min_side=100)
        assert image.mode == "RGB" and image.size == (160, 120)


@pytest.mark.parametrize("aspect", [1.0, 4 / 3, 3 / 4, 16 / 9])
def test_random_resized_crops_of_an_image_at_decode_side_never_upsample(monkeypatch, aspect):
    crop = RandomResizedCrop(64)
    shorter = crop.decode_side
    height, width = (shorter, round(shorter * aspect)) if aspect >= 1 else (round(shorter / aspect), shorter)
    resized: list[tuple[int, int]] = []

    def recording_resize(image: torch.Tensor, size: int) -> torch.Tensor:
        resized.append(tuple(image.shape[-2:]))
        return resize(image, size)

    monkeypatch.setattr(transforms, "resize", recording_resize)
    image = torch.zeros(3, height, width)
    for seed in range(300):
        crop(image, torch.Generator().manual_seed(seed))
    assert len(resized) == 300 and min(min(shape) for shape in resized) >= 64


def test_crop_side_bound_covers_the_narrowest_crop_of_a_square_image():
    # sqrt(crop_scale) of the side suffices for 4:3 photos only: a square image's 3/4-aspect crop of area 0.6 is
    # sqrt(0.6 * 0.75) = 0.67 of its side, so 224 / sqrt(0.6) = 290 px would leave a 194 px crop to upsample.
    crop = RandomResizedCrop(224, scale_min=0.6)
    assert crop.decode_side == math.ceil(224 / math.sqrt(0.6 * 0.75)) == 334
    assert math.floor(math.sqrt(0.6 * 0.75) * math.ceil(224 / math.sqrt(0.6))) < 224


# --------------------------------------------------------------------------- the transform says what it needs


def test_transforms_state_their_decode_side():
    assert train_transform(224, crop_scale=0.6, hflip=True).decode_side == 334
    assert train_transform(224, crop_scale=1.0).decode_side == 224  # no crop: a plain resize
    assert eval_transform(128).decode_side == 128
    assert Resize(96).decode_side == 96
    assert transforms.Compose(transforms.Normalize()).decode_side is None  # no resize first: full size


def test_dataset_decodes_jpegs_at_its_transforms_side(large_jpeg):
    samples = [Sample(image=str(large_jpeg), label="a")]
    transform = eval_transform(224)
    dataset = ImageDataset(samples, {"a": 0}, transform)
    image, label, index = dataset[0]
    assert (label, index) == (0, 0)

    assert dataset.decode_side == 224
    assert torch.equal(image, transform(pil_to_tensor(load_image(str(large_jpeg), min_side=224))))
    assert not torch.equal(image, transform(pil_to_tensor(load_image(str(large_jpeg)))))
    assert ImageDataset(samples, {"a": 0}, train_transform(224)).decode_side == 334
    assert ImageDataset(samples, {"a": 0}, transform, decode_side=600).decode_side == 600


# --------------------------------------------------------------------------- other formats and arrays unchanged


@pytest.mark.parametrize("suffix", ["png", "bmp", "tiff", "webp"])
def test_other_formats_decode_at_full_size(tmp_path, suffix):
    path = tmp_path / f"image.{suffix}"
    photo(640, 480).save(path)
    full = np.asarray(load_image(str(path)))
    assert full.shape == (480, 640, 3)
    assert np.array_equal(np.asarray(load_image(str(path), min_side=60)), full)


def test_arrays_pass_through_unchanged():
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    assert np.array_equal(np.asarray(load_image(rgb, min_side=60)), rgb)
    assert np.array_equal(np.asarray(load_image(grey, min_side=60)), np.stack([grey] * 3, axis=-1))


def test_a_jpeg_without_min_side_decodes_at_full_size(large_jpeg):
    assert load_image(str(large_jpeg)).size == (1600, 1200)


def test_exif_orientation_turns_a_sideways_phone_photo_upright(tmp_path):
    pixels = np.zeros((40, 80, 3), np.uint8)  # stored landscape, 80 wide: the left half red
    pixels[:, :40, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "sideways.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    for side in (None, 16):
        upright = np.asarray(load_image(path, min_side=side))
        height, width = upright.shape[:2]
        assert height == 2 * width and width >= (side or 40)  # portrait once turned (drafted to 1/2 at 16 px)
        top, bottom = upright[: upright.shape[0] // 4], upright[-upright.shape[0] // 4 :]
        assert top[..., 0].mean() > 200 > bottom[..., 0].mean()  # the red half is on top after a clockwise turn
