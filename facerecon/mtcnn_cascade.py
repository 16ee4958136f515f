"""The MTCNN cascade of Zhang et al. (2016) in numpy, whatever runs its three networks.

The networks are the caller's: :func:`detect_faces` and :func:`refine` take any object with

* ``run_pnet(canvas (1, H, W, 3) float32, outside (1, 1, H - 2, W - 2) bool)`` -> box
  regression ``(4, h, w)`` and face probability ``(h, w)`` (numpy);
* ``run_rnet(crops (N, 24, 24, 3) float32)`` -> ``(reg (N, 4), prob (N,))``;
* ``run_onet(crops (N, 48, 48, 3) float32)`` -> ``(reg (N, 4), points (N, 10), prob (N,))``,

inputs MTCNN-normalised and channels-last: PyTorch's networks (:class:`facerecon.mtcnn.MTCNNNets`)
or ONNX Runtime's (:class:`facerecon.runtime.session.OnnxMTCNN`). This module imports numpy and
OpenCV only, never torch; the cascade itself, its exactness against facenet-pytorch and the
mosaic of pyramid levels are described in :mod:`facerecon.mtcnn`.

Coordinates are image px of the array given (MTCNN's convention: a box is
``x0, y0, x1, y1``, landmarks are ``(5, 2)`` x, y: left eye, right eye, nose, left and right mouth
corner).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence, cast

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLDS", "DEFAULT_FACTOR", "Detections", "detect_faces", "refine", "nms", "pyramid_scales",
    "pyramid_plan", "PyramidPlan", "Mosaic", "pack_levels",
]

#: MTCNN's stage thresholds as facenet-pytorch uses them by default.
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
#: The scale step of the image pyramid (facenet-pytorch's default).
DEFAULT_FACTOR = 0.709

_LOCK = threading.Lock()


@dataclass
class Detections:
    """MTCNN's output for one image, most confident first.

    Attributes:
        boxes: ``(N, 4)`` float32 ``x0, y0, x1, y1`` image px.
        probs: ``(N,)`` float32 O-Net face probability.
        points: ``(N, 5, 2)`` float32 landmarks, image px.
    """

    boxes: np.ndarray
    probs: np.ndarray
    points: np.ndarray

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return int(self.probs.shape[0])


# ------------------------------------------------------------------------------------ helpers
def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union", groups: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; the indices kept, in the order they were kept.

    ``method="union"``: torchvision's ``nms`` (a stable descending sort of the scores; IoU in
    float32 with areas ``(x1 - x0) (y1 - y0)``; a box is dropped when its IoU with a kept one is
    > ``threshold``). ``"min"``: facenet-pytorch's ``nms_numpy(..., 'Min')`` (numpy's ``argsort``
    of the scores taken from the end, so ties fall as they do there; float32 overlap over the
    smaller area with the +1 pixel convention; dropped when > ``threshold``). Both follow their
    reference's arithmetic, ties included, so the boxes kept are the reference's.

    ``groups``: an integer label per box; a box then suppresses only boxes of its own group, so
    the boxes kept of each group are those of ``nms`` on that group alone (its boxes in the same
    relative order), in one call (torchvision's ``batched_nms``).
    """
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    boxes = np.asarray(boxes, dtype=np.float32)
    if method == "union" and len(boxes) > _NMS_LOOP_BELOW:
        return _nms_opencv(boxes, np.asarray(scores, dtype=np.float32), float(threshold), groups)
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    one = np.float32(1.0 if method == "min" else 0.0)
    area = (x1 - x0 + one) * (y1 - y0 + one)
    s = np.asarray(scores, dtype=np.float32)
    groups = None if groups is None else np.asarray(groups)
    order = np.argsort(s)[::-1] if method == "min" else np.argsort(-s, kind="stable")
    thr = np.float32(threshold)
    keep = []
    with np.errstate(divide="ignore", invalid="ignore"):  # once: entering it per box took a quarter of the loop
        while order.size:
            i = order[0]
            keep.append(i)
            rest = order[1:]
            w = np.maximum(np.float32(0.0), np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + one)
            h = np.maximum(np.float32(0.0), np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + one)
            inter = w * h
            if method == "min":
                overlap = inter / np.minimum(area[i], area[rest])
            else:
                overlap = inter / (area[i] + area[rest] - inter)
            survive = overlap <= thr
            if groups is not None:
                survive |= groups[rest] != groups[i]
            order = rest[survive]
    return np.asarray(keep, dtype=np.int64)


