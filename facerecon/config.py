"""The typed configuration of the network, the losses and training (saved in every checkpoint).

One dataclass tree, ``Config(model=ModelConfig, loss=LossConfig, train=TrainConfig)``. Defaults are
the face paper's (docs/model.md, ../shared/METHOD.md). ``model.kind`` names the network family;
each family reads its own nested tables (``FAMILY_TABLES``) and a key of another family's table is
an error. ``train.augment`` is the one table of augmentation settings. Every number is checked
against its range where its dataclass is built (``__post_init__``), so a value out of range is a
``ConfigError`` naming its dotted key, wherever it came from.

``Config.from_dict`` accepts the nested dict of a TOML file, a checkpoint or ``to_dict`` (also in
the flat spelling of earlier versions: ``model.start``, ``model.hidden``, ``train.aug_flip``, ...,
translated by ``upgrade_dict``); ``load_config(path, overrides)`` reads a TOML file and applies
dotted overrides; ``command_line_overrides`` merges ``--set`` items with shortcut flags, refusing a
key given twice.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Literal, Mapping, Sequence

import tomllib

from facerecon.errors import InputError

__all__ = [
    "AugmentConfig", "CameraConfig", "Config", "ConfigError", "FAMILY_TABLES", "FaceVisionConfig", "GraphConfig", "LossConfig",
    "ModelConfig", "NetworkKind", "Override", "Pixel2MeshConfig", "PriorConfig", "SpiralConfig", "TrainConfig",
    "command_line_overrides", "load_config", "upgrade_dict",
]

#: The network families: ``pixel2mesh`` (model v1: the placed template refined by graph blocks),
#: ``prior_graph`` (model v2: a posed prior face refined by graph blocks), ``prior_spiral`` (the
#: posed prior face, then the spiral-convolution decoder), ``facevision`` (FaceVision-GAN: depth and
#: correspondence maps of the crop, the mesh made from the depth map; docs/facevision.md).
NetworkKind = Literal["pixel2mesh", "prior_graph", "prior_spiral", "facevision"]


class ConfigError(InputError):
    """A configuration key or value a run cannot use; ``key`` is its dotted name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _num(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None, note: str = "") -> Any:
    """A dataclass field whose number (or every number of a list) must lie in the given range."""
    meta: dict[str, Any] = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if note:
        meta["note"] = note
    return field(default=default, metadata=meta)


def _probability(default: float) -> Any:
    return _num(default, ge=0.0, le=1.0, note="a probability")


class _Checked:
    """Dataclass mixin: ``__post_init__`` checks every number against its field's range."""

    #: The dotted table the dataclass is read from (``"train.augment"``), for error messages.
    TABLE: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # a mixin: self is always a dataclass
            value = getattr(self, f.name)
            if f.metadata:
                _check_range(f"{self.TABLE}.{f.name}" if self.TABLE else f.name, value, f.metadata)


