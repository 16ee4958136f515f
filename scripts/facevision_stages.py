"""The FaceVision-GAN mesh stages from a trained network's maps: what the refinement does to what
the generator draws (docs/facevision.md), beside ``facevision_gt_stages.py``'s ground-truth maps.

    python scripts/facevision_stages.py CACHE CHECKPOINT [--split test] [--rows 60]
        [--picture docs/img/facevision_predicted_stages.png]

For the first ``--rows`` rows of the split: the generator's depth and PNCC maps of the row's
224 px crop, the mesh stages of ``facerecon.mesh.from_depth.synthesize_mesh`` with the
checkpoint's refinement settings (detail filling from the crop's pixels), and per stage the mean
vertices, faces and folded interior edges (``engine.evaluate.fold_fraction``, as ``eval`` counts
them). With ``--picture``: for the split's first row in each |yaw| bin (0-30, 30-60, 60-90
degrees, the cache's ground-truth pose), the crop, its predicted depth map, and the raw, cleaned,
smoothed and detailed meshes (shaded geometry, no photo pixels), one row each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from facevision_gt_stages import STAGES, _shaded

from facerecon.data.dataset import split_rows
from facerecon.engine.evaluate import fold_fraction
from facerecon.engine.facevision import refine_options
from facerecon.engine.predict import load_model
from facerecon.imageio import save_image
from facerecon.mesh.from_depth import synthesize_mesh

BINS = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))


def _maps(net: torch.nn.Module, crop: np.ndarray) -> np.ndarray:
    """The generator's depth map of one 224 px uint8 crop."""
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        depth, _ = net(x)
    return depth[0, 0].float().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--picture", type=Path, default=None)
    args = parser.parse_args()
    model = load_model(args.checkpoint)
    net = model.network.eval()
    options = refine_options(getattr(net, "settings", None))
    box = np.array([0.0, 0.0, 224.0])  # the crop is the photo
    with h5py.File(args.cache, "r") as f:
        rows = split_rows(f["split"][:], args.split)
        yaw = np.abs(f["pose"][:, 0])
        stats: dict[str, list[tuple[float, ...]]] = {s: [] for s in STAGES}
        for i in rows[: args.rows]:
            stages = synthesize_mesh(_maps(net, f["images"][i]), box, f["images"][i], options)
            for name in STAGES:
                mesh = getattr(stages, name)
                folds = float(fold_fraction(torch.from_numpy(mesh.vertices)[None], torch.from_numpy(mesh.faces))[0]) * 100
                stats[name].append((len(mesh.vertices), len(mesh.faces), folds))
        print(f"{min(args.rows, len(rows))} rows of the {args.split} split of {args.cache}, {args.checkpoint}")
        print("stage    | vertices | faces | folded interior edges % (mean, max)")
        for name, values in stats.items():
            a = np.array(values)
            print(f"{name:8s} | {a[:, 0].mean():8.0f} | {a[:, 1].mean():5.0f} | {a[:, 2].mean():.3f}, {a[:, 2].max():.3f}")
        if args.picture is None:
            return
        lines = []
        for lo, hi in BINS:
            picked = [i for i in rows if lo <= yaw[i] < hi]
            if not picked:
                continue
            crop = f["images"][picked[0]]
            depth = _maps(net, crop)
            stages = synthesize_mesh(depth, box, crop, options)
            size = 256
            photo = np.asarray(torch.nn.functional.interpolate(torch.from_numpy(crop).permute(2, 0, 1)[None].float(), size=(size, size),
                                                               mode="bilinear", align_corners=False)[0].permute(1, 2, 0).round().clamp(0, 255).byte())
            d = torch.nn.functional.interpolate(torch.from_numpy(depth)[None, None], size=(size, size), mode="nearest")[0, 0].numpy()
            depth_img = np.repeat((np.clip(d, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
            lines.append(np.concatenate([photo, depth_img] + [_shaded(getattr(stages, s), box, size) for s in STAGES], axis=1))
            print(f"picture row: cache row {picked[0]}, |yaw| {yaw[picked[0]]:.0f} degrees")
        save_image(args.picture, np.concatenate(lines, axis=0))
        print(f"wrote {args.picture}")


if __name__ == "__main__":
    main()
