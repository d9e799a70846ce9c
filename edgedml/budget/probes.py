"""Device probes: read how much memory the machine in hand offers for training, without allocating any.

``probe_device`` decides which probe to trust, in this order:

1. A Jetson (Tegra model file under ``/proc/device-tree`` or ``/etc/nv_tegra_release``, or a CUDA
   device that torch reports as ``is_integrated``): ``probe_jetson`` reads ``/proc/meminfo``. The GPU
   shares system RAM, so MemAvailable is what a training run can get; NVML is never asked there (its
   memory queries are not supported on Tegra, and ``torch.cuda.mem_get_info`` ignores reclaimable page
   cache, so it under-reports).
2. A discrete CUDA GPU: ``probe_nvml`` (``nvidia-ml-py``, the ``nvml`` extra) reads total/free/used,
   the driver's reserved memory, and what other processes hold, without creating a CUDA context.
3. CUDA without NVML: ``probe_cuda`` calls ``torch.cuda.mem_get_info``, which creates a CUDA context
   (a few hundred MiB on the device, and seconds), hence its place after NVML.
4. No CUDA device torch can use: ``probe_host`` reads host memory, and training runs on the CPU.

A probe that cannot answer raises ``ProbeUnavailable(reason)``; ``probe_device`` records the reason in
``DeviceMemory.fallbacks`` (``"nvml: NVMLError_LibraryNotFound: ..."``) and tries the next one, so a
missing library or an unsupported query never ends in a traceback.

Nothing here finds the budget by allocating until out-of-memory: on a Jetson that pushes the whole system
(desktop, SSH session included) into swap or the OOM killer and can freeze the board for minutes.
torch is imported inside the functions that need it, never at module level.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedml.budget.device import DeviceMemory
from edgedml.errors import ConfigError

MEMINFO = "/proc/meminfo"
DEVICE_TREE_MODEL = "/proc/device-tree/model"
TEGRA_RELEASE = "/etc/nv_tegra_release"
ALLOC_CONF_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")

KIB = 1024
# Jetson families by the words of their device-tree model, newest first ("Orin Nano" is an Orin).
JETSON_COMPUTE_CAPABILITY = (("orin", (8, 7)), ("xavier", (7, 2)), ("tx2", (6, 2)), ("nano", (5, 3)), ("tx1", (5, 3)))
JETSON_MODEL_WORDS = ("jetson", "orin", "xavier", "nano", "tegra")


class ProbeUnavailable(Exception):
    """A probe cannot answer on this machine; ``reason`` is one line, prefixed with the probe's name."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class CudaDevice:
    """What torch tells about a CUDA device before any context exists (``get_device_properties``)."""

    name: str
    integrated: bool
    uuid: str | None
    compute_capability: tuple[int, int]


# ---- the decision -------------------------------------------------------------------------


def probe_device(
    index: int = 0,
    *,
    meminfo_path: str | os.PathLike = MEMINFO,
    model_path: str | os.PathLike = DEVICE_TREE_MODEL,
    tegra_release_path: str | os.PathLike = TEGRA_RELEASE,
) -> DeviceMemory:
    """The memory of CUDA device ``index`` (torch's numbering), or of the host when torch has no CUDA device.

    The paths are parameters so that tests can stand in for a Jetson. Raises ``ConfigError`` only when not
    even host memory can be read (then plan with ``--profile``).
    """
    fallbacks: list[str] = []
    tegra_model = read_tegra_model(model_path, tegra_release_path)
    cuda_device: CudaDevice | None = None
    if tegra_model is None:  # on a Jetson, meminfo is read before torch loads any CUDA library
        try:
            cuda_device = visible_cuda_device(index)
        except ProbeUnavailable as exc:
            fallbacks.append(exc.reason)

    if tegra_model is not None or (cuda_device is not None and cuda_device.integrated):
        attempts = [
            lambda: probe_jetson(
                meminfo_path,
                model_path=model_path,
                tegra_release_path=tegra_release_path,
                name=cuda_device.name if cuda_device else None,
                compute_capability=cuda_device.compute_capability if cuda_device else None,
            )
        ]
    elif cuda_device is not None:
        attempts = [lambda: probe_nvml(index, uuid=cuda_device.uuid), lambda: probe_cuda(index)]
    else:
        attempts = []
    attempts.append(lambda: probe_host(meminfo_path))

    for attempt in attempts:
        try:
            memory = attempt()
        except ProbeUnavailable as exc:
            fallbacks.append(exc.reason)
            continue
        memory.fallbacks = fallbacks + memory.fallbacks
        return memory
    raise ConfigError(
        "cannot read the memory of this machine: " + "; ".join(fallbacks),
        hint="plan for a known device with --profile NAME (edgedml profiles list)",
    )


