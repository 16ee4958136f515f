"""Face profiling: the rotation algebra against scipy, the photo and landmarks under a zero turn, a
painted marker followed to the new landmark, the yaw read back by a landmark fit, no black holes;
on a small synthetic face model and on real AFLW2000-3D samples (skipped when absent)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from facerecon.crop import landmark_box
from facerecon.data.face_model import FaceModel, load_face_model, project_to_image
from facerecon.data.ground_truth import build_ground_truth, gt_landmarks_px
from facerecon.data.profiling import (
    MAX_YAW_DEG,
    apply_transform,
    build_scene,
    crop_frame_transform,
    profile_view,
    profile_views,
    view_angles,
    view_transform,
)
from facerecon.data.readers import Params3DMM, RawSample, list_samples, read_sample
from facerecon.errors import InputError
from facerecon.frames import head_pose, image_to_crop

sys.path.insert(0, str(Path(__file__).parent))
from conftest import shared_subdir

pytest.importorskip("moderngl", reason="the renderer needs moderngl")

SIZE = 240
MARKER = np.array([0, 255, 0], dtype=np.uint8)


def ellipsoid_model() -> FaceModel:
    """The front of an ellipsoid (half-axes 80 x 100 x 60 mm, z towards the viewer, micrometres)
    on a 61 x 61 grid, with 68 landmark vertices spread over its middle and one shape component
    (a uniform scale) so that shape parameters matter."""
    theta, phi = np.meshgrid(np.radians(np.linspace(-80, 80, 61)), np.radians(np.linspace(-70, 70, 61)))
    mean = np.stack([80e3 * np.cos(phi) * np.sin(theta), 100e3 * np.sin(phi), 60e3 * np.cos(phi) * np.cos(theta)], -1).reshape(-1, 3)
    ids = np.arange(61 * 61).reshape(61, 61)
    quads = np.stack([ids[:-1, :-1], ids[:-1, 1:], ids[1:, 1:], ids[1:, :-1]], -1).reshape(-1, 4)
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    landmark_ids = ids[18:43:3, 18:43:3].reshape(-1)[:68]  # 9 x 9 grid of rows/cols 18..42 -> first 68
    landmark_ids = np.concatenate([landmark_ids, ids[30, 14:14 + 68 - len(landmark_ids)]])
    return FaceModel(
        name="ellipsoid", mean=mean, shape_basis=mean.reshape(-1, 1) * 1e-3, exp_basis=np.zeros((mean.size, 1)),
        triangles=triangles, landmark_ids=landmark_ids,
    )


def textured_photo(seed: int = 0) -> np.ndarray:
    """A smooth random colour texture with no dark or green-dominant pixel (values 60..200)."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (SIZE // 4, SIZE // 4, 3)).astype(np.float32)
    smooth = cv2.resize(cv2.GaussianBlur(noise, (0, 0), 1.0), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    lo, hi = smooth.min(), smooth.max()
    image = 60 + 140 * (smooth - lo) / (hi - lo)
    image[..., 1] = np.minimum(image[..., 1], image[..., [0, 2]].max(-1))  # never green-dominant
    return image.round().astype(np.uint8)


def synthetic_sample(model: FaceModel, pose_deg=(5.0, 10.0, -4.0), image=None) -> RawSample:
    pose = np.array([*np.radians(pose_deg), SIZE / 2, SIZE / 2, 0.0, 0.0011])
    params = Params3DMM(shape=np.array([20.0]), exp=np.zeros(1), pose=pose)
    image = textured_photo() if image is None else image
    lms = model.landmarks_px(params.shape, params.exp, pose, SIZE)
    return RawSample(id="synthetic/0", image_path=Path("synthetic.png"), image=image, params=params, landmarks68=lms)


def dataset_rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """The datasets' ``Rx(pitch) Ry(yaw) Rz(roll)`` built with scipy: their matrices are the
    standard ones of the negated angles, composed intrinsically in the order x, y, z."""
    return Rotation.from_euler("XYZ", [-pitch, -yaw, -roll]).as_matrix()


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return ellipsoid_model()


def test_view_transform_composes_rotations_as_scipy_does(model: FaceModel) -> None:
    pose = np.array([0.2, -0.4, 0.3, 100.0, 90.0, 5.0, 0.002])
    angles = (0.1, 0.9, -0.2)
    centre = np.array([1e3, -2e3, -50e3])
    new_pose, transform = view_transform(pose, angles, centre, 200)
    turn = dataset_rotation(*angles) @ dataset_rotation(*pose[:3]).T
    flip = np.diag([1.0, -1.0, -1.0])  # model-camera frame (y up, z to the viewer) -> image px
    np.testing.assert_allclose(transform[:, :3], flip @ turn @ flip, atol=1e-12)
    np.testing.assert_allclose(new_pose[[0, 1, 2, 6]], [*angles, pose[6]])
    # every point of the fit lands where the new pose projects it; the head centre stays
    verts = model.mean[::97].astype(np.float64)
    np.testing.assert_allclose(apply_transform(transform, project_to_image(verts, pose, 200)), project_to_image(verts, new_pose, 200), atol=1e-3)
    c = project_to_image(centre[None], pose, 200)
    np.testing.assert_allclose(apply_transform(transform, c), c, atol=1e-3)


def test_zero_turn_reproduces_the_photo_and_the_landmarks(model: FaceModel) -> None:
    sample = synthetic_sample(model)
    view = profile_view(sample, model, tuple(sample.params.pose[:3]))
    np.testing.assert_allclose(view.sample.landmarks68, sample.landmarks68, atol=1e-3)
    np.testing.assert_allclose(view.sample.params.pose, sample.params.pose, atol=1e-9)
    diff = np.abs(view.sample.image.astype(int) - sample.image.astype(int)).max(-1)
    face = _face_mask(model, sample)
    assert np.percentile(diff[face], 99) <= 2 and np.median(diff[face]) == 0
    assert np.median(diff) == 0  # the background stays where it was, too


def _face_mask(model: FaceModel, sample: RawSample, erode_px: int = 3) -> np.ndarray:
    """Pixels inside the convex outline of the posed face, eroded (computed with OpenCV)."""
    import cv2

    p = sample.params
    xy = project_to_image(model.vertices(p.shape, p.exp), p.pose, SIZE)[:, :2]
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(xy - 0.5).astype(np.int32)), 1)
    return cv2.erode(mask, np.ones((2 * erode_px + 1,) * 2, np.uint8)).astype(bool)


