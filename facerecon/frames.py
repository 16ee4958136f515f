"""Conversions between the frames of docs/conventions.md, and head pose from 3D landmarks.

- image px: continuous, 0-based, x right, y down (pixel centres at +0.5).
- crop px: the pixels of a ``size`` x ``size`` crop of the box ``(x0, y0, side)``:
  ``u = (x_px - x0) size / side`` (same for y), continuous like image px.
- crop units (the network's normalised crop frame): ``x = 2 (x_px - x0) / side - 1`` (same for
  y; the crop spans [-1, 1]), z away from the camera scaled like x. One crop unit is
  ``side / 2`` image px, and ``x = 2 u / size - 1``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def image_to_crop(points_px: np.ndarray, box: Sequence[float], z0_px: float = 0.0) -> np.ndarray:
    """Image px -> crop units.

    Args:
        points_px: ``(..., 2)`` or ``(..., 3)`` image px (z: depth away from the camera, px).
        box: crop box ``(x0, y0, side)`` in image px.
        z0_px: depth (px) that maps to ``z = 0``.

    Returns:
        same shape, float32 crop units.
    """
    x0, y0, side = (float(v) for v in box)
    pts = np.asarray(points_px, dtype=np.float64)
    out = np.empty_like(pts)
    out[..., 0] = 2.0 * (pts[..., 0] - x0) / side - 1.0
    out[..., 1] = 2.0 * (pts[..., 1] - y0) / side - 1.0
    if pts.shape[-1] > 2:
        out[..., 2] = 2.0 * (pts[..., 2] - z0_px) / side
    return out.astype(np.float32)


def crop_to_image_3d(points: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Crop units -> image px, depth included (the inverse of :func:`image_to_crop` with ``z0_px = 0``).

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


def image_to_crop_px(points_px: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """Image px -> px of the ``size`` x ``size`` crop of ``box`` (what ``detect.crop_image`` samples).

    Args:
        points_px: ``(..., >=2)`` image px (only x and y are used).
        box: crop box ``(x0, y0, side)`` in image px.
        size: the crop's side, px.

    Returns:
        ``(..., 2)`` float64 crop px, ``u = (x - x0) size / side``, ``v = (y - y0) size / side``.
    """
    x0, y0, side = (float(v) for v in box)
    xy = np.asarray(points_px, dtype=np.float64)[..., :2]
    return (xy - np.array([x0, y0])) * size / side


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
    """The dataset's ``R = Rx(pitch) Ry(yaw) Rz(roll)``, as in the 300W-LP code and face3d.

    Args:
        pitch, yaw, roll: radians (``Pose_Para[:3]``).

    Returns:
        ``(3, 3)`` float64; a model point ``v`` (row vector) is rotated as ``v @ R.T``.
    """
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
