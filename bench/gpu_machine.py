"""bench/gpu.py's machine and bookkeeping: what ran where, memory, OOMs, the JSON, the budget.

None of this measures the model; it is what any section needs around a measurement: the
machine and library versions the figures belong to, the CUDA allocator's peaks (null on CPU),
memory handed back between sections, an out-of-memory turned into a row instead of a crash,
the report rewritten after each row so that a run cut short keeps its figures, and the
wall-clock budget that decides which sections still fit.

(Not named gpu_device.py: bench/gpu_device.sh is the launcher on the device machine.)
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

# Modal GPUs and the memory the card reports (MiB from nvidia-smi, rounded), for the derived
# "smallest GPU that fits" column. T4 is left out: no bf16 (the project would load fp32).
MODAL_GPUS: list[tuple[str, float]] = [
    ("L4", 22.5), ("A10", 22.5), ("A100-40GB", 40.0), ("L40S", 45.0),
    ("A100-80GB", 80.0), ("H100", 79.6), ("H200", 140.4), ("B200", 179.0),
]
CONTEXT_HEADROOM_GIB = 1.5  # CUDA context + cuBLAS workspaces: outside the allocator's counts


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def gib(n) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("connectodistill", "torch", "transformers", "peft", "accelerate", "pydantic",
                "bitsandbytes", "tokenizers", "torchvision", "pillow", "flash-linear-attention",
                "fla-core", "causal-conv1d"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def machine_info(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu_name=props.name, gpu_memory_gib=gib(props.total_memory),
                    gpu_multiprocessors=props.multi_processor_count,
                    compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    bf16_supported=torch.cuda.is_bf16_supported())
    else:
        info.update(gpu_name=None, gpu_memory_gib=None)
    return info


class Report:
    """The JSON document, rewritten (atomically) after every measurement."""

    def __init__(self, path: Path, doc: dict):
        self.path, self.doc = path, doc
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        self.doc["wall_s"] = round(time.monotonic() - self.doc["_t0"], 1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({k: v for k, v in self.doc.items() if not k.startswith("_")},
                                  indent=1, default=str))
        tmp.replace(self.path)

    def section(self, name: str) -> dict:
        sec = self.doc["sections"].setdefault(name, {"status": "not run", "rows": []})
        return sec


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Memory:
    """Peak allocator figures on CUDA (None on CPU, which has no allocator statistics)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def reset(self) -> None:
        if self.cuda:
            import torch

            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict:
        if not self.cuda:
            return {"peak_memory_gib": None, "peak_reserved_gib": None,
                    "host_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
        import torch

        return {"peak_memory_gib": gib(torch.cuda.max_memory_allocated()),
                "peak_reserved_gib": gib(torch.cuda.max_memory_reserved())}

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def release() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def smallest_modal_gpu(peak_reserved_gib: float | None) -> str | None:
    if peak_reserved_gib is None:
        return None
    need = peak_reserved_gib + CONTEXT_HEADROOM_GIB
    fits = [(mem, name) for name, mem in MODAL_GPUS if mem >= need]
    return min(fits)[1] if fits else "none of Modal's single GPUs"


def guarded(fn, *args, **kwargs) -> dict:
    """``fn(...)``, with an out-of-memory turned into a row that says so."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:
        if not is_oom(e):
            raise
        msg = str(e).splitlines()[0][:200]
    release()
    return {"error": "out of memory", "detail": msg}
