"""Look at meshes and point clouds: an Open3D window, or an offscreen PNG (``facerecon view``).

Two steps. :func:`build_scene` turns loaded geometries (:func:`facerecon.mesh.export.load_geometry`)
into a :class:`Scene` with numpy arrays only: the inputs, an optional photo behind them, an
optional ground truth placed beside them and per-vertex error colours. :func:`render_scene` /
:func:`save_screenshot` and :func:`show_scene` draw a scene with Open3D's legacy ``Visualizer``.

The camera looks along +z with y down (``front = (0, 0, -1)``, ``up = (0, -1, 0)``), i.e. from
where the photo was taken, for meshes in the photo's pixel frame (docs/conventions.md). With a
photo the projection is orthographic and fitted to the photo, so a mesh from ``facerecon predict``
lies exactly on the face it came from; otherwise it is a perspective view fitted to the scene.

The photo is drawn as a dense grid of coloured points (one per screen pixel it covers), not as a
textured quad: Open3D's legacy lit texture shader brightens textures, while points without normals
are drawn unlit, so the photo keeps its colours while the meshes stay shaded.

Headless machines: without a display, ``Visualizer.create_window(visible=False)`` falls back to
EGL offscreen rendering (Mesa), so screenshots work on servers; a window needs a display (an X
server such as Xvfb works).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import numpy as np

from facerecon.errors import DependencyError, InputError
from facerecon.mesh.export import Geometry

__all__ = [
    "ErrorStats",
    "Photo",
    "Scene",
    "ViewItem",
    "build_scene",
    "error_colors",
    "fit_zoom",
    "render_scene",
    "save_screenshot",
    "show_scene",
    "vertex_errors",
]

MESH_COLOR = (0.75, 0.78, 0.85)  # neutral grey-blue for meshes without vertex colours
POINT_COLOR = (0.25, 0.35, 0.75)  # input point clouds without colours
TRUTH_COLOR = (0.20, 0.65, 0.35)  # the ground truth (--points) without colours
BACKGROUND = (1.0, 1.0, 1.0)
FRONT = (0.0, 0.0, -1.0)  # from the look-at point towards the camera: the camera sits at -z
UP = (0.0, -1.0, 0.0)  # image y points down
GAP = 0.1  # the ground truth is placed this fraction of the inputs' width to their right
FILL = 0.95  # fraction of the window the fitted view fills
ORTHOGRAPHIC_FOV = 5.0  # Open3D's legacy ViewControl projects orthographically at its minimum field of view
PERSPECTIVE_FOV = 60.0  # degrees, vertical
PHOTO_POINT_SIZE = 2.0  # px; the photo grid has one point per screen pixel, 2 px closes rounding gaps

# blue -> cyan -> green -> yellow -> red
_COLORMAP = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class ViewItem:
    """One geometry of a scene.

    Attributes:
        label: a name for messages (the file name).
        vertices: ``(N, 3)`` float64 coordinates, as placed in the scene.
        faces: ``(F, 3)`` int64 for a mesh, None for a point cloud.
        colors: ``(N, 3)`` float64 RGB in [0, 1] per vertex, or None for the default colour.
        role: ``"input"`` or ``"ground_truth"``.
        uv: ``(N, 2)`` float64 texture coordinates (origin bottom-left) of a textured mesh, or None.
        texture: ``(h, w, 3)`` uint8 its texture image, or None.
    """

    label: str
    vertices: np.ndarray
    faces: Optional[np.ndarray] = None
    colors: Optional[np.ndarray] = None
    role: str = "input"
    uv: Optional[np.ndarray] = None
    texture: Optional[np.ndarray] = None

    @property
    def is_textured(self) -> bool:
        return self.faces is not None and self.uv is not None and self.texture is not None

    @property
    def is_mesh(self) -> bool:
        return self.faces is not None


@dataclass(frozen=True)
class Photo:
    """The photo behind the meshes: ``image`` ``(H, W, 3)`` uint8 RGB covering x in [0, W] and
    y in [0, H] (image px) in the plane ``z`` (px, beyond every mesh)."""

    image: np.ndarray
    z: float


@dataclass(frozen=True)
class ErrorStats:
    """Distances from one input's vertices to the nearest ground-truth point, in the input's units."""

    label: str
    count: int
    min: float
    mean: float
    max: float


@dataclass
class Scene:
    """Everything to draw, as numpy arrays (see :func:`build_scene`)."""

    items: list[ViewItem]
    photo: Optional[Photo] = None
    errors: list[ErrorStats] = field(default_factory=list)
    error_max: float = 0.0  # the distance shown in red by the error colours

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(min, max)`` corners, (3,) float64 each, of every item and the photo."""
        pts = [item.vertices for item in self.items]
        if self.photo is not None:
            h, w = self.photo.image.shape[:2]
            pts.append(np.array([[0.0, 0.0, self.photo.z], [w, h, self.photo.z]]))
        stacked = np.concatenate(pts, axis=0)
        return stacked.min(axis=0), stacked.max(axis=0)


