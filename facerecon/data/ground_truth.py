"""Dense ground truth of one sample in the network's normalised crop frame.

For a 3DMM sample (AFLW2000-3D, 300W-LP) every vertex of the face model is used (53,215 for the
BFM cut by 3DDFA; the face paper uses all of them too, visible or not), so the ground truth is the
whole face surface, including parts hidden at large yaw. For a scan, every point of its cloud.

The crop frame (docs/conventions.md): ``x = 2 (x_px - x0) / side - 1``, likewise y (the crop spans
[-1, 1], x right, y down), ``z`` depth away from the camera with the same scale, ``z = 0`` at the
mean depth of the 68 ground-truth landmarks. One crop unit is ``side / 2`` image px
(:func:`facerecon.frames.image_to_crop`; the box policy is :mod:`facerecon.detect`'s).

Per point we store:

* the outward surface normal (unit, from the mesh triangles, area-weighted): the outward normals
  of the visible face point toward the camera, i.e. have negative z;
* a region label by the distance to the nearest of the 68 landmark vertices, measured **in
  millimetres of the model before the pose**: :data:`REGION_KEY` (2) under 10 mm,
  :data:`REGION_SUB` (1) from 10 to 17 mm, :data:`REGION_BOUNDARY` (0) beyond;
* the colour, bilinearly sampled from the original image (black outside it, like the crop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facerecon.data.face_model import FaceModel, pose_degrees, project_to_image
from facerecon.data.readers import RawSample
from facerecon.errors import InputError
from facerecon.frames import image_to_crop
from facerecon.imageio import sample_colors

REGION_BOUNDARY, REGION_SUB, REGION_KEY = 0, 1, 2
#: Region thresholds in millimetres: key below the first, sub-priority up to the second.
REGION_THRESHOLDS_MM = (10.0, 17.0)


@dataclass
class GroundTruth:
    """Dense ground truth of one sample, crop frame.

    Attributes:
        points: ``(P, 3)`` float32, crop units.
        normals: ``(P, 3)`` float32, unit, outward (toward the camera where visible: z < 0).
        regions: ``(P,)`` uint8, 0 boundary / 1 sub-priority / 2 key.
        colors: ``(P, 3)`` uint8 RGB sampled from the image.
        landmarks: ``(68, 3)`` float32, crop units (NaN when the sample has none).
        pose: ``(3,)`` float32 yaw, pitch, roll in degrees (NaN for scans).
        mm_per_unit: millimetres per crop unit (NaN when unknown).
    """

    points: np.ndarray
    normals: np.ndarray
    regions: np.ndarray
    colors: np.ndarray
    landmarks: np.ndarray
    pose: np.ndarray
    mm_per_unit: float


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (unit; zero-area neighbourhoods give (0, 0, 0)).

    Args:
        vertices: ``(N, 3)`` float.
        triangles: ``(T, 3)`` int, 0-based; the normal follows the right-hand rule of the winding.

    Returns:
        ``(N, 3)`` float32.
    """
    v = np.asarray(vertices, dtype=np.float64)
    tri = np.asarray(triangles, dtype=np.int64)
    face_n = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])  # length = 2 * area
    n = np.zeros_like(v)
    flat = tri.reshape(-1)
    for c in range(3):  # bincount is an order of magnitude faster than np.add.at
        n[:, c] = np.bincount(flat, weights=np.repeat(face_n[:, c], 3), minlength=v.shape[0])
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return (n / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def outward_sign(model: FaceModel) -> float:
    """+1 when the model's triangle winding gives outward normals, -1 otherwise.

    BFM faces look along +z in model space (the nose tip has the largest z), so outward normals
    of the mean face point to +z on average.
    """
    cached = getattr(model, "_outward_sign", None)
    if cached is None:
        n = vertex_normals(model.mean, model.triangles)
        cached = 1.0 if float(n[:, 2].sum()) >= 0 else -1.0
        setattr(model, "_outward_sign", cached)  # kept on the model: computed once per model
    return cached


def region_labels(
    points: np.ndarray, landmarks: np.ndarray, units_per_mm: float, thresholds_mm: tuple[float, float] = REGION_THRESHOLDS_MM
) -> np.ndarray:
    """Region of each point by its distance to the nearest landmark.

    Args:
        points: ``(P, 3)`` in some unit.
        landmarks: ``(L, 3)`` in the same unit.
        units_per_mm: how many of those units make a millimetre (1000 for BFM micrometres).
        thresholds_mm: (key, sub) thresholds in mm.

    Returns:
        ``(P,)`` uint8: 2 where ``d < key``, 1 where ``key <= d <= sub``, 0 where ``d > sub``.
    """
    pts = np.asarray(points, dtype=np.float64)
    lms = np.asarray(landmarks, dtype=np.float64)
    # brute force |p - l|^2 = |p|^2 - 2 p.l + |l|^2 over the few landmarks (faster than a KD-tree here)
    centre = lms.mean(axis=0)  # centring keeps the expansion accurate for far-off coordinates
    pts, lms = (pts - centre).astype(np.float32), (lms - centre).astype(np.float32)  # float32: ~0.1 um error at 10 mm
    d2 = (pts**2).sum(1)[:, None] - 2.0 * pts @ lms.T + (lms**2).sum(1)[None, :]
    dist = np.sqrt(np.maximum(d2.min(axis=1), 0.0)).astype(np.float64)
    dist_mm = dist / units_per_mm
    labels = np.full(dist.shape[0], REGION_BOUNDARY, dtype=np.uint8)
    labels[dist_mm <= thresholds_mm[1]] = REGION_SUB
    labels[dist_mm < thresholds_mm[0]] = REGION_KEY
    return labels


def estimate_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """Normals of an unstructured cloud by local PCA over ``k`` neighbours, turned toward the camera (-z).

    Args:
        points: ``(P, 3)``; returns ``(P, 3)`` float32 unit normals.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    k = min(k, pts.shape[0])
    _, idx = cKDTree(pts).query(pts, k=k)
    nb = pts[idx.reshape(pts.shape[0], -1)]
    nb = nb - nb.mean(axis=1, keepdims=True)
    cov = np.einsum("pki,pkj->pij", nb, nb)
    _, vecs = np.linalg.eigh(cov)
    n = vecs[:, :, 0]
    n[n[:, 2] > 0] *= -1
    return n.astype(np.float32)


def ground_truth_3dmm(sample: RawSample, model: FaceModel, box: tuple[float, float, float]) -> GroundTruth:
    """Dense ground truth of a 3DMM sample in the crop frame of ``box``.

    Args:
        sample: with ``params``; ``landmarks68`` (image px) is used when present, else the model's
            landmark vertices (:func:`gt_landmarks_px`).
        model: the face model the parameters refer to.
        box: crop box ``(x0, y0, side)`` image px.
    """
    if sample.params is None:
        raise InputError(f"{sample.id}: no 3DMM parameters")
    p = sample.params
    verts = model.vertices(p.shape, p.exp)  # (N, 3) model units, before the pose
    height = sample.image.shape[0]
    verts_px = project_to_image(verts, p.pose, height)
    landmarks_px = gt_landmarks_px(sample, model)
    assert landmarks_px is not None  # a sample with 3DMM parameters has the model's landmarks
    z0 = float(np.mean(landmarks_px[:, 2]))
    points = image_to_crop(verts_px, box, z0)
    normals = vertex_normals(points, model.triangles) * np.float32(outward_sign(model))
    regions = region_labels(verts, verts[model.landmark_ids], model.units_per_mm)
    colors = sample_colors(sample.image, verts_px[:, :2])
    side = float(box[2])
    return GroundTruth(
        points=points,
        normals=normals.astype(np.float32),
        regions=regions,
        colors=colors,
        landmarks=image_to_crop(landmarks_px, box, z0),
        pose=pose_degrees(p.pose),
        mm_per_unit=side / (2.0 * float(p.pose[6]) * model.units_per_mm),
    )


def ground_truth_scan(sample: RawSample, box: tuple[float, float, float]) -> GroundTruth:
    """Ground truth of a scan sample (points, normals and landmarks in image px)."""
    if sample.points is None:
        raise InputError(f"{sample.id}: no point cloud")
    side = float(box[2])
    pts_px = sample.points.astype(np.float64)
    if sample.landmarks68 is not None:
        z0 = float(np.mean(sample.landmarks68[:, 2]))
        landmarks = image_to_crop(sample.landmarks68, box, z0)
        if sample.mm_per_px is None:
            raise InputError(
                f"{sample.id}: region labels need the scale: add {sample.image_path.stem}.json or scan_info.json "
                f"with mm_per_px"
            )
        regions = region_labels(pts_px, sample.landmarks68, 1.0 / sample.mm_per_px)
    else:
        z0 = float(np.mean(pts_px[:, 2]))
        landmarks = np.full((68, 3), np.nan, dtype=np.float32)
        regions = np.full(pts_px.shape[0], REGION_BOUNDARY, dtype=np.uint8)
    normals = sample.normals if sample.normals is not None else estimate_normals(pts_px)
    mm_per_unit = sample.mm_per_px * side / 2.0 if sample.mm_per_px is not None else float("nan")
    return GroundTruth(
        points=image_to_crop(pts_px, box, z0),
        normals=np.asarray(normals, dtype=np.float32),
        regions=regions,
        colors=sample_colors(sample.image, pts_px[:, :2]),
        landmarks=landmarks,
        pose=np.full(3, np.nan, dtype=np.float32),
        mm_per_unit=float(mm_per_unit),
    )


def build_ground_truth(sample: RawSample, box: tuple[float, float, float], model: FaceModel | None) -> GroundTruth:
    """Dense ground truth of any sample (dispatches on 3DMM parameters vs point cloud)."""
    if sample.params is not None:
        if model is None:
            raise InputError(f"{sample.id}: 3DMM samples need a face model (--face-model)")
        return ground_truth_3dmm(sample, model, box)
    return ground_truth_scan(sample, box)


def gt_landmarks_px(sample: RawSample, model: FaceModel | None) -> np.ndarray | None:
    """The sample's 68 landmarks in image px for building a landmark crop box (or None)."""
    if sample.landmarks68 is not None:
        return sample.landmarks68
    if sample.params is not None and model is not None:
        return model.landmarks_px(sample.params.shape, sample.params.exp, sample.params.pose, sample.image.shape[0])
    if sample.landmarks2d is not None:
        return sample.landmarks2d
    return None
