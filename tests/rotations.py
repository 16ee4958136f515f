"""A rotation helper for tests, written independently of facerecon's own conventions."""

from __future__ import annotations

import math

import numpy as np


def rotation_xyz(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """``Rx(pitch) @ Ry(yaw) @ Rz(roll)``, right-handed, column-vector convention (radians)."""
    cx, sx, cy, sy, cz, sz = (f(a) for a in (pitch, yaw, roll) for f in (math.cos, math.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz
