"""Memory budgets: device probes and profiles, peak-memory prediction (fake tensors), fitting to a budget.

Modules: ``device`` (the DeviceMemory record), ``probes`` (NVML, Jetson /proc/meminfo,
torch.cuda.mem_get_info, host), ``profiles`` (YAML device profiles), ``trace`` (allocation
timelines), ``planner`` (step estimates and the fit), ``report`` (the profiling report).
Import the modules themselves: this package imports nothing heavy.
"""
