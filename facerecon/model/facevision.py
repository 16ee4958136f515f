"""The FaceVision-GAN family: an image-to-image network from a face crop to its depth map and its
correspondence (PNCC) map, its two PatchGAN discriminators and its losses (Avola et al.,
"FaceVision-GAN"; docs/facevision.md).

* :class:`FaceVisionGenerator`: a U-Net with **one encoder and two decoders**. The encoder halves
  the 128 px crop ``levels`` times (4 x 4 convolutions of stride 2); each decoder doubles it back
  (4 x 4 transposed convolutions), concatenating at every scale the encoder's features of that
  scale (skip connections from the one encoder to both decoders). The depth decoder ends in one
  channel, the PNCC decoder in three, both through a sigmoid (the maps' codes lie in [0, 1];
  ``facerecon.data.facevision_maps`` defines them).
* :class:`PatchDiscriminator`: pix2pix's PatchGAN on the image concatenated with a map: three
  stride-2 layers and two stride-1 layers of 4 x 4 convolutions, a 70 x 70 px receptive field,
  one real/fake logit per patch (14 x 14 of them for a 128 px crop). One per output.
* Losses, per output: the generator's ``adversarial * BCE(D(image, fake), real) + l1 *
  L1(map, target) + gradient * L1(grad map, grad target)``; each discriminator's
  ``(BCE(D(real), 1) + BCE(D(fake), 0)) / 2``. Masks where the target has no face (depth code 0):
  the depth L1 counts every pixel (the background's 0 is what the network must learn to draw the
  silhouette), the PNCC L1 counts face pixels only (the code means nothing elsewhere), and both
  gradient terms count pixel pairs inside the face only (the silhouette's step is not a gradient
  of the surface).

Images enter as ``(B, 3, H, W)`` float in [0, 1] (:func:`network_input` resizes the cache's 224 px
crops); maps are ``(B, 1 or 3, H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerecon.errors import InputError

__all__ = [
    "FaceVisionGAN",
    "FaceVisionGenerator",
    "FaceVisionNet",
    "LossWeights",
    "PatchDiscriminator",
    "discriminator_loss",
    "generator_losses",
    "gradient_l1",
    "image_gradients",
    "masked_l1",
    "network_input",
    "train_step",
]

#: The network's input and output side, px.
INPUT_SIZE = 128


def network_input(crops: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """Crops ``(B, H, W, 3)`` uint8 (the cache's 224 px images) -> ``(B, 3, size, size)`` float in [0, 1]
    (bilinear with antialiasing, ``align_corners=False``: the maps' pixel grid)."""
    x = crops.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _down(cin: int, cout: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Decoder(nn.Module):
    """Up from the bottleneck, concatenating the encoder's features of each scale; ``out`` channels through a sigmoid."""

    def __init__(self, widths: list[int], out: int) -> None:
        super().__init__()
        ups = [_up(widths[-1], widths[-2])]
        for k in range(len(widths) - 2, 0, -1):  # input: this scale's decoder + encoder features
            ups.append(_up(2 * widths[k], widths[k - 1]))
        self.ups = nn.ModuleList(ups)
        self.head = nn.ConvTranspose2d(2 * widths[0], out, 4, stride=2, padding=1)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1])):
            x = torch.cat([up(x), skip], dim=1)
        return torch.sigmoid(self.head(x))


