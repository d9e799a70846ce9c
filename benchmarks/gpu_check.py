"""The CUDA paths of edgedml, measured on one real GPU in one command: a table on stdout, JSON in a folder.

    python benchmarks/gpu_check.py --out gpu-check            # on a CUDA machine (at most ~8 minutes)
    python benchmarks/gpu_check.py --out gpu-check --dry-run  # anywhere: the same code paths, tiny sizes, CPU

Sections (each is timed and recorded even when it fails, so one broken part never loses the others):

1. ``probes``: NVML (nvidia-ml-py) against ``torch.cuda.mem_get_info``, and the CUDA context's size: what
   NVML sees used after torch creates its context minus before (edgedml budgets 512 MiB for it by default).
2. ``planner``: for each configuration the planner's predicted peak (``StepTracer``, fake tensors) against a
   real steady-state step (``edgedml.budget.measure.measure_step``: fresh allocator statistics per config,
   after two warm-up steps): the error against ``max_memory_allocated`` (target +-10%) and against
   ``max_memory_reserved`` (what the caching allocator holds: what a Jetson's shared RAM pays).
3. ``budget``: ``--batch-size auto --budget B`` for two budgets through the trainer (plan, in-process CUDA
   cap, one epoch of real steps): the chosen batch and the measured peaks, which must stay below B; a fixed
   batch the planner refuses ("nothing fits"); and an overrun inside the cap, which must fail in-process with
   the plan's numbers rather than starve the device.
4. ``commands``: ``edgedml train --amp``, ``eval``, ``export`` and ``bench`` (PyTorch and the ONNX file) on the
   GPU, as subprocesses; whether onnxruntime has a CUDA provider.
5. ``parity``: each built-in backbone (resnet18/34/50, mobilenetv2) loads torchvision's and timm's own state
   dict (where those import) by name and gives their pooled features on a 224 px batch (max |Δ|).

``--dry-run`` runs every section on the CPU with tiny sizes (what CUDA alone can measure is reported as
skipped, with the reason); ``tests/test_gpu_check.py`` runs it in CI so the script cannot rot.

On the GPU machine: edgedml's own dependencies must import there (the script says which are missing first);
run it from the repository root with the output folder under ``$OUT``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MIB = 1 << 20
GIB = 1 << 30
ROOT = Path(__file__).resolve().parents[1]
NEEDED = (
    "numpy",
    "yaml",
    "PIL",
    "safetensors",
    "typer",
    "rich",
    "sklearn",
    "pytorch_metric_learning",
    "faiss",
    "onnx",
    "onnxruntime",
    "onnxscript",
)


@dataclass(frozen=True)
class PlannerCase:
    name: str
    overrides: dict[str, Any]
    input_size: int
    batch_size: int
    memory_size: int = 0


# At least eight configurations over backbones, input sizes, batch 16-256, memories of 8k-32k slots,
# plain and S2SD, fp32 and AMP.
GPU_CASES = [
    PlannerCase("tiny@64 b128", {"backbone": "tiny"}, 64, 128),
    PlannerCase("mobilenetv2@128 b64", {"backbone": "mobilenetv2"}, 128, 64),
    PlannerCase("mobilenetv2@128 b256 amp", {"backbone": "mobilenetv2", "amp": True}, 128, 256),
    PlannerCase("mobilenetv2@224 b64 xbm8k", {"backbone": "mobilenetv2", "memory": "xbm"}, 224, 64, 8192),
    PlannerCase(
        "mobilenetv2@224 b128 axbn16k amp", {"backbone": "mobilenetv2", "memory": "axbn", "amp": True}, 224, 128, 16384
    ),
    PlannerCase("resnet18@224 b64", {"backbone": "resnet18"}, 224, 64),
    PlannerCase(
        "resnet18@224 b128 s2sd", {"backbone": "resnet18", "distill": "s2sd", "aux_dims": "512,1024"}, 224, 128
    ),
    PlannerCase(
        "resnet18@224 b256 xbm32k amp", {"backbone": "resnet18", "memory": "xbm", "amp": True}, 224, 256, 32768
    ),
    PlannerCase(
        "resnet18@224 b16 axbn8k s2sd amp",
        {"backbone": "resnet18", "memory": "axbn", "distill": "s2sd", "aux_dims": "512,1024", "amp": True},
        224,
        16,
        8192,
    ),
    PlannerCase("resnet50@224 b64", {"backbone": "resnet50"}, 224, 64),
    PlannerCase(
        "resnet50@224 b128 axbn8k amp", {"backbone": "resnet50", "memory": "axbn", "amp": True}, 224, 128, 8192
    ),
]
DRY_CASES = [
    PlannerCase("tiny@32 b16", {"backbone": "tiny"}, 32, 16),
    PlannerCase("tiny@32 b32 xbm512", {"backbone": "tiny", "memory": "xbm"}, 32, 32, 512),
    PlannerCase(
        "tiny@32 b16 axbn512 s2sd",
        {"backbone": "tiny", "memory": "axbn", "distill": "s2sd", "aux_dims": "64,128"},
        32,
        16,
        512,
    ),
    PlannerCase("mobilenetv2@64 b16", {"backbone": "mobilenetv2"}, 64, 16),
]


class Check:
    """The run's results: sections in order, written to ``out/gpu_check.json`` after each one."""

    def __init__(self, out: Path, dry_run: bool, time_limit: float):
        self.out, self.dry_run, self.time_limit = out, dry_run, time_limit
        self.started = time.perf_counter()
        self.device = "cpu" if dry_run else "cuda"
        self.result: dict[str, Any] = {"dry_run": dry_run, "environment": environment(), "sections": {}}

    def run(self, name: str, section: Callable[[Check], dict[str, Any]]) -> None:
        elapsed = time.perf_counter() - self.started
        if elapsed > self.time_limit:
            record = {"status": "skipped", "reason": f"time limit: {elapsed:.0f} s of {self.time_limit:.0f} s spent"}
        else:
            began = time.perf_counter()
            try:
                record = {"status": "ok", **section(self)}
            except Exception as exc:  # a broken section is a finding, not the end of the check
                record = {
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
            record["seconds"] = round(time.perf_counter() - began, 2)
        self.result["sections"][name] = record
        print(render_section(name, record), flush=True)
        self.write()

    def write(self) -> None:
        self.result["seconds"] = round(time.perf_counter() - self.started, 2)
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.out / "gpu_check.json")


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["cudnn"] = torch.backends.cudnn.version()
    for module in ("onnxruntime", "torchvision", "timm", "pynvml"):
        info[module] = _version(module)
    info["missing"] = [name for name in NEEDED if _version(name) is None]
    return info


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception:  # not installed, or (torchvision beside a CPU torch) broken: either way, not usable
        return None


