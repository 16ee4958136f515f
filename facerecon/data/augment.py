"""On-the-fly augmentation of training samples, consistent across every field of a sample.

One geometric transform per sample, in crop units (x right, y down, z away; docs/conventions.md):
an optional horizontal flip, then an in-plane rotation, a uniform scale and a shift about the
crop centre, ``p' = s R(theta) F p + c`` for (x, y) and ``z' = s z``. It is applied to the image
(``cv2.warpAffine``, black outside the crop, like the crop itself), the dense points, the
template-topology vertices, the 68 landmarks and the five points; normals are rotated (and
flipped). A flip also re-orders what has a left and a right: the 68 landmarks
(``FLIP_PERMUTATION_68``), the five points (eyes and mouth corners swap) and the template
vertices (the caller computes them from the mirrored correspondence). The depth origin (mean
landmark depth at z = 0) is preserved by construction.

Then photometric changes of the image alone: colour jitter (brightness, contrast, saturation),
grey-scale, Gaussian blur, Gaussian noise, one random occlusion patch. Everything draws from the
``numpy.random.Generator`` passed in (seeded per sample and epoch by the dataset).

Optionally the five points are replaced by a gross MTCNN failure (``FivePointFailures``): the
face's true five points plus the error MTCNN made on another training face of similar |yaw|,
so the network learns crops aligned by bad points, as it gets them at inference on profiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facerecon.config import AugmentConfig
from facerecon.data.readers import FLIP_PERMUTATION_68

__all__ = ["AugmentSettings", "FivePointFailures", "Transform2D", "draw_transform", "apply_geometry", "warp_image", "warp_matrix", "photometric"]

#: The five points after a flip: left and right eyes swap, and the mouth corners.
FLIP_PERMUTATION_5 = (1, 0, 2, 4, 3)

#: The ranges and probabilities: the configuration's ``[train.augment]`` table itself (defined,
#: documented and range-checked once, in ``facerecon.config.AugmentConfig``).
AugmentSettings = AugmentConfig


@dataclass
class Transform2D:
    """``p' = scale * R(angle) @ diag(-1 if flip else 1, 1) @ p + shift`` in crop units."""

    flip: bool
    angle: float  # radians
    scale: float
    shift: np.ndarray  # (2,)

    @property
    def linear(self) -> np.ndarray:
        """(2, 2) the linear part."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.array([[c, -s], [s, c]])
        f = np.diag([-1.0 if self.flip else 1.0, 1.0])
        return self.scale * rot @ f

    @property
    def rotation(self) -> np.ndarray:
        """(2, 2) rotation with the flip (for normals)."""
        return self.linear / self.scale


def draw_transform(rng: np.random.Generator, settings: AugmentSettings) -> Transform2D:
    """A random transform within ``settings``."""
    flip = bool(rng.random() < settings.flip)
    angle = math.radians(float(rng.uniform(-settings.rotation_deg, settings.rotation_deg)))
    scale = float(math.exp(rng.uniform(math.log(1.0 - settings.scale), math.log(1.0 + settings.scale))))
    shift = rng.uniform(-settings.shift, settings.shift, size=2)
    return Transform2D(flip, angle, scale, shift)


def apply_geometry(tf: Transform2D, points: np.ndarray) -> np.ndarray:
    """(N, 2|3) crop units -> transformed (z scaled), float32."""
    p = np.asarray(points, dtype=np.float64)
    out = np.empty_like(p)
    out[:, :2] = p[:, :2] @ tf.linear.T + tf.shift
    if p.shape[1] > 2:
        out[:, 2] = tf.scale * p[:, 2]
    return out.astype(np.float32)


def apply_normals(tf: Transform2D, normals: np.ndarray) -> np.ndarray:
    """(N, 3) unit normals rotated (and flipped) like the surface."""
    n = np.asarray(normals, dtype=np.float64)
    out = n.copy()
    out[:, :2] = n[:, :2] @ tf.rotation.T
    return out.astype(np.float32)


def flip_landmarks(landmarks: np.ndarray, five: bool = False) -> np.ndarray:
    """Re-order left/right after a flip: 68 landmarks (``FLIP_PERMUTATION_68``) or five points."""
    perm = FLIP_PERMUTATION_5 if five else FLIP_PERMUTATION_68
    return np.asarray(landmarks)[list(perm)]


def warp_image(tf: Transform2D, image: np.ndarray) -> np.ndarray:
    """Warp an (S, S, 3) uint8 crop by ``tf`` (crop frame: pixel centre u at x = (u + 0.5) 2/S - 1)."""
    import cv2

    size = image.shape[0]
    return cv2.warpAffine(image, warp_matrix(tf, size), (size, image.shape[1]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_matrix(tf: Transform2D, size: int) -> np.ndarray:
    """``(2, 3)`` the pixel-space affine map of ``tf`` on an ``size`` px square (``cv2.warpAffine``'s
    source-to-destination matrix; pixel centre u at x = (u + 0.5) 2/size - 1): the same transform
    on an image of any size."""
    alpha, beta = 2.0 / size, 1.0 / size - 1.0
    m = tf.linear
    offset = (m @ np.array([beta, beta]) + tf.shift - beta) / alpha
    return np.concatenate([m, offset[:, None]], axis=1)


def photometric(image: np.ndarray, rng: np.random.Generator, settings: AugmentSettings) -> np.ndarray:
    """Colour jitter, grey-scale, blur, noise and an occlusion patch on an (S, S, 3) uint8 image."""
    import cv2

    img: np.ndarray = image.astype(np.float32)
    if rng.random() < settings.colour:
        img = img * rng.uniform(0.6, 1.4)  # brightness
        mean = img.mean()
        img = (img - mean) * rng.uniform(0.6, 1.4) + mean  # contrast
        grey = img.mean(axis=2, keepdims=True)
        img = (img - grey) * rng.uniform(0.6, 1.4) + grey  # saturation
    if rng.random() < settings.grey:
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    if rng.random() < settings.blur:
        sigma = float(rng.uniform(0.5, 1.8))
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if rng.random() < settings.noise:
        img = img + rng.normal(0.0, rng.uniform(2.0, 10.0), size=img.shape).astype(np.float32)
    if rng.random() < settings.occlusion:
        size = img.shape[0]
        h, w = (int(size * rng.uniform(0.15, 0.45)) for _ in range(2))
        y0, x0 = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        if rng.random() < 0.5:
            img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, size=3)
        else:
            img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


#: A training face's MTCNN five points count as a gross failure past this error (mean point
#: distance / sqrt(w h) of the 68-landmark box); ~8 % of AFLW2000-3D's, most of them profiles.
OUTLIER_MIN_ERROR = 0.1
#: The donor of a transplanted failure is one of this many pool faces nearest in |yaw|.
OUTLIER_NEIGHBOURS = 10


@dataclass
class FivePointFailures:
    """MTCNN's gross five-point failures on a set of training faces, to transplant onto others.

    ``errors`` (K, 5, 2): detected minus true five points over the face's landmark-box size;
    ``yaw`` (K,) signed degrees of each donor face.
    """

    errors: np.ndarray
    yaw: np.ndarray

    @classmethod
    def from_samples(cls, landmarks: np.ndarray, five: np.ndarray, yaw: np.ndarray, min_error: float = OUTLIER_MIN_ERROR) -> "FivePointFailures":
        """The failures among (N, 68, >=2) true landmarks, (N, 5, 2) detected five points (NaN
        rows: no detection, never a donor) and (N,) signed yaws."""
        from facerecon.metrics import landmark_box_size
        from facerecon.model.face_prior import five_points_from_68

        truth = five_points_from_68(np.asarray(landmarks, dtype=np.float64)[..., :2])
        size = np.maximum(landmark_box_size(landmarks), 1e-12)
        err = (np.asarray(five, dtype=np.float64) - truth) / size[:, None, None]
        ok = np.isfinite(err).all(axis=(1, 2))
        mean_err = np.where(ok, np.linalg.norm(np.nan_to_num(err), axis=-1).mean(-1), -1.0)
        keep = mean_err > min_error
        return cls(err[keep].astype(np.float32), np.asarray(yaw, dtype=np.float64)[keep])

    def __len__(self) -> int:
        return int(self.errors.shape[0])

    def transplant(self, landmarks: np.ndarray, yaw: float, rng: np.random.Generator) -> np.ndarray:
        """Five points for a face with true ``landmarks`` (68, >=2) and signed ``yaw``: its true
        five points plus a donor's error (one of the ``OUTLIER_NEIGHBOURS`` donors nearest in
        |yaw|, mirrored when the signs differ), scaled by this face's size. (5, 2) float32."""
        from facerecon.metrics import landmark_box_size
        from facerecon.model.face_prior import five_points_from_68

        order = np.argsort(np.abs(np.abs(self.yaw) - abs(float(yaw))), kind="stable")[:OUTLIER_NEIGHBOURS]
        donor = int(order[rng.integers(0, order.shape[0])])
        err = self.errors[donor].astype(np.float64)
        if np.sign(self.yaw[donor]) * np.sign(yaw) < 0:  # a profile to the other side: mirror the failure
            err = err[list(FLIP_PERMUTATION_5)] * np.array([-1.0, 1.0])
        truth = five_points_from_68(np.asarray(landmarks, dtype=np.float64)[:, :2])
        return (truth + err * float(landmark_box_size(landmarks))).astype(np.float32)
