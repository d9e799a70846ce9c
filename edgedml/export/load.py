"""Open any model edgedml can run with the runtime it needs: the one dispatcher above the runtimes.

``*.onnx`` -> onnxruntime, ``*.engine`` / ``*.plan`` -> TensorRT, a run directory (``config.yaml``)
-> PyTorch.
"""

from __future__ import annotations

from pathlib import Path

from edgedml.errors import ConfigError
from edgedml.export.runtime import Embedder, OnnxRuntimeEmbedder, TorchEmbedder
from edgedml.export.tensorrt import TensorRTEmbedder

RUNTIMES = ("torch", "onnxruntime", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan")


def runtime_for(path: str | Path) -> str:
    """The runtime a model file needs, from its name (a run directory needs PyTorch)."""
    path = Path(path)
    if path.is_dir():
        return "torch"
    if path.suffix == ".onnx":
        return "onnxruntime"
    if path.suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    raise ConfigError(
        f"{path}: not a model edgedml can run",
        hint="give a run directory, an .onnx file or a TensorRT .engine/.plan file",
    )


def load_embedder(
    path: str | Path,
    runtime: str | None = None,
    device: str = "cpu",
    checkpoint: str = "best",
    threads: int | None = None,
) -> Embedder:
    """Open ``path`` with ``runtime`` (default: the one its file type needs).

    ``threads``: onnxruntime's intra-op threads (PyTorch's are process-wide: ``torch.set_num_threads``).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"{path}: no such model file or run directory",
            hint="give a run directory of edgedml train, or a model it exported (edgedml export RUN_DIR)",
        )
    needed = runtime_for(path)
    runtime = runtime or needed
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime != needed:
        raise ConfigError(f"--runtime {runtime} cannot run {path}", hint=f"{path.name} needs --runtime {needed}")
    if runtime == "torch":
        return TorchEmbedder(path, checkpoint, device)
    if runtime == "onnxruntime":
        return OnnxRuntimeEmbedder(path, ["CPUExecutionProvider"] if device == "cpu" else None, threads=threads)
    return TensorRTEmbedder(path)
