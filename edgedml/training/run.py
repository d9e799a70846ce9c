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

from edgedml.config import TrainConfig
from edgedml.errors import CheckpointError


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

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
        if not self.config.is_file():
            raise CheckpointError(
                f"{self.root}: no config.yaml, so not a run directory", hint="pass the --out folder of an edgedml train run"
            )
        return TrainConfig.from_sources(self.config)

    def read_summary(self) -> dict:
        if not self.summary.is_file():
            raise CheckpointError(f"{self.root}: no summary.json (the run has not finished)")
        return json.loads(self.summary.read_text(encoding="utf-8"))


def config_hash(config: TrainConfig) -> str:
    """A short stable hash of the resolved configuration (recorded in checkpoints and exports)."""
    canonical = json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