def train_config(overrides: dict[str, Any], device: str):
    from edgedml.config import TrainConfig

    return TrainConfig.from_sources(
        overrides={
            "samples_per_class": 4,
            "batch_size": 16,
            "dim": 128,
            "device": device,
            "memory_warmup": 0,
            **overrides,
        }
    )


# ---- 1. probes ---------------------------------------------------------------------------------
def probes(check: Check) -> dict[str, Any]:
    from edgedml.budget.planner import DEFAULT_CUDA_CONTEXT_BYTES
    from edgedml.budget.probes import ProbeUnavailable, probe_device, probe_nvml

    rows: list[dict[str, Any]] = []
    if check.dry_run or not torch.cuda.is_available():
        device = probe_device()
        rows.append(
            {
                "probe": device.source,
                "name": device.name,
                "total_mib": device.total_bytes / MIB,
                "free_mib": device.free_bytes / MIB,
                "note": "; ".join(device.fallbacks) or "no CUDA device",
            }
        )
        return {"rows": rows, "cuda_context_mib": None, "budgeted_context_mib": DEFAULT_CUDA_CONTEXT_BYTES / MIB}
    try:
        before = probe_nvml(0)  # before torch creates its context
    except ProbeUnavailable as exc:
        before = None
        rows.append({"probe": "nvml", "note": exc.reason})
    torch.zeros(1, device="cuda")  # the CUDA context now exists
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info(0)
    rows.append(
        {
            "probe": "cuda-mem-get-info",
            "name": torch.cuda.get_device_name(0),
            "total_mib": total / MIB,
            "free_mib": free / MIB,
            "note": "after the context was created",
        }
    )
    context = None
    if before is not None:
        after = probe_nvml(0)
        context = after.used_bytes - before.used_bytes
        rows.insert(
            0,
            {
                "probe": "nvml (before the context)",
                "name": before.name,
                "total_mib": before.total_bytes / MIB,
                "free_mib": before.free_bytes / MIB,
                "note": f"reserved {(before.reserved_bytes or 0) / MIB:.0f} MiB, other processes "
                f"{(before.other_processes_bytes or 0) / MIB:.0f} MiB, driver {before.driver}",
            },
        )
        rows.insert(
            1,
            {
                "probe": "nvml (after)",
                "name": after.name,
                "total_mib": after.total_bytes / MIB,
                "free_mib": after.free_bytes / MIB,
                "note": f"free differs from mem_get_info by {(after.free_bytes - free) / MIB:+.0f} MiB",
            },
        )
    chosen = probe_device()
    rows.append(
        {
            "probe": f"probe_device() -> {chosen.source}",
            "name": chosen.name,
            "total_mib": chosen.total_bytes / MIB,
            "free_mib": chosen.free_bytes / MIB,
            "note": "; ".join(chosen.fallbacks),
        }
    )
    return {
        "rows": rows,
        "cuda_context_mib": context / MIB if context is not None else None,
        "budgeted_context_mib": DEFAULT_CUDA_CONTEXT_BYTES / MIB,
    }


