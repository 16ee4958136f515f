"""Small helpers shared by tests: a box IoU written independently of facerecon, and a synthetic photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def box_iou(a, b) -> float:
    """IoU of two ``(x0, y0, x1, y1)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy

    def area(r):
        return (r[2] - r[0]) * (r[3] - r[1])

    return float(inter / (area(a) + area(b) - inter))


def synthetic_photo(path: Path, size: tuple[int, int] = (400, 300)) -> Path:
    """A grey image with one skin-coloured disk (no face for MTCNN), saved to ``path``."""
    from PIL import Image

    img = np.full((size[1], size[0], 3), 90, np.uint8)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    img[(xx - 200) ** 2 + (yy - 150) ** 2 < 80**2] = (200, 160, 120)
    Image.fromarray(img).save(path)
    return path
