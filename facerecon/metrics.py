"""Reconstruction metrics: F-score at a distance threshold and the AFLW2000-3D landmark NME.

The Chamfer distance itself is :func:`facerecon.ops.chamfer_distance`.
"""

from __future__ import annotations

from typing import Optional, Union, cast

import numpy as np
import torch

from facerecon.errors import InputError
from facerecon.ops.knn import LengthsLike, NNResult, nearest_neighbors

ArrayLike = Union[torch.Tensor, np.ndarray]


def fscore(pred: torch.Tensor, gt: torch.Tensor, tau: Optional[float] = None, tau_sq: Optional[float] = None,
           pred_lengths: LengthsLike = None, gt_lengths: LengthsLike = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F-score of a predicted point set against the ground truth at threshold tau, per batch element.

    precision = share of predicted points whose nearest ground-truth point is closer than tau;
    recall = share of ground-truth points whose nearest predicted point is closer than tau;
    F = 2 P R / (P + R) (0 when P + R = 0). Comparisons are strict (``d < tau``).

    Give exactly one threshold: ``tau`` is a DISTANCE (input units, e.g. crop units or mm, the
    convention of Tatarchenko et al.), ``tau_sq`` a SQUARED distance (the Pixel2Mesh codebases
    threshold squared distances at 1e-4 and 2e-4, i.e. tau = 0.01 and sqrt(2e-4) in their units).
    ``tau=t`` equals ``tau_sq=t**2``.

    Args:
        pred: (B, N, 3) float32/float64 predicted points.
        gt: (B, M, 3) ground-truth points, same unit, dtype and device.
        tau / tau_sq: the threshold (> 0), see above.
        pred_lengths, gt_lengths: (B,) int64 valid counts of the padded clouds (None = all).

    Returns:
        (precision, recall, f): three (B,) tensors of pred's dtype, fractions in [0, 1] (papers
        report them x100).
    """
    if (tau is None) == (tau_sq is None):
        raise InputError("give exactly one of tau (a distance) and tau_sq (a squared distance)")
    threshold = float(tau) ** 2 if tau is not None else float(cast(float, tau_sq))  # one of them is given
    if not np.isfinite(threshold) or threshold <= 0 or (tau is not None and float(tau) <= 0):
        raise InputError(f"the F-score threshold must be a positive finite number, got tau={tau}, tau_sq={tau_sq}")
    with torch.no_grad():
        nn = nearest_neighbors(pred.detach(), gt.detach(), pred_lengths, gt_lengths)
    return fscore_from_neighbours(nn, threshold)


def fscore_from_neighbours(nn: NNResult, tau_sq: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`fscore` from a nearest-neighbour result already computed, at the SQUARED threshold
    ``tau_sq`` (one search feeds Chamfer and every threshold)."""
    threshold = float(tau_sq)
    with torch.no_grad():
        dtype = nn.dist_xy.dtype
        valid_p, valid_g = nn.idx_xy >= 0, nn.idx_yx >= 0
        precision = ((nn.dist_xy < threshold) & valid_p).sum(1).to(dtype) / valid_p.sum(1).to(dtype)
        recall = ((nn.dist_yx < threshold) & valid_g).sum(1).to(dtype) / valid_g.sum(1).to(dtype)
        total = precision + recall
        f = torch.where(total > 0, 2 * precision * recall / total.clamp_min(torch.finfo(total.dtype).tiny),
                        torch.zeros_like(total))
    return precision, recall, f


def landmark_box_size(landmarks: np.ndarray) -> np.ndarray:
    """(..., K, >=2) -> (...,) sqrt(w h) of the x-y bounding box of the landmarks: the unit of
    :func:`landmark_nme` (w = max x - min x, h = max y - min y)."""
    xy = np.asarray(landmarks, dtype=np.float64)[..., :2]
    extent = xy.max(axis=-2) - xy.min(axis=-2)
    return np.sqrt(extent[..., 0] * extent[..., 1])


def landmark_nme(pred_lm: ArrayLike, gt_lm: ArrayLike) -> ArrayLike:
    """Normalised mean error of landmarks, AFLW2000-3D protocol (as in 3DDFA).

    Per sample: the mean over landmarks of the 2D Euclidean error using x, y only (z ignored),
    divided by sqrt(w * h) of the ground-truth landmarks' bounding box (w = max x - min x,
    h = max y - min y). Unitless (any consistent pixel or crop unit); papers report it x100 as %.

    Args:
        pred_lm: (B, K, 2 or 3) or (K, 2 or 3) predicted landmarks (K = 68 for the protocol).
        gt_lm: the ground truth, same shape (z may be absent on either side).

    Returns:
        (B,) errors per sample (a 0-d value for unbatched input), a torch.Tensor or np.ndarray
        like ``pred_lm``.
    """
    pred = pred_lm.detach().cpu().double().numpy() if isinstance(pred_lm, torch.Tensor) else np.asarray(pred_lm, float)
    gt = gt_lm.detach().cpu().double().numpy() if isinstance(gt_lm, torch.Tensor) else np.asarray(gt_lm, float)
    single = pred.ndim == 2
    if single:
        pred, gt = pred[None], gt[None] if gt.ndim == 2 else gt
    if pred.ndim != 3 or gt.ndim != 3 or pred.shape[-1] not in (2, 3) or gt.shape[-1] not in (2, 3):
        raise InputError(f"landmarks must have shape (B, K, 2|3) or (K, 2|3), got {pred.shape} and {gt.shape}")
    if pred.shape[:2] != gt.shape[:2] or pred.shape[1] < 2:
        raise InputError(f"pred and gt landmarks must match with K >= 2, got {pred.shape} and {gt.shape}")
    if not (np.isfinite(pred[..., :2]).all() and np.isfinite(gt[..., :2]).all()):
        raise InputError("landmarks must be finite")
    size = landmark_box_size(gt)
    if (size <= 0).any():
        raise InputError("a ground-truth landmark box has zero width or height; cannot normalise")
    err = np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1).mean(axis=1) / size
    out = err[0] if single else err
    if isinstance(pred_lm, torch.Tensor):
        return torch.as_tensor(out, dtype=pred_lm.dtype if pred_lm.dtype.is_floating_point else torch.float64)
    return np.asarray(out)
