"""Per-pixel maps of reconstructed faces at their photo's size: depth, PNCC and normals.

All faces of a photo go into one map each (the nearest surface wins where they overlap); pixels
with no face are 0. Written as PNG:

- ``depth``: 16-bit grey. A face pixel's value ``d`` (1..65535) means ``z = offset - d * scale``
  image px (z away from the camera, as the mesh), so nearer is brighter; ``scale`` and ``offset``
  (:class:`DepthEncoding`) go into the JSON record. The nearest face pixel is 65535, the farthest 1.
- ``pncc``: 8-bit RGB, the projected normalised coordinate code: each pixel's point on the reference
  (mean) face scaled per axis onto [0, 1] (:func:`facerecon.render.pncc_codes`), times 255.
- ``normals``: 8-bit RGB, the unit surface normal in the common normal-map axes (x right, y up,
  z towards the camera), ``(n + 1) / 2 * 255``; a face turned to the camera is bluish.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from ..imageio import save_image
from ..io_utils import atomic_path
from ..render import pncc_codes, render

#: The map kinds, in the order ``--maps`` lists them.
MAP_KINDS = ("depth", "pncc", "normals")

_LEVELS = 65535


@dataclass(frozen=True)
class DepthEncoding:
    """How a 16-bit depth map's values ``d`` > 0 read as depth: ``z = offset - d * scale`` (image px)."""

    scale: float
    offset: float

    def decode(self, values: np.ndarray) -> np.ndarray:
        """``(H, W)`` float64 z in image px; NaN where the map is 0 (no face)."""
        d = np.asarray(values, dtype=np.float64)
        return np.where(d > 0, self.offset - d * self.scale, np.nan)


def parse_map_kinds(text: str) -> tuple[str, ...]:
    """``"depth,pncc"`` -> ``("depth", "pncc")``; an unknown or empty name is an :class:`InputError`."""
    names = tuple(dict.fromkeys(p.strip().lower() for p in str(text).split(",")))
    bad = [n for n in names if n not in MAP_KINDS]
    if bad or not names:
        raise InputError(f"unknown map '{','.join(bad) or text}': choose from {', '.join(MAP_KINDS)} (comma-separated)")
    return names


def encode_depth(depth: np.ndarray) -> tuple[np.ndarray, Optional[DepthEncoding]]:
    """``(H, W)`` float depth (``+inf`` / NaN where no face) -> (uint16 map, its encoding; None if empty)."""
    z = np.asarray(depth, dtype=np.float64)
    face = np.isfinite(z)
    out = np.zeros(z.shape, np.uint16)
    if not face.any():
        return out, None
    lo, hi = float(z[face].min()), float(z[face].max())
    scale = max(hi - lo, 1e-6) / (_LEVELS - 1)
    offset = hi + scale  # the farthest pixel -> 1, the nearest -> 65535
    out[face] = np.clip(np.rint((offset - z[face]) / scale), 1, _LEVELS).astype(np.uint16)
    return out, DepthEncoding(scale=scale, offset=offset)


