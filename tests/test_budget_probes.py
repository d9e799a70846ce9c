"""Device probes: fake /proc/meminfo files, a stubbed pynvml, fake Jetson device-tree files, allocator settings."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from edgedml.budget import probes
from edgedml.budget.device import GIB, DeviceMemory
from edgedml.budget.probes import (
    CudaDevice,
    ProbeUnavailable,
    check_allocator_settings,
    probe_device,
    probe_host,
    probe_jetson,
    probe_nvml,
)
from edgedml.errors import ConfigError

MIB = 1 << 20
KIB = 1 << 10
ORIN_MEMINFO = """MemTotal:        7813156 kB
MemFree:          912344 kB
MemAvailable:    5120000 kB
Buffers:           84264 kB
Cached:          3123456 kB
SwapTotal:       3906560 kB
HugePages_Total:       0
NvMapMemUsed:     409600 kB
"""
DESKTOP_MEMINFO = """MemTotal:       32768000 kB
MemFree:         1000000 kB
MemAvailable:   20480000 kB
HugePages_Total:       0
"""

# ---- a stub of nvidia-ml-py's pynvml ------------------------------------------------------------


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    def __str__(self):
        return "NVML Shared Library Not Found"


class NVMLError_NotSupported(NVMLError):
    def __str__(self):
        return "Not Supported"


class NVMLError_DriverNotLoaded(NVMLError):
    def __str__(self):
        return "Driver Not Loaded"


class NVMLError_FunctionNotFound(NVMLError):
    def __str__(self):
        return "Function Not Found"


def make_pynvml(fail: dict[str, type[Exception]] | None = None, v2: bool = True, bytes_names: bool = False):
    """A pynvml module: a 24 GiB card, 1 GiB free... fixed numbers, calls recorded in ``module.calls``."""
    fail = fail or {}
    module = types.ModuleType("pynvml")
    module.calls = []
    for error in (
        NVMLError,
        NVMLError_LibraryNotFound,
        NVMLError_NotSupported,
        NVMLError_DriverNotLoaded,
        NVMLError_FunctionNotFound,
    ):
        setattr(module, error.__name__, error)
    if v2:
        module.nvmlMemory_v2 = 0x02000028

    def api(name, result):
        def call(*args, **kwargs):
            module.calls.append((name, args, kwargs))
            if name in fail:
                raise fail[name]()
            return result(*args, **kwargs) if callable(result) else result

        setattr(module, name, call)

    def memory(handle, version=None):
        if version is None:
            return types.SimpleNamespace(total=24 * GIB, free=20 * GIB, used=4 * GIB)
        return types.SimpleNamespace(
            version=version, total=24 * GIB, free=20 * GIB, used=3 * GIB + 512 * MIB, reserved=512 * MIB
        )

    def name_of(text):
        return text.encode() if bytes_names else text

    api("nvmlInit", None)
    api("nvmlShutdown", None)
    api("nvmlDeviceGetHandleByIndex", lambda index: f"handle-{index}")
    api("nvmlDeviceGetHandleByUUID", lambda uuid: f"handle-{uuid}")
    api("nvmlDeviceGetMemoryInfo", memory)
    api("nvmlDeviceGetName", name_of("NVIDIA GeForce RTX 4090"))
    api("nvmlSystemGetDriverVersion", name_of("550.54.14"))
    api("nvmlDeviceGetCudaComputeCapability", (8, 9))
    api(
        "nvmlDeviceGetComputeRunningProcesses",
        lambda handle: [
            types.SimpleNamespace(pid=101, usedGpuMemory=1 * GIB),
            types.SimpleNamespace(pid=102, usedGpuMemory=None),  # NVML_VALUE_NOT_AVAILABLE
            types.SimpleNamespace(pid=probes.os.getpid(), usedGpuMemory=5 * GIB),  # this process: not "other"
        ],
    )
    api(
        "nvmlDeviceGetGraphicsRunningProcesses",
        lambda handle: [
            types.SimpleNamespace(pid=101, usedGpuMemory=1 * GIB),
            types.SimpleNamespace(pid=200, usedGpuMemory=256 * MIB),
        ],
    )
    return module


def called(module) -> list[str]:
    return [name for name, _, _ in module.calls]


@pytest.fixture
def desktop(tmp_path: Path, monkeypatch):
    """A machine that is not a Jetson: fake meminfo, no device-tree model, torch sees a discrete CUDA GPU.

    Returns the keyword arguments for ``probe_device``."""
    (tmp_path / "meminfo").write_text(DESKTOP_MEMINFO)
    gpu = CudaDevice(name="NVIDIA GeForce RTX 4090", integrated=False, uuid=None, compute_capability=(8, 9))
    monkeypatch.setattr(probes, "visible_cuda_device", lambda index=0: gpu)
    return {
        "meminfo_path": tmp_path / "meminfo",
        "model_path": tmp_path / "no-model",
        "tegra_release_path": tmp_path / "no-release",
    }


def cuda_probe_answers(monkeypatch) -> None:
    def fake_probe_cuda(index=0):
        return DeviceMemory(
            source="cuda-mem-get-info",
            name="NVIDIA GeForce RTX 4090",
            total_bytes=24 * GIB,
            free_bytes=19 * GIB,
            used_bytes=5 * GIB,
        )

    monkeypatch.setattr(probes, "probe_cuda", fake_probe_cuda)


# ---- NVML -------------------------------------------------------------------------------------------


def test_nvml_reads_memory_reserved_driver_and_other_processes(monkeypatch):
    stub = make_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    memory = probe_nvml(0)
    assert memory.source == "nvml"
    # the stub's v2 answer: used 3.5 GiB by allocations plus 512 MiB the driver reserves, so 4 GiB in all
    assert (memory.total_bytes, memory.free_bytes, memory.used_bytes) == (
        24 * GIB,
        20 * GIB,
        3 * GIB + 512 * MIB + 512 * MIB,
    )
    assert memory.reserved_bytes == 512 * MIB
    assert ("nvmlDeviceGetMemoryInfo", ("handle-0",), {"version": 0x02000028}) in stub.calls  # the v2 query was asked
    assert memory.name == "NVIDIA GeForce RTX 4090" and memory.driver == "550.54.14"
    assert memory.compute_capability == (8, 9) and not memory.integrated
    # pid 101 counted once (compute and graphics), pid 102 has no figure, this process is left out
    assert memory.other_processes_bytes == 1 * GIB + 256 * MIB
    assert memory.fallbacks == []


def test_nvml_decodes_bytes_and_falls_back_to_the_v1_memory_query(monkeypatch):
    stub = make_pynvml(v2=False, bytes_names=True)
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    memory = probe_nvml(0)
    assert memory.name == "NVIDIA GeForce RTX 4090" and memory.driver == "550.54.14"
    assert memory.reserved_bytes is None and memory.free_bytes == 20 * GIB
    assert ("nvmlDeviceGetMemoryInfo", ("handle-0",), {}) in stub.calls


def test_nvml_v2_query_unsupported_by_an_old_driver_uses_v1(monkeypatch):
    stub = make_pynvml()
    v2_and_v1 = stub.nvmlDeviceGetMemoryInfo

    def memory(handle, version=None):
        if version is not None:
            raise NVMLError_FunctionNotFound()
        return v2_and_v1(handle)

    stub.nvmlDeviceGetMemoryInfo = memory
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    memory_info = probe_nvml(0)
    assert memory_info.reserved_bytes is None and memory_info.total_bytes == 24 * GIB


def test_nvml_follows_torchs_device_by_uuid(monkeypatch):
    stub = make_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    probe_nvml(0, uuid="5b2c1f3e-0000-1111-2222-333344445555")
    assert ("nvmlDeviceGetHandleByUUID", ("GPU-5b2c1f3e-0000-1111-2222-333344445555",), {}) in stub.calls
    assert "nvmlDeviceGetHandleByIndex" not in called(stub)


def test_nvml_process_list_not_supported_leaves_other_processes_unknown(monkeypatch):
    stub = make_pynvml(
        fail={
            "nvmlDeviceGetComputeRunningProcesses": NVMLError_NotSupported,
            "nvmlDeviceGetGraphicsRunningProcesses": NVMLError_NotSupported,
        }
    )
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    memory = probe_nvml(0)
    assert memory.other_processes_bytes is None and memory.total_bytes == 24 * GIB


@pytest.mark.parametrize(
    "error, where",
    [
        (NVMLError_LibraryNotFound, "nvmlInit"),
        (NVMLError_DriverNotLoaded, "nvmlInit"),
        (NVMLError_NotSupported, "nvmlDeviceGetMemoryInfo"),
        (NVMLError_LibraryNotFound, "nvmlDeviceGetMemoryInfo"),
        (NVMLError_DriverNotLoaded, "nvmlDeviceGetHandleByIndex"),
    ],
)
def test_nvml_errors_fall_through_to_the_next_probe_with_the_reason(desktop, monkeypatch, error, where):
    stub = make_pynvml(fail={where: error})
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    cuda_probe_answers(monkeypatch)
    memory = probe_device(0, **desktop)
    assert memory.source == "cuda-mem-get-info"
    assert memory.fallbacks == [f"nvml: {error.__name__}: {error()}"]
    if where != "nvmlInit":
        assert called(stub)[-1] == "nvmlShutdown"  # initialised, so shut down again


def test_without_pynvml_the_cuda_probe_answers(desktop, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    cuda_probe_answers(monkeypatch)
    memory = probe_device(0, **desktop)
    assert memory.source == "cuda-mem-get-info"
    assert len(memory.fallbacks) == 1 and memory.fallbacks[0].startswith("nvml: nvidia-ml-py is not installed")


def test_a_desktop_gpu_is_probed_with_nvml_first(desktop, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml())
    monkeypatch.setattr(probes, "probe_cuda", lambda index=0: pytest.fail("mem_get_info creates a CUDA context"))
    memory = probe_device(0, **desktop)
    assert memory.source == "nvml" and memory.fallbacks == []


def test_no_nvml_and_no_cuda_probe_ends_on_host_memory(desktop, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(fail={"nvmlInit": NVMLError_DriverNotLoaded}))

    def no_cuda(index=0):
        raise ProbeUnavailable("cuda: mem_get_info failed (CUDA error: unknown error)")

    monkeypatch.setattr(probes, "probe_cuda", no_cuda)
    memory = probe_device(0, **desktop)
    assert memory.source == "host" and memory.total_bytes == 32768000 * KIB and memory.free_bytes == 20480000 * KIB
    assert memory.fallbacks == [
        "nvml: NVMLError_DriverNotLoaded: Driver Not Loaded",
        "cuda: mem_get_info failed (CUDA error: unknown error)",
    ]


def test_without_a_cuda_device_training_is_planned_on_host_memory(tmp_path, monkeypatch):
    (tmp_path / "meminfo").write_text(DESKTOP_MEMINFO)
    stub = make_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", stub)

    def no_device(index=0):
        raise ProbeUnavailable(
            "cuda: torch sees no CUDA device (CPU-only build, no driver, or CUDA_VISIBLE_DEVICES empty)"
        )

    monkeypatch.setattr(probes, "visible_cuda_device", no_device)
    memory = probe_device(
        0, meminfo_path=tmp_path / "meminfo", model_path=tmp_path / "none", tegra_release_path=tmp_path / "none"
    )
    assert memory.source == "host" and not memory.integrated
    assert memory.fallbacks == [
        "cuda: torch sees no CUDA device (CPU-only build, no driver, or CUDA_VISIBLE_DEVICES empty)"
    ]
    assert stub.calls == []  # a GPU torch cannot use is not the training device


def test_the_real_torch_of_this_machine_gives_an_answer(tmp_path):
    """Whatever this machine is, probe_device answers without a traceback; without CUDA, from the given meminfo."""
    import torch

    (tmp_path / "meminfo").write_text(DESKTOP_MEMINFO)
    memory = probe_device(
        0, meminfo_path=tmp_path / "meminfo", model_path=tmp_path / "none", tegra_release_path=tmp_path / "none"
    )
    if torch.cuda.is_available():
        assert memory.source in ("nvml", "cuda-mem-get-info", "jetson-meminfo")
        assert memory.total_bytes > 0 and 0 <= memory.free_bytes <= memory.total_bytes
        assert memory.total_bytes == memory.free_bytes + memory.used_bytes  # every probe keeps total = free + used
    else:  # the CPU is the training device: the fake meminfo's MemTotal and MemAvailable, in bytes
        assert (memory.source, memory.total_bytes, memory.free_bytes, memory.used_bytes) == (
            "host",
            32768000 * KIB,
            20480000 * KIB,
            (32768000 - 20480000) * KIB,
        )


# ---- Jetson ---------------------------------------------------------------------------------------


def write_jetson(
    tmp_path: Path,
    meminfo: str = ORIN_MEMINFO,
    model: str | None = "NVIDIA Jetson Orin Nano Developer Kit\x00",
    release: str | None = None,
) -> dict:
    (tmp_path / "meminfo").write_text(meminfo)
    if model is not None:
        (tmp_path / "model").write_text(model)
    if release is not None:
        (tmp_path / "nv_tegra_release").write_text(release)
    return {
        "meminfo_path": tmp_path / "meminfo",
        "model_path": tmp_path / "model",
        "tegra_release_path": tmp_path / "nv_tegra_release",
    }


def test_jetson_memory_comes_from_meminfo_with_nvmap(tmp_path):
    paths = write_jetson(
        tmp_path,
        release=(
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
            "DATE: Wed Jan  8 01:49:37 UTC 2025\n"
        ),
    )
    memory = probe_jetson(
        paths["meminfo_path"], model_path=paths["model_path"], tegra_release_path=paths["tegra_release_path"]
    )
    assert memory.source == "jetson-meminfo" and memory.integrated
    assert (memory.total_bytes, memory.free_bytes) == (7813156 * KIB, 5120000 * KIB)
    assert memory.used_bytes == (7813156 - 5120000) * KIB  # MemTotal - MemAvailable, not MemTotal - MemFree
    assert memory.other_processes_bytes == 409600 * KIB
    assert memory.name == "NVIDIA Jetson Orin Nano Developer Kit"
    assert memory.compute_capability == (8, 7)
    assert memory.driver == "L4T R36.4.3"


def test_jetson_meminfo_without_nvmap(tmp_path):
    paths = write_jetson(
        tmp_path,
        meminfo=ORIN_MEMINFO.replace("NvMapMemUsed:     409600 kB\n", ""),
        model="NVIDIA Jetson Nano Developer Kit",
    )
    memory = probe_jetson(
        paths["meminfo_path"], model_path=paths["model_path"], tegra_release_path=paths["tegra_release_path"]
    )
    assert memory.other_processes_bytes is None and memory.free_bytes == 5120000 * KIB
    assert memory.compute_capability == (5, 3) and memory.driver is None


def test_jetson_meminfo_without_memavailable_is_unavailable(tmp_path):
    paths = write_jetson(tmp_path, meminfo="MemTotal:        7813156 kB\nMemFree:          912344 kB\n")
    with pytest.raises(ProbeUnavailable, match=r"jetson: .* has no MemAvailable"):
        probe_jetson(paths["meminfo_path"], model_path=paths["model_path"])


@pytest.mark.parametrize(
    "model, release",
    [
        ("NVIDIA Jetson Orin Nano Developer Kit\x00", None),
        ("Jetson AGX Orin Developer Kit\x00", None),  # the AGX Orin's model string has no "NVIDIA"
        ("NVIDIA Jetson Xavier NX Developer Kit", None),
        (None, "# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64\n"),  # an l4t container
    ],
)
def test_a_jetson_is_probed_through_meminfo_and_never_nvml(tmp_path, monkeypatch, model, release):
    stub = make_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    monkeypatch.setattr(
        probes, "visible_cuda_device", lambda index=0: pytest.fail("torch.cuda is not asked on a Jetson")
    )
    memory = probe_device(0, **write_jetson(tmp_path, model=model, release=release))
    assert memory.source == "jetson-meminfo" and memory.integrated and memory.fallbacks == []
    assert stub.calls == []
    if release is not None:
        assert memory.driver == "L4T R32.7.4"


def test_a_gpu_torch_reports_as_integrated_is_probed_through_meminfo(tmp_path, monkeypatch):
    stub = make_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    gpu = CudaDevice(name="Orin", integrated=True, uuid="abc", compute_capability=(8, 7))
    monkeypatch.setattr(probes, "visible_cuda_device", lambda index=0: gpu)
    memory = probe_device(0, **write_jetson(tmp_path, model="Some Carrier Board"))
    assert memory.source == "jetson-meminfo" and memory.name == "Orin" and memory.compute_capability == (8, 7)
    assert stub.calls == []


def test_other_device_tree_models_are_not_jetsons(tmp_path):
    (tmp_path / "model").write_text("Raspberry Pi 4 Model B Rev 1.4\x00")
    assert probes.read_tegra_model(tmp_path / "model", tmp_path / "none") is None
    assert probes.read_tegra_model(tmp_path / "none", tmp_path / "none") is None


# ---- host -----------------------------------------------------------------------------------------


def test_host_memory_from_meminfo(tmp_path):
    (tmp_path / "meminfo").write_text(DESKTOP_MEMINFO)
    memory = probe_host(tmp_path / "meminfo")
    assert (memory.source, memory.total_bytes, memory.free_bytes) == ("host", 32768000 * KIB, 20480000 * KIB)
    assert memory.used_bytes == (32768000 - 20480000) * KIB and not memory.integrated and memory.fallbacks == []


@pytest.mark.skipif(not hasattr(probes.os, "sysconf"), reason="os.sysconf is POSIX only")
def test_host_memory_without_meminfo_uses_sysconf(tmp_path):
    memory = probe_host(tmp_path / "no-meminfo")
    assert memory.total_bytes > 0 and 0 <= memory.free_bytes <= memory.total_bytes
    assert memory.fallbacks == [f"host: cannot read {tmp_path / 'no-meminfo'}"]


def test_when_nothing_can_be_read_the_error_says_to_use_a_profile(tmp_path, monkeypatch):
    def no_device(index=0):
        raise ProbeUnavailable("cuda: torch is not installed")

    def no_sysconf():
        raise ProbeUnavailable("host: neither /proc/meminfo nor os.sysconf report memory on this system")

    monkeypatch.setattr(probes, "visible_cuda_device", no_device)
    monkeypatch.setattr(probes, "_sysconf_memory", no_sysconf)
    with pytest.raises(ConfigError) as raised:
        probe_device(
            0, meminfo_path=tmp_path / "none", model_path=tmp_path / "none", tegra_release_path=tmp_path / "none"
        )
    assert "--profile" in raised.value.hint and "cuda: torch is not installed" in raised.value.message


# ---- allocator settings -----------------------------------------------------------------------------


def jetson_memory() -> DeviceMemory:
    return DeviceMemory(
        source="jetson-meminfo",
        name="NVIDIA Jetson Orin Nano Developer Kit",
        total_bytes=8 * GIB,
        free_bytes=5 * GIB,
        used_bytes=3 * GIB,
        integrated=True,
    )


@pytest.mark.parametrize("variable", ["PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"])
@pytest.mark.parametrize("setting", ["expandable_segments:True", "max_split_size_mb:128, expandable_segments: true"])
def test_expandable_segments_are_refused_on_an_integrated_gpu(variable, setting):
    with pytest.raises(ConfigError) as raised:
        check_allocator_settings(jetson_memory(), environ={variable: setting})
    assert variable in raised.value.message and "expandable_segments" in raised.value.message
    assert raised.value.hint and variable in raised.value.hint


def test_expandable_segments_are_fine_elsewhere_and_off_is_fine_everywhere():
    desktop = DeviceMemory(
        source="nvml", name="RTX 4090", total_bytes=24 * GIB, free_bytes=20 * GIB, used_bytes=4 * GIB
    )
    check_allocator_settings(desktop, environ={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})
    check_allocator_settings(
        jetson_memory(), environ={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False,max_split_size_mb:64"}
    )
    check_allocator_settings(jetson_memory(), environ={})


def test_probes_module_does_not_import_torch():
    import subprocess

    code = "import sys, edgedml.budget.probes, edgedml.budget.profiles; assert 'torch' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
