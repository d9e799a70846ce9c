"""The training data pipeline on CPU: how long a step waits for its batch against the model step, by DataLoader workers.

The claim under test (the data-pipeline issue): with the trainer's own data path, the data-loading share of a
training step is at most 10% of the model step (``wait / model step <= 0.10``) at 224 px, batch 32.

What it runs, all through the library:

- an image folder of generated photo-like JPEGs (smooth colour gradients, flat ellipses and rectangles with
  hard edges, sensor-like noise; quality 90: a 500x375 image is about 50 KB), ``--classes`` 20 x
  ``--per-class`` 16 at ``--image-size`` 500x375 (``1600x1200`` or ``4000x3000`` for phone photos), written
  once into ``--data DIR`` (reused when present; default a temporary folder);
- (a) the model step alone, per backbone (``--backbones``, default mobilenetv2 resnet18;
  ``edgedml.models.build_model(name, 128)``): forward, Shadow loss (``edgedml.losses.ShadowLoss``, its
  defaults) on the embeddings, backward, AdamW step, on pre-made seeded (32, 3, 224, 224) tensors, 8 classes x
  4 images; ``--warmup`` untimed steps, then the median of ``--model-steps`` steps;
- (b) the full loop, per backbone and ``--workers`` count (default 0 1 2), the trainer's path
  (``Trainer._train_epochs``): ``ImageDataset`` over the folder with ``train_transform(224, crop_scale=0.6,
  hflip=True)`` (JPEGs decoded at reduced scale down to the transform's ``decode_side``), ``(index, seed)`` key
  batches from ``PKSampler`` (P x K = ``--batch`` 8x4) and ``sample_seed``, ``DataLoader(dataset,
  batch_sampler=keys, collate_fn=collate_skip_bad, num_workers=workers)``, then the same model step. Per step:
  the wait (from the end of the previous step to the batch in hand) and the model step. The first batch (worker
  start-up included) is reported apart; the next ``--steps`` are the steady state. Reported: mean wait, mean
  model step in the loop, the data-wait share (mean wait / mean model step), the loop's model step against the
  model step alone (workers compete with the model's threads for the same cores: a batch that arrives on time
  can still cost a slower step), images/s, and a verdict per row (MET: share <= 10%);
- decode + augment alone, per image, for each ``--decode-sizes`` (default 500x375 and 1600x1200): a full decode
  against a reduced one (``load_image(path, min_side=train_transform(...).decode_side)``: 334 px at 224),
  each followed by the training augmentation, at 1 torch thread (as in a DataLoader worker); median ms per
  image over the images and ``--reps`` repetitions, the ratio to the full decode measured in the same run, and
  the mean |difference| (0..255) between the two decodes once resized to the input size.

PyTorch's intra-op threads are left at its default unless ``--threads`` is given; the report prints the count.
DataLoader workers run one thread each (PyTorch sets that in every worker), and so does the decode timing;
with 0 workers the main process decodes at the default count.

Run (from the repository root). The default run takes 40 model steps at 224 px, batch 32 (per backbone 1 + 4
alone and 3 x (1 + 4) in the loop): about 2-6 minutes on 2 quiet CPU cores at 3-8 s per step (an estimate
from steps timed on a loaded machine; the report prints its own wall time); ``--steps 2 --model-steps 2``
takes 24 steps:

    python benchmarks/data_pipeline.py                                    # 500x375 photos, 224 px, workers 0 1 2
    python benchmarks/data_pipeline.py --json data_pipeline.json --data /tmp/edgedml-photos
    python benchmarks/data_pipeline.py --image-size 1600x1200 --decode-sizes 500x375 1600x1200 4000x3000
    python benchmarks/data_pipeline.py --quick                            # smoke run: 64 px, 2 steps, small images
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchmark_tools import benchmark_parser, log_progress, markdown_table, positive_int, write_json_file
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from edgedml.data import ImageDataset, PKSampler, collate_skip_bad, load_image, load_source, sample_seed
from edgedml.data.transforms import Compose, pil_to_tensor, resize, train_transform
from edgedml.export.bench import torch_threads
from edgedml.losses import ShadowLoss
from edgedml.models import backbones, build_model

TARGET_SHARE = 0.10  # mean batch wait / mean model step, at most
BUSY_LOAD = 0.5  # a 1-minute load average above this before the run: something else is running
CROP_SCALE = 0.6  # the library's default random-resized-crop floor for image folders
DIM = 128
DECODE_THREADS = 1  # decode + augment alone runs as a DataLoader worker runs it
JPEG_QUALITY = 90
SEED = 0
QUICK = {
    "input_size": 64,
    "classes": 6,
    "per_class": 8,
    "image_size": (160, 120),
    "batch": (4, 4),
    "workers": [0, 1],
    "steps": 2,
    "model_steps": 2,
    "warmup": 1,
    "decode_sizes": [(500, 375), (1600, 1200)],
    "decode_images": 2,
    "reps": 2,
}


# ---- images -------------------------------------------------------------------------------
def photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Photo-like content: smooth colour gradients, flat shapes with hard edges, and sensor-like noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gradients = np.stack(
        [128 + 60 * np.sin(a * 6 * x / width + b * 6 * y / height + 3 * p) for a, b, p in rng.uniform(-1, 1, (3, 3))],
        axis=-1,
    )
    image = Image.fromarray(np.clip(gradients, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.03, 0.2) * width
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=tuple(rng.integers(0, 256, 3).tolist()))
        draw.rectangle([cx, cy, cx + radius, cy + radius / 2], fill=tuple(rng.integers(0, 256, 3).tolist()))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_photos(folder: Path, size: tuple[int, int], names: list[str], seed: int) -> list[Path]:
    """``folder/<name>.jpg`` for each name, each a distinct seeded photo; files already there are kept."""
    paths = []
    for index, name in enumerate(names):
        path = folder / f"{name}.jpg"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(*size, np.random.default_rng([seed, index])).save(path, format="JPEG", quality=JPEG_QUALITY)
        paths.append(path)
    return paths


def image_folder(data: Path, size: tuple[int, int], classes: int, per_class: int) -> Path:
    """The loop's ImageFolder; its name holds every generation setting, so a rerun reuses it."""
    root = data / f"loop-{size_text(size)}-{classes}x{per_class}-q{JPEG_QUALITY}"
    names = [f"class{c:02d}/{i:03d}" for c in range(classes) for i in range(per_class)]
    write_photos(root, size, names, SEED)
    return root


