"""Machine description written next to every benchmark result (shared by the benchmarks here)."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict:
    import torch
    d = {"host": socket.gethostname(), "platform": platform.platform(), "python": sys.version.split()[0],
         "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
         "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
         "memory_gib": _mem_gib(), "torch": torch.__version__,
         "torch_threads": torch.get_num_threads(),
         "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    try:
        import transformers
        d["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        d["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                    "count": torch.cuda.device_count(), "cuda": torch.version.cuda}
    try:
        d["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                         text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return d
