"""A grid of face-profiled views of real AFLW2000-3D samples (docs/img/profiling_grid.png).

Usage: ``python benchmarks/profiling_grid.py [--data ../shared/data] [--out docs/img/profiling_grid.png]``
or ``python benchmarks/profiling_grid.py --cache CACHE.h5 --out views.png`` (the crops of a cache's
profiled views as training reads them, with their derived landmarks).

Each row is one sample: its photo, then views at the target yaws of ``--yaws`` (degrees; pitch and
roll jittered by up to +-10 degrees, seeded), each cropped around the view's landmarks as
``prepare --crop-from landmarks`` would crop it. Green dots are the view's 68 landmarks computed
from its new pose through the face model (not from the picture), so a landmark off its feature
shows a wrong rotation; the header of each panel gives the view's yaw / pitch / roll.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IDS = ("image00014", "image00021", "image00039", "image00045")


def panel(sample, model, size: int) -> np.ndarray:
    import cv2

    from facerecon.crop import crop_image, landmark_box
    from facerecon.frames import image_to_crop_px

    p = sample.params
    landmarks = model.landmarks_px(p.shape, p.exp, p.pose, sample.image.shape[0])
    box = landmark_box(landmarks)
    crop = np.ascontiguousarray(crop_image(sample.image, box, size))
    for u, v in image_to_crop_px(landmarks, box, size):
        cv2.circle(crop, (int(round(u * 4)), int(round(v * 4))), 5, (0, 255, 0), -1, lineType=cv2.LINE_AA, shift=2)
    yaw, pitch, roll = (math.degrees(a) for a in (p.pose[1], p.pose[0], p.pose[2]))
    label = f"y{yaw:+.0f} p{pitch:+.0f} r{roll:+.0f}"
    cv2.putText(crop, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(crop, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return crop


def cache_grid(cache: Path, columns: int, count: int, size: int) -> np.ndarray:
    """The first ``count`` profiled views of a cache as the training reader gives them (crop,
    landmarks derived from the source row), ``columns`` to a row."""
    import cv2

    from facerecon.data.dataset import FaceCacheDataset

    dataset = FaceCacheDataset(cache, split="train", points_per_region=None, return_image_float=False)
    panels = []
    for v in range(min(count, dataset.n_views)):
        item = dataset[dataset.n_rows + v]
        crop = cv2.resize(np.ascontiguousarray(item["image"].numpy().transpose(1, 2, 0)), (size, size), interpolation=cv2.INTER_AREA)
        for x, y in (item["landmarks"].numpy()[:, :2] + 1.0) * crop.shape[0] / 2.0:
            cv2.circle(crop, (int(round(x * 4)), int(round(y * 4))), 5, (0, 255, 0), -1, lineType=cv2.LINE_AA, shift=2)
        yaw = float(item["pose"][0])
        cv2.putText(crop, f"y{yaw:+.0f}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(crop)
    panels += [np.zeros_like(panels[0])] * (-len(panels) % columns)
    return np.concatenate([np.concatenate(panels[i : i + columns], axis=1) for i in range(0, len(panels), columns)], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "profiling_grid.png")
    parser.add_argument("--ids", nargs="+", default=list(DEFAULT_IDS), help="AFLW2000-3D sample names")
    parser.add_argument("--yaws", type=float, nargs="+", default=[-90, -60, -30, 30, 60, 90])
    parser.add_argument("--size", type=int, default=144, help="panel side, px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="draw this cache's profiled views instead")
    args = parser.parse_args()
    if args.cache is not None:
        from facerecon.imageio import save_image

        save_image(args.out, cache_grid(args.cache, columns=8, count=32, size=args.size))
        print(f"{args.out}: profiled views of {args.cache}")
        return

    from facerecon.data.face_model import load_face_model
    from facerecon.data.profiling import build_scene, profile_view
    from facerecon.data.readers import list_samples, read_sample
    from facerecon.imageio import save_image

    model = load_face_model(args.data / "bfm-mean")
    refs = {r.image_path.stem: r for r in list_samples(args.data / "aflw2000-3d")}
    rng = np.random.default_rng(args.seed)
    rows, times = [], []
    for name in args.ids:
        sample = read_sample(refs[name], model)
        scene = build_scene(sample, model)
        p = sample.params
        row = [panel(sample, model, args.size)]
        for yaw in args.yaws:
            angles = (p.pose[0] + math.radians(rng.uniform(-10, 10)), math.radians(yaw), p.pose[2] + math.radians(rng.uniform(-10, 10)))
            start = time.perf_counter()
            view = profile_view(sample, model, angles, scene=scene)
            times.append(time.perf_counter() - start)
            row.append(panel(view.sample, model, args.size))
        rows.append(np.concatenate(row, axis=1))
    save_image(args.out, np.concatenate(rows, axis=0))
    print(f"{args.out}: {len(rows)} samples x {len(args.yaws)} views; {1000 * np.median(times):.0f} ms a view (median)")


if __name__ == "__main__":
    main()
