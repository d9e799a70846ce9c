"""Image decoding with Pillow, and the up-front scan that finds unreadable files before training.

A JPEG much larger than the network's input is decoded at reduced scale when the caller says how large it
must stay (``load_image(..., min_side=)``): libjpeg's DCT-domain scaling (Pillow's ``draft``) decodes at 1/2,
1/4 or 1/8 of the size for a fraction of the full decode's time. The scan records every usable image's size,
read from the header it opens anyway, for the input size that follows the images
(:func:`edgedml.data.sources.default_input_size`).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgedml.data.sources import ImageRef, Sample
from edgedml.errors import DataError

log = logging.getLogger(__name__)

# DecompressionBombError: a header claiming more than twice Image.MAX_IMAGE_PIXELS (a 20000 x 20000 PNG of a
# few bytes); it is not an OSError, and such a file is skipped like any other unreadable one.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
SHOWN_PATHS = 5
EXIF_ORIENTATION = 0x0112  # the EXIF tag cameras record the sensor's rotation in
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: the multi-picture JPEG some cameras write, decoded as its first frame

Size = tuple[int, int]  # (width, height) in pixels


def load_image(image: ImageRef | BinaryIO, min_side: int | None = None) -> Image.Image:
    """Decode a path, open binary file or array into an RGB PIL image; raises one of ``DECODE_ERRORS`` on failure.

    A file's EXIF orientation is applied (phone photos are stored sideways with a rotation tag).
    ``min_side``: a JPEG is decoded at the smallest of 1/1, 1/2, 1/4, 1/8 of its size whose shorter side is
    still at least ``min_side`` (Pillow's ``draft``); other formats, arrays, and ``None`` decode at full size.

    8-bit images convert as Pillow converts them. Wider grey images are scaled to 0..255 first, since
    Pillow's conversion clips every value above 255 to white: 16-bit ones (``I;16``: 16-bit PNG, TIFF) by
    their full range 0..65535 (so a dark 16-bit image stays as dark as its 8-bit version), 32-bit integer
    (``I``) and float (``F``) ones by the range their values use (see :func:`to_rgb`).
    """
    if isinstance(image, np.ndarray):
        return to_rgb(Image.fromarray(image))
    with Image.open(image) as opened:
        if min_side is not None and opened.format in JPEG_FORMATS:
            # draft keeps the scale at most min(width // min_side, height // min_side): both sides stay >= min_side
            opened.draft("RGB", (min_side, min_side))
        if opened.getexif().get(EXIF_ORIENTATION, 1) != 1:  # a phone photo taken sideways: turn it upright
            return to_rgb(ImageOps.exif_transpose(opened))
        return to_rgb(opened)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, wide grey modes scaled to 0..255 instead of clipped."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image), image.mode))
    return image.convert("RGB")


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Grey values of a wide mode as uint8: 16-bit by 0..65535; ``I`` and ``F`` by the range they use
    (0..255 and 0..65535 kept as 8 and 16 bit, floats in [0, 1] as fractions, anything else stretched
    from its minimum to its maximum)."""
    if mode in SIXTEEN_BIT_MODES:  # round(v * 255 / 65535) in integers: no float copy of a large image
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F" and low >= 0.0 and high <= 1.0:
        top = 1.0
    elif low >= 0.0 and high <= 255.0:
        top = 255.0
    elif low >= 0.0 and high <= 65535.0:
        top = 65535.0
    else:
        values, top = values - low, max(high - low, 1e-12)
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


class UnsupportedImage(DataError):
    """Bytes that are no image format Pillow reads (a text file named ``.png``)."""


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """An uploaded image's bytes as an (H, W, 3) uint8 RGB array, decoded as :func:`load_image` decodes files.

    The same checks as the CLI's: Pillow's decompression-bomb guard (a header claiming more than twice
    ``Image.MAX_IMAGE_PIXELS``), only the formats Pillow opens, EXIF orientation applied. Raises
    :class:`UnsupportedImage` for bytes of no image format and DataError for an empty, truncated or
    oversized image, each a one-line reason that names the upload.
    """
    if not data:
        raise DataError(f"upload {name}: empty file")
    try:
        return np.asarray(load_image(io.BytesIO(data)))
    except UnidentifiedImageError:
        raise UnsupportedImage(f"upload {name}: not an image format Pillow reads") from None
    except Image.DecompressionBombError:
        raise DataError(
            f"upload {name}: claims more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb)"
        ) from None
    except DECODE_ERRORS as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"upload {name}: unreadable image ({detail})") from None


def check_image(image: ImageRef) -> str | None:
    """Return why ``image`` cannot be used, or ``None`` if it decodes."""
    return _decode_check(image)[0]


def _decode_check(image: ImageRef) -> tuple[str | None, Size | None]:
    """(why ``image`` cannot be used, or None; its size when it decodes)."""
    if isinstance(image, np.ndarray):
        return None, _array_size(image)
    try:
        with Image.open(image) as opened:
            opened.load()
            return None, opened.size
    except FileNotFoundError:
        return "missing", None
    except DECODE_ERRORS as exc:
        return f"unreadable ({type(exc).__name__})", None


def image_sizes(samples: list[Sample]) -> list[Size]:
    """The size of every image whose header opens, without decoding any pixel (``Image.open`` reads the header only)."""
    sizes = []
    for sample in samples:
        if isinstance(sample.image, np.ndarray):
            sizes.append(_array_size(sample.image))
            continue
        try:
            with Image.open(sample.image) as opened:
                sizes.append(opened.size)
        except DECODE_ERRORS:  # FileNotFoundError is an OSError
            continue
    return sizes


def _array_size(image: np.ndarray) -> Size:
    return int(image.shape[1]), int(image.shape[0])


@dataclass
class ScanResult:
    usable: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    sizes: list[Size] = field(default_factory=list)  # of each usable image, in the order of ``usable``


def scan_samples(samples: list[Sample]) -> ScanResult:
    """Decode every file once; skip the bad ones with a warning that names the first few."""
    result = ScanResult(usable=[])
    for sample in samples:
        reason, size = _decode_check(sample.image)
        if reason is None:
            result.usable.append(sample)
            result.sizes.append(size)
        else:
            result.skipped.append((sample.describe(), reason))
    if result.skipped:
        shown = ", ".join(f"{path} ({why})" for path, why in result.skipped[:SHOWN_PATHS])
        more = len(result.skipped) - SHOWN_PATHS
        log.warning(
            "skipped %d unusable image(s): %s%s", len(result.skipped), shown, f" and {more} more" if more > 0 else ""
        )
    emptied = sorted(set(s.label for s in samples) - set(s.label for s in result.usable))
    if emptied:
        raise DataError(
            f"class {emptied[0]!r} has no readable image left"
            + (f" (also: {', '.join(emptied[1:])})" if emptied[1:] else ""),
            hint="fix or remove the unreadable files listed in the warning",
        )
    return result
