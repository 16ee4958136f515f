"""The typed configuration of the network, the losses and training (saved in every checkpoint).

One dataclass tree, ``Config(model=ModelConfig, loss=LossConfig, train=TrainConfig)``. Defaults are
the face paper's (docs/model.md, ../shared/METHOD.md). ``Config.from_dict`` accepts the nested
dict of a TOML file (or of ``to_dict``) and raises ``InputError`` naming any unknown key or
mistyped value; ``load_config(path, overrides)`` reads a TOML file and applies dotted overrides
such as ``{"train.lr": 3e-5, "model.backbone": "resnet18"}``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from facerecon.errors import InputError

__all__ = ["ModelConfig", "LossConfig", "TrainConfig", "Config", "load_config"]


@dataclass
class ModelConfig:
    """The network (facerecon.model.network.FaceReconNet)."""

    #: "hemisphere" (faces, 141 -> 7001 vertices), "ellipsoid" (objects, 156 -> 2466), or a template file.
    template: str = "hemisphere"
    #: vgg16 | resnet18 | resnet50 | resnet50_vggface2 (face paper) | mobilenet_v2 | mobilenet_v2_050 (width 0.5).
    backbone: str = "resnet50_vggface2"
    #: Local state dict for the backbone (torch.save of a torchvision-style model); None: random init.
    backbone_weights: str | None = None
    #: Keep the backbone fixed (no gradients, BatchNorm in eval mode).
    freeze_backbone: bool = False
    #: Hidden channels of the G-ResNets (128 or 192).
    hidden: int = 128
    #: Graph convolutions per block (Pixel2Mesh: 14 = input + 6 residual pairs + coordinate head).
    layers_per_block: int = 14
    #: Deformation blocks; None: one per template level (4 on the hemisphere, 3 on the ellipsoid).
    blocks: int | None = None
    #: Learn the position of each new vertex on its edge (face paper) instead of the midpoint.
    adaptive_unpool: bool = True
    #: "offset": block output = input coordinates + predicted offsets; "absolute" (Pixel2Mesh).
    coord_mode: Literal["offset", "absolute"] = "offset"
    #: Per-vertex RGB head on the last block.
    colour: bool = False
    #: 68 soft-assignment landmark head on the last block.
    landmarks: bool = True
    #: Number of landmarks of the landmark head.
    num_landmarks: int = 68
    #: Template placement: crop = template * scale + offset (per axis, crop units).
    template_scale: tuple[float, float, float] = (0.85, 0.85, 0.85)
    template_offset: tuple[float, float, float] = (0.0, 0.0, 0.4)
    #: "orthographic" (faces, crop frame) or "pinhole" (objects: focal / principal in px of ref_size).
    projection: Literal["orthographic", "pinhole"] = "orthographic"
    focal: float = 248.0
    principal: float = 111.5
    ref_size: float = 224.0
    #: Where the first graph convolution applies W0/W1 to image features: "auto" (cheaper per map),
    #: "pre" (1x1 conv on the map, then sample), "post" (sample, then multiply). Same result.
    project_mode: Literal["auto", "pre", "post"] = "auto"
    #: Resize the crops to this side (px) before the backbone; None keeps them as given (224 from
    #: the data pipeline). Smaller inputs (e.g. 128) make CPU training and inference faster.
    image_size: int | None = None
    #: Where block 1 starts. "template": the fixed template placement (Pixel2Mesh, model v1).
    #: "prior" (model v2): a global head regresses a scaled-orthographic pose and the
    #: coefficients of a shape basis learned from the training faces (facerecon.model.face_prior),
    #: so block 1 starts from a posed, plausible face and the graph blocks refine it. Needs
    #: ground truth in the face model's vertex order to learn the basis (3DMM caches).
    start: Literal["template", "prior"] = "template"
    #: PCA modes of the shape basis (``start = "prior"``).
    prior_components: int = 40
    #: Use MTCNN's five points (``start = "prior"``): align the crop to their mean position
    #: before the backbone, and start the pose from the mean face's five-point fit.
    five_point: bool = True
    #: Hidden channels of the global pose/shape head (``start = "prior"``).
    head_hidden: int = 256
    #: The head's view of the deepest map: "mean" (global average) or "grid" (average-pooled to
    #: 4 x 4 and flattened, keeping the spatial layout that pose needs).
    head_pool: Literal["mean", "grid"] = "mean"
    #: Also feed the head the 256-d features of MTCNN's pretrained output network (ONet, the
    #: weights that ship with facenet-pytorch; frozen) on the aligned crop at 48 px.
    onet_features: bool = False
    #: Per-block G-ResNet widths, coarse to fine (empty: ``hidden`` everywhere); e.g.
    #: (96, 64, 32, 16) so the 7,001-vertex level stops dominating the cost.
    hidden_per_block: tuple[int, ...] = ()
    #: Per-block graph convolution counts (empty: ``layers_per_block`` everywhere).
    layers_per_block_list: tuple[int, ...] = ()
    #: The refinement after the prior face (``start = "prior"``): "graph" (Pixel2Mesh blocks,
    #: perceptual pooling + G-ResNet per level) or "spiral" (the coarse spiral-convolution decoder
    #: from the head's embedding plus the spiral refinement network; facerecon.model.spiral).
    decoder: Literal["graph", "spiral"] = "graph"
    #: Spiral decoder widths per template level, coarse to fine, and spiral hops per level.
    spiral_widths: tuple[int, ...] = (32, 32, 16, 8)
    spiral_hops: tuple[int, ...] = (1, 1, 1, 1)


@dataclass
class LossConfig:
    """Loss weights (facerecon.losses.MeshLoss). Face paper defaults."""

    chamfer: float = 1.0
    #: Chamfer weight per block (first block softer); the first ``blocks`` entries are used.
    chamfer_block_weights: tuple[float, ...] = (0.5, 1.0, 1.0, 1.0)
    normal: float = 1.6e-4
    laplace: float = 0.5
    move: float = 0.033
    edge: float = 0.1
    landmark: float = 1.0
    colour: float = 1.0
    #: Weight Chamfer terms by the ground truth's per-point weights (TPAMI weighted Chamfer).
    weighted_chamfer: bool = False
    #: Weight the edge loss by the ground-truth weight near each edge (TPAMI weighted edge loss).
    weighted_edge: bool = False
    #: Leave the first block out of the move loss (as Pixel2Mesh: it moves the template a lot).
    move_skip_first: bool = True
    #: Laplacian schedule: "constant" (always ``laplace``); "linear": from ``laplace_start`` at
    #: epoch 0 down to ``laplace`` at epoch ``laplace_epochs``; "step": ``laplace_start`` before
    #: epoch ``laplace_epochs``, ``laplace`` from then on.
    laplace_schedule: Literal["constant", "linear", "step"] = "constant"
    laplace_start: float = 5.0
    laplace_epochs: int = 20
    #: Per-vertex correspondence loss (mean Euclidean distance to the template-topology ground
    #: truth, crop units) per block, with ``chamfer_block_weights``; needs ground truth in the
    #: face model's order (the batch's ``vertices``). 0 disables.
    vertex: float = 0.0
    #: The same distance for the posed prior face before refinement (``model.start = "prior"``).
    base: float = 0.0
    #: Normal consistency on the final mesh: ``mean over interior edges of 1 - cos`` between
    #: the two faces' normals (folds cost most). 0 disables.
    normal_consistency: float = 0.0
    #: Face-normal agreement with the template-topology ground truth, ``mean_f 1 - cos``. 0 disables.
    gt_normal: float = 0.0
    #: "squared": ``mean_k |l_k - g_k|^2``; "euclidean": ``mean_k |l_k - g_k|`` (like the NME).
    landmark_norm: Literal["squared", "euclidean"] = "squared"


@dataclass
class TrainConfig:
    """Optimisation (facerecon train). Face paper: Adam, lr 1e-4, x0.3 at 25/40/60, 80 epochs."""

    batch_size: int = 8
    epochs: int = 80
    #: The cache splits trained on: ("train",), or ("train", "val") for a final model once the
    #: recipe is chosen (validation is then skipped: those faces are trained on).
    splits: tuple[Literal["train", "val", "test"], ...] = ("train",)
    lr: float = 1e-4
    milestones: tuple[int, ...] = (25, 40, 60)
    gamma: float = 0.3
    weight_decay: float = 0.0
    #: Gradient norm clip; 0 disables.
    grad_clip: float = 0.0
    seed: int = 0
    #: Mixed precision (CUDA only; ignored on CPU).
    amp: bool = True
    num_workers: int = 2
    #: Ground-truth points drawn per region (boundary, sub-priority 10-17 mm, key < 10 mm).
    points_per_region: tuple[int, int, int] = (11000, 4000, 3000)
    #: At the start of a run, place the template on the training split's mean face (axis-aligned
    #: bounding-box fit); the fitted model.template_scale / template_offset are saved in the run's
    #: config. Needs ground truth with one shared topology (3DMM caches); skipped otherwise.
    fit_template: bool = True
    #: At the start of a run, start the landmark head around the mean training landmarks.
    init_landmarks: bool = True
    #: On-the-fly augmentation of the training crops (facerecon.data.augment), applied
    #: consistently to the image, points, normals, landmarks and five points.
    augment: bool = False
    #: Max in-plane rotation (degrees), crop-box scale jitter (fraction) and shift (crop units).
    aug_rotation: float = 30.0
    aug_scale: float = 0.1
    aug_shift: float = 0.06
    #: Std of the noise added to the five points (crop units), as MTCNN's own error.
    aug_five_noise: float = 0.01
    #: Probability of dropping the five points (the network then sees the crop unaligned, as
    #: when MTCNN finds no face and the crop is the average crop): teaches that case too.
    aug_drop_five: float = 0.0
    #: Probability of replacing the five points by a gross MTCNN failure: the face's true five
    #: points (from its 68 landmarks) plus the error MTCNN made on another training face of
    #: similar |yaw| where it missed by more than 0.1 of the face size (mirrored when the yaws'
    #: signs differ). Teaches the network not to trust five points that disagree with the image.
    aug_five_outlier: float = 0.0
    #: Times each training face is seen per epoch by its |yaw| bin (0-30, 30-60, 60-90 degrees);
    #: fractions repeat a fixed share of the bin. Profiles are rare in the data and hardest.
    yaw_repeat: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: Probabilities: horizontal flip, colour jitter, grey-scale, blur, noise, occlusion patch.
    aug_flip: float = 0.5
    aug_colour: float = 0.8
    aug_grey: float = 0.1
    aug_blur: float = 0.1
    aug_noise: float = 0.1
    aug_occlusion: float = 0.3


@dataclass
class Config:
    """Everything a run needs; ``to_dict`` is what checkpoints store."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """A nested dict of plain Python values (tuples as lists; TOML/JSON/torch-safe)."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Config":
        """Build from a nested dict; missing keys keep their defaults.

        Raises:
            InputError: an unknown key (named with its dotted path) or a value of the wrong type.
        """
        return _build(cls, data or {}, "")

    def replace(self, overrides: Mapping[str, Any]) -> "Config":
        """A copy with dotted-key overrides applied, e.g. ``{"train.lr": 1e-5}``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            parts = dotted.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise InputError(f"unknown config key {dotted!r}")
                node = node[part]
            if parts[-1] not in node:
                raise InputError(f"unknown config key {dotted!r}")
            node[parts[-1]] = value
        return Config.from_dict(data)


def load_config(path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then a TOML file (if given), then dotted ``overrides`` (if given).

    Raises:
        InputError: unreadable / invalid TOML (naming the file), unknown keys, wrong types.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise InputError(f"{os.fspath(path)}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{os.fspath(path)}: invalid TOML ({exc})") from None
        try:
            cfg = Config.from_dict(data)
        except InputError as exc:
            raise InputError(f"{os.fspath(path)}: {exc}") from None
    else:
        cfg = Config()
    return cfg.replace(overrides) if overrides else cfg


# ------------------------------------------------------------------------------------- helpers
def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise InputError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise InputError(f"unknown config key {prefix + key!r} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except InputError:
                continue
        raise InputError(f"config key {key!r}: {value!r} is not {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in args:
            return value
        raise InputError(f"config key {key!r}: {value!r} is not one of {', '.join(map(repr, args))}")
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], key) for v in value)
            if len(value) == len(args):
                return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise InputError(f"config key {key!r}: {value!r} is not {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} {_type_name(args[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    return {type(None): "none", bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )
