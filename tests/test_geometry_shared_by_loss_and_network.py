"""One home each for the weighted Chamfer, the neighbour mean and the CSR adjacency.

The training loss and the metric share ``facerecon.ops.chamfer.chamfer_from_neighbours`` (each
with its own weight-sum floor), the Laplacian loss and the graph network share
``facerecon.model.graph.neighbour_mean`` and both build their neighbour lists with
``facerecon.mesh.topology.csr_adjacency``. Everything is checked against independent references:
``scipy.spatial.cKDTree``, plain numpy loops and ``scipy.sparse``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial import cKDTree

from facerecon.config import LossConfig
from facerecon.losses import MeshLoss, laplacian_coordinates, laplacian_loss
from facerecon.mesh.topology import csr_adjacency, edges_from_faces
from facerecon.model.graph import MeshHierarchy, edge_adjacency, neighbour_mean
from facerecon.ops import chamfer_distance, nearest_neighbors
from facerecon.ops.chamfer import chamfer_from_neighbours

# a small mesh: a fan of four triangles around vertex 0, plus vertex 6 on no edge at all
VERTS = np.array(
    [[0.0, 0.0, 0.0], [1.0, 0.0, 0.2], [0.3, 1.0, -0.1], [-1.0, 0.2, 0.4], [0.1, -1.0, 0.3], [2.0, 1.0, 0.0],
     [5.0, 5.0, 5.0]]
)
FACES = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [1, 5, 2]])
EDGES = edges_from_faces(FACES)


# --------------------------------------------------------------------------- references
def _kdtree_chamfer(pred: np.ndarray, gt: np.ndarray, w: np.ndarray | None, eps: float) -> float:
    """Weighted Chamfer of one pair of clouds with scipy's k-d tree (float64)."""
    d_pg, i_pg = cKDTree(gt).query(pred)
    d_gp, _ = cKDTree(pred).query(gt)
    w_g = np.ones(len(gt)) if w is None else w.astype(np.float64)
    w_p = w_g[i_pg]

    def mean(v: np.ndarray, wt: np.ndarray) -> float:
        total = wt.sum()
        return 0.0 if total == 0 else float((wt * v).sum() / max(total, eps))

    return mean(d_pg**2, w_p) + mean(d_gp**2, w_g)