class FaceVisionGenerator(nn.Module):
    """One encoder, a depth decoder and a PNCC decoder, with skip connections to both.

    Args:
        channels: the first encoder level's width; level ``k`` has ``min(channels 2^k, 8 channels)``.
        levels: encoder levels (each halves the side: 5 takes 128 px to 4 px).
    """

    def __init__(self, channels: int = 16, levels: int = 5) -> None:
        super().__init__()
        if levels < 2 or channels < 1:
            raise InputError(f"the FaceVision generator needs levels >= 2 and channels >= 1, got {levels}, {channels}")
        self.widths = [min(channels * 2**k, channels * 8) for k in range(levels)]
        downs, cin = [], 3
        for k, w in enumerate(self.widths):
            downs.append(_down(cin, w, norm=0 < k < levels - 1))
            cin = w
        self.encoder = nn.ModuleList(downs)
        self.depth_decoder = _Decoder(self.widths, 1)
        self.pncc_decoder = _Decoder(self.widths, 3)

    def encode(self, images: Tensor) -> list[Tensor]:
        """The encoder's features at every level, finest first: ``(B, widths[k], H / 2^(k+1), W / 2^(k+1))``."""
        side = 2 ** len(self.widths)
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % side or images.shape[-2] % side:
            raise InputError(f"the FaceVision generator expects (B, 3, H, W) images with H, W multiples of {side}, got {tuple(images.shape)}")
        x, feats = images * 2.0 - 1.0, []
        for down in self.encoder:
            x = down(x)
            feats.append(x)
        return feats

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images`` ``(B, 3, H, W)`` in [0, 1] -> depth codes ``(B, 1, H, W)`` and PNCC ``(B, 3, H, W)``, both in (0, 1)."""
        feats = self.encode(images)
        return self.depth_decoder(feats), self.pncc_decoder(feats)


class PatchDiscriminator(nn.Module):
    """pix2pix's 70 x 70 PatchGAN on ``cat(image, map)``: one logit per patch.

    Args:
        map_channels: 1 (depth) or 3 (PNCC); channels: the first layer's width.
    """

    def __init__(self, map_channels: int, channels: int = 16) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3 + map_channels, c, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            _down(c, 2 * c, norm=True),
            _down(2 * c, 4 * c, norm=True),
            nn.Conv2d(4 * c, 8 * c, 4, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(8 * c),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(8 * c, 1, 4, stride=1, padding=1),
        )

    def forward(self, images: Tensor, maps: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images in [0, 1] and ``(B, C, H, W)`` maps -> ``(B, 1, H/8 - 2, W/8 - 2)`` logits."""
        return self.net(torch.cat([images * 2.0 - 1.0, maps * 2.0 - 1.0], dim=1))


class FaceVisionGAN(nn.Module):
    """The generator and one discriminator per output (``disc_depth``, ``disc_pncc``)."""

    def __init__(self, channels: int = 16, levels: int = 5, disc_channels: int = 16) -> None:
        super().__init__()
        self.generator = FaceVisionGenerator(channels, levels)
        self.disc_depth = PatchDiscriminator(1, disc_channels)
        self.disc_pncc = PatchDiscriminator(3, disc_channels)

    def discriminators(self) -> list[nn.Module]:
        """Both discriminators (one optimizer usually holds their parameters)."""
        return [self.disc_depth, self.disc_pncc]


