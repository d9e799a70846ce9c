"""A map-style dataset over :class:`Sample` lists that decodes with Pillow and never crashes on a bad file.

Keys are ``(index, seed)`` pairs: the seed fixes that sample's augmentation, so an epoch can be
replayed exactly. An image that fails to decode at load time is logged and dropped from its
batch by :func:`collate_skip_bad`.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from edgedml.data.images import DECODE_ERRORS, load_image
from edgedml.data.sources import Sample
from edgedml.data.transforms import Compose, pil_to_tensor

log = logging.getLogger(__name__)

Item = tuple[torch.Tensor, int, int]


class ImageDataset(Dataset):
    """samples: the split's images; class_to_index: label name -> integer label."""

    def __init__(self, samples: list[Sample], class_to_index: dict[str, int], transform: Compose):
        self.samples = samples
        self.class_to_index = class_to_index
        self.labels = [class_to_index[s.label] for s in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> Item | None:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        try:
            image = pil_to_tensor(load_image(sample.image))
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
