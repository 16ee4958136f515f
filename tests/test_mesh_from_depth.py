"""Mesh synthesis from a depth map and its refinement, against hand-worked cases: planes give flat
grid meshes in the photo frame, background and spike triangles go, Laplacian smoothing lowers a
bump by the umbrella operator's amount, detail filling moves a vertex by gain x high-pass."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from facerecon.data.facevision_maps import depth_to_code
from facerecon.errors import InputError
from facerecon.mesh.from_depth import (
    FaceMesh,
    RefineOptions,
    delaunay_mesh,
    drop_background_triangles,
    drop_spikes,
    fill_detail,
    grey_high_pass,
    keep_largest_part,
    laplacian_smooth,
    synthesize_mesh,
)

BOX = (100.0, 50.0, 80.0)  # a 10 px map: 8 photo px per map px, 40 photo px per crop unit


def _normals_z(mesh: FaceMesh) -> np.ndarray:
    v = mesh.vertices[mesh.faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    return n[:, 2] / np.linalg.norm(n, axis=1)


def test_a_tilted_plane_gives_a_flat_grid_mesh_in_the_photo_frame() -> None:
    depth = np.zeros((10, 10))
    rows, cols = np.mgrid[2:8, 3:9]
    depth[2:8, 3:9] = 0.5 + 0.01 * cols  # z = 1 - 2 code crop units
    mesh = delaunay_mesh(depth, BOX)
    assert len(mesh.vertices) == 36 and len(mesh.faces) == 2 * 5 * 5  # a full 6 x 6 grid
    order = np.lexsort((mesh.pixels[:, 1], mesh.pixels[:, 0]))
    v = mesh.vertices[order]
    assert v[:, 0] == pytest.approx((100 + (cols.ravel() + 0.5) * 8).astype(float))
    assert v[:, 1] == pytest.approx((50 + (rows.ravel() + 0.5) * 8).astype(float))
    assert v[:, 2] == pytest.approx((1 - 2 * (0.5 + 0.01 * cols.ravel())) * 40)
    assert (_normals_z(mesh) < -0.99).all()  # wound toward the camera
    edges = np.linalg.norm(mesh.vertices[mesh.faces] - mesh.vertices[mesh.faces[:, [1, 2, 0]]], axis=2)
    assert edges.max() < np.sqrt(2 * 8**2 + 0.8**2) + 1e-9  # grid triangles only


def _covers(corners: np.ndarray, point: np.ndarray) -> bool:
    """Whether the 2D triangle ``corners`` (3, 2) holds ``point`` (inside or on an edge)."""
    a, b, c = corners
    m = np.array([b - a, c - a]).T
    s, t = np.linalg.solve(m, point - a)
    return s >= -1e-9 and t >= -1e-9 and s + t <= 1 + 1e-9


def test_background_triangles_of_a_concave_shape_are_dropped() -> None:
    depth = np.zeros((10, 10))
    depth[2:8, 2:8] = 0.6
    depth[2:5, 5:8] = 0.0  # an L: the 6 x 6 square without its 3 x 3 top-right corner
    raw = delaunay_mesh(depth, BOX)
    cleaned = drop_background_triangles(raw, depth)
    uv_raw = raw.pixels[:, ::-1] + 0.5
    background = [np.array([c + 0.5, r + 0.5]) for r in range(2, 5) for c in range(5, 8)]
    assert any(_covers(uv_raw[f], p) for f in raw.faces for p in background)  # Delaunay filled the convex hull
    uv = cleaned.pixels[:, ::-1] + 0.5
    assert not any(_covers(uv[f], p) for f in cleaned.faces for p in background)
    # what is left covers the L's 16 full 2 x 2 blocks of face pixels, and at the inner corner at
    # most two half-pixel triangles between face pixels (no background pixel centre in either)
    e1, e2 = uv[cleaned.faces[:, 1]] - uv[cleaned.faces[:, 0]], uv[cleaned.faces[:, 2]] - uv[cleaned.faces[:, 0]]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    assert len(cleaned.vertices) == 27 and np.allclose(area, 0.5) and 16.0 <= area.sum() <= 17.0


def _plane(code: float = 0.6, n: int = 8) -> np.ndarray:
    depth = np.zeros((n + 2, n + 2))
    depth[1:-1, 1:-1] = code
    return depth


def test_a_spike_is_removed_and_a_small_bump_kept() -> None:
    depth = _plane()
    depth[4, 5] = 1.0  # z = -1 crop unit: 32 photo px in front of the plane, 8 px pixels apart
    depth[6, 3] = 0.61  # a 0.8 px bump
    mesh = drop_spikes(delaunay_mesh(depth, BOX))
    assert len(mesh.vertices) == 63 and not ((mesh.pixels[:, 0] == 4) & (mesh.pixels[:, 1] == 5)).any()
    flat = (1 - 2 * 0.6) * 40
    bump = (mesh.pixels[:, 0] == 6) & (mesh.pixels[:, 1] == 3)
    assert mesh.vertices[~bump, 2] == pytest.approx(np.full((~bump).sum(), flat))
    assert mesh.vertices[bump, 2] == pytest.approx([(1 - 2 * 0.61) * 40])


def test_specks_apart_from_the_face_are_dropped_with_their_vertices() -> None:
    depth = np.zeros((12, 12))
    depth[1:7, 1:7] = 0.6  # the face: 6 x 6 pixels, 50 triangles
    depth[9:11, 9:11] = 0.6  # a speck of 2 x 2 pixels: 2 triangles, touching no face pixel
    cleaned = drop_background_triangles(delaunay_mesh(depth, BOX), depth)
    assert len(cleaned.vertices) == 40 and len(cleaned.faces) == 52
    face = keep_largest_part(cleaned)
    assert len(face.vertices) == 36 and len(face.faces) == 50
    assert face.pixels.max() == 6 and face.faces.max() == 35
    np.testing.assert_array_equal(face.vertices, cleaned.vertices[(cleaned.pixels < 7).all(axis=1)])
    assert keep_largest_part(face) is face  # one part: unchanged
    assert len(synthesize_mesh(depth, BOX).cleaned.vertices) == 36


def _degrees(faces: np.ndarray, n: int) -> np.ndarray:
    edges = {tuple(sorted(e)) for f in faces for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))}
    return np.bincount(np.array(list(edges)).ravel(), minlength=n)


def test_laplacian_smoothing_lowers_a_bump_by_the_umbrella_amount() -> None:
    depth = _plane()
    depth[4, 4] = 0.7  # 8 px in front of its neighbours (z - 8 px)
    mesh = delaunay_mesh(depth, BOX)
    smooth = laplacian_smooth(mesh, iterations=1, lamb=0.5)
    peak = int(np.flatnonzero((mesh.pixels[:, 0] == 4) & (mesh.pixels[:, 1] == 4))[0])
    flat, h = (1 - 2 * 0.6) * 40, -8.0
    # one step: v += lamb (mean of the neighbours - v); the neighbours are all flat
    assert smooth.vertices[peak, 2] - flat == pytest.approx(h * (1 - 0.5))
    deg = _degrees(mesh.faces, len(mesh.vertices))
    nbrs = np.unique(mesh.faces[(mesh.faces == peak).any(axis=1)])
    nbrs = nbrs[nbrs != peak]
    assert smooth.vertices[nbrs, 2] - flat == pytest.approx(0.5 * h / deg[nbrs])
    assert np.array_equal(smooth.vertices[:, :2], mesh.vertices[:, :2])  # x, y stay on the pixels
    far = np.setdiff1d(np.arange(len(mesh.vertices)), np.append(nbrs, peak))
    assert smooth.vertices[far, 2] == pytest.approx(np.full(far.size, flat))
    # ten iterations flatten it further, monotonically
    heights = [laplacian_smooth(mesh, k, 0.5).vertices[peak, 2] - flat for k in (1, 2, 5, 10)]
    assert all(abs(a) > abs(b) for a, b in itertools.pairwise(heights))


def test_smoothing_keeps_a_tilted_plane_inside_its_rim() -> None:
    """Every interior vertex has its neighbours in opposite pairs (one diagonal for every pixel
    square), so the mean of its neighbours' depths on a plane is its own depth."""
    depth = np.zeros((12, 12))
    rows, cols = np.mgrid[0:12, 0:12]
    depth[1:-1, 1:-1] = (0.5 + 0.02 * cols + 0.01 * rows)[1:-1, 1:-1]
    mesh = delaunay_mesh(depth, BOX)
    deg = _degrees(mesh.faces, len(mesh.vertices))
    interior = (mesh.pixels.min(axis=1) >= 2) & (mesh.pixels.max(axis=1) <= 9)
    assert (deg[interior] == 6).all()
    smooth = laplacian_smooth(mesh, iterations=1, lamb=0.5)
    assert smooth.vertices[interior, 2] == pytest.approx(mesh.vertices[interior, 2], abs=1e-9)


