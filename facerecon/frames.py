"""Conversions between the frames of docs/conventions.md, and head pose from 3D landmarks.

- image px: continuous, 0-based, x right, y down (pixel centres at +0.5).
- crop units: ``x = 2 (x_px - x0) / side - 1`` (same for y), z away from the camera scaled like x.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def crop_to_image_3d(points: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Crop units -> image px, depth included.

    Args:
        points: (..., 3) crop units.
        box: (x0, y0, side) the crop box, image px.

    Returns:
        (..., 3) float64 image px: x right, y down, z away from the camera, in px (z = 0 where the
        crop frame's z = 0, i.e. the mean depth of the landmarks for ground truth).
    """
    x0, y0, side = (float(v) for v in box)
    p = np.asarray(points, dtype=np.float64)
    half = side / 2.0
    out = np.empty_like(p)
    out[..., 0] = (p[..., 0] + 1.0) * half + x0
    out[..., 1] = (p[..., 1] + 1.0) * half + y0
    out[..., 2] = p[..., 2] * half
    return out


# The dataset convention (AFLW2000-3D / 300W-LP Pose_Para): P = s * R V + t in the face model's
# frame (x right, y up, z towards the viewer), R = Rx(pitch) Ry(yaw) Rz(roll) with the matrices
# written out in ``euler_from_rotation`` (docs/datasets.md). Our frames flip y and z: F = diag(1, -1, -1).
_FLIP = np.diag([1.0, -1.0, -1.0])


def euler_from_rotation(r_model: np.ndarray) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in radians of a rotation ``R = Rx(pitch) Ry(yaw) Rz(roll)`` written with
    the dataset's matrices (``Rx(a) = [[1,0,0],[0,c,s],[0,-s,c]]``, ``Ry(a) = [[c,0,-s],[0,1,0],[s,0,c]]``,
    ``Rz(a) = [[c,s,0],[-s,c,0],[0,0,1]]``)."""
    r = np.asarray(r_model, dtype=np.float64)
    # R[0] = [cy cr, cy sr, -sy]; R[1][2] = sp cy; R[2][2] = cp cy.
    yaw = math.asin(max(-1.0, min(1.0, -r[0, 2])))
    pitch = math.atan2(r[1, 2], r[2, 2])
    roll = math.atan2(r[0, 1], r[0, 0])
    return pitch, yaw, roll


def rotation_from_euler(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """The dataset's ``Rx(pitch) Ry(yaw) Rz(roll)`` (3, 3)."""
    cp, sp, cy, sy, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw), math.cos(roll), math.sin(roll)
    rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cr, sr, 0], [-sr, cr, 0], [0, 0, 1]])
    return rx @ ry @ rz


def similarity_fit(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares ``target ~ s R source + t`` (Umeyama 1991), R a proper rotation.

    Args:
        source, target: (K, 3) corresponding points.

    Returns:
        (s, R (3, 3), t (3,)).
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rot = u @ sign @ vt
    var = (a**2).sum() / len(src)
    scale = float(np.trace(np.diag(d) @ sign) / var) if var > 0 else 1.0
    return scale, rot, mu_d - scale * rot @ mu_s


def head_pose(landmarks: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """Head pose (yaw, pitch, roll) in degrees, in the AFLW2000-3D convention, from 68 3D landmarks.

    Args:
        landmarks: (68, 3) in a frame with x right, y down, z away from the camera (crop units or
            image px: any uniform scale).
        reference: (68, 3) the frontal landmark layout in the same axes (pose 0, 0, 0).

    Returns:
        (yaw, pitch, roll) degrees; the rotation best mapping ``reference`` onto ``landmarks``,
        decomposed as the datasets' ``Pose_Para`` is.
    """
    _, rot, _ = similarity_fit(reference, landmarks)
    r_model = _FLIP @ rot @ _FLIP
    pitch, yaw, roll = euler_from_rotation(r_model)
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def frontalise(landmarks: np.ndarray, yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Undo a known pose (degrees, dataset convention) on (68, 3) landmarks in our axes; centred
    at the origin and scaled to unit RMS radius (for building a frontal ``reference``)."""
    r_model = rotation_from_euler(math.radians(pitch), math.radians(yaw), math.radians(roll))
    rot = _FLIP @ r_model @ _FLIP
    p = np.asarray(landmarks, dtype=np.float64)
    p = p - p.mean(0)
    p = p @ rot  # R^T applied to row vectors
    return p / np.sqrt((p**2).sum(1).mean())
