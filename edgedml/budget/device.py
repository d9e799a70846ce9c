"""What a device offers for training: the one small record every probe and profile produces.

Probes (``probes.py``) read it off the machine in hand; profiles (``profiles.py``, YAML shipped in
``edgedml.profiles``) describe a device you do not have. The planner only ever sees this record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1 << 30


@dataclass
class DeviceMemory:
    """Memory facts of one device, in bytes.

    source: how they were obtained (``nvml``, ``jetson-meminfo``, ``cuda-mem-get-info``, ``host``,
    or ``profile:<name>``). ``integrated``: the GPU shares system RAM (Jetson), so the OS and
    other programs compete for the same bytes. ``fallbacks`` lists why earlier probes were not
    used, one line each.
    """

    source: str
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    integrated: bool = False
    reserved_bytes: int | None = None  # NVML v2: memory the driver reserves
    other_processes_bytes: int | None = None  # GPU memory held by other processes, when known
    driver: str | None = None
    compute_capability: tuple[int, int] | None = None
    cuda_context_bytes: int | None = None  # what creating a CUDA context costs on this device (profiles)
    os_reserved_bytes: int | None = None  # what the OS typically keeps on a shared-memory device (profiles)
    safety_margin: float = 0.1  # fraction of the budget kept free for allocator fragmentation
    fallbacks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.compute_capability is not None:
            data["compute_capability"] = f"{self.compute_capability[0]}.{self.compute_capability[1]}"
        return data
