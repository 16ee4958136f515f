"""The FaceVision-GAN network and losses: shapes, skip connections into both decoders, the losses
against hand-worked values, and a few optimisation steps on one fixed example."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from facerecon.errors import InputError
from facerecon.model.facevision import (
    FaceVisionGAN,
    FaceVisionGenerator,
    LossWeights,
    PatchDiscriminator,
    discriminator_loss,
    generator_losses,
    gradient_l1,
    image_gradients,
    masked_l1,
    network_input,
    train_step,
)


def test_output_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    gen = FaceVisionGenerator(channels=4, levels=5)
    depth, pncc = gen(torch.rand(2, 3, 128, 128))
    assert depth.shape == (2, 1, 128, 128) and pncc.shape == (2, 3, 128, 128)
    depth, pncc = depth.detach(), pncc.detach()
    assert float(depth.min()) > 0 and float(depth.max()) < 1 and float(pncc.min()) > 0 and float(pncc.max()) < 1
    assert [f.shape[-1] for f in gen.encode(torch.rand(1, 3, 128, 128))] == [64, 32, 16, 8, 4]
    # PatchGAN: three stride-2 and two stride-1 4x4 layers: 128 -> 64 -> 32 -> 16 -> 15 -> 14 patches
    assert PatchDiscriminator(1, 4)(torch.rand(2, 3, 128, 128), depth).shape == (2, 1, 14, 14)
    assert PatchDiscriminator(3, 4)(torch.rand(2, 3, 128, 128), pncc).shape == (2, 1, 14, 14)
    with pytest.raises(InputError):
        gen(torch.rand(1, 3, 100, 100))


def test_network_input_resizes_uint8_crops() -> None:
    crops = torch.full((2, 224, 224, 3), 255, dtype=torch.uint8)
    x = network_input(crops)
    assert x.shape == (2, 3, 128, 128) and torch.allclose(x, torch.ones_like(x))


@pytest.mark.parametrize("decoder", ["depth_decoder", "pncc_decoder"])
def test_every_encoder_level_reaches_both_decoders(decoder: str) -> None:
    """With every encoder level but one detached, the image still gets a gradient from the
    decoder's output: that level's features enter the decoder directly (a skip connection, or
    the bottleneck for the last level)."""
    torch.manual_seed(0)
    gen = FaceVisionGenerator(channels=4, levels=4)
    for level in range(4):
        x = torch.rand(2, 3, 64, 64, requires_grad=True)
        feats = gen.encode(x)
        kept = [f if k == level else f.detach() for k, f in enumerate(feats)]
        getattr(gen, decoder)(kept).sum().backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0, level


def test_image_gradients_of_a_ramp() -> None:
    yy, xx = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")
    ramp = (0.3 * xx - 0.2 * yy)[None, None]
    dx, dy = image_gradients(ramp)
    assert dx.shape == (1, 1, 5, 5) and dy.shape == (1, 1, 4, 6)
    assert torch.allclose(dx, torch.full_like(dx, 0.3)) and torch.allclose(dy, torch.full_like(dy, -0.2))


def test_gradient_loss_hand_worked() -> None:
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    const = torch.full((1, 1, 8, 8), 0.7)
    assert float(gradient_l1(const, torch.zeros_like(const))) == 0.0  # a constant has no gradient
    ramp = (0.25 * xx - 0.5 * yy)[None, None]
    assert float(gradient_l1(ramp, torch.zeros_like(ramp))) == pytest.approx(0.25 + 0.5)
    assert float(gradient_l1(ramp, 0.1 * xx[None, None])) == pytest.approx(0.15 + 0.5)
    # masked: a step of the target outside the face does not count
    mask = (xx < 4)[None, None]
    target = torch.where(xx < 4, 0.1 * xx, torch.full_like(xx, 5.0))[None, None]
    assert float(gradient_l1(ramp, target, mask)) == pytest.approx(0.15 + 0.5)
    assert float(gradient_l1(ramp, target)) > 1.0  # unmasked, the step dominates


def test_masked_l1_hand_worked() -> None:
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(pred)
    assert float(masked_l1(pred, target)) == pytest.approx(2.5)
    mask = torch.tensor([[[[True, False], [False, True]]]])
    assert float(masked_l1(pred, target, mask)) == pytest.approx(2.5)
    assert float(masked_l1(pred, target, mask & False)) == 0.0


class _Even(nn.Module):
    """A discriminator that cannot tell: logit 0 everywhere."""

    def forward(self, images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], 1, 2, 2) + 0.0 * maps.sum()


def test_gan_losses_of_an_undecided_discriminator_are_log2() -> None:
    images, maps = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    assert float(discriminator_loss(_Even(), images, maps, maps)) == pytest.approx(math.log(2.0))
    gan = FaceVisionGAN(channels=4, levels=4, disc_channels=4)
    gan.disc_depth, gan.disc_pncc = _Even(), _Even()
    depth_t = torch.zeros(2, 1, 16, 16)
    terms = generator_losses(gan, images, maps, torch.rand(2, 3, 16, 16), depth_t, torch.zeros(2, 3, 16, 16), LossWeights(1.0, 0.0, 0.0))
    assert float(terms["depth_adv"]) == pytest.approx(math.log(2.0)) and float(terms["total"]) == pytest.approx(2 * math.log(2.0))
    assert float(terms["pncc_l1"]) == 0.0  # no face in the target: the PNCC term has no pixel


def _fixed_example(size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid((torch.arange(size) + 0.5) / size * 2 - 1, (torch.arange(size) + 0.5) / size * 2 - 1, indexing="ij")
    disk = (xx**2 + yy**2 < 0.5).float()
    image = torch.stack([0.2 + 0.6 * disk, 0.2 + 0.4 * disk, 0.3 * torch.ones_like(disk)])[None]
    depth = disk * (0.6 - 0.3 * (xx**2 + yy**2))
    pncc = torch.stack([(xx + 1) / 2, (yy + 1) / 2, depth]) * disk
    return image, depth[None, None], pncc[None]


@pytest.mark.parametrize("adversarial", [0.0, 1.0])
def test_a_few_steps_reduce_the_l1_loss(adversarial: float) -> None:
    torch.manual_seed(0)
    gan = FaceVisionGAN(channels=8, levels=3, disc_channels=4)
    image, depth, pncc = _fixed_example()
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=5e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([p for d in gan.discriminators() for p in d.parameters()], lr=2e-4, betas=(0.5, 0.999))
    weights = LossWeights(adversarial=adversarial)
    history = [train_step(gan, image, depth, pncc, opt_g, opt_d if adversarial else None, weights) for _ in range(20)]
    first, last = history[0], history[-1]
    assert last["depth_l1"] + last["pncc_l1"] < 0.5 * (first["depth_l1"] + first["pncc_l1"])
    assert (last["disc"] > 0) == bool(adversarial)
