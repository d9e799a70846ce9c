"""Data sources named by one ``--data`` value.

- ``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes).
- a folder in the ImageFolder layout, ``root/<class>/<image>``.
- a CSV manifest (UTF-8) with columns ``path,label`` and an optional ``split`` (train / val / test);
  relative paths are resolved against the manifest's folder and must stay inside it (absolute paths
  are taken as meant).

Each returns a :class:`Source`: samples (an image path or an in-memory uint8 array, and a class
name) plus the default input size for that kind of data. A folder's or manifest's default follows its
images (:func:`default_input_size`): the median of their shorter sides, rounded to the nearest multiple of
32 and kept within 32..224 px, so 60 px thumbnails are not blown up to 128 px and phone photos train at 224.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedml.errors import DataError
from edgedml.registry import Registry

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
SPLITS = ("train", "val", "test")
INPUT_SIZE_STEP = 32  # a derived input size is a multiple of this (the total stride of mobilenetv2 and resnet18)
INPUT_SIZE_RANGE = (32, 224)  # and lies in this range; set --input-size to go outside it
FILE_INPUT_SIZE = 128  # a folder's or manifest's default when no image size is known

ImageRef = str | np.ndarray


@dataclass(frozen=True)
class Sample:
    """One image: ``image`` is a file path or an (H, W) / (H, W, 3) uint8 array; ``label`` its class name."""

    image: ImageRef
    label: str
    split: str | None = None

    def describe(self) -> str:
        return self.image if isinstance(self.image, str) else f"<array {self.label}>"


@dataclass
class Source:
    name: str
    samples: list[Sample]
    default_input_size: int  # with ``input_size_from_images``: the fallback when no image size is known
    default_crop_scale: float = 0.6  # random-resized-crop area floor that suits this kind of image
    input_size_from_images: bool = False  # the default follows the images' sizes (see default_input_size)

    @property
    def classes(self) -> list[str]:
        return sorted({s.label for s in self.samples})

    @property
    def has_splits(self) -> bool:
        return any(s.split is not None for s in self.samples)


def default_input_size(source: Source, sizes: list[tuple[int, int]]) -> tuple[int, str | None]:
    """The input size to use when none is set, and a note of how the images chose it (None: the source's fixed one).

    sizes: (width, height) of the source's images, e.g. ``ScanResult.sizes``.
    """
    if not source.input_size_from_images or not sizes:
        return source.default_input_size, None
    return input_size_for_sides([min(width, height) for width, height in sizes])


def input_size_for_sides(shorter_sides: list[int]) -> tuple[int, str]:
    """The median shorter side rounded to the nearest multiple of ``INPUT_SIZE_STEP`` (halves up), clamped to
    ``INPUT_SIZE_RANGE``; and the note that says so."""
    low, high = INPUT_SIZE_RANGE
    median = statistics.median(shorter_sides)
    rounded = math.floor(median / INPUT_SIZE_STEP + 0.5) * INPUT_SIZE_STEP
    size = min(max(rounded, low), high)
    found = f"input size {size} px: the median shorter side of the {len(shorter_sides)} images is {median:g} px"
    if rounded > high:
        return size, f"{found}, capped at {high} (set --input-size to train larger)"
    if rounded < low:
        return size, f"{found}, raised to the smallest input size, {low}"
    return size, f"{found}, rounded to a multiple of {INPUT_SIZE_STEP} within {low}-{high}"


named_sources: Registry[Source] = Registry("data source")


@named_sources.register("digits")
def load_digits() -> Source:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    samples = [Sample(image=img, label=str(int(t))) for img, t in zip(images, bunch.target, strict=True)]
    return Source(name="digits", samples=samples, default_input_size=32)


def load_source(spec: str, min_classes: int = 2) -> Source:
    """Resolve a ``--data`` value to a :class:`Source` with at least ``min_classes`` classes.

    Training and evaluation need two; a gallery to index may hold any number (``min_classes=0``).
    """
    if spec in named_sources:
        source = named_sources.create(spec)
    else:
        try:
            path = Path(spec).expanduser()
        except RuntimeError:  # ~user of a user that does not exist
            path = Path(spec)
        if path.is_dir():
            source = load_image_folder(path)
        elif path.is_file() and path.suffix.lower() == ".csv":
            source = load_csv_manifest(path)
        elif path.exists():
            raise DataError(
                f"--data {spec}: not a folder or a .csv manifest", hint="pass an image folder or a CSV file"
            )
        else:
            known = ", ".join(named_sources.names())
            raise DataError(f"--data {spec}: no such file or folder", hint=f"use an existing path or one of: {known}")
    if len(source.classes) < min_classes:
        raise DataError(
            f"--data {spec}: found {len(source.classes)} class(es); metric learning needs at least {min_classes}",
            hint="add images of more classes",
        )
    return source


def load_image_folder(root: Path) -> Source:
    samples: list[Sample] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in class_dir.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{class_dir}: class folder holds no images", hint="remove the folder or add images to it")
        samples.extend(Sample(image=str(f), label=class_dir.name) for f in files)
    if not samples:
        raise DataError(f"{root}: no class folders with images", hint="expected the layout root/<class>/<image>")
    return Source(name=str(root), samples=samples, default_input_size=FILE_INPUT_SIZE, input_size_from_images=True)


def load_csv_manifest(path: Path) -> Source:
    """Read a ``path,label[,split]`` manifest (UTF-8, a BOM allowed; a header row is optional).

    A relative path must stay inside the manifest's folder: ``../../etc/shadow`` is a DataError naming
    the line, so a manifest from elsewhere cannot read files next to it or above it. An absolute path
    (or ``~/...``) is taken as explicitly meant and accepted wherever it points.
    """
    text = _read_manifest_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        numbered = [(reader.line_num, row) for row in reader]  # line_num: the file line the row ends on
    except csv.Error as exc:
        raise DataError(
            f"{path}:{reader.line_num + 1}: not a CSV row ({exc})",
            hint="write one 'path,label[,split]' row per line; quote cells that hold commas or quotes",
        ) from None
    rows = [(line_no, row) for line_no, row in numbered if row and any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path}: manifest is empty", hint="write one 'path,label[,split]' row per image")
    header = [cell.strip().lower() for cell in rows[0][1]]
    if "path" in header and "label" in header:
        columns = {name: header.index(name) for name in ("path", "label", "split") if name in header}
        rows = rows[1:]
    else:
        columns = {"path": 0, "label": 1}
        if len(rows[0][1]) >= 3:
            columns["split"] = 2
    folder = os.path.abspath(path.parent)
    samples: list[Sample] = []
    for line_no, row in rows:
        try:
            raw_path, label = row[columns["path"]].strip(), row[columns["label"]].strip()
        except IndexError:
            raise DataError(f"{path}:{line_no}: expected 'path,label[,split]', got {','.join(row)!r}") from None
        if not raw_path or not label:
            raise DataError(
                f"{path}:{line_no}: empty {'path' if not raw_path else 'label'} in {','.join(row)!r}",
                hint="give every row an image path and a class label",
            )
        split = row[columns["split"]].strip().lower() if "split" in columns and len(row) > columns["split"] else None
        if split == "":
            split = None
        if split is not None and split not in SPLITS:
            raise DataError(f"{path}:{line_no}: split {split!r} is not one of {', '.join(SPLITS)}")
        try:
            image_path = Path(raw_path).expanduser()
        except RuntimeError:  # ~user of a user that does not exist
            raise DataError(
                f"{path}:{line_no}: cannot expand {raw_path!r} (no such user's home folder)",
                hint="write the image's absolute path",
            ) from None
        if not image_path.is_absolute():
            image_path = path.parent / image_path
            inside = os.path.abspath(image_path)
            if os.path.commonpath([folder, inside]) != folder:
                raise DataError(
                    f"{path}:{line_no}: {raw_path!r} leads outside the manifest's folder {path.parent}",
                    hint=(
                        "relative paths must stay inside the manifest's folder; write the absolute path "
                        "if that image is meant, or move the manifest up to a folder that holds the images"
                    ),
                )
        samples.append(Sample(image=str(image_path), label=label, split=split))
    if not samples:
        raise DataError(f"{path}: manifest has a header but no rows")
    return Source(name=str(path), samples=samples, default_input_size=FILE_INPUT_SIZE, input_size_from_images=True)


def _read_manifest_text(path: Path) -> str:
    """The manifest's text as UTF-8 (``utf-8-sig``: a byte-order mark is dropped, not read as a path)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the manifest ({exc.strerror or type(exc).__name__})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); the manifest must be UTF-8",
            hint=f"convert it, e.g. iconv -f latin1 -t utf-8 {path} > {path.with_suffix('.utf8.csv')}",
        ) from None
