"""2D feature extractors behind one interface: image in [0, 1] -> a list of feature maps.

Every backbone is a torchvision architecture built with ``weights=None`` (nothing is ever
downloaded); pretrained weights come from a local file (``load_backbone_weights``). The
preprocessing the weights expect lives inside the module, so callers always pass RGB in [0, 1]:

| name | maps (channels, stride) | preprocessing |
|---|---|---|
| ``vgg16`` | conv3_3 256/4, conv4_3 512/8, conv5_3 512/16 (1280) | ImageNet mean/std |
| ``resnet18`` | layer1-4: 64/4, 128/8, 256/16, 512/32 (960) | ImageNet mean/std |
| ``resnet50`` | layer1-4: 256/4, 512/8, 1024/16, 2048/32 (3840) | ImageNet mean/std |
| ``resnet50_vggface2`` | as resnet50, caffe layout (3840) | x255, BGR, minus [91.4953, 103.8827, 131.0912] |
| ``mobilenet_v2`` | features[:4] 24/4, [4:7] 32/8, [7:14] 96/16, [14:18] 320/32 (472) | ImageNet mean/std |
| ``mobilenet_v2_050`` | width 0.5 (3DDFA_V2's size): 16/4, 16/8, 48/16, 160/32 (240) | ImageNet mean/std |

The VGGFace2 ResNet-50 follows the caffe model its published weights were converted from: the
stride of each downsampling bottleneck sits on its first 1x1 convolution, and the stem's max-pool
has no padding and rounds up (``ceil_mode``). Its parameter names are torchvision's, so a
converted state dict (the ``resnet50_ft`` / ``resnet50_scratch`` pickles, turned into tensors and
saved with ``torch.save``) loads directly; see docs/model.md.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from facerecon.errors import InputError

__all__ = ["Backbone", "BACKBONES", "build_backbone", "load_backbone_weights", "fold_batch_norms"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)


class Backbone(nn.Module):
    """Preprocessing + a sequence of stages; ``forward`` returns every stage's output.

    Attributes:
        name: the registry name.
        channels: C_i of each returned map.
        strides: the downsampling factor of each map (for a 224-px input: 224 / stride px wide).
        net: the torchvision model the stages come from (unused heads removed); its parameter
            names are torchvision's, which is what ``load_backbone_weights`` expects.
    """

    mean: Tensor  # buffers: the input normalisation
    scale: Tensor

    def __init__(
        self,
        name: str,
        net: nn.Module,
        stages: Sequence[nn.Module],
        channels: list[int],
        strides: list[int],
        caffe_bgr: bool,
    ) -> None:
        super().__init__()
        self.name = name
        self.net = net
        self._stages = list(stages)  # views into self.net (not registered twice)
        self.channels = channels
        self.strides = strides
        self.caffe_bgr = caffe_bgr
        #: state-dict keys of the full torchvision model that this backbone drops (heads).
        self.ignored_prefixes: tuple[str, ...] = ("fc.", "classifier.")
        if caffe_bgr:
            mean = torch.tensor(VGGFACE2_MEAN_BGR).view(1, 3, 1, 1)
            scale = torch.ones(1, 3, 1, 1)
        else:
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            scale = 1.0 / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        #: (weights key, stages with the batch norms folded in), for inference (see ``forward``)
        self._folded: tuple[tuple, list[nn.Module]] | None = None
        self._seen_key: tuple | None = None

    def _weights_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype) for t in (*self.net.parameters(), *self.net.buffers()))

    def _inference_stages(self) -> list[nn.Module]:
        """The stages to run without gradients: from the second call with the same weights on,
        a copy with each convolution's batch norm folded into it (eval statistics), built again
        whenever a weight or statistic changes (training, loading, moving). The first call runs
        the stages as they are, so one photo does not pay the folding that only repeated calls
        repay."""
        key = self._weights_key()
        if self._folded is not None and self._folded[0] == key:
            return self._folded[1]
        if self._seen_key != key:
            self._seen_key = key
            return self._stages
        with torch.inference_mode(False), torch.no_grad():
            self._folded = (key, [fold_batch_norms(stage) for stage in self._stages])
        return self._folded[1]

    def preprocess(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> the normalised input the weights expect."""
        if self.caffe_bgr:
            image = image.flip(1) * 255.0
        return (image - self.mean.to(image.dtype)) * self.scale.to(image.dtype)

    def forward(self, image: Tensor) -> list[Tensor]:
        """
        Args:
            image: (B, 3, H, W) float RGB in [0, 1], any H, W (224 by default; >= 32 px).

        Returns:
            list of (B, C_i, ceil(H / s_i), ceil(W / s_i)) float maps, C_i = ``channels[i]``
            (channels-last in memory when run for inference: eval mode, no gradients).
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise InputError(f"backbone input must be (B, 3, H, W), got shape {tuple(image.shape)}")
        x = self.preprocess(image)
        maps = []
        inference = not self.training and not torch.is_grad_enabled()
        if inference:  # oneDNN's depthwise and 1x1 convolutions run ~20 % faster on NHWC maps
            x = x.contiguous(memory_format=torch.channels_last)
        for stage in self._inference_stages() if inference else self._stages:
            x = stage(x)
            maps.append(x)
        return maps


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """An inference copy of ``module`` (eval mode) in which every ``Conv2d`` directly followed by
    a ``BatchNorm2d`` inside an ``nn.Sequential`` is one convolution (``W' = W g / sqrt(var +
    eps)``, ``b' = (b - mean) g / sqrt(var + eps) + beta``): the same function, one pass fewer
    over each map. Other batch norms (inside ResNet blocks) stay as they are. Only the folded
    convolutions get new tensors; every other module is shared with ``module`` (a structural copy:
    a few milliseconds, where ``copy.deepcopy`` of a MobileNetV2 takes 20)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    def fused(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Module:
        assert bn.running_mean is not None and bn.running_var is not None  # checked by the caller
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        out = copy.copy(conv)
        out._parameters = {"weight": nn.Parameter(weight, requires_grad=False), "bias": nn.Parameter(bias, requires_grad=False)}
        out.training = False
        return out

    def walk(m: nn.Module) -> nn.Module:
        if not m._modules:
            return m  # a leaf: shared
        items = list(m._modules.items())
        kids: dict[str, nn.Module | None] = {}
        i = 0
        while i < len(items):
            name, child = items[i]
            nxt = items[i + 1][1] if i + 1 < len(items) else None
            if (isinstance(m, nn.Sequential) and isinstance(child, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d)
                    and nxt.track_running_stats and nxt.running_mean is not None):
                kids[name] = fused(child, nxt)
                kids[items[i + 1][0]] = nn.Identity()
                i += 2
                continue
            kids[name] = None if child is None else walk(child)
            i += 1
        out = copy.copy(m)
        out._modules = kids
        out.training = False
        return out

    return walk(module)


def _resnet(name: str, ctor: Callable[..., Any], caffe: bool = False) -> Backbone:
    net = ctor(weights=None)
    if caffe:
        net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        for layer in (net.layer2, net.layer3, net.layer4):
            first = layer[0]
            first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
    del net.fc, net.avgpool
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
    stages = [stem, net.layer2, net.layer3, net.layer4]
    expansion = 4 if name.startswith("resnet50") else 1
    channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    return Backbone(name, net, stages, channels, [4, 8, 16, 32], caffe_bgr=caffe)


def _torchvision_models() -> Any:
    """``torchvision.models``, imported when a backbone needs it (the import takes seconds)."""
    import torchvision

    return torchvision.models


def _vgg16() -> Backbone:
    net = _torchvision_models().vgg16(weights=None)
    del net.classifier, net.avgpool
    f = net.features
    stages = [f[:16], f[16:23], f[23:30]]  # up to relu(conv3_3), relu(conv4_3), relu(conv5_3)
    return Backbone("vgg16", net, stages, [256, 512, 512], [4, 8, 16], caffe_bgr=False)


def _mobilenet_v2(width: float = 1.0, name: str = "mobilenet_v2") -> Backbone:
    from facerecon.model.mobilenet import _make_divisible, mobilenet_v2  # torchvision's, without importing it (seconds)

    net = mobilenet_v2(weights=None, width_mult=width)
    del net.classifier
    f = net.features
    f[18] = nn.Identity()  # the 1280-channel head conv is not pooled from: drop its parameters
    stages = [f[:4], f[4:7], f[7:14], f[14:18]]
    channels = [_make_divisible(c * width, 8) for c in (24, 32, 96, 320)]
    bb = Backbone(name, net, stages, channels, [4, 8, 16, 32], caffe_bgr=False)
    bb.ignored_prefixes = bb.ignored_prefixes + ("features.18.",)
    return bb


BACKBONES: dict[str, Callable[[], Backbone]] = {
    "vgg16": _vgg16,
    "resnet18": lambda: _resnet("resnet18", _torchvision_models().resnet18),
    "resnet50": lambda: _resnet("resnet50", _torchvision_models().resnet50),
    "resnet50_vggface2": lambda: _resnet("resnet50_vggface2", _torchvision_models().resnet50, caffe=True),
    "mobilenet_v2": _mobilenet_v2,
    "mobilenet_v2_050": lambda: _mobilenet_v2(0.5, "mobilenet_v2_050"),
}


def build_backbone(name: str, weights: str | os.PathLike[str] | None = None) -> Backbone:
    """A backbone by name, randomly initialised or loaded from a local ``weights`` file.

    Args:
        name: one of ``BACKBONES``.
        weights: path of a torch state dict (see ``load_backbone_weights``), or None.
    """
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    backbone = BACKBONES[name]()
    if weights is not None:
        load_backbone_weights(backbone, weights)
    return backbone


def _unwrap_state_dict(obj: Any, path: str) -> dict[str, Tensor]:
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a state dict of tensors (save one with torch.save(model.state_dict(), ...))")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "net.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_backbone_weights(backbone: Backbone, path: str | os.PathLike[str]) -> None:
    """Load a local torchvision-style state dict into ``backbone.net`` (never downloads).

    Accepted: a plain state dict or one under ``state_dict`` / ``model``; ``module.`` prefixes are
    stripped; the weights of heads the backbone drops (``fc.*``, ``classifier.*``, MobileNetV2's
    last 1x1 convolution) are ignored. Loaded with
    ``torch.load(weights_only=True)``.

    Raises:
        InputError: missing file, not a state dict, missing keys, unexpected keys or shape mismatch
            (the message names the first few).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: backbone weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle / runtime errors of many kinds
        raise InputError(f"{path}: cannot read backbone weights ({type(exc).__name__}: {exc})") from None
    state = _unwrap_state_dict(obj, path)
    state = {k: v for k, v in state.items() if not k.startswith(backbone.ignored_prefixes)}
    own = backbone.net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({', '.join(missing[:3])}...)")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])}...)")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches ({'; '.join(wrong[:3])})")
    if problems:
        raise InputError(f"{path}: does not fit backbone {backbone.name!r}: " + ", ".join(problems))
    backbone.net.load_state_dict(state, strict=True)
