"""facerecon.model.mobilenet against torchvision's MobileNetV2 (the reference it replaces)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from facerecon.model.mobilenet import mobilenet_v2


def test_same_modules_weights_and_outputs_as_torchvision() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2(weights=None)
    torch.manual_seed(0)
    ours = mobilenet_v2()
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)  # names and order
    for key, value in ref_state.items():  # same initialisation, same random draws
        assert torch.equal(our_state[key], value), key
    torch.manual_seed(1)
    trained = torchvision.models.mobilenet_v2(weights=None)
    ours.load_state_dict(trained.state_dict(), strict=True)  # torchvision weights load as they are
    x = torch.rand(2, 3, 96, 128)
    for mode in ("train", "eval"):
        getattr(trained, mode)(), getattr(ours, mode)()
        with torch.no_grad():
            torch.testing.assert_close(ours.features(x), trained.features(x), rtol=0, atol=0)


def test_width_half_matches_torchvision() -> None:
    torchvision = pytest.importorskip("torchvision")
    from facerecon.model.backbones import build_backbone

    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2(weights=None, width_mult=0.5).eval()
    ours = build_backbone("mobilenet_v2_050")
    ours.net.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith(("classifier.", "features.18."))})
    ours.eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.enable_grad():
        maps = ours(x)
    with torch.no_grad():
        y = ours.preprocess(x)
        for k, stage in enumerate([reference.features[:4], reference.features[4:7], reference.features[7:14], reference.features[14:18]]):
            y = stage(y)
            assert maps[k].shape[1] == ours.channels[k] == y.shape[1]
            torch.testing.assert_close(maps[k].detach(), y, rtol=0, atol=0)


def test_building_the_shipped_backbone_does_not_import_torchvision() -> None:
    code = (
        "import sys\n"
        "from facerecon.model.backbones import build_backbone\n"
        "build_backbone('mobilenet_v2')\n"
        "print('torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
