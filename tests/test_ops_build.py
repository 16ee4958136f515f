"""The extension build: nvcc compile test of the CUDA source, cache location and key, the build
command, and how the backend is reported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from facerecon.cli import app
from facerecon.ops import build

ROOT = Path(__file__).resolve().parents[1]


def _nvcc() -> str | None:
    home = build.cuda_home()
    return str(Path(home) / "bin" / "nvcc") if home else shutil.which("nvcc")


@pytest.mark.slow
@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_cuda_source_compiles_with_nvcc(tmp_path: Path) -> None:
    from torch.utils.cpp_extension import include_paths

    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "").split(";")[0].replace(".", "").replace("+PTX", "")
    cmd = [_nvcc(), "-std=c++20", "-c", str(build.CSRC / "knn_cuda.cu"), "-o", str(tmp_path / "knn_cuda.o"),
           "-DFACERECON_WITH_CUDA", "-O1", *(f"-I{p}" for p in include_paths())]
    if arch:
        cmd.append(f"-arch=sm_{arch}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "knn_cuda.o").stat().st_size > 0


def test_cache_root_respects_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACERECON_EXTENSIONS_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "b"))
    assert build.cache_root() == tmp_path / "a"
    monkeypatch.delenv("FACERECON_EXTENSIONS_DIR")
    assert build.cache_root() == tmp_path / "b" / "facerecon"
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert build.cache_root() == tmp_path / "c" / "facerecon" / "extensions"
    assert build.make_spec(False).directory.parent == tmp_path / "c" / "facerecon" / "extensions"


def test_cache_key_tracks_flags_and_arch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACERECON_EXTENSION_NATIVE", raising=False)
    native = build.make_spec(False)
    monkeypatch.setenv("FACERECON_EXTENSION_NATIVE", "0")
    portable = build.make_spec(False)
    assert "-march=native" not in portable.cflags and native.directory != portable.directory
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    a = build.make_spec(True).directory
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert build.make_spec(True).directory != a
    assert not any("arch" in flag for flag in build.make_spec(True).cuda_cflags)


def test_cuda_home_prefers_a_toolkit_with_nvcc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert build.cuda_home() == str(tmp_path)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "missing"))
    assert build.cuda_home() != str(tmp_path / "missing")


def test_import_compiles_nothing(tmp_path: Path) -> None:
    env = dict(os.environ, FACERECON_EXTENSIONS_DIR=str(tmp_path / "cache"))
    code = ("import facerecon.ops as o, facerecon.metrics; from facerecon.ops import build; "
            "print(o.backend_summary()); assert not build._state.tried")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "not built yet" in proc.stdout
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_build_command_prints_one_line_and_reports_backend() -> None:
    """``python -m facerecon.ops``: one line, and no warning of its own (``-W error`` turns one,
    e.g. runpy's about a module the package already imported, into a failure)."""
    proc = subprocess.run([sys.executable, "-W", "error", "-m", "facerecon.ops"], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "C++/OpenMP" in lines[0]
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and "compiled C++/OpenMP" in result.output
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "torch" in result.output and "compiled C++/OpenMP" in result.output
    assert torch.__version__ in result.output


def test_build_command_without_a_compiler_says_why_and_marks_nothing_built(tmp_path: Path) -> None:
    """The real failure path: no compiler on PATH. One line naming the CPU build's failure and the
    fallback; no cache entry is marked built (so the next run tries again); the fallback answers."""
    env = dict(os.environ, FACERECON_EXTENSIONS_DIR=str(tmp_path / "cache"), CXX="/nonexistent/c++",
               PATH=str(tmp_path), FACERECON_EXTENSION_CUDA="0")
    proc = subprocess.run([sys.executable, "-m", "facerecon.ops"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr  # documented: the fallback works, so not a failure
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("facerecon nearest-neighbour extension not built (CPU build failed: ")
    assert lines[0].endswith("); using the pure-torch fallback")
    assert not list((tmp_path / "cache").rglob("built"))
    code = ("import torch, warnings; from facerecon.ops import nearest_neighbors, backend; "
            "warnings.simplefilter('ignore'); r = nearest_neighbors(torch.zeros(1, 2, 3), torch.ones(1, 3, 3)); "
            "print(backend('cpu'), r.dist_xy.tolist(), r.dist_yx.tolist())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["torch", "[[3.0,", "3.0]]", "[[3.0,", "3.0,", "3.0]]"]


def test_build_failure_is_reported_on_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A multi-line compiler error becomes one line of the command's output and is kept as the reason."""
    def failing_load(spec: build.BuildSpec, build: bool = True, verbose: bool = False) -> None:
        raise RuntimeError("error: knn_cpu.cpp:12\n   expected ';'\n")

    monkeypatch.setattr(build, "_state", build._State())
    monkeypatch.setattr(build, "cuda_wanted", lambda: False)
    monkeypatch.setattr(build, "load", failing_load)
    build.main([])
    out = capsys.readouterr().out
    assert out == ("facerecon nearest-neighbour extension not built (CPU build failed: error: knn_cpu.cpp:12 "
                   "expected ';'); using the pure-torch fallback\n")
    assert build.failure_reason() == "CPU build failed: error: knn_cpu.cpp:12 expected ';'"
    assert build.loaded_extension() is None
