"""Chamfer distance against scipy cKDTree and hand-worked values; weighted variant; gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from facerecon.errors import InputError
from facerecon.ops import chamfer_distance


def _ref_chamfer(a: np.ndarray, b: np.ndarray, w: np.ndarray | None = None) -> float:
    d_ab, i_ab = cKDTree(b).query(a)
    d_ba, _ = cKDTree(a).query(b)
    if w is None:
        return float((d_ab**2).mean() + (d_ba**2).mean())
    wp = w[i_ab]
    return float((wp * d_ab**2).sum() / wp.sum() + (w * d_ba**2).sum() / w.sum())


def test_hand_worked_example() -> None:
    pred = torch.tensor([[[0.0, 0, 0], [2.0, 0, 0]]])
    gt = torch.tensor([[[0.0, 1, 0], [2.0, 0, 3], [10.0, 0, 0]]])
    # pred->gt: (0,0,0)->(0,1,0): 1; (2,0,0)->(0,1,0): 4+1 = 5 (vs 9 to (2,0,3)); mean 3.
    # gt->pred: (0,1,0): 1; (2,0,3): 9; (10,0,0): 64; mean 74/3.
    assert chamfer_distance(pred, gt).item() == pytest.approx(3 + 74 / 3)
    # Weighted, w = [2, 1, 0]: both pred points take gt 0's weight 2 -> (2*1 + 2*5)/4 = 3;
    # gt->pred (2*1 + 1*9 + 0*64)/3 = 11/3.
    w = torch.tensor([[2.0, 1.0, 0.0]])
    assert chamfer_distance(pred, gt, gt_weights=w).item() == pytest.approx(3 + 11 / 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ragged_batch_against_ckdtree(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(0)
    pl, gl = [500, 120, 1], [800, 30, 300]
    pred = rng.normal(size=(3, 500, 3))
    gt = rng.normal(size=(3, 800, 3)) * 1.1
    w = rng.uniform(0.25, 2.0, size=(3, 800))
    args = dict(pred_lengths=torch.tensor(pl), gt_lengths=torch.tensor(gl), reduction="none")
    got = chamfer_distance(torch.tensor(pred, dtype=dtype), torch.tensor(gt, dtype=dtype), **args)
    got_w = chamfer_distance(torch.tensor(pred, dtype=dtype), torch.tensor(gt, dtype=dtype),
                             gt_weights=torch.tensor(w), **args)
    for b in range(3):
        a, c, wb = pred[b, : pl[b]], gt[b, : gl[b]], w[b, : gl[b]]
        assert got[b].item() == pytest.approx(_ref_chamfer(a, c), rel=1e-5)
        assert got_w[b].item() == pytest.approx(_ref_chamfer(a, c, wb), rel=1e-5)
    full = chamfer_distance(torch.tensor(pred, dtype=dtype), torch.tensor(gt, dtype=dtype),
                            pred_lengths=torch.tensor(pl), gt_lengths=torch.tensor(gl))
    assert full.item() == pytest.approx(got.mean().item(), rel=1e-6)
    summed = chamfer_distance(torch.tensor(pred, dtype=dtype), torch.tensor(gt, dtype=dtype),
                              pred_lengths=torch.tensor(pl), gt_lengths=torch.tensor(gl), reduction="sum")
    assert summed.item() == pytest.approx(got.sum().item(), rel=1e-6)


def test_uniform_weights_equal_unweighted_and_scale_invariant() -> None:
    gen = torch.Generator().manual_seed(2)
    pred, gt = torch.randn(2, 50, 3, generator=gen), torch.randn(2, 70, 3, generator=gen)
    plain = chamfer_distance(pred, gt, reduction="none")
    torch.testing.assert_close(chamfer_distance(pred, gt, gt_weights=torch.full((2, 70), 3.0), reduction="none"), plain)
    w = torch.rand(2, 70, generator=gen) + 0.1
    torch.testing.assert_close(chamfer_distance(pred, gt, gt_weights=w), chamfer_distance(pred, gt, gt_weights=5 * w))


def test_gradcheck_weighted_float64() -> None:
    gen = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 8, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    gt = torch.randn(2, 11, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(2, 11, dtype=torch.float64, generator=gen) + 0.5
    lengths = (torch.tensor([8, 5]), torch.tensor([11, 7]))
    assert torch.autograd.gradcheck(
        lambda a, b: chamfer_distance(a, b, *lengths, gt_weights=w, reduction="none"), (pred, gt))


def test_bad_arguments() -> None:
    x = torch.zeros(1, 3, 3)
    with pytest.raises(InputError, match="reduction"):
        chamfer_distance(x, x, reduction="max")
    with pytest.raises(InputError, match="shape"):
        chamfer_distance(x, x, gt_weights=torch.ones(1, 4))
    with pytest.raises(InputError, match="non-negative"):
        chamfer_distance(x, x, gt_weights=-torch.ones(1, 3))