def _check_range(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        ok = math.isfinite(v)
        ok = ok and ("ge" not in meta or v >= meta["ge"]) and ("gt" not in meta or v > meta["gt"])
        ok = ok and ("le" not in meta or v <= meta["le"]) and ("lt" not in meta or v < meta["lt"])
        if not ok:
            bounds = [f"{op} {meta[name]:g}" for name, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if name in meta]
            note = f" ({meta['note']})" if "note" in meta else ""
            raise ConfigError(key, f"config key {key!r}: {value!r} must be {' and '.join(bounds)}{note}")


# ------------------------------------------------------------------------------------- model
@dataclass
class GraphConfig(_Checked):
    """``[model.graph]``: the deformation blocks (perceptual pooling + G-ResNet on each template
    level, unpooling between levels) of the ``pixel2mesh`` and ``prior_graph`` networks."""

    TABLE: ClassVar[str] = "model.graph"
    #: Hidden channels of the G-ResNets (128 or 192).
    hidden: int = _num(128, ge=1, le=8192)
    #: Graph convolutions per block (Pixel2Mesh: 14 = input + 6 residual pairs + coordinate head).
    layers_per_block: int = _num(14, ge=1, le=512)
    #: Per-block G-ResNet widths, coarse to fine (empty: ``hidden`` everywhere; ``prior_graph``
    #: only), e.g. (96, 64, 32, 16) so the 7,001-vertex level stops dominating the cost.
    hidden_per_block: tuple[int, ...] = _num((), ge=1, le=8192)
    #: Per-block graph convolution counts (empty: ``layers_per_block`` everywhere; ``prior_graph`` only).
    layers_per_block_list: tuple[int, ...] = _num((), ge=1, le=512)
    #: ``prior_graph`` only: graph blocks refine the first this many template levels; each finer
    #: level is the previous one's refined face unpooled onto the base face (no block of its own).
    #: None: every level has a block. On a face-model ground truth the finer blocks learn next to
    #: nothing (docs/default-model.md), and they cost most of the network's time.
    refined_levels: int | None = _num(None, ge=1, le=64)
    #: Learn the position of each new vertex on its edge (face paper) instead of the midpoint.
    adaptive_unpool: bool = True
    #: Where the first graph convolution applies W0/W1 to image features: "auto" (cheaper per map),
    #: "pre" (1x1 conv on the map, then sample), "post" (sample, then multiply). Same result.
    project_mode: Literal["auto", "pre", "post"] = "auto"


@dataclass
class Pixel2MeshConfig(_Checked):
    """``[model.pixel2mesh]``: what only the ``pixel2mesh`` network (model v1) has."""

    TABLE: ClassVar[str] = "model.pixel2mesh"
    #: Template placement: crop = template * scale + offset (per axis, crop units).
    template_scale: tuple[float, float, float] = _num((0.85, 0.85, 0.85), gt=0.0)
    template_offset: tuple[float, float, float] = _num((0.0, 0.0, 0.4))
    #: "offset": block output = input coordinates + predicted offsets; "absolute" (Pixel2Mesh).
    coord_mode: Literal["offset", "absolute"] = "offset"
    #: Per-vertex RGB head on the last block.
    colour: bool = False


@dataclass
class CameraConfig(_Checked):
    """``[model.camera]``: the projection of the ``pixel2mesh`` network's vertices onto the image
    (the prior networks are orthographic: faces, in the crop frame)."""

    TABLE: ClassVar[str] = "model.camera"
    #: "orthographic" (faces, crop frame) or "pinhole" (objects: focal / principal in px of ref_size).
    projection: Literal["orthographic", "pinhole"] = "orthographic"
    focal: float = _num(248.0, gt=0.0)
    principal: float = _num(111.5)
    ref_size: float = _num(224.0, gt=0.0)


@dataclass
class PriorConfig(_Checked):
    """``[model.prior]``: the posed prior face of the ``prior_graph`` and ``prior_spiral`` networks.

    A global head regresses a scaled-orthographic pose and the coefficients of a shape basis
    learned from the training faces (facerecon.model.face_prior), so the refinement starts from a
    posed, plausible face. Needs ground truth in the face model's vertex order (3DMM caches)."""

    TABLE: ClassVar[str] = "model.prior"
    #: PCA modes of the shape basis.
    components: int = _num(40, ge=1, le=10_000)
    #: Use MTCNN's five points: align the crop to their mean position before the backbone, and
    #: start the pose from the mean face's five-point fit.
    five_point: bool = True
    #: Hidden channels of the global pose/shape head.
    head_hidden: int = _num(256, ge=1, le=65_536)
    #: The head's view of the deepest map: "mean" (global average) or "grid" (average-pooled to
    #: 4 x 4 and flattened, keeping the spatial layout that pose needs).
    head_pool: Literal["mean", "grid"] = "mean"
    #: Also feed the head the 256-d features of MTCNN's pretrained output network (ONet, the
    #: weights that ship with facenet-pytorch; frozen) on the aligned crop at 48 px.
    onet_features: bool = False


@dataclass
class SpiralConfig(_Checked):
    """``[model.spiral]``: the ``prior_spiral`` network's coarse spiral-convolution decoder from the
    head's embedding and its spiral refinement network (facerecon.model.spiral)."""

    TABLE: ClassVar[str] = "model.spiral"
    #: Decoder widths per template level, coarse to fine.
    widths: tuple[int, ...] = _num((32, 32, 16, 8), ge=1, le=8192)
    #: Spiral hops (rings) per template level.
    hops: tuple[int, ...] = _num((1, 1, 1, 1), ge=1, le=64)


@dataclass
class FaceVisionConfig(_Checked):
    """``[model.facevision]``: the FaceVision-GAN family (facerecon.model.facevision): the U-Net
    generator and its two PatchGAN discriminators, the generator's loss weights (the same for the
    depth and the correspondence output), and how the mesh is made from the predicted depth map
    (facerecon.mesh.from_depth.RefineOptions)."""

    TABLE: ClassVar[str] = "model.facevision"
    #: Side of the network's input crop and of its maps, px (a multiple of 2^levels).
    input_size: int = _num(128, ge=8, le=1024)
    #: The generator's first encoder width and its levels (each halves the side).
    channels: int = _num(16, ge=1, le=512)
    levels: int = _num(5, ge=2, le=8)
    #: The discriminators' first width.
    disc_channels: int = _num(16, ge=1, le=512)
    #: The generator's adversarial weight (0: trained without the discriminators), lambda_1 (L1 of
    #: the maps) and lambda_g (L1 of their image gradients).
    adversarial: float = _num(1.0, ge=0.0)
    lambda_1: float = _num(100.0, ge=0.0)
    lambda_g: float = _num(100.0, ge=0.0)
    #: Spike thresholds of the refinement (times the median edge length and area).
    edge_factor: float = _num(4.0, gt=0.0)
    area_factor: float = _num(16.0, gt=0.0)
    #: Laplacian smoothing of the depth (iterations; 0: none) and its step.
    smooth_iterations: int = _num(10, ge=0, le=1000)
    smooth_lambda: float = _num(0.5, gt=0.0, le=1.0)
    #: Detail filling from the crop: px of the 224 px crop per unit of grey high-pass (0: none),
    #: and the low-pass's sigma in px of the crop.
    detail_gain: float = _num(2.0, ge=0.0)
    detail_sigma_px: float = _num(3.0, gt=0.0)
    #: How the 68 landmarks come from the correspondence map: "fit" (the mean face's landmarks
    #: carried by an affine map fitted to every face pixel's code, trimmed of outliers) or
    #: "nearest" (the pixel whose code is nearest each landmark's, the paper's).
    landmarks: Literal["fit", "nearest"] = "fit"
    #: Complete the surface the depth map does not show (the far cheek and ear of a turned face)
    #: with the face model's mean face posed on the maps (needs a network trained with a face
    #: model), and how far behind the map's surface, crop units, a face-model vertex counts as hidden.
    complete_hidden: bool = True
    hidden_margin: float = _num(0.05, ge=0.0)


#: The nested ``[model.*]`` tables and the network kinds that read them; a key of a table the
#: chosen kind does not read is an error.
FAMILY_TABLES: dict[str, tuple[str, ...]] = {
    "graph": ("pixel2mesh", "prior_graph"),
    "pixel2mesh": ("pixel2mesh",),
    "camera": ("pixel2mesh",),
    "prior": ("prior_graph", "prior_spiral"),
    "spiral": ("prior_spiral",),
    "facevision": ("facevision",),
}


@dataclass
class ModelConfig(_Checked):
    """The network (facerecon.model.network.build_network): what every family shares, then one
    table per family part (``FAMILY_TABLES``; the tables of other kinds keep their defaults)."""

    TABLE: ClassVar[str] = "model"
    #: The network family (``NetworkKind``).
    kind: NetworkKind = "pixel2mesh"
    #: "hemisphere" (faces, 141 -> 7001 vertices), "ellipsoid" (objects, 156 -> 2466), or a template file.
    template: str = "hemisphere"
    #: vgg16 | resnet18 | resnet50 | resnet50_vggface2 (face paper) | mobilenet_v2 | mobilenet_v2_050 (width 0.5).
    backbone: str = "resnet50_vggface2"
    #: Local state dict for the backbone (torch.save of a torchvision-style model); None: random init.
    backbone_weights: str | None = None
    #: Keep the backbone fixed (no gradients, BatchNorm in eval mode).
    freeze_backbone: bool = False
    #: Template levels used (deformation blocks); None: all (4 on the hemisphere, 3 on the ellipsoid).
    blocks: int | None = _num(None, ge=1, le=64)
    #: Resize the crops to this side (px) before the backbone; None keeps them as given (224 from
    #: the data pipeline). Smaller inputs (e.g. 128) make CPU training and inference faster.
    image_size: int | None = _num(None, ge=1, le=8192)
    #: 68 soft-assignment landmark head on the last block.
    landmarks: bool = True
    #: Number of landmarks of the landmark head.
    num_landmarks: int = _num(68, ge=1, le=100_000)
    graph: GraphConfig = field(default_factory=GraphConfig)
    pixel2mesh: Pixel2MeshConfig = field(default_factory=Pixel2MeshConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    spiral: SpiralConfig = field(default_factory=SpiralConfig)
    facevision: FaceVisionConfig = field(default_factory=FaceVisionConfig)

    @property
    def starts_from_prior(self) -> bool:
        """The network starts from the posed prior face (``prior_graph``, ``prior_spiral``)."""
        return self.kind in FAMILY_TABLES["prior"]


# ------------------------------------------------------------------------------------- loss
@dataclass
class LossConfig(_Checked):
    """Loss weights (facerecon.losses.MeshLoss). Face paper defaults."""

    TABLE: ClassVar[str] = "loss"
    chamfer: float = _num(1.0, ge=0.0)
    #: Chamfer weight per block (first block softer); the first ``blocks`` entries are used.
    chamfer_block_weights: tuple[float, ...] = _num((0.5, 1.0, 1.0, 1.0), ge=0.0)
    normal: float = _num(1.6e-4, ge=0.0)
    laplace: float = _num(0.5, ge=0.0)
    move: float = _num(0.033, ge=0.0)
    edge: float = _num(0.1, ge=0.0)
    landmark: float = _num(1.0, ge=0.0)
    colour: float = _num(1.0, ge=0.0)
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
    laplace_start: float = _num(5.0, ge=0.0)
    laplace_epochs: int = _num(20, ge=0)
    #: Per-vertex correspondence loss (mean Euclidean distance to the template-topology ground
    #: truth, crop units) per block, with ``chamfer_block_weights``; needs ground truth in the
    #: face model's order (the batch's ``vertices``). 0 disables.
    vertex: float = _num(0.0, ge=0.0)
    #: The same distance for the posed prior face before refinement (the prior networks).
    base: float = _num(0.0, ge=0.0)
    #: Normal consistency on the final mesh: ``mean over interior edges of 1 - cos`` between
    #: the two faces' normals (folds cost most). 0 disables.
    normal_consistency: float = _num(0.0, ge=0.0)
    #: Face-normal agreement with the template-topology ground truth, ``mean_f 1 - cos``. 0 disables.
    gt_normal: float = _num(0.0, ge=0.0)
    #: "squared": ``mean_k |l_k - g_k|^2``; "euclidean": ``mean_k |l_k - g_k|`` (like the NME).
    landmark_norm: Literal["squared", "euclidean"] = "squared"


# ------------------------------------------------------------------------------------- train
@dataclass
class AugmentConfig(_Checked):
    """``[train.augment]``: on-the-fly augmentation of the training crops (facerecon.data.augment),
    applied consistently to the image, points, normals, landmarks and five points. The one
    definition of these settings: ``facerecon.data.augment`` takes this table as it is."""

    TABLE: ClassVar[str] = "train.augment"
    #: Augment the training crops at all.
    enabled: bool = False
    #: Max in-plane rotation (degrees), crop-box scale jitter (fraction) and shift (crop units).
    rotation_deg: float = _num(30.0, ge=0.0)
    scale: float = _num(0.1, ge=0.0, lt=1.0, note="a fraction of the crop")
    shift: float = _num(0.06, ge=0.0)
    #: Std of the noise added to the five points (crop units), as MTCNN's own error.
    five_noise: float = _num(0.01, ge=0.0)
    #: Probability of dropping the five points (the network then sees the crop unaligned, as
    #: when MTCNN finds no face and the crop is the average crop): teaches that case too.
    drop_five: float = _probability(0.0)
    #: Probability of replacing the five points by a gross MTCNN failure: the face's true five
    #: points (from its 68 landmarks) plus the error MTCNN made on another training face of
    #: similar |yaw| where it missed by more than 0.1 of the face size (mirrored when the yaws'
    #: signs differ). Teaches the network not to trust five points that disagree with the image.
    five_outlier: float = _probability(0.0)
    #: Probabilities: horizontal flip, colour jitter, grey-scale, blur, noise, occlusion patch.
    flip: float = _probability(0.5)
    colour: float = _probability(0.8)
    grey: float = _probability(0.1)
    blur: float = _probability(0.1)
    noise: float = _probability(0.1)
    occlusion: float = _probability(0.3)


@dataclass
class TrainConfig(_Checked):
    """Optimisation (facerecon train). Face paper: Adam, lr 1e-4, x0.3 at 25/40/60, 80 epochs."""

    TABLE: ClassVar[str] = "train"
    batch_size: int = _num(8, ge=1)
    epochs: int = _num(80, ge=1)
    #: The cache splits trained on: ("train",), or ("train", "val") for a final model once the
    #: recipe is chosen (validation is then skipped: those faces are trained on).
    splits: tuple[Literal["train", "val", "test"], ...] = ("train",)
    lr: float = _num(1e-4, gt=0.0)
    milestones: tuple[int, ...] = _num((25, 40, 60), ge=1)
    gamma: float = _num(0.3, gt=0.0)
    weight_decay: float = _num(0.0, ge=0.0)
    #: Gradient norm clip; 0 disables.
    grad_clip: float = _num(0.0, ge=0.0)
    seed: int = _num(0, ge=0)
    #: Mixed precision (CUDA only; ignored on CPU).
    amp: bool = True
    num_workers: int = _num(2, ge=0)
    #: Ground-truth points drawn per region (boundary, sub-priority 10-17 mm, key < 10 mm).
    points_per_region: tuple[int, int, int] = _num((11000, 4000, 3000), ge=0)
    #: At the start of a run, place the template on the training split's mean face (axis-aligned
    #: bounding-box fit); the fitted model.pixel2mesh.template_scale / template_offset are saved in
    #: the run's config. Needs ground truth with one shared topology (3DMM caches); skipped otherwise.
    fit_template: bool = True
    #: At the start of a run, start the landmark head around the mean training landmarks.
    init_landmarks: bool = True
    #: Times each training face is seen per epoch by its |yaw| bin (0-30, 30-60, 60-90 degrees);
    #: fractions repeat a fixed share of the bin. Profiles are rare in the data and hardest.
    yaw_repeat: tuple[float, float, float] = _num((1.0, 1.0, 1.0), ge=0.0)
    #: Face-profiled views (``prepare --profile-views``) served per epoch, after the photos: a
    #: fresh seeded draw each epoch. -1: every view of the cache each epoch; 0: none.
    profile_views_per_epoch: int = _num(-1, ge=-1)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# ------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Override:
    """One dotted-key value to apply, and where it came from (for error messages): e.g.
    ``Override("train.lr", 3e-5, "--set train.lr=3e-5")`` or ``Override("train.epochs", 2, "--epochs")``."""

    key: str
    value: Any
    source: str


@dataclass
class Config:
    """Everything a run needs; ``to_dict`` is what checkpoints store."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """A nested dict of plain Python values (tuples as lists; TOML/JSON/torch-safe), without the
        ``[model.*]`` tables the network kind does not read."""
        data = _to_plain(dataclasses.asdict(self))
        for table, kinds in FAMILY_TABLES.items():
            if self.model.kind not in kinds:
                del data["model"][table]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str | os.PathLike[str] | None = None) -> "Config":
        """Build from a nested dict (the current spelling or an earlier one, see ``upgrade_dict``);
        missing keys keep their defaults.

        Args:
            data: the nested dict.
            source: where it came from (a file name), prefixed to error messages.

        Raises:
            ConfigError: an unknown key, a key of another network kind's table, a value of the
                wrong type or out of range: one line naming the dotted key (and ``source``).
        """
        try:
            return _build(cls, upgrade_dict(data or {}), "")
        except ConfigError as exc:
            raise _sourced(exc, source) from None

    def replace(self, overrides: Mapping[str, Any] | Iterable[Override], source: str | os.PathLike[str] | None = None) -> "Config":
        """A copy with dotted-key overrides applied, e.g. ``{"train.lr": 1e-5}``.

        Args:
            overrides: dotted key -> value, or ``Override`` items (their source names the key in errors).
            source: where this configuration came from, named in errors about keys no override set.

        Raises:
            ConfigError: as ``from_dict``; an unknown key names the current spelling of an old one.
        """
        items = [Override(k, v, "") for k, v in overrides.items()] if isinstance(overrides, Mapping) else list(overrides)
        data = self.to_dict()
        for item in items:
            try:
                _set_dotted(data, item.key, item.value)
            except ConfigError as exc:
                raise _sourced(exc, item.source) from None
        _drop_default_tables(data["model"], items)
        try:
            return _build(Config, data, "")
        except ConfigError as exc:
            raise _sourced(exc, _source_of(exc.key, items, source)) from None


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, Any] | Iterable[Override] | None = None) -> Config:
    """Defaults, then a TOML file (if given), then dotted ``overrides`` (if given).

    Raises:
        InputError: unreadable / invalid TOML (naming the file); ``ConfigError``: unknown keys,
            wrong types, values out of range (naming the key and the file or the override).
    """
    cfg = Config()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise InputError(f"{os.fspath(path)}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{os.fspath(path)}: invalid TOML ({exc})") from None
        cfg = Config.from_dict(data, source=path)
    return cfg.replace(overrides, source=path) if overrides else cfg


def command_line_overrides(sets: Sequence[str], flags: Mapping[str, tuple[str, Any]] | None = None) -> list[Override]:
    """``--set KEY=VALUE`` items and shortcut flags as one list of overrides.

    The rule: every key is given at most once, by its shortcut flag or by one ``--set``; a key
    given twice is an error naming both, whatever the values (so ``--epochs 2 --set
    train.epochs=3`` cannot train with either silently). Values are parsed as TOML (a bare word
    such as ``resnet18`` is a string); their types and ranges are checked when they are applied.

    Args:
        sets: the ``--set`` items, e.g. ``["train.lr=3e-5", "model.backbone=resnet18"]``.
        flags: dotted key -> (flag name, value or None when the flag was not given), e.g.
            ``{"train.epochs": ("--epochs", 2)}``.

    Raises:
        InputError: an item without ``=``, or a key given twice.
    """
    out: list[Override] = []
    seen: dict[str, str] = {}

    def add(key: str, value: Any, source: str) -> None:
        if key in seen:
            raise ConfigError(key, f"{seen[key]} and {source} both set {key}: give it once")
        seen[key] = source
        out.append(Override(key, value, source))

    for item in sets:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-5")
        key, raw = (part.strip() for part in item.split("=", 1))
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string such as resnet18
        add(key, value, f"--set {item}")
    for key, (flag, value) in (flags or {}).items():
        if value is not None:
            add(key, value, flag)
    return out


# ------------------------------------------------------------------------------------- earlier spellings
#: ``[model]`` keys of the flat spelling of earlier versions (one table of 31 keys): old key ->
#: (new key under ``model``, the network kinds that read it then). ``start`` and ``decoder`` become
#: ``kind``; a key the old network kind did not read is dropped (it had no effect: the same network
#: is built; every checkpoint stores every key, and the shipped configs carried some).
LEGACY_MODEL_KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    **{k: (f"graph.{k}", ("pixel2mesh", "prior_graph")) for k in ("hidden", "layers_per_block", "project_mode", "adaptive_unpool")},
    **{k: (f"graph.{k}", ("prior_graph",)) for k in ("hidden_per_block", "layers_per_block_list")},
    **{k: (f"pixel2mesh.{k}", ("pixel2mesh",)) for k in ("template_scale", "template_offset", "coord_mode", "colour")},
    **{k: (f"camera.{k}", ("pixel2mesh",)) for k in ("projection", "focal", "principal", "ref_size")},
    "prior_components": ("prior.components", ("prior_graph", "prior_spiral")),
    **{k: (f"prior.{k}", ("prior_graph", "prior_spiral")) for k in ("five_point", "head_hidden", "head_pool", "onet_features")},
    "spiral_widths": ("spiral.widths", ("prior_spiral",)),
    "spiral_hops": ("spiral.hops", ("prior_spiral",)),
}
#: ``[train]`` keys of the flat spelling -> their key under ``train``.
LEGACY_TRAIN_KEYS: dict[str, str] = {
    "augment": "augment.enabled",  # a boolean then, the table now
    "aug_rotation": "augment.rotation_deg",
    **{f"aug_{k}": f"augment.{k}" for k in (
        "scale", "shift", "five_noise", "drop_five", "five_outlier", "flip", "colour", "grey", "blur", "noise", "occlusion")},
}
_KIND_OF_START = {("template", "graph"): "pixel2mesh", ("prior", "graph"): "prior_graph", ("prior", "spiral"): "prior_spiral"}


def upgrade_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration dict in the current spelling: ``[model]`` and ``[train]`` tables in the
    flat spelling of earlier versions are translated (``LEGACY_MODEL_KEYS``, ``LEGACY_TRAIN_KEYS``,
    ``model.start`` / ``model.decoder`` -> ``model.kind``); current ones are returned as they are.

    Raises:
        ConfigError: a table mixing both spellings, an unknown ``start`` / ``decoder``, or an old
            key with a value the old network kind ignored (naming the key: remove it).
    """
    if not isinstance(data, Mapping):
        raise ConfigError("", f"a configuration is a table, got {data!r}")
    out = dict(data)
    if isinstance(out.get("model"), Mapping):
        out["model"] = _upgrade_model(out["model"])
    if isinstance(out.get("train"), Mapping):
        out["train"] = _upgrade_train(out["train"])
    return out


def _upgrade_model(model: Mapping[str, Any]) -> dict[str, Any]:
    old = [k for k in model if k in LEGACY_MODEL_KEYS or k in ("start", "decoder")]
    if not old:
        return dict(model)
    if "kind" in model or any(isinstance(model.get(t), Mapping) for t in FAMILY_TABLES):
        key = old[0]
        new = LEGACY_MODEL_KEYS[key][0] if key in LEGACY_MODEL_KEYS else "kind"
        raise ConfigError(f"model.{key}", f"config key 'model.{key}' is the earlier spelling of 'model.{new}': rename it")
    start, decoder = model.get("start", "template"), model.get("decoder", "graph")
    if start not in ("template", "prior"):
        raise ConfigError("model.start", f"config key 'model.start': {start!r} is not one of 'template', 'prior'")
    if decoder not in ("graph", "spiral"):
        raise ConfigError("model.decoder", f"config key 'model.decoder': {decoder!r} is not one of 'graph', 'spiral'")
    kind = _KIND_OF_START[(start, decoder if start == "prior" else "graph")]
    out: dict[str, Any] = {k: v for k, v in model.items() if k not in old}
    out["kind"] = kind
    for key in old:
        if key in ("start", "decoder"):
            continue
        new, readers = LEGACY_MODEL_KEYS[key]
        table, name = new.split(".")
        if kind in readers:
            out.setdefault(table, {})[name] = model[key]
        elif key == "adaptive_unpool" and model[key] is not True:
            # the spiral network holds (unused) adaptive unpoolings: their weights followed this key
            raise ConfigError("model.adaptive_unpool", "config key 'model.adaptive_unpool' = false: a spiral-decoder "
                              "network of that kind is no longer built; retrain it or set the key to true")
    return out


def _upgrade_train(train: Mapping[str, Any]) -> dict[str, Any]:
    old = [k for k in train if k in LEGACY_TRAIN_KEYS and not (k == "augment" and isinstance(train[k], Mapping))]
    if not old:
        return dict(train)
    if isinstance(train.get("augment"), Mapping):
        raise ConfigError(f"train.{old[0]}", f"config key 'train.{old[0]}' is the earlier spelling of "
                          f"'train.{LEGACY_TRAIN_KEYS[old[0]]}': rename it")
    out: dict[str, Any] = {k: v for k, v in train.items() if k not in old}
    out["augment"] = {LEGACY_TRAIN_KEYS[k].split(".", 1)[1]: train[k] for k in old}
    return out


def _legacy_hint(key: str) -> str:
    """`` (now 'model.graph.hidden')`` for a dotted key of the flat spelling, else ''."""
    section, _, name = key.partition(".")
    if section == "model" and name in ("start", "decoder"):
        return "; the network is chosen by model.kind now ('pixel2mesh', 'prior_graph', 'prior_spiral')"
    if section == "model" and name in LEGACY_MODEL_KEYS:
        return f"; it is 'model.{LEGACY_MODEL_KEYS[name][0]}' now"
    if section == "train" and name in LEGACY_TRAIN_KEYS:
        return f"; it is 'train.{LEGACY_TRAIN_KEYS[name]}' now"
    return ""


# ------------------------------------------------------------------------------------- helpers
def _sourced(exc: ConfigError, source: str | os.PathLike[str] | None) -> ConfigError:
    """``exc`` with ``source: `` in front (unchanged without a source)."""
    if not source:
        return exc
    return ConfigError(exc.key, f"{os.fspath(source)}: {exc}")


def _source_of(key: str, items: Sequence[Override], base: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """The source of the override that set ``key`` (or a table holding it, or a key in it), else ``base``."""
    for item in items:
        if item.key == key or item.key.startswith(key + ".") or key.startswith(item.key + "."):
            return item.source
    return base


def _drop_default_tables(model: dict[str, Any], items: Sequence[Override]) -> None:
    """Leave out the ``[model.*]`` tables of the kind a ``model.kind`` override replaced, where they
    hold their defaults and no override set them (non-default values are refused by ``_build``)."""
    hints = typing.get_type_hints(ModelConfig)
    for table, readers in FAMILY_TABLES.items():
        if model.get("kind") in readers or table not in model:
            continue
        if any(item.key.startswith(f"model.{table}.") for item in items):
            continue
        if model[table] == _to_plain(dataclasses.asdict(hints[table]())):
            del model[table]


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``key = "a.b.c"``, a leaf of ``Config``; a family table that
    ``to_dict`` left out is created."""
    node: dict[str, Any] = data
    cls: type = Config
    parts = key.split(".")
    for part in parts[:-1]:
        sub = _table_type(cls, part)
        if sub is None:
            raise ConfigError(key, f"unknown config key {key!r}{_legacy_hint(key)}")
        node, cls = node.setdefault(part, {}), sub
    names = {f.name for f in dataclasses.fields(cls)}
    if parts[-1] not in names or _table_type(cls, parts[-1]) is not None:
        raise ConfigError(key, f"unknown config key {key!r}{_legacy_hint(key)}")
    node[parts[-1]] = value


def _table_type(cls: type, name: str) -> type | None:
    """The dataclass of field ``name`` of ``cls`` when it is a nested table, else None."""
    if not any(f.name == name for f in dataclasses.fields(cls)):
        return None
    tp = typing.get_type_hints(cls)[name]
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        name = prefix.rstrip(".")
        raise ConfigError(name, f"config section {name or '<root>'!r} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            dotted = prefix + key
            raise ConfigError(dotted, f"unknown config key {dotted!r}{_legacy_hint(dotted) or ' (known: ' + ', '.join(sorted(names)) + ')'}")
    if cls is ModelConfig:
        _check_family(data, hints["kind"])
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")  # type: ignore[arg-type]  # an annotation: a class, never an instance
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def _check_family(model: Mapping[str, Any], kind_type: Any) -> None:
    """Refuse a key of a ``[model.*]`` table that ``model.kind`` does not read (named, with its readers)."""
    kind = _coerce(model.get("kind", ModelConfig.kind), kind_type, "model.kind")
    for table, readers in FAMILY_TABLES.items():
        if table in model and kind not in readers:
            inner = model[table]
            key = f"model.{table}" + (f".{next(iter(inner))}" if isinstance(inner, Mapping) and inner else "")
            who = " and ".join(repr(r) for r in readers)
            raise ConfigError(key, f"config key {key!r} does not apply to model.kind = {kind!r} ([model.{table}] "
                                   f"is read by {who} networks only): remove it or change model.kind")


#: The scalar annotations and which values each accepts (a bool is no number here).
_SCALARS: tuple[tuple[type, Callable[[Any], bool]], ...] = (
    (bool, lambda v: isinstance(v, bool)),
    (int, lambda v: isinstance(v, int) and not isinstance(v, bool)),
    (float, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    (str, lambda v: isinstance(v, str)),
)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"config key {key!r}: {value!r} is not {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in args:
            return value
        raise ConfigError(key, f"config key {key!r}: {value!r} is not one of {', '.join(map(repr, args))}")
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], key) for v in value)
            if len(value) == len(args):
                return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    else:
        for scalar, accepts in _SCALARS:
            if tp is scalar and accepts(value):
                return float(value) if scalar is float else value
    raise ConfigError(key, f"config key {key!r}: {value!r} is not {_type_name(tp)}")


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
