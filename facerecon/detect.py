"""Face detection (MTCNN from facenet-pytorch) and the crop policy of docs/conventions.md.

The pipeline for one photo:

1. :class:`FaceDetector` runs MTCNN (:mod:`facerecon.mtcnn`) on a copy downscaled so that its
   longer side is at most ``max_detect_side`` px and maps the boxes and landmarks back to the
   original's image px; for the most confident face only, it searches faces of at least
   ``min_face_fraction`` of the shorter side first, with a second chance before the fallback.
2. :func:`square_box` turns a detection ``(x0, y0, x1, y1)`` into the square crop box
   ``(x0, y0, side)``: enlarged ``CROP_ENLARGE`` = 1.1x about its centre, ``side = 1.1 max(w, h)``
   (:func:`landmark_box`: the same policy on the bounding box of ground-truth landmarks).
3. :func:`crop_image` resamples the box of the **original** image to ``CROP_SIZE`` x
   ``CROP_SIZE`` px, black outside the image, antialiased when the box is much larger than the crop.

Coordinates are continuous image px (pixel centres at +0.5). MTCNN's outputs are taken as image px
as they are (its boxes are only accurate to a few pixels, far more than the half-pixel question).
The crop maps image px ``(x, y)`` to crop px ``((x - x0) s, (y - y0) s)`` with ``s = size / side``
(:func:`facerecon.frames.image_to_crop_px`); the normalised crop frame of the network is
``2 * crop_px / size - 1`` (:func:`facerecon.frames.image_to_crop`, inverse
:func:`facerecon.frames.crop_to_image_3d`).

When no face reaches ``min_probability`` :meth:`FaceDetector.crop` returns a *fallback* crop: a box
given relative to the image (``(cx / W, cy / H, side / min(W, H))``, e.g. the dataset mean from
:func:`mean_relative_box` or a :class:`RelativeBoxMean`), by default :data:`DEFAULT_FALLBACK_BOX`,
the largest centred square.
"""

from __future__ import annotations

import contextlib
import math
import threading
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
            box=tuple(float(v) for v in data["box"]),  # type: ignore[arg-type]
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


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
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

    def add(self, boxes: Sequence[float] | np.ndarray, image_sizes: Sequence[int] | np.ndarray) -> None:
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


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