def render_maps(
    meshes: Sequence[np.ndarray], faces: np.ndarray, size: tuple[int, int], kinds: Sequence[str],
    pncc_reference: Optional[np.ndarray] = None,
) -> tuple[dict[str, np.ndarray], Optional[DepthEncoding]]:
    """The maps of one photo's faces.

    Args:
        meshes: each face's ``(N, 3)`` vertices in the photo's pixel frame (one topology).
        faces: ``(F, 3)`` the shared triangles (counter-clockwise seen from outside).
        size: the photo's ``(H, W)``.
        kinds: names from :data:`MAP_KINDS`.
        pncc_reference: ``(N, 3)`` the reference (mean) face in the same topology; needed for ``pncc``.

    Returns:
        ({kind: uint16 ``(H, W)`` for depth, uint8 ``(H, W, 3)`` otherwise}, the depth encoding or None).
    """
    kinds = parse_map_kinds(",".join(kinds))
    if "pncc" in kinds and pncc_reference is None:
        raise InputError("a PNCC map needs the reference face of the model's topology")
    h, w = (int(s) for s in size)
    f = np.asarray(faces, dtype=np.int64)
    vs = [np.asarray(m, dtype=np.float64) for m in meshes]
    n = vs[0].shape[0] if vs else 0
    verts = np.concatenate(vs) if vs else np.zeros((0, 3))
    tris = np.concatenate([f + i * n for i in range(len(vs))]) if vs else np.zeros((0, 3), np.int64)
    attributes = {}
    if "pncc" in kinds and pncc_reference is not None:  # checked above: a PNCC map has its reference
        attributes["pncc"] = np.tile(pncc_codes(pncc_reference), (len(vs), 1))
    if "normals" in kinds:
        from ..data.ground_truth import vertex_normals  # the one owner of vertex normals (loads scipy)

        attributes["normals"] = np.concatenate([vertex_normals(v, f) for v in vs]) if vs else np.zeros((0, 3))
    box, x0, y0 = _box(verts, h, w)
    result = render(verts - [x0, y0, 0.0], tris, (box[0], box[1]), attributes)
    out: dict[str, np.ndarray] = {}
    encoding = None
    region = (slice(y0, y0 + box[0]), slice(x0, x0 + box[1]))
    if "depth" in kinds:
        out["depth"] = np.zeros((h, w), np.uint16)
        out["depth"][region], encoding = encode_depth(result.depth)
    if "pncc" in kinds:
        out["pncc"] = np.zeros((h, w, 3), np.uint8)
        out["pncc"][region] = _to_uint8(result.attributes["pncc"], result.mask)
    if "normals" in kinds:
        nrm = result.attributes["normals"]
        nrm = nrm / np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12)
        nrm[..., 1:] *= -1  # image frame (x right, y down, z away) -> normal-map axes (y up, z to the camera)
        out["normals"] = np.zeros((h, w, 3), np.uint8)
        out["normals"][region] = _to_uint8((nrm + 1.0) / 2.0, result.mask)
    return {k: out[k] for k in kinds}, encoding


def _box(verts: np.ndarray, h: int, w: int) -> tuple[tuple[int, int], int, int]:
    """The faces' bounding box inside the photo: ((rows, columns), x0, y0); at least one pixel."""
    if not len(verts):
        return (1, 1), 0, 0
    x0 = int(np.clip(np.floor(verts[:, 0].min()), 0, w - 1))
    y0 = int(np.clip(np.floor(verts[:, 1].min()), 0, h - 1))
    x1 = int(np.clip(np.ceil(verts[:, 0].max()), x0 + 1, w))
    y1 = int(np.clip(np.ceil(verts[:, 1].max()), y0 + 1, h))
    return (y1 - y0, x1 - x0), x0, y0


def _to_uint8(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    out[~mask] = 0
    return out


def map_path(stem_path: str | os.PathLike[str], kind: str) -> Path:
    """``<stem>.<kind>.png`` for a photo's output stem (e.g. ``out/photo`` -> ``out/photo.depth.png``)."""
    p = Path(stem_path)
    return p.with_name(f"{p.name}.{kind}.png")


def save_map(path: str | os.PathLike[str], image: np.ndarray, durable: bool = True) -> Path:
    """Write a map as PNG atomically: ``(H, W)`` uint16 as 16-bit grey, ``(H, W, 3)`` uint8 as RGB."""
    from PIL import Image

    path = Path(path)
    arr = np.asarray(image)
    if arr.ndim == 3:
        return save_image(path, arr, durable=durable)
    if arr.ndim != 2 or arr.dtype != np.uint16:
        raise InputError(f"{path}: a map is (H, W) uint16 or (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    try:
        with atomic_path(path, durable=durable) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG")
    except PermissionError:
        raise InputError(f"{path}: cannot write here (permission denied)") from None
    return path
