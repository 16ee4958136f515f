"""Frame conversions and head pose against independent references: hand-worked values, scipy's
rotations and alignment, landmarks posed with the data README's formula, the datasets' own poses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from facerecon.frames import (
    crop_to_image_3d,
    euler_from_rotation,
    frontalise,
    head_pose,
    image_to_crop,
    image_to_crop_px,
    rotation_from_euler,
    similarity_fit,
)


def test_crop_to_image_by_hand() -> None:
    box = (10.0, 20.0, 200.0)  # x0, y0, side: one crop unit = 100 px
    pts = np.array([[-1.0, -1.0, 0.0], [1.0, 1.0, 0.5], [0.0, 0.0, -0.2]])
    out = crop_to_image_3d(pts, box)
    np.testing.assert_allclose(out, [[10, 20, 0], [210, 220, 50], [110, 120, -20]])


def test_image_to_crop_units_by_hand_and_back() -> None:
    box = (10.0, 20.0, 200.0)  # one crop unit = 100 px; z0 = 30 px maps to z = 0
    px = np.array([[10.0, 20.0, 30.0], [210.0, 220.0, 80.0], [110.0, 170.0, 10.0]])
    units = image_to_crop(px, box, z0_px=30.0)
    assert units.dtype == np.float32
    np.testing.assert_allclose(units, [[-1, -1, 0], [1, 1, 0.5], [0, 0.5, -0.2]], atol=1e-7)
    np.testing.assert_allclose(image_to_crop(px[:, :2], box), [[-1, -1], [1, 1], [0, 0.5]], atol=1e-7)  # x, y only
    np.testing.assert_allclose(image_to_crop(px[None], box, 30.0), units[None], atol=1e-7)  # any leading shape
    # the way back: depth relative to z0
    np.testing.assert_allclose(crop_to_image_3d(units, box), px - [0.0, 0.0, 30.0], atol=1e-4)


def test_image_to_crop_px_by_hand() -> None:
    box = (-12.5, 40.0, 300.0)
    # hand-worked: u = (x - x0) * 224 / 300, v = (y - y0) * 224 / 300
    x, y = 100.0, 70.0
    assert image_to_crop_px(np.array([[x, y]]), box, 224)[0] == pytest.approx([(x + 12.5) * 224 / 300, (y - 40.0) * 224 / 300])
    # the box corners map onto the crop's edges; a z column is ignored
    assert image_to_crop_px(np.array([[-12.5, 40.0, 5.0], [287.5, 340.0, -5.0]]), box, 224) == pytest.approx(
        np.array([[0.0, 0.0], [224.0, 224.0]])
    )
    # crop px and crop units are one frame in two scales: x_units = 2 u / size - 1
    pts = np.random.default_rng(0).uniform(-50, 400, (7, 2))
    np.testing.assert_allclose(2 * image_to_crop_px(pts, box, 224) / 224 - 1, image_to_crop(pts, box), atol=1e-6)
    # and back to image px through the crop units
    units = 2 * image_to_crop_px(pts, box, 224) / 224 - 1
    np.testing.assert_allclose(crop_to_image_3d(np.column_stack([units, np.zeros(7)]), box)[:, :2], pts, atol=1e-9)


def _dataset_rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """The data README's ``R = Rx(pitch) Ry(yaw) Rz(roll)`` built with scipy, not with facerecon.

    The README's matrices (``Rx(a) = [[1,0,0],[0,c,s],[0,-s,c]]``, ...) are the right-handed
    rotations by ``-a``, so R is scipy's intrinsic ``XYZ`` rotation by the negated angles."""
    return Rotation.from_euler("XYZ", [-pitch, -yaw, -roll]).as_matrix()


def _dataset_landmarks(reference: np.ndarray, pitch: float, yaw: float, roll: float, s: float, t: np.ndarray) -> np.ndarray:
    """Landmarks posed as the README does (``P = s V R^T + t``, model frame: y up, z to the viewer),
    then written in our axes (docs/conventions.md: y down, z away from the camera)."""
    p = s * reference @ _dataset_rotation(pitch, yaw, roll).T + t
    return p * np.array([1.0, -1.0, -1.0])


@pytest.mark.parametrize("angle", [0.3, -1.2, math.pi / 2])
def test_single_axis_rotations_by_hand(angle: float) -> None:
    c, s = math.cos(angle), math.sin(angle)
    np.testing.assert_allclose(rotation_from_euler(angle, 0, 0), [[1, 0, 0], [0, c, s], [0, -s, c]], atol=1e-12)
    np.testing.assert_allclose(rotation_from_euler(0, angle, 0), [[c, 0, -s], [0, 1, 0], [s, 0, c]], atol=1e-12)
    np.testing.assert_allclose(rotation_from_euler(0, 0, angle), [[c, s, 0], [-s, c, 0], [0, 0, 1]], atol=1e-12)


