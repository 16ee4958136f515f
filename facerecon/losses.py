"""Training losses of Pixel2Mesh for faces, batched, with padded ground truth.

``L = chamfer + 1.6e-4 normal + 0.5 laplace + 0.033 move + 0.1 edge (+ landmark + colour)``
(face paper; every weight in ``LossConfig``). Per block ``l`` (coarse to fine):

- chamfer: ``mean_p min_q |p-q|^2 + mean_q min_p |p-q|^2`` (docs/conventions.md), weighted by the
  per-block weights (0.5, 1, 1, 1). Optionally weighted by the ground truth's point weights: each
  predicted point takes the weight of its nearest ground-truth point, each ground-truth point its
  own, and both means become weighted means.
- normal: ``mean over directed edges (p, k) of <p - k, n_q>^2``, q the nearest ground-truth point
  of p, ``n_q`` its unit normal.
- laplace: ``mean_p |delta'_p - delta_p|^2``, ``delta_p = p - mean(neighbours of p)``, between the
  block's output and its input (after unpooling: the unpooled input).
- move: ``mean_p |p' - p|^2`` between output and input (skipped on the first block by default,
  as in Pixel2Mesh: the first block moves the template onto the face).
- edge: ``mean over edges of |a - b|^2``; weighted option: each edge weighted by the mean weight of
  its endpoints' nearest ground-truth points.

On the final prediction: landmark ``mean_k |l_k - g_k|^2`` and colour ``mean_p |P_p - P_q|^2``
(q the nearest ground-truth point). "Mean" is over vertices / edges / landmarks, then over the
batch; ``|.|^2`` sums the three coordinates (or RGB channels). Distances are squared crop units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from facerecon.config import LossConfig
from facerecon.errors import InputError
from facerecon.mesh.surface import face_normals, normal_consistency_loss
from facerecon.model.graph import edge_adjacency, neighbour_mean
from facerecon.ops.chamfer import chamfer_from_neighbours

__all__ = [
    "LossResult",
    "MeshLoss",
    "normal_loss",
    "laplacian_coordinates",
    "laplacian_loss",
    "move_loss",
    "edge_loss",
    "landmark_loss",
    "colour_loss",
    "laplace_weight",
]

_EPS = 1e-12


def _gather(values: Tensor, idx: Tensor) -> Tensor:
    """values (B, P, C) or (B, P), idx (B, N) -> (B, N, C) or (B, N)."""
    if values.ndim == 2:
        return torch.gather(values, 1, idx)
    return torch.gather(values, 1, idx.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


def _at(values: Tensor, idx: Tensor) -> Tensor:
    """``values[:, idx]`` for (B, V, ...) ``values`` and a 1-D ``idx``, with a backward that adds in
    a fixed order: ``index_select``'s backward (``index_add_``) walks ``idx`` in order, while an
    indexed read's (``index_put_(accumulate=True)``) adds the repeated vertices of the edge
    lists in thread order on the CPU at batch size 1 (measured: the same seed gave different
    weights after one step)."""
    return values.index_select(1, idx)


def normal_loss(coords: Tensor, edges: Tensor, gt_normals: Tensor, idx_xy: Tensor) -> Tensor:
    """``mean over directed edges (p, k) of <p - k, n_q(p)>^2``, then over the batch.

    Args:
        coords: (B, V, 3) predicted vertices.
        edges: (E, 2) int64 undirected edges (each is used in both directions).
        gt_normals: (B, P, 3) unit normals of the ground-truth points.
        idx_xy: (B, V) int64 nearest gt point of every predicted vertex.
    """
    n = _gather(gt_normals.to(coords.dtype), idx_xy)  # (B, V, 3)
    a, b = edges[:, 0], edges[:, 1]
    d = _at(coords, a) - _at(coords, b)  # (B, E, 3)
    t_a = (d * _at(n, a)).sum(-1)
    t_b = (d * _at(n, b)).sum(-1)  # <b - a, n_b>^2 == <a - b, n_b>^2
    return 0.5 * (t_a.square().mean() + t_b.square().mean())


def laplacian_coordinates(coords: Tensor, edges: Tensor) -> Tensor:
    """``delta_p = p - mean(neighbours of p)`` (isolated vertices: ``p``).

    The neighbour mean is the graph convolution's sparse product
    (:func:`facerecon.model.graph.neighbour_mean`), computed in ``coords``' dtype.

    Args:
        coords: (B, V, 3) vertices.
        edges: (E, 2) int64 undirected edges.

    Returns:
        (B, V, 3).
    """
    return coords - neighbour_mean(edge_adjacency(edges, coords.shape[1], coords.dtype), coords)


def laplacian_loss(before: Tensor, after: Tensor, edges: Tensor) -> Tensor:
    """``mean_p |delta'_p - delta_p|^2`` (summed over xyz), then over the batch.

    Args:
        before: (B, V, 3) the block's input vertices. after: (B, V, 3) its output.
        edges: (E, 2) int64 undirected edges.
    """
    diff = laplacian_coordinates(after, edges) - laplacian_coordinates(before, edges)
    return diff.square().sum(-1).mean()


def move_loss(before: Tensor, after: Tensor) -> Tensor:
    """``mean_p |p' - p|^2`` over vertices and batch; (B, V, 3) each."""
    return (after - before).square().sum(-1).mean()


