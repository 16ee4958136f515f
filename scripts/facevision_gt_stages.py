"""The FaceVision-GAN mesh synthesis on ground-truth maps: what the refinement does to a perfect
depth map, before any network is trained (docs/facevision.md).

    python scripts/facevision_gt_stages.py CACHE [--rows 40] [--picture docs/img/facevision_stages.png]

For the first ``--rows`` rows of a 3DMM cache: the maps side file (made once, beside the cache),
then per row the mesh stages of ``facerecon.mesh.from_depth.synthesize_mesh`` from the ground-truth
depth map (detail filling from the row's 224 px crop, the box scaled to it), and per stage: vertices,
faces, folded interior edges (``engine.evaluate.fold_fraction``, as ``eval`` counts them), and how
far the stage moved the vertices from the raw mesh's (the ground truth's depth at the pixel
centres; mean and 99th percentile, crop units x 1000). With ``--picture``: the four stages of the first row, shaded geometry only (no
photo pixels), side by side.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from facerecon.data.facevision_maps import make_maps_file, read_maps
from facerecon.engine.evaluate import fold_fraction
from facerecon.imageio import save_image
from facerecon.mesh.from_depth import FaceMesh, synthesize_mesh
from facerecon.render import render

STAGES = ("raw", "cleaned", "smoothed", "detailed")


def _shaded(mesh: FaceMesh, box: np.ndarray, size: int = 256) -> np.ndarray:
    """Lambert shading of ``mesh`` seen from the camera, the crop box resampled to ``size`` px, uint8 grey RGB."""
    v = mesh.vertices.copy()
    scale = size / float(box[2])
    v[:, :2] = (v[:, :2] - box[:2]) * scale
    v[:, 2] *= scale
    f = v[mesh.faces]
    n = np.cross(f[:, 1] - f[:, 0], f[:, 2] - f[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    light = np.array([-0.35, -0.45, -1.0]) / np.linalg.norm([-0.35, -0.45, -1.0])  # from the upper left, in front
    shade = np.clip(n @ light, 0.0, 1.0)
    flat_v = f.reshape(-1, 3)  # one vertex per face corner: flat shading
    res = render(flat_v, np.arange(len(flat_v)).reshape(-1, 3), (size, size), {"shade": np.repeat(shade, 3)})
    grey = np.where(res.mask, 0.15 + 0.85 * res.attributes["shade"], 1.0)
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--picture", type=Path, default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    maps = make_maps_file(args.cache)
    print(f"maps: {maps} ({time.perf_counter() - t0:.1f} s)")
    stats: dict[str, list[tuple[float, ...]]] = {s: [] for s in STAGES}
    seconds = []
    with h5py.File(args.cache, "r") as f:
        n = min(args.rows, f["boxes"].shape[0])
        depth, _, _ = read_maps(maps, np.arange(n))
        for i in range(n):
            crop_box = np.array([0.0, 0.0, 224.0])  # the row's crop as the photo: detail from the crop's own pixels
            image = f["images"][i]
            t = time.perf_counter()
            stages = synthesize_mesh(depth[i], crop_box, image)
            seconds.append(time.perf_counter() - t)
            lookup = np.full(depth[i].shape, -1, dtype=np.int64)
            lookup[stages.raw.pixels[:, 0], stages.raw.pixels[:, 1]] = np.arange(len(stages.raw.pixels))
            for name in STAGES:
                mesh = getattr(stages, name)
                folds = float(fold_fraction(torch.from_numpy(mesh.vertices)[None], torch.from_numpy(mesh.faces))[0]) * 100
                raw_v = stages.raw.vertices[lookup[mesh.pixels[:, 0], mesh.pixels[:, 1]]]
                moved = np.linalg.norm(mesh.vertices - raw_v, axis=1) * 2.0 / crop_box[2] * 1000  # crop units x 1000
                stats[name].append((len(mesh.vertices), len(mesh.faces), folds, moved.mean(), np.percentile(moved, 99)))
            if i == 0 and args.picture is not None:
                tiles = [_shaded(getattr(stages, s), crop_box) for s in STAGES]
                save_image(args.picture, np.concatenate(tiles, axis=1))
    print(f"{n} rows; synthesis and refinement {np.median(seconds) * 1000:.0f} ms a row (median)")
    print("stage | vertices | faces | folded interior edges % (mean, max) | moved from raw, crop units x1000 (mean, p99)")
    for name, rows in stats.items():
        a = np.array(rows)
        print(f"{name:8s} | {a[:, 0].mean():8.0f} | {a[:, 1].mean():5.0f} | {a[:, 2].mean():.3f}, {a[:, 2].max():.3f} | "
              f"{a[:, 3].mean():.2f}, {a[:, 4].mean():.2f}")


if __name__ == "__main__":
    main()