# ---- 2. planner accuracy --------------------------------------------------------------------------
def planner(check: Check) -> dict[str, Any]:
    from edgedml.budget.measure import measure_step
    from edgedml.budget.planner import StepTracer

    rows = []
    for case in DRY_CASES if check.dry_run else GPU_CASES:
        row: dict[str, Any] = {"config": case.name}
        try:
            cfg = train_config({**case.overrides, "batch_size": case.batch_size}, check.device)
            predicted = StepTracer(cfg, case.input_size).estimate(case.batch_size, case.memory_size).peak
            measured = measure_step(cfg, case.input_size, case.batch_size, case.memory_size, check.device)
            row |= {
                "predicted_mib": predicted / MIB,
                "allocated_mib": measured.allocated / MIB,
                "error_allocated": predicted / measured.allocated - 1.0,
                "measured_by": measured.how,
            }
            if measured.reserved is not None:
                row |= {"reserved_mib": measured.reserved / MIB, "error_reserved": predicted / measured.reserved - 1.0}
        except Exception as exc:  # e.g. timm missing for resnet50: that row says so, the others go on
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        rows.append(row)
    errors = [abs(r["error_allocated"]) for r in rows if "error_allocated" in r]
    worst = max(errors) if errors else None
    target = "within 10% of max_memory_allocated"
    verdict = None if check.dry_run or worst is None else ("MET" if worst <= 0.10 else f"MISSED by {worst - 0.10:.1%}")
    return {"rows": rows, "worst_error_allocated": worst, "target": target, "verdict": verdict}


# ---- 3. budget fitting ---------------------------------------------------------------------------
def budget(check: Check) -> dict[str, Any]:
    from edgedml.errors import ConfigError, TrainingError
    from edgedml.training import Trainer

    base = (
        {"data": "digits", "backbone": "tiny", "input_size": 32, "samples_per_class": 4, "epochs": 1}
        if check.dry_run
        else {
            "data": "glyphs",
            "backbone": "mobilenetv2",
            "input_size": 224,
            "samples_per_class": 4,
            "epochs": 1,
            "workers": 4,
        }
    )
    budgets = ("64MiB", "256MiB") if check.dry_run else ("2GiB", "6GiB")
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgedml-gpu-check-") as scratch:
        for text in budgets:
            rows.append(_fit_budget(check, base, text, Path(scratch) / f"auto-{text}"))
        refused = None
        try:
            too_big = {"batch_size": 128 if check.dry_run else 1024, "budget": "16MiB" if check.dry_run else "1GiB"}
            Trainer(train_config({**base, **too_big}, check.device), Path(scratch) / "refused")
        except ConfigError as exc:
            refused = exc.message
        overrun = "skipped: needs CUDA (the in-process cap is torch.cuda.set_per_process_memory_fraction)"
        if check.device == "cuda":
            cfg = train_config({**base, "batch_size": "auto", "budget": budgets[0]}, check.device)
            trainer = Trainer(cfg, Path(scratch) / "overrun")
            # The plan fits; squeeze the cap below the plan's own prediction to force an overrun inside it.
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(trainer.plan.estimate.peak * 0.3 / total)
            try:
                trainer.fit()
                overrun = "no error: the squeezed cap did not stop the run (a finding)"
            except TrainingError as exc:
                overrun = f"{exc.message} | hint: {exc.hint}"
            except torch.cuda.OutOfMemoryError as exc:
                overrun = f"a raw OutOfMemoryError escaped the trainer (a finding): {str(exc).splitlines()[0]}"
            finally:
                del trainer
                _release_cap()
    return {"rows": rows, "nothing_fits": refused, "in_process_overrun": overrun}


