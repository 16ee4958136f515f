"""Graph convolution, G-ResNet and the mesh hierarchy against dense-matrix references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from facerecon.errors import InputError
from facerecon.mesh.templates import load_template
from facerecon.model.graph import GraphConv, GResNet, MeshHierarchy, neighbour_sum


def _dense_adjacency(edges: np.ndarray, n: int) -> torch.Tensor:
    a = np.zeros((n, n), dtype=np.float32)
    a[edges[:, 0], edges[:, 1]] = 1.0
    a[edges[:, 1], edges[:, 0]] = 1.0
    return torch.from_numpy(a)


@pytest.fixture(scope="module")
def ico() -> MeshHierarchy:
    m = trimesh.creation.icosphere(subdivisions=1)
    return MeshHierarchy.from_mesh(m.vertices, m.faces, 2)


def test_hierarchy_matches_real_template() -> None:
    t = load_template("hemisphere")
    h = MeshHierarchy.from_template(t)
    assert [h.num_vertices(l) for l in range(h.num_levels)] == [141, 491, 1821, 7001]
    for level in range(h.num_levels):
        lv = t.levels[level]
        adj = h.adjacency(level).to_dense()
        ref = _dense_adjacency(lv.edges, lv.vertices.shape[0])
        assert torch.equal(adj, ref)
        # CSR rows agree with the template's own neighbour lists (independently computed there)
        assert np.array_equal(h.degree(level).numpy(), np.diff(lv.adj_indptr))
    # midpoint-subdivided template equals the template's own finer levels
    for level in range(1, h.num_levels):
        np.testing.assert_allclose(h.template_vertices(level).numpy(), t.levels[level].vertices, atol=1e-6)


@pytest.mark.parametrize("c_in,c_out", [(5, 7), (9, 4)])  # widening and narrowing take different paths
def test_graph_conv_matches_dense_reference(ico: MeshHierarchy, c_in: int, c_out: int) -> None:
    torch.manual_seed(0)
    conv = GraphConv(c_in, c_out)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(3, ico.num_vertices(1), c_in, requires_grad=True)
    a = _dense_adjacency(ico.edges(1).numpy(), ico.num_vertices(1))
    ref = x @ conv.weight0.T + a @ (x @ conv.weight1.T) + conv.bias
    out = conv(x, ico.adjacency(1))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    gx, = torch.autograd.grad(out, x, g)
    gx_ref, = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)


def test_neighbour_sum_and_mean(ico: MeshHierarchy) -> None:
    n = ico.num_vertices(0)
    x = torch.randn(2, n, 3)
    a = _dense_adjacency(ico.edges(0).numpy(), n)
    s = neighbour_sum(ico.adjacency(0), x.transpose(0, 1).contiguous()).transpose(0, 1)
    torch.testing.assert_close(s, a @ x)
    torch.testing.assert_close(ico.neighbour_mean(x, 0), (a @ x) / a.sum(1)[None, :, None])


def test_gresnet_structure_and_gradients(ico: MeshHierarchy) -> None:
    net = GResNet(6, hidden=16, num_layers=14)
    convs = [m for m in net.modules() if isinstance(m, GraphConv)]
    assert len(convs) == 14
    x = torch.randn(2, ico.num_vertices(1), 6, requires_grad=True)
    out, hidden = net(x, ico.adjacency(1))
    assert out.shape == (2, ico.num_vertices(1), 3) and hidden.shape == (2, ico.num_vertices(1), 16)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(InputError):
        GResNet(6, num_layers=13)


def test_hierarchy_rejects_bad_indices() -> None:
    with pytest.raises(InputError, match="exceeds"):
        MeshHierarchy(np.zeros((3, 3)), [np.array([[0, 1, 5]])], [np.array([[0, 1]])], [])
