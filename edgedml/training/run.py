"""A run directory and what it holds.

RUN_DIR/config.yaml       the fully resolved configuration
RUN_DIR/metrics.jsonl     one JSON object per evaluation (per epoch, on the validation split)
RUN_DIR/curves.png        loss, learning rate and validation scores per epoch, redrawn after each epoch
RUN_DIR/best.safetensors  weights selected on validation Recall@1
RUN_DIR/last.safetensors  weights + optimizer, epoch, step, RNG: what --resume needs
RUN_DIR/summary.json      test-class retrieval metrics of the best weights, timing
RUN_DIR/train.log         the run's log (skipped images, warnings)
RUN_DIR/.overwrite/       a new run trained with --overwrite, until its first checkpoint replaces the old one

A directory *holds a run* once a checkpoint is in it; a ``config.yaml`` alone is what a run left that
stopped before its first checkpoint, and a new run may take the directory over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgedml.config import FINE_TUNING_OFF, RUN_CONFIG, TrainConfig, load_run_config
from edgedml.errors import EdgedmlError

STAGING = ".overwrite"


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def best(self) -> Path:
        return self.root / "best.safetensors"

    @property
    def last(self) -> Path:
        return self.root / "last.safetensors"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file a run writes, in the order a replacement moves them (the summary first, so that a run
        half-replaced never looks finished; the curves beside the metrics they draw)."""
        return (self.summary, self.metrics, self.curves, self.best, self.last, self.config, self.log)

    @property
    def staging(self) -> RunDir:
        """Where ``--overwrite`` trains the new run until its first checkpoint."""
        return RunDir(self.root / STAGING)

    def holds_run(self) -> bool:
        """A checkpoint is here: the directory holds a run that can be resumed, evaluated or exported."""
        return self.last.is_file() or self.best.is_file()

    def holds_leftover(self) -> bool:
        """A ``config.yaml`` edgedml train wrote for a run that stopped before its first checkpoint."""
        if self.holds_run() or not self.config.is_file():
            return False
        try:
            load_run_config(self.root)
        except EdgedmlError:
            return False
        return True

    def remove_files(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)

    def replace_with(self, new: RunDir) -> None:
        """Move ``new``'s run files over this run's (removing those ``new`` lacks); other files here are kept."""
        for mine, theirs in zip(self.files, new.files, strict=True):
            if theirs.exists():
                os.replace(theirs, mine)
            else:
                mine.unlink(missing_ok=True)
        shutil.rmtree(new.root, ignore_errors=True)

    def load_config(self) -> TrainConfig:
        return load_run_config(self.root)


def config_hash(config: TrainConfig) -> str:
    """A short stable hash of the resolved configuration (recorded in checkpoints and exports)."""
    values = {k: v for k, v in config.to_dict().items() if k not in FINE_TUNING_OFF or FINE_TUNING_OFF[k] != v}
    canonical = json.dumps(values, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
