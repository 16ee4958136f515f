"""Completing a depth map's mesh with the face model: the mean face posed on hand-made depth and
correspondence maps lands where the known affine pose puts it, the triangles a map does not show
are those worked out by hand, and the added part is wound as the map's mesh, a mirrored pose too."""

from __future__ import annotations

import numpy as np
import pytest

from facerecon.data.facevision_maps import hidden_triangles, pose_face_model
from facerecon.engine.facevision import complete_hidden_side
from facerecon.errors import InputError

SIZE = 64


def _bowl(cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """The third code of a curved face: codes span three dimensions, so the pose is determined."""
    return 0.5 + 0.3 * ((cx - 0.5) ** 2 + (cy - 0.5) ** 2)


def _maps(scale: np.ndarray, shift: np.ndarray, columns: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Depth codes and PNCC of the surface ``p = diag(scale) c + shift`` over the codes of
    ``[0, 1]^2 x bowl``, where it covers the map's pixels in ``columns``. Depth code
    ``(1 - z) / 2`` for crop-unit ``z`` (near -1 -> 1, far 1 -> 0)."""
    centres = 2.0 * (np.arange(SIZE) + 0.5) / SIZE - 1.0
    x, y = np.meshgrid(centres, centres)
    cx, cy = (x - shift[0]) / scale[0], (y - shift[1]) / scale[1]
    cz = _bowl(cx, cy)
    z = scale[2] * cz + shift[2]
    face = (cx >= 0) & (cx <= 1) & (cy >= 0) & (cy <= 1)
    face[:, np.setdiff1d(np.arange(SIZE), np.arange(SIZE)[columns])] = False
    depth = np.where(face, (1.0 - z) / 2.0, 0.0)
    pncc = np.where(face[..., None], np.stack([cx, cy, cz], axis=-1), 0.0)
    return depth, pncc


def test_the_posed_face_model_follows_the_maps_known_pose() -> None:
    """Every face pixel's code is the one the pose ``p = A c + t`` (a mirror in y among it) sends
    to that pixel's point: the posed model is ``A c + t`` for any code, in or out of the map, and
    15 % of the pixels given random codes do not move it by more than 1e-3 crop units."""
    scale, shift = np.array([1.2, -1.4, 0.5]), np.array([-0.6, 0.7, 0.1])
    depth, pncc = _maps(scale, shift)
    codes = np.random.default_rng(0).uniform(-0.2, 1.2, size=(50, 3))
    expected = codes * scale + shift
    assert pose_face_model(depth, pncc, codes) == pytest.approx(expected, abs=1e-9)
    rng = np.random.default_rng(1)
    wrong = (depth > 0) & (rng.random(depth.shape) < 0.15)
    noisy = pncc.copy()
    noisy[wrong] = rng.random((int(wrong.sum()), 3))
    assert np.abs(pose_face_model(depth, noisy, codes) - expected).max() < 1e-3
    with pytest.raises(InputError, match="fewer than 4 face pixels"):
        pose_face_model(np.zeros((8, 8)), np.zeros((8, 8, 3)), codes)


def test_hidden_triangles_hand_worked() -> None:
    """An 8 px map whose left half is face at z = 0 (code 0.5): a vertex is shown where it falls
    on a face pixel and lies at most ``margin`` behind the surface (or in front of it)."""
    depth = np.zeros((8, 8))
    depth[:, :4] = 0.5
    posed = np.array([
        [-0.5, 0.0, 0.0],    # 0 on the surface: shown
        [-0.5, 0.5, 0.03],   # 1 0.03 behind: shown
        [-0.25, -0.5, 0.2],  # 2 0.2 behind: hidden
        [0.5, 0.0, 0.0],     # 3 over the background: hidden
        [0.5, 0.5, -0.3],    # 4 over the background, in front: hidden
        [-1.5, 0.0, 0.0],    # 5 outside the crop (its clipped pixel is face): hidden
        [-0.75, -0.75, -0.5],  # 6 in front of the surface: shown
    ])
    triangles = np.array([[0, 1, 6], [2, 3, 4], [0, 3, 4], [2, 4, 5], [1, 2, 3]])
    assert hidden_triangles(posed, depth, triangles, margin=0.05).tolist() == [[2, 3, 4], [2, 4, 5]]
    # a margin beyond 0.2 shows vertex 2: only the triangle outside the map stays hidden
    assert hidden_triangles(posed, depth, triangles, margin=0.25).tolist() == []


@pytest.mark.parametrize("mirror", [1.0, -1.0])
def test_the_completed_part_is_wound_as_the_maps_mesh(mirror: float) -> None:
    """A face model gridded over the codes, wound counter-clockwise in the codes' x, y, posed on
    maps that show only the left half of the crop: the part added on the right faces the camera
    with the map mesh's winding (positive signed area in the image), the pose mirrored or not."""
    scale, shift = np.array([1.6, 1.6 * mirror, 0.8]), np.array([-0.8, -0.8 * mirror, 0.0])
    depth, pncc = _maps(scale, shift, columns=slice(0, SIZE // 2))
    n = 12
    cy, cx = (a.ravel() for a in np.mgrid[0:n, 0:n] / (n - 1))
    codes = np.stack([cx, cy, _bowl(cx, cy)], axis=1)
    k = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None]).ravel()
    triangles = np.concatenate([np.stack([k, k + 1, k + n + 1], 1), np.stack([k, k + n + 1, k + n], 1)])  # ccw in (cx, cy)
    visible = np.array([[-0.7, -0.6, 0.1], [-0.1, -0.6, 0.1], [-0.1, 0.6, 0.1]])
    vertices, faces = complete_hidden_side(visible, np.array([[0, 1, 2]]), depth, pncc, codes, triangles)
    assert len(faces) > 1 and vertices[:3].tolist() == visible.tolist()
    a, b, c = (vertices[faces[:, i], :2] for i in range(3))
    signed = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    assert (signed > 0).all()
    assert (vertices[3:, 0] > -0.05).all()  # the added part is the right half (and the column at the seam)
