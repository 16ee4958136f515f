"""MTCNN face detection without facenet-pytorch's runtime (and without torchvision).

The three networks (P-, R- and O-Net) and the cascade of Zhang et al. (2016) as facenet-pytorch
2.5 implements them, with the same weights: they are read from the files that ship inside the
installed ``facenet_pytorch`` package (``facenet_pytorch/data/{pnet,rnet,onet}.pt``), located
without importing it. Importing facenet-pytorch costs seconds (it imports torchvision, which pulls
in torch's compiler stack); this module needs torch, numpy and OpenCV only.

The cascade is facenet-pytorch's, step for step (box generation, non-maximum suppression with the
same overlap rules, box regression, squaring, padding), with these differences, none of which moves
a box by more than a pixel or two on real photos (``tests/test_detect.py`` checks IoU >= 0.9 against
facenet-pytorch itself):

* resampling (the image pyramid and the 24/48 px candidate crops) is torch's
  ``interpolate(mode="area")`` computed from one summed-area table of the image, for all crops
  of a stage at once;
* the pyramid can start at a larger minimum face (``min_face`` px: :func:`pyramid_scales`);
* P-Net runs once, on all pyramid levels packed into one mosaic (:func:`pack_levels`), instead
  of once per level: its outputs for each level are the per-level ones (tested against
  facenet-pytorch), in one call with one set of convolution shapes, which in a fresh process
  also means one set of oneDNN kernels to create instead of one per level;
* all three networks run channels-last (no oneDNN layout reorders);
* what depends only on the image size (the mosaic's layout, each level pixel's area window, the
  level of each P-Net output cell) is planned once per size (:func:`pyramid_plan`), and the
  levels' candidate boxes come out of one pass, with one non-maximum suppression that keeps the
  levels apart (``nms(..., groups=...)``), in the per-level order.

Coordinates are image px of the array given (MTCNN's convention: a box is
``x0, y0, x1, y1``, landmarks are ``(5, 2)`` x, y: left eye, right eye, nose, left and right mouth
corner).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar, cast

import numpy as np
import torch
from torch import nn

from facerecon.errors import DependencyError

__all__ = [
    "MTCNNNets", "Detections", "detect_faces", "refine", "pyramid_scales", "pyramid_plan", "PyramidPlan", "weights_folder",
    "load_nets", "nms",
]

#: MTCNN's stage thresholds as facenet-pytorch uses them by default.
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
#: The scale step of the image pyramid (facenet-pytorch's default).
DEFAULT_FACTOR = 0.709


class PNet(nn.Module):
    """The proposal network (a fully convolutional 12 px face / not-face classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor, outside: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, H, W)`` -> box regression ``(N, 4, h, w)`` and softmax ``(N, 2, h, w)``.

        ``outside``: for a mosaic of pyramid levels (:func:`pack_levels`), True at the first
        convolution's outputs that are not inside one level. They are set far below any real
        activation before the ceil-mode max-pool, so a level's last pooling cell takes the max
        of its own cells only, as the pool does at a level's border; every output whose receptive
        field lies inside a level is then the level's own.
        """
        # channels-last throughout: oneDNN then needs no layout reorders (the 3-channel first
        # convolution is ~3x faster), and the CPU max-pool with ceil_mode ~6x
        x = self.prelu1(self.conv1(x.contiguous(memory_format=torch.channels_last)))
        if outside is not None:
            x = x.masked_fill_(outside, -1e9)  # in place: x is this call's own tensor
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        # the two 1x1 heads as one convolution
        bias1, bias2 = self.conv4_1.bias, self.conv4_2.bias
        assert bias1 is not None and bias2 is not None  # nn.Conv2d's default: with bias
        heads = nn.functional.conv2d(x, torch.cat([self.conv4_1.weight, self.conv4_2.weight]), torch.cat([bias1, bias2]))
        return heads[:, 2:], torch.softmax(heads[:, :2], dim=1)


class RNet(nn.Module):
    """The refinement network (24 px crops)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.contiguous(memory_format=torch.channels_last)  # ~3x faster on the CPU
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """The output network (48 px crops): box, probability and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 48, 48) MTCNN-normalised crops -> (N, 256) the dense layer before the heads."""
        x = x.contiguous(memory_format=torch.channels_last)  # ~3x faster on the CPU
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        return self.prelu5(self.dense5(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.features(x)
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


@dataclass
class MTCNNNets:
    """The three networks on one device, in eval mode."""

    pnet: PNet
    rnet: RNet
    onet: ONet
    device: torch.device


def weights_folder() -> Path:
    """The folder of the MTCNN weight files inside the installed facenet-pytorch (not imported).

    Raises:
        DependencyError: facenet-pytorch is not installed, or its weight files are missing.
    """
    spec = importlib.util.find_spec("facenet_pytorch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "data"
        if all((folder / f"{name}.pt").is_file() for name in ("pnet", "rnet", "onet")):
            return folder
    raise DependencyError(
        "face detection needs the MTCNN weights that ship with facenet-pytorch; "
        "install it with 'pip install facenet-pytorch==2.5.3'"
    )


_CACHE: dict[str, MTCNNNets] = {}
_LOCK = threading.Lock()


def load_nets(device: str | torch.device = "cpu") -> MTCNNNets:
    """The three networks with facenet-pytorch's weights, loaded once per device and shared."""
    device = torch.device(device)
    key = str(device)
    with _LOCK:
        if key not in _CACHE:
            folder = weights_folder()
            pnet = _load_net(PNet(), folder / "pnet.pt", device)
            rnet = _load_net(RNet(), folder / "rnet.pt", device)
            onet = _load_net(ONet(), folder / "onet.pt", device)
            _CACHE[key] = MTCNNNets(pnet, rnet, onet, device=device)
        return _CACHE[key]


_Net = TypeVar("_Net", bound=nn.Module)


def _load_net(net: _Net, path: Path, device: torch.device) -> _Net:
    """``net`` with the weights of ``path``, on ``device``, in eval mode, without gradients."""
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.to(device).eval().requires_grad_(False)
    return net.to(memory_format=torch.channels_last)  # they run channels-last: store the weights so once


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
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    one = np.float32(1.0 if method == "min" else 0.0)
    area = (x1 - x0 + one) * (y1 - y0 + one)
    s = np.asarray(scores, dtype=np.float32)
    groups = None if groups is None else np.asarray(groups)
    order = np.argsort(s)[::-1] if method == "min" else np.argsort(-s, kind="stable")
    thr = np.float32(threshold)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(np.float32(0.0), np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + one)
        h = np.maximum(np.float32(0.0), np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + one)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            if method == "min":
                overlap = inter / np.minimum(area[i], area[rest])
            else:
                overlap = inter / (area[i] + area[rest] - inter)
        survive = overlap <= thr
        if groups is not None:
            survive |= groups[rest] != groups[i]
        order = rest[survive]
    return np.asarray(keep, dtype=np.int64)


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


def _crops(table: np.ndarray, boxes: np.ndarray, width: int, height: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """The ``size`` px network inputs of the candidate boxes (facenet-pytorch's ``pad`` + crop + resize).

    Returns ``(N', 3, size, size)`` float32 channels-last (a view of NHWC memory, which the
    networks take without a copy) and the indices of the boxes with a non-empty region.
    """
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x = np.maximum(b[:, 0], 1)
    y = np.maximum(b[:, 1], 1)
    ex = np.minimum(b[:, 2], width)
    ey = np.minimum(b[:, 3], height)
    valid = np.flatnonzero((ey > y - 1) & (ex > x - 1))
    x, y, ex, ey = x[valid], y[valid], ex[valid], ey[valid]
    pixels = _area_resample(table, y - 1, x - 1, ey - y + 1, ex - x + 1, size, size)
    return torch.from_numpy(_normalise(pixels)).permute(0, 3, 1, 2), valid


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
    outside: torch.Tensor


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
    inside = torch.zeros((1, 1, shape[0] - 2, shape[1] - 2), dtype=torch.bool)
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
        pixels: ``(P,)`` flat mosaic pixel of each level pixel.
        corners: ``(4, P)`` flat summed-area-table entries ``S[y1, x1]``, ``S[y0, x1]``,
            ``S[y1, x0]``, ``S[y0, x0]`` of each level pixel's area window
            (:func:`_area_resample`'s windows).
        counts: ``(P, 1)`` float32 pixels in each window.
        cell_level: ``(h, w)`` int16 level of each P-Net output cell of the mosaic whose
            receptive field lies in that level; -1 elsewhere.
        cell_origin: ``(L, 2)`` the first cell (row, column) of each level.
    """

    scales: np.ndarray
    mosaic: Mosaic
    pixels: np.ndarray
    corners: np.ndarray
    counts: np.ndarray
    cell_level: np.ndarray
    cell_origin: np.ndarray

    def canvas(self, table: np.ndarray) -> np.ndarray:
        """``(1, H, W, 3)`` float32 the mosaic of the image behind ``table`` (its summed-area
        table, :func:`_integral`), MTCNN-normalised; 0 between the levels. Each level equals
        ``interpolate(image, size, mode="area")`` exactly (integer window sums, one float32
        division), as :func:`_area_resample` computes it."""
        flat = table.reshape(-1, table.shape[2])
        sums = np.take(flat, self.corners[0], axis=0)
        sums -= np.take(flat, self.corners[1], axis=0)
        sums -= np.take(flat, self.corners[2], axis=0)
        sums += np.take(flat, self.corners[3], axis=0)
        canvas = np.zeros((self.mosaic.shape[0] * self.mosaic.shape[1], 3), np.float32)
        canvas[self.pixels] = _normalise(sums.astype(np.float32) / self.counts)
        return canvas.reshape(1, *self.mosaic.shape, 3)

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
    stride = width + 1  # of the summed-area table
    pixels, corners, counts = [], [], []
    cell_level = np.full(((mosaic.shape[0] - 1) // 2 - 4, (mosaic.shape[1] - 1) // 2 - 4), -1, np.int16)
    origin = np.zeros((len(sizes), 2), np.int64)
    zero = np.zeros(1, np.int64)
    for k, ((oy, ox), (hs, ws)) in enumerate(zip(mosaic.offsets, sizes)):
        r0, r1 = _bins(zero, np.array([height]), hs)
        c0, c1 = _bins(zero, np.array([width]), ws)
        r0, r1, c0, c1 = r0[0][:, None], r1[0][:, None], c0[0][None, :], c1[0][None, :]
        corners.append(np.stack([r1 * stride + c1, r0 * stride + c1, r1 * stride + c0, r0 * stride + c0]).reshape(4, -1))
        counts.append(((r1 - r0) * (c1 - c0)).reshape(-1))
        pixels.append(((oy + np.arange(hs))[:, None] * mosaic.shape[1] + ox + np.arange(ws)[None, :]).reshape(-1))
        # the level's P-Net output: one cell per 2 px, (ceil((hs - 2) / 2) - 4) rows
        rows, cols = (hs - 1) // 2 - 4, (ws - 1) // 2 - 4
        cell_level[oy // 2 : oy // 2 + rows, ox // 2 : ox // 2 + cols] = k
        origin[k] = (oy // 2, ox // 2)
    return PyramidPlan(
        scales=np.array(scales, np.float32),
        mosaic=mosaic,
        pixels=np.concatenate(pixels),
        corners=np.concatenate(corners, axis=1),
        counts=np.concatenate(counts).astype(np.float32)[:, None],
        cell_level=cell_level,
        cell_origin=origin,
    )


def detect_faces(
    image: np.ndarray,
    nets: MTCNNNets,
    min_face: float = 20.0,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    factor: float = DEFAULT_FACTOR,
    base_min_face: float = 20.0,
) -> Detections:
    """MTCNN on one image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        nets: :func:`load_nets`.
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
    with torch.inference_mode():
        boxes = _pnet_stage(table, plan, nets, t0)
        if boxes is not None:
            boxes = _rnet_stage(table, boxes, nets, t1)
        if boxes is None:
            return Detections.empty()
        return _onet_stage(table, boxes, nets, t2)


def _pnet_stage(table: np.ndarray, plan: PyramidPlan, nets: MTCNNNets, threshold: float) -> np.ndarray | None:
    """Stage 1: P-Net on the pyramid, all levels in one mosaic -> ``(N, 5)`` square candidate
    boxes (x0, y0, x1, y1, score), px; None when there are none."""
    canvas = plan.canvas(table)  # NHWC: a channels-last tensor without a copy
    pixels = torch.from_numpy(canvas).permute(0, 3, 1, 2).to(nets.device)
    reg_map, prob_map = nets.pnet(pixels, plan.mosaic.outside.to(nets.device))
    boxes = plan.candidates(reg_map[0].cpu().numpy(), prob_map[0, 1].cpu().numpy(), threshold)
    if len(boxes) == 0:
        return None
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    rw = boxes[:, 2] - boxes[:, 0]
    rh = boxes[:, 3] - boxes[:, 1]
    boxes = np.stack(
        [boxes[:, 0] + boxes[:, 5] * rw, boxes[:, 1] + boxes[:, 6] * rh,
         boxes[:, 2] + boxes[:, 7] * rw, boxes[:, 3] + boxes[:, 8] * rh, boxes[:, 4]], axis=1
    )
    return _square(boxes)


def _rnet_stage(table: np.ndarray, boxes: np.ndarray, nets: MTCNNNets, threshold: float) -> np.ndarray | None:
    """Stage 2: R-Net on 24 px crops of the candidates -> the refined square boxes; None when
    none passes."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    inputs, valid = _crops(table, boxes, w, h, 24)
    if len(valid) == 0:
        return None
    boxes = boxes[valid]
    reg, prob = nets.rnet(inputs.to(nets.device))
    score = prob[:, 1].cpu().numpy()
    passed = score > threshold
    if not passed.any():
        return None
    boxes = np.concatenate([boxes[passed, :4], score[passed, None]], axis=1)
    reg = reg.cpu().numpy()[passed]
    keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
    return _square(_regress(boxes[keep], reg[keep]))


def _onet_stage(table: np.ndarray, boxes: np.ndarray, nets: MTCNNNets, threshold: float) -> Detections:
    """Stage 3: O-Net on 48 px crops -> the final boxes, probabilities and five points."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    inputs, valid = _crops(table, boxes, w, h, 48)
    if len(valid) == 0:
        return Detections.empty()
    boxes = boxes[valid]
    reg, pts, prob = nets.onet(inputs.to(nets.device))
    score = prob[:, 1].cpu().numpy()
    passed = score > threshold
    if not passed.any():
        return Detections.empty()
    boxes = np.concatenate([boxes[passed, :4], score[passed, None]], axis=1)
    reg = reg.cpu().numpy()[passed]
    pts = pts.cpu().numpy()[passed]
    bw = boxes[:, 2] - boxes[:, 0] + 1.0
    bh = boxes[:, 3] - boxes[:, 1] + 1.0
    px = bw[:, None] * pts[:, :5] + boxes[:, 0:1] - 1.0
    py = bh[:, None] * pts[:, 5:10] + boxes[:, 1:2] - 1.0
    points = np.stack([px, py], axis=2)
    boxes = _regress(boxes, reg)
    keep = nms(boxes[:, :4], boxes[:, 4], 0.7, method="min")
    boxes, points = boxes[keep], points[keep]
    return Detections(boxes[:, :4].astype(np.float32), boxes[:, 4].astype(np.float32), points.astype(np.float32))


def refine(image: np.ndarray, nets: MTCNNNets, boxes: np.ndarray) -> Detections:
    """O-Net alone on given boxes: MTCNN's last stage as a tracker.

    Each ``x0, y0, x1, y1`` box (e.g. the face's box in the previous video frame) is squared,
    cut at 48 px and scored; the result is what the full cascade's last stage would give for
    that candidate: probability, regressed box and landmarks (no threshold applied).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
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
    with torch.inference_mode():
        reg, pts, prob = nets.onet(inputs.to(nets.device))
    score = prob[:, 1].cpu().numpy()
    reg, pts = reg.cpu().numpy(), pts.cpu().numpy()
    bw = candidates[:, 2] - candidates[:, 0] + 1.0
    bh = candidates[:, 3] - candidates[:, 1] + 1.0
    px = bw[:, None] * pts[:, :5] + candidates[:, 0:1] - 1.0
    py = bh[:, None] * pts[:, 5:10] + candidates[:, 1:2] - 1.0
    out = _regress(candidates, reg)
    order = np.argsort(-score, kind="stable")
    return Detections(out[order, :4].astype(np.float32), score[order].astype(np.float32), np.stack([px, py], axis=2)[order].astype(np.float32))

