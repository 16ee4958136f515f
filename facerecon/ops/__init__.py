"""Nearest-neighbour ops: exact bidirectional search, Chamfer distance, backend information.

Importing this package is cheap and never compiles anything: the compiled extension (C++/OpenMP,
and CUDA where available) is built once at first use, or ahead of time by
``python -m facerecon.ops`` (the install command runs it); see docs/ops.md.
"""

from facerecon.ops.chamfer import chamfer_distance
from facerecon.ops.knn import NNResult, backend, backend_summary, nearest_neighbors

__all__ = ["NNResult", "nearest_neighbors", "chamfer_distance", "backend", "backend_summary"]
