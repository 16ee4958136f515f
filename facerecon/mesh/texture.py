"""Textures of a reconstructed face from its photo: a textured mesh (the photo itself as the texture)
and a UV texture in the template's fixed layout, both with the parts the camera cannot see marked.

A mesh from ``predict`` lies in its photo's pixel frame (x right, y down, z away from the camera), so
a vertex's texture coordinate in the photo is its own ``(x, y)``; what decides whether the photo holds
a surface point's colour is visibility, taken from a depth render of the mesh
(:mod:`facerecon.render`).

The UV layout (:func:`uv_layout`) is defined once from the template in its canonical frame: the
azimuthal equidistant projection about the template's pole that faces the camera. Texel
``(u S, v S)`` of an ``S x S`` UV texture (u right, v down, like image px) shows the same point of
the face for every photo and every model of that template; the face appears upright and frontal,
the rim of the hemisphere template on the inscribed circle.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, cast

import numpy as np

from ..errors import InputError
from ..imageio import sample_colors, save_image
from ..io_utils import atomic_path, atomic_write_bytes
from ..render import RenderResult, incident_triangles, render, vertex_visibility

#: The colour of texture regions the photo does not show (occluded or outside the photo).
OCCLUDED_COLOR = (128, 128, 128)

#: The suffixes a textured mesh can be written with.
TEXTURE_FORMATS = (".obj", ".glb")

#: Rows of :data:`OCCLUDED_COLOR` below the photo crop in a textured mesh's image; occluded faces
#: map to the middle of this band, far enough from the photo for bilinear filtering and mipmaps.
_BAND = 8


@dataclass
class TexturedMesh:
    """A mesh with texture coordinates into an image.

    Attributes:
        vertices: ``(N, 3)`` float64 vertices (image px, as given).
        faces: ``(F, 3)`` int64.
        uv: ``(M, 2)`` float64 texture coordinates in [0, 1], origin at the image's bottom-left
            (the OBJ and trimesh convention).
        face_uv: ``(F, 3)`` int64 rows of ``uv`` for each face corner.
        image: ``(h, w, 3)`` uint8 the texture: the photo's pixels around the face at full
            resolution, with a band of :data:`OCCLUDED_COLOR` below them.
        visible: ``(F,)`` bool faces whose colours come from the photo; the others map to the band.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    face_uv: np.ndarray
    image: np.ndarray
    visible: np.ndarray


def default_tolerance(vertices_px: np.ndarray) -> float:
    """The depth slack (px) of a surface point's own surface: 1 % of the face's width, at least 1 px."""
    v = np.asarray(vertices_px, dtype=np.float64)
    extent = float(np.ptp(v[:, :2], axis=0).max()) if len(v) else 0.0
    return max(1.0, 0.01 * extent)


