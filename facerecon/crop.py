"""The crop policy of docs/conventions.md: where a face's square box lies and how it is cut.

1. :func:`square_box` turns a detection ``(x0, y0, x1, y1)`` into the square crop box
   ``(x0, y0, side)``: enlarged ``CROP_ENLARGE`` = 1.1x about its centre, ``side = 1.1 max(w, h)``
   (:func:`landmark_box`: the same policy on the bounding box of ground-truth landmarks).
2. :func:`crop_image` resamples the box of the **original** image to ``CROP_SIZE`` x
   ``CROP_SIZE`` px, black outside the image, antialiased when the box is much larger than the crop.
3. When no face is found, a *fallback* box given relative to the image
   (``(cx / W, cy / H, side / min(W, H))``, e.g. the dataset mean from :func:`mean_relative_box` or
   a :class:`RelativeBoxMean`), by default :data:`DEFAULT_FALLBACK_BOX`, the largest centred square.

Coordinates are continuous image px (pixel centres at +0.5). The crop maps image px ``(x, y)`` to
crop px ``((x - x0) s, (y - y0) s)`` with ``s = size / side``
(:func:`facerecon.frames.image_to_crop_px`); the normalised crop frame of the network is
``2 * crop_px / size - 1`` (:func:`facerecon.frames.image_to_crop`, inverse
:func:`facerecon.frames.crop_to_image_3d`). Finding the faces is :mod:`facerecon.detect`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from facerecon.errors import InputError

#: The detection box is enlarged by this factor about its centre (and made square).
CROP_ENLARGE = 1.1
#: Side of the network's input crop (and of the cache's crop images), px.
CROP_SIZE = 224
#: The fallback box when no face is found and no dataset mean is given, relative units
#: ``(cx / W, cy / H, side / min(W, H))``: the largest square centred in the image.
DEFAULT_FALLBACK_BOX: tuple[float, float, float] = (0.5, 0.5, 1.0)
#: Above this ratio box side / crop size, crop_image first area-averages by an integer factor.
_ANTIALIAS_RATIO = 2.0


@dataclass
class FaceCrop:
    """One face (or the fallback) of one photo, all coordinates in image px of the original.

    Attributes:
        box: ``(x0, y0, side)`` square crop box, image px; may extend outside the image.
        probability: MTCNN face probability in [0, 1]; ``nan`` for the fallback.
        landmarks5: ``(5, 2)`` float32 image px (left eye, right eye, nose, left mouth corner,
            right mouth corner, as MTCNN orders them; "left" = smaller x in the image), or None.
        detection: ``(4,)`` float32 raw MTCNN box ``x0, y0, x1, y1`` image px, or None.
        fallback: True when no face was found and the fallback box was used.
    """

    box: tuple[float, float, float]
    probability: float
    landmarks5: np.ndarray | None
    detection: np.ndarray | None
    fallback: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: floats and lists; a nan probability becomes None."""
        prob = None if not math.isfinite(self.probability) else float(self.probability)
        return {
            "box": [float(v) for v in self.box],
            "probability": prob,
            "landmarks5": None if self.landmarks5 is None else np.asarray(self.landmarks5, dtype=float).tolist(),
            "detection": None if self.detection is None else np.asarray(self.detection, dtype=float).tolist(),
            "fallback": bool(self.fallback),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FaceCrop":
        """Inverse of :meth:`to_dict`."""
        lm = data.get("landmarks5")
        det = data.get("detection")
        prob = data.get("probability")
        return cls(
            box=tuple(float(v) for v in data["box"]),  # type: ignore[arg-type]  # (x0, y0, side): to_dict wrote three numbers
            probability=float("nan") if prob is None else float(prob),
            landmarks5=None if lm is None else np.asarray(lm, dtype=np.float32).reshape(5, 2),
            detection=None if det is None else np.asarray(det, dtype=np.float32).reshape(4),
            fallback=bool(data.get("fallback", False)),
        )


# --------------------------------------------------------------------------------------------
# Box geometry
# --------------------------------------------------------------------------------------------


def square_box(detection_xyxy: Sequence[float] | np.ndarray, enlarge: float = CROP_ENLARGE) -> tuple[float, float, float]:
    """The square crop box of a detection.

    Args:
        detection_xyxy: ``(4,)`` box ``x0, y0, x1, y1`` in image px.
        enlarge: factor about the box centre.

    Returns:
        ``(x0, y0, side)`` image px with ``side = enlarge * max(w, h)``, same centre as the box.
    """
    x0, y0, x1, y1 = (float(v) for v in np.asarray(detection_xyxy, dtype=np.float64).reshape(4))
    w, h = x1 - x0, y1 - y0
    if not (w > 0 and h > 0):
        raise InputError(f"square_box: degenerate detection box {x0, y0, x1, y1}")
    return _enlarged_square(x0, y0, x1, y1, enlarge)


def landmark_box(landmarks_xy: np.ndarray, enlarge: float = CROP_ENLARGE) -> tuple[float, float, float]:
    """The crop box of ``--crop-from landmarks``: :func:`square_box`'s policy applied to the
    landmarks' bounding box (:func:`bounding_box`).

    Args:
        landmarks_xy: ``(L, >=2)`` image px.
        enlarge: factor about the box centre.

    Returns:
        ``(x0, y0, side)`` image px, ``side = enlarge * max(w, h)``.

    Raises:
        InputError: the landmarks span no area in either direction (or are not finite).
    """
    box = _enlarged_square(*bounding_box(landmarks_xy), enlarge)
    if not box[2] > 0:
        raise InputError("cannot build a crop box from degenerate landmarks")
    return box


def bounding_box(points_xy: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)``: the axis-aligned bounding box of ``(L, >=2)`` points (image px)."""
    xy = np.asarray(points_xy, dtype=np.float64)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def _enlarged_square(x0: float, y0: float, x1: float, y1: float, enlarge: float) -> tuple[float, float, float]:
    """The crop policy on a box ``x0, y0, x1, y1``: ``side = enlarge * max(w, h)``, same centre."""
    side = enlarge * max(x1 - x0, y1 - y0)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    return (cx - 0.5 * side, cy - 0.5 * side, side)


def box_iou(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """IoU of two ``x0, y0, x1, y1`` boxes (0 when the union is empty)."""
    ix = max(0.0, min(float(a[2]), float(b[2])) - max(float(a[0]), float(b[0])))
    iy = max(0.0, min(float(a[3]), float(b[3])) - max(float(a[1]), float(b[1])))
    inter = ix * iy
    union = (float(a[2]) - float(a[0])) * (float(a[3]) - float(a[1])) + (float(b[2]) - float(b[0])) * (float(b[3]) - float(b[1])) - inter
    return inter / union if union > 0 else 0.0


def relative_to_box(relative: Sequence[float], image_size: tuple[int, int]) -> tuple[float, float, float]:
    """A relative box ``(cx / W, cy / H, side / min(W, H))`` -> ``(x0, y0, side)`` image px.

    Args:
        relative: ``(cx_rel, cy_rel, side_rel)``.
        image_size: ``(W, H)`` px.
    """
    cx_r, cy_r, side_r = (float(v) for v in relative)
    if not side_r > 0:
        raise InputError(f"fallback box side must be > 0, got {side_r}")
    w, h = image_size
    side = side_r * min(w, h)
    return (cx_r * w - 0.5 * side, cy_r * h - 0.5 * side, side)


def box_to_relative(boxes: Sequence[float] | np.ndarray, image_sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    """``(x0, y0, side)`` image px -> ``(cx / W, cy / H, side / min(W, H))``; inverse of :func:`relative_to_box`.

    Args:
        boxes: ``(3,)`` or ``(K, 3)`` boxes, image px.
        image_sizes: ``(2,)`` or ``(K, 2)`` ``(W, H)`` px of each box's image.

    Returns:
        ``(3,)`` or ``(K, 3)`` float64 (the boxes' shape).
    """
    b = np.asarray(boxes, dtype=np.float64)
    sizes = np.asarray(image_sizes, dtype=np.float64)
    half = b[..., 2] / 2
    return np.stack([(b[..., 0] + half) / sizes[..., 0], (b[..., 1] + half) / sizes[..., 1], b[..., 2] / sizes.min(axis=-1)], axis=-1)


class RelativeBoxMean:
    """The running mean of detected crop boxes relative to their image, for the fallback box.

    :meth:`value` is the mean of everything :meth:`add`-ed so far (in any grouping the sum is
    taken in the order added), or :data:`DEFAULT_FALLBACK_BOX` before the first box.
    """

    def __init__(self) -> None:
        self._sum = np.zeros(3)
        self.count = 0

    def add(self, boxes: Sequence[Sequence[float]] | np.ndarray, image_sizes: Sequence[Sequence[int]] | np.ndarray) -> None:
        """Add ``(K, 3)`` boxes ``(x0, y0, side)`` image px of images of ``(K, 2)`` sizes ``(W, H)``."""
        rel = box_to_relative(np.asarray(boxes, dtype=np.float64).reshape(-1, 3), np.asarray(image_sizes).reshape(-1, 2))
        if len(rel):
            self._sum = self._sum + rel.sum(axis=0)
            self.count += len(rel)

    def value(self) -> tuple[float, float, float]:
        """``(cx / W, cy / H, side / min(W, H))``: the mean, or :data:`DEFAULT_FALLBACK_BOX` when empty."""
        if self.count == 0:
            return DEFAULT_FALLBACK_BOX
        m = self._sum / self.count
        return (float(m[0]), float(m[1]), float(m[2]))


def mean_relative_box(crops: Sequence[FaceCrop], image_sizes: Sequence[tuple[int, int]]) -> tuple[float, float, float]:
    """The dataset-average crop box relative to image size, for the fallback.

    Args:
        crops: one crop per image (fallback crops are ignored).
        image_sizes: ``(W, H)`` px of each crop's image, same order.

    Returns:
        ``(cx / W, cy / H, side / min(W, H))`` averaged over the detected faces, or
        :data:`DEFAULT_FALLBACK_BOX` when there are none.
    """
    if len(crops) != len(image_sizes):
        raise InputError(f"mean_relative_box: {len(crops)} crops but {len(image_sizes)} image sizes")
    mean = RelativeBoxMean()
    found = [(c.box, s) for c, s in zip(crops, image_sizes) if not c.fallback]
    if found:
        mean.add([b for b, _ in found], [s for _, s in found])
    return mean.value()


def _check_box(box: Sequence[float]) -> tuple[float, float, float]:
    try:
        x0, y0, side = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"a crop box is (x0, y0, side), got {box!r}") from None
    if not (side > 0 and math.isfinite(side) and math.isfinite(x0) and math.isfinite(y0)):
        raise InputError(f"invalid crop box {box!r}: side must be > 0 and all values finite")
    return x0, y0, side


# --------------------------------------------------------------------------------------------
# Cropping
# --------------------------------------------------------------------------------------------


def crop_image(image: np.ndarray, box: Sequence[float], size: int = CROP_SIZE) -> np.ndarray:
    """Resample the square ``box`` of ``image`` to ``size`` x ``size`` px.

    Crop pixel ``(i, j)`` (centre at crop px ``(j + 0.5, i + 0.5)``) takes the bilinear sample of
    the image at image px ``(x0 + (j + 0.5) k, y0 + (i + 0.5) k)``, ``k = side / size``
    (cv2.warpAffine with the exact affine). Outside the image is black. When ``k >= 2`` the box
    region is first area-averaged by the integer factor ``floor(k)`` (on a grid aligned to the
    box, padding with black), so very large photos give clean, alias-free crops; only the box
    region is touched, so memory stays proportional to the box, not the photo.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (``(H, W)`` grayscale also works and stays 2-D).
        box: ``(x0, y0, side)`` image px.
        size: output side, px.

    Returns:
        ``(size, size, 3)`` uint8.
    """
    import cv2

    x0, y0, side = _check_box(box)
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.dtype != np.uint8:
        raise InputError(f"crop_image expects an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if size < 1:
        raise InputError(f"crop size must be >= 1, got {size}")
    k = side / size
    factor = int(math.floor(k)) if k >= _ANTIALIAS_RATIO else 1
    source, (ox, oy) = (image, (0.0, 0.0)) if factor == 1 else _area_reduce_region(image, x0, y0, side, factor)
    out_shape = (size, size) + image.shape[2:]
    if source is None:  # the box misses the image entirely
        return np.zeros(out_shape, dtype=np.uint8)
    # Box in the source's continuous coordinates (source px = (image px - origin) / factor).
    bx0, by0, kk = (x0 - ox) / factor, (y0 - oy) / factor, k / factor
    # cv2 works in pixel-index coordinates (centre of pixel 0 at 0): index = continuous - 0.5.
    inverse = np.array(
        [[kk, 0.0, bx0 + 0.5 * kk - 0.5], [0.0, kk, by0 + 0.5 * kk - 0.5]], dtype=np.float64
    )
    out = cv2.warpAffine(
        np.ascontiguousarray(source),
        inverse,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return out.reshape(out_shape)


def _area_reduce_region(
    image: np.ndarray, x0: float, y0: float, side: float, factor: int
) -> tuple[np.ndarray | None, tuple[float, float]]:
    """Area-average the part of ``image`` the box needs by an integer ``factor``.

    Returns the reduced region and its origin ``(ox, oy)`` in image px (integers, possibly
    negative): reduced pixel ``(i, j)`` averages image pixels ``[oy + i f, oy + (i+1) f) x
    [ox + j f, ox + (j+1) f)``, with black for those outside the image. The grid is aligned so
    that ``x0 - ox`` is a multiple of ``factor`` when ``x0`` is an integer. None when the box
    and the image do not overlap.
    """
    import cv2

    h, w = image.shape[:2]
    ox, nx = _reduced_span(x0, side, factor, w)
    oy, ny = _reduced_span(y0, side, factor, h)
    if nx == 0 or ny == 0:
        return None, (float(ox), float(oy))
    # The region [ox, ox + nx f) x [oy, oy + ny f), padded with black where outside the image.
    sx0, sx1 = max(ox, 0), min(ox + nx * factor, w)
    sy0, sy1 = max(oy, 0), min(oy + ny * factor, h)
    region = image[sy0:sy1, sx0:sx1]
    pads = (sy0 - oy, oy + ny * factor - sy1, sx0 - ox, ox + nx * factor - sx1)
    if any(pads):
        region = cv2.copyMakeBorder(region, *pads, borderType=cv2.BORDER_CONSTANT, value=0)
    reduced = cv2.resize(region, (nx, ny), interpolation=cv2.INTER_AREA)
    return reduced, (float(ox), float(oy))


def _reduced_span(start: float, side: float, factor: int, extent: int) -> tuple[int, int]:
    """Origin and cell count, along one axis, of the area-reduction grid for a box.

    Covers ``[start - factor, start + side + factor]`` intersected with ``[0, extent)`` (one extra
    cell each side for the bilinear taps), on a grid through ``floor(start)`` with spacing
    ``factor``. Returns ``(origin, n)``; ``n == 0`` when the box misses ``[0, extent)``.
    """
    base = math.floor(start)
    lo = max(start - factor, 0.0)
    hi = min(start + side + factor, float(extent))
    if hi <= lo:
        return base, 0
    origin = base - factor * math.ceil((base - lo) / factor)
    n = math.ceil((hi - origin) / factor)
    return origin, max(n, 0)


def landmarks5_crop_units(crops: Sequence[Any]) -> np.ndarray:
    """MTCNN's five points of each crop in crop units, ``(B, 5, 2)`` float32 (NaN rows: none),
    by ``facerecon.frames.image_to_crop``, in ``FaceCrop.landmarks5``'s order: left eye, right
    eye, nose, left and right mouth corner."""
    from facerecon.frames import image_to_crop

    out = np.full((len(crops), 5, 2), np.nan, np.float32)
    for b, crop in enumerate(crops):
        if crop.landmarks5 is not None:
            out[b] = image_to_crop(np.asarray(crop.landmarks5, dtype=np.float64).reshape(5, 2), crop.box)
    return out
