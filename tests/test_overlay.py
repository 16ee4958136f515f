"""2D overlays: a known square in the image frame, culling, depth order, landmarks, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerecon.errors import InputError
from facerecon.overlay import draw_mesh_overlay, face_normals, save_image

H, W = 80, 100
PHOTO = (10, 20, 30)
BASE = (80, 200, 255)
ALPHA = 0.6

# A square spanning x 20..60, y 10..50 (image px) at depth 0. Pixel (row r, col c) has its centre at
# (c + 0.5, r + 0.5), so the covered pixels are columns 20..59 and rows 10..49.
SQUARE = np.array([[20.0, 10.0, 0.0], [60.0, 10.0, 0.0], [60.0, 50.0, 0.0], [20.0, 50.0, 0.0]])
# Facing the camera: counter-clockwise on the screen (y down), normal -z. (0, 3, 2): e1 = (0, 40, 0),
# e2 = (40, 40, 0), cross z = 0 * 40 - 40 * 40 < 0.
FRONT_FACES = np.array([[0, 3, 2], [0, 2, 1]])
BACK_FACES = FRONT_FACES[:, ::-1]


def _photo() -> np.ndarray:
    img = np.empty((H, W, 3), dtype=np.uint8)
    img[:] = PHOTO
    return img


def _blend(color, alpha: float = ALPHA) -> np.ndarray:
    return np.round(alpha * np.asarray(color, float) + (1 - alpha) * np.asarray(PHOTO, float))


def test_square_facing_camera_changes_inside_only() -> None:
    img = _photo()
    out = draw_mesh_overlay(img, SQUARE, FRONT_FACES, alpha=ALPHA, color=BASE)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(img, _photo())  # input untouched
    changed = np.any(out != img, axis=2)
    assert changed[10:50, 20:60].all()  # every pixel whose centre is inside
    near = np.zeros((H, W), bool)  # OpenCV may also fill the pixels just past the right/bottom edges
    near[10:51, 20:61] = True
    assert not changed[~near].any()
    # Head-on face: Lambert shade 1 -> the base colour, alpha-blended over the photo (hand-worked).
    np.testing.assert_allclose(out[30, 40], _blend(BASE), atol=1)
    np.testing.assert_allclose(out[10, 20], _blend(BASE), atol=1)  # corner pixel
    np.testing.assert_allclose(out[49, 59], _blend(BASE), atol=1)


def test_back_facing_square_is_culled() -> None:
    img = _photo()
    out = draw_mesh_overlay(img, SQUARE, BACK_FACES)
    np.testing.assert_array_equal(out, img)
    assert np.all(face_normals(SQUARE, BACK_FACES)[:, 2] > 0)
    assert np.all(face_normals(SQUARE, FRONT_FACES)[:, 2] < 0)


def test_nearest_face_is_drawn_last() -> None:
    # A far head-on square, and a nearer square tilted about the y axis (z = -10 - 0.75 (x - 20)),
    # listed FIRST so that only the depth sort can put it on top. Its normal is (0.6, 0, -0.8), so
    # its Lambert shade is 0.3 + 0.7 * 0.8 = 0.86.
    near = SQUARE.copy()
    near[:, 2] = -10.0 - 0.75 * (near[:, 0] - 20.0)
    far = SQUARE + np.array([0.0, 0.0, 50.0])
    vertices = np.concatenate([near, far])
    faces = np.concatenate([FRONT_FACES, FRONT_FACES + 4])
    np.testing.assert_allclose(face_normals(vertices, faces[:1]), [[-0.6, 0.0, -0.8]])
    out = draw_mesh_overlay(_photo(), vertices, faces, alpha=1.0, color=BASE)
    np.testing.assert_allclose(out[30, 40], np.round(0.86 * np.asarray(BASE, float)), atol=1)


def test_wireframe_draws_edges_not_interiors() -> None:
    img = _photo()
    out = draw_mesh_overlay(img, SQUARE, FRONT_FACES, mode="wireframe", alpha=1.0)
    changed = np.any(out != img, axis=2)
    assert changed[10, 40] and changed[30, 20] and changed[49, 40]  # top, left, bottom edges
    assert changed[30, 40]  # the diagonal from (20,10) to (60,50) passes (40,30)
    assert not changed[40, 30] and not changed[20, 50]  # inside the triangles, off the edges
    assert not changed[:7].any() and not changed[54:].any() and not changed[:, :17].any() and not changed[:, 63:].any()


def test_landmarks_at_their_pixels() -> None:
    img = _photo()
    landmarks = np.array([[80.5, 65.5, 0.0], [5.5, 70.5, -3.0]])  # (x, y, z) image px: pixel centres
    out = draw_mesh_overlay(img, SQUARE, FRONT_FACES, landmarks_px=landmarks)
    for x, y in ((80, 65), (5, 70)):
        assert out[y, x, 0] > 200 and out[y, x, 1] < 100  # the red landmark colour, at the centre pixel
    assert np.array_equal(out[65, 90], img[65, 90]) and np.array_equal(out[5, 5], img[5, 5])


def test_empty_cull_and_bad_inputs() -> None:
    img = _photo()
    with pytest.raises(InputError, match="mode"):
        draw_mesh_overlay(img, SQUARE, FRONT_FACES, mode="points")
    with pytest.raises(InputError, match="alpha"):
        draw_mesh_overlay(img, SQUARE, FRONT_FACES, alpha=1.5)
    with pytest.raises(InputError, match="uint8"):
        draw_mesh_overlay(img.astype(np.float32), SQUARE, FRONT_FACES)
    with pytest.raises(InputError, match="face indices"):
        draw_mesh_overlay(img, SQUARE, np.array([[0, 1, 4]]))
    with pytest.raises(InputError, match="finite"):
        draw_mesh_overlay(img, SQUARE * np.nan, FRONT_FACES)


def test_save_image_png_round_trip(tmp_path: Path) -> None:
    out = draw_mesh_overlay(_photo(), SQUARE, FRONT_FACES)
    save_image(tmp_path / "sub" / "overlay.png", out)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / "overlay.png")), out)
    save_image(tmp_path / "overlay.jpg", out)
    assert Image.open(tmp_path / "overlay.jpg").format == "JPEG"
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_save_image_errors(tmp_path: Path) -> None:
    img = _photo()
    with pytest.raises(InputError, match=r"\.png or \.jpg"):
        save_image(tmp_path / "overlay.bmp", img)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputError, match="folder"):
        save_image(tmp_path / "dir.png", img)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError):
        save_image(blocker / "overlay.png", img)


def test_dense_mode_draws_the_vertices_only() -> None:
    out = draw_mesh_overlay(_photo(), SQUARE, FRONT_FACES, mode="dense")
    changed = (out != _photo()).any(axis=2)
    for x, y in SQUARE[:, :2].astype(int):  # a dot over each corner vertex (pixels around (x, y))
        assert changed[y - 1:y + 1, x - 1:x + 1].any()
    assert not changed[30, 40] and changed.sum() < 4 * 16  # four dots, the inside not filled
    assert np.array_equal(draw_mesh_overlay(_photo(), SQUARE, BACK_FACES, mode="dense"), _photo())  # culled


def _landmark_area(extent: float, size: int = 1000) -> int:
    """Pixels the first landmark's dot changes in a ``size`` px photo when the landmarks span ``extent`` px."""
    img = np.zeros((size, size, 3), np.uint8)
    landmarks = np.array([[50.5, 50.5], [50.5 + extent, 50.5]])
    out = draw_mesh_overlay(img, SQUARE, FRONT_FACES[:0], landmarks_px=landmarks)
    return int((out[:, :50 + int(extent) // 2] != 0).any(axis=2).sum())


def test_landmark_dots_follow_the_face_size() -> None:
    """Radius = the landmarks' extent / 100, at least 1 px, whatever the photo's size: a 60-px face
    in a 1000-px group photo gets a 1-px dot (at most 4 x 4 anti-aliased pixels), not one sized by
    the photo; a 400-px face a 4-px one (about pi 4^2 = 50 pixels)."""
    assert _landmark_area(60.0) <= 16
    assert 40 <= _landmark_area(400.0) <= 90
