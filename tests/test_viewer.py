"""``facerecon view`` and facerecon.viewer: scene layout, error colours, headless renders, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree
from typer.testing import CliRunner

from facerecon.cli import app
from facerecon.errors import InputError
from facerecon.mesh.export import Geometry, export_mesh, export_points
from facerecon.mesh.templates import load_template
from facerecon.viewer import GAP, build_scene, error_colors, fit_zoom, render_scene, vertex_errors

runner = CliRunner()
WHITE = 250  # background pixels are (255, 255, 255); anything darker in a channel is drawn


def _grid_mesh(n: int = 5, spacing: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """An n x n vertex grid in the z = 0 plane, x and y in [0, (n-1) spacing], facing the camera."""
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float64) * spacing
    vertices = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], axis=1)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            a, b, d, e = r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1
            faces += [[a, d, e], [a, e, b]]  # counter-clockwise on the screen (y down): normal -z
    return vertices, np.array(faces, dtype=np.int64)


def _geometry(name: str, vertices: np.ndarray, faces: np.ndarray | None = None) -> Geometry:
    return Geometry(path=Path(name), vertices=np.asarray(vertices, np.float64), faces=faces)


@pytest.fixture(scope="module")
def offscreen() -> None:
    """Skip when Open3D cannot create an offscreen (EGL) context on this machine."""
    from facerecon.errors import DependencyError
    from facerecon.mesh.preview import open3d_module

    try:
        o3d = open3d_module()  # as the viewer loads it: libraries with their own LLVM first (facerecon.opengl)
    except DependencyError as exc:
        pytest.skip(f"open3d unavailable: {exc}")
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(width=64, height=64, visible=False):
        pytest.skip("Open3D cannot create an offscreen render context here (no EGL/Mesa)")
    vis.destroy_window()


# ----------------------------------------------------------------------------- numbers, no GL
def test_error_colours_blue_to_red() -> None:
    c = error_colors(np.array([0.0, 0.5, 1.0, 2.0]), vmax=1.0)
    np.testing.assert_allclose(c, [[0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 0, 0]])  # 0 blue, half green, >= vmax red
    np.testing.assert_allclose(error_colors(np.zeros(3)), np.tile([0.0, 0.0, 1.0], (3, 1)))  # all zero: blue
    np.testing.assert_allclose(error_colors(np.array([0.25, 1.0]))[0], [0.0, 1.0, 1.0])  # default vmax: the max


def test_vertex_errors_match_scipy() -> None:
    rng = np.random.default_rng(3)
    v, p = rng.normal(size=(300, 3)), rng.normal(size=(1000, 3))
    np.testing.assert_allclose(vertex_errors(v, p), cKDTree(p).query(v)[0], rtol=1e-12, atol=1e-12)


def test_error_zero_for_identical_and_shift_for_shifted() -> None:
    v, f = _grid_mesh()
    truth = _geometry("gt.npy", v)
    same = build_scene([_geometry("a.obj", v, f)], ground_truth=truth, error=True)
    assert same.errors[0].max == 0.0 and same.errors[0].mean == 0.0
    np.testing.assert_allclose(same.items[0].colors, np.tile([0.0, 0.0, 1.0], (25, 1)))
    # Every vertex moved 0.3 off the plane: its nearest truth point is the one below it, at 0.3.
    shifted = build_scene([_geometry("b.obj", v + [0.0, 0.0, 0.3], f)], ground_truth=truth, error=True)
    s = shifted.errors[0]
    assert (s.count, s.min, s.mean, s.max) == (25, pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))
    assert shifted.error_max == pytest.approx(0.3)


def test_ground_truth_is_placed_beside() -> None:
    v, f = _grid_mesh()  # x in [0, 4]
    scene = build_scene([_geometry("a.obj", v, f)], ground_truth=_geometry("gt.npy", v))
    gt = scene.items[-1]
    assert gt.role == "ground_truth"
    assert gt.vertices[:, 0].min() == pytest.approx(4.0 + GAP * 4.0)  # 10% of the width to the right
    np.testing.assert_array_equal(gt.vertices[:, 1:], v[:, 1:])
    np.testing.assert_array_equal(scene.items[0].vertices, v)  # the input stays where it is


def test_photo_goes_behind_the_mesh() -> None:
    v, f = _grid_mesh(spacing=10.0)
    v[:, 2] = np.linspace(-5.0, 2.0, len(v))
    photo = np.zeros((60, 80, 3), np.uint8)
    scene = build_scene([_geometry("a.obj", v, f)], image=photo)
    assert scene.photo is not None and scene.photo.z == pytest.approx(2.0 + 0.01 * 80)


def test_scene_errors() -> None:
    v, f = _grid_mesh()
    with pytest.raises(InputError, match="--points"):
        build_scene([_geometry("a.obj", v, f)], error=True)
    with pytest.raises(InputError, match="at least one"):
        build_scene([])
    with pytest.raises(InputError, match="uint8"):
        build_scene([_geometry("a.obj", v, f)], image=np.zeros((4, 4), np.uint8))


def test_fit_zoom_hand_worked() -> None:
    # A 200 x 300 box in a 400 x 300 window: the height limits, half height 150 / 0.95, max extent 300.
    assert fit_zoom(np.zeros(3), np.array([200.0, 300.0, 3.0]), 400, 300) == pytest.approx(150 / 0.95 / 300)
    # A 400 x 100 box: the width limits, half height = 200 * 300 / 400 / 0.95, max extent 400.
    assert fit_zoom(np.zeros(3), np.array([400.0, 100.0, 0.0]), 400, 300) == pytest.approx(150 / 0.95 / 400)


# ----------------------------------------------------------------------------- offscreen renders
@pytest.mark.usefixtures("offscreen")
def test_render_hemisphere_not_blank() -> None:
    level = load_template("hemisphere").levels[-1]
    scene = build_scene([_geometry("hemisphere.obj", level.vertices, level.faces.astype(np.int64))])
    image = render_scene(scene, width=400, height=300)
    assert image.shape == (300, 400, 3) and image.dtype == np.uint8
    drawn = (image < WHITE).any(axis=2)
    # Hand-worked silhouette: box x, y in [-1, 1], z in [-1, 0]; zoom = (1 / 0.95) / 2 (height limits),
    # so view_ratio = 1 / 0.95, the eye is view_ratio / tan(30 deg) = 1.823 in front of the box centre
    # (z = -0.5), i.e. 2.323 from the sphere's centre. The dome's outline is the sphere's tangent cone:
    # tan(half angle) = 1 / sqrt(2.323^2 - 1) = 0.4769, on screen 0.4769 / tan(30 deg) * 150 px = 124 px.
    distance = (1 / 0.95) / math.tan(math.radians(30)) + 0.5
    radius_px = 1 / math.sqrt(distance**2 - 1) / math.tan(math.radians(30)) * 150
    area_radius = math.sqrt(drawn.sum() / math.pi)
    assert abs(area_radius - radius_px) < 0.05 * radius_px, (area_radius, radius_px)
    ys, xs = np.nonzero(drawn)
    assert abs(xs.mean() - 199.5) < 2 and abs(ys.mean() - 149.5) < 2  # centred
    assert 0.3 < drawn.mean() < 0.45  # pi 124^2 / (400 x 300) = 0.40
    shade = image[drawn].astype(float).mean(axis=1)
    assert shade.std() > 5  # shaded, not a flat silhouette


@pytest.mark.usefixtures("offscreen")
def test_cli_screenshot_with_photo(tmp_path: Path) -> None:
    # A 160 x 120 photo: magenta, with a cyan 20 x 20 block in its top-left corner; a 40 x 30 px square
    # mesh over x 100..140, y 70..100 (its pixel frame). In a 320 x 240 window the photo is scaled by
    # 0.95 * min(320 / 160, 240 / 120) = 1.9 and centred: x0 = (320 - 304) / 2 = 8, y0 = (240 - 228) / 2 = 6.
    photo = np.empty((120, 160, 3), np.uint8)
    photo[:] = (255, 0, 255)
    photo[:20, :20] = (0, 255, 255)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    v, f = _grid_mesh(n=2)
    v = v * [40.0, 30.0, 0.0] + [100.0, 70.0, 0.0]
    export_mesh(tmp_path / "face.ply", v, f)
    out = tmp_path / "shot.png"
    result = runner.invoke(app, ["view", str(tmp_path / "face.ply"), "--image", str(tmp_path / "photo.png"),
                                 "--screenshot", str(out), "--width", "320", "--height", "240"])
    assert result.exit_code == 0, result.output
    shot = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert shot.shape == (240, 320, 3)

    def is_colour(pixel, colour) -> bool:
        return bool(np.abs(pixel - np.asarray(colour)).max() <= 3)

    def to_screen(x, y):  # image px -> screen px
        return int(8 + 1.9 * x), int(6 + 1.9 * y)

    magenta = np.all(np.abs(shot - [255, 0, 255]) <= 3, axis=2)
    assert magenta.mean() > 0.6  # the photo's colour, unlit
    assert is_colour(shot[to_screen(10, 10)[::-1]], (0, 255, 255))  # the cyan corner where expected
    assert is_colour(shot[to_screen(30, 30)[::-1]], (255, 0, 255))
    for x, y in ((105, 75), (120, 85), (135, 95)):  # inside the mesh square: mesh, not photo
        assert not magenta[to_screen(x, y)[::-1]]
    for x, y in ((95, 85), (145, 85), (120, 65), (120, 105)):  # 5 px outside it: photo
        assert magenta[to_screen(x, y)[::-1]]
    assert (shot[:4] >= WHITE).all() and (shot[:, :6] >= WHITE).all()  # margins outside the photo: background
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.usefixtures("offscreen")
def test_cli_error_prints_the_shift(tmp_path: Path) -> None:
    v, f = _grid_mesh()
    export_points(tmp_path / "gt.ply", v)
    export_mesh(tmp_path / "same.obj", v, f)
    export_mesh(tmp_path / "shifted.obj", v + [0.0, 0.0, 0.3], f)
    args = ["--points", str(tmp_path / "gt.ply"), "--error", "--width", "160", "--height", "120"]
    same = runner.invoke(app, ["view", str(tmp_path / "same.obj"), *args, "--screenshot", str(tmp_path / "a.png")])
    assert same.exit_code == 0, same.output
    assert "min 0, mean 0, max 0 (mesh units)" in same.output
    moved = runner.invoke(app, ["view", str(tmp_path / "shifted.obj"), *args, "--screenshot", str(tmp_path / "b.png")])
    assert moved.exit_code == 0, moved.output
    assert "over 25 vertices: min 0.3, mean 0.3, max 0.3 (mesh units)" in moved.output
    shot = np.asarray(Image.open(tmp_path / "b.png").convert("RGB")).astype(int)
    red = (shot[..., 0] > 150) & (shot[..., 1] < 80) & (shot[..., 2] < 80)  # the mesh, all at the largest error
    green = (shot[..., 1] > 120) & (shot[..., 0] < 100) & (shot[..., 2] < 120)  # the ground truth's points
    assert red.sum() > 200 and green.sum() > 50
    assert np.nonzero(red)[1].mean() < np.nonzero(green)[1].mean()  # the ground truth is to the right


# ----------------------------------------------------------------------------- CLI errors
def _one_line_exit_2(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_cli_missing_file(tmp_path: Path) -> None:
    line = _one_line_exit_2(runner.invoke(app, ["view", str(tmp_path / "nope.obj"), "-s", str(tmp_path / "x.png")]))
    assert "nope.obj" in line and "no such file" in line
    assert not (tmp_path / "x.png").exists()


def test_cli_empty_mesh(tmp_path: Path) -> None:
    (tmp_path / "empty.obj").write_text("# nothing here\n")
    line = _one_line_exit_2(runner.invoke(app, ["view", str(tmp_path / "empty.obj"), "-s", str(tmp_path / "x.png")]))
    assert "empty.obj" in line and "no vertices" in line


def test_cli_unreadable_photo(tmp_path: Path) -> None:
    v, f = _grid_mesh()
    export_mesh(tmp_path / "a.obj", v, f)
    (tmp_path / "photo.jpg").write_bytes(b"not a jpeg")
    line = _one_line_exit_2(runner.invoke(app, ["view", str(tmp_path / "a.obj"), "--image", str(tmp_path / "photo.jpg"),
                                                "-s", str(tmp_path / "x.png")]))
    assert "photo.jpg" in line


def test_cli_error_needs_points(tmp_path: Path) -> None:
    line = _one_line_exit_2(runner.invoke(app, ["view", "a.obj", "--error", "-s", str(tmp_path / "x.png")]))
    assert "--points" in line


def test_cli_bad_screenshot_suffix(tmp_path: Path) -> None:
    line = _one_line_exit_2(runner.invoke(app, ["view", "a.obj", "-s", str(tmp_path / "x.gif")]))
    assert ".png" in line


def test_cli_no_display_without_screenshot(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    v, f = _grid_mesh()
    export_mesh(tmp_path / "a.obj", v, f)
    line = _one_line_exit_2(runner.invoke(app, ["view", str(tmp_path / "a.obj")]))
    assert "--screenshot" in line and "DISPLAY" in line


def test_cli_help_mentions_placement() -> None:
    result = runner.invoke(app, ["view", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    assert "--screenshot" in text and "to the right" in text


def _textured_quad(folder: Path) -> Path:
    """A square in the x-y plane (image px, facing the camera) textured with a 2x2 image written
    by hand: red top-left, green top-right, blue bottom-left, yellow bottom-right (OBJ's v runs
    up from the image's bottom row)."""
    from PIL import Image

    texture = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]], np.uint8)
    Image.fromarray(texture).resize((64, 64), Image.NEAREST).save(folder / "quad.png")
    (folder / "quad.mtl").write_text("newmtl quad\nKd 1 1 1\nmap_Kd quad.png\n")
    (folder / "quad.obj").write_text(
        "mtllib quad.mtl\n"
        "v 0 0 0\nv 100 0 0\nv 100 100 0\nv 0 100 0\n"  # image px: y down, so (0, 0) is the top-left
        "vt 0 1\nvt 1 1\nvt 1 0\nvt 0 0\n"  # the top-left corner takes the texture's top-left (v = 1)
        "usemtl quad\nf 1/1 3/3 2/2\nf 1/1 4/4 3/3\n"
    )
    return folder / "quad.obj"


def test_a_textured_mesh_is_drawn_with_its_texture(tmp_path: Path, offscreen: None) -> None:
    from facerecon.mesh.export import load_geometry

    geometry = load_geometry(_textured_quad(tmp_path))
    assert geometry.uv is not None and geometry.texture is not None and geometry.texture.shape == (64, 64, 3)
    image = render_scene(build_scene([geometry]), width=200, height=200)
    # the camera looks from where the photo was taken (y down): the quad's top-left quarter is red
    h, w = image.shape[:2]
    quarters = {
        "top-left": image[h // 2 - 30, w // 2 - 30], "top-right": image[h // 2 - 30, w // 2 + 30],
        "bottom-left": image[h // 2 + 30, w // 2 - 30], "bottom-right": image[h // 2 + 30, w // 2 + 30],
    }
    expected = {"top-left": (255, 0, 0), "top-right": (0, 255, 0), "bottom-left": (0, 0, 255), "bottom-right": (255, 255, 0)}
    for where, colour in expected.items():
        np.testing.assert_allclose(quarters[where].astype(int), colour, atol=40, err_msg=where)
