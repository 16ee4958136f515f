"""Write meshes and point clouds to the usual 3D formats, and read them back as numpy arrays.

The mesh formats are the registry of :mod:`facerecon.mesh_formats` (one class per format; its
names are re-exported here): :func:`export_mesh` and :func:`load_geometry` pick the format by the
file's extension. The vertex order and count are exactly the caller's (vertex ``i`` of a
predicted mesh stays vertex ``i`` of the template), and every file is written atomically
(:func:`facerecon.io_utils.atomic_path`): an interrupted or failed export leaves no file, not a
half-written one.

Colours given for a format that cannot hold them (``.off``, ``.stl``) are dropped. Point clouds
are ``.ply`` (binary, optional colours and normals) or ``.npy`` (``(N, 3)`` xyz or ``(N, 6)``
xyz + normals, the Pixel2Mesh convention).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from facerecon.errors import InputError
from facerecon.io_utils import atomic_path, atomic_write_bytes
from facerecon.mesh_formats import (
    POINT_FORMATS,
    Geometry,
    MeshFormat,
    decimals_for,
    load_with_trimesh,
    mesh_bytes,
    mesh_format,
    mesh_suffixes,
    register_mesh_format,
)

__all__ = [
    "POINT_FORMATS",
    "Geometry",
    "MeshFormat",
    "decimals_for",
    "export_mesh",
    "export_points",
    "load_geometry",
    "load_with_trimesh",
    "mesh_bytes",
    "mesh_format",
    "mesh_suffixes",
    "register_mesh_format",
]



# --------------------------------------------------------------------------------------- checks
def _suffix(path: Path, allowed: tuple[str, ...], what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise InputError(
            f"{path}: unknown {what} format {path.suffix or '(no extension)'!r}; use one of {', '.join(allowed)}"
        )
    return suffix


def _points_array(path: Path, array: object, name: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise InputError(f"{path}: {name} must be a non-empty (N, 3) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise InputError(f"{path}: {name} must be finite numbers")
    return arr.astype(np.float64, copy=False)


def _faces_array(path: Path, faces: object, num_vertices: int) -> np.ndarray:
    arr = np.asarray(faces)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise InputError(f"{path}: faces must be a non-empty (F, 3) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{path}: faces must be integers, got {arr.dtype}")
    if arr.min() < 0 or arr.max() >= num_vertices:
        raise InputError(f"{path}: face indices must lie in [0, {num_vertices}), got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64, copy=False)


def _colors_uint8(path: Path, colors: object, count: int) -> np.ndarray:
    """``(N, 3|4)`` uint8, or float in [0, 1] -> ``(N, 3)`` uint8 (alpha dropped)."""
    arr = np.asarray(colors)
    if arr.ndim != 2 or arr.shape[0] != count or arr.shape[1] not in (3, 4):
        raise InputError(f"{path}: colors must be ({count}, 3) to match the vertices, got shape {arr.shape}")
    arr = arr[:, :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise InputError(f"{path}: colors must be uint8 or floats in [0, 1], got {arr.dtype}")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise InputError(f"{path}: float colors must lie in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]")
    return np.round(arr * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------- writing
def export_mesh(
    path: str | os.PathLike[str],
    vertices: np.ndarray,
    faces: np.ndarray,
    colors: Optional[np.ndarray] = None,
    durable: bool = True,
) -> None:
    """Write a triangle mesh; the registered format of the extension (any case) writes it.

    Args:
        path: output file with a registered suffix (:func:`mesh_suffixes`); its folder is created.
            Written atomically.
        vertices: ``(V, 3)`` float coordinates in any unit (they are written as given; ``predict``
            writes image px).
        faces: ``(F, 3)`` int vertex indices, counter-clockwise seen from outside.
        colors: ``(V, 3)`` (or ``(V, 4)``, alpha ignored) per-vertex RGB, uint8 or float in
            [0, 1]; None for none. Dropped for a format without colours (``.off``, ``.stl``).
        durable: flush the file to the disk before it replaces ``path``
            (:mod:`facerecon.io_utils`; ``facerecon predict`` writes its meshes without).

    Raises:
        InputError: unknown extension (the message lists the supported ones), malformed arrays,
            or a folder that cannot be created or written.
    """
    path = Path(path)
    suffix = _suffix(path, mesh_suffixes(), "mesh")
    v = _points_array(path, vertices, "vertices")
    f = _faces_array(path, faces, len(v))
    c = None if colors is None else _colors_uint8(path, colors, len(v))
    atomic_write_bytes(path, mesh_bytes(suffix, v, f, c), durable=durable)


def export_points(
    path: str | os.PathLike[str],
    points: np.ndarray,
    colors: Optional[np.ndarray] = None,
    normals: Optional[np.ndarray] = None,
) -> None:
    """Write a point cloud as ``.ply`` (binary) or ``.npy``.

    Args:
        path: output file (``.ply`` or ``.npy``); its folder is created. Written atomically.
        points: ``(N, 3)`` float coordinates, any unit.
        colors: ``(N, 3)`` RGB, uint8 or float in [0, 1]; ``.ply`` only.
        normals: ``(N, 3)`` float normals; stored as float32 in ``.ply``, and as columns 3-5 of
            an ``(N, 6)`` array in ``.npy``.

    Raises:
        InputError: unknown extension, malformed arrays, colours requested for ``.npy``, or a
            folder that cannot be created or written.
    """
    path = Path(path)
    suffix = _suffix(path, POINT_FORMATS, "point-cloud")
    p = _points_array(path, points, "points")
    n = None if normals is None else _points_array(path, normals, "normals")
    if n is not None and len(n) != len(p):
        raise InputError(f"{path}: normals must be ({len(p)}, 3) to match the points, got {n.shape}")
    c = None if colors is None else _colors_uint8(path, colors, len(p))
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            if c is not None:
                raise InputError(f"{path}: .npy point files hold xyz or xyz + normals; write .ply for colours")
            np.save(tmp, p if n is None else np.concatenate([p, n], axis=1))
        else:
            _write_point_ply(tmp, p, c, n)


def _write_point_ply(path: Path, points: np.ndarray, colors: Optional[np.ndarray], normals: Optional[np.ndarray]) -> None:
    fields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    data = np.empty(len(points), dtype=fields)
    for i, axis in enumerate("xyz"):
        data[axis] = points[:, i]
        if normals is not None:
            data["n" + axis] = normals[:, i]
    if colors is not None:
        for i, channel in enumerate(("red", "green", "blue")):
            data[channel] = colors[:, i]
    ply_type = {"<f8": "double", "<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment written by facerecon", f"element vertex {len(points)}"]
    header += [f"property {ply_type[t]} {name}" for name, t in fields]
    header.append("end_header")
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(data.tobytes())


# --------------------------------------------------------------------------------------- reading
def load_geometry(path: str | os.PathLike[str]) -> Geometry:
    """Read a mesh or a point cloud as numpy arrays.

    Meshes: every registered format (:func:`mesh_suffixes`: ``.obj``, ``.ply`` with faces,
    ``.glb``, ``.off``, ``.stl``), read with ``process=False``, so vertex order is the file's;
    triangle soups (``.stl``) get their duplicate vertices merged. Point clouds: ``.ply`` without faces, an ``.obj`` with vertices
    only, ``.npy`` ``(N, 3)`` xyz or ``(N, 6)`` xyz + normals.

    Returns:
        A :class:`Geometry` (``faces`` None for a point cloud).

    Raises:
        InputError: a missing, unreadable, malformed or empty file, or an unknown extension;
            the message names the file.
    """
    path = Path(path)
    suffix = _suffix(path, tuple(dict.fromkeys(mesh_suffixes() + POINT_FORMATS)), "mesh or point-cloud")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: cannot read (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    if suffix == ".npy":
        return _load_npy(path)
    return mesh_format(suffix).read(path)


def _load_npy(path: Path) -> Geometry:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot read ({' '.join(str(exc).split()) or type(exc).__name__})") from None
    if arr.ndim != 2 or arr.shape[1] not in (3, 6):
        raise InputError(f"{path}: expected an (N, 3) or (N, 6) point array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError(f"{path}: the point cloud is empty")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise InputError(f"{path}: the points must be finite numbers")
    arr = arr.astype(np.float64)
    normals = arr[:, 3:6].copy() if arr.shape[1] == 6 else None
    return Geometry(path=path, vertices=np.ascontiguousarray(arr[:, :3]), normals=normals)