class FaceVisionNet(nn.Module):
    """The family's network as ``facerecon train`` saves it and ``eval`` / ``predict`` load it
    (``model.kind = "facevision"``): the GAN (:class:`FaceVisionGAN`: the generator and both
    discriminators, so a checkpoint resumes the adversarial training) and the 68 landmarks' codes on
    the mean face (a buffer, from the maps side file: where ``predict`` looks for each landmark in
    the predicted correspondence map).

    ``forward`` takes the data pipeline's crops ``(B, 3, S, S)`` float in [0, 1] (any ``S``: resized
    to ``input_size`` as :func:`network_input` does) and returns the depth and PNCC maps
    ``(B, 1, N, N)``, ``(B, 3, N, N)`` at ``N = input_size``.
    """

    #: The data pipeline reads it: this network takes no five points.
    takes_five_points = False
    landmark_codes: Tensor  # (68, 3) buffer

    def __init__(self, input_size: int = INPUT_SIZE, channels: int = 16, levels: int = 5, disc_channels: int = 16) -> None:
        super().__init__()
        if input_size % 2**levels:
            raise InputError(f"model.facevision.input_size {input_size} must be a multiple of 2^levels = {2**levels}")
        self.input_size = int(input_size)
        #: the ``[model.facevision]`` table it was built from (how its meshes are refined), or None
        self.settings: Any = None
        self.gan = FaceVisionGAN(channels, levels, disc_channels)
        self.register_buffer("landmark_codes", torch.zeros(68, 3))
        # The face model (every vertex's code and its triangles) that completes the surface the
        # depth map does not show; None until training (or a checkpoint) sets it.
        self.face_codes: Tensor | None
        self.face_triangles: Tensor | None
        self.register_buffer("face_codes", None)
        self.register_buffer("face_triangles", None)

    def set_face_model(self, codes: Tensor | Any, triangles: Tensor | Any) -> None:
        """Keep the face model's vertex codes ``(V, 3)`` and triangles ``(F, 3)`` with the network
        (saved in its checkpoints): meshes are then completed where the depth map shows no surface."""
        device = self.landmark_codes.device
        self.face_codes = torch.as_tensor(codes, dtype=torch.float32).reshape(-1, 3).to(device)
        self.face_triangles = torch.as_tensor(triangles).to(dtype=torch.int32).reshape(-1, 3).to(device)

    @classmethod
    def from_config(cls, model_cfg: Any) -> "FaceVisionNet":
        """The network of a ``facerecon.config.ModelConfig`` (its ``[model.facevision]`` table)."""
        fv = model_cfg.facevision
        net = cls(fv.input_size, fv.channels, fv.levels, fv.disc_channels)
        net.settings = fv
        return net

    def images(self, crops: Tensor) -> Tensor:
        """Crops ``(B, 3, S, S)`` float in [0, 1] -> ``(B, 3, N, N)`` at the network's side (bilinear, antialiased)."""
        if crops.shape[-1] == self.input_size and crops.shape[-2] == self.input_size:
            return crops
        return F.interpolate(crops.float(), size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        """Crops ``(B, 3, S, S)`` in [0, 1] -> depth codes ``(B, 1, N, N)`` and PNCC ``(B, 3, N, N)``."""
        return self.gan.generator(self.images(crops))


# ---------------------------------------------------------------------------------------------- losses
@dataclass(frozen=True)
class LossWeights:
    """The generator's loss weights (the same for both outputs): ``adversarial`` (0 trains without
    the discriminators), ``l1`` (lambda_1, on the maps) and ``gradient`` (lambda_g, on their image
    gradients)."""

    adversarial: float = 1.0
    l1: float = 100.0
    gradient: float = 100.0


def image_gradients(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences of ``(B, C, H, W)`` maps: ``dx[..., i, j] = m[..., i, j + 1] - m[..., i, j]``
    ``(B, C, H, W - 1)`` and ``dy[..., i, j] = m[..., i + 1, j] - m[..., i, j]`` ``(B, C, H - 1, W)``."""
    return maps[..., :, 1:] - maps[..., :, :-1], maps[..., 1:, :] - maps[..., :-1, :]


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean ``|pred - target|`` over the pixels where ``mask`` (``(B, 1, H, W)``, broadcast over
    channels) holds, and over channels; every pixel without a mask; 0 when the mask is empty."""
    diff = (pred - target).abs()
    if mask is None:
        return diff.mean()
    m = mask.to(diff.dtype).expand_as(diff)
    return (diff * m).sum() / m.sum().clamp(min=1.0)


def gradient_l1(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """L1 of the maps' image gradients: ``mean |dx pred - dx target| + mean |dy pred - dy target|``,
    each mean over the pixel pairs whose both pixels are in ``mask`` (all pairs without one)
    and over channels. A map of slope ``(a, b)`` px^-1 against a constant target gives ``|a| + |b|``."""
    pdx, pdy = image_gradients(pred)
    tdx, tdy = image_gradients(target)
    if mask is None:
        return masked_l1(pdx, tdx) + masked_l1(pdy, tdy)
    m = mask.to(pred.dtype)
    return masked_l1(pdx, tdx, m[..., :, 1:] * m[..., :, :-1]) + masked_l1(pdy, tdy, m[..., 1:, :] * m[..., :-1, :])


def _gan_term(logits: Tensor, real: bool) -> Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def discriminator_loss(disc: nn.Module, images: Tensor, real_map: Tensor, fake_map: Tensor) -> Tensor:
    """A discriminator's GAN loss ``(BCE(D(image, real), 1) + BCE(D(image, fake), 0)) / 2``; the fake map is detached."""
    return 0.5 * (_gan_term(disc(images, real_map), True) + _gan_term(disc(images, fake_map.detach()), False))


def generator_losses(
    gan: FaceVisionGAN, images: Tensor, depth: Tensor, pncc: Tensor, depth_target: Tensor, pncc_target: Tensor, weights: LossWeights
) -> dict[str, Tensor]:
    """The generator's loss terms and their weighted ``total`` (module docstring: which pixels count).

    Args:
        images: ``(B, 3, H, W)``; depth, depth_target: ``(B, 1, H, W)`` codes (target 0: no face);
        pncc, pncc_target: ``(B, 3, H, W)``.

    Returns:
        ``depth_l1``, ``pncc_l1``, ``depth_grad``, ``pncc_grad``, ``depth_adv``, ``pncc_adv`` (0 when
        ``weights.adversarial`` is 0) and ``total``.
    """
    face = depth_target > 0
    terms = {
        "depth_l1": masked_l1(depth, depth_target),
        "pncc_l1": masked_l1(pncc, pncc_target, face),
        "depth_grad": gradient_l1(depth, depth_target, face),
        "pncc_grad": gradient_l1(pncc, pncc_target, face),
    }
    zero = depth.new_zeros(())
    adv = weights.adversarial != 0
    terms["depth_adv"] = _gan_term(gan.disc_depth(images, depth), True) if adv else zero
    terms["pncc_adv"] = _gan_term(gan.disc_pncc(images, pncc), True) if adv else zero
    terms["total"] = (
        weights.adversarial * (terms["depth_adv"] + terms["pncc_adv"])
        + weights.l1 * (terms["depth_l1"] + terms["pncc_l1"])
        + weights.gradient * (terms["depth_grad"] + terms["pncc_grad"])
    )
    return terms


def train_step(
    gan: FaceVisionGAN,
    images: Tensor,
    depth_target: Tensor,
    pncc_target: Tensor,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer | None,
    weights: LossWeights = LossWeights(),
    average_gradients: Callable[[list[nn.Parameter]], None] | None = None,
) -> dict[str, float]:
    """One pix2pix step: the discriminators on the generator's current maps, then the generator.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1]; depth_target ``(B, 1, H, W)``, pncc_target ``(B, 3, H, W)``.
        opt_g: the generator's optimizer; opt_d: the discriminators' (None when ``weights.adversarial`` is 0).
        average_gradients: called with each optimizer's parameters after its backward pass and
            before its step (several processes: the mean gradient over them), or None.

    Returns:
        The generator's terms (:func:`generator_losses`) and ``disc`` (the discriminators' mean loss) as floats.
    """
    gan.train()
    depth, pncc = gan.generator(images)
    disc = 0.0
    if weights.adversarial != 0:
        if opt_d is None:
            raise InputError("an adversarial weight needs the discriminators' optimizer")
        opt_d.zero_grad(set_to_none=True)
        loss_d = discriminator_loss(gan.disc_depth, images, depth_target, depth) + discriminator_loss(gan.disc_pncc, images, pncc_target, pncc)
        loss_d.backward()
        if average_gradients is not None:
            average_gradients([p for d in gan.discriminators() for p in d.parameters()])
        opt_d.step()
        disc = 0.5 * float(loss_d.detach())
    opt_g.zero_grad(set_to_none=True)
    frozen = [p for d in gan.discriminators() for p in d.parameters() if p.requires_grad]
    for p in frozen:  # the generator's step needs no gradient of the discriminators' weights
        p.requires_grad_(False)
    try:
        terms = generator_losses(gan, images, depth, pncc, depth_target, pncc_target, weights)
        terms["total"].backward()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if average_gradients is not None:
        average_gradients(list(gan.generator.parameters()))
    opt_g.step()
    out = {k: float(v.detach()) for k, v in terms.items()}
    out["disc"] = disc
    return out
