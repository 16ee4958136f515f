"""Helpers of the tests that make things fail: a tiny trainable cache in the current schema, a
small tmpfs (skip where it cannot be mounted), running the CLI in a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def tiny_cache(path: Path, **kwargs: object) -> Path:
    """``synthetic_cache.make_tiny_cache`` stamped with the current schema (its newer fields filled)."""
    import h5py

    from facerecon.data.cache import SCHEMA_VERSION
    from synthetic_cache import make_tiny_cache

    make_tiny_cache(path, **kwargs)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        n = f["offsets"].shape[0] - 1
        if "landmarks5" not in f:
            f.create_dataset("landmarks5", data=np.full((n, 5, 2), np.nan, dtype=np.float32))
    return path


@contextlib.contextmanager
def small_tmpfs(size: str) -> Iterator[Path]:
    """A freshly mounted tmpfs of ``size`` (e.g. ``"6m"``); the test is skipped where mounting
    is not allowed (not root, no mount command, a container without the capability)."""
    if shutil.which("mount") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    where = Path(tempfile.mkdtemp(prefix="facerecon-tmpfs-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        with contextlib.suppress(OSError):
            where.rmdir()


def remount(where: Path, size: str) -> None:
    """Grow (or shrink) a tmpfs from :func:`small_tmpfs`: "space is freed"."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True, capture_output=True)


def cli(*args: str, env: dict | None = None, unset: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m facerecon ARGS`` in a subprocess (stdout and stderr captured as text), with
    ``env`` added to this process's environment and the ``unset`` variables removed."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200", **(env or {}))
    for name in unset:
        full_env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "facerecon", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def error_lines(text: str) -> list[str]:
    """The non-empty lines of ``text``."""
    return [line for line in text.splitlines() if line.strip()]
