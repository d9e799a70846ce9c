"""Image decoding with Pillow, and the up-front scan that finds unreadable files before training."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgedml.data.sources import ImageRef, Sample
from edgedml.errors import DataError

log = logging.getLogger(__name__)

DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)
SHOWN_PATHS = 5


def load_image(image: ImageRef) -> Image.Image:
    """Decode a path or uint8 array into an RGB PIL image; raises one of ``DECODE_ERRORS`` on failure."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    with Image.open(image) as opened:
        return opened.convert("RGB")


def check_image(image: ImageRef) -> str | None:
    """Return why ``image`` cannot be used, or ``None`` if it decodes."""
    if isinstance(image, np.ndarray):
        return None
    try:
        with Image.open(image) as opened:
            opened.load()
    except FileNotFoundError:
        return "missing"
    except DECODE_ERRORS as exc:
        return f"unreadable ({type(exc).__name__})"
    return None


@dataclass
class ScanResult:
    usable: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def scan_samples(samples: list[Sample]) -> ScanResult:
    """Decode every file once; skip the bad ones with a warning that names the first few."""
    result = ScanResult(usable=[])
    for sample in samples:
        reason = check_image(sample.image)
        if reason is None:
            result.usable.append(sample)
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
