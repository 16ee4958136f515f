"""Look at a template: an Open3D window when a display exists, offscreen PNG renders otherwise.

Open3D is imported inside the functions (it is slow to import). Without a display, Open3D's
legacy ``Visualizer`` falls back to EGL offscreen rendering (Mesa), which works on headless
servers; it needs the system library ``libusb-1.0-0``.

This module is also the one place that imports Open3D (:func:`open3d_module`) and drives its
``Visualizer`` offscreen (:func:`render_offscreen`) or in a window (:func:`run_window`), for the
templates here and for ``facerecon view`` (``facerecon.viewer``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import sys
import tempfile
from typing import Any, Callable

import numpy as np

from facerecon.errors import DependencyError
from facerecon.imageio import PNG_JPG, save_image
from facerecon.mesh.templates import MeshLevel
from facerecon.opengl import before_opengl

__all__ = ["has_display", "open3d_module", "render_offscreen", "render_png", "run_window", "show_window"]


def has_display() -> bool:
    """True when an X11 or Wayland display is available for a window."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def ensure_runtime_dir() -> None:
    """Give the graphics stack a valid ``XDG_RUNTIME_DIR`` (a private folder of ours).

    On servers and in containers it is often unset or points at a folder that does not exist,
    and the EGL/Mesa path Open3D renders with then prints ``error: XDG_RUNTIME_DIR is invalid
    or not set`` on every successful run. A valid one (a folder of this user, mode 0700) is
    left as it is; otherwise a temporary one is made and removed when the process ends.
    """
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current:
        try:
            st = os.stat(current)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077:
                return
        except OSError:
            pass
    private = tempfile.mkdtemp(prefix="facerecon-xdg-")  # mode 0700, owned by us
    os.environ["XDG_RUNTIME_DIR"] = private
    atexit.register(shutil.rmtree, private, True)


def open3d_module():
    """Open3D, imported quietly; the one place that imports it.

    When torch is loaded in this process, ``torch._dynamo`` is imported first: once Open3D has
    created an offscreen (EGL/Mesa) context, the first optimizer step's import of torch's compiler
    stack (and triton) crashes the process (a segmentation fault), and the other order is safe.
    """
    ensure_runtime_dir()  # before Open3D (and the EGL libraries it loads) read it
    before_opengl()  # libraries with their own LLVM before Mesa's (facerecon.opengl)
    if "torch" in sys.modules:
        import torch._dynamo  # noqa: F401  (imported for its side effect: torch's compiler stack before Open3D's context)
    try:
        import open3d as o3d
    except (ImportError, OSError) as exc:  # OSError: a missing system library such as libusb
        raise DependencyError(f"open3d cannot be imported ({exc}); install open3d and libusb-1.0-0") from None
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)  # no INFO lines about EGL fallbacks
    return o3d


def _geometries(level: MeshLevel):
    """A shaded surface (both sides lit) and its wireframe, as Open3D geometries."""
    o3d = open3d_module()
    v = o3d.utility.Vector3dVector(level.vertices.astype(np.float64))
    mesh = o3d.geometry.TriangleMesh(v, o3d.utility.Vector3iVector(level.faces.astype(np.int32)))
    mesh.compute_vertex_normals()
    mesh.paint_uniform_color([0.75, 0.78, 0.85])
    lines = o3d.geometry.LineSet(v, o3d.utility.Vector2iVector(level.edges.astype(np.int32)))
    lines.paint_uniform_color([0.1, 0.1, 0.3])
    return [mesh, lines]


def _populate(vis, level: MeshLevel) -> None:
    """Add the template's geometries to a created ``Visualizer``, then a three-quarter view from
    the camera side (-z, where the hemisphere's dome faces), y down."""
    for g in _geometries(level):
        vis.add_geometry(g)
    ctl = vis.get_view_control()
    ctl.set_front([0.9, -0.5, -0.8])
    ctl.set_up([0.0, -1.0, 0.0])
    ctl.set_zoom(0.8)
    opt = vis.get_render_option()
    opt.mesh_show_back_face = True
    opt.background_color = np.array([1.0, 1.0, 1.0])


def render_offscreen(
    populate: Callable[[Any], None], width: int, height: int, window_name: str = "facerecon"
) -> np.ndarray:
    """Draw with Open3D's legacy ``Visualizer`` offscreen (EGL when there is no display) and
    capture the picture: the one offscreen render path (templates here, ``facerecon view``).

    Args:
        populate: ``populate(vis)`` adds the geometries to the created ``Visualizer`` and sets
            its camera and render options.
        width, height: image size in pixels.
        window_name: the (invisible) window's name.

    Returns:
        (height, width, 3) float32 RGB, Open3D's float buffer (values in [0, 1]).

    Raises:
        DependencyError: Open3D is missing or cannot create an offscreen render context.
    """
    o3d = open3d_module()
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(window_name=window_name, width=width, height=height, visible=False):
        raise DependencyError("Open3D could not create an offscreen render context (EGL/Mesa missing?)")
    try:
        populate(vis)
        vis.poll_events()
        vis.update_renderer()
        return np.asarray(vis.capture_screen_float_buffer(True), dtype=np.float32)
    finally:
        vis.destroy_window()


def run_window(populate: Callable[[Any], None], width: int, height: int, title: str) -> None:
    """Open an interactive Open3D window, ``populate(vis)`` it, and block until it is closed.

    Raises:
        DependencyError: Open3D is missing or cannot open a window on the display.
    """
    o3d = open3d_module()
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(window_name=title, width=width, height=height):
        raise DependencyError(f"Open3D could not open a window on display {os.environ.get('DISPLAY', '')!r}")
    try:
        populate(vis)
        vis.run()
    finally:
        vis.destroy_window()


def render_png(level: MeshLevel, path: str | os.PathLike[str], width: int = 800, height: int = 600) -> np.ndarray:
    """Render one mesh level offscreen to a PNG, viewed from the camera side.

    Args:
        level: the mesh level to draw.
        path: output ``.png`` (or ``.jpg``; written atomically).
        width, height: image size in pixels.

    Returns:
        (height, width, 3) float32 RGB in [0, 1], the rendered image.

    Raises:
        DependencyError: Open3D is missing or cannot create a (offscreen) window.
        InputError: ``path`` cannot be written.
    """
    image = render_offscreen(lambda vis: _populate(vis, level), width, height)
    save_image(path, (np.clip(image, 0, 1) * 255).astype(np.uint8), suffixes=PNG_JPG)
    return image


def show_window(level: MeshLevel, title: str = "facerecon template") -> None:
    """Open an interactive Open3D window on ``level`` (blocks until it is closed)."""
    run_window(lambda vis: _populate(vis, level), 1024, 768, title)
