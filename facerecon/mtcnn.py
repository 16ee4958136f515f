"""MTCNN face detection without facenet-pytorch's runtime (and without torchvision).

The three networks (P-, R- and O-Net) and the cascade of Zhang et al. (2016) as facenet-pytorch
2.5 implements them, with the same weights: they are read from the files that ship inside the
installed ``facenet_pytorch`` package (``facenet_pytorch/data/{pnet,rnet,onet}.pt``), located
without importing it. Importing facenet-pytorch costs seconds (it imports torchvision, which pulls
in torch's compiler stack); this module needs torch, numpy and OpenCV only. The networks live
here; the cascade's numpy parts (pyramid, mosaic, crops, non-maximum suppression, the stages) live
in :mod:`facerecon.mtcnn_cascade`, which imports no torch, so ONNX Runtime can run the same
cascade (:mod:`facerecon.runtime.session`); they are re-exported here.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from facerecon.errors import DependencyError
from facerecon.mtcnn_cascade import (  # noqa: F401  (the cascade's numpy parts, re-exported)
    _LOCK,
    _PLANS,
    DEFAULT_FACTOR,
    DEFAULT_THRESHOLDS,
    Detections,
    Mosaic,
    PyramidPlan,
    _area_resample,
    _crops,
    _integral,
    _normalise,
    _regress,
    _square,
    detect_faces,
    nms,
    pack_levels,
    pyramid_plan,
    pyramid_scales,
    refine,
)

__all__ = [
    "MTCNNNets", "Detections", "detect_faces", "refine", "pyramid_scales", "pyramid_plan", "PyramidPlan", "weights_folder",
    "load_nets", "nms",
]


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
            x = x.masked_fill_(torch.as_tensor(outside, device=x.device), -1e9)  # in place: x is this call's own tensor
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
    """The three networks on one device, in eval mode, with the cascade's interface
    (:mod:`facerecon.mtcnn_cascade`: NHWC float32 numpy in, numpy out)."""

    pnet: PNet
    rnet: RNet
    onet: ONet
    device: torch.device

    def _input(self, x: np.ndarray) -> torch.Tensor:
        """NHWC numpy -> an NCHW tensor, channels-last in memory (no copy on the CPU)."""
        return torch.from_numpy(x).permute(0, 3, 1, 2).to(self.device)

    def run_pnet(self, canvas: np.ndarray, outside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, H, W, 3), (1, 1, H - 2, W - 2) bool -> regression (4, h, w), probability (h, w)."""
        with torch.inference_mode():
            reg, prob = self.pnet(self._input(canvas), torch.from_numpy(outside).to(self.device))
            return reg[0].cpu().numpy(), prob[0, 1].cpu().numpy()

    def run_rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 24, 24, 3) -> regression (N, 4), probability (N,)."""
        with torch.inference_mode():
            reg, prob = self.rnet(self._input(crops))
            return reg.cpu().numpy(), prob[:, 1].cpu().numpy()

    def run_onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 48, 48, 3) -> regression (N, 4), points (N, 10), probability (N,)."""
        with torch.inference_mode():
            reg, pts, prob = self.onet(self._input(crops))
            return reg.cpu().numpy(), pts.cpu().numpy(), prob[:, 1].cpu().numpy()

    def warm(self, mosaic: Mosaic | None) -> None:
        """One call of each network (P-Net at the mosaic's size when given): the one-off set-up
        of their kernels, done ahead of the first photo."""
        shape = (12, 12) if mosaic is None else mosaic.shape
        self.run_pnet(np.zeros((1, *shape, 3), np.float32), np.zeros((1, 1, shape[0] - 2, shape[1] - 2), bool))
        self.run_rnet(np.zeros((1, 24, 24, 3), np.float32))
        self.run_onet(np.zeros((1, 48, 48, 3), np.float32))


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

_Net = TypeVar("_Net", bound=nn.Module)


def _load_net(net: _Net, path: Path, device: torch.device) -> _Net:
    """``net`` with the weights of ``path``, on ``device``, in eval mode, without gradients."""
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.to(device).eval().requires_grad_(False)
    return net.to(memory_format=torch.channels_last)  # they run channels-last: store the weights so once


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