def read_tegra_model(
    model_path: str | os.PathLike = DEVICE_TREE_MODEL, tegra_release_path: str | os.PathLike = TEGRA_RELEASE
) -> str | None:
    """The Jetson's model string ("NVIDIA Jetson Orin Nano Developer Kit"), or None on other machines.

    Some boards' device-tree model lacks "NVIDIA" ("Jetson AGX Orin Developer Kit"), so "Jetson" alone
    counts, as does "NVIDIA" with a family word; containers built on ``l4t-base`` may only have
    ``/etc/nv_tegra_release``.
    """
    model = _read_text(model_path)
    if model is not None:
        model = model.replace("\x00", "").strip()
        lowered = model.lower()
        if "jetson" in lowered or ("nvidia" in lowered and any(word in lowered for word in JETSON_MODEL_WORDS)):
            return model
    if Path(tegra_release_path).is_file():
        return "NVIDIA Jetson (L4T)"
    return None


def visible_cuda_device(index: int = 0) -> CudaDevice:
    """torch's view of CUDA device ``index``; ``ProbeUnavailable`` when torch cannot train on a CUDA device."""
    try:
        import torch
    except ImportError:
        raise ProbeUnavailable("cuda: torch is not installed") from None
    if not torch.cuda.is_available():
        raise ProbeUnavailable(
            "cuda: torch sees no CUDA device (CPU-only build, no driver, or CUDA_VISIBLE_DEVICES empty)"
        )
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise ProbeUnavailable(f"cuda: no CUDA device {index} (torch sees {count})")
    try:
        properties = torch.cuda.get_device_properties(index)
    except RuntimeError as exc:  # e.g. "CUDA unknown error" after a laptop resumes from suspend
        raise ProbeUnavailable(f"cuda: {str(exc).splitlines()[0]}") from None
    uuid = getattr(properties, "uuid", None)
    return CudaDevice(
        name=properties.name,
        integrated=bool(getattr(properties, "is_integrated", False)),
        uuid=str(uuid) if uuid is not None else None,
        compute_capability=(properties.major, properties.minor),
    )


# ---- the probes -----------------------------------------------------------------------------


