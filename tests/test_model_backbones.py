"""Backbones: map shapes and gradients at a small input size, preprocessing, local weight files."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from facerecon.errors import InputError
from facerecon.model.backbones import BACKBONES, build_backbone, load_backbone_weights

EXPECTED = {
    "vgg16": ([256, 512, 512], [4, 8, 16]),
    "resnet18": ([64, 128, 256, 512], [4, 8, 16, 32]),
    "resnet50": ([256, 512, 1024, 2048], [4, 8, 16, 32]),
    "resnet50_vggface2": ([256, 512, 1024, 2048], [4, 8, 16, 32]),
    "mobilenet_v2": ([24, 32, 96, 320], [4, 8, 16, 32]),
    "mobilenet_v2_050": ([16, 16, 48, 160], [4, 8, 16, 32]),
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_shapes_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    bb = build_backbone(name)
    channels, strides = EXPECTED[name]
    assert bb.channels == channels and bb.strides == strides
    image = torch.rand(2, 3, 64, 64, requires_grad=True)
    maps = bb(image)
    assert [tuple(m.shape) for m in maps] == [(2, c, math.ceil(64 / s), math.ceil(64 / s)) for c, s in zip(channels, strides)]
    sum(m.mean() for m in maps).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    first = next(p for p in bb.parameters() if p.ndim == 4)
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is not None for p in bb.parameters()), "every backbone parameter is used"


def test_any_crop_size() -> None:
    bb = build_backbone("resnet18")
    maps = bb(torch.rand(1, 3, 96, 80))
    assert [m.shape[2:] for m in maps] == [(24, 20), (12, 10), (6, 5), (3, 3)]


def test_preprocessing() -> None:
    rgb = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    caffe = build_backbone("resnet50_vggface2").preprocess(rgb)
    expected_bgr = torch.tensor([0.8 * 255 - 91.4953, 0.5 * 255 - 103.8827, 0.2 * 255 - 131.0912])
    torch.testing.assert_close(caffe[0, :, 0, 0], expected_bgr)
    imagenet = build_backbone("resnet18").preprocess(rgb)
    expected = (torch.tensor([0.2, 0.5, 0.8]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(imagenet[0, :, 0, 0], expected)


def test_vggface2_caffe_layout() -> None:
    net = build_backbone("resnet50_vggface2").net
    for layer in (net.layer2, net.layer3, net.layer4):
        assert layer[0].conv1.stride == (2, 2) and layer[0].conv2.stride == (1, 1)
    assert net.maxpool.padding == 0 and net.maxpool.ceil_mode
    tv = build_backbone("resnet50").net
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)
    maps = build_backbone("resnet50_vggface2")(torch.rand(1, 3, 224, 224))
    assert [m.shape[-1] for m in maps] == [56, 28, 14, 7]


def test_weights_roundtrip_from_full_torchvision_state_dict(tmp_path) -> None:
    torch.manual_seed(1)
    full = torchvision.models.resnet18(weights=None)  # with its fc head, as users save it
    path = tmp_path / "r18.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)
    bb = build_backbone("resnet18", path)
    torch.testing.assert_close(bb.net.conv1.weight, full.conv1.weight)
    torch.testing.assert_close(bb.net.layer4[1].bn2.running_var, full.layer4[1].bn2.running_var)


def test_weights_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        build_backbone("resnet18", tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot read"):
        build_backbone("resnet18", bad)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    del sd["layer1.0.conv1.weight"]
    torch.save(sd, tmp_path / "missing_key.pt")
    with pytest.raises(InputError, match="missing keys.*layer1.0.conv1.weight"):
        build_backbone("resnet18", tmp_path / "missing_key.pt")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pt")
    with pytest.raises(InputError, match="shape mismatch|unexpected"):
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "r50.pt")
    with pytest.raises(InputError, match="unknown backbone"):
        build_backbone("resnet1000")


def test_mobilenet_loads_full_torchvision_state_dict(tmp_path) -> None:
    full = torchvision.models.mobilenet_v2(weights=None)
    torch.save(full.state_dict(), tmp_path / "mnv2.pt")
    bb = build_backbone("mobilenet_v2", tmp_path / "mnv2.pt")
    torch.testing.assert_close(bb.net.features[17].conv[0][0].weight, full.features[17].conv[0][0].weight)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_inference_folds_batch_norms_and_follows_weight_changes(name: str) -> None:
    """Without gradients an eval-mode backbone runs a copy with each conv's batch norm folded in:
    the same maps as the module's own eval forward with gradients on (the unfolded path), and a
    weight change (an optimiser step, a loaded state dict) is picked up at the next call."""
    torch.manual_seed(0)
    bb = build_backbone(name).eval()
    with torch.no_grad():
        for m in bb.modules():  # statistics far from the identity, so folding matters
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.rand(1, 3, 64, 64)

    def reference() -> list[torch.Tensor]:
        with torch.enable_grad():
            return [m.detach() for m in bb(x)]

    with torch.inference_mode():
        first = bb(x)  # the first call with these weights runs unfolded; the second folds
        assert bb._folded is None
        folded = bb(x)
    for got, want in zip(first, folded):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    folds = [m for stage in bb._folded[1] for m in stage.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    total = sum(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
    assert len(folds) < total  # the Sequential pairs are folded (all of them for MobileNetV2)
    if name == "mobilenet_v2":
        assert not folds
    for got, want in zip(folded, reference()):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        next(p for p in bb.parameters() if p.ndim == 4).mul_(-1.0)
        bb(x)
        changed = bb(x)
    assert bb._folded is not None and bb._folded[0] == bb._weights_key()
    for got, want in zip(changed, reference()):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(changed[-1], folded[-1])
