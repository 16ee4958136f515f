"""The full network on the real templates: shapes, wiring, heads, options, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facerecon.config import Config, LossConfig, ModelConfig
from facerecon.errors import InputError
from facerecon.losses import MeshLoss
from facerecon.mesh.templates import load_template
from facerecon.model import build_network


@pytest.fixture(scope="module")
def hemisphere():
    return load_template("hemisphere")


#: The ``[model.*]`` table of each setting the tests vary (the others are ``[model]`` keys).
_TABLE = {"colour": "pixel2mesh", "template_scale": "pixel2mesh", "template_offset": "pixel2mesh", "coord_mode": "pixel2mesh",
          "projection": "camera", "project_mode": "graph", "adaptive_unpool": "graph"}


def _cfg(**kw) -> ModelConfig:
    settings = {"model.backbone": "resnet18", "model.graph.hidden": 32}
    settings.update({f"model.{_TABLE[k]}.{k}" if k in _TABLE else f"model.{k}": v for k, v in kw.items()})
    return Config().replace(settings).model


def test_forward_real_hemisphere_batch2(hemisphere) -> None:
    torch.manual_seed(0)
    net = build_network(_cfg(colour=True), hemisphere)
    image = torch.rand(2, 3, 64, 64)
    out = net(image)
    sizes = [141, 491, 1821, 7001]
    assert [tuple(c.shape) for c in out.coords] == [(2, v, 3) for v in sizes]
    assert [tuple(c.shape) for c in out.input_coords] == [(2, v, 3) for v in sizes]
    assert [tuple(f.shape) for f in out.features] == [(2, v, 32) for v in sizes]
    assert [tuple(f.shape) for f in out.faces] == [(210, 3), (840, 3), (3360, 3), (13440, 3)]
    assert out.landmarks.shape == (2, 68, 3) and out.colors.shape == (2, 7001, 3)
    assert torch.all((out.colors > 0) & (out.colors < 1))
    # block 0 starts from the template placed in the crop frame: x, y scaled by 0.85, z + 0.4
    placed = torch.from_numpy(hemisphere.levels[0].vertices) * 0.85 + torch.tensor([0.0, 0.0, 0.4])
    torch.testing.assert_close(out.input_coords[0][1], placed)
    # block l+1 starts from block l's output, unpooled at the edge midpoints (t = 0.5 at init)
    for level in range(3):
        prev = out.coords[level]
        e = torch.from_numpy(hemisphere.unpool_edges[level])
        mid = 0.5 * (prev[:, e[:, 0]] + prev[:, e[:, 1]])
        torch.testing.assert_close(out.input_coords[level + 1], torch.cat([prev, mid], 1))
    # offsets start small: the first prediction stays near the template
    assert (out.coords[-1] - out.input_coords[-1]).abs().max() < 0.5
    # the landmark head starts uniform: every landmark is the mean vertex
    torch.testing.assert_close(out.landmarks[:, 0], out.vertices.mean(1))


def test_gradients_reach_every_parameter(hemisphere) -> None:
    torch.manual_seed(0)
    net = build_network(_cfg(colour=True), hemisphere)
    out = net(torch.rand(2, 3, 64, 64))
    loss = sum(c.square().mean() for c in out.coords) + out.landmarks.square().mean() + out.colors.mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert net.unpools[0].logit.grad.abs().sum() > 0
    assert net.backbone.net.conv1.weight.grad.abs().sum() > 0


def test_pre_and_post_projection_give_the_same_network(hemisphere) -> None:
    image = torch.rand(1, 3, 96, 96)
    outs = []
    for mode in ("pre", "post", "auto"):
        torch.manual_seed(3)
        net = build_network(_cfg(project_mode=mode, blocks=3), hemisphere).eval()
        with torch.no_grad():
            outs.append(net(image))
    for other in outs[1:]:
        for a, b in zip(outs[0].coords, other.coords):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_ellipsoid_three_blocks_pinhole() -> None:
    cfg = _cfg(
        template="ellipsoid", projection="pinhole", template_scale=(1.0, 1.0, 1.0), template_offset=(0.0, 0.0, 0.0),
        landmarks=False, adaptive_unpool=False, coord_mode="absolute",
    )
    net = build_network(cfg)
    out = net(torch.rand(1, 3, 64, 64))
    assert [c.shape[1] for c in out.coords] == [156, 618, 2466] and out.landmarks is None


def test_landmark_head_init_from_layout(hemisphere) -> None:
    net = build_network(_cfg(blocks=2), hemisphere)
    verts = net.template_vertices()
    layout = verts[torch.arange(0, 68 * 7, 7)]  # 68 vertices of the level-1 template
    net.landmark_head.init_from_layout(verts, layout, sigma=0.01)
    lm = net.landmark_head(verts[None])
    torch.testing.assert_close(lm[0], layout, atol=1e-3, rtol=0)
    torch.testing.assert_close(net.landmark_head.weights().sum(1), torch.ones(68))


def test_freeze_backbone(hemisphere) -> None:
    net = build_network(_cfg(freeze_backbone=True, blocks=1), hemisphere).train()
    assert not net.backbone.training and net.blocks[0].training
    assert all(not p.requires_grad for p in net.backbone.parameters())


@pytest.mark.slow
def test_chamfer_falls_when_overfitting_one_target(hemisphere) -> None:
    torch.manual_seed(0)
    net = build_network(_cfg(blocks=2, landmarks=False), hemisphere)
    image = torch.rand(1, 3, 64, 64)
    # target: a flatter, shifted dome (the template's vertices, squashed and moved)
    target = net.template_vertices(0) * torch.tensor([0.6, 0.7, 0.3]) + torch.tensor([0.1, -0.05, 0.2])
    batch = {
        "points": target[None],
        "lengths": torch.tensor([target.shape[0]]),
        "normals": torch.zeros(1, target.shape[0], 3),
    }
    loss_fn = MeshLoss(LossConfig(normal=0.0, laplace=0.0, move=0.0, edge=0.0))
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    first = None
    for _ in range(25):
        res = loss_fn(net(image), batch)
        first = first if first is not None else res.terms["chamfer"].item()
        opt.zero_grad()
        res.total.backward()
        opt.step()
    assert res.terms["chamfer"].item() < first / 5


def test_landmark_head_inference_cache_follows_the_logits() -> None:
    """Without gradients the landmark softmax is kept between calls, and is recomputed once the
    logits change (an optimiser step, a loaded checkpoint); reference: numpy's softmax."""
    from facerecon.model.blocks import LandmarkHead

    torch.manual_seed(0)
    head = LandmarkHead(5, 40)
    verts = torch.randn(3, 40, 3)

    def expect() -> np.ndarray:
        z = head.logits.detach().double().numpy()
        w = np.exp(z - z.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        return np.einsum("kv,bvc->bkc", w, verts.double().numpy())

    with torch.no_grad():
        head.logits.normal_()
        np.testing.assert_allclose(head(verts).numpy(), expect(), atol=1e-5)
    with torch.inference_mode():
        first = head(verts)
        np.testing.assert_allclose(first.numpy(), expect(), atol=1e-5)
    with torch.no_grad():
        head.logits.mul_(3.0)
    with torch.inference_mode():
        np.testing.assert_allclose(head(verts).numpy(), expect(), atol=1e-5)
    head.load_state_dict({"logits": torch.randn(5, 40)})
    with torch.no_grad():
        np.testing.assert_allclose(head(verts).numpy(), expect(), atol=1e-5)
    out = head(verts)  # with gradients: no cache, the logits get theirs
    out.sum().backward()
    assert head.logits.grad is not None


def test_per_block_widths_and_depths_of_a_pixel2mesh_network(hemisphere) -> None:
    """``model.graph.hidden_per_block`` / ``layers_per_block_list`` narrow the blocks one by one
    (hand-worked: block l's features have widths[l] channels, its input 3 + widths[l - 1])."""
    cfg = Config().replace({"model.backbone": "resnet18", "model.blocks": 3, "model.pixel2mesh.colour": True,
                            "model.graph.hidden_per_block": [24, 16, 8, 99], "model.graph.layers_per_block_list": [4, 2, 2]}).model
    net = build_network(cfg, hemisphere)
    out = net(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in out.features] == [24, 16, 8]
    assert [c.shape[1] for c in out.coords] == [141, 491, 1821] and out.colors.shape == (1, 1821, 3)
    short = Config().replace({"model.backbone": "resnet18", "model.graph.hidden_per_block": [8, 8]}).model
    with pytest.raises(InputError, match="model.graph.hidden_per_block has 2 entries for 4 blocks"):
        build_network(short, hemisphere)


def test_the_network_class_says_whether_it_takes_five_points(hemisphere) -> None:
    """One attribute decides, for training batches and for predict alike; the signature of
    ``forward`` does not."""
    from facerecon.engine.predict import _accepts_landmarks5
    from facerecon.model.network import FaceReconNet, forward_batch
    from facerecon.model.prior_net import PriorFaceNet

    assert PriorFaceNet.takes_five_points and not FaceReconNet.takes_five_points

    class Recorder(torch.nn.Module):
        def __init__(self, takes: bool) -> None:
            super().__init__()
            self.takes_five_points = takes
            self.calls: list[bool] = []

        def forward(self, image: torch.Tensor, landmarks5: torch.Tensor | None = None) -> str:
            self.calls.append(landmarks5 is not None)
            return "ok"

    batch = {"image": torch.zeros(1, 3, 8, 8), "landmarks5": torch.zeros(1, 5, 2)}
    takes, ignores = Recorder(True), Recorder(False)
    forward_batch(takes, batch)
    forward_batch(ignores, batch)
    assert takes.calls == [True] and ignores.calls == [False]
    assert _accepts_landmarks5(takes) and not _accepts_landmarks5(ignores)
    prior = build_network(Config().replace({"model.kind": "prior_graph", "model.backbone": "resnet18",
                                            "model.graph.hidden": 8, "model.graph.layers_per_block": 2}).model, hemisphere)
    assert _accepts_landmarks5(prior) and not _accepts_landmarks5(build_network(_cfg(blocks=1), hemisphere))
