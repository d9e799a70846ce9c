"""Training configuration: one typed dataclass whose field names are the CLI options.

Precedence is defaults < ``--config cfg.yaml`` < options given on the command line. The
fully resolved configuration is written as ``config.yaml`` into every run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgedml.errors import CheckpointError, ConfigError
from edgedml.units import parse_bytes

MINING_MODES = ("all", "hard", "semihard")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "none")
DEVICES = ("auto", "cpu", "cuda")
MEMORY_KINDS = ("none", "xbm", "xbn", "axbn")
AUTO = "auto"
AUTO_FIELDS = ("batch_size", "memory_size")
# The largest batch any command takes (training, export profiles, benchmarks): bounds memory and search ranges.
MAX_BATCH = 4096
# Input side: 8 px is the smallest a backbone's stride-8 stem keeps a feature map of; 1024 px is 4.6x the 224 px
# the ImageNet backbones are trained at (2x DINOv2's 518), and one batch of 64 such images is 768 MiB of fp32
# input alone, before the ~100x more its activations take: past every device in profiles/.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 1024
# Embedding and S2SD head dimensions: 8192 is 4x S2SD's largest head (2048); a linear head from a 2048-wide
# backbone is then 64 MiB of weights, and a larger one only spends memory.
MAX_DIM = 8192
# Seeds go to random.Random, torch, numpy and scikit-learn; KMeans (the NMI metric after each epoch) takes
# 0 <= seed < 2**32 only, so that is the range for all of them.
MAX_SEED = 2**32 - 1
# Counts of iterations (warm-up, delays, gain intervals): a billion iterations outlasts any run; torch stores
# them in int64 buffers, so an unbounded count would overflow there.
MAX_ITERATIONS = 10**9
MAX_EPOCHS = 10**6
# Cross-batch memory slots given as a count: 2**24 slots of 64 fp32 dims are 4 GiB already.
MAX_MEMORY_SLOTS = 2**24
# Data-loading worker processes: more than this starts hundreds of processes that wait on the same disk. A fixed
# bound (not this machine's CPU count), so that a run's config.yaml validates on any machine it is resumed on.
MAX_WORKERS = 64
# The input normalization of ImageNet-pretrained weights (RGB in [0, 1], then (x - mean) / std per channel): what
# every transform, export and weight file here uses, in the base layer so that data and models share it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Fine-tuning defaults, chosen by benchmarks/stability.py on glyphs (README, "Seed stability").
WARMUP_EPOCHS = 1.0
GRAD_CLIP = 0.0
PRETRAINED_BACKBONE_LR_MULT = 0.1
DEFAULT_BATCH = 64


@dataclass
class TrainConfig:
    """Every knob of ``edgedml train``. Field comments are the YAML documentation."""

    data: str = "digits"  # (str) digits | path to an image folder (root/<class>/<image>) | path to a CSV manifest
    train_classes: float = 0.5  # (float) fraction of classes (by name) to train on; the rest is the unseen test set
    val_fraction: float = 0.2  # (float) fraction of each training class held out for model selection
    input_size: int | None = None  # (int) square input side in pixels; None: digits 32, glyphs their side, image
    # folders and CSVs the median shorter side of their images rounded to a multiple of 32 within 32-224
    hflip: bool = False  # (bool) random horizontal flips during training
    crop_scale: float | None = None  # (float) smallest random-crop area, 1.0 disables; None: glyphs 1.0, others 0.6
    backbone: str = "tiny"  # (str) tiny | mobilenetv2 | resnet18 | resnet34 | resnet50, or timm:<name> (with timm)
    weights: str | None = None  # (str) imagenet (torchvision's, downloaded once and cached) | a .pth/.safetensors file
    dim: int = 64  # (int) embedding dimension
    loss: str = "shadow"  # (str) shadow | triplet | contrastive | multisimilarity
    mining: str | None = None  # (str) all | hard | semihard triplets (shadow, triplet); None: hard with memory, or all
    margin: float = 0.2  # (float) triplet margin m
    normalize: bool = True  # (bool) shadow: L2-normalize embeddings before the loss (the paper's choice)
    batch_size: int | str | None = None  # (int) images per batch, P classes x K; "auto": the largest that fits the
    # budget; None: 64, with P capped at the number of training classes
    samples_per_class: int = 4  # (int) K, images of each class in a batch
    epochs: int = 20  # (int) passes over the training split
    lr: float = 1e-3  # (float) peak learning rate
    optimizer: str = "adamw"  # (str) adamw | adam | sgd
    weight_decay: float = 1e-4  # (float) decoupled (adamw) or L2 (adam, sgd) weight decay
    scheduler: str = "cosine"  # (str) cosine | none, over the steps after the warm-up
    warmup_epochs: float = WARMUP_EPOCHS  # (float) linear learning-rate warm-up from 0, in epochs (fractions allowed)
    warmup_steps: int | None = None  # (int) the warm-up in steps instead (overrides warmup_epochs); 0 disables
    backbone_lr_mult: float | None = None  # (float) backbone lr = lr x this; None: 1 from scratch, 0.1 with --weights
    freeze_bn: bool | None = None  # (bool) freeze the backbone's BatchNorm statistics and affine; None: with --weights
    freeze_backbone_epochs: int = 0  # (int) first epochs that train only the heads (the backbone frozen)
    grad_clip: float = GRAD_CLIP  # (float) clip the gradients' global L2 norm to this; 0 disables
    memory: str = "none"  # (str) cross-batch memory: none | xbm | xbn (batch moments) | axbn (Kalman-filtered moments)
    memory_size: float | str = 8192  # (float) slots: a count (> 1), a fraction (0, 1] of the training images, or "auto"
    memory_storage: str = "fp32"  # (str) fp32 | fp16 storage of the stored embeddings
    memory_warmup: int = 1000  # (int) iterations before the memory is filled or used
    memory_weight: float = 1.0  # (float) w in loss = batch_loss + w * memory_loss
    memory_batch_loss: bool = True  # (bool) keep the batch-only loss term next to the memory term (official XBM)
    axbn_q: float = 1e-5  # (float) AXBN process noise q (gain 0.12 at batch 16; q = 1 makes AXBN equal XBN)
    axbn_r: float = 0.01  # (float) AXBN measurement noise r (divided by the batch size); 0 gives XBN
    axbn_p0: float = 1.0  # (float) AXBN initial estimate variance
    axbn_gain_interval: int = 100  # (int) AXBN: iterations between Kalman gain updates
    distill: str = "none"  # (str) none | s2sd: self-distillation from high-dimensional auxiliary heads
    aux_dims: str = "512,1024,1536,2048"  # (str) S2SD auxiliary head dimensions, comma-separated (one: DSD, more: MSD)
    distill_weight: float = 1.0  # (float) w, weight of the similarity distillation (S2SD, --teacher); the paper's 50
    # suits its margin loss's scale, not Shadow's (benchmarks/s2sd.py)
    distill_temperature: float = 1.0  # (float) T, softmax temperature of the similarity distillation
    feature_distill: bool = False  # (bool) S2SD: also distill the pooled backbone features (MSDF)
    feature_distill_weight: float = 1.0  # (float) weight of the feature distillation (the paper's 50, as above)
    feature_distill_delay: int = 1000  # (int) iterations before the feature distillation starts
    teacher: str | None = None  # (str) a trained run directory whose model teaches this one (post-hoc S2SD)
    seed: int = 0  # (int) seeds weights, sampling, augmentation and splits
    device: str = "auto"  # (str) auto | cpu | cuda
    budget: str | None = None  # (str) device memory this run may use, e.g. 2.5GiB; None: what the device has free
    profile: str | None = None  # (str) plan for this device profile (edgedml profiles list) or a profile YAML file
    amp: bool = False  # (bool) mixed precision (CUDA only)
    workers: int | None = None  # (int) data-loading worker processes; None: on CUDA min(4, CPU cores - 1), on CPU 0

    # ---- construction -------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_sources(
        cls, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
    ) -> TrainConfig:
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(load_yaml_mapping(config_file))
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        config = cls.from_dict(values, origin=str(config_file) if config_file else "options")
        config.validate()
        return config

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> TrainConfig:
        known = cls.keys()
        clean: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in known:
                raise ConfigError(f"{origin}: unknown key {raw_key!r}", hint=suggest(key, known))
            clean[key] = value
        config = cls(**clean)
        config._coerce(origin)
        return config

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.keys()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ---- checks -------------------------------------------------------------------
    def _coerce(self, origin: str) -> None:
        """Turn YAML scalars into the declared types, naming the key on failure.

        Booleans are refused for numbers (``dim: true`` is not 1), numbers and numeric strings are taken
        for numbers (``lr: "1e-3"``: YAML 1.1 reads 1e-3 as a string), but an integer field takes only a
        whole number (``64``, ``"64"``, ``64.0``; not ``"1e3"`` or ``2.5``). Null is refused where the
        field has no None default.
        """
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            if value is None:
                if "None" in kind:
                    continue
                raise ConfigError(
                    f"{origin}: {f.name} must be {kind.split(' ')[0]}, got null",
                    hint=f"remove the key to use the default ({f.default!r})",
                )
            if isinstance(value, str) and value == AUTO and f.name in AUTO_FIELDS:
                continue
            target = kind.split(" ")[0]
            setattr(self, f.name, _coerce_value(origin, f.name, target, value, auto=f.name in AUTO_FIELDS))

    def validate(self) -> None:
        """Check every option's type and range before any work; a ConfigError names the option and its range."""
        self._coerce("config")
        if self.mining is None:  # batch-all against thousands of stored items is rarely what one wants
            self.mining = "hard" if self.memory != "none" else "all"
        _choice("mining", self.mining, MINING_MODES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("device", self.device, DEVICES)
        if not self.data.strip():
            raise ConfigError("--data is empty", hint="name digits, glyphs, an image folder or a CSV manifest")
        _int_range("dim", self.dim, 1, MAX_DIM)
        _int_range("epochs", self.epochs, 1, MAX_EPOCHS)
        _number("lr", self.lr, low=0.0, low_open=True)
        _number("margin", self.margin, low=0.0)
        _number("weight_decay", self.weight_decay, low=0.0)
        _int_range("seed", self.seed, 0, MAX_SEED)
        self._check_batch()
        self._check_memory()
        self._check_distill()
        if not 0.0 < self.train_classes < 1.0:
            raise ConfigError(
                f"--train-classes must lie in (0, 1), got {self.train_classes}", hint=_example("train_classes")
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(
                f"--val-fraction must lie in [0, 1), got {self.val_fraction}", hint=_example("val_fraction")
            )
        if self.crop_scale is not None and not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(
                f"--crop-scale must lie in (0, 1], got {self.crop_scale}",
                hint="for example --crop-scale 0.6 (1 disables random crops)",
            )
        if self.input_size is not None:
            _int_range("input_size", self.input_size, MIN_INPUT_SIZE, MAX_INPUT_SIZE, unit=" pixels")
        if self.workers is not None:
            _int_range("workers", self.workers, 0, MAX_WORKERS)
        self._check_fine_tuning()
        if self.budget is not None:
            parse_bytes(self.budget, "--budget")

    def _check_batch(self) -> None:
        if self.samples_per_class < 2:
            raise ConfigError(
                f"--samples-per-class must be at least 2 (got {self.samples_per_class})",
                hint="a triplet needs two images of the anchor's class in the batch",
            )
        _int_range("samples_per_class", self.samples_per_class, 2, MAX_BATCH // 2)
        if self.batch_size == AUTO or self.batch_size is None:
            return
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ConfigError(f"--batch-size must be a positive integer or auto, got {self.batch_size!r}")
        if self.batch_size > MAX_BATCH:
            raise ConfigError(
                f"--batch-size {self.batch_size} must lie in 1..{MAX_BATCH}, or be auto",
                hint=(
                    f"for example --batch-size {MAX_BATCH // self.samples_per_class * self.samples_per_class} "
                    "(the most), or --batch-size auto"
                ),
            )
        if self.batch_size % self.samples_per_class:
            suggested = self.batch_size // self.samples_per_class * self.samples_per_class or self.samples_per_class * 2
            raise ConfigError(
                f"--batch-size {self.batch_size} is not a multiple of --samples-per-class {self.samples_per_class}",
                hint=f"use --batch-size {suggested}",
            )
        if self.batch_size // self.samples_per_class < 2:
            raise ConfigError(
                "a batch must hold at least 2 classes",
                hint=f"raise --batch-size to at least {2 * self.samples_per_class}",
            )

    def _check_fine_tuning(self) -> None:
        _number("warmup_epochs", self.warmup_epochs, low=0.0)
        if self.warmup_epochs > MAX_EPOCHS:
            raise ConfigError(
                f"--warmup-epochs must lie in 0..{MAX_EPOCHS}, got {self.warmup_epochs}", hint=_example("warmup_epochs")
            )
        if self.warmup_steps is not None:
            _int_range("warmup_steps", self.warmup_steps, 0, MAX_ITERATIONS)
        if self.backbone_lr_mult is not None:
            _number("backbone_lr_mult", self.backbone_lr_mult, low=0.0)
        _int_range("freeze_backbone_epochs", self.freeze_backbone_epochs, 0, MAX_EPOCHS)
        if self.freeze_backbone_epochs > self.epochs:
            raise ConfigError(
                f"--freeze-backbone-epochs {self.freeze_backbone_epochs} is more than the run's --epochs {self.epochs}",
                hint=f"give at most --freeze-backbone-epochs {self.epochs} (all epochs: only the heads train)",
            )
        _number("grad_clip", self.grad_clip, low=0.0)

    def _check_memory(self) -> None:
        _choice("memory", self.memory, MEMORY_KINDS)
        _choice("memory_storage", self.memory_storage, ("fp32", "fp16"))
        if self.memory_size == AUTO:
            if self.memory == "none":
                raise ConfigError("--memory-size auto needs a cross-batch memory", hint="add --memory xbm, xbn or axbn")
        elif not (
            isinstance(self.memory_size, (int, float))
            and 0 < self.memory_size <= MAX_MEMORY_SLOTS
            and (self.memory_size <= 1 or float(self.memory_size).is_integer())
        ):  # NaN fails the range test too
            raise ConfigError(
                f"--memory-size {self.memory_size}: give a whole count (> 1, at most {MAX_MEMORY_SLOTS}), "
                "a fraction in (0, 1] of the training set, or auto",
                hint=_example("memory_size"),
            )
        _int_range("memory_warmup", self.memory_warmup, 0, MAX_ITERATIONS)
        _number("memory_weight", self.memory_weight, low=0.0)
        for name in ("axbn_q", "axbn_r", "axbn_p0"):
            _number(name, getattr(self, name), low=0.0)
        _int_range("axbn_gain_interval", self.axbn_gain_interval, 1, MAX_ITERATIONS)

    def _check_distill(self) -> None:
        _choice("distill", self.distill, ("none", "s2sd"))
        dims = self.aux_dim_list
        if not dims or any(not 1 <= d <= MAX_DIM for d in dims):
            raise ConfigError(
                f"--aux-dims {self.aux_dims!r}: give dimensions in 1..{MAX_DIM}", hint=_example("aux_dims")
            )
        if self.distill == "s2sd" and self.teacher is not None:
            raise ConfigError("--distill s2sd and --teacher are two ways to distill; choose one")
        _number("distill_temperature", self.distill_temperature, low=0.0, low_open=True)
        _number("distill_weight", self.distill_weight, low=0.0)
        _number("feature_distill_weight", self.feature_distill_weight, low=0.0)
        _int_range("feature_distill_delay", self.feature_distill_delay, 0, MAX_ITERATIONS)
        if self.feature_distill and self.distill != "s2sd":
            raise ConfigError("--feature-distill is part of S2SD", hint="add --distill s2sd")

    @property
    def aux_dim_list(self) -> list[int]:
        text = (
            ",".join(str(d) for d in self.aux_dims) if isinstance(self.aux_dims, (list, tuple)) else str(self.aux_dims)
        )
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"--aux-dims {self.aux_dims!r}: give comma-separated integers, e.g. 512,1024") from None

    @property
    def needs_plan(self) -> bool:
        """A budget, a device profile or an automatic size asks for the memory planner."""
        return self.budget is not None or self.profile is not None or AUTO in (self.batch_size, self.memory_size)

    @property
    def classes_per_batch(self) -> int:
        return self.batch_size // self.samples_per_class

    @property
    def freezes_bn(self) -> bool:
        """--freeze-bn, by default on when fine-tuning pretrained --weights (their statistics are the data's prior)."""
        return self.freeze_bn if self.freeze_bn is not None else self.weights is not None

    @property
    def backbone_lr_multiplier(self) -> float:
        if self.backbone_lr_mult is not None:
            return self.backbone_lr_mult
        return PRETRAINED_BACKBONE_LR_MULT if self.weights is not None else 1.0

    def warmup_for(self, steps_per_epoch: int) -> int:
        """Warm-up steps: ``warmup_steps`` when set, else ``warmup_epochs`` of this many steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return round(self.warmup_epochs * steps_per_epoch)

    def workers_for(self, device_type: str) -> int:
        """``workers``, or when unset: on CUDA enough processes to decode while the GPU trains (a CPU core is left
        to the training process, at most 4: benchmarks/data_pipeline.py), on the CPU none (the decoding would take
        cores from the model step itself)."""
        if self.workers is not None:
            return self.workers
        if device_type != "cuda":
            return 0
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    def with_default_batch(self, train_classes: int) -> tuple[TrainConfig, str | None]:
        """The config with an unset batch filled in, and a note when the data set capped it.

        Unset, the batch is ``DEFAULT_BATCH`` images of ``samples_per_class`` each, but never more classes than
        the training split has (digits trains on 5); a batch the user set is left as given (the sampler
        refuses one that cannot be formed, with a hint).
        """
        if self.batch_size is not None:
            return self, None
        per_class = self.samples_per_class
        wanted = max(DEFAULT_BATCH // per_class, 2)
        classes = min(wanted, train_classes)
        note = None
        if classes < wanted:
            note = (
                f"batch {classes * per_class} = {classes} classes x {per_class} images: the training split has "
                f"{train_classes} classes, fewer than the {wanted} of the default batch of {wanted * per_class}"
            )
        return dataclasses.replace(self, batch_size=classes * per_class), note


RUN_CONFIG = "config.yaml"
# The fine-tuning options' "off" values: what a run written before they existed trained with. A run's config.yaml
# without them reads as these, and the config hash leaves them out at these values, so such runs still resume.
FINE_TUNING_OFF: dict[str, Any] = {
    "warmup_epochs": 0.0,
    "warmup_steps": None,
    "backbone_lr_mult": 1.0,
    "freeze_bn": False,
    "freeze_backbone_epochs": 0,
    "grad_clip": 0.0,
}


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved configuration a training run wrote into its directory (``RUN_DIR/config.yaml``)."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir}: no {RUN_CONFIG}, so not a run directory", hint="pass the --out folder of an edgedml train run"
        )
    written = load_yaml_mapping(path)
    missing = {key: value for key, value in FINE_TUNING_OFF.items() if key not in written}
    config = TrainConfig.from_sources(path, overrides=missing) if missing else TrainConfig.from_sources(path)
    if config.input_size is None:  # edgedml train always writes the resolved size
        raise CheckpointError(
            f"{path}: no input_size, so not a configuration edgedml train wrote",
            hint="restore the run's own config.yaml, or retrain",
        )
    return config


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist", hint="pass an existing YAML file to --config")
    loaded = parse_yaml(read_text_file(file, "config file"), str(file))
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{file}: expected a mapping of option: value, got {type(loaded).__name__}")
    return loaded


def read_text_file(path: Path, what: str = "file") -> str:
    """A UTF-8 text file's contents (a BOM is dropped); a ConfigError naming the file if it cannot be read as such."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line})",
            hint=f"save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > fixed{path.suffix} (latin-1 source)",
        ) from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read ({exc.strerror or type(exc).__name__})") from None


def parse_yaml(text: str, origin: str) -> Any:
    """``yaml.safe_load``; any failure (PyYAML's own constructors also raise ValueError and others, e.g. for
    ``2001-13-01``) is a ConfigError naming ``origin``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{origin}: not valid YAML ({first_line})") from None
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{origin}: a value YAML cannot read ({first_line})", hint="quote the value") from None


def suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys: " + ", ".join(known)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        option = "--" + name.replace("_", "-")
        raise ConfigError(f"{option} {value!r} is not one of {', '.join(choices)}", hint=suggest(value, list(choices)))


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def _example(name: str) -> str:
    """A hint that works: the option's default, which always passes validation."""
    default = _default(name)
    if default is None:
        return f"leave {_option(name)} out to use the data source's default"
    return f"for example {_option(name)} {default} (the default)"


def _int_range(name: str, value: int, low: int, high: int, unit: str = "") -> None:
    if not low <= value <= high:
        raise ConfigError(f"{_option(name)} must lie in {low}..{high}{unit}, got {value}", hint=_example(name))


def _number(name: str, value: float, low: float, low_open: bool = False) -> None:
    """A finite number above ``low`` (or at least ``low``); NaN and infinity are refused."""
    if not (math.isfinite(value) and (value > low if low_open else value >= low)):
        raise ConfigError(
            f"{_option(name)} must be a finite number {'>' if low_open else '>='} {low:g}, got {value}",
            hint=_example(name),
        )


_KINDS = {"int": "int (a whole number)", "float": "float (a number)", "bool": "true or false", "str": "str (text)"}


def _coerce_value(origin: str, name: str, target: str, value: Any, auto: bool = False) -> Any:
    """``value`` as ``target`` (int, float, bool or str), or a ConfigError naming ``origin: name``."""
    if target not in _KINDS:
        return value
    wanted = _KINDS[target] + (' or "auto"' if auto else "")
    default = _default(name)
    example = f"write e.g. {name}: {default} (the default)" if default is not None else f"remove {name} or {wanted}"
    if target == "bool":
        if not isinstance(value, bool):
            raise ConfigError(
                f"{origin}: {name} must be true or false, got {value!r}", hint=f"write {name}: true or {name}: false"
            )
        return value
    if target == "str":
        if isinstance(value, (list, tuple)) and name == "aux_dims":  # aux_dims: [512, 1024] in YAML
            return ",".join(str(item) for item in value)
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{origin}: {name} must be {wanted}, got {value!r}", hint=f'quote it: {name}: "..."')
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{origin}: {name} must be {wanted}, got {value!r}", hint=example)
    if target == "float":
        try:
            return float(value.strip() if isinstance(value, str) else value)
        except (ValueError, OverflowError):
            raise ConfigError(f"{origin}: {name} must be {wanted}, got {value!r}", hint=example) from None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{origin}: {name} must be an integer, got {value!r}", hint=example)
        return int(value)
    try:
        return int(value.strip())
    except ValueError:
        hint = example
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number) and number.is_integer():
            hint = f"write {name}: {int(number)}"
        raise ConfigError(f"{origin}: {name} must be {wanted}, got {value!r}", hint=hint) from None
