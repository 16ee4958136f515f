"""Edge-midpoint and adaptive unpooling."""

from __future__ import annotations

import numpy as np
import torch

from facerecon.mesh.templates import load_template
from facerecon.model.unpool import T_MIN, Unpool


def test_midpoint_unpool_reproduces_template_levels() -> None:
    t = load_template("hemisphere")
    for level in range(len(t.levels) - 1):
        up = Unpool(torch.from_numpy(t.unpool_edges[level]), adaptive=False)
        v = torch.from_numpy(t.levels[level].vertices)[None]
        out = up(v, dim=1)
        np.testing.assert_allclose(out[0].numpy(), t.levels[level + 1].vertices, atol=1e-6)


def test_features_are_interpolated_vertex_major() -> None:
    edges = torch.tensor([[0, 1], [1, 2]])
    feats = torch.tensor([[[0.0, 2.0]], [[4.0, 6.0]], [[8.0, 10.0]]])  # (V=3, B=1, C=2)
    out = Unpool(edges)(feats, dim=0)
    assert out.shape == (5, 1, 2)
    torch.testing.assert_close(out[3:, 0], torch.tensor([[2.0, 4.0], [6.0, 8.0]]))


def test_adaptive_starts_at_midpoint_and_moves() -> None:
    edges = torch.tensor([[0, 1]])
    up = Unpool(edges, adaptive=True)
    assert torch.equal(up.positions(), torch.tensor([0.5]))
    x = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    with torch.no_grad():
        up.logit.fill_(np.log(3.0))  # sigmoid = 0.75
    expected = T_MIN + (1 - 2 * T_MIN) * 0.75
    torch.testing.assert_close(up(x)[0, 2, 0], torch.tensor(expected))


def test_adaptive_t_stays_strictly_inside_under_hard_optimisation() -> None:
    edges = torch.tensor([[0, 1], [1, 2], [0, 2]])
    up = Unpool(edges, adaptive=True)
    x = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0.0, 1.0, 0]]])
    opt = torch.optim.SGD(up.parameters(), lr=1e4)
    for step in range(50):
        new = up(x)[:, 3:]
        # push edges 0 and 2 far beyond their end vertex b, edge 1 far before its start a
        loss = -(new[0, 0, 0] + new[0, 2, 1] + new[0, 1, 0]) * 1e3
        opt.zero_grad()
        loss.backward()
        opt.step()
    t = up.positions()
    assert torch.all(t > 0) and torch.all(t < 1)
    assert t[0] >= 1 - T_MIN - 1e-6 and t[2] >= 1 - T_MIN - 1e-6 and t[1] <= T_MIN + 1e-6
    new = up(x)[0, 3:]
    assert new[0, 0] < 1.0 and new[1, 0] < 1.0 and new[1, 1] > 0.0  # never on an end vertex


def test_inference_and_training_paths_give_the_same_new_vertices() -> None:
    """Vertex-major features without gradients take an in-place path; with gradients the
    concatenation: both are ``a + t (b - a)`` per edge, checked against numpy."""
    rng = np.random.default_rng(0)
    edges = torch.from_numpy(rng.integers(0, 40, size=(90, 2)))
    up = Unpool(edges, adaptive=True)
    with torch.no_grad():
        up.logit.copy_(torch.from_numpy(rng.normal(0, 2, 90).astype(np.float32)))
    feats = torch.from_numpy(rng.normal(size=(40, 2, 7)).astype(np.float32))  # (V, B, C)
    t = up.positions().detach().numpy()[:, None, None]
    a, b = feats.numpy()[edges[:, 0]], feats.numpy()[edges[:, 1]]
    expected = np.concatenate([feats.numpy(), a + t * (b - a)])
    with torch.inference_mode():
        fast = up(feats, dim=0)
    trained = up(feats.clone().requires_grad_(True), dim=0)
    assert trained.requires_grad
    np.testing.assert_allclose(fast.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(trained.detach().numpy(), expected, atol=1e-6)
