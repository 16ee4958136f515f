"""``facerecon view``: look at meshes and point clouds in an Open3D window, or render a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from facerecon.cli._common import console, display_path, info
from facerecon.errors import InputError
from facerecon.mesh_formats import POINT_FORMATS, mesh_suffixes

ORDER = 70


def view(
    files: List[Path] = typer.Argument(
        ..., metavar="MESH_OR_POINTS...",
        help=f"Meshes ({' '.join(mesh_suffixes())}) and point clouds ({' '.join(POINT_FORMATS)}: .ply without faces, .npy (N,3) xyz or (N,6) xyz+normals), shown together where they are.",
        show_default=False,
    ),
    image: Optional[Path] = typer.Option(
        None, "--image", "-i",
        help="The photo the meshes were reconstructed from (they are in its pixel frame, as 'facerecon predict' writes them): drawn behind them, seen from the camera (orthographic, fitted to the photo).",
        show_default=False,
    ),
    points: Optional[Path] = typer.Option(
        None, "--points", "-p",
        help="A ground truth (point cloud or mesh), shown beside the inputs: moved along +x so that it starts 10% of their width to the right of them.",
        show_default=False,
    ),
    error: bool = typer.Option(
        False, "--error",
        help="Colour each input by the distance of every vertex to the nearest --points point (blue 0 to red the largest) and print min/mean/max distance in the inputs' units.",
    ),
    screenshot: Optional[Path] = typer.Option(
        None, "--screenshot", "-s",
        help="Render without a window (no display needed) and write this .png (or .jpg).",
        show_default=False,
    ),
    width: int = typer.Option(1024, "--width", min=16, max=8192, help="Window / picture width, px."),
    height: int = typer.Option(768, "--height", min=16, max=8192, help="Window / picture height, px."),
    wireframe: bool = typer.Option(False, "--wireframe", help="Draw the mesh edges over the surfaces."),
    point_size: Optional[float] = typer.Option(
        None, "--point-size", min=1.0, max=50.0,
        help="Point diameter, screen px. (default: 3; 2 with --image, whose photo is drawn as points)",
        show_default=False,
    ),
) -> None:
    """Look at meshes and point clouds: an Open3D window, or a PNG with --screenshot.

    The camera looks along +z with y down, from where the photo was taken (docs/conventions.md). Meshes without vertex colours are grey, point clouds blue, the ground truth green.

    In the window: left-drag rotates, wheel zooms, ctrl-drag pans, +/- change the point size, W toggles the wireframe, Q closes. Without a display use --screenshot (or run under Xvfb).
    """
    from facerecon.imageio import load_image
    from facerecon.mesh.export import load_geometry
    from facerecon.viewer import build_scene, save_screenshot, show_scene

    _check_options(error, points, screenshot)
    inputs = [load_geometry(f) for f in files]
    truth = load_geometry(points) if points is not None else None
    scene = build_scene(inputs, image=load_image(image) if image is not None else None, ground_truth=truth, error=error)
    for stats in scene.errors:
        console.print(
            f"{stats.label}: distance to {truth.path.name if truth else ''} over {stats.count} vertices: "
            f"min {stats.min:.6g}, mean {stats.mean:.6g}, max {stats.max:.6g} (mesh units)",
            highlight=False, soft_wrap=True,
        )
    if screenshot is not None:
        save_screenshot(scene, screenshot, width=width, height=height, wireframe=wireframe, point_size=point_size)
        info(f"wrote {display_path(screenshot)}")
    else:
        info("close the window (Q) to return")
        show_scene(scene, width=width, height=height, wireframe=wireframe, point_size=point_size)


def _check_options(error: bool, points: Optional[Path], screenshot: Optional[Path]) -> None:
    """Refuse options that cannot work together, or a window without a display, before loading."""
    from facerecon.mesh.preview import has_display

    if error and points is None:
        raise InputError("--error needs a ground truth to measure against: add --points FILE")
    if screenshot is None and not has_display():
        raise InputError("no display for a window: use --screenshot out.png, or set DISPLAY (e.g. under Xvfb)")
    if screenshot is not None and screenshot.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise InputError(f"{screenshot}: --screenshot must end in .png or .jpg")


def register(app: typer.Typer) -> None:
    app.command("view", help=view.__doc__, rich_help_panel="Model")(view)
