"""A run directory and what it holds.

RUN_DIR/config.yaml       the fully resolved configuration
RUN_DIR/metrics.jsonl     one JSON object per evaluation (per epoch, on the validation split)
RUN_DIR/best.safetensors  weights selected on validation Recall@1
RUN_DIR/last.safetensors  weights + optimizer, epoch, step, RNG: what --resume needs
RUN_DIR/summary.json      test-class retrieval metrics of the best weights, timing
RUN_DIR/train.log         the run's log (skipped images, warnings)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edgedml.config import RUN_CONFIG, TrainConfig, load_run_config


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

    def load_config(self) -> TrainConfig:
        return load_run_config(self.root)


def config_hash(config: TrainConfig) -> str:
    """A short stable hash of the resolved configuration (recorded in checkpoints and exports)."""
    canonical = json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
