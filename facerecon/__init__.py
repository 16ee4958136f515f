"""facerecon: 3D face reconstruction from a single photo with Pixel2Mesh graph convolutions.

The library is usable without the CLI: every subcommand is a thin shell over a module here.
``from facerecon import Reconstructor`` is the Python entry point (docs/api.md); it is imported on
first use, so ``import facerecon`` stays light.
"""

from typing import Any

from facerecon.errors import FaceReconError, InputError

__version__ = "0.1.0"

#: Names served from :mod:`facerecon.api` on first use.
_API = ("Reconstructor", "FaceResult", "PhotoOutcome", "FrameResult")

__all__ = ["__version__", "FaceReconError", "InputError", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from facerecon import api

        return getattr(api, name)
    raise AttributeError(f"module 'facerecon' has no attribute {name!r}")
