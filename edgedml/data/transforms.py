"""Image transforms in plain torch (torchvision does not import with the CPU wheel we pin).

Every random transform draws from an explicit ``torch.Generator`` so a sample's augmentation
is a function of its seed alone. Images are ``(3, H, W)`` float tensors in [0, 1] until
``Normalize``.

A resizing step states its ``decode_side``: the shorter side its input needs so that it only ever shrinks
or keeps the image. ``Compose.decode_side`` passes on that of its first step, and the dataset decodes a JPEG
at reduced scale down to that side and no further (:func:`edgedml.data.images.load_image`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edgedml.config import IMAGENET_MEAN, IMAGENET_STD


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (3, H, W) to (3, size, size), antialiased when shrinking."""
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


@dataclass
class Resize:
    size: int

    @property
    def decode_side(self) -> int:
        """Both sides are resized to ``size``: the shorter one must be at least that."""
        return self.size

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return resize(image, self.size)


@dataclass
class RandomResizedCrop:
    """Crop a random area fraction in [scale_min, 1] with aspect ratio in [3/4, 4/3], resize to ``size``."""

    size: int
    scale_min: float = 0.6
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    attempts: int = 10

    @property
    def decode_side(self) -> int:
        """The shorter image side S at which even the narrowest crop is at least ``size`` on each side.

        A crop of area fraction ``a >= scale_min`` and aspect ``r`` has width sqrt(a W H r) and height
        sqrt(a W H / r), with W H >= S^2: both are at least S sqrt(scale_min min(r_lo, 1 / r_hi)). For the
        defaults (0.6, 3/4..4/3) that is 0.67 S, so S >= 1.49 ``size``. (sqrt(scale_min) S alone holds only for
        images at least as elongated as 4:3: a square image's 3/4-aspect crop is narrower.)
        """
        narrowest = math.sqrt(self.scale_min * min(self.ratio[0], 1.0 / self.ratio[1]))
        return math.ceil(self.size / narrowest)

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        height, width = image.shape[-2:]
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(self.attempts):
            u = torch.rand(3, generator=generator).tolist()
            target_area = area * (self.scale_min + (1.0 - self.scale_min) * u[0])
            aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
            crop_w = round(math.sqrt(target_area * aspect))
            crop_h = round(math.sqrt(target_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height and crop_w * crop_h >= self.scale_min * area:
                top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
                return resize(image[:, top : top + crop_h, left : left + crop_w], self.size)
        return resize(image, self.size)


@dataclass
class HorizontalFlip:
    p: float = 0.5

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if float(torch.rand(1, generator=generator)) < self.p:
            return image.flip(-1)
        return image


@dataclass
class Normalize:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=image.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype).view(3, 1, 1)
        return (image - mean) / std


class Compose:
    def __init__(self, *steps):
        self.steps = steps

    @property
    def decode_side(self) -> int | None:
        """The shorter side the input needs for the first step, when that step resizes; None: no reduction."""
        return getattr(self.steps[0], "decode_side", None) if self.steps else None

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for step in self.steps:
            image = step(image, generator)
        return image


def train_transform(size: int, crop_scale: float = 0.6, hflip: bool = False) -> Compose:
    steps = [RandomResizedCrop(size, scale_min=crop_scale) if crop_scale < 1.0 else Resize(size)]
    if hflip:
        steps.append(HorizontalFlip())
    steps.append(Normalize())
    return Compose(*steps)


def eval_transform(
    size: int, mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD
) -> Compose:
    return Compose(Resize(size), Normalize(tuple(mean), tuple(std)))
