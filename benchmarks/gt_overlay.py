"""Draw the dense ground truth projected back onto 224 x 224 crops (docs/img/gt_overlay.png).

Usage: ``python benchmarks/gt_overlay.py [--data ../shared/data] [--out docs/img/gt_overlay.png]``

Each panel is one sample of the shared data (AFLW2000-3D, 300W-LP and its ``_Flip`` twin), cropped
with the landmark box (``--crop-from landmarks``); dots are every 75th (at --scale 1) dense vertex coloured by
region (blue boundary, yellow sub-priority, red key), green crosses the 68 annotated landmarks
(``pt3d_68``, or 300W-LP's re-ordered ``pt2d``), and the numbers 36 / 45 mark the two outer eye
corners so a left/right mix-up shows. The crop frame is inverted with
``facerecon.frames.crop_to_image_3d`` (crop units -> image px), independently of how the cache is
written, then image px go to the panel's px with ``facerecon.frames.image_to_crop_px``, the map
``detect.crop_image`` samples by.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REGION_BGR = {0: (255, 120, 0), 1: (0, 220, 255), 2: (0, 0, 255)}


def panel(sample, model, scale: int = 2) -> np.ndarray:
    import cv2

    from facerecon.crop import crop_image, landmark_box
    from facerecon.data.ground_truth import build_ground_truth, gt_landmarks_px
    from facerecon.frames import crop_to_image_3d, image_to_crop_px

    box = landmark_box(gt_landmarks_px(sample, model))
    gt = build_ground_truth(sample, box, model)
    size = 224 * scale
    crop = cv2.cvtColor(crop_image(sample.image, box, size), cv2.COLOR_RGB2BGR)

    def panel_px(xy_px: np.ndarray) -> np.ndarray:  # image px -> px of the size x size crop
        return image_to_crop_px(xy_px, box, size)

    pix = panel_px(crop_to_image_3d(gt.points, box))
    step = 25 * 3 // scale  # fewer dots on small panels
    for (x, y), r in zip(pix[::step], gt.regions[::step]):
        cv2.circle(crop, (int(x), int(y)), 1, REGION_BGR[int(r)], -1)
    ann = sample.landmarks2d if sample.landmarks68 is None or sample.flipped else None
    lm = panel_px(crop_to_image_3d(gt.landmarks, box) if ann is None else ann)
    for x, y in lm:
        cv2.drawMarker(crop, (int(round(x)), int(round(y))), (0, 255, 0), cv2.MARKER_CROSS, 7, 1)
    for k in (36, 45):
        cv2.putText(crop, str(k), (int(lm[k, 0]) - 8, int(lm[k, 1]) - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    cv2.putText(crop, sample.id, (4, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return crop


def main() -> None:
    import cv2

    from facerecon.data.face_model import load_face_model
    from facerecon.data.readers import list_samples, read_sample

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "gt_overlay.png")
    ap.add_argument("--scale", type=int, default=1, help="panel side = 224 * scale px")
    args = ap.parse_args()
    model = load_face_model(args.data / "bfm-mean")
    aflw = {r.id: r for r in list_samples(args.data / "aflw2000-3d")}
    lp = {r.id: r for r in list_samples(args.data / "300w-lp")}
    refs = [aflw["aflw2000/image00004"], aflw["aflw2000/image00006"],
            lp["300wlp/AFW/AFW_134212_1_0"], lp["300wlp/AFW_Flip/AFW_134212_1_0"]]
    panels = [panel(read_sample(r, model), model, args.scale) for r in refs]
    from PIL import Image

    from facerecon.io_utils import atomic_path

    rgb = cv2.cvtColor(np.concatenate(panels, axis=1), cv2.COLOR_BGR2RGB)
    with atomic_path(args.out) as tmp:  # a 64-colour palette keeps the committed figure small
        Image.fromarray(rgb).quantize(64, dither=Image.Dither.NONE).save(tmp, format="PNG", optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