class FaceDetector:
    """MTCNN (:mod:`facerecon.mtcnn`, facenet-pytorch's weights) plus the crop policy.

    Two ways to search:

    * :meth:`detect` (and :meth:`detect_batch`, :meth:`crop` with ``all_faces=True``): every face
      of at least ``min_face_size`` px of the detection copy, exactly the cascade facenet-pytorch
      runs (boxes within IoU 0.9 of it, tested).
    * :meth:`crop` for the most confident face (``facerecon predict``'s default): the pyramid
      starts at faces of ``min_face_fraction`` of the image's shorter side, so the fine levels
      (the costly ones) are skipped; the levels kept are the same as the full search's, so a face
      found there has the same box. When that finds nothing, a *second chance* before the
      average-crop fallback: the full search, then lower stage thresholds, then copies rotated by
      +-30 and +-45 degrees (strongly rolled faces), each with the same ``min_probability``.

    Args:
        device: torch device for MTCNN ("cpu", "cuda", "cuda:1", ...).
        min_probability: faces below this MTCNN probability are ignored. 0.9 separates the
            false positives seen on real photos (p 0.86-0.87) from faces (> 0.99).
        max_detect_side: detection runs on a copy whose longer side is at most this many px
            (area-downscaled); boxes and landmarks are mapped back to the original.
        thresholds: MTCNN's three stage thresholds (default ``[0.6, 0.7, 0.7]``).
        min_face_size: MTCNN's smallest face, px of the detection copy (full search).
        min_face_fraction: the smallest face of the fast search, as a fraction of the detection
            copy's shorter side (never below ``min_face_size``); 0 makes it the full search.
        second_chance: try the full search, lower thresholds and rotated copies before giving up.
    """

    #: The stage thresholds of the second chance.
    LOW_THRESHOLDS = (0.5, 0.6, 0.6)
    #: The roll angles (degrees) of the rotated copies of the second chance.
    ROTATIONS = (-30.0, 30.0, -45.0, 45.0)

    def __init__(
        self,
        device: str = "cpu",
        min_probability: float = 0.9,
        max_detect_side: int = 1024,
        thresholds: Sequence[float] | None = None,
        min_face_size: int = 20,
        min_face_fraction: float = 0.1,
        second_chance: bool = True,
    ) -> None:
        if not 0.0 <= float(min_probability) <= 1.0:
            raise InputError(f"min_probability must be in [0, 1], got {min_probability}")
        if int(max_detect_side) < 32:
            raise InputError(f"max_detect_side must be >= 32 px, got {max_detect_side}")
        if thresholds is not None and len(thresholds) != 3:
            raise InputError(f"MTCNN thresholds are three numbers, got {list(thresholds)}")
        if not 0.0 <= float(min_face_fraction) < 1.0:
            raise InputError(f"min_face_fraction must be in [0, 1), got {min_face_fraction}")
        if int(min_face_size) < 12:
            raise InputError(f"min_face_size must be >= 12 px (MTCNN's cell), got {min_face_size}")
        self.device = str(device)
        self.min_probability = float(min_probability)
        self.max_detect_side = int(max_detect_side)
        self.thresholds = [0.6, 0.7, 0.7] if thresholds is None else [float(t) for t in thresholds]
        self.min_face_size = int(min_face_size)
        self.min_face_fraction = float(min_face_fraction)
        self.second_chance = bool(second_chance)
        self._nets: Any = None
        self._lock = threading.Lock()
        self._warming: threading.Thread | None = None
        #: How the last :meth:`crop` found its face: "fast", "full", "low-thresholds",
        #: "rotated", "none" (fallback) or "all" (all faces).
        self.last_search = ""

    @property
    def nets(self) -> Any:
        """The three MTCNN networks (:func:`facerecon.mtcnn.load_nets`), loaded on first use."""
        if self._nets is None:
            with self._lock:
                if self._nets is None:
                    self._nets = self._load_nets()
        return self._nets

    def _load_nets(self) -> Any:
        import cv2  # noqa: F401  (detection needs it: imported with the weights, not on the first photo)
        import torch

        from facerecon.mtcnn import load_nets

        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"invalid device {self.device!r} ({exc})") from None
        try:
            return load_nets(device)
        except (RuntimeError, AssertionError) as exc:  # e.g. "cuda" without a usable GPU
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise InputError(f"cannot run face detection on device {self.device!r} ({reason})") from None

    def warm_up(self, image_size: tuple[int, int] | None = None) -> None:
        """Start, on a background thread, the one-off work of the first detection: loading the
        weights, the first call of each kernel (oneDNN's convolution set-up, PyTorch's and
        OpenCV's first calls), and with ``image_size`` ``(width, height)`` P-Net's convolutions
        for that size and the fast search's pyramid plan. Meant for while the caller does
        something else that leaves a core idle (``facerecon predict`` loads the network then); the
        next detection waits for it to finish. Results do not depend on it."""
        if self._warming is not None:
            return
        nets = self.nets
        self._warming = threading.Thread(target=self._warm, args=(nets, image_size), name="facerecon-detector-warm-up", daemon=True)
        self._warming.start()

    def _warm(self, nets: Any, image_size: tuple[int, int] | None) -> None:
        import cv2
        import torch

        from facerecon.mtcnn import pyramid_plan

        with contextlib.suppress(Exception), torch.inference_mode():  # a warm-up: never an error of its own
            cv2.integral(np.zeros((4, 4, 3), np.uint8), sdepth=cv2.CV_32S)
            plan = None
            if image_size is not None:
                width, height = self._detect_size(*image_size)
                plan = pyramid_plan(height, width, self._fast_min_face(width, height), base_min_face=self.min_face_size)

            def zeros(n: int, h: int, w: int) -> torch.Tensor:
                return torch.zeros((n, h, w, 3), device=nets.device).permute(0, 3, 1, 2)  # channels-last

            if plan is None:
                nets.pnet(zeros(1, 12, 12))
            else:
                nets.pnet(zeros(1, *plan.mosaic.shape), plan.mosaic.outside.to(nets.device))
            nets.rnet(zeros(1, 24, 24))
            nets.onet(zeros(1, 48, 48))

    def finish_warm_up(self) -> None:
        """Wait for :meth:`warm_up` to finish (at once when none runs)."""
        warming = self._warming
        if warming is not None:
            warming.join()

    # ---- detection ---------------------------------------------------------------------------

    def detect(self, image: np.ndarray) -> list[FaceCrop]:
        """All faces with probability >= ``min_probability``, most confident first (full search).

        Args:
            image: ``(H, W, 3)`` uint8 RGB.

        Returns:
            One :class:`FaceCrop` per face (``fallback=False``), coordinates in image px of
            ``image``; empty when there is none.
        """
        _check_image(image)
        self.finish_warm_up()
        small, sx, sy = self._downscale(image)
        return self._to_crops(self._search(small, self.min_face_size, self.thresholds), sx, sy)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[FaceCrop]]:
        """:meth:`detect` for several images, in order."""
        for image in images:
            _check_image(image)
        return [self.detect(image) for image in images]

    def detect_best(self, image: np.ndarray) -> list[FaceCrop]:
        """The faces for :meth:`crop`'s most-confident-face policy: the fast search, then the
        second chance (see the class docstring). Most confident first; empty when none."""
        _check_image(image)
        self.finish_warm_up()
        small, sx, sy = self._downscale(image)
        min_face = self._fast_min_face(small.shape[1], small.shape[0])
        faces = self._to_crops(self._search(small, min_face, self.thresholds), sx, sy)
        if faces:
            self.last_search = "fast"
            return faces
        if not self.second_chance:
            self.last_search = "none"
            return []
        if min_face > self.min_face_size:
            faces = self._to_crops(self._search(small, self.min_face_size, self.thresholds), sx, sy)
            if faces:
                self.last_search = "full"
                return faces
        return self._last_chances(small, min_face, sx, sy)

    def detect_second_chance(self, image: np.ndarray) -> list[FaceCrop]:
        """What :meth:`detect_best` tries after the full search finds nothing: lower stage
        thresholds, then the rotated copies (``last_search`` says which found the faces, "none"
        when neither did). ``prepare`` calls it for an image whose full search found no face, so
        the cache's crops come from the same policy as ``predict``'s."""
        _check_image(image)
        self.finish_warm_up()
        small, sx, sy = self._downscale(image)
        min_face = self._fast_min_face(small.shape[1], small.shape[0])
        return self._last_chances(small, min_face, sx, sy)

    def _last_chances(self, small: np.ndarray, min_face: float, sx: float, sy: float) -> list[FaceCrop]:
        low = [min(a, b) for a, b in zip(self.thresholds, self.LOW_THRESHOLDS)]
        if low != list(self.thresholds):
            faces = self._to_crops(self._search(small, self.min_face_size, low), sx, sy)
            if faces:
                self.last_search = "low-thresholds"
                return faces
        for angle in self.ROTATIONS:
            faces = self._rotated_search(small, angle, min_face, sx, sy)
            if faces:
                self.last_search = "rotated"
                return faces
        self.last_search = "none"
        return []

    def crop(
        self,
        image: np.ndarray,
        all_faces: bool = False,
        fallback_box: Sequence[float] | None = None,
    ) -> list[FaceCrop]:
        """The crop boxes for one photo under the crop policy.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            all_faces: keep every face (most confident first; the full search) instead of only
                the most confident (the fast search and its second chance, :meth:`detect_best`).
            fallback_box: relative ``(cx / W, cy / H, side / min(W, H))`` used when no face is
                found (e.g. :func:`mean_relative_box` of a dataset); default
                :data:`DEFAULT_FALLBACK_BOX`, the largest centred square.

        Returns:
            At least one :class:`FaceCrop`; a single ``fallback=True`` one when no face is found.
        """
        if all_faces:
            faces = self.detect(image)
            self.last_search = "all" if faces else "none"
        else:
            faces = self.detect_best(image)
        return self.select(faces, image.shape[1], image.shape[0], all_faces, fallback_box)

    def track(self, image: np.ndarray, previous: FaceCrop) -> FaceCrop | None:
        """The face of the previous video frame, found again without a search.

        MTCNN's last stage (O-Net) alone on the previous frame's detection box: when it still
        scores the region a face (probability >= ``min_probability``) and its regressed box has
        not drifted off the previous one (IoU >= 0.5), that is this frame's face, with its box and
        five landmarks exactly as the full cascade's last stage gives them. None otherwise (the
        caller then runs :meth:`crop`). About 1 ms instead of a pyramid search.
        """
        from facerecon.mtcnn import refine

        _check_image(image)
        self.finish_warm_up()
        if previous.fallback or previous.detection is None:
            return None
        small, sx, sy = self._downscale(image)
        det = np.asarray(previous.detection, dtype=np.float32).reshape(2, 2) * np.array([sx, sy], np.float32)
        found = refine(small, self.nets, det.reshape(1, 4))
        faces = self._to_crops(found, sx, sy)
        if not faces:
            return None
        face = faces[0]
        if box_iou(face.detection, previous.detection) < 0.5:
            return None
        return face

    @staticmethod
    def select(
        faces: list[FaceCrop],
        width: int,
        height: int,
        all_faces: bool = False,
        fallback_box: Sequence[float] | None = None,
    ) -> list[FaceCrop]:
        """Apply the crop policy to detections already made (see :meth:`crop`)."""
        if faces:
            return list(faces) if all_faces else [faces[0]]
        rel = DEFAULT_FALLBACK_BOX if fallback_box is None else tuple(fallback_box)
        box = relative_to_box(rel, (width, height))
        return [FaceCrop(box=box, probability=float("nan"), landmarks5=None, detection=None, fallback=True)]

    # ---- internals ---------------------------------------------------------------------------

    def _detect_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of the detection copy of an image of this size."""
        longer = max(height, width)
        if longer <= self.max_detect_side:
            return width, height
        s = self.max_detect_side / longer
        return max(1, round(width * s)), max(1, round(height * s))

    def _fast_min_face(self, width: int, height: int) -> float:
        """The fast search's smallest face, px of a detection copy of this size."""
        return max(float(self.min_face_size), self.min_face_fraction * min(width, height))

    def _downscale(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        """A copy with longer side <= max_detect_side, and the x/y scale factors small/original."""
        import cv2

        h, w = image.shape[:2]
        nw, nh = self._detect_size(w, h)
        if (nw, nh) == (w, h):
            return image, 1.0, 1.0
        small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        return small, nw / w, nh / h

    def _search(self, small: np.ndarray, min_face: float, thresholds: Sequence[float]) -> Any:
        """MTCNN on the detection copy (:func:`facerecon.mtcnn.detect_faces`)."""
        from facerecon.mtcnn import detect_faces

        if min(small.shape[:2]) < self.min_face_size:  # MTCNN's pyramid would be empty
            from facerecon.mtcnn import Detections

            return Detections.empty()
        return detect_faces(small, self.nets, min_face=min_face, thresholds=thresholds, base_min_face=self.min_face_size)

    def _rotated_search(self, small: np.ndarray, angle: float, min_face: float, sx: float, sy: float) -> list[FaceCrop]:
        """Search a copy rotated by ``angle`` degrees (counter-clockwise on screen, canvas grown
        to hold it); boxes and landmarks are rotated back (a box keeps its size about its
        rotated-back centre)."""
        import cv2

        h, w = small.shape[:2]
        rot = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
        c, s = abs(rot[0, 0]), abs(rot[0, 1])
        nw, nh = int(math.ceil(h * s + w * c)), int(math.ceil(h * c + w * s))
        rot[0, 2] += nw / 2.0 - w / 2.0
        rot[1, 2] += nh / 2.0 - h / 2.0
        # cv2's matrices act on pixel indices; ours are continuous px (centres at +0.5)
        shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
        unshift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
        forward = shift @ np.vstack([rot, [0.0, 0.0, 1.0]]) @ unshift  # continuous px -> rotated
        inverse = np.linalg.inv(forward)[:2]
        rotated = cv2.warpAffine(small, rot, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        found = self._search(rotated, min_face, self.thresholds)
        if len(found) == 0:
            return []
        boxes = found.boxes.astype(np.float64)
        centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
        half = np.stack([(boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2], axis=1)
        back = centres @ inverse[:, :2].T + inverse[:, 2]
        found.boxes = np.concatenate([back - half, back + half], axis=1).astype(np.float32)
        found.points = (found.points.astype(np.float64) @ inverse[:, :2].T + inverse[:, 2]).astype(np.float32)
        return self._to_crops(found, sx, sy)

    def _to_crops(self, found: Any, sx: float, sy: float) -> list[FaceCrop]:
        """Filter by probability, most confident first, map back to the original's image px."""
        if len(found) == 0:
            return []
        boxes = np.asarray(found.boxes, dtype=np.float32).reshape(-1, 4)
        probs = np.asarray(found.probs, dtype=np.float32).reshape(-1)
        points = np.asarray(found.points, dtype=np.float32).reshape(-1, 5, 2)
        scale = np.array([sx, sy], dtype=np.float32)
        order = np.argsort(-probs, kind="stable")
        crops = []
        for i in order:
            p = float(probs[i])
            if not p >= self.min_probability:
                continue
            det = (boxes[i].reshape(2, 2) / scale).reshape(4).astype(np.float32)
            lm = (points[i] / scale).astype(np.float32)
            if not (det[2] > det[0] and det[3] > det[1]):
                continue
            crops.append(FaceCrop(box=square_box(det), probability=p, landmarks5=lm, detection=det, fallback=False))
        return crops


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InputError(f"face detection expects an (H, W, 3) uint8 RGB image, got {shape} {dtype}")
    if image.shape[0] < 12 or image.shape[1] < 12:
        raise InputError(f"image of {image.shape[1]}x{image.shape[0]} px is too small for face detection")
