"""The renderer against hand-worked cases: coverage at pixel centres, interpolated depth and
attributes, a cube seen edge-on, occlusion order, non-square images, orthographic and pinhole."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from facerecon.errors import InputError

render_mod = pytest.importorskip("facerecon.render")
pytest.importorskip("moderngl")
from facerecon.render import pinhole, pncc_codes, render, vertex_visibility  # noqa: E402


def _centres(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre x and y (image px) of an (h, w) image."""
    return np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)


# A right triangle: (1, 1, z=5), (9, 1, z=5), (1, 7, z=2) in an 8 x 12 image. A pixel centre (x, y)
# is inside when x >= 1, y >= 1 and x <= 9 - 8 (y - 1) / 6 (no centre lies on an edge); the depth
# on the plane through the corners is z = 5 - 3 (y - 1) / 6.
TRI_V = np.array([[1.0, 1.0, 5.0], [9.0, 1.0, 5.0], [1.0, 7.0, 2.0]])
TRI_F = np.array([[0, 1, 2]])


def test_triangle_coverage_depth_and_attributes() -> None:
    r = render(TRI_V, TRI_F, (8, 12), {"corner": np.eye(3), "height": np.array([0.0, 0.0, 6.0])})
    x, y = _centres(8, 12)
    inside = (x >= 1) & (y >= 1) & (x <= 9 - 8 * (y - 1) / 6)
    np.testing.assert_array_equal(r.mask, inside)
    assert r.mask.sum() == 7 + 6 + 5 + 3 + 2 + 1
    np.testing.assert_allclose(r.depth[inside], (5 - 3 * (y - 1) / 6)[inside], atol=1e-5)
    assert np.isinf(r.depth[~inside]).all()
    np.testing.assert_array_equal(r.triangle, np.where(inside, 0, -1))
    # at the centre (1.5, 1.5): weights of the corners (1 - b1 - b2, (x - 1) / 8, (y - 1) / 6)
    np.testing.assert_allclose(r.attributes["corner"][1, 1], [1 - 0.0625 - 1 / 12, 0.0625, 1 / 12], atol=1e-6)
    np.testing.assert_allclose(r.barycentric[1, 1], [1 - 0.0625 - 1 / 12, 0.0625, 1 / 12], atol=1e-6)
    assert r.attributes["height"].shape == (8, 12)
    np.testing.assert_allclose(r.attributes["height"][inside], (y - 1)[inside], atol=1e-5)
    assert (r.attributes["corner"][~inside] == 0).all()
    # the same values through the numpy path
    np.testing.assert_allclose(r.interpolate(np.eye(3)), r.attributes["corner"], atol=1e-6)


def test_rows_are_image_rows_in_a_non_square_image() -> None:
    """A triangle near the top-right corner of a wide image lands in the first rows, last columns."""
    v = np.array([[90.0, 2.0, 0.0], [99.0, 2.0, 0.0], [99.0, 8.0, 0.0]])
    r = render(v, TRI_F, (30, 100))
    rows, cols = np.nonzero(r.mask)
    assert rows.min() == 2 and rows.max() == 7
    assert cols.min() >= 90 and cols.max() == 98


def _cube(side: float) -> tuple[np.ndarray, np.ndarray]:
    """An axis-aligned cube centred at the origin: 8 corners, 12 triangles."""
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64) * side / 2
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    faces = np.array([[q[0], q[1], q[2]] for q in quads] + [[q[0], q[2], q[3]] for q in quads])
    return corners, faces