def _check_photo_mesh(photo: np.ndarray, vertices_px: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = np.asarray(photo)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"a texture needs an (H, W, 3) uint8 photo, got {img.shape} {img.dtype}")
    v = np.asarray(vertices_px, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise InputError(f"a texture needs (N, 3) vertices and (F, 3) faces, got {v.shape} and {f.shape}")
    return img, v, f.astype(np.int64)


def face_depth(vertices_px: np.ndarray, faces: np.ndarray, shape: tuple[int, int]) -> tuple[RenderResult, int, int]:
    """A depth render of the mesh over its bounding box inside an ``(H, W)`` photo.

    Returns:
        (the render of the box, its left column x0, its top row y0): pixel ``(i, j)`` of the render
        is pixel ``(y0 + i, x0 + j)`` of the photo.
    """
    h, w = shape
    v = np.asarray(vertices_px, dtype=np.float64)
    x0 = int(np.clip(np.floor(v[:, 0].min()), 0, w - 1)) if len(v) else 0
    y0 = int(np.clip(np.floor(v[:, 1].min()), 0, h - 1)) if len(v) else 0
    x1 = int(np.clip(np.ceil(v[:, 0].max()), x0 + 1, w)) if len(v) else 1
    y1 = int(np.clip(np.ceil(v[:, 1].max()), y0 + 1, h)) if len(v) else 1
    return render(v - [x0, y0, 0.0], faces, (y1 - y0, x1 - x0)), x0, y0


def visible_vertices(vertices_px: np.ndarray, faces: np.ndarray, shape: tuple[int, int], tolerance: Optional[float] = None) -> np.ndarray:
    """``(N,)`` bool: vertices inside the ``(H, W)`` photo and not hidden by the mesh itself."""
    v = np.asarray(vertices_px, dtype=np.float64)
    tol = default_tolerance(v) if tolerance is None else float(tolerance)
    result, x0, y0 = face_depth(v, faces, shape)
    h, w = shape
    inside = (v[:, 0] >= 0) & (v[:, 0] < w) & (v[:, 1] >= 0) & (v[:, 1] < h)
    own = incident_triangles(faces, len(v))
    return inside & vertex_visibility(result, v - [x0, y0, 0.0], tol, own=own)


def texture_from_photo(
    photo: np.ndarray, vertices_px: np.ndarray, faces: np.ndarray, tolerance: Optional[float] = None
) -> TexturedMesh:
    """The mesh textured with its photo at full resolution; faces the photo does not show are marked.

    A face takes its colours from the photo when its three corners are visible
    (:func:`visible_vertices`); the others map to a band of :data:`OCCLUDED_COLOR`, so the far side
    of a turned face is never painted with the near side's pixels.

    Args:
        photo: ``(H, W, 3)`` uint8 RGB, the photo the mesh was reconstructed from.
        vertices_px: ``(N, 3)`` image px (x right, y down, z away from the camera).
        faces: ``(F, 3)`` int.
        tolerance: depth slack in px (default :func:`default_tolerance`).

    Returns:
        A :class:`TexturedMesh` whose image is the photo's crop around the visible faces plus the band.
    """
    img, v, f = _check_photo_mesh(photo, vertices_px, faces)
    h, w = img.shape[:2]
    seen = visible_vertices(v, f, (h, w), tolerance)
    visible = seen[f].all(axis=1) if len(f) else np.zeros(0, bool)
    used = np.unique(f[visible]) if visible.any() else np.zeros(0, np.int64)
    if used.size:
        x0, y0 = (int(np.floor(v[used, k].min())) for k in (0, 1))
        x1, y1 = (int(np.ceil(v[used, k].max())) + 1 for k in (0, 1))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    else:
        x0, y0, x1, y1 = 0, 0, 1, 1
    crop = img[y0:y1, x0:x1]
    tex = np.empty((crop.shape[0] + _BAND, crop.shape[1], 3), np.uint8)
    tex[: crop.shape[0]] = crop
    tex[crop.shape[0]:] = OCCLUDED_COLOR
    th, tw = tex.shape[:2]
    uv = np.empty((len(v) + 1, 2))
    uv[:-1, 0] = (v[:, 0] - x0) / tw
    uv[:-1, 1] = 1.0 - (v[:, 1] - y0) / th
    uv[-1] = (0.5, (_BAND / 2) / th)  # the middle of the band
    np.clip(uv, 0.0, 1.0, out=uv)  # only vertices of occluded faces can fall outside the crop
    face_uv = np.where(visible[:, None], f, len(v))
    return TexturedMesh(vertices=v, faces=f, uv=uv, face_uv=face_uv, image=tex, visible=visible)


def texture_path(mesh_path: str | os.PathLike[str]) -> Path:
    """Where the image of a textured ``.obj`` is written: ``<stem>.texture.png`` beside it."""
    p = Path(mesh_path)
    return p.with_name(p.stem + ".texture.png")


def save_textured_mesh(path: str | os.PathLike[str], textured: TexturedMesh, durable: bool = True) -> list[Path]:
    """Write a textured mesh: ``.obj`` (with ``vt``) + ``.mtl`` + PNG beside it, or ``.glb`` with the image inside.

    Each file is written atomically. Returns the paths written.

    Raises:
        InputError: a suffix other than ``.obj`` / ``.glb``, or a path that cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TEXTURE_FORMATS:
        raise InputError(f"{path}: a textured mesh is written as {' or '.join(TEXTURE_FORMATS)}, not '{suffix or path.name}'")
    if suffix == ".glb":
        atomic_write_bytes(path, _glb_bytes(textured), durable=durable)
        return [path]
    image_path = texture_path(path)
    mtl_path = path.with_suffix(".mtl")
    mtl = f"# written by facerecon\nnewmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {image_path.name}\n"
    done: list[Path] = []
    try:  # the three files, or none of them
        save_image(image_path, textured.image, durable=durable)
        done.append(image_path)
        atomic_write_bytes(mtl_path, mtl.encode("utf-8"), durable=durable)
        done.append(mtl_path)
        atomic_write_bytes(path, _obj_bytes(textured, mtl_path.name), durable=durable)
    except BaseException:
        for p in done:
            with contextlib.suppress(OSError):
                p.unlink()
        raise
    return [path, mtl_path, image_path]


def _obj_bytes(t: TexturedMesh, mtl_name: str) -> bytes:
    head = (
        f"# written by facerecon: {len(t.vertices)} vertices, {len(t.faces)} faces, textured\n"
        f"mtllib {mtl_name}\n"
    )
    v_text = ("v %.6f %.6f %.6f\n" * len(t.vertices)) % tuple(t.vertices.ravel())
    vt_text = ("vt %.7f %.7f\n" * len(t.uv)) % tuple(t.uv.ravel())
    corners = np.stack([t.faces + 1, t.face_uv + 1], axis=2).reshape(-1)
    f_text = ("f %d/%d %d/%d %d/%d\n" * len(t.faces)) % tuple(corners.tolist())
    return (head + v_text + vt_text + "usemtl face\n" + f_text).encode("ascii")


def _glb_bytes(t: TexturedMesh) -> bytes:
    """glTF binary through trimesh: one vertex per distinct (vertex, uv) pair, the PNG embedded."""
    import trimesh
    from PIL import Image

    pairs = np.stack([t.faces.reshape(-1), t.face_uv.reshape(-1)], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(t.image), diffuse=[255, 255, 255, 255])
    visual = trimesh.visual.TextureVisuals(uv=t.uv[unique[:, 1]], material=material)
    mesh = trimesh.Trimesh(t.vertices[unique[:, 0]], inverse.reshape(-1, 3), visual=visual, process=False)
    return cast(bytes, mesh.export(file_type="glb"))  # a binary format: trimesh returns bytes


# ---------------------------------------------------------------------------------------------
# the fixed UV layout


def uv_layout(template_vertices: np.ndarray, boundary: Optional[np.ndarray] = None) -> np.ndarray:
    """Each template vertex's place in the fixed UV layout, ``(N, 2)`` in [0, 1] (u right, v down).

    The azimuthal equidistant projection about the pole facing the camera (-z in the template's
    canonical frame): a vertex at angle ``theta`` from the pole, seen from the centre, lies at radius
    ``0.5 theta / theta_max`` from (0.5, 0.5), in the direction of its ``(x, y)``. The centre is the
    middle of the bounding box in x and y, and in z the rim's mean depth for an open template (the
    hemisphere: its rim circle) or the box's middle for a closed one.

    Args:
        template_vertices: ``(N, 3)`` the template's finest level in its canonical frame.
        boundary: rim vertex ids of an open template (``Template.boundary``), or None.
    """
    t = np.asarray(template_vertices, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != 3 or len(t) < 3:
        raise InputError(f"uv_layout expects (N >= 3, 3) template vertices, got {t.shape}")
    centre = (t.min(axis=0) + t.max(axis=0)) / 2
    if boundary is not None and len(boundary):
        centre[2] = t[np.asarray(boundary), 2].mean()
    d = t - centre
    theta = np.arccos(np.clip(-d[:, 2] / np.maximum(np.linalg.norm(d, axis=1), 1e-12), -1.0, 1.0))
    phi = np.arctan2(d[:, 1], d[:, 0])
    r = 0.5 * theta / max(float(theta.max()), 1e-12)
    return np.stack([0.5 + r * np.cos(phi), 0.5 + r * np.sin(phi)], axis=1)


@dataclass
class UVTexture:
    """A face's colours in the fixed UV layout.

    Attributes:
        image: ``(S, S, 3)`` uint8; 0 where the texel is not seen.
        mask: ``(S, S)`` bool, True where the photo shows the texel's surface point.
        covered: ``(S, S)`` bool, True where the layout has a surface point (inside the face).
    """

    image: np.ndarray
    mask: np.ndarray
    covered: np.ndarray


def layout_raster(layout: np.ndarray, faces: np.ndarray, size: int, values: Optional[np.ndarray] = None) -> RenderResult:
    """The layout rasterised into ``size x size`` texels: which triangle covers each texel, and
    per-vertex ``values`` (e.g. the mesh's vertices) interpolated there (attribute ``"values"``)."""
    lay = np.asarray(layout, np.float64)
    # depth = the distance from the pole: where the layout folds over (a closed template's far
    # pole), the side nearer the pole wins
    flat = np.column_stack([lay * size, np.linalg.norm(lay - 0.5, axis=1)])
    return render(flat, faces, (size, size), None if values is None else {"values": values})


def uv_texture(
    photo: np.ndarray, vertices_px: np.ndarray, faces: np.ndarray, layout: np.ndarray, size: int = 256,
    tolerance: Optional[float] = None,
) -> UVTexture:
    """The face's colours in the fixed layout: each texel's surface point looked up in the photo.

    A texel is seen when its surface point lies inside the photo and no nearer surface of the mesh
    covers it (depth within ``tolerance`` px of the rendered depth there).

    Args:
        photo: ``(H, W, 3)`` uint8 RGB.
        vertices_px: ``(N, 3)`` the mesh in the photo's pixel frame, template topology.
        faces: ``(F, 3)`` the template's faces.
        layout: ``(N, 2)`` from :func:`uv_layout`.
        size: texels a side.
        tolerance: depth slack in px (default :func:`default_tolerance`).
    """
    img, v, f = _check_photo_mesh(photo, vertices_px, faces)
    if np.shape(layout) != (len(v), 2):
        raise InputError(f"uv_texture: the layout has {np.shape(layout)} rows; the mesh has {len(v)} vertices")
    if not 8 <= int(size) <= 8192:
        raise InputError(f"uv_texture: size must be 8..8192 texels, got {size}")
    texels = layout_raster(layout, f, int(size), v)
    points = texels.attributes["values"][texels.mask].astype(np.float64)  # (P, 3) image px of each texel
    tol = default_tolerance(v) if tolerance is None else float(tolerance)
    depth, x0, y0 = face_depth(v, f, img.shape[:2])
    seen = vertex_visibility(depth, points - [x0, y0, 0.0], tol, own=texels.triangle[texels.mask])
    h, w = img.shape[:2]
    seen &= (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)
    colours = sample_colors(img, points[:, :2])
    image = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), bool)
    image[texels.mask] = np.where(seen[:, None], colours, 0)
    mask[texels.mask] = seen
    return UVTexture(image=image, mask=mask, covered=texels.mask.copy())


def save_uv_texture(path: str | os.PathLike[str], texture: UVTexture, durable: bool = True) -> list[Path]:
    """Write the UV texture as an RGBA PNG: alpha 255 where seen, 0 elsewhere. Returns the path written."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: a UV texture is written as .png (its alpha is the visibility mask)")
    rgba = np.dstack([texture.image, np.where(texture.mask, 255, 0).astype(np.uint8)])
    try:
        with atomic_path(path, durable=durable) as tmp:
            Image.fromarray(rgba).save(tmp, format="PNG")
    except PermissionError:
        raise InputError(f"{path}: cannot write here (permission denied)") from None
    return [path]