def _loop_neighbour_mean(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(V, C) -> (V, C): the mean over each vertex's neighbours, by plain loops (0 if none)."""
    nbrs: list[list[int]] = [[] for _ in range(len(x))]
    for a, b in edges.tolist():
        nbrs[a].append(b)
        nbrs[b].append(a)
    out = np.zeros_like(x, dtype=np.float64)
    for v, ns in enumerate(nbrs):
        for q in ns:
            out[v] += x[q]
        if ns:
            out[v] /= len(ns)
    return out


def _scipy_csr(edges: np.ndarray, n: int) -> scipy.sparse.csr_matrix:
    e = np.asarray(edges)
    rows = np.concatenate([e[:, 0], e[:, 1]])
    cols = np.concatenate([e[:, 1], e[:, 0]])
    m = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    m.sort_indices()
    return m


# --------------------------------------------------------------------------- weighted Chamfer
def _clouds(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(2, 40, 3, generator=g, dtype=torch.float64)
    gt = torch.rand(2, 60, 3, generator=g, dtype=torch.float64)
    lengths = torch.tensor([60, 37])
    gt[1, 37:] = 1e3  # padding, far away
    return pred, gt, lengths


@pytest.mark.parametrize("scale", [1.0, 1e-16])  # 1e-16: weight sums below the loss's 1e-12 floor
def test_weighted_chamfer_against_kdtree_with_each_callers_floor(scale: float) -> None:
    pred, gt, lengths = _clouds()
    w = (torch.rand(2, 60, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1) * scale
    nn = nearest_neighbors(pred, gt, None, lengths)
    for eps in (None, 1e-12):
        out = chamfer_from_neighbours(nn, w, eps=eps)
        for b in range(2):
            m = int(lengths[b])
            ref = _kdtree_chamfer(pred[b].numpy(), gt[b, :m].numpy(), w[b, :m].numpy(),
                                  np.finfo(np.float64).tiny if eps is None else eps)
            assert out[b].item() == pytest.approx(ref, rel=1e-9)
    metric = chamfer_from_neighbours(nn, w)
    loss = chamfer_from_neighbours(nn, w, eps=1e-12)
    if scale == 1.0:
        torch.testing.assert_close(metric, loss, rtol=0, atol=0)  # the floor plays no part
    else:
        assert (metric / loss).min().item() > 10  # tiny sums: only the floor differs
    # the metric's floor is the plain weighted mean: scaling the weights changes nothing
    torch.testing.assert_close(chamfer_from_neighbours(nn, w / scale), metric)


def test_unweighted_chamfer_against_kdtree() -> None:
    pred, gt, lengths = _clouds(2)
    out = chamfer_distance(pred, gt, None, lengths, reduction="none")
    for b in range(2):
        m = int(lengths[b])
        assert out[b].item() == pytest.approx(_kdtree_chamfer(pred[b].numpy(), gt[b, :m].numpy(), None, 1e-12), rel=1e-9)


def test_mesh_loss_chamfer_uses_the_loss_floor() -> None:
    """The loss's chamfer term with weights whose sums lie below 1e-12: ``sum(w d) / 1e-12``."""
    pred, gt, lengths = _clouds(3)
    pred, gt = pred.float(), gt.float()
    w = torch.full((2, 60), 1e-15)
    edges = torch.as_tensor(EDGES[:3])  # any edges: only the chamfer term is checked
    batch = {"points": gt, "lengths": lengths, "normals": torch.zeros_like(gt), "weights": w}
    pred_ns = SimpleNamespace(coords=[pred], input_coords=[pred], edges=[edges], landmarks=None, colors=None)
    res = MeshLoss(LossConfig(chamfer_block_weights=(1.0,), weighted_chamfer=True))(pred_ns, batch)
    refs = [
        _kdtree_chamfer(pred[b].double().numpy(), gt[b, : int(lengths[b])].double().numpy(),
                        w[b, : int(lengths[b])].double().numpy(), 1e-12)
        for b in range(2)
    ]
    assert res.terms["chamfer"].item() == pytest.approx(float(np.mean(refs)), rel=1e-4)


# --------------------------------------------------------------------------- neighbour mean
def test_neighbour_mean_against_loops() -> None:
    x = torch.randn(3, len(VERTS), 5, dtype=torch.float64)
    edges = torch.as_tensor(EDGES)
    out = neighbour_mean(edge_adjacency(edges, len(VERTS), torch.float64), x)
    assert out.dtype == torch.float64
    for b in range(3):
        np.testing.assert_allclose(out[b].numpy(), _loop_neighbour_mean(x[b].numpy(), EDGES), rtol=1e-12, atol=1e-12)
    assert torch.equal(out[:, 6], torch.zeros(3, 5, dtype=torch.float64))  # isolated vertex: 0
    # the network's hierarchy gives the same mean (float32)
    hier = MeshHierarchy(VERTS, [FACES], [EDGES], [])
    np.testing.assert_allclose(hier.neighbour_mean(x.float(), 0).numpy(), out.numpy(), rtol=1e-5, atol=1e-6)


def test_laplacian_loss_against_loops() -> None:
    g = torch.Generator().manual_seed(4)
    before = torch.as_tensor(VERTS, dtype=torch.float32)[None].repeat(2, 1, 1)
    after = before + 0.1 * torch.randn(before.shape, generator=g)
    edges = torch.as_tensor(EDGES)
    delta = laplacian_coordinates(after, edges)
    ref_delta = [after[b].double().numpy() - _loop_neighbour_mean(after[b].double().numpy(), EDGES) for b in range(2)]
    np.testing.assert_allclose(delta.numpy(), np.stack(ref_delta), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(delta[:, 6].numpy(), after[:, 6].numpy())  # isolated vertex: delta = p
    ref_before = [before[b].double().numpy() - _loop_neighbour_mean(before[b].double().numpy(), EDGES) for b in range(2)]
    ref = np.mean([((ra - rb) ** 2).sum(-1) for ra, rb in zip(ref_delta, ref_before)])
    assert laplacian_loss(before, after, edges).item() == pytest.approx(ref, rel=1e-5)


def test_laplacian_gradient_matches_the_dense_operator() -> None:
    """d/dx of sum(c * delta(x)) with delta = (I - D^-1 A) x, A from scipy."""
    a = _scipy_csr(EDGES, len(VERTS)).toarray()
    deg = np.maximum(a.sum(1), 1)
    lap = np.eye(len(VERTS)) - a / deg[:, None]
    x = torch.randn(1, len(VERTS), 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(1, len(VERTS), 3, dtype=torch.float64)
    (laplacian_coordinates(x, torch.as_tensor(EDGES)) * c).sum().backward()
    np.testing.assert_allclose(x.grad[0].numpy(), lap.T @ c[0].numpy(), rtol=1e-12, atol=1e-12)


def test_edge_adjacency_follows_the_edge_tensor() -> None:
    """The cached neighbour lists belong to one edge tensor: another tensor gets its own."""
    n = len(VERTS)
    first = torch.as_tensor(EDGES)
    dense = edge_adjacency(first, n).to_dense().numpy()
    np.testing.assert_array_equal(dense, _scipy_csr(EDGES, n).toarray())
    for k in range(5):  # new tensors (ids may be reused) with other edges
        other = torch.as_tensor(EDGES[k:])
        np.testing.assert_array_equal(edge_adjacency(other, n).to_dense().numpy(), _scipy_csr(EDGES[k:], n).toarray())
        del other
    np.testing.assert_array_equal(edge_adjacency(first, n).to_dense().numpy(), dense)


# --------------------------------------------------------------------------- CSR construction
@pytest.mark.parametrize("shuffle", [False, True])
def test_csr_adjacency_against_scipy(shuffle: bool) -> None:
    edges = EDGES[np.random.default_rng(0).permutation(len(EDGES))] if shuffle else EDGES
    if shuffle:
        edges = edges[:, ::-1].copy()  # direction does not matter
    ref = _scipy_csr(edges, len(VERTS))
    indptr, indices = csr_adjacency(edges, len(VERTS))
    np.testing.assert_array_equal(indptr, ref.indptr)
    np.testing.assert_array_equal(indices, ref.indices)
    hier = MeshHierarchy(VERTS, [FACES], [edges], [])  # the network's buffers come from the same lists
    np.testing.assert_array_equal(hier.adj_crow_0.numpy(), ref.indptr)
    np.testing.assert_array_equal(hier.adj_col_0.numpy(), ref.indices)
    np.testing.assert_array_equal(hier.degree(0).numpy(), np.diff(ref.indptr))
    np.testing.assert_array_equal(hier.adjacency(0).to_dense().numpy(), ref.toarray())


def test_hierarchy_csr_of_every_template_level_against_scipy() -> None:
    from facerecon.mesh import load_template

    template = load_template("hemisphere")
    hier = MeshHierarchy.from_template(template)
    for level in range(hier.num_levels):
        ref = _scipy_csr(template.levels[level].edges, hier.num_vertices(level))
        np.testing.assert_array_equal(getattr(hier, f"adj_crow_{level}").numpy(), ref.indptr)
        np.testing.assert_array_equal(getattr(hier, f"adj_col_{level}").numpy(), ref.indices)