def test_cube_seen_edge_on() -> None:
    """A cube of side 40 turned 45 degrees about the vertical axis: the front edge faces the camera.

    Centre (50, 30, 100) in a 60 x 100 image: the silhouette is |x - 50| <= 20 sqrt 2, 10 <= y <= 50,
    and the visible depth is 100 - 20 sqrt 2 + |x - 50| (the two front faces meet at 45 degrees).
    """
    corners, faces = _cube(40.0)
    v = Rotation.from_euler("y", 45, degrees=True).apply(corners) + [50.0, 30.0, 100.0]
    r = render(v, faces, (60, 100))
    x, y = _centres(60, 100)
    half = 20 * np.sqrt(2)
    inside = (np.abs(x - 50) <= half) & (y >= 10) & (y <= 50)
    np.testing.assert_array_equal(r.mask, inside)
    np.testing.assert_allclose(r.depth[inside], (100 - half + np.abs(x - 50))[inside], atol=1e-3)
    # left of the edge one front face, right of it the other; never the back faces
    front = faces_towards_camera(v, faces)
    assert set(np.unique(r.triangle[inside])) <= set(np.flatnonzero(front))


def faces_towards_camera(v: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces whose centroid is on the camera's side of the cube's centre (z below it)."""
    return v[faces].mean(axis=1)[:, 2] < v[:, 2].mean() - 1e-6


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_nearer_triangle_wins_whatever_the_order(order: tuple[int, int]) -> None:
    near = [[2.0, 2.0, 1.0], [18.0, 2.0, 1.0], [2.0, 18.0, 1.0]]
    far = [[4.0, 4.0, 3.0], [19.0, 4.0, 3.0], [4.0, 19.0, 3.0]]
    tris = [near, far]
    v = np.array(tris[order[0]] + tris[order[1]])
    f = np.array([[0, 1, 2], [3, 4, 5]])
    label = np.array([order[0]] * 3 + [order[1]] * 3, dtype=np.float64)  # 0 = near, 1 = far
    r = render(v, f, (20, 20), {"which": label})
    # (5.5, 5.5) is inside both: the near one wins; (15.5, 5.5) only inside the far one
    assert r.attributes["which"][5, 5] == 0 and r.depth[5, 5] == pytest.approx(1.0)
    assert r.attributes["which"][5, 15] == 1 and r.depth[5, 15] == pytest.approx(3.0)


def test_pinhole_slanted_plane_depth_is_perspective_correct() -> None:
    """The plane Z = 10 + X (|X|, |Y| <= 1) seen by fx = fy = 50, c = (40, 30).

    The ray through pixel x has X = (x - 40) Z / 50, so Z = 10 / (1 - (x - 40) / 50) and the
    attribute X interpolated over the surface is Z - 10 (linear in screen space it would not be).
    """
    quad = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    v = np.column_stack([quad, 10 + quad[:, 0]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    cam = pinhole(50, 50, 40, 30)
    r = render(v, f, (60, 80), {"X": v[:, 0]}, camera=cam)
    x, y = _centres(60, 80)
    z = 10 / (1 - (x - 40) / 50)
    yy = (y - 30) * z / 50
    inside = (np.abs(z - 10) <= 1) & (np.abs(yy) <= 1)
    strict = (np.abs(z - 10) < 0.95) & (np.abs(yy) < 0.95)  # away from the silhouette
    assert (r.mask[strict]).all() and not (r.mask & ~inside).any()
    np.testing.assert_allclose(r.depth[strict], z[strict], rtol=1e-5)
    np.testing.assert_allclose(r.attributes["X"][strict], (z - 10)[strict], atol=1e-4)


def test_pinhole_needs_points_in_front() -> None:
    with pytest.raises(InputError, match="Z > 0"):
        render(TRI_V - [0, 0, 10], TRI_F, (8, 12), camera=pinhole(10, 10, 6, 4))
    with pytest.raises(InputError, match="focal"):
        pinhole(0, 10, 0, 0)


@pytest.mark.parametrize(
    "vertices, faces, size",
    [(np.zeros((3, 2)), TRI_F, (8, 8)), (TRI_V, np.array([[0, 1, 3]]), (8, 8)), (TRI_V, TRI_F, (0, 8)),
     (TRI_V, TRI_F.astype(float), (8, 8))],
)
def test_bad_input_is_one_input_error(vertices: np.ndarray, faces: np.ndarray, size: tuple[int, int]) -> None:
    with pytest.raises(InputError):
        render(vertices, faces, size)


def test_attribute_of_wrong_length_is_refused() -> None:
    with pytest.raises(InputError, match="attribute 'c'"):
        render(TRI_V, TRI_F, (8, 12), {"c": np.zeros((4, 3))})


def test_empty_mesh_draws_nothing() -> None:
    r = render(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), (5, 7), {"c": np.zeros((0, 2))})
    assert not r.mask.any() and np.isinf(r.depth).all() and r.attributes["c"].shape == (5, 7, 2)


def test_many_channels_take_several_passes() -> None:
    values = np.arange(3 * 45, dtype=np.float64).reshape(3, 45)  # 12 vec4 slots: two passes
    r = render(TRI_V, TRI_F, (8, 12), {"many": values})
    np.testing.assert_allclose(r.attributes["many"][1, 1], r.barycentric[1, 1] @ values, rtol=1e-5)


def test_pncc_codes_scale_each_axis_onto_unit_range() -> None:
    ref = np.array([[0.0, 0.0, 0.0], [2.0, 4.0, 1.0], [1.0, 1.0, 0.5]])
    np.testing.assert_allclose(pncc_codes(ref), [[0, 0, 0], [1, 1, 1], [0.5, 0.25, 0.5]])
    flat = np.array([[0.0, 0.0, 3.0], [1.0, 1.0, 3.0]])
    np.testing.assert_allclose(pncc_codes(flat)[:, 2], [0.5, 0.5])


def test_vertex_visibility_behind_an_occluder() -> None:
    """A far triangle's corner under a near triangle is hidden; its other corners are seen."""
    near = [[2.0, 2.0, 1.0], [10.0, 2.0, 1.0], [2.0, 10.0, 1.0]]
    far = [[4.0, 4.0, 5.0], [19.0, 4.0, 5.0], [4.0, 19.0, 5.0]]
    v = np.array(near + far)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    r = render(v, f, (20, 20))
    seen = vertex_visibility(r, v, tolerance=0.01)
    assert seen.tolist() == [True, True, True, False, True, True]


def test_threads_share_one_context() -> None:
    x, y = _centres(8, 12)
    expected = (x >= 1) & (y >= 1) & (x <= 9 - 8 * (y - 1) / 6)
    results: list[np.ndarray] = []

    def work() -> None:
        for _ in range(5):
            results.append(render(TRI_V, TRI_F, (8, 12)).mask)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 15 and all((m == expected).all() for m in results)


def test_torch_compiler_stack_loads_after_rendering(tmp_path) -> None:
    """Rendering first, then ``import triton`` (what torchvision and torch.compile import) in the
    same process: no crash from the OpenGL driver's LLVM (a fresh process, so the order is real)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    code = (
        "import numpy as np\nfrom facerecon.render import render\n"
        "render(np.array([[1, 1, 5], [9, 1, 5], [1, 7, 2.]]), np.array([[0, 1, 2]]), (8, 12))\n"
        "import triton\nprint('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", (run.returncode, run.stderr[-500:])


def test_rendering_goes_on_after_an_open3d_window_closes() -> None:
    """Open3D's offscreen window terminates the process's EGL display when it closes, which kills
    every context on it: the renderer makes its context again and draws the same picture."""
    from facerecon.errors import DependencyError
    from facerecon.mesh.preview import render_offscreen

    before = render(TRI_V, TRI_F, (8, 12))
    try:
        render_offscreen(lambda vis: None, 32, 24)
    except DependencyError as exc:
        pytest.skip(f"Open3D cannot render offscreen here: {exc}")
    after = render(TRI_V, TRI_F, (8, 12))
    np.testing.assert_array_equal(after.mask, before.mask)
    np.testing.assert_array_equal(after.depth, before.depth)
