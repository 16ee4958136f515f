"""The face prior of model v2: a template-to-face-model correspondence, a shape basis learned from
the training ground truth in the template's topology, and the pose fits that use MTCNN's five points.

Why. The Pixel2Mesh network starts from one fixed template placement, so pose, scale and shape
must all be learned from the images. Model v2 starts each face from a posed, plausible face instead:

* **Correspondence** (:func:`template_correspondence`): every vertex of the finest template level
  is put on the face model's mean face (the hemisphere's disk is stretched radially onto the
  face's frontal outline, then each vertex is located in a face-model triangle, barycentric
  weights). Ground truth whose points are the face model's vertices in order (3DMM datasets:
  AFLW2000-3D, 300W-LP; the cache's ``points_in_model_order``) then has a per-vertex counterpart
  of every template vertex: ``gt_v = sum_k bary[v, k] * points[ids[v, k]]`` (:func:`template_truth`).
* **Shape basis** (:func:`build_face_prior`): the training faces in template topology are aligned
  to their mean by a similarity (Procrustes), and a PCA of the aligned faces gives ``K`` modes.
* **Pose from five points** (:func:`similarity_2d`, :func:`fit_scaled_orthographic`): the 2-D
  similarity that maps MTCNN's five points onto their mean position (to align the network's
  input), and the scaled-orthographic pose of the mean face's five 3-D points that best projects
  onto them (the network's initial pose, and the ``five-point`` baseline of ``facerecon eval``).

Frames: everything is in crop units, x right, y down, z away from the camera (docs/conventions.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from facerecon.errors import InputError

__all__ = [
    "FIVE_POINT_LANDMARKS",
    "FacePriorArrays",
    "template_correspondence",
    "mirror_permutation",
    "five_points_from_68",
    "similarity_fit_batch",
    "similarity_2d",
    "apply_similarity_2d",
    "fit_scaled_orthographic",
    "rotation_6d",
    "build_face_prior",
    "template_truth",
    "remove_folds",
    "model_mean_crop_axes",
]

#: MTCNN's five points as iBUG-68 landmarks: eye centres (mean of the eye contours), nose tip,
#: mouth corners; "left" is the smaller image x (the subject's right).
FIVE_POINT_LANDMARKS: tuple[tuple[int, ...], ...] = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))


@overload
def five_points_from_68(landmarks: Tensor) -> Tensor: ...
@overload
def five_points_from_68(landmarks: np.ndarray) -> np.ndarray: ...
def five_points_from_68(landmarks: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """(..., 68, C) -> (..., 5, C): the five MTCNN points from 68 iBUG landmarks."""
    parts = [landmarks[..., list(ids), :].mean(-2) for ids in FIVE_POINT_LANDMARKS]
    if isinstance(landmarks, np.ndarray):
        return np.stack(parts, axis=-2)
    return torch.stack(parts, dim=-2)


def model_mean_crop_axes(mean: np.ndarray) -> np.ndarray:
    """Face-model mean (N, 3) (model units, y up, z toward the camera) -> crop axes (x right,
    y down, z away), same units (the frontal pose of ``project_to_image``)."""
    m = np.asarray(mean, dtype=np.float64).reshape(-1, 3)
    return np.stack([m[:, 0], -m[:, 1], -m[:, 2]], axis=1)


# ------------------------------------------------------------------------------ correspondence
def template_correspondence(
    face_vertices: np.ndarray,
    face_triangles: np.ndarray,
    template: np.ndarray,
    margin: float = 0.97,
    bins: int = 360,
) -> tuple[np.ndarray, np.ndarray]:
    """Put every template vertex on the face surface.

    The template's (x, y) disk (the hemisphere: x, y in [-1, 1]) is mapped radially onto the
    face's frontal outline: a vertex at radius rho (0..1) and angle theta goes to
    ``centre + rho * margin * r(theta)``, ``r(theta)`` the outline radius of the face's (x, y)
    projection in that direction (max radius per angular bin, circularly smoothed). The target is
    located in the face triangle that contains it in (x, y) and lies nearest the camera
    (smallest z); a target outside every triangle takes its nearest vertex.

    Args:
        face_vertices: (N, 3) face in crop axes (x right, y down, z away), any scale.
        face_triangles: (T, 3) int triangles of the face.
        template: (V, 3) template vertices in the hemisphere's canonical frame.
        margin: fraction of the outline radius the template rim reaches.
        bins: angular bins of the outline.

    Returns:
        ``(ids (V, 3) int64, bary (V, 3) float32)``: vertex ids and barycentric weights (rows sum to 1).
    """
    fv = np.asarray(face_vertices, dtype=np.float64)
    tri = np.asarray(face_triangles, dtype=np.int64)
    if fv.ndim != 2 or fv.shape[1] != 3 or tri.ndim != 2 or tri.shape[1] != 3 or tri.size == 0:
        raise InputError("template correspondence needs face vertices (N, 3) and triangles (T, 3)")
    xy = fv[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    centre = 0.5 * (lo + hi)
    outline = _outline_radii(xy, tri, centre, bins)
    t = np.asarray(template, dtype=np.float64)
    t_ang = np.arctan2(t[:, 1], t[:, 0])
    # radius = the polar angle from the dome tip (0 at the tip, 1 on the rim): rings equally
    # spaced on the sphere stay equally spaced on the face (the x-y radius crowds the rim)
    norm = np.linalg.norm(t, axis=1).clip(min=1e-12)
    t_rho = np.clip(np.arccos(np.clip(-t[:, 2] / norm, -1.0, 1.0)) / (0.5 * math.pi), 0.0, 1.0)
    pos = (t_ang + math.pi) / (2 * math.pi) * bins - 0.5
    i0 = np.floor(pos).astype(np.int64)
    w = pos - i0
    r = (1 - w) * outline[i0 % bins] + w * outline[(i0 + 1) % bins]
    target = centre + (t_rho * margin * r)[:, None] * np.stack([np.cos(t_ang), np.sin(t_ang)], axis=1)
    return _locate_on_surface(fv, tri, target)


def _outline_radii(xy: np.ndarray, tri: np.ndarray, centre: np.ndarray, bins: int) -> np.ndarray:
    """(bins,) the face's (x, y) outline radius about ``centre`` per angular bin (the largest
    radius in the bin; empty bins interpolated; circularly smoothed over 7 bins)."""
    # the outline: the vertices and points along the boundary edges (edges of one triangle), so
    # that every angular bin sees the rim even on a coarse mesh
    e = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(e, axis=0, return_counts=True)
    rim = uniq[counts == 1]
    steps = np.linspace(0.0, 1.0, 65)[:, None, None]
    rim_pts = (1 - steps) * xy[rim[:, 0]][None] + steps * xy[rim[:, 1]][None]
    d = np.concatenate([xy, rim_pts.reshape(-1, 2)]) - centre
    ang = np.arctan2(d[:, 1], d[:, 0])
    rad = np.hypot(d[:, 0], d[:, 1])
    b = ((ang + math.pi) / (2 * math.pi) * bins).astype(np.int64) % bins
    outline = np.zeros(bins)
    np.maximum.at(outline, b, rad)
    empty = outline == 0
    if empty.any():  # a bin without a vertex: interpolate from its neighbours
        idx = np.flatnonzero(~empty)
        outline[empty] = np.interp(np.flatnonzero(empty), idx, outline[idx], period=bins)
    kernel = np.ones(7) / 7.0
    return np.convolve(np.concatenate([outline[-3:], outline, outline[:3]]), kernel, mode="valid")


def _locate_on_surface(fv: np.ndarray, tri: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each (x, y) target, the face triangle containing it nearest the camera (smallest z)
    and its barycentric weights; a target outside every triangle takes its nearest vertex.
    Returns ``(ids (V, 3) int64, bary (V, 3) float32)``."""
    from scipy.spatial import cKDTree

    # candidate triangles: those around the nearest face vertices of each target
    _, near = cKDTree(fv[:, :2]).query(target, k=12)
    flat = tri.reshape(-1)
    order = np.argsort(flat, kind="stable")
    tri_of = np.repeat(np.arange(tri.shape[0]), 3)[order]  # triangles around each vertex, CSR
    starts = np.searchsorted(flat[order], np.arange(fv.shape[0] + 1))
    ids = np.zeros((target.shape[0], 3), dtype=np.int64)
    bary = np.zeros((target.shape[0], 3), dtype=np.float64)
    for v in range(target.shape[0]):
        cand = np.unique(np.concatenate([tri_of[starts[k] : starts[k + 1]] for k in near[v]]))
        corners = fv[tri[cand]]  # (C, 3, 3)
        a, bb, c = corners[:, 0, :2], corners[:, 1, :2], corners[:, 2, :2]
        v0, v1, v2 = bb - a, c - a, target[v] - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        ok = np.abs(den) > 1e-12
        den = np.where(ok, den, 1.0)
        l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        l0 = 1.0 - l1 - l2
        inside = ok & (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
        if inside.any():
            lam = np.stack([l0, l1, l2], axis=1)
            z = (lam * corners[:, :, 2]).sum(1)
            z[~inside] = np.inf
            best = int(np.argmin(z))
            ids[v] = tri[cand[best]]
            bary[v] = np.clip(lam[best], 0.0, 1.0)
            bary[v] /= bary[v].sum()
        else:
            ids[v] = near[v][0]
            bary[v] = (1.0, 0.0, 0.0)
    return ids, bary.astype(np.float32)


def mirror_permutation(template: np.ndarray) -> np.ndarray:
    """(V,) int64: the vertex nearest each vertex's mirror image ``(-x, y, z)`` (an involution
    on a symmetric template)."""
    from scipy.spatial import cKDTree

    t = np.asarray(template, dtype=np.float64)
    mirrored = t * np.array([-1.0, 1.0, 1.0])
    _, idx = cKDTree(t).query(mirrored, k=1)
    return idx.astype(np.int64)


# ------------------------------------------------------------------------------ fits (torch)
def similarity_fit_batch(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares similarity ``target ~ s * source @ R.T + t`` per batch item (Umeyama).

    Args:
        source: (B, N, D) float. target: (B, N, D) float (D = 2 or 3).

    Returns:
        ``(s (B,), R (B, D, D) proper rotations, t (B, D))``.
    """
    mu_s, mu_t = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
    xs, xt = source - mu_s, target - mu_t
    cov = xt.transpose(1, 2) @ xs / source.shape[1]  # (B, D, D)
    u, sig, vh = torch.linalg.svd(cov)
    det = torch.det(u @ vh)
    fix = torch.ones_like(sig)
    fix[:, -1] = torch.sign(det).where(det != 0, torch.ones_like(det))
    rot = u @ torch.diag_embed(fix) @ vh
    var = xs.square().sum((1, 2)) / source.shape[1]
    s = (sig * fix).sum(1) / var.clamp(min=1e-12)
    t = mu_t.squeeze(1) - s[:, None] * (mu_s @ rot.transpose(1, 2)).squeeze(1)
    return s, rot, t


def similarity_2d(points: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """The 2-D similarity that maps ``points`` onto ``reference`` (least squares).

    Args:
        points: (B, 5, 2) float crop units; rows with NaN give the identity.
        reference: (5, 2) float crop units.

    Returns:
        ``(A (B, 2, 2), t (B, 2))`` with ``aligned = points @ A.T + t``.
    """
    ref = reference.to(points)
    ok = torch.isfinite(points).all(-1).all(-1)
    src = torch.where(ok[:, None, None], points, ref[None])
    # In 2-D the least-squares similarity is one complex number c = a + i b (Umeyama's answer in
    # closed form, no SVD): c = sum(conj(z_s) z_t) / sum(|z_s|^2) over the centred points.
    mu_s, mu_t = src.mean(1), ref.mean(0)
    xs, xt = src - mu_s[:, None], ref[None] - mu_t
    den = xs.square().sum((1, 2)).clamp(min=1e-12)
    a = (xs * xt).sum((1, 2)) / den
    b = (xs[..., 0] * xt[..., 1] - xs[..., 1] * xt[..., 0]).sum(1) / den
    mat = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], 1)  # (B, 2, 2)
    return mat, mu_t[None] - (mat @ mu_s[:, :, None]).squeeze(-1)


def apply_similarity_2d(a: Tensor, t: Tensor, xy: Tensor) -> Tensor:
    """(B, 2, 2), (B, 2), (B, V, 2) -> (B, V, 2): ``xy @ A.T + t``."""
    return xy @ a.transpose(1, 2) + t[:, None, :]


def fit_scaled_orthographic(model_points: Tensor, image_points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Scaled-orthographic pose of 3-D model points that best projects onto 2-D points.

    Solves the affine camera ``y ~ M x + t`` (M 2x3) in least squares, then takes the nearest
    scaled rotation: ``M = U S V^T`` -> ``s = mean(S)``, rows of ``U V^T`` (orthonormal), third
    row their cross product.

    Args:
        model_points: (K, 3) float (K >= 4, not coplanar), crop axes.
        image_points: (B, K, 2) float crop units.

    Returns:
        ``(s (B,), R (B, 3, 3), t (B, 2))`` with ``projection = s * (x @ R.T)[:, :2] + t``.
    """
    x = model_points.to(image_points)
    xc = x - x.mean(0, keepdim=True)
    yc = image_points - image_points.mean(1, keepdim=True)
    pinv = torch.linalg.solve(xc.T @ xc, xc.T)  # (3, K), the pseudo-inverse of a full-rank xc
    m = (pinv @ yc).transpose(1, 2)  # (B, 2, 3)
    u, sig, vh = torch.linalg.svd(m, full_matrices=False)  # (B,2,2), (B,2), (B,2,3)
    r12 = u @ vh
    r3 = torch.linalg.cross(r12[:, 0], r12[:, 1], dim=-1)
    rot = torch.cat([r12, r3[:, None, :]], dim=1)
    s = sig.mean(1)
    t = image_points.mean(1) - s[:, None] * (x.mean(0) @ r12.transpose(1, 2))
    return s, rot, t


def rotation_6d(d6: Tensor) -> Tensor:
    """(B, 6) -> (B, 3, 3) rotation (Zhou et al.'s continuous 6-D representation, Gram-Schmidt);
    zeros map to the identity (the input is offset by the identity's first two rows)."""
    a1 = d6[:, 0:3] + d6.new_tensor([1.0, 0.0, 0.0])
    a2 = d6[:, 3:6] + d6.new_tensor([0.0, 1.0, 0.0])
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=1)


# ------------------------------------------------------------------------------ the prior
@dataclass
class FacePriorArrays:
    """What :func:`build_face_prior` learns from the training faces (saved in the network's state dict).

    Attributes:
        ids, bary: (V, 3) template-to-face-model correspondence of the finest template level.
        mean: (V, 3) float32 the aligned training faces' mean, template topology, crop units,
            centred at the origin.
        basis: (K, V, 3) float32 orthonormal PCA modes (crop units per unit coefficient).
        std: (K,) float32 standard deviation of the training coefficients.
        landmarks: (68, 3) float32 mean aligned ground-truth landmarks (same frame as ``mean``).
        five3d: (5, 3) float32 the five MTCNN points on ``mean`` (from ``landmarks``).
        five_ref: (5, 2) float32 mean MTCNN five points of the training crops (crop units).
        mirror: (V,) int64 left/right mirror permutation of the template vertices.
        explained: fraction of the aligned variance the K modes explain.
    """

    ids: np.ndarray
    bary: np.ndarray
    mean: np.ndarray
    basis: np.ndarray
    std: np.ndarray
    landmarks: np.ndarray
    five3d: np.ndarray
    five_ref: np.ndarray
    mirror: np.ndarray
    explained: float


def template_truth(points: np.ndarray, ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """A face-model sample's ground truth in the template's topology: ``gt_v = sum_k bary[v, k] *
    points[ids[v, k]]`` ((P, 3) points in the face model's vertex order -> (V, 3) float32)."""
    return (bary[:, :, None] * points[ids]).sum(1).astype(np.float32)


def remove_folds(vertices: np.ndarray, faces: np.ndarray, weight: float = 0.1, steps: int = 400) -> np.ndarray:
    """The nearest smooth surface: ``argmin_V mean_v |V_v - X_v| + weight * normal_consistency(V)``
    (Adam from X). Sampling the face model at the template's vertices creases its steep parts
    (lips, nostrils, the sides): about 1.5 % of the mean face's interior edges fold there; with the
    default weight they drop to ~0.1 % while the vertices move ~1e-3 crop units.

    Args:
        vertices: (V, 3) float. faces: (F, 3) int.

    Returns:
        (V, 3) float32, the same bits on every run and thread count.
    """
    from facerecon.mesh.surface import normal_consistency_loss

    x = torch.as_tensor(np.asarray(vertices), dtype=torch.float32)[None]
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    v = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=1e-3)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # the gathers' backward would add in thread order
    try:
        for _ in range(steps):
            loss = (v - x).norm(dim=-1).mean() + weight * normal_consistency_loss(v, f)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.use_deterministic_algorithms(was)
    return v.detach()[0].numpy()


def build_face_prior(
    faces: np.ndarray,
    landmarks: np.ndarray,
    fives: np.ndarray,
    correspondence: tuple[np.ndarray, np.ndarray],
    template: np.ndarray,
    n_components: int = 40,
    template_faces: np.ndarray | None = None,
) -> FacePriorArrays:
    """Learn the prior from the training faces (``facerecon.engine.statistics`` reads them from a
    cache, in the pass that checks it).

    Args:
        faces: (S, V, 3) the training faces in template topology (:func:`template_truth`), crop units.
        landmarks: (S, 68, 3) their landmarks; fives: (S, 5, 2) their MTCNN five points (NaN: none).
        correspondence: ``(ids, bary)`` of :func:`template_correspondence` that made ``faces``.
        template: (V, 3) finest template level, hemisphere frame.
        n_components: K, PCA modes kept.
        template_faces: (F, 3) the template's triangles: the mean face is then made fold-free
            (:func:`remove_folds`) before it becomes the network's starting surface.

    Raises:
        InputError: no training face.
    """
    ids, bary = correspondence
    if len(faces) == 0:
        raise InputError("the face prior needs at least one training face")
    gt = torch.from_numpy(np.asarray(faces)).double()  # (S, V, 3)
    lm = torch.from_numpy(np.asarray(landmarks)).double()
    ok = torch.isfinite(gt).all(-1).all(-1) & torch.isfinite(lm).all(-1).all(-1)
    gt, lm = gt[ok], lm[ok]
    aligned, lm_aligned = _procrustes_align(gt, lm)
    mean = aligned.mean(0)
    x = (aligned - mean).reshape(aligned.shape[0], -1)
    _, sv, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(n_components, vh.shape[0])
    var = sv.square()
    std = sv[:k] / math.sqrt(max(1, x.shape[0] - 1))
    lm_mean = lm_aligned.mean(0)
    five_np = np.asarray(fives)
    five_ok = np.isfinite(five_np).all(axis=(1, 2))
    five_ref = five_np[five_ok].mean(0) if five_ok.any() else five_points_from_68(lm.mean(0).numpy())[:, :2]
    mean_np = mean.float().numpy()
    if template_faces is not None:
        mean_np = remove_folds(mean_np, template_faces)
    return FacePriorArrays(
        ids=ids,
        bary=bary,
        mean=mean_np,
        basis=vh[:k].reshape(k, -1, 3).float().numpy(),
        std=std.float().numpy(),
        landmarks=lm_mean.float().numpy(),
        five3d=five_points_from_68(lm_mean.float().numpy()),
        five_ref=np.asarray(five_ref, dtype=np.float32),
        mirror=mirror_permutation(template),
        explained=float(var[:k].sum() / var.sum()),
    )


def _procrustes_align(gt: Tensor, lm: Tensor) -> tuple[Tensor, Tensor]:
    """Generalised Procrustes: (S, V, 3) faces and their (S, 68, 3) landmarks moved by each
    face's similarity onto the running mean (3 rounds are plenty), at the median scale of the data."""
    ref = gt[0] - gt[0].mean(0)
    for _ in range(3):
        s, rot, t = similarity_fit_batch(gt, ref[None].expand_as(gt))
        aligned = s[:, None, None] * gt @ rot.transpose(1, 2) + t[:, None, :]
        ref = aligned.mean(0)
        ref = ref - ref.mean(0)
        # keep the scale of a typical crop-frame face (median scale of the data)
        ref = ref * float(torch.median(1.0 / s))
    s, rot, t = similarity_fit_batch(gt, ref[None].expand_as(gt))
    aligned = s[:, None, None] * gt @ rot.transpose(1, 2) + t[:, None, :]
    return aligned, s[:, None, None] * lm @ rot.transpose(1, 2) + t[:, None, :]


def prior_to_state(prior: FacePriorArrays) -> dict[str, Any]:
    """The tensors of a prior, keyed as the network's ``prior_*`` buffers."""
    return {
        "prior_mean": torch.from_numpy(prior.mean),
        "prior_basis": torch.from_numpy(prior.basis),
        "prior_std": torch.from_numpy(prior.std),
        "prior_five3d": torch.from_numpy(np.asarray(prior.five3d, dtype=np.float32)),
        "prior_five_ref": torch.from_numpy(prior.five_ref),
        "prior_landmarks": torch.from_numpy(prior.landmarks),
    }
