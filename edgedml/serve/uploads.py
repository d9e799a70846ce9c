"""Images uploaded to a served index (``POST /index``): stored as files, then appended like ``edgedml index --append``.

A manifest row names a file, so every upload is written into the uploads folder first (``UPLOADS``: a FAISS
index's ``INDEX_DIR/uploads``, a Milvus Lite database's ``PATH.db.uploads``, or the ``--uploads`` folder a server
of a Milvus server's collection is given): ``UPLOADS/<label>/<sha256>.png``, the decoded pixels as PNG (EXIF
orientation applied, the rest of the metadata, GPS included, dropped), written atomically; the name is the
content's hash, so an image uploaded twice with one label is one file and one row. The batch is listed in
``UPLOADS/batch-<time>-<id>.csv`` (``path,label``, paths relative to ``UPLOADS``), and that
manifest is appended with :func:`edgedml.retrieval.index.build_index` (``mode="append"``): the same
embedding, resume and atomic commit as the CLI's, recorded in the index's gallery history.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from edgedml.errors import ConfigError
from edgedml.io import write_with
from edgedml.retrieval.index import IndexSummary, build_index

# A label names a folder: letters, digits, and . _ - or space inside, never a path.
LABEL_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._ -]{0,62}[A-Za-z0-9_-])?")


def check_label(label: str) -> str:
    """The label, stripped; a ConfigError unless it is 1-64 safe characters (it becomes a folder name)."""
    label = label.strip()
    if not LABEL_PATTERN.fullmatch(label):
        raise ConfigError(
            f"label {label[:80]!r} is not 1-64 letters, digits, '.', '_', '-' or spaces "
            "(starting and ending with a letter or digit)"
        )
    return label


def store_uploads(uploads: Path, images: list[np.ndarray], label: str) -> list[Path]:
    """Write each (H, W, 3) uint8 image as ``uploads/<label>/<sha256>.png``; their paths, in order."""
    folder = uploads / check_label(label)
    paths = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        data = buffer.getvalue()
        path = folder / f"{hashlib.sha256(data).hexdigest()}.png"
        if not path.exists():
            write_with(path, lambda tmp, data=data: tmp.write_bytes(data))
        paths.append(path)
    return paths


def write_batch_manifest(uploads: Path, paths: list[Path], label: str) -> Path:
    """``uploads/batch-<UTC time>-<id>.csv`` listing ``paths`` (relative to ``uploads/``) with ``label``."""
    manifest = uploads / f"batch-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}.csv"

    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            rows = csv.writer(handle)
            rows.writerow(["path", "label"])
            rows.writerows((path.relative_to(uploads).as_posix(), label) for path in paths)

    write_with(manifest, writer)
    return manifest


def append_uploads(
    location: str,
    uploads: Path,
    model: Path,
    images: list[np.ndarray],
    label: str,
    runtime: str | None = None,
    device: str = "cpu",
    collection: str | None = None,
) -> IndexSummary:
    """Store ``images`` under ``label`` in ``uploads`` and append them to the index at ``location`` (a FAISS
    folder, or a Milvus URI with ``collection``): a new generation."""
    label = check_label(label)
    paths = store_uploads(uploads, images, label)
    manifest = write_batch_manifest(uploads, paths, label)
    return build_index(
        model, str(manifest), location, mode="append", runtime=runtime, device=device, collection=collection
    )
