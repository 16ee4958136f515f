"""What must happen in a process before an OpenGL driver loads (the renderer's moderngl context,
Open3D's offscreen window): one place, for both.

Mesa's software driver (llvmpipe, the CPU OpenGL of headless machines) loads its LLVM with global
symbols. A library that carries its own LLVM and is loaded *after* it binds to those symbols and
crashes: measured here, an OpenGL context (moderngl or Open3D), then ``import triton`` (which
``import torchvision``, ``torch.compile`` and ``torch._dynamo`` do) ends in a segmentation fault;
the other order works. :func:`before_opengl` loads such libraries first, privately.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading

__all__ = ["before_opengl"]

#: Packages that ship their own LLVM in a shared library (path inside the package).
OWN_LLVM_LIBRARIES = {"triton": ("_C", "libtriton.so")}

_DONE = False
_LOCK = threading.Lock()


def before_opengl() -> None:
    """Load :data:`OWN_LLVM_LIBRARIES` that are installed, privately (``RTLD_LOCAL``), before any
    OpenGL driver (~50 ms, once a process); importing the package later reuses the loaded library."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        for package, parts in OWN_LLVM_LIBRARIES.items():
            try:
                spec = importlib.util.find_spec(package)
            except (ImportError, ValueError):
                continue
            if spec is None or spec.origin is None:
                continue
            library = os.path.join(os.path.dirname(spec.origin), *parts)
            if os.path.exists(library):
                try:
                    ctypes.CDLL(library, mode=os.RTLD_LAZY | os.RTLD_LOCAL)
                except OSError:  # a broken installation of that package is not ours to report
                    pass
        _DONE = True