def _fit_budget(check: Check, base: dict[str, Any], budget_text: str, run_dir: Path) -> dict[str, Any]:
    """``train --batch-size auto --budget B``: the plan's choice and, on CUDA, the peaks of its real steps."""
    from edgedml.training import Trainer

    row: dict[str, Any] = {"budget": budget_text}
    _reset_cuda()
    try:
        trainer = Trainer(train_config({**base, "batch_size": "auto", "budget": budget_text}, check.device), run_dir)
        summary = trainer.fit()
        plan = trainer.plan
        row |= {
            "batch_chosen": trainer.config.batch_size,
            "predicted_peak_mib": plan.estimate.peak / MIB,
            "required_mib": plan.budget.required(plan.estimate) / MIB,
            "steps": summary["epochs"] * trainer.steps_per_epoch,
        }
        if check.device == "cuda":
            reserved = torch.cuda.max_memory_reserved()
            row |= {
                "allocated_peak_mib": torch.cuda.max_memory_allocated() / MIB,
                "reserved_peak_mib": reserved / MIB,
                "below_budget": reserved + plan.budget.fixed <= plan.budget.available,
            }
        del trainer, summary
    except Exception as exc:  # an out-of-memory here is what this section exists to find: record it
        row["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    finally:
        _release_cap()
    return row


def _reset_cuda() -> None:
    gc.collect()  # the previous run's model, optimizer and memory go before the counters restart
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _release_cap() -> None:
    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


# ---- 4. the commands on the GPU ------------------------------------------------------------------
def commands(check: Check) -> dict[str, Any]:
    run_dir = check.out / "amp-run"
    device = check.device
    train = [
        "train",
        "--data",
        "digits",
        "--backbone",
        "tiny",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--samples-per-class",
        "4",
        "--device",
        device,
        "--out",
        str(run_dir),
        "--overwrite",
        "--json",
    ]
    if not check.dry_run:
        train = [
            "train",
            "--data",
            "glyphs",
            "--backbone",
            "mobilenetv2",
            "--input-size",
            "128",
            "--epochs",
            "1",
            "--amp",
            "--device",
            device,
            "--workers",
            "4",
            "--out",
            str(run_dir),
            "--overwrite",
            "--json",
        ]
    steps = [
        ("train" + ("" if check.dry_run else " --amp"), train),
        ("eval", ["eval", str(run_dir), "--device", device, "--json"]),
        ("export onnx", ["export", str(run_dir), "--json"]),
        ("bench torch", ["bench", str(run_dir), "--device", device, "--batch", "1,32", "--iters", "20", "--json"]),
        (
            "bench onnx",
            ["bench", str(run_dir / "model.onnx"), "--device", device, "--batch", "1,32", "--iters", "20", "--json"],
        ),
    ]
    rows = []
    for name, arguments in steps:
        rows.append(_run_command(check, name, arguments))
    providers = None
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        pass
    cuda_provider = providers is not None and "CUDAExecutionProvider" in providers
    note = (
        "onnxruntime has the CUDA provider: the ONNX bench ran on the GPU"
        if cuda_provider
        else "onnxruntime has no CUDA provider here: the ONNX bench ran on the CPU"
    )
    return {"rows": rows, "onnxruntime_providers": providers, "onnx_on_gpu": cuda_provider, "note": note}


def _run_command(check: Check, name: str, arguments: list[str]) -> dict[str, Any]:
    """One ``edgedml`` command as a subprocess, within what is left of the time limit."""
    began = time.perf_counter()
    left = max(10.0, check.time_limit - (began - check.started))
    command = [sys.executable, "-m", "edgedml.cli.main", *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=left)
    except subprocess.TimeoutExpired:
        return {"step": name, "exit_code": None, "seconds": round(left, 1), "summary": f"stopped after {left:.0f} s"}
    row: dict[str, Any] = {"step": name, "exit_code": done.returncode, "seconds": round(time.perf_counter() - began, 1)}
    if done.returncode == 0:
        row["summary"] = _command_summary(name, json.loads(done.stdout))
    else:
        row["summary"] = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return row


def _command_summary(name: str, data: Any) -> str:
    if name.startswith("train"):
        return f"Recall@1 {data['recall_at_1']:.4f}, {data['train_images_per_s']:.0f} img/s on {data['device']}"
    if name == "eval":
        return f"Recall@1 {data['recall_at_k']['1']:.4f}, MAP@R {data['map_at_r']:.4f}"
    if name.startswith("export"):
        return ", ".join(f"{k} {v['size_bytes'] / MIB:.2f} MiB" for k, v in data["files"].items())
    return (
        "; ".join(
            f"batch {t['batch']}: p50 {t['p50_ms']:.2f} ms, {t['images_per_s']:.0f} img/s" for t in data["timings"]
        )
        + f" ({data['runtime']} on {data['device']})"
    )


# ---- 5. parity with torchvision and timm ---------------------------------------------------------
def parity(check: Check) -> dict[str, Any]:
    """Each built-in backbone loads the reference library's own state dict (its random init, classifier dropped)
    through ``create_backbone(name, weights=file)`` and gives the reference's pooled features, on the GPU."""
    import tempfile

    from edgedml.models import create_backbone

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    pairs = [
        ("resnet18", "resnet18"),
        ("resnet34", "resnet34"),
        ("resnet50", "resnet50"),
        ("mobilenetv2", "mobilenet_v2"),
    ]
    for ours, theirs in pairs:
        for library in ("torchvision", "timm"):
            row: dict[str, Any] = {"backbone": ours, "library": library}
            try:
                reference = _reference_model(library, theirs)
            except Exception as exc:
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                row["skipped"] = f"{library} does not import here ({type(exc).__name__}: {first_line})"
                rows.append(row)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{theirs}.pth"
                torch.save(reference.state_dict(), path)
                backbone = create_backbone(ours, weights=path).to(device).eval()
            reference = reference.to(device).eval()
            _drop_classifier(reference)
            images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
            with torch.no_grad():
                ours_out, theirs_out = backbone(images), reference(images).flatten(1)
            row |= {
                "parameters": sum(p.numel() for p in backbone.parameters()),
                "max_abs_difference": float((ours_out - theirs_out).abs().max()),
                "feature_scale": float(theirs_out.abs().max()),
                "device": device,
            }
            rows.append(row)
    return {"rows": rows, "note": "max |Δ| of the pooled features on a (4, 3, 224, 224) input, eval mode"}


def _drop_classifier(model: torch.nn.Module) -> None:
    """torchvision keeps ``fc`` / ``classifier``, timm ``fc`` / ``classifier``: replace them by the identity."""
    for name in ("fc", "classifier"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            setattr(model, name, torch.nn.Identity())


def _reference_model(library: str, name: str) -> torch.nn.Module:
    if library == "torchvision":
        import torchvision

        return getattr(torchvision.models, name)(weights=None)
    import timm

    return timm.create_model({"mobilenet_v2": "mobilenetv2_100"}.get(name, name), pretrained=False)


# ---- rendering ---------------------------------------------------------------------------------
def render_section(name: str, record: dict[str, Any]) -> str:
    lines = [f"\n## {name}: {record['status']} ({record.get('seconds', 0):.1f} s)"]
    if record["status"] != "ok":
        lines.append(record.get("error") or record.get("reason", ""))
        return "\n".join(lines)
    rows = record.get("rows", [])
    if rows:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(column, row.get(column)) for column in columns) + " |" for row in rows]
    for key, value in record.items():
        if key not in ("rows", "status", "seconds"):
            lines.append(f"- {key}: {_cell(key, value)}")
    return "\n".join(lines)


