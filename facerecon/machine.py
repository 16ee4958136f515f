"""What compiled and optimised code depends on about this machine, without importing torch:
the CPU's identity (``ops/build.py``'s extension cache and the ONNX runtime's optimised-model
cache key on it), whether it is busy (threads then wait without spinning) and the user's cache
folder."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["cpu_identity", "cpu_model", "machine_busy", "user_cache_dir"]


def cpu_identity() -> str:
    """Architecture, CPU model and feature flags (what ``-march=native`` depends on)."""
    ident = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part", "CPU implementer"):
                    ident.append(line.strip())
                if not line.strip() and len(ident) > 2:
                    break  # the first processor is enough
    except OSError:
        ident.append(platform.processor())
    return "\n".join(ident)


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), for benchmark reports; "unknown CPU" where
    the system does not say."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == "model name":
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_busy() -> bool:
    """Whether the 1-minute load average is at least the number of cores (False where unknown)."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        return False


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/facerecon`` (default ``~/.cache/facerecon``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "facerecon"