def edge_loss(coords: Tensor, edges: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean squared edge length (weighted mean per sample with ``weights``), then over the batch.

    Args:
        coords: (B, V, 3) vertices.
        edges: (E, 2) int64 undirected edges.
        weights: (B, E) float non-negative per-edge weights, or None.
    """
    sq = (_at(coords, edges[:, 0]) - _at(coords, edges[:, 1])).square().sum(-1)  # (B, E)
    if weights is None:
        return sq.mean()
    w = weights.to(sq.dtype)
    return ((w * sq).sum(1) / w.sum(1).clamp(min=_EPS)).mean()


def landmark_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """``mean_k |l_k - g_k|^2`` over landmarks and batch; (B, K, 3) each, crop units."""
    if pred.shape != gt.shape:
        raise InputError(f"landmarks: prediction {tuple(pred.shape)} vs ground truth {tuple(gt.shape)}")
    return (pred - gt.to(pred.dtype)).square().sum(-1).mean()


def landmark_distance_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """``mean_k |l_k - g_k|`` (Euclidean) over landmarks and batch; (B, K, 3) each."""
    if pred.shape != gt.shape:
        raise InputError(f"landmarks: prediction {tuple(pred.shape)} vs ground truth {tuple(gt.shape)}")
    return (pred - gt.to(pred.dtype)).norm(dim=-1).mean()


def colour_loss(colors: Tensor, gt_colors: Tensor, idx_xy: Tensor) -> Tensor:
    """``mean_p |P_p - P_q|^2``, q the nearest gt point of vertex p.

    Args:
        colors: (B, V, 3) predicted RGB in [0, 1].
        gt_colors: (B, P, 3) ground-truth RGB in [0, 1].
        idx_xy: (B, V) int64 nearest gt point of every vertex.
    """
    target = _gather(gt_colors.to(colors.dtype), idx_xy)
    return (colors - target).square().sum(-1).mean()


def vertex_loss(coords: Tensor, gt: Tensor) -> Tensor:
    """``mean_v |p_v - g_v|`` (Euclidean, crop units) over vertices and batch; gt may have more
    vertices (a finer level): its first V rows are used."""
    return (coords - gt[:, : coords.shape[1]].to(coords.dtype)).norm(dim=-1).mean()


def laplace_weight(cfg: LossConfig, epoch: float) -> float:
    """The Laplacian weight at ``epoch`` (0-based, fractional allowed) under ``cfg``'s schedule."""
    if cfg.laplace_schedule == "constant" or cfg.laplace_epochs <= 0:
        return cfg.laplace
    if cfg.laplace_schedule == "linear":
        frac = min(max(epoch / cfg.laplace_epochs, 0.0), 1.0)
        return cfg.laplace_start + (cfg.laplace - cfg.laplace_start) * frac
    if cfg.laplace_schedule == "step":
        return cfg.laplace_start if epoch < cfg.laplace_epochs else cfg.laplace
    raise InputError(f"loss.laplace_schedule = {cfg.laplace_schedule!r}: use 'constant', 'linear' or 'step'")


@dataclass
class LossResult:
    """``total``: scalar to backpropagate. ``terms``: the unweighted terms (detached scalars),
    summed over blocks (chamfer with its block weights): chamfer, normal, laplace, move, edge and,
    when predicted and present in the batch, landmark and colour."""

    total: Tensor
    terms: dict[str, Tensor]


class MeshLoss(nn.Module):
    """The weighted sum of all terms for a ``MeshPrediction`` and a data batch."""

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()

    def forward(self, pred: Any, batch: Mapping[str, Tensor], epoch: float = 0.0) -> LossResult:
        """
        Args:
            pred: a ``facerecon.model.MeshPrediction`` (coords, input_coords, edges per block;
                colors, landmarks).
            batch: ``points`` (B, P, 3) crop units, padded; ``lengths`` (B,) int64; ``normals``
                (B, P, 3); optional ``weights`` (B, P) (needed for the weighted options),
                ``landmarks`` (B, K, 3), ``colors`` (B, P, 3) in [0, 1].
            epoch: the current (fractional) epoch, for the Laplacian schedule.
        """
        cfg = self.cfg
        blocks = len(pred.coords)
        if len(cfg.chamfer_block_weights) < blocks:
            raise InputError(
                f"loss.chamfer_block_weights has {len(cfg.chamfer_block_weights)} entries for {blocks} blocks"
            )
        weights = batch.get("weights")
        if (cfg.weighted_chamfer or cfg.weighted_edge) and weights is None:
            raise InputError("the weighted Chamfer / edge loss needs per-point 'weights' in the batch")
        zero = batch["points"].new_zeros(())
        sums = {"chamfer": zero, "normal": zero, "laplace": zero, "move": zero, "edge": zero}
        gt_vertices = batch.get("vertices") if cfg.vertex > 0 else None
        if gt_vertices is not None:
            sums["vertex"] = zero
        idx_last = self._block_terms(pred, batch, sums, gt_vertices)
        weight = {
            "chamfer": cfg.chamfer,
            "normal": cfg.normal,
            "laplace": laplace_weight(cfg, epoch),
            "move": cfg.move,
            "edge": cfg.edge,
        }
        if gt_vertices is not None:
            self._vertex_terms(pred, gt_vertices, sums, weight)
        if cfg.normal_consistency > 0:
            sums["normal_consistency"] = normal_consistency_loss(pred.coords[-1].float(), pred.faces[-1])
            weight["normal_consistency"] = cfg.normal_consistency
        if getattr(pred, "landmarks", None) is not None and "landmarks" in batch:
            lm_fn = landmark_distance_loss if cfg.landmark_norm == "euclidean" else landmark_loss
            sums["landmark"] = lm_fn(pred.landmarks.float(), batch["landmarks"])
            weight["landmark"] = cfg.landmark
        if getattr(pred, "colors", None) is not None and "colors" in batch and idx_last is not None:
            sums["colour"] = colour_loss(pred.colors.float(), batch["colors"], idx_last)
            weight["colour"] = cfg.colour
        total = sum((weight[k] * v for k, v in sums.items()), zero)
        return LossResult(total=total, terms={k: v.detach() for k, v in sums.items()})

    def _block_terms(self, pred: Any, batch: Mapping[str, Tensor], sums: dict[str, Tensor], gt_vertices: Tensor | None) -> Tensor | None:
        """Add every block's Chamfer, normal, Laplacian, move, edge (and per-vertex) terms to
        ``sums``; the last block's nearest ground-truth point per vertex (None when no term
        needed the search)."""
        from facerecon.ops import nearest_neighbors

        cfg = self.cfg
        points, lengths, weights = batch["points"], batch.get("lengths"), batch.get("weights")
        # the nearest-neighbour search only when a term needs it (the per-vertex losses do not)
        need_nn = cfg.chamfer > 0 or cfg.normal > 0 or cfg.weighted_edge or (
            getattr(pred, "colors", None) is not None and "colors" in batch
        )
        idx_last = None
        for level in range(len(pred.coords)):
            coords, before, edges = pred.coords[level], pred.input_coords[level], pred.edges[level]
            coords32 = coords.float()
            if need_nn:
                nn_res = nearest_neighbors(coords32, points.float(), None, lengths)
                per_sample = chamfer_from_neighbours(nn_res, weights if cfg.weighted_chamfer else None, eps=_EPS)
                sums["chamfer"] = sums["chamfer"] + cfg.chamfer_block_weights[level] * per_sample.mean()
                sums["normal"] = sums["normal"] + normal_loss(coords32, edges, batch["normals"], nn_res.idx_xy)
                idx_last = nn_res.idx_xy
            if gt_vertices is not None:
                sums["vertex"] = sums["vertex"] + cfg.chamfer_block_weights[level] * vertex_loss(coords32, gt_vertices)
            sums["laplace"] = sums["laplace"] + laplacian_loss(before.float(), coords32, edges)
            if level > 0 or not cfg.move_skip_first:
                sums["move"] = sums["move"] + move_loss(before.float(), coords32)
            edge_w = None
            if cfg.weighted_edge:
                assert weights is not None and idx_last is not None  # checked by forward; weighted_edge needs the search
                w_v = _gather(weights.float(), idx_last)  # (B, V)
                edge_w = 0.5 * (_at(w_v, edges[:, 0]) + _at(w_v, edges[:, 1]))
            sums["edge"] = sums["edge"] + edge_loss(coords32, edges, edge_w)
        return idx_last

    def _vertex_terms(self, pred: Any, gt_vertices: Tensor, sums: dict[str, Tensor], weight: dict[str, float]) -> None:
        """The per-vertex ground truth's terms beyond the blocks' vertex loss: the base face's
        vertex loss and the final mesh's face normals against the ground truth's."""
        cfg = self.cfg
        weight["vertex"] = cfg.vertex
        base = getattr(pred, "base", None)
        if cfg.base > 0 and base is not None:
            sums["base"] = vertex_loss(base.float(), gt_vertices)
            weight["base"] = cfg.base
        if cfg.gt_normal > 0:
            final = pred.coords[-1].float()
            faces = pred.faces[-1]
            n_pred = face_normals(final, faces)
            n_gt = face_normals(gt_vertices[:, : final.shape[1]].float(), faces)
            sums["gt_normal"] = (1.0 - (n_pred * n_gt).sum(-1)).mean()
            weight["gt_normal"] = cfg.gt_normal
