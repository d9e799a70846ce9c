"""A map-style dataset over :class:`Sample` lists that decodes with Pillow and never crashes on a bad file.

Keys are ``(index, seed)`` pairs: the seed fixes that sample's augmentation, so an epoch can be
replayed exactly. An image that fails to decode at load time is logged and dropped from its
batch by :func:`collate_skip_bad`. A JPEG larger than the transform needs is decoded at reduced
scale (``decode_side``, by default the transform's own), never below what its resize needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgedml.data.images import DECODE_ERRORS, load_image
from edgedml.data.sources import Sample
from edgedml.data.transforms import Compose, pil_to_tensor
from edgedml.progress import SILENT, Progress

log = logging.getLogger(__name__)

Item = tuple[torch.Tensor, int, int]


class ImageDataset(Dataset):
    """samples: the split's images; class_to_index: label name -> integer label.

    decode_side: a JPEG is decoded at 1/2, 1/4 or 1/8 scale while its shorter side stays at least this
    (:func:`load_image`'s ``min_side``); by default ``transform.decode_side``, the side below which the
    transform's resize would upsample (None there: full size).
    """

    def __init__(
        self,
        samples: list[Sample],
        class_to_index: dict[str, int],
        transform: Compose,
        decode_side: int | None = None,
    ):
        self.samples = samples
        self.class_to_index = class_to_index
        self.labels = [class_to_index[s.label] for s in samples]
        self.transform = transform
        self.decode_side = decode_side if decode_side is not None else transform.decode_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> Item | None:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        try:
            image = pil_to_tensor(load_image(sample.image, self.decode_side))
        except DECODE_ERRORS as exc:
            log.warning("skipped unreadable image %s (%s)", sample.describe(), type(exc).__name__)
            return None
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return self.transform(image, generator), self.labels[index], index


def collate_skip_bad(items: list[Item | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Stack the decodable items of a batch; ``None`` when none decoded."""
    good = [item for item in items if item is not None]
    if not good:
        return None
    images, labels, indices = zip(*good, strict=True)
    return torch.stack(images), torch.tensor(labels), torch.tensor(indices)


def sample_seed(run_seed: int, epoch: int, batch: int, position: int) -> int:
    """A distinct, reproducible augmentation seed for each slot of each batch of each epoch."""
    return ((run_seed * 1_000_003 + epoch) * 1_000_033 + batch) * 4_099 + position & 0x7FFF_FFFF_FFFF_FFFF


def embed_images(
    embed: Callable[[torch.Tensor], np.ndarray],
    samples: list[Sample],
    transform: Compose,
    dim: int,
    batch_size: int = 64,
    workers: int = 0,
    progress: Progress = SILENT,
) -> tuple[np.ndarray, list[int]]:
    """Decode, preprocess and ``embed`` ``samples`` batch by batch: the one loop every model runtime shares.

    Returns the (M, dim) float32 embeddings of the M images that decoded and their indices into
    ``samples`` (unreadable images are logged and skipped). ``progress.advance(n)`` after each batch.
    """
    dataset = ImageDataset(samples, {s.label: 0 for s in samples}, transform)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skip_bad, num_workers=workers)
    embeddings: list[np.ndarray] = []
    kept: list[int] = []
    for batch_index, batch in enumerate(loader):
        if batch is not None:
            images, _, indices = batch
            embeddings.append(np.asarray(embed(images), dtype=np.float32))
            kept.extend(int(i) for i in indices)
        progress.advance(min(batch_size, len(samples) - batch_index * batch_size))
    if not embeddings:
        return np.zeros((0, dim), np.float32), []
    return np.concatenate(embeddings), kept


def class_indices(samples: list[Sample], kept: list[int] | None = None) -> torch.Tensor:
    """Integer labels (classes numbered in sorted order of their names) of ``samples``, or of its ``kept`` rows."""
    class_to_index = {name: i for i, name in enumerate(sorted({s.label for s in samples}))}
    rows = range(len(samples)) if kept is None else kept
    return torch.tensor([class_to_index[samples[i].label] for i in rows], dtype=torch.long)
