"""Frame conversions and head pose: hand-worked values, and the datasets' own poses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facerecon.frames import crop_to_image_3d, euler_from_rotation, frontalise, head_pose, rotation_from_euler, similarity_fit


def test_crop_to_image_by_hand() -> None:
    box = (10.0, 20.0, 200.0)  # x0, y0, side: one crop unit = 100 px
    pts = np.array([[-1.0, -1.0, 0.0], [1.0, 1.0, 0.5], [0.0, 0.0, -0.2]])
    out = crop_to_image_3d(pts, box)
    np.testing.assert_allclose(out, [[10, 20, 0], [210, 220, 50], [110, 120, -20]])


def test_euler_round_trip_and_dataset_matrices() -> None:
    for pitch, yaw, roll in [(0.1, -0.4, 0.3), (-0.7, 1.2, -2.0), (0.0, 0.0, 0.0)]:
        r = rotation_from_euler(pitch, yaw, roll)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert euler_from_rotation(r) == pytest.approx((pitch, yaw, roll), abs=1e-9)
    # the data README's Ry(a) = [[c,0,-s],[0,1,0],[s,0,c]]
    c, s = math.cos(0.3), math.sin(0.3)
    np.testing.assert_allclose(rotation_from_euler(0, 0.3, 0), [[c, 0, -s], [0, 1, 0], [s, 0, c]], atol=1e-12)


def test_similarity_fit_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(68, 3))
    rot = rotation_from_euler(0.2, -0.5, 0.1)
    dst = 2.5 * src @ rot.T + np.array([1.0, -2.0, 3.0])
    s, r, t = similarity_fit(src, dst)
    assert s == pytest.approx(2.5)
    np.testing.assert_allclose(r, rot, atol=1e-9)
    np.testing.assert_allclose(t, [1, -2, 3], atol=1e-9)


def test_head_pose_recovers_a_rotation_in_our_axes() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(68, 3))
    yaw, pitch, roll = 35.0, -12.0, 8.0
    # the dataset applies R in the model frame (y up, z to the viewer); ours flips y and z
    flip = np.diag([1.0, -1.0, -1.0])
    rot = flip @ rotation_from_euler(math.radians(pitch), math.radians(yaw), math.radians(roll)) @ flip
    landmarks = 3.0 * reference @ rot.T + 0.5
    assert head_pose(landmarks, reference) == pytest.approx((yaw, pitch, roll), abs=1e-6)
    front = frontalise(landmarks, yaw, pitch, roll)
    ref = (reference - reference.mean(0)) / np.sqrt(((reference - reference.mean(0)) ** 2).sum(1).mean())
    np.testing.assert_allclose(front, ref, atol=1e-9)


@pytest.mark.slow
def test_head_pose_matches_aflw2000_poses(shared_data, tmp_path) -> None:
    """On real AFLW2000-3D ground truth the pose from landmarks agrees with Pose_Para."""
    from facerecon.data.cache import PrepareOptions, prepare_cache
    from facerecon.data.readers import list_samples
    from facerecon.engine.train import landmark_reference_from_cache

    import h5py

    refs = list_samples(shared_data / "aflw2000-3d")[:40]
    out = tmp_path / "c.h5"
    prepare_cache(refs, out, str(shared_data / "bfm-mean"), PrepareOptions(crop_from="landmarks", workers=0))
    reference = landmark_reference_from_cache(out).numpy()
    with h5py.File(out) as f:
        lms, poses = f["landmarks"][:], f["pose"][:]
    errors = np.array([np.abs(np.array(head_pose(l, reference)) - p) for l, p in zip(lms, poses) if np.abs(p).max() < 60])
    assert len(errors) > 20
    assert np.median(errors, axis=0).max() < 2.5, np.median(errors, axis=0)
