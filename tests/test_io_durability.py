"""Atomic writes with and without the flush to disk, and glibc's retained freed memory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from facerecon import io_utils
from facerecon.errors import InputError
from facerecon.io_utils import atomic_open, atomic_path, atomic_write_bytes


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counted)
    return calls


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_bytes_content_permissions_and_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool) -> None:
    calls = _fsyncs(monkeypatch)
    data = np.random.default_rng(0).integers(0, 256, 3_000_001, dtype=np.uint8).tobytes()
    target = tmp_path / "sub" / "face.obj"
    atomic_write_bytes(target, data, durable=durable)
    assert target.read_bytes() == data
    assert len(calls) == (1 if durable else 0)
    # the permissions a plain open() gives under the same umask
    plain = tmp_path / "plain.obj"
    with open(plain, "wb") as fh:
        fh.write(b"x")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert sorted(p.name for p in target.parent.iterdir()) == ["face.obj"]


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_path_and_open_flush_only_when_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool) -> None:
    calls = _fsyncs(monkeypatch)
    with atomic_path(tmp_path / "a.bin", durable=durable) as tmp:
        tmp.write_bytes(b"abc")
    with atomic_open(tmp_path / "b.txt", "w", durable=durable, encoding="utf-8") as fh:
        fh.write("text\n")
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "text\n"
    assert len(calls) == (2 if durable else 0)


def test_a_failed_write_keeps_the_previous_file_and_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "face.json"
    target.write_text("previous\n")

    def full_disk(fd: int, data: bytes) -> None:
        os.write(fd, bytes(data[:5]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_utils, "_write_all", full_disk)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"0123456789" * 100, durable=False)
    assert info.value.filename == str(target) and info.value.errno == 28
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["face.json"]


def test_a_folder_that_cannot_be_written_is_an_input_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match="ro/face.obj"):
            atomic_write_bytes(folder / "face.obj", b"x")
    finally:
        folder.chmod(0o700)


_FAULTS = textwrap.dedent(
    """
    import ctypes, resource, sys
    if sys.argv[1] == "retain":
        from facerecon.allocator import retain_freed_memory
        assert retain_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 24 << 20
    faults = []
    for _ in range(3):
        block = libc.malloc(size)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ctypes.memset(block, 1, size)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        libc.free(block)
    print(*faults)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_retained_memory_is_reused_without_page_faults(tmp_path: Path) -> None:
    """A 24 MB block freed and allocated again: with glibc's defaults the second one is mapped
    afresh (a fault per page touched, counted by the kernel: glibc raises its mmap threshold only
    once a mapped block is freed, and the heap block it then uses is new), after
    ``retain_freed_memory`` the second and third allocations reuse the first one's pages."""
    script = tmp_path / "faults.py"
    script.write_text(_FAULTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def run(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, env=env, check=True)
        return [int(x) for x in out.stdout.split()]

    pages = (24 << 20) // 4096
    default, retained = run("default"), run("retain")
    assert default[0] > pages // 4 and default[1] > pages // 4, default  # touched afresh
    assert retained[0] > pages // 4, retained  # the first touch is the same
    assert max(retained[1:]) < pages // 50, retained  # then reused


def test_retain_leaves_a_users_malloc_settings_alone(tmp_path: Path) -> None:
    code = "from facerecon.allocator import retain_freed_memory; print(retain_freed_memory())"
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="1000000")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
