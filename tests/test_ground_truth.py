"""Dense ground truth: frames, normals, region thresholds, colours; checked on shared data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from facerecon.crop import landmark_box
from facerecon.data.face_model import FaceModel, load_face_model
from facerecon.data.ground_truth import (
    REGION_BOUNDARY,
    REGION_KEY,
    REGION_SUB,
    build_ground_truth,
    estimate_normals,
    region_labels,
    vertex_normals,
)
from facerecon.data.readers import list_samples, read_sample
from facerecon.frames import image_to_crop
from facerecon.imageio import sample_colors

sys.path.insert(0, str(Path(__file__).parent))
from test_cache import make_fixture_dataset


def nme_xy(pred: np.ndarray, gt: np.ndarray) -> float:
    """AFLW2000-3D protocol: mean x,y error over 68 points / sqrt(w * h) of the gt landmark box."""
    wh = gt[:, :2].max(0) - gt[:, :2].min(0)
    return float(np.linalg.norm(pred[:, :2] - gt[:, :2], axis=1).mean() / np.sqrt(wh[0] * wh[1]))


def crop_to_px(points: np.ndarray, box: tuple[float, float, float], size: int | None = None) -> np.ndarray:
    """docs/conventions.md inverted by hand: crop units -> image px, or px of a ``size`` crop."""
    x0, y0, side = box
    xy = (np.asarray(points, dtype=np.float64)[:, :2] + 1.0) / 2.0
    return xy * size if size is not None else xy * side + [x0, y0]


def test_crop_frame_hand_worked_values() -> None:
    box = (10.0, 20.0, 100.0)
    pts = np.array([[10.0, 20.0, 7.0], [110.0, 120.0, 57.0], [60.0, 70.0, 7.0]])
    out = image_to_crop(pts, box, z0_px=7.0)
    np.testing.assert_allclose(out, [[-1, -1, 0], [1, 1, 1], [0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(crop_to_px(out, box), pts[:, :2], atol=1e-4)
    np.testing.assert_allclose(crop_to_px(out, box, size=224), [[0, 0], [224, 224], [112, 112]], atol=1e-4)
    assert landmark_box(np.array([[0.0, 0.0], [10.0, 20.0]])) == pytest.approx((5 - 11, 10 - 11, 22.0))


def test_normals_of_a_plane_and_a_sphere() -> None:
    import trimesh

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=float)
    n = vertex_normals(v, np.array([[0, 1, 3], [0, 3, 2]]))  # counter-clockwise seen from +z
    np.testing.assert_allclose(n, np.tile([0, 0, 1], (4, 1)), atol=1e-7)
    sphere = trimesh.creation.icosphere(subdivisions=3)
    n = vertex_normals(sphere.vertices, sphere.faces)
    radial = sphere.vertices / np.linalg.norm(sphere.vertices, axis=1, keepdims=True)
    assert (n * radial).sum(1).min() > 0.995  # outward, as trimesh's winding promises


def test_region_thresholds_on_hand_built_points() -> None:
    lms = np.array([[0.0, 0.0, 0.0], [100000.0, 0.0, 0.0]])  # micrometres
    d_mm = np.array([0.0, 9.99, 10.0, 16.99, 17.0, 17.01, 40.0])
    pts = np.stack([np.zeros_like(d_mm), d_mm * 1000.0, np.zeros_like(d_mm)], axis=1)
    labels = region_labels(pts, lms, units_per_mm=1000.0)
    assert labels.tolist() == [REGION_KEY, REGION_KEY, REGION_SUB, REGION_SUB, REGION_SUB, REGION_BOUNDARY, REGION_BOUNDARY]
    # the nearest landmark counts: a point 5 mm from the second landmark is key
    assert region_labels(np.array([[95000.0, 0, 0]]), lms, 1000.0).tolist() == [REGION_KEY]
    # millimetres, not model units: the same points in mm give the same labels
    assert region_labels(pts / 1000.0, lms / 1000.0, units_per_mm=1.0).tolist() == labels.tolist()


def test_colors_match_scipy_bilinear() -> None:
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    xy = np.column_stack([rng.uniform(-3, 53, 500), rng.uniform(-3, 43, 500)])
    got = sample_colors(img, xy).astype(float)
    ref = np.stack([map_coordinates(img[..., c].astype(float), [xy[:, 1] - 0.5, xy[:, 0] - 0.5], order=1, mode="grid-constant", cval=0)
                    for c in range(3)], axis=1)
    assert np.abs(got - ref).max() <= 4.5  # OpenCV quantises the weights to 1/32
    assert np.abs(got - ref).mean() < 1.0
    np.testing.assert_array_equal(sample_colors(img, np.array([[10.5, 7.5]])), img[7:8, 10])  # a pixel centre


def _tiny(tmp_path: Path) -> tuple[list, FaceModel]:
    data, model_dir = make_fixture_dataset(tmp_path, n=3)
    return [read_sample(r) for r in list_samples(data)], load_face_model(model_dir)


def test_normals_face_the_camera_whatever_the_winding(tmp_path: Path) -> None:
    samples, model = _tiny(tmp_path)
    s = samples[0]
    box = landmark_box(s.landmarks68)
    gt = build_ground_truth(s, box, model)
    assert (gt.normals[:, 2] < 0).mean() > 0.95  # a near-frontal dome: outward = toward the camera
    flipped = FaceModel(name="reversed", mean=model.mean, shape_basis=model.shape_basis, exp_basis=model.exp_basis,
                        triangles=model.triangles[:, ::-1], landmark_ids=model.landmark_ids)
    gt2 = build_ground_truth(s, box, flipped)
    np.testing.assert_allclose(gt2.normals, gt.normals, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(gt.normals, axis=1), 1, atol=1e-5)


def test_tiny_sample_landmarks_and_scale(tmp_path: Path) -> None:
    samples, model = _tiny(tmp_path)
    for s in samples:
        box = landmark_box(s.landmarks68)
        gt = build_ground_truth(s, box, model)
        # the model's landmark vertices are the .mat's pt3d_68 (the fixture made them so)
        np.testing.assert_allclose(gt.points[model.landmark_ids], gt.landmarks, atol=1e-4)
        # mm_per_unit: a distance of 1 crop unit is side/2 px = side/(2 s) um
        assert gt.mm_per_unit == pytest.approx(box[2] / (2 * s.params.pose[6] * 1000), rel=1e-5)
        v = model.vertices(s.params.shape, s.params.exp)  # the pose is rigid + scale: distances in mm agree
        d_model = np.linalg.norm(v[0] - v[200]) / 1000
        d_crop = np.linalg.norm(gt.points[0] - gt.points[200]) * gt.mm_per_unit
        assert d_crop == pytest.approx(d_model, rel=1e-4)


# ---- shared data ---------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_aflw_landmark_vertices_match_pt3d(shared_data: Path) -> None:
    model = load_face_model(shared_data / "bfm-mean")
    refs = list_samples(shared_data / "aflw2000-3d")[:50]
    nmes = []
    for r in refs:
        s = read_sample(r)
        box = landmark_box(s.landmarks68)
        gt = build_ground_truth(s, box, model)
        nmes.append(nme_xy(gt.points[model.landmark_ids], gt.landmarks))
        # crop frame inverted: the stored landmarks land back on pt3d_68 - 0.5 in image px
        np.testing.assert_allclose(crop_to_px(gt.landmarks, box), s.landmarks68[:, :2], atol=2e-3)
        assert gt.points.shape == (53215, 3) and abs(float(gt.landmarks[:, 2].mean())) < 1e-5
    assert np.mean(nmes) < 0.015, np.mean(nmes)


@pytest.mark.shared_data
def test_aflw_ground_truth_lands_on_the_crop_image(shared_data: Path) -> None:
    """Colours stored per point (sampled from the original photo) agree with the 224 crop image
    sampled at the point's crop position, and far better than with a 3 px shift."""
    from facerecon.crop import crop_image

    model = load_face_model(shared_data / "bfm-mean")
    for r in list_samples(shared_data / "aflw2000-3d")[:5]:
        s = read_sample(r)
        box = landmark_box(s.landmarks68)
        gt = build_ground_truth(s, box, model)
        crop = crop_image(s.image, box, 224)
        uv = crop_to_px(gt.points, box, size=224)
        front = (gt.normals[:, 2] < -0.5) & (np.abs(gt.points[:, :2]) < 0.9).all(1)
        errs = [np.abs(sample_colors(crop, uv[front] + shift).astype(float) - gt.colors[front]).mean()
                for shift in (np.zeros(2), np.array([3.0, 0]), np.array([0, 3.0]))]
        assert errs[0] < 6.0 and errs[0] < 0.7 * min(errs[1:]), (r.id, errs)


