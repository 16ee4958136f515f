"""How much of the FaceVision-GAN family's Chamfer distance is the surface a depth map cannot hold,
and what completing it with the posed face model gives (docs/facevision.md).

    python scripts/facevision_completion_study.py CACHE CHECKPOINT [--split val] [--rows 40]
        [--picture docs/img/facevision_completion.png]

A depth map holds the surface the camera sees; the cache's ground truth is the whole face model,
the far cheek and the ears included. For the first ``--rows`` crops of the split this prints the
mean Chamfer distance (squared, both directions, 10,000 points sampled on each surface, as
``eval``) against the ground truth of:

* the network's detailed mesh alone (the visible surface);
* that mesh completed as ``predict`` and ``eval`` complete it
  (``facerecon.engine.facevision.complete_hidden_side``: the face model's mean face posed on the
  maps by a trimmed 3-D affine fit, its triangles the map does not show added);
* the posed mean face alone.

The checkpoint must hold a face model (networks trained by this version do). With ``--picture``:
for the split's first row in each |yaw| bin (0-30, 30-60, 60-90 degrees), the crop, then the
visible and the completed mesh seen from the camera and turned 70 degrees toward the far side
(shaded geometry only), one row each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))

from facevision_gt_stages import _shaded

from facerecon.data.dataset import split_rows
from facerecon.data.facevision_maps import pose_face_model
from facerecon.engine.facevision import FaceMeshes, complete_hidden_side, reconstruct_batch
from facerecon.engine.predict import load_model
from facerecon.errors import InputError
from facerecon.imageio import save_image
from facerecon.mesh.from_depth import FaceMesh

BINS = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))


def _sample(vertices: np.ndarray, faces: np.ndarray, n: int = 10000) -> np.ndarray:
    return np.asarray(trimesh.sample.sample_surface(trimesh.Trimesh(vertices, faces, process=False), n, seed=0)[0])


def _chamfer(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(cKDTree(b).query(a)[0] ** 2) + np.mean(cKDTree(a).query(b)[0] ** 2))


def _turned(vertices: np.ndarray, degrees: float) -> np.ndarray:
    """Crop-unit vertices turned about the vertical axis through their centre."""
    t = np.radians(degrees)
    rot = np.array([[np.cos(t), 0.0, np.sin(t)], [0.0, 1.0, 0.0], [-np.sin(t), 0.0, np.cos(t)]])
    centre = vertices.mean(axis=0)
    return (vertices - centre) @ rot.T + centre


def _views(vertices: np.ndarray, faces: np.ndarray, far_side: float, size: int) -> list[np.ndarray]:
    box = np.array([-1.0, -1.0, 2.0])  # crop units: the crop is [-1, 1]^2
    return [_shaded(FaceMesh(v, faces, np.zeros((len(v), 2), dtype=np.int64)), box, size) for v in (vertices, _turned(vertices, far_side))]


def _picture_row(crop: np.ndarray, mesh: FaceMeshes, yaw: float, size: int = 256) -> np.ndarray:
    photo = np.asarray(torch.nn.functional.interpolate(torch.from_numpy(crop).permute(2, 0, 1)[None].float(), size=(size, size), mode="bilinear",
                                                       align_corners=False)[0].permute(1, 2, 0).round().clamp(0, 255).byte())
    far_side = -70.0 if yaw > 0 else 70.0  # turn the hidden cheek toward the camera
    visible = _views(mesh.stages[-1], mesh.stage_faces[-1], far_side, size)
    completed = _views(mesh.vertices, mesh.faces, far_side, size)
    return np.concatenate([photo, visible[0], completed[0], visible[1], completed[1]], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--picture", type=Path, default=None)
    args = parser.parse_args()
    net = load_model(args.checkpoint).network.eval()
    if net.face_codes is None or net.face_triangles is None:
        raise SystemExit(f"{args.checkpoint}: the network holds no face model to complete its meshes with")
    codes, triangles = net.face_codes.numpy().astype(np.float64), net.face_triangles.numpy().astype(np.int64)
    with h5py.File(args.cache, "r") as f:
        rows = split_rows(f["split"][:], args.split)
        yaw = f["pose"][:, 0]
        offsets = f["offsets"][:]

        def mesh_of(i: int) -> FaceMeshes:
            return reconstruct_batch(net, torch.from_numpy(f["images"][i]).permute(2, 0, 1)[None].float() / 255.0)[0]

        results = []
        for i in rows[: args.rows]:
            mesh = mesh_of(i)
            visible_v, visible_f = mesh.stages[-1], mesh.stage_faces[-1]
            completed = complete_hidden_side(visible_v, visible_f, mesh.depth, mesh.pncc, codes, triangles)
            posed = pose_face_model(mesh.depth, mesh.pncc, codes)
            truth = f["points"][offsets[i] : offsets[i + 1]]
            results.append((_chamfer(_sample(visible_v, visible_f), truth), _chamfer(_sample(*completed), truth),
                            _chamfer(_sample(posed, triangles), truth), 1.0 - len(visible_v) / len(completed[0])))
        r = np.array(results)
        print(f"{len(r)} crops of the {args.split} split, {args.checkpoint}; Chamfer x1e-3, mean (median):")
        for k, name in enumerate(("the network's visible mesh", "completed by the posed face model", "the posed face model alone")):
            print(f"  {name:36s} {r[:, k].mean() * 1e3:7.1f} ({np.median(r[:, k]) * 1e3:.1f})")
        print(f"  completed meshes' vertices from the face model: {100 * r[:, 3].mean():.0f} %")
        if args.picture is None:
            return
        lines = []
        for lo, hi in BINS:
            picked = [i for i in rows if lo <= abs(yaw[i]) < hi]
            if not picked:
                continue
            try:
                lines.append(_picture_row(f["images"][picked[0]], mesh_of(picked[0]), float(yaw[picked[0]])))
            except InputError as exc:
                print(f"cache row {picked[0]}: {exc}")
                continue
            print(f"picture row: cache row {picked[0]}, yaw {yaw[picked[0]]:.0f} degrees")
        save_image(args.picture, np.concatenate(lines, axis=0))
        print(f"wrote {args.picture}")


if __name__ == "__main__":
    main()