def test_yaw_of_90_degrees_turns_the_x_axis_to_the_viewer() -> None:
    # worked by hand from the README's Ry: Ry(pi/2) (1, 0, 0) = (0, 0, 1), +z being towards the viewer
    np.testing.assert_allclose(rotation_from_euler(0, math.pi / 2, 0) @ [1.0, 0.0, 0.0], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(rotation_from_euler(math.pi / 2, 0, 0) @ [0.0, 1.0, 0.0], [0, 0, -1], atol=1e-12)


def test_euler_matches_scipy_both_ways() -> None:
    rng = np.random.default_rng(3)
    for pitch, yaw, roll in [(0.1, -0.4, 0.3), (-0.7, 1.2, -2.0), (0.0, 0.0, 0.0), *rng.uniform(-1.5, 1.5, (20, 3))]:
        ref = _dataset_rotation(pitch, yaw, roll)
        np.testing.assert_allclose(rotation_from_euler(pitch, yaw, roll), ref, atol=1e-12)
        assert euler_from_rotation(ref) == pytest.approx((pitch, yaw, roll), abs=1e-9)


def test_similarity_fit_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(68, 3))
    rot = Rotation.random(random_state=7).as_matrix()
    dst = 2.5 * src @ rot.T + np.array([1.0, -2.0, 3.0])
    s, r, t = similarity_fit(src, dst)
    assert s == pytest.approx(2.5)
    np.testing.assert_allclose(r, rot, atol=1e-9)
    np.testing.assert_allclose(t, [1, -2, 3], atol=1e-9)


def test_similarity_fit_with_noise_is_the_least_squares_fit() -> None:
    """Noisy and mirrored targets: R is scipy's optimal rotation (``align_vectors``, Kabsch), always
    proper; s and t are the least-squares values for that R, worked out in closed form."""
    rng = np.random.default_rng(1)
    src = rng.normal(size=(68, 3))
    for mirror in (1.0, -1.0):
        dst = 0.7 * src @ Rotation.random(random_state=2).as_matrix().T + [5.0, 0.0, -1.0]
        dst = dst * [mirror, 1.0, 1.0] + rng.normal(scale=0.05, size=dst.shape)
        s, r, t = similarity_fit(src, dst)
        a, b = src - src.mean(0), dst - dst.mean(0)
        ref_rot = Rotation.align_vectors(b, a)[0].as_matrix()
        np.testing.assert_allclose(r, ref_rot, atol=1e-9)
        assert np.linalg.det(r) == pytest.approx(1.0)
        assert s == pytest.approx(float((b * (a @ ref_rot.T)).sum() / (a**2).sum()), rel=1e-9)
        np.testing.assert_allclose(t, dst.mean(0) - s * ref_rot @ src.mean(0), atol=1e-9)


def test_head_pose_recovers_the_dataset_pose() -> None:
    rng = np.random.default_rng(1)
    reference_model = rng.normal(size=(68, 3))  # a frontal layout in the model frame
    reference = reference_model * np.array([1.0, -1.0, -1.0])  # the same layout in our axes
    for yaw, pitch, roll in [(35.0, -12.0, 8.0), (-70.0, 20.0, -15.0), (0.0, 0.0, 0.0)]:
        landmarks = _dataset_landmarks(reference_model, math.radians(pitch), math.radians(yaw), math.radians(roll),
                                       3.0, np.array([100.0, 200.0, 5.0]))
        assert head_pose(landmarks, reference) == pytest.approx((yaw, pitch, roll), abs=1e-6)
        front = frontalise(landmarks, yaw, pitch, roll)
        centred = reference - reference.mean(0)
        np.testing.assert_allclose(front, centred / np.sqrt((centred**2).sum(1).mean()), atol=1e-9)


@pytest.mark.slow
def test_head_pose_matches_aflw2000_poses(shared_data, tmp_path) -> None:
    """On real AFLW2000-3D ground truth the pose from landmarks agrees with Pose_Para."""
    import h5py

    from facerecon.data.cache import PrepareOptions, prepare_cache
    from facerecon.data.readers import list_samples
    from facerecon.engine.statistics import read_cache_statistics

    refs = list_samples(shared_data / "aflw2000-3d")[:40]
    out = tmp_path / "c.h5"
    prepare_cache(refs, out, str(shared_data / "bfm-mean"), PrepareOptions(crop_from="landmarks", workers=0))
    reference = read_cache_statistics(out).landmark_reference
    with h5py.File(out) as f:
        lms, poses = f["landmarks"][:], f["pose"][:]
    errors = np.array([np.abs(np.array(head_pose(l, reference)) - p) for l, p in zip(lms, poses) if np.abs(p).max() < 60])
    assert len(errors) > 20
    assert np.median(errors, axis=0).max() < 2.5, np.median(errors, axis=0)