def probe_nvml(index: int = 0, uuid: str | None = None) -> DeviceMemory:
    """Discrete GPU memory through NVML (``import pynvml`` from the ``nvidia-ml-py`` package).

    ``uuid`` (torch's ``get_device_properties(i).uuid``) picks the same GPU as torch even when
    CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER renumber devices; without it, ``index`` is NVML's numbering.
    With the v2 memory query (driver >= 510), ``reserved_bytes`` is what the driver keeps for itself; it is
    counted in ``used_bytes`` so that total = free + used holds for every probe.
    """
    try:
        import pynvml
    except ImportError:
        raise ProbeUnavailable("nvml: nvidia-ml-py is not installed (pip install 'edgedml[nvml]')") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise ProbeUnavailable(f"nvml: {_describe(exc)}") from None
    try:
        if uuid is not None:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        total, free, reserved = _nvml_memory(pynvml, handle)
        return DeviceMemory(
            source="nvml",
            name=_text(pynvml.nvmlDeviceGetName(handle)),
            total_bytes=total,
            free_bytes=free,
            used_bytes=total - free,
            reserved_bytes=reserved,
            other_processes_bytes=_other_processes_bytes(pynvml, handle),
            driver=_text(pynvml.nvmlSystemGetDriverVersion()),
            compute_capability=_capability(pynvml.nvmlDeviceGetCudaComputeCapability(handle)),
        )
    except pynvml.NVMLError as exc:
        raise ProbeUnavailable(f"nvml: {_describe(exc)}") from None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def probe_jetson(
    meminfo_path: str | os.PathLike = MEMINFO,
    *,
    model_path: str | os.PathLike = DEVICE_TREE_MODEL,
    tegra_release_path: str | os.PathLike = TEGRA_RELEASE,
    name: str | None = None,
    compute_capability: tuple[int, int] | None = None,
) -> DeviceMemory:
    """Memory of an integrated GPU (Jetson) from ``/proc/meminfo``: CPU and GPU draw on the same RAM.

    total = MemTotal, free = MemAvailable (free plus reclaimable cache), used = total - free.
    NvMapMemUsed, where the L4T kernel reports it, is the memory already mapped for GPU and other
    accelerator buffers (camera, display, other CUDA programs); it goes into ``other_processes_bytes``
    and is part of ``used_bytes``, not in addition to it. Read before this process creates a CUDA
    context, it holds nothing of ours. The compute capability, unless given, comes from the model name.
    """
    fields = read_meminfo(meminfo_path, "jetson")
    for key in ("MemTotal", "MemAvailable"):
        if key not in fields:
            raise ProbeUnavailable(f"jetson: {meminfo_path} has no {key}")
    model = read_tegra_model(model_path, tegra_release_path)
    total, available = fields["MemTotal"], fields["MemAvailable"]
    return DeviceMemory(
        source="jetson-meminfo",
        name=name or model or "NVIDIA Jetson (integrated GPU)",
        total_bytes=total,
        free_bytes=available,
        used_bytes=total - available,
        integrated=True,
        other_processes_bytes=fields.get("NvMapMemUsed"),
        driver=_l4t_release(tegra_release_path),
        compute_capability=compute_capability or _jetson_compute_capability(model),
    )


def probe_cuda(index: int = 0) -> DeviceMemory:
    """``torch.cuda.mem_get_info``: works wherever CUDA does, but creates a CUDA context first."""
    device = visible_cuda_device(index)
    import torch

    try:
        free, total = torch.cuda.mem_get_info(index)
    except RuntimeError as exc:
        raise ProbeUnavailable(f"cuda: mem_get_info failed ({str(exc).splitlines()[0]})") from None
    return DeviceMemory(
        source="cuda-mem-get-info",
        name=device.name,
        total_bytes=total,
        free_bytes=free,
        used_bytes=total - free,
        integrated=device.integrated,
        compute_capability=device.compute_capability,
    )


def probe_host(meminfo_path: str | os.PathLike = MEMINFO) -> DeviceMemory:
    """Host memory for training on the CPU: MemTotal/MemAvailable, or ``os.sysconf`` where there is no
    ``/proc/meminfo`` (free is then the kernel's free pages, without reclaimable cache: an under-estimate)."""
    fallbacks: list[str] = []
    try:
        fields = read_meminfo(meminfo_path, "host")
    except ProbeUnavailable as exc:
        fields = {}
        fallbacks.append(exc.reason)
    if "MemTotal" in fields and "MemAvailable" in fields:
        total, free = fields["MemTotal"], fields["MemAvailable"]
    else:
        if fields:
            fallbacks.append(f"host: {meminfo_path} has no MemTotal and MemAvailable")
        total, free = _sysconf_memory()
    return DeviceMemory(
        source="host",
        name=f"CPU ({platform.machine() or 'unknown'}, {os.cpu_count() or 1} cores)",
        total_bytes=total,
        free_bytes=free,
        used_bytes=total - free,
        fallbacks=fallbacks,
    )


# ---- allocator settings -----------------------------------------------------------------------


