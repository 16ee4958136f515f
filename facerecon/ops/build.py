"""Build (once) and load the compiled nearest-neighbour extension: a cached JIT build.

Why JIT at first use rather than a build at ``pip install`` time: ``pip install`` then never needs
a compiler (it cannot fail for lack of one; the pure-torch fallback takes over), the same wheel or
checkout serves CPU-only and CUDA machines, and the binary always matches the torch that is
actually imported (a build-time extension breaks silently when torch is upgraded afterwards). The
README's install command runs ``python -m facerecon.ops`` once so users never wait at first use.

The cache lives in ``$FACERECON_EXTENSIONS_DIR``, else ``$TORCH_EXTENSIONS_DIR/facerecon``, else
``${XDG_CACHE_HOME:-~/.cache}/facerecon/extensions``, one folder per
``<name>-<hash of sources, torch version, python, flags, CPU model>``: the CPU code is compiled with
``-march=native`` (set ``FACERECON_EXTENSION_NATIVE=0`` for portable code), which is safe because a
different CPU hashes to a different folder. Concurrent first use (DDP ranks) is serialised by an
OS file lock (released by the kernel if a builder dies); a finished build is marked by a ``built``
file written after the module loaded, and only marked builds are loaded without the lock.

Run ``python -m facerecon.ops`` to build; it prints one line and exits 0: the extension is
ready, or it cannot be built and the line says why (nearest-neighbour ops then use the pure-torch
fallback, which needs no build). This module also keeps the process's loaded extension
(:func:`ensure_extension`); ``knn.py`` uses it, and nothing here imports ``knn``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from facerecon.machine import cpu_identity

CSRC = Path(__file__).resolve().parent / "csrc"
CPU_SOURCES = ("bindings.cpp", "knn_cpu.cpp")
CUDA_SOURCES = ("knn_cuda.cu",)
HEADERS = ("knn.h", "knn_cpu_kernel.h")
_BUILT_MARK = "built"


@dataclass(frozen=True)
class BuildSpec:
    """Everything that defines one build of the extension (and its cache folder)."""

    name: str
    with_cuda: bool
    sources: tuple[Path, ...]
    cflags: tuple[str, ...]
    cuda_cflags: tuple[str, ...]
    ldflags: tuple[str, ...]
    directory: Path

    @property
    def library(self) -> Path:
        """The built Python module (``<name>.so``)."""
        suffix = ".pyd" if os.name == "nt" else ".so"  # torch.utils.cpp_extension's LIB_EXT
        return self.directory / f"{self.name}{suffix}"


def cache_root() -> Path:
    """The folder holding all builds (see the module docstring for the environment variables)."""
    if os.environ.get("FACERECON_EXTENSIONS_DIR"):
        return Path(os.environ["FACERECON_EXTENSIONS_DIR"]).expanduser()
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]).expanduser() / "facerecon"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "facerecon" / "extensions"


def native_enabled() -> bool:
    """Whether the CPU code is compiled for this CPU (``FACERECON_EXTENSION_NATIVE=0`` disables)."""
    return os.environ.get("FACERECON_EXTENSION_NATIVE", "1") != "0" and platform.machine().lower() in (
        "x86_64",
        "amd64",
        "aarch64",
        "arm64",
    )


def cuda_home() -> Optional[str]:
    """The CUDA toolkit to compile with, or None.

    ``$CUDA_HOME``/``$CUDA_PATH`` when they hold ``bin/nvcc``; else ``/usr/local/cuda`` when it does
    (torch would guess the parent of a ``/usr/local/bin/nvcc`` link, ``/usr/local``, and fail to link
    libcudart); else the folder above the ``nvcc`` found on PATH.
    """
    exe = "nvcc.exe" if os.name == "nt" else "nvcc"
    for env in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(env)
        if home and (Path(home) / "bin" / exe).exists():
            return home
    if (Path("/usr/local/cuda") / "bin" / exe).exists():
        return "/usr/local/cuda"
    found = shutil.which(exe)
    if found:
        return str(Path(found).resolve().parent.parent)
    return None


def cuda_wanted() -> bool:
    """Build the CUDA variant: a usable GPU, a CUDA build of torch and nvcc (unless disabled)."""
    if os.environ.get("FACERECON_EXTENSION_CUDA", "1") == "0":
        return False
    import torch

    return bool(torch.version.cuda) and torch.cuda.is_available() and cuda_home() is not None


def make_spec(with_cuda: bool) -> BuildSpec:
    """The build of the CPU-only (``with_cuda=False``) or CPU+CUDA extension for this machine."""
    import torch

    cflags = ["-O3", "-DNDEBUG", "-fopenmp"]
    if native_enabled():
        cflags.append("-march=native")
    if with_cuda:
        cflags.append("-DFACERECON_WITH_CUDA")
    cuda_cflags = ["-O3", "-DNDEBUG", "-DFACERECON_WITH_CUDA"] if with_cuda else []
    ldflags = ["-fopenmp"]
    sources = tuple(CSRC / s for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ()))
    digest = hashlib.sha256()
    for path in sorted(sources + tuple(CSRC / h for h in HEADERS)):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    key = [torch.__version__, str(torch.version.cuda), sys.version, *cflags, *cuda_cflags, *ldflags,
           os.environ.get("CXX", ""), cpu_identity()]
    if with_cuda:
        key += [str(cuda_home()), os.environ.get("TORCH_CUDA_ARCH_LIST", "")]
    digest.update("\0".join(key).encode())
    name = "facerecon_knn_cuda" if with_cuda else "facerecon_knn_cpu"
    directory = cache_root() / f"{name}-{digest.hexdigest()[:16]}"
    return BuildSpec(name, with_cuda, sources, tuple(cflags), tuple(cuda_cflags), tuple(ldflags), directory)


def is_built(spec: BuildSpec) -> bool:
    """Whether a finished build of ``spec`` is in the cache (loading it then compiles nothing)."""
    return (spec.directory / _BUILT_MARK).exists() and spec.library.exists()


def _import_library(spec: BuildSpec) -> types.ModuleType:
    import torch  # noqa: F401  (the module links against libtorch, which must be loaded first)

    module_spec = importlib.util.spec_from_file_location(spec.name, spec.library)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load {spec.library}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive OS lock on ``path`` (no-op where fcntl is missing); freed if the holder dies."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (Windows)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def load(spec: BuildSpec, build: bool = True, verbose: bool = False) -> Optional[types.ModuleType]:
    """Load ``spec`` from the cache, building it first when ``build`` (else None if not built).

    Raises whatever the compiler/torch raise when a build fails (callers turn it into a fallback).
    """
    if is_built(spec):
        return _import_library(spec)
    if not build:
        return None
    with _file_lock(spec.directory.with_suffix(".lock")):
        if is_built(spec):  # another process finished while we waited
            return _import_library(spec)
        import logging

        # Importing cpp_extension on a GPU-less machine logs "No CUDA runtime is found": noise here.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        import torch.utils.cpp_extension as cpp_extension

        if spec.with_cuda:
            cpp_extension.CUDA_HOME = cuda_home()
        spec.directory.mkdir(parents=True, exist_ok=True)
        module = cpp_extension.load(
            name=spec.name,
            sources=[str(s) for s in spec.sources],
            extra_cflags=list(spec.cflags),
            extra_cuda_cflags=list(spec.cuda_cflags),
            extra_ldflags=list(spec.ldflags),
            extra_include_paths=[str(CSRC)],
            build_directory=str(spec.directory),
            with_cuda=spec.with_cuda,
            verbose=verbose,
        )
        (spec.directory / _BUILT_MARK).write_text("ok\n")
        return module


# ------------------------------------------------------------------- the extension of this process
class _State:
    """What this process knows about the extension: tried to load it, the module, why not."""

    tried: bool = False
    module: Optional[types.ModuleType] = None
    directory: Optional[Path] = None
    failure: Optional[str] = None
    warned: bool = False  # the fallback warning of ``knn`` was shown


_state = _State()


def ensure_extension(verbose: bool = False) -> Optional[types.ModuleType]:
    """Load the compiled extension, building it on first use (once per machine). None if impossible.

    Tries the CUDA variant when a GPU, a CUDA torch and nvcc are present, and the CPU-only variant
    otherwise or if that fails. The failure reason is kept for :func:`failure_reason`.
    """
    if _state.tried:
        return _state.module
    _state.tried = True
    errors = []
    variants = [True, False] if cuda_wanted() else [False]
    for with_cuda in variants:
        spec = make_spec(with_cuda)
        try:
            module = load(spec, build=True, verbose=verbose)
        except Exception as exc:  # broad on purpose: compiler, ninja, linker or import errors
            errors.append(f"{'CUDA' if with_cuda else 'CPU'} build failed: {_one_line(exc)}")
            continue
        _state.module, _state.directory = module, spec.directory
        return module
    _state.failure = "; ".join(errors) or "unknown reason"
    return None


def record_failure(exc: BaseException) -> None:
    """Remember why the extension is unavailable (used by ``python -m facerecon.ops``)."""
    _state.tried = True
    _state.failure = _one_line(exc)


def loaded_extension() -> Optional[types.ModuleType]:
    """The extension module if it is loaded in this process (never builds)."""
    return _state.module


def loaded_directory() -> Optional[Path]:
    """The cache folder the loaded extension came from."""
    return _state.directory


def failure_reason() -> str:
    """Why the extension is unavailable ("" when it is loaded or was not tried)."""
    return _state.failure or ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m facerecon.ops [--verbose]``: build or load the extension, print one line."""
    import time
    import warnings

    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args or "-v" in args
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch  # noqa: F401  (loaded inside the filter: its import-time warnings stay quiet)

    start = time.perf_counter()
    try:
        ensure_extension(verbose=verbose)
    except Exception as exc:  # broad on purpose: report any failure, the fallback still works
        record_failure(exc)
    elapsed = time.perf_counter() - start
    ext = loaded_extension()
    if ext is not None:
        kind = "C++/OpenMP + CUDA" if ext.with_cuda else "C++/OpenMP (CPU only)"
        print(f"facerecon nearest-neighbour extension: {kind} ready in {elapsed:.1f} s "
              f"(cache {loaded_directory()})")
        return 0
    print(f"facerecon nearest-neighbour extension not built ({failure_reason()}); "
          "using the pure-torch fallback")
    return 0