#: Below this many boxes the numpy loop of :func:`nms` is as fast as OpenCV's call.
_NMS_LOOP_BELOW = 32


def _nms_opencv(boxes: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray | None) -> np.ndarray:
    """:func:`nms`'s ``"union"`` method by OpenCV's compiled greedy NMS (``cv2.dnn.NMSBoxes``,
    ``NMSBoxesBatched`` for groups): the same stable descending sort of the scores, the same
    ``(x1 - x0) (y1 - y0)`` areas and ``> threshold`` rule, its IoU in double precision. The
    numpy loop takes a few hundred microseconds per kept box: 30 ms for the thousands of P-Net
    candidates of a 10-face photo, against 3 ms here (tests compare both with torchvision's)."""
    import cv2

    rects = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1).astype(np.float64)
    # OpenCV keeps only scores above a threshold >= 0: it gets each box's place in the stable
    # descending order instead (N, N - 1, ..., 1; exact in float32), which it sorts the same way
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores), np.float32)
    rank[order] = np.arange(len(scores), 0, -1, dtype=np.float32)
    # OpenCV's stubs name sequences; its bindings take these arrays as they are
    if groups is None:
        kept = cv2.dnn.NMSBoxes(rects, rank, 0.0, threshold)  # type: ignore[arg-type]
    else:
        kept = cv2.dnn.NMSBoxesBatched(rects, rank, np.asarray(groups).astype(np.int32), 0.0, threshold)  # type: ignore[arg-type]
    return np.asarray(kept, dtype=np.int64).reshape(-1)


def _square(boxes: np.ndarray) -> np.ndarray:
    """facenet-pytorch's ``rerec``: the square of side max(w, h) about each box's centre."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + 0.5 * w - 0.5 * side
    out[:, 1] = boxes[:, 1] + 0.5 * h - 0.5 * side
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """facenet-pytorch's ``bbreg`` (box sizes with the +1 pixel convention)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _integral(image: np.ndarray) -> np.ndarray:
    """``(H + 1, W + 1, 3)`` int32 summed-area table: ``S[y, x] = image[:y, :x].sum((0, 1))`` (exact)."""
    import cv2

    return cv2.integral(np.ascontiguousarray(image), sdepth=cv2.CV_32S).reshape(image.shape[0] + 1, image.shape[1] + 1, -1)


