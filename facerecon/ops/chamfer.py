"""Chamfer distance (Pixel2Mesh convention), plain and weighted per ground-truth point."""

from __future__ import annotations

from typing import Optional

import torch

from facerecon.errors import InputError
from facerecon.ops.knn import LengthsLike, NNResult, nearest_neighbors

_REDUCTIONS = ("mean", "sum", "none")


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor, eps: Optional[float] = None) -> torch.Tensor:
    """(B,) sum(w * v) / max(sum(w), eps) over the last dim; 0 where sum(w) == 0.

    ``eps`` (default: the smallest normal number of the dtype) only matters for weight sums in
    (0, eps), where the mean becomes ``sum(w * v) / eps``.
    """
    total = weights.sum(-1)
    num = (weights * values).sum(-1)
    floor = torch.finfo(total.dtype).tiny if eps is None else eps
    return torch.where(total > 0, num / total.clamp_min(floor), torch.zeros_like(num))


def _check_weights(gt_weights: object, gt: torch.Tensor, valid_gt: torch.Tensor) -> torch.Tensor:
    """``gt``: (B, M, ...) the ground truth or anything of its (B, M) shape, dtype and device."""
    if not isinstance(gt_weights, torch.Tensor):
        raise InputError(f"gt_weights must be a torch.Tensor of shape (B, M), got {type(gt_weights).__name__}")
    if tuple(gt_weights.shape) != tuple(gt.shape[:2]):
        raise InputError(f"gt_weights must have shape {tuple(gt.shape[:2])} (B, M), got {tuple(gt_weights.shape)}")
    if gt_weights.device != gt.device:
        raise InputError(f"gt_weights is on {gt_weights.device} but gt is on {gt.device}")
    weights = torch.where(valid_gt, gt_weights.to(gt.dtype), torch.zeros((), dtype=gt.dtype, device=gt.device))
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise InputError("gt_weights must be finite and non-negative")
    return weights


def chamfer_distance(pred: torch.Tensor, gt: torch.Tensor, pred_lengths: LengthsLike = None,
                     gt_lengths: LengthsLike = None, gt_weights: Optional[torch.Tensor] = None,
                     reduction: str = "mean") -> torch.Tensor:
    """Chamfer distance: mean squared nearest distance pred->gt plus gt->pred, per batch element.

    ``CD_b = mean_p min_q |p - q|^2 + mean_q min_p |p - q|^2`` over the valid points of element b
    (the Pixel2Mesh convention: SQUARED distances, so the result is in squared input units, e.g.
    squared crop units). Differentiable w.r.t. ``pred`` and ``gt``.

    Weighted variant (TPAMI Pixel2Mesh; docs/ops.md): with ``gt_weights`` w (B, M) >= 0, each
    gt->pred term is weighted by its gt point's weight and each pred->gt term by the weight of the
    pred point's nearest gt point q(p), and both means become weighted means:
    ``CD_b = sum_p w_q(p) d_p / sum_p w_q(p) + sum_q w_q d_q / sum_q w_q``.
    Uniform weights give exactly the unweighted value; scaling all weights changes nothing; a term
    whose weights sum to 0 contributes 0. Weights act as constants (no gradient flows into them).

    Args:
        pred: (B, N, 3) float32/float64 predicted points (e.g. mesh vertices), any unit.
        gt: (B, M, 3) ground-truth points, same unit, dtype and device.
        pred_lengths, gt_lengths: (B,) int64 valid counts of the padded clouds (None = all).
        gt_weights: optional (B, M) non-negative per-gt-point weights (padding ignored).
        reduction: "mean" over the batch (default), "sum", or "none" for the (B,) values.

    Returns:
        A scalar, or (B,) for reduction="none", in squared input units.
    """
    if reduction not in _REDUCTIONS:
        raise InputError(f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
    nn = nearest_neighbors(pred, gt, pred_lengths, gt_lengths)
    return chamfer_from_neighbours(nn, gt_weights, gt, reduction)


def chamfer_from_neighbours(nn: NNResult, gt_weights: Optional[torch.Tensor] = None, gt: Optional[torch.Tensor] = None,
                            reduction: str = "none", eps: Optional[float] = None) -> torch.Tensor:
    """:func:`chamfer_distance` from a nearest-neighbour result already computed (one search can
    feed Chamfer, the training loss and any number of F-score thresholds).

    Args:
        nn: from :func:`facerecon.ops.nearest_neighbors` (pred = x, ground truth = y).
        gt_weights: optional (B, M) non-negative per-gt-point weights (padding ignored).
        gt: (B, M, 3) the ground truth, only to check ``gt_weights`` against (default: the shape,
            dtype and device of ``nn.dist_yx``).
        reduction: "none" (default, the (B,) values), "mean" or "sum" over the batch.
        eps: the floor of a weighted mean's weight sum (default: the dtype's smallest normal
            number; the training loss uses 1e-12). Only weight sums in (0, eps) feel it.
    """
    if reduction not in _REDUCTIONS:
        raise InputError(f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
    valid_p = nn.idx_xy >= 0
    valid_g = nn.idx_yx >= 0
    if gt_weights is None:
        w_p, w_g = valid_p.to(nn.dist_xy.dtype), valid_g.to(nn.dist_xy.dtype)
    else:
        w_g = _check_weights(gt_weights, nn.dist_yx if gt is None else gt, valid_g).detach()
        w_p = torch.where(valid_p, torch.gather(w_g, 1, nn.idx_xy.clamp_min(0)), torch.zeros_like(nn.dist_xy))
    per_element = _weighted_mean(nn.dist_xy, w_p, eps) + _weighted_mean(nn.dist_yx, w_g, eps)
    if reduction == "mean":
        return per_element.mean()
    if reduction == "sum":
        return per_element.sum()
    return per_element
