"""P x K batch sampling: each batch holds P classes with K images each.

Every epoch's batches are a pure function of (seed, epoch), so a run resumed mid-epoch
sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from edgedml.errors import ConfigError

log = logging.getLogger(__name__)


class PKSampler:
    """Yields batches of indices into ``labels``: P distinct classes, K indices of each.

    labels: one class index per sample. A class with fewer than K samples is drawn with
    replacement (a warning says so once, at construction). One epoch is
    ``len(labels) // (P*K)`` batches (at least one); images are drawn from per-class
    shuffled pools so that each is seen about once per epoch.
    """

    def __init__(self, labels: Sequence[int], classes_per_batch: int, samples_per_class: int, seed: int = 0):
        self.by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self.by_class.setdefault(int(label), []).append(index)
        if len(self.by_class) < 2:
            raise ConfigError("the training split has fewer than 2 classes", hint="use a data set with more classes")
        if classes_per_batch > len(self.by_class):
            raise ConfigError(
                f"a batch of {classes_per_batch} classes x {samples_per_class} images needs {classes_per_batch} "
                f"training classes, the training split has {len(self.by_class)}",
                hint=f"use --batch-size {len(self.by_class) * samples_per_class} or raise --samples-per-class",
            )
        self.p = classes_per_batch
        self.k = samples_per_class
        self.seed = seed
        self.num_samples = len(labels)
        small = sorted(c for c, members in self.by_class.items() if len(members) < samples_per_class)
        if small:
            log.warning(
                "%d class(es) have fewer than K=%d images and are sampled with replacement (class indices %s%s)",
                len(small),
                samples_per_class,
                ", ".join(map(str, small[:10])),
                " ..." if len(small) > 10 else "",
            )

    def __len__(self) -> int:
        return max(1, self.num_samples // (self.p * self.k))

    def batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        pools: dict[int, list[int]] = {c: [] for c in self.by_class}
        class_queue: list[int] = []
        result = []
        for _ in range(len(self)):
            chosen: list[int] = []
            while len(chosen) < self.p:
                if not class_queue:
                    class_queue = list(self.by_class)
                    rng.shuffle(class_queue)
                candidate = class_queue.pop()
                if candidate not in chosen:
                    chosen.append(candidate)
            batch = []
            for label in chosen:
                batch.extend(self._draw(label, pools, rng))
            result.append(batch)
        return result

    def _draw(self, label: int, pools: dict[int, list[int]], rng: random.Random) -> list[int]:
        members = self.by_class[label]
        if len(members) < self.k:
            return [rng.choice(members) for _ in range(self.k)]
        pool = pools[label]
        if len(pool) < self.k:
            leftover = set(pool)
            refill = [m for m in members if m not in leftover]
            rng.shuffle(refill)
            pool.extend(refill)
        drawn, pools[label] = pool[: self.k], pool[self.k :]
        return drawn
