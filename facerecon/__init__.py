"""facerecon: 3D face reconstruction from a single photo with Pixel2Mesh graph convolutions.

The library is usable without the CLI: every subcommand is a thin shell over a module here.
"""

__version__ = "0.1.0"

from facerecon.errors import FaceReconError, InputError  # noqa: E402

__all__ = ["__version__", "FaceReconError", "InputError"]