def _cell(key: str, value: Any) -> str:
    """Errors as signed percentages, other floats with one decimal, None as an empty cell."""
    if isinstance(value, float):
        return f"{value:+.1%}" if key.startswith(("error", "worst")) else f"{value:,.1f}"
    return "" if value is None else str(value)


SECTIONS = {"probes": probes, "planner": planner, "budget": budget, "commands": commands, "parity": parity}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json (and the runs it trains)")
    parser.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU with tiny sizes")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=420.0,
        help="seconds after which remaining sections are skipped (default 420)",
    )
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "error: no CUDA device is visible to torch; run with --dry-run to check the script on a CPU",
            file=sys.stderr,
        )
        return 2
    check = Check(args.out, args.dry_run, args.time_limit)
    env = check.result["environment"]
    print(
        f"# gpu_check ({'dry run on the CPU' if args.dry_run else env.get('gpu')}): "
        f"torch {env['torch']}, CUDA {env['cuda']}, "
        f"onnxruntime {env['onnxruntime']}, torchvision {env['torchvision']}, timm {env['timm']}"
    )
    if env["missing"]:
        print(f"missing modules (sections needing them will fail and say so): {', '.join(env['missing'])}")
    for name in args.sections:
        check.run(name, SECTIONS[name])
    failed = [name for name, record in check.result["sections"].items() if record["status"] == "failed"]
    print(
        f"\nwritten {args.out / 'gpu_check.json'} in {check.result['seconds']:.0f} s"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
