"""Small previews of gallery rows for the web page, encoded once and kept in a bounded cache.

Only rows of the index's manifest are ever opened (:meth:`GalleryIndex.image`), never a path a client
names. A preview is the image shrunk to fit ``THUMBNAIL_SIDE`` (never enlarged): PNG when small
(exact pixels for tiny gallery images), JPEG otherwise.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

from edgedml.retrieval.store import GalleryIndex

THUMBNAIL_SIDE = 160
PNG_MAX_PIXELS = 96 * 96
JPEG_QUALITY = 85
CACHE_ENTRIES = 1024


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    media_type: str


class ThumbnailCache:
    """Encoded previews by manifest key (a row keeps its key across appended generations)."""

    def __init__(self, entries: int = CACHE_ENTRIES):
        self.entries = entries
        self._cache: OrderedDict[str, Thumbnail] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, index: GalleryIndex, row: int) -> Thumbnail:
        """Row ``row``'s preview (``row``: one of ``index``'s; a DataError when its image is unreadable)."""
        key = index.manifest.paths[row]
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        image = index.image(row, min_side=THUMBNAIL_SIDE)
        thumbnail = encode_thumbnail(image)
        with self._lock:
            self._cache[key] = thumbnail
            while len(self._cache) > self.entries:
                self._cache.popitem(last=False)
        return thumbnail


def encode_thumbnail(image) -> Thumbnail:
    """``image`` (RGB PIL) shrunk to fit THUMBNAIL_SIDE x THUMBNAIL_SIDE, as PNG or JPEG bytes."""
    image = image.copy()
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    if image.width * image.height <= PNG_MAX_PIXELS:
        image.save(buffer, format="PNG")
        return Thumbnail(buffer.getvalue(), "image/png")
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return Thumbnail(buffer.getvalue(), "image/jpeg")
