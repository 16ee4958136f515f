"""How much of the FaceVision-GAN family's Chamfer distance is the surface a depth map cannot hold.

    python scripts/facevision_completion_study.py CACHE CHECKPOINT [--split val] [--rows 40]

A depth map holds the surface the camera sees; the cache's ground truth is the whole face model,
the far cheek and the ears included. For the first ``--rows`` crops of the split this fits, as
``landmarks_by_fit`` does in 2-D, a 3-D affine map from the predicted correspondence codes to the
face pixels' crop-unit positions (x, y from the pixel, z from the predicted depth; three rounds,
each leaving out the pixels above the 80th percentile of the residual), poses the face model's
mean face with it (every vertex's code from ``reference_codes``), and prints the mean Chamfer
distance (squared, both directions, 10,000 points sampled on each surface, as ``eval``) of:

* the network's mesh as ``eval`` measures it;
* that mesh completed by the posed mean face's triangles the map does not show (outside the face
  pixels, or more than 0.05 crop units behind the predicted surface);
* the posed mean face alone.

A study, not a pipeline step: the completion needs the face model at prediction time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from facerecon.data.dataset import split_rows
from facerecon.data.facevision_maps import (
    FOREGROUND_CODE,
    code_to_depth,
    map_px_to_crop,
    reference_codes,
    trimmed_affine_fit,
)
from facerecon.engine.facevision import reconstruct_batch
from facerecon.engine.predict import load_model


def _sample(vertices: np.ndarray, faces: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(trimesh.sample.sample_surface(trimesh.Trimesh(vertices, faces, process=False), n, seed=0)[0])


def _chamfer(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(cKDTree(b).query(a)[0] ** 2) + np.mean(cKDTree(a).query(b)[0] ** 2))


def _posed_mean_face(depth: np.ndarray, pncc: np.ndarray, codes: np.ndarray) -> np.ndarray:
    mask = depth > FOREGROUND_CODE
    rows, cols = np.nonzero(mask)
    xy = map_px_to_crop(np.stack([cols + 0.5, rows + 0.5], axis=1), depth.shape[0])
    target = np.concatenate([xy, code_to_depth(depth[rows, cols])[:, None]], axis=1)
    return trimmed_affine_fit(pncc[rows, cols], target)(codes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args()
    net = load_model(args.checkpoint).network.eval()
    with h5py.File(args.cache, "r") as f:
        rows = split_rows(f["split"][:], args.split)[: args.rows]
        offsets = f["offsets"][:]
        triangles = f["face_model/triangles"][:]
        codes = reference_codes(f["face_model/mean"][:])
        results = []
        for i in rows:
            crop = torch.from_numpy(f["images"][i]).permute(2, 0, 1)[None].float() / 255.0
            (mesh,) = reconstruct_batch(net, crop)
            posed = _posed_mean_face(mesh.depth, mesh.pncc, codes)
            size = mesh.depth.shape[0]
            u = np.clip(((posed[:, 0] + 1) * size / 2).astype(int), 0, size - 1)
            v = np.clip(((posed[:, 1] + 1) * size / 2).astype(int), 0, size - 1)
            face = mesh.depth[v, u] > FOREGROUND_CODE
            seen_z = np.where(face, code_to_depth(mesh.depth[v, u]), np.inf)
            hidden = ~face | (posed[:, 2] > seen_z + 0.05)
            hidden_triangles = triangles[hidden[triangles].all(axis=1)]
            truth = f["points"][offsets[i] : offsets[i + 1]]
            predicted = _sample(mesh.vertices, mesh.faces, 10000)
            completed = predicted
            if len(hidden_triangles):
                completed = np.concatenate([predicted, _sample(posed, hidden_triangles, max(1, 10000 * len(hidden_triangles) // len(triangles)))])
            results.append((_chamfer(predicted, truth), _chamfer(completed, truth), _chamfer(_sample(posed, triangles, 10000), truth), hidden.mean()))
    r = np.array(results)
    print(f"{len(rows)} crops of the {args.split} split, {args.checkpoint}; Chamfer x1e-3 (mean):")
    print(f"  the network's mesh {r[:, 0].mean() * 1e3:.1f}; completed by the posed mean face's hidden part "
          f"{r[:, 1].mean() * 1e3:.1f}; the posed mean face alone {r[:, 2].mean() * 1e3:.1f}")
    print(f"  the mean face's vertices the map does not show: {100 * r[:, 3].mean():.0f} %")


if __name__ == "__main__":
    main()