def decode_images(data: Path, size: tuple[int, int], count: int) -> list[Path]:
    return write_photos(data / f"decode-{size_text(size)}-q{JPEG_QUALITY}", size, [f"{i:03d}" for i in range(count)], 1)


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# ---- the model step -----------------------------------------------------------------------
class ModelStep:
    """One training step: forward, Shadow loss on the embeddings, backward, AdamW."""

    def __init__(self, backbone: str):
        torch.manual_seed(SEED)
        self.model = build_model(backbone, DIM).train()
        self.loss = ShadowLoss()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        loss = self.loss(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def time_model_alone(step: ModelStep, args: argparse.Namespace) -> list[float]:
    """Seconds of each timed step on pre-made seeded tensors, after ``args.warmup`` untimed ones."""
    classes, per_class = args.batch
    generator = torch.Generator().manual_seed(SEED)
    images = torch.randn(classes * per_class, 3, args.input_size, args.input_size, generator=generator)
    labels = torch.arange(classes).repeat_interleave(per_class)
    for _ in range(args.warmup):
        step(images, labels)
    seconds = []
    for _ in range(args.model_steps):
        started = time.perf_counter()
        step(images, labels)
        seconds.append(time.perf_counter() - started)
    return seconds


# ---- the loop -----------------------------------------------------------------------------
@dataclass
class LoopResult:
    backbone: str
    workers: int
    batch: int
    first_wait_s: float  # the first batch: DataLoader and worker start-up included
    waits_s: list[float]  # steady state, per step
    steps_s: list[float]  # steady state, per step
    model_alone_s: float  # median of the model step alone, same backbone

    @property
    def mean_wait(self) -> float:
        return statistics.fmean(self.waits_s)

    @property
    def mean_step(self) -> float:
        return statistics.fmean(self.steps_s)

    @property
    def share(self) -> float:
        return self.mean_wait / self.mean_step

    @property
    def step_slowdown(self) -> float:
        return self.mean_step / self.model_alone_s

    @property
    def images_per_s(self) -> float:
        return self.batch * len(self.steps_s) / (sum(self.waits_s) + sum(self.steps_s))

    @property
    def met(self) -> bool:
        return self.share <= TARGET_SHARE

    def to_dict(self) -> dict[str, Any]:
        derived = ("mean_wait", "mean_step", "share", "step_slowdown", "images_per_s", "met")
        return {**asdict(self), **{name: getattr(self, name) for name in derived}}


def key_batches(dataset: ImageDataset, batch: tuple[int, int], count: int) -> list[list[tuple[int, int]]]:
    """``count`` batches of (index, seed) keys, epoch after epoch, as ``Trainer._train_epochs`` builds them."""
    sampler = PKSampler(dataset.labels, *batch, seed=SEED)
    keys: list[list[tuple[int, int]]] = []
    epoch = 0
    while len(keys) < count:
        for b, indices in enumerate(sampler.batches(epoch)):
            keys.append([(index, sample_seed(SEED, epoch, b, pos)) for pos, index in enumerate(indices)])
        epoch += 1
    return keys[:count]


def time_loop(
    step: ModelStep, dataset: ImageDataset, workers: int, args: argparse.Namespace
) -> tuple[float, list, list]:
    """(first wait, steady waits, steady model steps) in seconds over 1 + ``args.steps`` batches."""
    keys = key_batches(dataset, args.batch, 1 + args.steps)
    loader = DataLoader(dataset, batch_sampler=keys, collate_fn=collate_skip_bad, num_workers=workers)
    waits, steps = [], []
    step_ended = time.perf_counter()
    for batch in loader:
        arrived = time.perf_counter()
        images, labels, _ = batch
        step(images, labels)
        waits.append(arrived - step_ended)
        step_ended = time.perf_counter()
        steps.append(step_ended - arrived)
    return waits[0], waits[1:], steps[1:]


# ---- decode + augment ---------------------------------------------------------------------
@dataclass
class DecodeResult:
    size: str
    mode: str  # "full" or "draft"
    min_side: int | None
    decoded: str  # WxH of the decoded image
    jpeg_kb: float  # mean file size
    decode_ms: float  # median per image
    augment_ms: float
    total_ms: float
    full_total_ms: float  # the full decode's total, same run
    mean_abs_difference: float  # 0..255, against the full decode, both resized to the input size


def time_decode(paths: list[Path], transform: Compose, args: argparse.Namespace, size: tuple[int, int]) -> list:
    """A full and a reduced decode of every image, each followed by ``transform``; round-robin over ``args.reps``."""
    sides = {"full": None, "draft": transform.decode_side}
    timings: dict[str, dict[str, list[float]]] = {mode: {"decode": [], "augment": []} for mode in sides}
    for path in paths:  # untimed: the file in the page cache, the code paths warm
        for side in sides.values():
            transform(pil_to_tensor(load_image(str(path), min_side=side)), torch.Generator().manual_seed(0))
    for rep in range(args.reps):
        for index, path in enumerate(paths):
            for mode, side in sides.items():
                started = time.perf_counter()
                image = pil_to_tensor(load_image(str(path), min_side=side))
                decoded = time.perf_counter()
                transform(image, torch.Generator().manual_seed(rep * len(paths) + index))
                timings[mode]["decode"].append(decoded - started)
                timings[mode]["augment"].append(time.perf_counter() - decoded)
    totals = {mode: statistics.median(map(sum, zip(*t.values(), strict=True))) for mode, t in timings.items()}
    kilobytes = statistics.fmean(path.stat().st_size for path in paths) / 1024
    results = []
    for mode, side in sides.items():
        differences = [difference(path, side, args.input_size) for path in paths]
        decoded = load_image(str(paths[0]), min_side=side).size
        results.append(
            DecodeResult(
                size=size_text(size),
                mode=mode,
                min_side=side,
                decoded=size_text(decoded),
                jpeg_kb=kilobytes,
                decode_ms=1000 * statistics.median(timings[mode]["decode"]),
                augment_ms=1000 * statistics.median(timings[mode]["augment"]),
                total_ms=1000 * totals[mode],
                full_total_ms=1000 * totals["full"],
                mean_abs_difference=255 * statistics.fmean(differences),
            )
        )
    return results


def difference(path: Path, min_side: int | None, size: int) -> float:
    """Mean |full decode - decode at ``min_side``| on the 0..1 scale, both resized to ``size`` x ``size``."""
    full = resize(pil_to_tensor(load_image(str(path))), size)
    return float((full - resize(pil_to_tensor(load_image(str(path), min_side)), size)).abs().mean())


# ---- report -------------------------------------------------------------------------------
def model_table(alone: dict[str, list[float]], args: argparse.Namespace) -> str:
    header = ["backbone", "input", "batch", "median step ms", "min ms", "max ms", "img/s"]
    batch = args.batch[0] * args.batch[1]
    rows = [
        [
            name,
            f"{args.input_size} px",
            str(batch),
            f"{1000 * statistics.median(s):.0f}",
            f"{1000 * min(s):.0f}",
            f"{1000 * max(s):.0f}",
            f"{batch / statistics.median(s):.1f}",
        ]
        for name, s in alone.items()
    ]
    return markdown_table(header, rows)


def loop_table(results: list[LoopResult]) -> str:
    header = [
        "backbone",
        "workers",
        "first batch s",
        "mean wait ms",
        "max wait ms",
        "model step ms",
        "wait / model step",
        "step × alone",
        "img/s",
        "target <= 10%",
    ]
    rows = [
        [
            r.backbone,
            str(r.workers),
            f"{r.first_wait_s:.2f}",
            f"{1000 * r.mean_wait:.0f}",
            f"{1000 * max(r.waits_s):.0f}",
            f"{1000 * r.mean_step:.0f}",
            f"{100 * r.share:.1f}%",
            f"{r.step_slowdown:.2f}×",
            f"{r.images_per_s:.1f}",
            "MET" if r.met else "MISSED",
        ]
        for r in results
    ]
    return markdown_table(header, rows)


def decode_table(results: list[DecodeResult]) -> str:
    header = [
        "image",
        "JPEG KB",
        "decode",
        "decoded to",
        "decode ms",
        "augment ms",
        "decode + augment ms",
        "× full",
        "mean |Δ| (0-255)",
    ]
    rows = [
        [
            r.size,
            f"{r.jpeg_kb:.0f}",
            "full" if r.min_side is None else f"draft (side >= {r.min_side})",
            r.decoded,
            f"{r.decode_ms:.1f}",
            f"{r.augment_ms:.1f}",
            f"{r.total_ms:.1f}",
            f"{r.total_ms / r.full_total_ms:.2f}×",
            f"{r.mean_abs_difference:.2f}",
        ]
        for r in results
    ]
    return markdown_table(header, rows)


def verdicts(results: list[LoopResult], decodes: list[DecodeResult]) -> list[str]:
    lines = []
    for r in results:
        lines.append(
            f"{'MET' if r.met else 'MISSED'}: {r.backbone}, {r.workers} worker(s): the loop waits "
            f"{1000 * r.mean_wait:.0f} ms per step for its batch, {100 * r.share:.1f}% of the "
            f"{1000 * r.mean_step:.0f} ms model step (target <= {100 * TARGET_SHARE:.0f}%); "
            f"the model step takes {r.step_slowdown:.2f}× its time alone"
        )
    for r in decodes:
        if r.mode != "draft":
            continue
        if r.decoded == r.size:
            lines.append(
                f"draft at {r.size}: no reduction possible (the shorter side is below 2× the {r.min_side} px needed), "
                "so the same decode as the full one"
            )
            continue
        ratio = r.total_ms / r.full_total_ms
        lines.append(
            f"draft at {r.size}: decoded at {r.decoded}; decode + augment {ratio:.2f}× the full decode's time "
            f"({'pays' if ratio < 0.9 else 'no gain'}), mean |Δ| {r.mean_abs_difference:.2f} / 255 once resized"
        )
    return lines


def report(
    alone: dict[str, list[float]],
    loops: list[LoopResult],
    decodes: list[DecodeResult],
    args: argparse.Namespace,
    total_s: float,
    load: float | None,
) -> str:
    classes, per_class = args.batch
    threads = "set by --threads" if args.threads else "PyTorch's default"
    parts = [
        f"Model step alone (forward + Shadow loss + backward + AdamW, {DIM}-d, pre-made tensors, "
        f"{classes} classes x {per_class}; {args.warmup} warm-up step(s), then {args.model_steps}):",
        "",
        model_table(alone, args),
        "",
        f"Full loop ({args.image_size[0]}x{args.image_size[1]} JPEGs, {args.classes} classes x {args.per_class}; "
        f"ImageDataset + train_transform({args.input_size}, crop_scale={CROP_SCALE}, hflip) + collate_skip_bad + "
        f"DataLoader over P x K key batches; the first batch, then {args.steps} steady steps; "
        '"step × alone": the loop\'s model step against the median step alone):',
        "",
        loop_table(loops),
        "",
        f"Decode + augment per image ({args.decode_images} images x {args.reps} repetitions, median; "
        f"train_transform({args.input_size}) after each decode; {DECODE_THREADS} torch thread, as in a worker):",
        "",
        decode_table(decodes),
        "",
        *verdicts(loops, decodes),
        "",
        f"Total wall time {total_s:.0f} s ({total_s / 60:.1f} min); torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s) ({threads}), "
        f"{os.cpu_count()} CPUs, 1-minute load average {'n/a' if load is None else f'{load:.1f}'} before the run.",
    ]
    return "\n".join(parts)


# ---- command line -------------------------------------------------------------------------
def image_size(text: str) -> tuple[int, int]:
    """argparse type: ``WxH``, both positive."""
    try:
        width, height = (positive_int(part) for part in text.lower().split("x"))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 500x375, not {text!r}") from None
    return width, height


def classes_by_images(text: str) -> tuple[int, int]:
    """argparse type: ``PxK``, e.g. 8x4."""
    try:
        return image_size(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected CLASSESxIMAGES such as 8x4, not {text!r}") from None


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(
        __doc__.split("\n\n")[0].replace("\n", " "),
        threads="the model step and the main process's decoding",
        json_out="the raw numbers",
        quick="64 px, batch 4x4, 6 classes x 8 images of 160x120, workers 0 1, 2 steps",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    option = parser.add_argument
    option("--backbones", nargs="+", choices=backbones.names(), default=["mobilenetv2", "resnet18"])
    option("--workers", nargs="+", type=non_negative_int, metavar="N", help="DataLoader workers (default 0 1 2)")
    option("--input-size", type=positive_int, metavar="PX", help="input side (default 224)")
    option("--batch", type=classes_by_images, metavar="PxK", help="classes x images per batch (default 8x4)")
    option("--steps", type=positive_int, metavar="N", help="steady loop steps after the first (default 4)")
    option("--model-steps", type=positive_int, metavar="N", help="timed model steps alone (default 4)")
    option("--warmup", type=non_negative_int, metavar="N", help="untimed model steps alone (default 1)")
    option("--classes", type=positive_int, metavar="N", help="classes in the folder (default 20)")
    option("--per-class", type=positive_int, metavar="N", help="images per class (default 16)")
    option("--image-size", type=image_size, metavar="WxH", help="the loop's JPEGs (default 500x375)")
    option("--decode-sizes", nargs="+", type=image_size, metavar="WxH", help="default 500x375 1600x1200")
    option("--decode-images", type=positive_int, metavar="N", help="images per decode size (default 4)")
    option("--reps", type=positive_int, metavar="N", help="decode repetitions per image (default 3)")
    option("--data", type=Path, metavar="DIR", help="folder for the generated images, kept and reused")
    args = parser.parse_args(argv)
    defaults = {
        "input_size": 224,
        "classes": 20,
        "per_class": 16,
        "image_size": (500, 375),
        "batch": (8, 4),
        "workers": [0, 1, 2],
        "steps": 4,
        "model_steps": 4,
        "warmup": 1,
        "decode_sizes": [(500, 375), (1600, 1200)],
        "decode_images": 4,
        "reps": 3,
    }
    for name, default in (QUICK if args.quick else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.batch[0] > args.classes:
        parser.error(
            f"--batch {args.batch[0]}x{args.batch[1]} needs {args.batch[0]} classes, --classes is {args.classes}"
        )
    return args


@contextmanager
def data_folder(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="data-pipeline-bench-") as tmp:
        yield Path(tmp)


def run(args: argparse.Namespace, data: Path) -> tuple[dict[str, list[float]], list[LoopResult], list[DecodeResult]]:
    started = time.perf_counter()
    root = image_folder(data, args.image_size, args.classes, args.per_class)
    source = load_source(str(root))
    class_to_index = {name: i for i, name in enumerate(source.classes)}
    transform = train_transform(args.input_size, CROP_SCALE, hflip=True)
    dataset = ImageDataset(source.samples, class_to_index, transform)
    log_progress(f"{len(source.samples)} JPEGs in {root} ({time.perf_counter() - started:.0f} s)")
    alone: dict[str, list[float]] = {}
    loops: list[LoopResult] = []
    for backbone in args.backbones:
        step = ModelStep(backbone)
        alone[backbone] = time_model_alone(step, args)
        log_progress(f"{backbone}: model step alone, median {1000 * statistics.median(alone[backbone]):.0f} ms")
        for workers in args.workers:
            first, waits, steps = time_loop(step, dataset, workers, args)
            batch = args.batch[0] * args.batch[1]
            loops.append(LoopResult(backbone, workers, batch, first, waits, steps, statistics.median(alone[backbone])))
            log_progress(f"{backbone}, {workers} worker(s): wait share {100 * loops[-1].share:.1f}%")
    decodes: list[DecodeResult] = []
    for size in args.decode_sizes:
        paths = decode_images(data, size, args.decode_images)
        with torch_threads(DECODE_THREADS):
            decodes += time_decode(paths, transform, args, size)
        log_progress(f"decode {size_text(size)}: " + ", ".join(f"{r.mode} {r.total_ms:.1f} ms" for r in decodes[-2:]))
    return alone, loops, decodes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log_progress(
        f"backbones {' '.join(args.backbones)} at {args.input_size} px, batch {args.batch[0]}x{args.batch[1]}, "
        f"workers {' '.join(map(str, args.workers))}; {torch.get_num_threads()} torch thread(s)"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > BUSY_LOAD:
        log_progress(f"warning: the machine is busy (1-minute load average {load:.1f}): timings will be noisy")
    started = time.perf_counter()
    with data_folder(args.data) as data:
        alone, loops, decodes = run(args, data)
    total = time.perf_counter() - started
    if args.json:  # first: the raw numbers survive whatever happens to the report
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
        write_json_file(
            args.json,
            "data_pipeline",
            {
                "settings": settings,
                "load_average_before": load,
                "total_seconds": total,
                "model_alone_s": alone,
                "loop": [r.to_dict() for r in loops],
                "decode": [asdict(r) for r in decodes],
                "verdicts": verdicts(loops, decodes),
            },
        )
        log_progress(f"raw numbers written to {args.json}")
    print(report(alone, loops, decodes, args, total, load))


if __name__ == "__main__":
    main()
