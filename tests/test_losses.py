"""Every loss term against values worked out by hand on tiny meshes, and the weighted total."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from facerecon.config import LossConfig
from facerecon.errors import InputError
from facerecon.losses import (
    MeshLoss,
    colour_loss,
    edge_loss,
    landmark_loss,
    laplace_weight,
    laplacian_coordinates,
    laplacian_loss,
    move_loss,
    normal_loss,
)
from facerecon.ops import NNResult, chamfer_distance
from facerecon.ops.chamfer import chamfer_from_neighbours

# a unit right triangle in the z = 0 plane and a unit square (two triangles)
TRI = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
TRI_EDGES = torch.tensor([[0, 1], [0, 2], [1, 2]])
SQUARE = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]])
SQUARE_EDGES = torch.tensor([[0, 1], [1, 2], [2, 3], [0, 3], [0, 2]])


def test_chamfer_hand_values_with_padding() -> None:
    # pred: (0,0,0), (2,0,0); gt: (0,0,1), (2,0,0), padding (100,...)
    dist_xy = torch.tensor([[1.0, 0.0]])
    idx_xy = torch.tensor([[0, 1]])
    dist_yx = torch.tensor([[1.0, 0.0, 12345.0]])
    idx_yx = torch.tensor([[0, 1, -1]])  # the third gt point is padding (gt length 2)
    nn = NNResult(dist_xy, idx_xy, dist_yx, idx_yx)
    assert chamfer_from_neighbours(nn, eps=1e-12).item() == pytest.approx(0.5 + 0.5)
    w = torch.tensor([[3.0, 1.0, 7.0]])
    # pred weights 3, 1 -> (3*1 + 0)/4; gt weights 3, 1 (padding ignored) -> (3*1 + 0)/4
    assert chamfer_from_neighbours(nn, w, eps=1e-12).item() == pytest.approx(0.75 + 0.75)


def test_normal_loss_hand_values() -> None:
    up = torch.tensor([[[0.0, 0.0, 1.0]] * 3])
    idx = torch.tensor([[0, 1, 2]])
    assert normal_loss(TRI, TRI_EDGES, up, idx).item() == 0.0  # flat triangle, normal along z
    lifted = TRI.clone()
    lifted[0, 2, 2] = 0.5  # vertex 2 up by 0.5: edges (0,2) and (1,2) have dz = 0.5
    # directed edges: 6, four of them with <p-k, z>^2 = 0.25 -> mean 1/6
    assert normal_loss(lifted, TRI_EDGES, up, idx).item() == pytest.approx(1.0 / 6.0)
    # normals along x: edge (0,1) has dx=1 both ways, (1,2) dx=1 both ways, (0,2) dx=0 -> 4/6
    ex = torch.tensor([[[1.0, 0.0, 0.0]] * 3])
    assert normal_loss(TRI, TRI_EDGES, ex, idx).item() == pytest.approx(4.0 / 6.0)


def test_laplacian_hand_values() -> None:
    delta = laplacian_coordinates(SQUARE, SQUARE_EDGES)
    # vertex 0: neighbours 1, 3, 2 -> mean (2/3, 2/3, 0); vertex 1: neighbours 0, 2 -> (0.5, 0.5, 0)
    torch.testing.assert_close(delta[0, 0], torch.tensor([-2 / 3, -2 / 3, 0.0]))
    torch.testing.assert_close(delta[0, 1], torch.tensor([0.5, -0.5, 0.0]))
    moved = SQUARE.clone()
    moved[0, 1, 2] = 1.0  # lift vertex 1 by 1
    # delta changes: v1 +1 (z); v0, v2 -1/3 (three neighbours each); v3: not a neighbour -> 0
    expected = (1.0 + 1 / 9 + 1 / 9) / 4
    assert laplacian_loss(SQUARE, moved, SQUARE_EDGES).item() == pytest.approx(expected)
    # a rigid translation keeps every delta
    assert laplacian_loss(SQUARE, SQUARE + 3.0, SQUARE_EDGES).item() == pytest.approx(0.0, abs=1e-10)


def test_move_edge_landmark_colour_hand_values() -> None:
    assert move_loss(TRI, TRI + torch.tensor([0.0, 0.3, 0.4])).item() == pytest.approx(0.25)
    tri345 = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 4.0, 0.0]]])
    assert edge_loss(tri345, TRI_EDGES).item() == pytest.approx((9 + 16 + 25) / 3)
    w = torch.tensor([[1.0, 0.0, 3.0]])
    assert edge_loss(tri345, TRI_EDGES, w).item() == pytest.approx((9 + 3 * 25) / 4)
    gt = torch.zeros(1, 2, 3)
    pred = torch.tensor([[[1.0, 2.0, 2.0], [0.0, 0.0, 1.0]]])
    assert landmark_loss(pred, gt).item() == pytest.approx((9 + 1) / 2)
    colors = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]])
    gt_colors = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [9.0, 9.0, 9.0]]])
    assert colour_loss(colors, gt_colors, torch.tensor([[0, 1]])).item() == pytest.approx((1 + 0.25) / 2)
    with pytest.raises(InputError):
        landmark_loss(pred, torch.zeros(1, 3, 3))


def test_laplace_schedule() -> None:
    cfg = LossConfig(laplace=0.5, laplace_start=5.0, laplace_epochs=10, laplace_schedule="linear")
    assert [laplace_weight(cfg, e) for e in (0, 5, 10, 30)] == pytest.approx([5.0, 2.75, 0.5, 0.5])
    cfg.laplace_schedule = "step"
    assert [laplace_weight(cfg, e) for e in (0, 9.9, 10)] == pytest.approx([5.0, 5.0, 0.5])
    assert laplace_weight(LossConfig(), 0) == 0.5


def _prediction(coords: list[torch.Tensor], inputs: list[torch.Tensor], edges: torch.Tensor, **kw) -> SimpleNamespace:
    return SimpleNamespace(coords=coords, input_coords=inputs, edges=[edges] * len(coords),
                           landmarks=kw.get("landmarks"), colors=kw.get("colors"))


def test_mesh_loss_total_is_the_weighted_sum_and_handles_padding() -> None:
    torch.manual_seed(0)
    b, v, p = 2, 4, 9
    before = [SQUARE.expand(b, -1, -1) * 0.5, SQUARE.expand(b, -1, -1) * 0.6]
    after = [x + 0.05 * torch.randn(b, v, 3) for x in before]
    points = torch.rand(b, p, 3)
    lengths = torch.tensor([9, 5])
    points[1, 5:] = 1e3  # padding far away must not matter
    weights = torch.rand(b, p) + 0.5
    normals = torch.nn.functional.normalize(torch.randn(b, p, 3), dim=-1)
    lms = torch.rand(b, 68, 3)
    gt_lms = torch.rand(b, 68, 3)
    batch = {"points": points, "lengths": lengths, "normals": normals, "weights": weights, "landmarks": gt_lms}
    cfg = LossConfig(chamfer_block_weights=(0.5, 1.0), weighted_chamfer=True)
    res = MeshLoss(cfg)(_prediction(after, before, SQUARE_EDGES, landmarks=lms), batch)
    # chamfer terms equal facerecon.ops.chamfer_distance (independent code path)
    ch = sum(w * chamfer_distance(c, points, None, lengths, weights) for w, c in zip((0.5, 1.0), after))
    torch.testing.assert_close(res.terms["chamfer"], ch)
    lap = sum(laplacian_loss(x, y, SQUARE_EDGES) for x, y in zip(before, after))
    mv = move_loss(before[1], after[1])  # first block skipped
    ed = sum(edge_loss(c, SQUARE_EDGES) for c in after)
    torch.testing.assert_close(res.terms["laplace"], lap)
    torch.testing.assert_close(res.terms["move"], mv)
    torch.testing.assert_close(res.terms["edge"], ed)
    total = ch + 1.6e-4 * res.terms["normal"] + 0.5 * lap + 0.033 * mv + 0.1 * ed + 1.0 * landmark_loss(lms, gt_lms)
    torch.testing.assert_close(res.total, total)
    assert "colour" not in res.terms
    # the padded ground truth is ignored: same loss as with the padding cut off
    cut = {k: (v[1:2, :5] if k in ("points", "normals", "weights") else v[1:2]) for k, v in batch.items()}
    cut["lengths"] = torch.tensor([5])
    one = _prediction([c[1:2] for c in after], [c[1:2] for c in before], SQUARE_EDGES, landmarks=lms[1:2])
    ref = MeshLoss(cfg)(one, cut)
    pad = _prediction([c[1:2] for c in after], [c[1:2] for c in before], SQUARE_EDGES, landmarks=lms[1:2])
    padded_batch = {k: v[1:2] for k, v in batch.items()}
    torch.testing.assert_close(MeshLoss(cfg)(pad, padded_batch).total, ref.total)


def test_mesh_loss_errors() -> None:
    pred = _prediction([TRI], [TRI], TRI_EDGES)
    batch = {"points": TRI, "lengths": torch.tensor([3]), "normals": torch.zeros(1, 3, 3)}
    with pytest.raises(InputError, match="weights"):
        MeshLoss(LossConfig(weighted_edge=True))(pred, batch)
    with pytest.raises(InputError, match="chamfer_block_weights"):
        MeshLoss(LossConfig(chamfer_block_weights=()))(pred, batch)
    res = MeshLoss()(pred, batch)
    assert res.total.item() == pytest.approx(0.1 * (1 + 1 + 2) / 3)  # exact fit: only the edge term
