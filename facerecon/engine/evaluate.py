"""Per-sample reconstruction metrics of a predicted mesh against the cache's ground truth.

Used by validation during ``facerecon train`` and by ``facerecon eval``. Predicted meshes are
sampled uniformly on their surface (a fixed number of points, area-weighted) before the point
metrics, as the literature does; the samples of each item are drawn from a generator seeded by
``(seed, sample index)``, so the numbers do not depend on the batch size.

Units: coordinates are crop units (docs/conventions.md); Chamfer distance is in squared crop
units (mean squared nearest distance, both directions, summed); F-score thresholds ``tau`` are
distances in crop units (precision = share of predicted points within ``tau`` of the ground
truth, recall the reverse); NME is in percent of sqrt(w*h) of the ground-truth landmark box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Container, Sized, cast

import torch
from torch import Tensor

if TYPE_CHECKING:
    from facerecon.model.facevision import FaceVisionNet

#: Default F-score threshold, crop units (0.01 crop units is about 1.1 px of a 224-px crop, or
#: about 1 mm on an average AFLW2000-3D face).
DEFAULT_TAU = 0.01
#: Points sampled on each predicted surface before the point metrics.
DEFAULT_SURFACE_SAMPLES = 10000


@dataclass(frozen=True)
class EvalSettings:
    tau: float = DEFAULT_TAU
    surface_samples: int = DEFAULT_SURFACE_SAMPLES
    seed: int = 0


def sample_surface(vertices: Tensor, faces: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Uniform samples on a triangle mesh's surface.

    Args:
        vertices: (V, 3) float, any units.
        faces: (F, 3) int64.
        n: number of samples.
        generator: a CPU ``torch.Generator`` (the draws are made on the CPU for reproducibility).

    Returns:
        (n, 3) points on the surface, same dtype and device as ``vertices``.
    """
    v = vertices.detach().to("cpu", torch.float64)
    tri = v[faces.cpu()]  # (F, 3, 3)
    areas = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=1)
    if not torch.isfinite(areas).all() or float(areas.sum()) <= 0:
        choice = torch.randint(0, faces.shape[0], (n,), generator=generator)
    else:
        choice = torch.multinomial(areas, n, replacement=True, generator=generator)
    r1 = torch.rand(n, generator=generator, dtype=torch.float64).sqrt()
    r2 = torch.rand(n, generator=generator, dtype=torch.float64)
    t = tri[choice]
    pts = (1 - r1)[:, None] * t[:, 0] + (r1 * (1 - r2))[:, None] * t[:, 1] + (r1 * r2)[:, None] * t[:, 2]
    return pts.to(vertices.device, vertices.dtype)


def sample_batch_surfaces(
    vertices: Tensor, faces: Tensor, indices: list[int], settings: EvalSettings
) -> Tensor:
    """(B, n, 3) surface samples of a batch of meshes sharing ``faces``; item ``b`` uses the seed
    ``(settings.seed, indices[b])`` so results are independent of batching."""
    out = []
    for b, index in enumerate(indices):
        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + int(index))
        out.append(sample_surface(vertices[b], faces, settings.surface_samples, gen))
    return torch.stack(out)


@torch.no_grad()
def point_metrics(samples: Tensor, gt_points: Tensor, gt_lengths: Tensor, settings: EvalSettings) -> dict[str, Tensor]:
    """Chamfer and F-scores at tau and 2 tau of predicted point sets against padded ground truth.

    Args:
        samples: (B, N, 3) predicted points, crop units.
        gt_points: (B, P, 3) padded ground truth; ``gt_lengths`` (B,) int64.

    Returns:
        dict of (B,) float64 CPU tensors (see ``batch_metrics``).
    """
    from facerecon.metrics import fscore_from_neighbours
    from facerecon.ops import nearest_neighbors
    from facerecon.ops.chamfer import chamfer_from_neighbours

    gt = gt_points.to(samples.device, samples.dtype)
    lengths = gt_lengths.to(samples.device)
    nn = nearest_neighbors(samples, gt, None, lengths)  # one search per direction feeds every metric
    out: dict[str, Tensor] = {"chamfer": chamfer_from_neighbours(nn).double().cpu()}
    for name, tau in (("tau", settings.tau), ("2tau", 2 * settings.tau)):
        p, r, f = fscore_from_neighbours(nn, tau * tau)
        out[f"precision@{name}"] = torch.as_tensor(p).double().cpu()
        out[f"recall@{name}"] = torch.as_tensor(r).double().cpu()
        out[f"fscore@{name}"] = torch.as_tensor(f).double().cpu()
    return out


