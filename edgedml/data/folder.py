"""Writing samples to disk as an image folder (``root/<class>/<image>.png``).

That is the layout ``--data`` and ``--gallery`` read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from edgedml.data.images import load_image
from edgedml.data.sources import Sample


def write_gallery_and_queries(samples: list[Sample], gallery: Path, queries: Path) -> list[Path]:
    """Write ``samples`` as an image folder in ``gallery``, holding out the first image of each class as
    ``queries/<class>.png``; return the query files in class order of appearance.

    Both folders are replaced (they are the tool's own output, e.g. the quick start's).
    """
    for folder in (gallery, queries):
        shutil.rmtree(folder, ignore_errors=True)
    written: list[Path] = []
    held_out: set[str] = set()
    for position, sample in enumerate(samples):
        is_query = sample.label not in held_out
        target = queries / f"{sample.label}.png" if is_query else gallery / sample.label / f"{position:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        (Image.fromarray(sample.image) if isinstance(sample.image, np.ndarray) else load_image(sample.image)).save(
            target
        )
        if is_query:
            held_out.add(sample.label)
            written.append(target)
    return written
