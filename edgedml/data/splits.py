"""Class-disjoint splits, as the field evaluates metric learning.

Training uses the first fraction of the classes (sorted by name); retrieval is tested on the
remaining, never-seen classes. A validation split is carved from the training classes' images
for model selection, so that no choice is ever made on test classes. A manifest that declares
its own ``split`` column is used as written.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from edgedml.data.sources import Sample
from edgedml.errors import DataError


@dataclass
class Splits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]

    @property
    def train_classes(self) -> list[str]:
        return sorted({s.label for s in self.train})

    @property
    def test_classes(self) -> list[str]:
        return sorted({s.label for s in self.test})


def class_disjoint_split(
    samples: list[Sample], train_fraction: float = 0.5, val_fraction: float = 0.2, seed: int = 0
) -> Splits:
    if any(s.split is not None for s in samples):
        return _declared_split(samples)
    classes = sorted({s.label for s in samples})
    n_train = round(len(classes) * train_fraction)
    if n_train < 2 or len(classes) - n_train < 2:
        raise DataError(
            f"{len(classes)} classes with --train-classes {train_fraction} leaves {n_train} training and "
            f"{len(classes) - n_train} test classes; each side needs at least 2",
            hint="use a data set with at least 4 classes or change --train-classes",
        )
    train_classes = set(classes[:n_train])
    by_class: dict[str, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    rng = random.Random(seed)
    train, val, test = [], [], []
    for label in classes:
        members = by_class[label]
        if label not in train_classes:
            test.extend(members)
            continue
        order = members[:]
        rng.shuffle(order)
        n_val = int(len(order) * val_fraction) if len(order) >= 2 else 0
        val.extend(order[:n_val])
        train.extend(order[n_val:])
    return Splits(train=train, val=val, test=test)


def _declared_split(samples: list[Sample]) -> Splits:
    missing = [s.describe() for s in samples if s.split is None]
    if missing:
        raise DataError(
            f"manifest gives a split for some rows but not for {missing[0]} ({len(missing)} rows)",
            hint="fill the split column for every row, or drop the column to split by class",
        )
    parts = {name: [s for s in samples if s.split == name] for name in ("train", "val", "test")}
    for name in ("train", "test"):
        if len({s.label for s in parts[name]}) < 2:
            raise DataError(f"manifest split {name!r} has fewer than 2 classes", hint="assign more classes to it")
    return Splits(**parts)