@torch.no_grad()
def batch_metrics(
    pred_vertices: Tensor,
    faces: Tensor,
    gt_points: Tensor,
    gt_lengths: Tensor,
    indices: list[int],
    settings: EvalSettings,
    pred_landmarks: Tensor | None = None,
    gt_landmarks: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-sample metrics of a batch.

    Args:
        pred_vertices: (B, V, 3) predicted vertices, crop units.
        faces: (F, 3) int64 triangles of the predicted meshes.
        gt_points: (B, P, 3) padded ground-truth points, crop units; ``gt_lengths`` (B,) int64.
        indices: the samples' stable indices (seed the surface sampling).
        settings: threshold, number of surface samples, seed.
        pred_landmarks, gt_landmarks: (B, 68, 3) crop units, or None (no NME).

    Returns:
        dict of (B,) float64 CPU tensors: ``chamfer`` (squared crop units), ``precision@tau``,
        ``recall@tau``, ``fscore@tau``, the same at ``2tau`` (fractions in [0, 1]) and, with
        landmarks, ``nme`` (percent).
    """
    from facerecon.metrics import landmark_nme

    samples = sample_batch_surfaces(pred_vertices.float(), faces, indices, settings)
    out = point_metrics(samples, gt_points, gt_lengths, settings)
    if pred_landmarks is not None and gt_landmarks is not None:
        nme = landmark_nme(pred_landmarks.detach().float().cpu(), gt_landmarks.float().cpu())
        out["nme"] = torch.as_tensor(nme).double().cpu() * 100.0
    return out


# ------------------------------------------------------------------------------------- eval run
#: Yaw bins of the AFLW2000-3D protocol, degrees of |yaw|.
YAW_BINS = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))


@dataclass
class EvalReport:
    """Per-sample rows and the summary of one ``facerecon eval`` run."""

    rows: list[dict]
    summary: dict
    settings: EvalSettings


#: Interior edges whose two faces' normals differ by more than this are folds (degrees).
FOLD_ANGLE_DEG = 60.0


def fold_fraction(vertices: Tensor, faces: Tensor, angle_deg: float = FOLD_ANGLE_DEG) -> Tensor:
    """Share of interior edges that are folds (the two faces' normals differ by more than
    ``angle_deg``; trimesh's ``face_adjacency_angles`` measure), per mesh.

    Args:
        vertices: (B, V, 3) float. faces: (F, 3) int64 (shared).

    Returns:
        (B,) float64 fractions in [0, 1].
    """
    from facerecon.mesh.surface import face_adjacency, face_normals

    n = face_normals(vertices.double(), faces)
    pairs = face_adjacency(faces)
    cos = (n[:, pairs[:, 0]] * n[:, pairs[:, 1]]).sum(-1)
    return (cos < torch.cos(torch.deg2rad(torch.tensor(angle_deg, dtype=torch.float64)))).double().mean(1).cpu()


class FivePointBaseline:
    """The face model's mean face posed by a scaled-orthographic least-squares fit of its five
    points (eye centres, nose tip, mouth corners, from its 68 landmark vertices) to MTCNN's five
    points of each crop (``facerecon.model.face_prior.fit_scaled_orthographic``); depth origin at
    its landmarks' mean depth, like the ground truth. A crop without five points (fallback) gets
    the training crops' mean five points. The model-free baseline a network must beat."""

    def __init__(self, cache: str) -> None:
        import h5py
        import numpy as np

        from facerecon.model.face_prior import five_points_from_68, model_mean_crop_axes

        with h5py.File(cache, "r") as f:
            self.check(f, cache)
            mean = model_mean_crop_axes(f["face_model/mean"][:])
            self.faces = torch.from_numpy(f["face_model/triangles"][:].astype(np.int64))
            lm_ids = f["face_model/landmark_ids"][:].astype(np.int64)
            train = f["split"][:] == 0
            five = f["landmarks5"][:][train]
        ok = np.isfinite(five).all(axis=(1, 2))
        self.five_ref = torch.from_numpy(five[ok].mean(0) if ok.any() else np.zeros((5, 2))).float()
        scale = float(np.abs(mean[:, :2] - mean[:, :2].mean(0)).max())
        self.vertices = torch.from_numpy((mean - mean.mean(0)) / scale).float()  # O(1) units for the fit
        self.landmarks = self.vertices[torch.from_numpy(lm_ids)]
        self.five3d = five_points_from_68(self.landmarks)

    @staticmethod
    def check(f: Container[str], cache: str) -> None:
        """Raise ``InputError`` unless the open cache ``f`` holds what the baseline needs."""
        from facerecon.errors import InputError

        if "face_model" not in f or "landmarks5" not in f:
            raise InputError(f"{cache}: the five-point baseline needs a schema-2 cache of a 3DMM dataset (run prepare again)")

    def predict(self, landmarks5: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 5, 2) crop units (NaN rows allowed) -> (vertices (B, N, 3), landmarks (B, 68, 3))."""
        from facerecon.model.face_prior import fit_scaled_orthographic

        five = landmarks5.float()
        ok = torch.isfinite(five).all(-1).all(-1)
        five = torch.where(ok[:, None, None], five, self.five_ref[None])
        s, rot, t = fit_scaled_orthographic(self.five3d, five)

        def pose(x: Tensor) -> Tensor:
            p = s[:, None, None] * x[None] @ rot.transpose(1, 2)
            return p + torch.cat([t, torch.zeros_like(t[:, :1])], 1)[:, None, :]

        lms = pose(self.landmarks)
        z0 = lms[..., 2].mean(1)
        shift = torch.zeros(five.shape[0], 1, 3)
        shift[..., 2] = -z0[:, None]
        return pose(self.vertices) + shift, lms + shift


def _baseline_points(points: Tensor, settings: EvalSettings) -> Tensor:
    """The baseline's point set for the point metrics: every mean point, or a seeded uniform
    subset of ``surface_samples`` of them (the mean face's vertices are its surface samples)."""
    if points.shape[0] <= settings.surface_samples:
        return points
    gen = torch.Generator().manual_seed(settings.seed)
    return points[torch.randperm(points.shape[0], generator=gen)[: settings.surface_samples]]


def yaw_bin_nme(rows: list[dict]) -> dict[str, float]:
    """Mean NME per |yaw| bin (0-30, 30-60, 60-90 degrees; the last bin takes any |yaw| >= 60)
    and the mean of the three bins (only when every bin has samples)."""
    out: dict[str, float] = {}
    means = []
    for k, (lo, hi) in enumerate(YAW_BINS):
        last = k == len(YAW_BINS) - 1
        vals = [r["nme"] for r in rows if "nme" in r and lo <= abs(r["yaw"]) and (abs(r["yaw"]) < hi or last)]
        if vals:
            out[f"nme_yaw_{int(lo)}_{int(hi)}"] = float(sum(vals) / len(vals))
            means.append(out[f"nme_yaw_{int(lo)}_{int(hi)}"])
    if len(means) == len(YAW_BINS):
        out["nme_yaw_mean"] = float(sum(means) / len(means))
    return out


#: The keys of a per-sample row that are not metrics.
_ROW_KEYS = ("id", "index", "yaw")


def metric_means(rows: list[dict]) -> dict[str, float]:
    """Mean of every per-sample metric over the rows that have it (``nme``: the samples with
    ground-truth landmarks)."""
    keys = dict.fromkeys(k for row in rows for k in row if k not in _ROW_KEYS)
    return {k: float(sum(r[k] for r in rows if k in r) / max(1, sum(1 for r in rows if k in r))) for k in keys}


@torch.no_grad()
def evaluate_cache(
    cache: str,
    split: str,
    settings: EvalSettings,
    network: torch.nn.Module | None = None,
    baseline: str | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvalReport:
    """Evaluate a network (or a baseline: ``"mean"``, the constant mean face; ``"five-point"``,
    the mean face posed by MTCNN's five points, see ``FivePointBaseline``) on a cache split.

    Ground truth: every point of each sample (no region draws). Each sample's metrics depend only
    on its own prediction and seed, so any ``batch_size`` gives the same numbers.
    """
    from facerecon.data.dataset import FaceCacheDataset
    from facerecon.errors import InputError

    if (network is None) == (baseline is None):
        raise InputError("evaluate a network or a baseline (one of them)")
    if baseline not in (None, "mean", "five-point"):
        raise InputError(f"unknown baseline {baseline!r}: use 'mean' or 'five-point'")
    device = torch.device(device)
    dataset = FaceCacheDataset(cache, split=split, points_per_region=None, seed=settings.seed, profile_views=False)
    if len(dataset) == 0:
        raise InputError(f"{cache}: the {split} split is empty")
    if network is not None:
        return evaluate_network(network, dataset, settings, batch_size, device, limit, on_batch)
    measure = _five_point_measure(cache, settings) if baseline == "five-point" else _mean_face_measure(cache, settings, device)
    return _evaluate(dataset, measure, settings, batch_size, device, limit, on_batch)


@torch.no_grad()
def evaluate_network(
    network: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    settings: EvalSettings,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    folds: bool = True,
) -> EvalReport:
    """The metrics of ``network`` (left in eval mode) on the first ``limit`` samples of a
    ``FaceCacheDataset`` with every ground-truth point (``points_per_region=None``): ``facerecon
    eval`` and the validation of ``facerecon train``. ``folds``: also the fold percentage."""
    from facerecon.model.facevision import FaceVisionNet
    from facerecon.model.network import forward_batch

    network.eval()
    if isinstance(network, FaceVisionNet):  # a mesh of its own per crop, made from the predicted maps
        return _evaluate(dataset, _facevision_measure(network, settings, folds), settings, batch_size, torch.device(device), limit, on_batch)

    def measure(batch: dict, gt: Tensor, lengths: Tensor, indices: list[int]) -> dict[str, Tensor]:
        pred = forward_batch(network, batch)
        metrics = batch_metrics(pred.vertices, pred.faces[-1], gt, lengths, indices, settings, pred.landmarks, batch["landmarks"])
        if folds:
            metrics["folds"] = fold_fraction(pred.vertices, pred.faces[-1]) * 100.0
        return metrics

    return _evaluate(dataset, measure, settings, batch_size, torch.device(device), limit, on_batch)


#: ``measure(batch on the device, gt points, gt lengths, sample indices)`` -> per-sample metrics.
_Measure = Callable[[dict, Tensor, Tensor, list[int]], dict[str, Tensor]]


def _facevision_measure(network: FaceVisionNet, settings: EvalSettings, folds: bool) -> _Measure:
    """The FaceVision-GAN family's metrics: each crop's final mesh (from its predicted depth map,
    refined, smoothed and detailed; ``engine.facevision``) sampled on its surface as every
    network's, landmarks from its correspondence map, folds of that mesh."""
    import numpy as np

    from facerecon.engine.facevision import reconstruct_batch
    from facerecon.metrics import landmark_nme

    def measure(batch: dict, gt: Tensor, lengths: Tensor, indices: list[int]) -> dict[str, Tensor]:
        meshes = reconstruct_batch(network, batch["image"])
        samples = []
        for mesh, index in zip(meshes, indices):  # seeded per sample, as sample_batch_surfaces
            gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + int(index))
            samples.append(sample_surface(torch.from_numpy(mesh.vertices).float(), torch.from_numpy(mesh.faces), settings.surface_samples, gen))
        metrics = point_metrics(torch.stack(samples).to(gt.device), gt, lengths, settings)
        landmarks = torch.from_numpy(np.stack([m.landmarks for m in meshes])).float()
        metrics["nme"] = torch.as_tensor(landmark_nme(landmarks, batch["landmarks"].float().cpu())).double() * 100.0
        if folds:
            metrics["folds"] = torch.stack([fold_fraction(torch.from_numpy(m.vertices)[None], torch.from_numpy(m.faces))[0] for m in meshes]) * 100.0
        return metrics

    return measure


def _five_point_measure(cache: str, settings: EvalSettings) -> _Measure:
    five_point = FivePointBaseline(cache)

    def measure(batch: dict, gt: Tensor, lengths: Tensor, indices: list[int]) -> dict[str, Tensor]:
        verts, lms = five_point.predict(batch["landmarks5"].cpu())
        metrics = batch_metrics(verts.to(gt.device), five_point.faces.to(gt.device), gt, lengths, indices, settings, lms, batch["landmarks"])
        metrics["folds"] = fold_fraction(verts, five_point.faces) * 100.0
        return metrics

    return measure


def _mean_face_measure(cache: str, settings: EvalSettings, device: torch.device) -> _Measure:
    from facerecon.engine.statistics import mean_face
    from facerecon.metrics import landmark_nme

    mean_pts, mean_lms = mean_face(cache, "train")
    mean_pts = _baseline_points(mean_pts, settings).to(device)
    mean_lms = mean_lms.to(device)

    def measure(batch: dict, gt: Tensor, lengths: Tensor, indices: list[int]) -> dict[str, Tensor]:
        b = gt.shape[0]
        metrics = point_metrics(mean_pts.unsqueeze(0).expand(b, -1, -1).contiguous(), gt, lengths, settings)
        lm = mean_lms.unsqueeze(0).expand(b, -1, -1).cpu()
        metrics["nme"] = torch.as_tensor(landmark_nme(lm, batch["landmarks"].float().cpu())).double() * 100.0
        return metrics

    return measure


def _evaluate(
    dataset: torch.utils.data.Dataset,
    measure: _Measure,
    settings: EvalSettings,
    batch_size: int,
    device: torch.device,
    limit: int | None,
    on_batch: Callable[[int], None] | None,
) -> EvalReport:
    """The one evaluation loop: per-sample rows of ``measure``'s metrics, and their summary."""
    from torch.utils.data import DataLoader, Subset

    from facerecon.data.dataset import collate_faces

    size = len(cast(Sized, dataset))  # a map-style dataset (FaceCacheDataset)
    n = size if limit is None else min(limit, size)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_faces)
    rows: list[dict] = []
    for batch in loader:
        indices = [int(i) for i in batch["index"]]
        on_device = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
        metrics = measure(on_device, on_device["points"], on_device["lengths"], indices)
        for i in range(len(indices)):
            row = {"id": batch["id"][i], "index": indices[i], "yaw": float(batch["pose"][i, 0])}
            row.update({k: float(v[i]) for k, v in metrics.items()})
            if not torch.isfinite(batch["landmarks"][i]).all():
                row.pop("nme", None)
            rows.append(row)
        if on_batch is not None:
            on_batch(len(indices))
    summary = {**metric_means(rows), **yaw_bin_nme(rows), "num_samples": len(rows)}
    return EvalReport(rows, summary, settings)