def _marker_centre(image: np.ndarray) -> np.ndarray:
    green = image[..., 1].astype(int) - image[..., [0, 2]].max(-1).astype(int) > 90
    assert green.sum() >= 5, "the marker is gone"
    rows, cols = np.nonzero(green)
    return np.array([cols.mean() + 0.5, rows.mean() + 0.5])


def _paint_marker(image: np.ndarray, xy: np.ndarray, radius: int = 3) -> np.ndarray:
    import cv2

    out = image.copy()
    cv2.circle(out, (int(round(xy[0] * 16 - 8)), int(round(xy[1] * 16 - 8))), radius * 16, MARKER.tolist(), -1, shift=4)
    return out


@pytest.mark.parametrize("turn_deg", [30.0, -25.0])
def test_a_marker_at_a_landmark_lands_on_the_new_landmark(model: FaceModel, turn_deg: float) -> None:
    sample = synthetic_sample(model)
    k = 40  # a landmark near the middle of the face, seen before and after the turn
    sample.image = _paint_marker(sample.image, sample.landmarks68[k])
    p = sample.params.pose
    view = profile_view(sample, model, (p[0] + 0.05, p[1] + math.radians(turn_deg), p[2] - 0.05))
    q = view.sample.params
    expected = model.landmarks_px(q.shape, q.exp, q.pose, SIZE)[k, :2]  # from the new pose alone
    assert np.linalg.norm(_marker_centre(view.sample.image) - expected) < 2.0
    np.testing.assert_allclose(view.sample.landmarks68[k, :2], expected, atol=1e-2)


def test_yaw_read_back_from_a_landmark_fit(model: FaceModel) -> None:
    sample = synthetic_sample(model)
    flip = np.array([1.0, -1.0, -1.0])  # frontal landmarks in image axes (x right, y down, z away)
    reference = model.landmark_vertices(sample.params.shape, sample.params.exp) * flip
    yaw0, _, _ = head_pose(sample.landmarks68, reference)
    assert yaw0 == pytest.approx(10.0, abs=0.01)
    p = sample.params.pose
    view = profile_view(sample, model, (p[0], p[1] + math.radians(35.0), p[2]))
    yaw, pitch, roll = head_pose(gt_landmarks_px(view.sample, model), reference)
    assert (yaw, pitch, roll) == pytest.approx((45.0, 5.0, -4.0), abs=0.01)
    assert math.degrees(view.sample.params.pose[1]) == pytest.approx(45.0)


def test_dense_ground_truth_is_the_source_turned(model: FaceModel) -> None:
    sample = synthetic_sample(model)
    p = sample.params.pose
    view = profile_view(sample, model, (p[0], p[1] + 0.6, p[2]))
    box = landmark_box(view.sample.landmarks68)
    gt = build_ground_truth(view.sample, box, model)
    src_px = project_to_image(model.vertices(sample.params.shape, sample.params.exp), p, SIZE)
    moved = apply_transform(view.transform, src_px)
    z0 = float(view.sample.landmarks68[:, 2].mean())
    np.testing.assert_allclose(gt.points, image_to_crop(moved, box, z0), atol=1e-4)
    assert gt.pose[0] == pytest.approx(math.degrees(p[1] + 0.6), abs=1e-3)