def test_estimate_normals_of_a_plane_are_the_analytic_normal() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(-1, 1, (500, 2))
    pts = np.column_stack([xy, 0.2 * xy[:, 0] - 0.5 * xy[:, 1] + 1.0])  # z = 0.2 x - 0.5 y + 1
    n = estimate_normals(pts)
    assert n.shape == (500, 3) and n.dtype == np.float32
    expected = np.array([0.2, -0.5, -1.0]) / np.linalg.norm([0.2, -0.5, -1.0])  # towards the camera (-z)
    np.testing.assert_allclose(n, np.broadcast_to(expected, n.shape), atol=1e-5)


def test_estimate_normals_of_a_sphere_are_radial_and_face_the_camera() -> None:
    """Points on a sphere (a Fibonacci lattice): the normal is the radial direction, flipped where
    needed so it points towards the camera (n_z <= 0), within the curvature's few-degree bias."""
    k = np.arange(4000) + 0.5
    z = 1 - 2 * k / k.size
    phi = np.pi * (1 + 5**0.5) * k
    radial = np.column_stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z])
    centre = np.array([0.3, -0.2, 4.0])
    n = estimate_normals(centre + 2.0 * radial, k=16).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
    cos = np.abs((n * radial).sum(1))
    assert cos.min() > np.cos(np.radians(3.0)), np.degrees(np.arccos(cos.min()))
    assert np.all(n[:, 2] <= 1e-6)
    front, back = radial[:, 2] < -0.1, radial[:, 2] > 0.1
    np.testing.assert_allclose(n[front], radial[front], atol=np.radians(3.0))  # outward on the camera side
    np.testing.assert_allclose(n[back], -radial[back], atol=np.radians(3.0))  # turned towards the camera
