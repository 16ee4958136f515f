"""``facerecon make-initial-mesh``: generate the template meshes and their unpooling hierarchy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

import typer

from facerecon.cli._common import console, display_path, info
from facerecon.errors import FaceReconError, InputError

if TYPE_CHECKING:
    from facerecon.mesh.templates import Template

ORDER = 30

_SHAPES = ("hemisphere", "ellipsoid")


def _shipped_folder() -> Path | None:
    """The repository's ``ellipsoids/`` folder when running from a checkout, else None."""
    import importlib.resources

    folder = Path(str(importlib.resources.files("facerecon.ellipsoids")))
    return folder if (folder.parent / "pyproject.toml").is_file() else None


def make_initial_mesh(
    shapes: Optional[List[str]] = typer.Argument(
        None, help="Shapes to generate: hemisphere, ellipsoid. (default: both)", show_default=False
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output folder. (default: the checkout's ellipsoids/ folder)", show_default=False
    ),
    vertices: Optional[int] = typer.Option(None, "--vertices", help="Level-0 vertex count (one shape only)."),
    faces: Optional[int] = typer.Option(
        None, "--faces", help="Level-0 face count; hemisphere: rim = 2V - F - 2; ellipsoid: F = 2V - 4."
    ),
    levels: Optional[int] = typer.Option(None, "--levels", help="Number of unpoolings. (default: 3 / 2)", show_default=False),
    radius: Optional[float] = typer.Option(None, "--radius", help="Hemisphere radius, template units. (default: 1)", show_default=False),
    radii: Optional[Tuple[float, float, float]] = typer.Option(
        None, "--radii", help="Ellipsoid semi-axes x y z. (default: 0.2 0.2 0.4)", show_default=False
    ),
    center: Optional[Tuple[float, float, float]] = typer.Option(
        None, "--center", help="Centre x y z. (default: 0 0 0 / 0 0 0.8)", show_default=False
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Output file stem. (default: the shape name)", show_default=False),
    check: bool = typer.Option(False, "--check", help="Write nothing: verify the files in --out regenerate identically."),
    show: bool = typer.Option(False, "--show", help="Look at the result: a window with a display, else PNGs (see --screenshot)."),
    screenshot: Optional[Path] = typer.Option(
        None, "--screenshot", help="Folder for offscreen PNG renders (<name>_level<l>.png). (default with --show and no display: --out)",
        show_default=False,
    ),
) -> None:
    """Generate the template meshes (hemisphere, ellipsoid) with their unpooling levels.

    Writes one .npz per shape (layout: docs/formats.md, "Template files") and prints a table per template: vertices, faces, edges, boundary loops and the longest/shortest edge ratio per level.
    """
    shapes = list(shapes or _SHAPES)
    for s in shapes:
        if s not in _SHAPES:
            raise InputError(f"unknown shape {s!r}: choose from {', '.join(_SHAPES)}")
    options: dict[str, Any] = {"vertices": vertices, "faces": faces, "levels": levels, "center": center}
    custom = any(v is not None for v in options.values()) or radius is not None or radii is not None
    if (custom or name) and len(shapes) != 1:
        raise InputError("name exactly one shape when giving --vertices/--faces/--levels/--radius/--radii/--center/--name")

    shipped = _shipped_folder()
    if out is None:
        if shipped is None:
            raise InputError("not running from a source checkout: give --out DIR for the template files")
        out = shipped
    if custom and not name and shipped is not None and out.resolve() == shipped.resolve() and not check:
        raise InputError("custom numbers would overwrite the shipped templates: give --out DIR or --name NAME")

    failed: list[str] = []
    for shape in shapes:
        opts = _shape_options(shape, options, radius, radii)
        path = out / f"{name or shape}.npz"
        template = _generate_or_check(shape, opts, path, check, failed)
        if show:
            _show(template, name or shape, screenshot, out)
    if failed:
        raise FaceReconError(f"not reproducible: {', '.join(failed)} (regenerate with 'facerecon make-initial-mesh')")


def _shape_options(
    shape: str, options: dict[str, Any], radius: Optional[float], radii: Optional[Tuple[float, float, float]]
) -> dict[str, Any]:
    """The generator's options for ``shape``: the shared ones and its own size (radius / radii)."""
    opts = dict(options)
    if shape == "hemisphere":
        opts["radius"] = radius
        if radii is not None:
            raise InputError("--radii is for the ellipsoid; the hemisphere takes --radius")
    else:
        opts["radii"] = radii
        if radius is not None:
            raise InputError("--radius is for the hemisphere; the ellipsoid takes --radii X Y Z")
    return opts


def _generate_or_check(shape: str, opts: dict[str, Any], path: Path, check: bool, failed: list[str]) -> Template:
    """Generate the template; write it to ``path``, or with ``check`` compare it with the file
    there (appending the path to ``failed`` when it differs); print its level table."""
    from facerecon.mesh.templates import generate_template, level_stats, load_template, save_template, templates_equal

    template = generate_template(shape, **opts)
    if check:
        same = path.is_file() and templates_equal(template, load_template(path))
        if not same:
            failed.append(display_path(path))
        console.print(f"{display_path(path)}: {'identical' if same else '[red]differs from a fresh generation[/red]'}")
    else:
        save_template(template, path)
        info(f"wrote {display_path(path)}")
    _print_table(shape, level_stats(template))
    return template


def _print_table(shape: str, rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=shape)
    for col in ("level", "vertices", "faces", "edges", "boundary loops", "longest/shortest edge"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["level"]), str(r["vertices"]), str(r["faces"]), str(r["edges"]), str(r["boundary_loops"]), f"{r['edge_ratio']:.3f}"
        )
    console.print(table)


def _show(template: Template, stem: str, screenshot: Optional[Path], out: Path) -> None:
    from facerecon.mesh.preview import has_display, render_png, show_window

    if screenshot is None and has_display():
        for i, level in enumerate(template.levels):
            info(f"{template.name} level {i}: close the window to continue")
            show_window(level, title=f"{template.name} level {i} ({level.num_vertices} vertices)")
        return
    folder = screenshot or out
    for i, level in enumerate(template.levels):
        png = folder / f"{stem}_level{i}.png"
        render_png(level, png)
        console.print(f"rendered {display_path(png)}")


def register(app: typer.Typer) -> None:
    app.command(
        "make-initial-mesh",
        help=make_initial_mesh.__doc__,
        rich_help_panel="Set-up",
    )(make_initial_mesh)
