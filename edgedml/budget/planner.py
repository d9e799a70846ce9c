"""Predicting the peak memory of one training step, and fitting a configuration to a budget.

Probing for the largest batch by running into out-of-memory (Lightning's BatchSizeFinder,
accelerate) can freeze a Jetson or wake the kernel's OOM killer, so we estimate first:

- the model's step (forward, backward, optimizer step) is traced under PyTorch's
  ``FakeTensorMode``: every tensor has its real shape and dtype but no storage, so a batch of
  512 MobileNetV2 images costs nothing to "run". A stand-in loss drives the backward pass.
  With ``--amp`` the forward runs under autocast (CUDA fp16 on a GPU; on a CPU-only machine
  CPU autocast, whose bf16 has the same 2-byte elements);
- the loss and cross-batch memory step is traced on real tensors at the real S, M and D (it is
  small, and pytorch-metric-learning's miners have data-dependent shapes fake tensors cannot
  follow);
- parameters, gradients, optimizer state and the memory bank are counted exactly.

Peak = parameters + buffers + optimizer state + memory bank
       + max(model step peak, activations + loss step peak),
since the model's saved activations are all alive while the loss runs. The device profile's
fixed costs (CUDA context, the OS share of a Jetson's RAM) and a safety margin for allocator
fragmentation come on top when a configuration is fitted to a budget (docs/methods.md §5).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from edgedml.budget.device import DeviceMemory
from edgedml.budget.probes import probe_device
from edgedml.budget.profiles import load_profile
from edgedml.budget.trace import AllocationTimeline, running_peak
from edgedml.config import AUTO, MAX_BATCH, TrainConfig, load_run_config
from edgedml.errors import ConfigError
from edgedml.memory import resolve_memory_size
from edgedml.models import build_model
from edgedml.objective import StepOutputs, build_network, build_objective, make_optimizer
from edgedml.units import format_bytes, parse_bytes

log = logging.getLogger(__name__)


@dataclass
class StepEstimate:
    """Bytes of one steady-state training step at ``batch_size`` and ``memory_size``."""

    batch_size: int
    memory_size: int
    parameters: int
    buffers: int
    gradients: int
    optimizer_state: int
    cross_batch_memory: int
    activations: int
    loss_buffers: int
    model_step_peak: int  # transient peak of forward + backward + optimizer step (gradients included)

    @property
    def persistent(self) -> int:
        return self.parameters + self.buffers + self.optimizer_state + self.cross_batch_memory

    @property
    def peak(self) -> int:
        """Predicted ``torch.cuda.max_memory_allocated`` of a step."""
        return self.persistent + max(self.model_step_peak, self.activations + self.loss_buffers)

    @property
    def temporaries(self) -> int:
        named = self.persistent + self.gradients + self.activations + self.loss_buffers
        return max(0, self.peak - named)

    def breakdown(self) -> dict[str, int]:
        return {
            "parameters": self.parameters,
            "buffers": self.buffers,
            "gradients": self.gradients,
            "optimizer_state": self.optimizer_state,
            "activations": self.activations,
            "loss_buffers": self.loss_buffers,
            "cross_batch_memory": self.cross_batch_memory,
            "temporaries": self.temporaries,
        }

    def to_dict(self) -> dict:
        return {**asdict(self), "peak": self.peak, "breakdown": self.breakdown()}


def _trace_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class StepTracer:
    """Traces one configuration's training step at any batch and memory size.

    The fake training network (the model, plus S2SD's auxiliary heads), the optimizer and its
    state are built once; ``estimate`` re-traces the step for each (batch, memory) pair asked
    for. A ``--teacher`` adds its frozen weights and its no-grad forward pass.
    """

    def __init__(self, config: TrainConfig, input_size: int):
        self.config = config
        self.input_size = input_size
        self.device = _trace_device()
        self.fake_mode = FakeTensorMode()
        with self.fake_mode:
            self.network = build_network(config, build_model(config.backbone, config.dim))
            if self.device != "cpu":
                self.network = self.network.to(self.device)
            self.optimizer = make_optimizer(self.network, config)
            self._model_step(config.samples_per_class * 2)  # creates the optimizer state
        self.parameters = _tensor_bytes(self.network.parameters())
        self.buffers = _tensor_bytes(self.network.buffers())
        self.gradients = _tensor_bytes(p for p in self.network.parameters() if p.requires_grad)
        self.optimizer_state = _tensor_bytes(
            v for state in self.optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
        )
        self.teacher = _FakeTeacher(config.teacher, self.fake_mode, self.device) if config.teacher else None
        self._model_cache: dict[int, tuple[int, int]] = {}
        self._affine: tuple | bool | None = None
        self._loss_cache: dict[tuple[int, int], tuple[int, int]] = {}
        self._loss_polynomial: dict[int, list | None] = {}

    def _model_step(self, batch_size: int, timeline: AllocationTimeline | None = None) -> int:
        images = torch.empty(batch_size, 3, self.input_size, self.input_size, device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        amp_dtype = torch.float16 if self.device == "cuda" else torch.bfloat16
        with torch.autocast(self.device, dtype=amp_dtype, enabled=self.config.amp):
            embeddings, _features, aux = self.network(images)
        after_forward = timeline.mark() if timeline is not None else 0
        # A stand-in loss drives the backward pass through every output; the real one is traced apart.
        stand_in = embeddings.float().square().mean() + sum(a.float().square().mean() for a in aux)
        stand_in.backward()
        self.optimizer.step()
        return after_forward

    def _trace_model_step(self, batch_size: int) -> tuple[list[int], int]:
        """The model step's signed allocation sizes, in order, and the index where the forward pass ends."""
        with self.fake_mode, AllocationTimeline() as timeline:
            after_forward = self._model_step(batch_size, timeline)
        return timeline.deltas(), after_forward

    def model_step(self, batch_size: int) -> tuple[int, int]:
        """(activations alive after the forward pass, transient peak of the whole model step).

        A step's sequence of allocations does not depend on the batch size and each size is
        affine in it, so two traces give every event's size at any batch size exactly: the
        search for the largest batch then costs no further trace. If the two sequences differ
        (a model whose ops depend on the batch size) the step is traced at each size instead.
        """
        if batch_size in self._model_cache:
            return self._model_cache[batch_size]
        if self._affine is None:
            small, large = self.config.samples_per_class * 2, self.config.samples_per_class * 4
            (first, mark_first), (second, mark_second) = self._trace_model_step(small), self._trace_model_step(large)
            affine = len(first) == len(second) and mark_first == mark_second
            self._affine = (small, large, first, second, mark_first) if affine else False
        if self._affine:
            small, large, first, second, mark = self._affine
            deltas = [a + (b - a) * (batch_size - small) // (large - small) for a, b in zip(first, second, strict=True)]
        else:
            deltas, mark = self._trace_model_step(batch_size)
        # The input batch is created inside the trace (``_model_step``), so both figures hold it once.
        self._model_cache[batch_size] = (sum(deltas[:mark]), running_peak(deltas))
        return self._model_cache[batch_size]

    def _trace_loss_step(self, batch_size: int, memory_size: int) -> tuple[int, list[int]]:
        """(memory bank bytes, the objective's signed allocation sizes in order), on real tensors."""
        objective = build_objective(self.config, memory_size)
        generator = torch.Generator().manual_seed(0)
        per_class = self.config.samples_per_class
        labels = torch.arange(batch_size) // per_class
        bank_bytes = 0
        memory = objective.memory_loss
        if memory is not None:
            memory.fill_at_random(memory_size, per_class, generator)
            bank_bytes = _tensor_bytes(memory.memory.buffers())
        heads = self.network.aux_heads
        outputs = StepOutputs(
            embeddings=torch.randn(batch_size, self.config.dim, generator=generator, requires_grad=True),
            features=torch.randn(
                batch_size, self.network.model.backbone.num_features, generator=generator, requires_grad=True
            ),
            aux=[
                F.normalize(torch.randn(batch_size, d, generator=generator), dim=1).requires_grad_(True)
                for d in (heads.dims if heads else [])
            ],
        )
        if self.config.distill == "s2sd" and self.config.feature_distill:
            objective.loss.iteration.fill_(self.config.feature_distill_delay)  # plan for the step with every term
        with AllocationTimeline() as timeline:
            objective(outputs, labels).backward()
        return bank_bytes, timeline.deltas()

    def loss_step(self, batch_size: int, memory_size: int) -> tuple[int, int]:
        """(memory bank bytes, transient peak of the objective's forward + backward).

        Shadow's step allocates the same sequence at every batch size, each size a polynomial of
        degree <= 2 in it ((S, S) and (S, M) matrices), so three small traces give the sizes at any
        batch size exactly; losses whose allocations depend on the data (pytorch-metric-learning's
        miners) do not match across the three and are traced at each size instead.
        """
        key = (batch_size, memory_size)
        if key not in self._loss_cache:
            samples = self._loss_samples(memory_size)
            if samples is not None and batch_size not in dict(samples):
                bank = samples[0][1][0]
                deltas = _lagrange([(b, d) for b, (_, d) in samples], batch_size)
            else:
                bank, deltas = (
                    dict(samples)[batch_size] if samples is not None else self._trace_loss_step(batch_size, memory_size)
                )
            peak = running_peak(deltas)
            if self.teacher is not None:
                # its no-grad forward runs inside the objective, the student's activations alive
                peak += self.teacher.forward_peak(batch_size)
            self._loss_cache[key] = (bank, peak)
        return self._loss_cache[key]

    def _loss_samples(self, memory_size: int) -> list[tuple[int, tuple[int, list[int]]]] | None:
        if memory_size not in self._loss_polynomial:
            per_class = self.config.samples_per_class
            points = [(b, self._trace_loss_step(b, memory_size)) for b in (2 * per_class, 4 * per_class, 6 * per_class)]
            lengths = {len(deltas) for _, (_, deltas) in points}
            self._loss_polynomial[memory_size] = points if len(lengths) == 1 else None
        return self._loss_polynomial[memory_size]

    def estimate(self, batch_size: int, memory_size: int = 0) -> StepEstimate:
        activations, model_peak = self.model_step(batch_size)
        bank, loss_peak = self.loss_step(batch_size, memory_size)
        teacher_bytes = self.teacher.parameters if self.teacher is not None else 0
        return StepEstimate(
            batch_size=batch_size,
            memory_size=memory_size,
            parameters=self.parameters + teacher_bytes,
            buffers=self.buffers,
            gradients=self.gradients,
            optimizer_state=self.optimizer_state,
            cross_batch_memory=bank,
            activations=activations,
            loss_buffers=loss_peak,
            model_step_peak=model_peak,
        )


def _lagrange(samples: list[tuple[int, list[int]]], x: int) -> list[int]:
    """Each event's size at ``x`` from its sizes at the sample points.

    Exact for polynomials of degree < len(samples).
    """
    weights = []
    for i, (xi, _) in enumerate(samples):
        weight = 1.0
        for j, (xj, _) in enumerate(samples):
            if i != j:
                weight *= (x - xj) / (xi - xj)
        weights.append(weight)
    columns = zip(*(deltas for _, deltas in samples), strict=True)
    return [round(sum(w * d for w, d in zip(weights, column, strict=True))) for column in columns]


class _FakeTeacher:
    """A ``--teacher`` run's model on fake tensors: its weight bytes and its inference peak."""

    def __init__(self, run_dir: str, fake_mode, device: str):
        teacher_config = load_run_config(run_dir)
        self.input_size = teacher_config.input_size
        self.fake_mode = fake_mode
        with fake_mode:
            self.model = build_model(teacher_config.backbone, teacher_config.dim).eval()
            if device != "cpu":
                self.model = self.model.to(device)
        self.device = device
        self.parameters = _tensor_bytes(self.model.parameters()) + _tensor_bytes(self.model.buffers())

    def forward_peak(self, batch_size: int) -> int:
        """The teacher's no-grad forward, its input batch (resized to its own input size) counted once."""
        with self.fake_mode, torch.no_grad(), AllocationTimeline() as timeline:
            self.model(torch.empty(batch_size, 3, self.input_size, self.input_size, device=self.device))
        return timeline.peak_bytes()


# ---- fitting to a budget ---------------------------------------------------------------


@dataclass
class Budget:
    """What a configuration must fit in: ``available`` bytes for this process, less fixed costs."""

    available: int  # bytes this training process may use (its CUDA context included)
    fixed: int  # CUDA context (and cuDNN workspace) the process pays before any tensor
    safety_margin: float  # fraction of the predicted peak added for allocator fragmentation
    source: str  # where ``available`` came from

    def required(self, estimate: StepEstimate) -> int:
        return self.fixed + math.ceil(estimate.peak * (1.0 + self.safety_margin))

    def fits(self, estimate: StepEstimate) -> bool:
        return self.required(estimate) <= self.available


# A CUDA context with lazy module loading (CUDA >= 11.7) takes about this much device memory; a
# probed device does not say, so this typical figure is budgeted (profiles carry their own).
DEFAULT_CUDA_CONTEXT_BYTES = 512 << 20


def make_budget(device: DeviceMemory, budget_bytes: int | None = None, margin: float | None = None) -> Budget:
    """An explicit ``--budget`` wins; otherwise what the device (or profile) has free.

    A budget must lie between one byte and the device's total memory: more than the device has cannot be
    used, and planning for it would "fit" any configuration (ConfigError naming the device's total).
    """
    if budget_bytes is not None and not 1 <= budget_bytes <= device.total_bytes:
        total = format_bytes(device.total_bytes)
        asked = f"{budget_bytes / (1 << 30):.4g} GiB" if budget_bytes >= 1 else f"{budget_bytes} B"
        raise ConfigError(
            f"--budget {asked} is more than the {total} total of {device.name} ({device.source})"
            if budget_bytes >= 1
            else f"--budget {asked} is less than one byte",
            hint=f"give a --budget of at most {total}, or leave it out to use what the device has free",
        )
    if device.cuda_context_bytes is not None:
        fixed = device.cuda_context_bytes
    else:
        fixed = 0 if device.source == "host" else DEFAULT_CUDA_CONTEXT_BYTES
    safety = device.safety_margin if margin is None else margin
    if budget_bytes is not None:
        return Budget(budget_bytes, fixed, safety, "--budget")
    return Budget(device.free_bytes, fixed, safety, f"free memory of {device.name} ({device.source})")


@dataclass
class Plan:
    """The chosen configuration, its estimate, and the estimates searched on the way."""

    batch_size: int
    memory_size: int
    estimate: StepEstimate
    budget: Budget
    seconds: float

    def to_dict(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "memory_size": self.memory_size,
            "estimate": self.estimate.to_dict(),
            "required_bytes": self.budget.required(self.estimate),
            "budget": asdict(self.budget),
            "seconds": self.seconds,
        }


def _largest(fits, low: int, high: int) -> int | None:
    """Largest integer in [low, high] with ``fits`` true, for a monotone ``fits``; None if even ``low`` fails."""
    if not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def plan_training(
    config: TrainConfig,
    budget: Budget,
    input_size: int,
    train_images: int,
    auto_batch: bool,
    auto_memory: bool,
    tracer: StepTracer | None = None,
    train_classes: int | None = None,
) -> Plan:
    """Choose the largest batch (a multiple of K) and/or memory size whose predicted peak fits.

    With both automatic, the batch is fitted in half the budget first (a small batch with a
    large memory is the regime the memory exists for), then the memory fills the rest, up to
    the training set's size; if it holds the whole training set, the batch grows into what is
    left. Raises ConfigError saying the minimum needed when nothing fits.
    """
    started = time.perf_counter()
    tracer = tracer or StepTracer(config, input_size)
    per_class = config.samples_per_class
    memory_on = config.memory != "none"
    memory_size = 0 if (auto_memory or not memory_on) else resolve_memory_size(float(config.memory_size), train_images)
    batch_size = config.batch_size if not auto_batch else None
    if auto_batch:
        share = Budget(
            budget.available // 2 if auto_memory and memory_on else budget.available,
            budget.fixed,
            budget.safety_margin,
            budget.source,
        )
        most_classes = min(MAX_BATCH // per_class, train_classes or MAX_BATCH)  # a batch holds P distinct classes
        units = _largest(lambda k: share.fits(tracer.estimate(k * per_class, memory_size)), 2, max(2, most_classes))
        if units is None:
            _nothing_fits(tracer.estimate(2 * per_class, memory_size), budget, "--batch-size")
        batch_size = units * per_class
    if auto_memory and memory_on:
        found = _largest(
            lambda m: budget.fits(tracer.estimate(batch_size, m)), batch_size, max(batch_size, train_images)
        )
        if found is None:
            _nothing_fits(tracer.estimate(batch_size, batch_size), budget, "--memory-size")
        memory_size = found
        if auto_batch and memory_size >= train_images:
            # the memory holds the whole training set: the rest goes to the batch
            units = _largest(
                lambda k: budget.fits(tracer.estimate(k * per_class, memory_size)),
                batch_size // per_class,
                max(batch_size // per_class, most_classes),
            )
            batch_size = (units or batch_size // per_class) * per_class
    estimate = tracer.estimate(batch_size, memory_size)
    if not budget.fits(estimate):
        _nothing_fits(estimate, budget, "--batch-size or --memory-size")
    return Plan(batch_size, memory_size, estimate, budget, time.perf_counter() - started)


def _nothing_fits(smallest: StepEstimate, budget: Budget, option: str) -> None:
    need = budget.required(smallest)
    raise ConfigError(
        f"nothing fits: batch {smallest.batch_size} with memory {smallest.memory_size} needs {format_bytes(need)} "
        f"(peak {format_bytes(smallest.peak)} + fixed {format_bytes(budget.fixed)} "
        f"+ {budget.safety_margin:.0%} margin), "
        f"the budget is {format_bytes(budget.available)} ({budget.source})",
        hint=(
            f"raise --budget, lower {option}, --input-size or --dim, use a smaller --backbone, or enable --amp on CUDA"
        ),
    )


# ---- from a training configuration ---------------------------------------------------------


def device_for(config: TrainConfig) -> DeviceMemory:
    """The device a configuration is planned for: its ``--profile``, or the machine in hand."""
    if config.profile is not None:
        return load_profile(config.profile)
    return probe_device()


def budget_for(config: TrainConfig) -> tuple[DeviceMemory, Budget]:
    """The device ``config`` is planned for and its budget (``--budget``, or what the device has free)."""
    device = device_for(config)
    return device, make_budget(device, parse_bytes(config.budget) if config.budget else None)


def plan_config(
    config: TrainConfig,
    budget: Budget,
    input_size: int,
    train_images: int,
    train_classes: int,
    tracer: StepTracer | None = None,
) -> Plan:
    """``plan_training`` with the sizes ``config`` leaves ``auto`` chosen and the others checked."""
    return plan_training(
        config,
        budget,
        input_size,
        train_images,
        auto_batch=config.batch_size == AUTO,
        auto_memory=config.memory_size == AUTO,
        tracer=tracer,
        train_classes=train_classes,
    )


def plan_for_config(
    config: TrainConfig, input_size: int, train_images: int, train_classes: int
) -> tuple[Plan, DeviceMemory]:
    """Fit ``config`` to its budget: the automatic sizes are chosen, fixed ones only checked."""
    device, budget = budget_for(config)
    plan = plan_config(config, budget, input_size, train_images, train_classes)
    log.info(
        "memory plan for %s: batch %d, memory %d, predicted peak %s, %s needed of %s (%s), planned in %.1f s",
        device.name,
        plan.batch_size,
        plan.memory_size,
        format_bytes(plan.estimate.peak),
        format_bytes(budget.required(plan.estimate)),
        format_bytes(budget.available),
        budget.source,
        plan.seconds,
    )
    return plan, device


def cap_cuda_process(budget: Budget, device: torch.device) -> float | None:
    """Cap this process's CUDA allocations at the budget, so an overrun fails in-process with our message
    instead of starving the machine. Returns the fraction set, or None off CUDA."""
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, max(0.0, (budget.available - budget.fixed) / total))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction
