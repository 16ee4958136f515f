"""F-score and landmark NME against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerecon.errors import InputError
from facerecon.metrics import fscore, landmark_nme


def test_fscore_hand_worked() -> None:
    pred = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0], [0.0, 0.3, 0]]])
    gt = torch.tensor([[[0.0, 0.1, 0], [1.0, 0.5, 0], [9.0, 9, 9]]])
    # pred->gt distances: 0.1, 0.5, ~4.03, 0.2 -> with tau = 0.25: 2 of 4 -> P = 0.5.
    # gt->pred distances: 0.1, 0.5, ~11.7 -> 1 of 3 -> R = 1/3. F = 2*0.5*(1/3)/(0.5+1/3) = 0.4.
    p, r, f = fscore(pred, gt, tau=0.25)
    assert p.item() == pytest.approx(0.5) and r.item() == pytest.approx(1 / 3) and f.item() == pytest.approx(0.4)
    p2, r2, f2 = fscore(pred, gt, tau_sq=0.25**2)
    assert (p2.item(), r2.item(), f2.item()) == (p.item(), r.item(), f.item())
    # tau = 0.6 in squared units (Pixel2Mesh convention): sqrt(0.6) ~ 0.775 -> P = 3/4, R = 2/3.
    p3, r3, f3 = fscore(pred, gt, tau_sq=0.6)
    assert p3.item() == pytest.approx(0.75) and r3.item() == pytest.approx(2 / 3)
    assert f3.item() == pytest.approx(2 * 0.75 * (2 / 3) / (0.75 + 2 / 3))


def test_fscore_ragged_and_zero() -> None:
    pred = torch.tensor([[[0.0, 0, 0], [7.0, 7, 7]], [[100.0, 0, 0], [0.0, 0, 0]]])
    gt = torch.tensor([[[0.0, 0, 0.05], [50.0, 0, 0]], [[0.0, 0, 0], [0.0, 0, 0]]])
    p, r, f = fscore(pred, gt, tau=0.1, pred_lengths=torch.tensor([1, 1]), gt_lengths=torch.tensor([1, 2]))
    assert p.tolist() == [1.0, 0.0] and r.tolist() == [1.0, 0.0] and f.tolist() == [1.0, 0.0]


def test_fscore_threshold_arguments() -> None:
    x = torch.zeros(1, 2, 3)
    for kwargs in ({}, {"tau": 0.1, "tau_sq": 0.01}, {"tau": -1.0}, {"tau_sq": 0.0}):
        with pytest.raises(InputError):
            fscore(x, x, **kwargs)


def test_landmark_nme_hand_worked() -> None:
    gt = np.array([[0.0, 0.0, 5.0], [4.0, 0.0, 1.0], [4.0, 9.0, 0.0], [0.0, 9.0, 2.0]])  # box 4 x 9 -> sqrt 6
    pred = gt.copy()
    pred[0, :2] += [3.0, 4.0]  # error 5
    pred[1, 2] += 100.0  # z is ignored
    pred[2, :2] += [0.0, 1.0]  # error 1
    expected = (5 + 0 + 1 + 0) / 4 / 6
    assert landmark_nme(pred, gt) == pytest.approx(expected)
    batched = landmark_nme(torch.tensor(np.stack([pred, gt])), torch.tensor(np.stack([gt, gt])))
    assert isinstance(batched, torch.Tensor) and batched.shape == (2,)
    assert batched[0].item() == pytest.approx(expected) and batched[1].item() == 0.0
    assert landmark_nme(pred[:, :2], gt) == pytest.approx(expected)


def test_landmark_nme_bad_input() -> None:
    with pytest.raises(InputError, match="zero width"):
        landmark_nme(np.zeros((68, 2)), np.zeros((68, 2)))
    with pytest.raises(InputError, match="match"):
        landmark_nme(np.zeros((68, 2)), np.ones((67, 2)))
    with pytest.raises(InputError, match="finite"):
        landmark_nme(np.full((3, 2), math.nan), np.eye(3)[:, :2])
