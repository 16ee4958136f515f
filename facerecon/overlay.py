"""Draw a mesh and landmarks over the photo it was reconstructed from (OpenCV, no 3D renderer).

The mesh is given in the photo's pixel frame (``image px``, docs/conventions.md): x right, y down,
z away from the camera, in pixels. The projection is orthographic: a vertex lands at its (x, y).

- ``shaded``: the painter's algorithm. Faces whose normal points away from the camera are culled,
  the others are filled farthest first (by mean z), each with the Lambert shade of its face
  normal under a light at the camera, then the drawing is alpha-blended over the photo.
- ``wireframe``: the anti-aliased edges of the camera-facing faces, alpha-blended.
- ``dense``: every vertex of the camera-facing faces as a dot (the dense 2D points), alpha-blended.

Landmarks are drawn last, opaque, as dots whose size follows the face's (its landmarks' extent), so
that a small face in a group photo keeps its eyes visible.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from facerecon import imageio
from facerecon.errors import InputError

__all__ = ["MODES", "draw_mesh_overlay", "face_normals", "save_image"]

MODES = ("shaded", "wireframe", "dense")

_SHIFT = 4  # OpenCV fixed-point bits: vertices are drawn with 1/16 px precision
_AMBIENT = 0.3  # shade of a face seen edge-on; a face seen head-on gets 1.0
_LANDMARK_COLOR = (255, 60, 60)


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit face normals ``cross(v1 - v0, v2 - v0)``.

    Args:
        vertices: ``(V, 3)`` float, any unit.
        faces: ``(F, 3)`` int vertex indices.

    Returns:
        ``(F, 3)`` float64 unit normals (zero for degenerate faces). In the image frame (x right,
        y down, z away from the camera) a face points to the camera when its normal has z < 0,
        i.e. when its vertices run counter-clockwise on the screen.
    """
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0)