def check_allocator_settings(device: DeviceMemory, environ: Mapping[str, str] | None = None) -> None:
    """Refuse ``expandable_segments:True`` in the PyTorch allocator settings on an integrated GPU.

    Expandable segments map memory through the CUDA virtual-memory API, which Jetson's unified memory
    does not support; PyTorch then fails or falls back in ways that defeat the budget.
    """
    if not device.integrated:
        return
    env = os.environ if environ is None else environ
    for variable in ALLOC_CONF_VARIABLES:
        value = env.get(variable, "")
        if _expandable_segments_enabled(value):
            raise ConfigError(
                f"{variable}={value!r} turns on expandable_segments, which {device.name} (GPU memory shared "
                "with the CPU) does not support",
                hint=f"unset {variable}, or set expandable_segments:False, on Jetson and other integrated GPUs",
            )


def _expandable_segments_enabled(setting: str) -> bool:
    for option in setting.split(","):
        key, _, value = option.partition(":")
        if key.strip().lower() == "expandable_segments" and value.strip().lower() == "true":
            return True
    return False


# ---- helpers --------------------------------------------------------------------------------------


def read_meminfo(path: str | os.PathLike = MEMINFO, probe: str = "host") -> dict[str, int]:
    """The sizes in ``/proc/meminfo`` as {field: bytes} (the kernel writes kB, meaning KiB; counts are left out)."""
    text = _read_text(path)
    if text is None:
        raise ProbeUnavailable(f"{probe}: cannot read {path}")
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1] == "kB":
            fields[key.strip()] = int(parts[0]) * KIB
    return fields


def _sysconf_memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        raise ProbeUnavailable("host: neither /proc/meminfo nor os.sysconf report memory on this system") from None


def _nvml_memory(pynvml: Any, handle: Any) -> tuple[int, int, int | None]:
    """(total, free, reserved); the v2 query needs driver >= 510, older drivers answer v1 only."""
    version = getattr(pynvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            return int(info.total), int(info.free), int(info.reserved)
        except pynvml.NVMLError:
            pass
    info = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return int(info.total), int(info.free), None


def _other_processes_bytes(pynvml: Any, handle: Any) -> int | None:
    """GPU memory of the other processes on the device (compute and graphics, each pid once).

    None when NVML cannot list processes or reports no figure for any of them (Windows WDDM, some
    containers). A process seen only by its pid in another namespace may be this one: the probe runs
    before this process creates a context, so it holds nothing yet.
    """
    used_by_pid: dict[int, int] = {}
    others: set[int] = set()
    listed = False
    for getter_name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        getter = getattr(pynvml, getter_name, None)
        if getter is None:
            continue
        try:
            processes = getter(handle)
        except pynvml.NVMLError:
            continue
        listed = True
        for process in processes:
            if process.pid == os.getpid():
                continue
            others.add(process.pid)
            used = getattr(process, "usedGpuMemory", None)
            if used is not None:
                used_by_pid[process.pid] = max(used_by_pid.get(process.pid, 0), int(used))
    if not listed or (others and not used_by_pid):
        return None
    return sum(used_by_pid.values())


def _capability(pair: Any) -> tuple[int, int]:
    major, minor = pair
    return int(major), int(minor)


def _describe(exc: Exception) -> str:
    message = str(exc)  # NVMLError.__str__ falls back to "NVML Error with code N" when the library is missing
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _read_text(path: str | os.PathLike) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _l4t_release(path: str | os.PathLike) -> str | None:
    """ "# R36 (release), REVISION: 4.3, ..." -> "L4T R36.4.3"."""
    text = _read_text(path)
    if not text:
        return None
    first = text.splitlines()[0].lstrip("# ").split(",")
    release = first[0].split()[0] if first and first[0].split() else ""
    revision = next((part.split(":", 1)[1].strip() for part in first if "REVISION" in part and ":" in part), "")
    if not release.startswith("R"):
        return None
    return f"L4T {release}.{revision}" if revision else f"L4T {release}"


def _jetson_compute_capability(model: str | None) -> tuple[int, int] | None:
    lowered = (model or "").lower()
    return next((capability for word, capability in JETSON_COMPUTE_CAPABILITY if word in lowered), None)