# ------------------------------------------------------------------------------------- errors
def vertex_errors(vertices: np.ndarray, points: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Distance from each vertex to the nearest point (exact, ``facerecon.ops.nearest_neighbors``).

    Args:
        vertices: ``(V, 3)`` float, any unit.
        points: ``(M, 3)`` float, same unit.
        device: torch device for the search.

    Returns:
        ``(V,)`` float64 Euclidean distances (not squared), in the input unit.
    """
    import torch

    from facerecon.ops import nearest_neighbors

    x = torch.as_tensor(np.asarray(vertices, dtype=np.float64), device=device)[None]
    y = torch.as_tensor(np.asarray(points, dtype=np.float64), device=device)[None]
    result = nearest_neighbors(x, y)
    return result.dist_xy[0].clamp_min(0).sqrt().cpu().numpy()


def error_colors(errors: np.ndarray, vmax: Optional[float] = None) -> np.ndarray:
    """Map distances to colours: 0 is blue, ``vmax`` and above red (via cyan, green, yellow).

    Args:
        errors: ``(N,)`` non-negative distances.
        vmax: the distance shown in red; default ``errors.max()``. When it is 0 everything is blue.

    Returns:
        ``(N, 3)`` float64 RGB in [0, 1].
    """
    e = np.asarray(errors, dtype=np.float64)
    top = float(e.max()) if vmax is None and e.size else float(vmax or 0.0)
    t = np.clip(e / top, 0.0, 1.0) if top > 0 else np.zeros_like(e)
    pos = t * (len(_COLORMAP) - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), len(_COLORMAP) - 2)
    frac = (pos - lo)[:, None]
    return _COLORMAP[lo] * (1.0 - frac) + _COLORMAP[lo + 1] * frac


# ------------------------------------------------------------------------------------- scene
def _item(geometry: Geometry, role: str) -> ViewItem:
    colors = None if geometry.colors is None else geometry.colors.astype(np.float64) / 255.0
    return ViewItem(
        label=geometry.path.name, vertices=geometry.vertices, faces=geometry.faces, colors=colors, role=role,
        uv=geometry.uv, texture=geometry.texture,
    )


def build_scene(
    inputs: Sequence[Geometry],
    image: Optional[np.ndarray] = None,
    ground_truth: Optional[Geometry] = None,
    error: bool = False,
    device: str = "cpu",
) -> Scene:
    """Arrange geometries for viewing.

    Args:
        inputs: meshes and/or point clouds, shown where they are.
        image: ``(H, W, 3)`` uint8 RGB photo the inputs are in the pixel frame of (image px, z
            away from the camera). It is placed behind them, in the plane z = (largest input z) +
            1% of max(H, W).
        ground_truth: shown beside the inputs: translated along +x so that it starts
            ``GAP`` x (the inputs' width) to the right of everything else (photo included).
        error: colour every input by the distance of each vertex to the nearest ground-truth
            point (its vertices when it is a mesh), computed before the translation; blue is 0
            and red the largest distance over all inputs. Needs ``ground_truth``.
        device: torch device for the nearest-neighbour search.

    Returns:
        A :class:`Scene`; with ``error``, ``scene.errors`` holds min/mean/max per input.

    Raises:
        InputError: no inputs, ``error`` without ``ground_truth``, or a malformed image.
    """
    if not inputs:
        raise InputError("nothing to show: give at least one mesh or point cloud")
    if error and ground_truth is None:
        raise InputError("--error needs a ground truth to measure against: add --points FILE")
    items = [_item(g, "input") for g in inputs]
    scene = Scene(items=items)
    if error:
        assert ground_truth is not None
        per_item = [vertex_errors(item.vertices, ground_truth.vertices, device=device) for item in items]
        scene.error_max = max(float(e.max()) for e in per_item)
        scene.items = [  # error colours replace the texture
            replace(item, colors=error_colors(e, scene.error_max), uv=None, texture=None) for item, e in zip(items, per_item)
        ]
        scene.errors = [
            ErrorStats(item.label, len(e), float(e.min()), float(e.mean()), float(e.max())) for item, e in zip(items, per_item)
        ]
    if image is not None:
        scene.photo = _photo(image, scene)
    if ground_truth is not None:
        scene.items.append(_beside(_item(ground_truth, "ground_truth"), scene))
    return scene


def _photo(image: np.ndarray, scene: Scene) -> Photo:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) == 0:
        raise InputError(f"the photo must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    z_max = max(float(item.vertices[:, 2].max()) for item in scene.items)
    return Photo(image=image, z=z_max + 0.01 * max(image.shape[:2]))


def _beside(truth: ViewItem, scene: Scene) -> ViewItem:
    lo, hi = scene.bounds()
    width = float(hi[0] - lo[0])
    shift = hi[0] + GAP * width - float(truth.vertices[:, 0].min())
    return replace(truth, vertices=truth.vertices + np.array([shift, 0.0, 0.0]))


# ------------------------------------------------------------------------------------- Open3D
def fit_zoom(lo: np.ndarray, hi: np.ndarray, width: int, height: int, fill: float = FILL) -> float:
    """Open3D's ``zoom`` that makes the x-y box ``[lo, hi]`` fill ``fill`` of a window, seen along z.

    The legacy ``ViewControl`` shows ``zoom * max_extent`` (the scene box's largest side) above
    and below the look-at point at its depth (exactly, for the orthographic projection), and
    ``width / height`` times that left and right.
    """
    extent = hi - lo
    half_height = max(extent[1] / 2.0, extent[0] / 2.0 * height / width) / fill
    max_extent = float(extent.max())
    return half_height / max_extent if max_extent > 0 else 1.0


def _o3d():
    from facerecon.mesh.preview import open3d_module as load_open3d  # one place decides how Open3D is imported

    return load_open3d()


def _to_open3d(item: ViewItem):
    o3d = _o3d()
    v = o3d.utility.Vector3dVector(np.ascontiguousarray(item.vertices, dtype=np.float64))
    default = TRUTH_COLOR if item.role == "ground_truth" else (MESH_COLOR if item.is_mesh else POINT_COLOR)
    if item.is_mesh:
        geom = o3d.geometry.TriangleMesh(v, o3d.utility.Vector3iVector(np.ascontiguousarray(item.faces, dtype=np.int32)))
        geom.compute_vertex_normals()
    else:
        geom = o3d.geometry.PointCloud(v)  # no normals: drawn unlit, in its own colours
    if item.is_textured:
        _set_texture(geom, item)
    elif item.colors is not None:
        geom.vertex_colors = o3d.utility.Vector3dVector(np.ascontiguousarray(item.colors, dtype=np.float64))
    else:
        geom.paint_uniform_color(default)
    return geom


def _set_texture(geom: Any, item: ViewItem) -> None:
    """Give an Open3D mesh its texture: one ``(u, v)`` per triangle corner, with v measured from
    the image's top row as Open3D samples it (the file's v is from the bottom row)."""
    o3d = _o3d()
    assert item.uv is not None and item.texture is not None and item.faces is not None
    corners = item.uv[item.faces.reshape(-1)]
    corners = np.stack([corners[:, 0], 1.0 - corners[:, 1]], axis=1)
    geom.triangle_uvs = o3d.utility.Vector2dVector(np.ascontiguousarray(corners, dtype=np.float64))
    geom.textures = [o3d.geometry.Image(np.ascontiguousarray(item.texture))]
    geom.triangle_material_ids = o3d.utility.IntVector(np.zeros(len(item.faces), dtype=np.int32))


def _photo_grid(photo: Photo, pixels_per_px: float):
    """The photo as an unlit point cloud with about one point per screen pixel it covers."""
    import cv2

    o3d = _o3d()
    h, w = photo.image.shape[:2]
    gw, gh = max(1, int(round(w * pixels_per_px))), max(1, int(round(h * pixels_per_px)))
    interp = cv2.INTER_AREA if gw < w else cv2.INTER_NEAREST
    grid = cv2.resize(photo.image, (gw, gh), interpolation=interp)
    xs = (np.arange(gw) + 0.5) * (w / gw)
    ys = (np.arange(gh) + 0.5) * (h / gh)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, photo.z)], axis=1)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    cloud.colors = o3d.utility.Vector3dVector(grid.reshape(-1, 3).astype(np.float64) / 255.0)
    return cloud


def _populate(vis: Any, scene: Scene, width: int, height: int, wireframe: bool, point_size: Optional[float]) -> None:
    """Add the scene to a created ``Visualizer`` and set the camera and render options."""
    lo, hi = scene.bounds()
    for item in scene.items:
        vis.add_geometry(_to_open3d(item))
    if scene.photo is not None:
        zoom_px = FILL * min(width / (hi[0] - lo[0]), height / (hi[1] - lo[1]))  # screen px per image px
        vis.add_geometry(_photo_grid(scene.photo, zoom_px))
    _set_camera(vis, lo, hi, width, height, orthographic=scene.photo is not None)
    opt = vis.get_render_option()
    opt.background_color = np.asarray(BACKGROUND)
    opt.mesh_show_back_face = True
    opt.mesh_show_wireframe = bool(wireframe)
    meshes = [item for item in scene.items if item.is_mesh]
    if meshes and all(item.is_textured for item in meshes):
        opt.light_on = False  # a photo texture carries its own shading: shown as the photo shows it
    opt.point_size = float(point_size if point_size is not None else (PHOTO_POINT_SIZE if scene.photo is not None else 3.0))


def _set_camera(vis: Any, lo: np.ndarray, hi: np.ndarray, width: int, height: int, orthographic: bool) -> None:
    """Look along +z, y down, at the centre of the box ``[lo, hi]``, fitted to the window.

    The view is set as a whole (``set_view_status``) with our box: Open3D's own scene box skips
    flat geometries (zero volume, such as the photo grid), which would break the fit.
    """
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    hi = np.where(hi - lo > 0, hi, lo + max(float((hi - lo).max()), 1.0) * 1e-3)  # no zero-size box
    view = {
        "boundingbox_min": lo.tolist(),
        "boundingbox_max": hi.tolist(),
        "field_of_view": ORTHOGRAPHIC_FOV if orthographic else PERSPECTIVE_FOV,
        "front": list(FRONT),
        "up": list(UP),
        "lookat": ((lo + hi) / 2.0).tolist(),
        "zoom": fit_zoom(lo, hi, width, height),
    }
    status = {"class_name": "ViewTrajectory", "interval": 29, "is_loop": False, "trajectory": [view],
              "version_major": 1, "version_minor": 0}
    vis.set_view_status(json.dumps(status))  # returns None; a rejected status is logged and ignored
    applied = json.loads(vis.get_view_status())["trajectory"][0]
    if not np.allclose(applied["boundingbox_max"], view["boundingbox_max"]) or applied["zoom"] != view["zoom"]:
        raise DependencyError("Open3D did not accept the camera settings (set_view_status)")


def _check_size(width: int, height: int) -> None:
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise InputError(f"window size {width}x{height} px is out of range (16 to 8192 each)")


def render_scene(
    scene: Scene, width: int = 1024, height: int = 768, wireframe: bool = False, point_size: Optional[float] = None
) -> np.ndarray:
    """Render a scene offscreen (no display needed: EGL).

    Args:
        scene: from :func:`build_scene`.
        width, height: image size in pixels.
        wireframe: draw the mesh edges over the surfaces.
        point_size: point diameter in screen pixels (default 3; 2 with a photo).

    Returns:
        ``(height, width, 3)`` uint8 RGB.

    Raises:
        InputError: a size out of range.
        DependencyError: Open3D is missing or cannot create an offscreen context.
    """
    from facerecon.mesh.preview import render_offscreen

    _check_size(width, height)
    buffer = render_offscreen(
        lambda vis: _populate(vis, scene, width, height, wireframe, point_size), width, height, "facerecon view"
    )
    return np.round(np.clip(buffer, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_screenshot(
    scene: Scene,
    path: str | os.PathLike[str],
    width: int = 1024,
    height: int = 768,
    wireframe: bool = False,
    point_size: Optional[float] = None,
) -> np.ndarray:
    """:func:`render_scene` and write the picture atomically (``.png`` or ``.jpg``).

    Returns:
        ``(height, width, 3)`` uint8 RGB, the picture written.
    """
    from facerecon.imageio import PNG_JPG, image_format, save_image

    image_format(path, PNG_JPG)  # fail before rendering
    image = render_scene(scene, width, height, wireframe, point_size)
    save_image(path, image, suffixes=PNG_JPG)
    return image


def show_scene(
    scene: Scene,
    width: int = 1024,
    height: int = 768,
    wireframe: bool = False,
    point_size: Optional[float] = None,
    title: str = "facerecon view",
) -> None:
    """Open an interactive Open3D window on a scene; returns when the window is closed.

    Raises:
        InputError: there is no display (the message says to use a screenshot or set DISPLAY).
        DependencyError: Open3D is missing or cannot open a window on the display.
    """
    from facerecon.mesh.preview import has_display, run_window

    _check_size(width, height)
    if not has_display():
        raise InputError("no display for a window: use --screenshot out.png, or set DISPLAY (e.g. under Xvfb)")
    run_window(lambda vis: _populate(vis, scene, width, height, wireframe, point_size), width, height, title)