def _bins(start: np.ndarray, length: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Window bounds of ``adaptive_avg_pool`` (``interpolate(mode="area")``) along one axis.

    For spans ``[start, start + length)`` resampled to ``out`` cells: cell ``i`` averages
    ``[start + floor(i n / out), start + ceil((i + 1) n / out))`` (integer arithmetic, as torch).
    Returns ``(N, out)`` int64 lower and upper bounds.
    """
    i = np.arange(out, dtype=np.int64)
    n = length.astype(np.int64)[:, None]
    lo = (i[None] * n) // out
    hi = ((i[None] + 1) * n + out - 1) // out
    return start.astype(np.int64)[:, None] + lo, start.astype(np.int64)[:, None] + hi


def _area_resample(table: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: np.ndarray, w: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Regions ``[y0, y0 + h) x [x0, x0 + w)`` of the image behind ``table`` area-resampled.

    Exactly torch's ``interpolate(region, (out_h, out_w), mode="area")`` (= adaptive average
    pooling; the window sums are exact integers, the division is correctly rounded float32),
    for all regions at once, from the summed-area table. Returns ``(N, out_h, out_w, 3)`` float32.
    """
    r0, r1 = _bins(y0, h, out_h)
    c0, c1 = _bins(x0, w, out_w)
    # np.take on flat indices: numpy's fancy indexing with broadcast index arrays is ~10x slower
    if len(r0) == 1:  # one region (a pyramid level): whole rows first, then columns
        rows = np.take(table, r1[0], axis=0)  # (out_h, W + 1, 3)
        rows -= np.take(table, r0[0], axis=0)
        a = np.take(rows, c1[0], axis=1)
        a -= np.take(rows, c0[0], axis=1)
        count = (r1[0] - r0[0])[:, None] * (c1[0] - c0[0])[None, :]
        return (a.astype(np.float32) / count[..., None].astype(np.float32))[None]
    flat = table.reshape(-1, table.shape[2])
    stride = table.shape[1]
    r0, r1, c0, c1 = r0[:, :, None] * stride, r1[:, :, None] * stride, c0[:, None, :], c1[:, None, :]
    a = np.take(flat, r1 + c1, axis=0)  # (N, out_h, out_w, 3)
    a -= np.take(flat, r0 + c1, axis=0)
    a -= np.take(flat, r1 + c0, axis=0)
    a += np.take(flat, r0 + c0, axis=0)
    count = (r1 - r0) // stride * (c1 - c0)
    return a.astype(np.float32) / count[..., None].astype(np.float32)


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """float32 px -> MTCNN's input values: ``(x - 127.5) / 128``."""
    return (pixels - np.float32(127.5)) * np.float32(0.0078125)


def _crops(table: np.ndarray, boxes: np.ndarray, width: int, height: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` px network inputs of the candidate boxes (facenet-pytorch's ``pad`` + crop + resize).

    Returns ``(N', size, size, 3)`` float32 (NHWC) and the indices of the boxes with a
    non-empty region.
    """
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x = np.maximum(b[:, 0], 1)
    y = np.maximum(b[:, 1], 1)
    ex = np.minimum(b[:, 2], width)
    ey = np.minimum(b[:, 3], height)
    valid = np.flatnonzero((ey > y - 1) & (ex > x - 1))
    x, y, ex, ey = x[valid], y[valid], ex[valid], ey[valid]
    pixels = _area_resample(table, y - 1, x - 1, ey - y + 1, ex - x + 1, size, size)
    return _normalise(pixels), valid


# ------------------------------------------------------------------------------------ cascade
def pyramid_scales(height: int, width: int, min_face: float, factor: float = DEFAULT_FACTOR, base_min_face: float = 20.0) -> list[float]:
    """The pyramid's scales: facenet-pytorch's sequence for ``base_min_face``, less the finer levels.

    facenet-pytorch uses ``s_k = (12 / min_face_size) factor^k`` while ``min(H, W) s_k >= 12``.
    Here the sequence is the one of ``base_min_face`` (so the levels kept are exactly today's), and
    the levels with ``s_k > 12 / min_face`` (faces smaller than ``min_face`` px) are left out.
    """
    m = 12.0 / float(base_min_face)
    top = 12.0 / float(min_face) * (1.0 + 1e-9)
    scales = []
    minl = min(height, width) * m
    s = m
    while minl >= 12:
        if s <= top:
            scales.append(s)
        s *= factor
        minl *= factor
    return scales


@dataclass
class Mosaic:
    """Pyramid levels packed into one image, so P-Net runs once instead of once per level.

    Attributes:
        shape: ``(H, W)`` of the mosaic.
        offsets: ``(y, x)`` of each level's top-left pixel (even numbers: P-Net's 2x2 pooling
            cells of a level are then cells of the mosaic).
        outside: ``(1, 1, H - 2, W - 2)`` bool, True at the first convolution's outputs whose
            3x3 window is not inside one level (see :class:`PNet`).
    """

    shape: tuple[int, int]
    offsets: list[tuple[int, int]]
    outside: np.ndarray


def pack_levels(sizes: Sequence[tuple[int, int]]) -> Mosaic:
    """Shelf-pack ``(h, w)`` level sizes, largest first, into one mosaic (:class:`Mosaic`).

    Levels go left to right on shelves as wide as the two largest levels side by side (or the
    largest alone); each level's place is rounded up to even sizes. For MTCNN's pyramid (a
    0.709 step) the mosaic is ~1.3x the levels' total area.
    """
    even = [(h + h % 2, w + w % 2) for h, w in sizes]
    width = sum(w for _, w in even[:2])
    offsets, x, y, shelf = [], 0, 0, 0
    for h, w in even:
        if x + w > width:
            x, y, shelf = 0, y + shelf, 0
        offsets.append((y, x))
        x += w
        shelf = max(shelf, h)
    shape = (y + shelf, width)
    inside = np.zeros((1, 1, shape[0] - 2, shape[1] - 2), dtype=bool)
    for (oy, ox), (h, w) in zip(offsets, sizes):
        inside[..., oy : oy + h - 2, ox : ox + w - 2] = True
    return Mosaic(shape, offsets, ~inside)


@dataclass
class PyramidPlan:
    """Everything about P-Net's stage that depends only on the image size and the pyramid, made
    once per size (:func:`pyramid_plan`) and reused for every photo or video frame of that size.

    Attributes:
        scales: the pyramid's scales (:func:`pyramid_scales`), float32.
        mosaic: the levels packed into one image (:func:`pack_levels`).
        windows: per level, its area windows (:func:`_area_resample`'s): the bounds of its rows
            ``(r0, r1)`` and columns ``(c0, c1)`` in the summed-area table, and ``(h, w, 1)``
            float32 pixels in each window.
        cell_level: ``(h, w)`` int16 level of each P-Net output cell of the mosaic whose
            receptive field lies in that level; -1 elsewhere.
        cell_origin: ``(L, 2)`` the first cell (row, column) of each level.
    """

    scales: np.ndarray
    mosaic: Mosaic
    windows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    cell_level: np.ndarray
    cell_origin: np.ndarray

    def canvas(self, table: np.ndarray) -> np.ndarray:
        """``(1, H, W, 3)`` float32 the mosaic of the image behind ``table`` (its summed-area
        table, :func:`_integral`), MTCNN-normalised; 0 between the levels. Each level equals
        ``interpolate(image, size, mode="area")`` exactly (integer window sums, one float32
        division), as :func:`_area_resample` computes it: the table's rows at the level's row
        bounds first (whole rows copied), then their columns, so the costly element gathers
        run on a level's rows only (~3x faster than four gathers per pixel on a 1024 px photo)."""
        out = np.zeros((*self.mosaic.shape, 3), np.float32)
        for (oy, ox), (r0, r1, c0, c1, counts) in zip(self.mosaic.offsets, self.windows):
            rows = np.take(table, r1, axis=0)
            rows -= np.take(table, r0, axis=0)
            sums = np.take(rows, c1, axis=1)
            sums -= np.take(rows, c0, axis=1)
            level = sums.astype(np.float32)
            level /= counts
            out[oy : oy + len(r0), ox : ox + len(c0)] = _normalise(level)
        return out[None]

    def candidates(self, reg_map: np.ndarray, prob_map: np.ndarray, threshold: float) -> np.ndarray:
        """P-Net's boxes ``(N, 9)`` (``x0 y0 x1 y1 score`` + 4 regressions) of every level, each
        level's after its own non-maximum suppression at 0.5, level after level: facenet-pytorch's
        ``generateBoundingBox`` and per-scale ``batched_nms``, for all levels at once."""
        ys, xs = np.nonzero((prob_map >= threshold) & (self.cell_level >= 0))
        if len(ys) == 0:
            return np.zeros((0, 9), np.float32)
        level = self.cell_level[ys, xs]
        origin = self.cell_origin[level]
        boxes = np.empty((len(ys), 9), np.float32)
        # as torch computes them, in float32 from the level's cell and scale
        fx, fy, fs = (xs - origin[:, 1]).astype(np.float32), (ys - origin[:, 0]).astype(np.float32), self.scales[level]
        boxes[:, 0] = np.floor((2 * fx + 1) / fs)
        boxes[:, 1] = np.floor((2 * fy + 1) / fs)
        boxes[:, 2] = np.floor((2 * fx + 12) / fs)
        boxes[:, 3] = np.floor((2 * fy + 12) / fs)
        boxes[:, 4] = prob_map[ys, xs]
        boxes[:, 5:] = reg_map[:, ys, xs].T
        keep = nms(boxes[:, :4], boxes[:, 4], 0.5, groups=level)
        keep = keep[np.argsort(level[keep], kind="stable")]  # level after level, each in its kept order
        return boxes[keep]


_PLANS: dict[tuple, PyramidPlan | None] = {}
_NO_PLAN = object()


def pyramid_plan(height: int, width: int, min_face: float, factor: float = DEFAULT_FACTOR, base_min_face: float = 20.0) -> PyramidPlan | None:
    """The :class:`PyramidPlan` of an image size (cached: the last few sizes); None when the
    pyramid is empty (an image too small for ``min_face``)."""
    key = (int(height), int(width), float(min_face), float(factor), float(base_min_face))
    cached = _PLANS.get(key, _NO_PLAN)  # one lookup: another thread may drop entries meanwhile
    if cached is not _NO_PLAN:
        return cast("PyramidPlan | None", cached)
    scales = pyramid_scales(height, width, max(float(min_face), float(base_min_face)), factor, base_min_face)
    plan = _make_plan(height, width, scales) if scales else None
    with _LOCK:
        if len(_PLANS) >= 8:
            _PLANS.pop(next(iter(_PLANS)))
        _PLANS[key] = plan
    return plan


def _make_plan(height: int, width: int, scales: Sequence[float]) -> PyramidPlan:
    sizes = [(int(height * scale + 1), int(width * scale + 1)) for scale in scales]
    mosaic = pack_levels(sizes)
    windows = []
    cell_level = np.full(((mosaic.shape[0] - 1) // 2 - 4, (mosaic.shape[1] - 1) // 2 - 4), -1, np.int16)
    origin = np.zeros((len(sizes), 2), np.int64)
    zero = np.zeros(1, np.int64)
    for k, ((oy, ox), (hs, ws)) in enumerate(zip(mosaic.offsets, sizes)):
        (r0,), (r1,) = _bins(zero, np.array([height]), hs)
        (c0,), (c1,) = _bins(zero, np.array([width]), ws)
        windows.append((r0, r1, c0, c1, ((r1 - r0)[:, None] * (c1 - c0)[None, :]).astype(np.float32)[..., None]))
        # the level's P-Net output: one cell per 2 px, (ceil((hs - 2) / 2) - 4) rows
        rows, cols = (hs - 1) // 2 - 4, (ws - 1) // 2 - 4
        cell_level[oy // 2 : oy // 2 + rows, ox // 2 : ox // 2 + cols] = k
        origin[k] = (oy // 2, ox // 2)
    return PyramidPlan(
        scales=np.array(scales, np.float32),
        mosaic=mosaic,
        windows=windows,
        cell_level=cell_level,
        cell_origin=origin,
    )


def _proposals(plan: PyramidPlan, table: np.ndarray, nets: Any, threshold: float) -> np.ndarray:
    """Stage 1: P-Net on the mosaic of pyramid levels -> squared, regressed ``(N, 5)`` boxes + score."""
    reg_map, prob_map = nets.run_pnet(plan.canvas(table), plan.mosaic.outside)
    boxes = plan.candidates(reg_map, prob_map, threshold)
    if len(boxes) == 0:
        return boxes[:, :5]
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    rw = boxes[:, 2] - boxes[:, 0]
    rh = boxes[:, 3] - boxes[:, 1]
    boxes = np.stack(
        [boxes[:, 0] + boxes[:, 5] * rw, boxes[:, 1] + boxes[:, 6] * rh,
         boxes[:, 2] + boxes[:, 7] * rw, boxes[:, 3] + boxes[:, 8] * rh, boxes[:, 4]], axis=1
    )
    return _square(boxes)


def _landmarks(boxes: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """O-Net's relative points -> ``(N, 5, 2)`` image px in the candidate ``boxes``."""
    bw = boxes[:, 2] - boxes[:, 0] + 1.0
    bh = boxes[:, 3] - boxes[:, 1] + 1.0
    px = bw[:, None] * pts[:, :5] + boxes[:, 0:1] - 1.0
    py = bh[:, None] * pts[:, 5:10] + boxes[:, 1:2] - 1.0
    return np.stack([px, py], axis=2)


def detect_faces(
    image: np.ndarray,
    nets: Any,
    min_face: float = 20.0,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    factor: float = DEFAULT_FACTOR,
    base_min_face: float = 20.0,
) -> Detections:
    """MTCNN on one image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        nets: the three networks (see the module docstring), e.g. ``facerecon.mtcnn.load_nets()``.
        min_face: the smallest face searched for, px of ``image``: pyramid levels for smaller
            faces are skipped (:func:`pyramid_scales`).
        thresholds: the P-, R- and O-Net probability thresholds.
        factor: the pyramid's scale step (< 1).
        base_min_face: facenet-pytorch's ``min_face_size``, which fixes the sequence of scales.

    Returns:
        :class:`Detections` in px of ``image``, most confident first, after the three stages.
    """
    h, w = image.shape[:2]
    plan = pyramid_plan(h, w, min_face, factor, base_min_face)
    if plan is None:
        return Detections.empty()
    table = _integral(image)
    t0, t1, t2 = (float(t) for t in thresholds)
    boxes = _proposals(plan, table, nets, t0)
    if len(boxes) == 0:
        return Detections.empty()
    # ---- stage 2: R-Net on 24 px crops
    inputs, valid = _crops(table, boxes, w, h, 24)
    if len(valid) == 0:
        return Detections.empty()
    boxes = boxes[valid]
    reg, score = nets.run_rnet(inputs)
    passed = score > t1
    if not passed.any():
        return Detections.empty()
    boxes = np.concatenate([boxes[passed, :4], score[passed, None]], axis=1)
    reg = reg[passed]
    keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = _square(_regress(boxes[keep], reg[keep]))
    # ---- stage 3: O-Net on 48 px crops
    inputs, valid = _crops(table, boxes, w, h, 48)
    if len(valid) == 0:
        return Detections.empty()
    boxes = boxes[valid]
    reg, pts, score = nets.run_onet(inputs)
    passed = score > t2
    if not passed.any():
        return Detections.empty()
    boxes = np.concatenate([boxes[passed, :4], score[passed, None]], axis=1)
    points = _landmarks(boxes, pts[passed])
    boxes = _regress(boxes, reg[passed])
    keep = nms(boxes[:, :4], boxes[:, 4], 0.7, method="min")
    boxes, points = boxes[keep], points[keep]
    return Detections(boxes[:, :4].astype(np.float32), boxes[:, 4].astype(np.float32), points.astype(np.float32))


def refine(image: np.ndarray, nets: Any, boxes: np.ndarray) -> Detections:
    """O-Net alone on given boxes: MTCNN's last stage as a tracker.

    Each ``x0, y0, x1, y1`` box (e.g. the face's box in the previous video frame) is squared,
    cut at 48 px and scored; the result is what the full cascade's last stage would give for
    that candidate: probability, regressed box and landmarks (no threshold applied).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        nets: the three networks (see the module docstring).
        boxes: ``(N, 4)`` image px.
    """
    h, w = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return Detections.empty()
    table = _integral(image)
    candidates = _square(np.concatenate([boxes, np.ones((len(boxes), 1), np.float32)], axis=1))
    inputs, valid = _crops(table, candidates, w, h, 48)
    if len(valid) == 0:
        return Detections.empty()
    candidates = candidates[valid]
    reg, pts, score = nets.run_onet(inputs)
    points = _landmarks(candidates, pts)
    out = _regress(candidates, reg)
    order = np.argsort(-score, kind="stable")
    return Detections(out[order, :4].astype(np.float32), score[order].astype(np.float32), points[order].astype(np.float32))