def test_the_view_ground_truth_is_an_affine_map_of_the_source_in_crop_units(model: FaceModel) -> None:
    sample = synthetic_sample(model)
    p = sample.params.pose
    view = profile_view(sample, model, (p[0] + 0.1, p[1] + 0.7, p[2] - 0.1))
    src_box = landmark_box(gt_landmarks_px(sample, model))
    view_box = (30.5, 41.0, 150.0)  # any box: a detector's, not the landmarks'
    src, new = build_ground_truth(sample, src_box, model), build_ground_truth(view.sample, view_box, model)
    m = crop_frame_transform(view.transform, gt_landmarks_px(sample, model), src_box, view_box)
    np.testing.assert_allclose(src.points @ m[:, :3].T + m[:, 3], new.points, atol=2e-5)
    np.testing.assert_allclose(src.landmarks @ m[:, :3].T + m[:, 3], new.landmarks, atol=2e-5)
    np.testing.assert_allclose(src.normals @ view.transform[:, :3].T, new.normals, atol=1e-4)
    np.testing.assert_array_equal(src.regions, new.regions)
    assert new.mm_per_unit == pytest.approx(src.mm_per_unit * view_box[2] / src_box[2])


def test_no_black_inside_the_turned_face(model: FaceModel) -> None:
    sample = synthetic_sample(model, pose_deg=(0.0, 30.0, 0.0))
    for yaw in (60.0, 90.0, -20.0):  # further, to the profile, and back past frontal (uncovers the far side)
        view = profile_view(sample, model, (0.0, math.radians(yaw), 0.0))
        assert view.sample.image.shape == sample.image.shape
        assert view.sample.image.max(-1).min() >= 60, f"a black (unfilled) pixel at yaw {yaw}"


def test_view_angles_turn_further_seeded_and_bounded() -> None:
    pose = np.array([0.1, math.radians(25.0), -0.05, 0, 0, 0, 1.0])
    a = view_angles(pose, 6, np.random.default_rng(3))
    np.testing.assert_array_equal(a, view_angles(pose, 6, np.random.default_rng(3)))
    yaw = np.degrees(a[:, 1])
    assert (yaw >= 35.0).all() and (yaw <= MAX_YAW_DEG).all() and (np.diff(yaw) > 0).all()
    assert np.abs(np.degrees(a[:, 0] - 0.1)).max() <= 10.0 and np.abs(np.degrees(a[:, 2] + 0.05)).max() <= 10.0
    left = view_angles(pose * np.array([1, -1, 1, 1, 1, 1, 1]), 4, np.random.default_rng(0))
    assert (left[:, 1] < 0).all()


def test_profile_views_are_seeded(model: FaceModel) -> None:
    sample = synthetic_sample(model)
    one = profile_views(sample, model, 2, np.random.default_rng(7))
    two = profile_views(sample, model, 2, np.random.default_rng(7))
    assert [v.sample.id for v in one] == ["synthetic/0@view0", "synthetic/0@view1"]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.sample.image, b.sample.image)
        np.testing.assert_array_equal(a.transform, b.transform)


def test_a_sample_without_a_fit_is_refused(model: FaceModel) -> None:
    scan = RawSample(id="scan/0", image_path=Path("x.png"), image=textured_photo(), points=np.zeros((3, 3), np.float32))
    with pytest.raises(InputError, match="face-model fit"):
        build_scene(scan, model)


# ----------------------------------------------------------------------------------------------
# real AFLW2000-3D samples with the reduced BFM


@pytest.fixture(scope="module")
def bfm() -> FaceModel:
    return load_face_model(shared_subdir("bfm-mean"))


def _aflw(name: str, model: FaceModel) -> RawSample:
    refs = {r.image_path.stem: r for r in list_samples(shared_subdir("aflw2000-3d"))}
    return read_sample(refs[name], model)


def test_real_sample_zero_turn_and_marker(bfm: FaceModel) -> None:
    sample = _aflw("image00014", bfm)  # near frontal (yaw 6 degrees)
    p = sample.params
    view = profile_view(sample, bfm, tuple(p.pose[:3]))
    diff = np.abs(view.sample.image.astype(int) - sample.image.astype(int)).max(-1)
    lms = bfm.landmarks_px(p.shape, p.exp, p.pose, sample.image.shape[0])
    inner = landmark_box(lms[17:])  # brows, eyes, nose and mouth: well inside the face
    x0, y0, side = (int(v) for v in inner)
    assert np.percentile(diff[y0 + side // 4: y0 + 3 * side // 4, x0 + side // 4: x0 + 3 * side // 4], 99) <= 3
    nose = lms[30]
    marked = RawSample(**{**sample.__dict__, "image": _paint_marker(sample.image, nose, radius=2)})
    turned = profile_view(marked, bfm, (p.pose[0], p.pose[1] + math.radians(30.0), p.pose[2]))
    q = turned.sample.params
    expected = bfm.landmarks_px(q.shape, q.exp, q.pose, sample.image.shape[0])[30, :2]
    assert np.linalg.norm(_marker_centre(turned.sample.image) - expected) < 2.0