def test_detail_filling_moves_a_vertex_by_gain_times_the_high_pass() -> None:
    n, sigma, gain, amp = 12, 1.0, 3.0, 0.4
    depth = _plane(0.6, n)
    mesh = delaunay_mesh(depth, (0.0, 0.0, float(n + 2)))  # 1 photo px per map px: vertices on pixel centres
    grey = np.full((n + 2, n + 2), 0.5)
    grey[6, 7] += amp
    high = grey_high_pass(grey, sigma)
    # scipy's Gaussian: weights exp(-k^2 / 2 sigma^2), k = -4 sigma .. 4 sigma, normalised per axis
    k = np.arange(-4, 5)
    w = np.exp(-(k**2) / (2 * sigma**2))
    w /= w.sum()
    assert high[6, 7] == pytest.approx(amp * (1 - w[4] ** 2))
    assert high[6, 8] == pytest.approx(-amp * w[4] * w[5])
    moved = fill_detail(mesh, high, gain)
    at = {(r, c): i for i, (r, c) in enumerate(mesh.pixels)}
    # the plane's normal is (0, 0, -1), toward the camera: brighter moves nearer
    assert moved.vertices[at[6, 7]] - mesh.vertices[at[6, 7]] == pytest.approx([0, 0, -gain * amp * (1 - w[4] ** 2)])
    assert moved.vertices[at[6, 8]] - mesh.vertices[at[6, 8]] == pytest.approx([0, 0, gain * amp * w[4] * w[5]])
    rgb = np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    assert grey_high_pass(rgb, sigma) == pytest.approx(grey_high_pass(np.round(grey * 255) / 255, sigma), abs=1e-9)


def test_synthesis_keeps_every_stage() -> None:
    depth = _plane(0.6, 8)
    depth[4, 5] = 1.0
    image = np.full((200, 300, 3), 128, dtype=np.uint8)
    stages = synthesize_mesh(depth, BOX, image, RefineOptions(smooth_iterations=3))
    assert len(stages.raw.vertices) == 64 and len(stages.cleaned.vertices) == 63
    assert stages.smoothed.faces is stages.cleaned.faces and stages.detailed is not None
    assert stages.detailed.vertices == pytest.approx(stages.smoothed.vertices)  # a flat photo has no detail
    assert synthesize_mesh(depth, BOX).detailed is None
    with pytest.raises(InputError, match="too few"):
        synthesize_mesh(np.zeros((8, 8)), BOX)


def test_depth_codes_clip_far_surfaces() -> None:
    assert depth_to_code(np.array([5.0]))[0] > 0  # a face pixel never reads as background
