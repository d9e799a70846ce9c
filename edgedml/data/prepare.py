"""From a ``--data`` value to checked, class-disjoint splits: the one path training and evaluation share."""

from __future__ import annotations

from dataclasses import dataclass

from edgedml.data.images import scan_samples
from edgedml.data.sources import default_input_size, load_source
from edgedml.data.splits import Splits, class_disjoint_split


@dataclass
class PreparedData:
    splits: Splits
    skipped: list[str]  # "path (reason)" for each unusable image
    default_input_size: int
    default_crop_scale: float
    input_size_note: str | None = None  # how the images chose default_input_size; None: the source's fixed default


def prepare_data(spec: str, train_classes: float, val_fraction: float, seed: int) -> PreparedData:
    source = load_source(spec)
    scan = scan_samples(source.samples)
    input_size, input_size_note = default_input_size(source, scan.sizes)
    return PreparedData(
        splits=class_disjoint_split(scan.usable, train_classes, val_fraction, seed),
        skipped=[f"{path} ({why})" for path, why in scan.skipped],
        default_input_size=input_size,
        default_crop_scale=source.default_crop_scale,
        input_size_note=input_size_note,
    )