def _check_inputs(image: np.ndarray, vertices_px: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"overlay: image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    v = np.asarray(vertices_px, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or not np.isfinite(v).all():
        raise InputError(f"overlay: vertices_px must be a finite (V, 3) array, got shape {v.shape}")
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise InputError(f"overlay: faces must be an (F, 3) integer array, got {f.shape} {f.dtype}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise InputError(f"overlay: face indices must lie in [0, {len(v)})")
    return v, f.astype(np.int64, copy=False)


def _fixed_point(xy: np.ndarray) -> np.ndarray:
    """Image px (pixel centres at k + 0.5) -> OpenCV fixed-point coordinates (centres at k)."""
    return np.round((xy - 0.5) * (1 << _SHIFT)).astype(np.int32)


def draw_mesh_overlay(
    image: np.ndarray,
    vertices_px: np.ndarray,
    faces: np.ndarray,
    landmarks_px: Optional[np.ndarray] = None,
    mode: str = "shaded",
    alpha: float = 0.6,
    color: Sequence[int] = (80, 200, 255),
) -> np.ndarray:
    """Draw a mesh (and landmarks) over a photo.

    Args:
        image: ``(H, W, 3)`` uint8 RGB photo (not modified).
        vertices_px: ``(V, 3)`` float vertices in that photo's pixel frame (image px: x right,
            y down, z away from the camera, z in px).
        faces: ``(F, 3)`` int vertex indices.
        landmarks_px: ``(L, 2)`` or ``(L, 3)`` float landmarks in image px (z ignored), or None.
        mode: ``"shaded"`` (filled, Lambert-shaded, back faces culled), ``"wireframe"``
            (anti-aliased edges of the camera-facing faces) or ``"dense"`` (their vertices as dots).
        alpha: opacity of the mesh drawing over the photo, in [0, 1].
        color: RGB base colour of the mesh, 0-255.

    Returns:
        ``(H, W, 3)`` uint8 RGB: the photo with the drawing. Pixels the mesh does not cover are
        the photo's, unchanged (OpenCV's fill also takes the pixels whose centres lie within half
        a pixel past a right or bottom edge).

    Raises:
        InputError: malformed arrays, an unknown mode, alpha outside [0, 1], a bad colour.
    """
    import cv2

    v, f = _check_inputs(image, vertices_px, faces)
    if mode not in MODES:
        raise InputError(f"overlay: unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"overlay: alpha must lie in [0, 1], got {alpha}")
    base = np.asarray(color, dtype=np.float64)
    if base.shape != (3,) or base.min() < 0 or base.max() > 255:
        raise InputError(f"overlay: color must be three values in 0-255, got {color}")

    normals = face_normals(v, f)
    visible = normals[:, 2] < 0.0  # back-face culling: keep the faces that look at the camera
    f, normals = f[visible], normals[visible]
    layer = np.ascontiguousarray(image).copy()
    polygons = _fixed_point(v[:, :2])[f]  # (F', 3, 2)
    if mode == "shaded":
        shade = _AMBIENT + (1.0 - _AMBIENT) * (-normals[:, 2])  # Lambert, light from the camera
        colors = np.clip(np.round(shade[:, None] * base[None, :]), 0, 255).astype(np.int64)
        order = np.argsort(-v[f].mean(axis=1)[:, 2], kind="stable")  # farthest first
        for i in order:
            cv2.fillConvexPoly(layer, polygons[i], tuple(int(c) for c in colors[i]), cv2.LINE_8, _SHIFT)
    elif mode == "wireframe" and len(f):
        cv2.polylines(layer, list(polygons.reshape(-1, 3, 1, 2)), True, tuple(int(c) for c in base), 1, cv2.LINE_AA, _SHIFT)
    elif len(f):
        _draw_dots(layer, v[np.unique(f), :2], _dot_radius(v[:, :2], 400.0, 0.5), tuple(int(c) for c in base))
    out = cv2.addWeighted(layer, float(alpha), np.ascontiguousarray(image), 1.0 - float(alpha), 0.0)
    if landmarks_px is not None:
        _draw_landmarks(out, landmarks_px)
    return out


def _draw_landmarks(image: np.ndarray, landmarks_px: np.ndarray) -> None:
    pts = np.asarray(landmarks_px, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3) or not np.isfinite(pts).all():
        raise InputError(f"overlay: landmarks_px must be a finite (L, 2) or (L, 3) array, got shape {pts.shape}")
    _draw_dots(image, pts[:, :2], _dot_radius(pts[:, :2], 100.0, 1.0), _LANDMARK_COLOR)


def _dot_radius(points_xy: np.ndarray, per: float, least: float) -> float:
    """A dot radius in px that follows the face's size: its points' extent / ``per``, at least ``least``."""
    extent = float(np.ptp(points_xy, axis=0).max()) if len(points_xy) > 1 else 0.0
    return max(least, extent / per)


def _draw_dots(image: np.ndarray, points_xy: np.ndarray, radius: float, color: Sequence[int]) -> None:
    import cv2

    r = int(round(radius * (1 << _SHIFT)))
    for x, y in _fixed_point(points_xy):
        cv2.circle(image, (int(x), int(y)), r, tuple(color), -1, cv2.LINE_AA, _SHIFT)


def save_image(path: str | os.PathLike[str], image: np.ndarray, durable: bool = True) -> Path:
    """Write an overlay as ``.png`` or ``.jpg``, atomically (its folder is created):
    :func:`facerecon.imageio.save_image` limited to :data:`~facerecon.imageio.PNG_JPG`.

    Args:
        path: output file; the format follows the extension (``.png``, ``.jpg``, ``.jpeg``).
        image: ``(H, W, 3)`` uint8 RGB.
        durable: flush the file to the disk before it replaces ``path`` (:mod:`facerecon.io_utils`).

    Raises:
        InputError: another extension, a malformed image, or a path that cannot be written.
    """
    return imageio.save_image(path, image, suffixes=imageio.PNG_JPG, durable=durable)
