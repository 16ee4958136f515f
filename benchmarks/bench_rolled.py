"""Rolled faces: facerecon's full prediction on the AFLW2000-3D test split, upright and turned.

Each test face of a prepared cache (the ids whose split is ``test``, or ``--split``'s; the cache
is only read) is
loaded from the raw AFLW2000-3D files (the photo and ``pt3d_68``) and turned in the image plane
about its centre by each of ``--angles`` degrees (positive: counter-clockwise on screen; the
canvas grows so that nothing is cut, :func:`facerecon.detect.rotate_image`); the ground-truth
landmarks are turned by the same matrix. Every copy goes through ``Reconstructor.image``: the
detector's fast search, its second chance and the average-crop fallback, then the network,
exactly as ``facerecon predict`` runs them. Printed per angle:

* the 68-point NME of ``facerecon eval`` (:func:`facerecon.metrics.landmark_nme`: x-y, over
  sqrt(w h) of the ground-truth landmark box), mean and median, in percent;
* its ratio to the same faces upright (the goal: within 1.3x at +-30 and +-45 degrees);
* the faces with no detection (average crop), those whose detection is another face (its box
  misses the annotated face's landmark centre: a photo with several people), and how each face was found (the detector's
  ``last_search``: fast, rechecked, full, low-thresholds, rotated, equalised, none), and how many got their five points
  from a copy turned so that the eyes are level (``last_levelled``; ``--no-level`` turns it off);
* the detector's median time per photo.

``--study`` measures the second chance itself on every copy the fast search misses: each way
to search again (the full search, lower thresholds, copies rotated by each of ``--study-angles``)
alone, with its time, whether it finds the face, the error of its five points against the
ground truth's (eye centres, nose tip, mouth corners; over the same sqrt(w h)) and the NME of the
mesh from its crop; then whole orders of them (the detector's own and others), with the faces
each recovers, its cost and the NME of the missed faces end to end.

``--overlays DIR`` writes the ``--worst`` copies with the highest NME as overlays: the mesh and
its landmarks (facerecon's overlay), the ground truth (green), MTCNN's five points (magenta;
the eyes larger) and its box (yellow).

Timings depend on the machine's load (printed at the start and the end) and the CPU (first line).

    python benchmarks/bench_rolled.py --cache aflw2000.h5 [--data ../shared/data/aflw2000-3d]
        [--checkpoint model.pt|model.onnx] [--split test|val|train] [--limit N] [--angles -45,-30,0,30,45] [--no-second-chance]
        [--no-level] [--json out.json] [--overlays DIR] [--worst 10] [--study] [--study-angles 15,30,45,60,90]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from facerecon.machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "aflw2000-3d"
SEARCHES = ("fast", "rechecked", "full", "low-thresholds", "rotated", "equalised", "none")
#: The ground truth's five points from the 68: eye centres (mean of each eye's six contour
#: points), nose tip, mouth corners; MTCNN's order (left = smaller x on an upright face).
FIVE_FROM_68 = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))


@dataclass
class Face:
    """One face: the photo, its 68 ground-truth landmarks (image px) and its pose."""

    id: str
    image: np.ndarray
    landmarks: np.ndarray  # (68, 2) image px
    yaw: float  # degrees
    roll: float


@dataclass
class Row:
    id: str
    angle: float
    nme: float  # percent
    search: str
    fallback: bool
    detect_ms: float
    probability: float | None
    yaw: float
    roll: float
    five_point_error: float | None = None  # percent, MTCNN's five points against the ground truth's
    other_face: bool = False  # a detection whose box misses the annotated face's landmark centre
    levelled: bool = False  # its five points come from a copy turned so that the eyes are level
    extra: dict[str, Any] = field(default_factory=dict)


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except (OSError, AttributeError):
        return "?"


def split_ids(cache: Path, split_name: str = "test") -> list[str]:
    """The ids of one split of the cache, in cache order (only reads the file)."""
    import h5py

    with h5py.File(cache, "r") as f:
        names = str(f.attrs.get("split_names", "train,val,test")).split(",")
        split = f["split"][:]
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in f["ids"][:]]
    wanted = names.index(split_name)
    return [ids[k] for k in np.flatnonzero(split == wanted)]


def load_faces(ids: list[str], data: Path) -> Iterator[Face]:
    """The photo and ground truth of each id from the raw AFLW2000-3D files (``pt3d_68`` is
    1-based: a value k is the pixel centre k - 0.5 in image px, as facerecon's reader reads it)."""
    from facerecon.data.readers import load_mat
    from facerecon.imageio import load_image

    for sample_id in ids:
        stem = sample_id.split("/")[-1]
        mat = load_mat(data / f"{stem}.mat")
        pt = np.asarray(mat["pt3d_68"], dtype=np.float64)
        pose = np.asarray(mat["Pose_Para"], dtype=np.float64).reshape(-1)
        yield Face(sample_id, load_image(data / f"{stem}.jpg"), pt[:2].T - 0.5, float(np.degrees(pose[1])), float(np.degrees(pose[2])))


def turned(face: Face, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo turned by ``angle`` degrees and its ground-truth landmarks turned with it."""
    from facerecon.detect import rotate_image

    if angle == 0:
        return face.image, face.landmarks
    image, forward = rotate_image(face.image, angle)
    return image, face.landmarks @ forward[:, :2].T + forward[:, 2]


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """(5, 2) eye centres, nose tip and mouth corners of 68 landmarks."""
    return np.stack([landmarks68[list(idx), :2].mean(axis=0) for idx in FIVE_FROM_68])


def five_point_error(points5: np.ndarray | None, gt68: np.ndarray) -> float | None:
    """Mean distance of MTCNN's five points to the ground truth's, % of sqrt(w h) of the
    ground-truth landmark box (the NME's unit); None without points."""
    from facerecon.metrics import landmark_box_size

    if points5 is None:
        return None
    err = np.linalg.norm(np.asarray(points5, float) - five_points(gt68), axis=1).mean()
    return float(100.0 * err / landmark_box_size(gt68))


def other_face(crop: Any, gt68: np.ndarray) -> bool:
    """Whether a detection's crop box misses the centre of the annotated face's landmarks (the
    most confident face of a photo with several is another person)."""
    if crop.fallback:
        return False
    x0, y0, side = crop.box
    cx, cy = gt68[:, :2].mean(axis=0)
    return not (x0 < cx < x0 + side and y0 < cy < y0 + side)


def nme_of(result: Any, gt68: np.ndarray) -> float:
    from facerecon.metrics import landmark_nme

    return float(100.0 * landmark_nme(np.asarray(result.landmarks_px)[:, :2], gt68))


def predict_rows(rec: Any, faces: list[Face], angles: list[float], progress: Callable[[int], None]) -> list[Row]:
    """``Reconstructor.image`` on every face at every angle (the steps of ``rec.image``, with the
    detector timed and its ``last_search`` read)."""
    predictor = rec.predictor
    rows = []
    for face in faces:
        for angle in angles:
            image, gt = turned(face, angle)
            t0 = time.perf_counter()
            crops = predictor.crops_of(image)
            detect_ms = 1000 * (time.perf_counter() - t0)
            search, levelled = rec.detector.last_search, rec.detector.last_levelled
            (result,) = predictor.reconstruct(predictor.prepare(Path(face.id), image, crops))
            crop = crops[0]
            prob = None if crop.fallback else float(crop.probability)
            rows.append(Row(face.id, angle, nme_of(result, gt), search, bool(crop.fallback), detect_ms, prob, face.yaw,
                            face.roll, five_point_error(crop.landmarks5, gt), other_face(crop, gt), levelled))
        progress(1)
    return rows


def summary(rows: list[Row], angles: list[float]) -> list[dict[str, Any]]:
    """Per angle: NME mean / median, the ratio to the same faces upright, fallbacks, searches."""
    upright = {r.id: r.nme for r in rows if r.angle == 0}
    out = []
    for angle in angles:
        sel = [r for r in rows if r.angle == angle]
        if not sel:
            continue
        paired = [r for r in sel if r.id in upright]
        ratio = (statistics.fmean(r.nme for r in paired) / statistics.fmean(upright[r.id] for r in paired)) if paired else None
        found = [r for r in sel if not r.fallback]
        out.append({
            "angle": angle, "faces": len(sel), "nme_mean": statistics.fmean(r.nme for r in sel),
            "nme_median": statistics.median(r.nme for r in sel), "ratio_to_upright": ratio,
            "nme_detected": statistics.fmean(r.nme for r in found) if found else None,
            "no_detection": sum(r.fallback for r in sel), "other_face": sum(r.other_face for r in sel),
            "levelled": sum(r.levelled for r in sel),
            "searches": {s: sum(r.search == s for r in sel) for s in SEARCHES},
            "detect_ms_median": statistics.median(r.detect_ms for r in sel),
        })
    return out


def print_summary(table: list[dict[str, Any]]) -> None:
    print(f"\n{'angle':>6} {'faces':>5} {'NME %':>7} {'median':>7} {'x upright':>9} {'found NME':>9} {'no det':>6} {'other':>5}   "
          f"{'fast':>4} {'rchk':>4} {'full':>4} {'low':>4} {'rot':>4} {'eq':>4} {'none':>4} {'lev':>4} {'detect ms':>9}")
    for t in table:
        s = t["searches"]
        ratio = "-" if t["ratio_to_upright"] is None else f"{t['ratio_to_upright']:.2f}x"
        found = "-" if t["nme_detected"] is None else f"{t['nme_detected']:.2f}"
        print(f"{t['angle']:>+6.0f} {t['faces']:>5} {t['nme_mean']:>7.2f} {t['nme_median']:>7.2f} {ratio:>9} {found:>9} "
              f"{t['no_detection']:>6} {t['other_face']:>5}   {s['fast']:>4} {s['rechecked']:>4} {s['full']:>4} {s['low-thresholds']:>4} {s['rotated']:>4} "
              f"{s['equalised']:>4} {s['none']:>4} {t['levelled']:>4} {t['detect_ms_median']:>9.1f}")


# ---- the second chance, strategy by strategy ------------------------------------------------


def strategies(study_angles: list[float]) -> list[str]:
    names = ["full", "low"]
    for a in study_angles:
        names += [f"rot{-a:+.0f}", f"rot{a:+.0f}"]
    return names


def run_strategy(detector: Any, image: np.ndarray, name: str) -> tuple[list[Any], float]:
    """One way to search again on a photo the fast search missed (the detector's own steps),
    and its time in ms."""
    small, sx, sy = detector._downscale(image)
    min_face = detector._fast_min_face(small.shape[1], small.shape[0])
    t0 = time.perf_counter()
    if name == "full":
        faces = detector._to_crops(detector._search(small, detector.min_face_size, detector.thresholds), sx, sy)
    elif name == "low":
        low = [min(a, b) for a, b in zip(detector.thresholds, detector.LOW_THRESHOLDS)]
        faces = detector._to_crops(detector._search(small, detector.min_face_size, low), sx, sy)
    else:
        faces = detector._rotated_search(small, float(name[3:]), min_face, sx, sy)
    return faces, 1000 * (time.perf_counter() - t0)


def study_rows(rec: Any, faces: list[Face], angles: list[float], names: list[str], progress: Callable[[int], None]) -> list[dict[str, Any]]:
    """For every copy the fast search misses: each strategy alone (found, ms, five-point error,
    NME of the mesh from its crop) and the average crop's NME."""
    detector, predictor = rec.detector, rec.predictor
    fast_only = detector.second_chance
    out = []
    for face in faces:
        for angle in angles:
            image, gt = turned(face, angle)
            detector.second_chance = False
            try:
                crops = detector.crop(image)
            finally:
                detector.second_chance = fast_only
            if not crops[0].fallback:
                continue
            (fallback,) = predictor.reconstruct(predictor.prepare(Path(face.id), image, crops))
            item: dict[str, Any] = {"id": face.id, "angle": angle, "yaw": face.yaw, "roll": face.roll, "fallback_nme": nme_of(fallback, gt), "by": {}}
            for name in names:
                found, ms = run_strategy(detector, image, name)
                entry: dict[str, Any] = {"found": bool(found), "ms": ms}
                if found:
                    (result,) = predictor.reconstruct(predictor.prepare(Path(face.id), image, found[:1]))
                    entry.update(nme=nme_of(result, gt), five_point_error=five_point_error(found[0].landmarks5, gt),
                                 probability=float(found[0].probability), landmarks5=np.asarray(found[0].landmarks5).tolist())
                item["by"][name] = entry
            out.append(item)
        progress(1)
    return out


def simulate(items: list[dict[str, Any]], order: list[list[str]]) -> dict[str, Any]:
    """An order of groups of strategies on the missed copies: every strategy of a group runs, the
    most confident face of the first group that finds one wins."""
    recovered, ms, nmes = 0, [], []
    for item in items:
        cost, nme = 0.0, item["fallback_nme"]
        for group in order:
            entries = [item["by"][name] for name in group]
            cost += sum(e["ms"] for e in entries)
            hits = [e for e in entries if e["found"]]
            if hits:
                recovered, nme = recovered + 1, max(hits, key=lambda e: e["probability"])["nme"]
                break
        ms.append(cost)
        nmes.append(nme)
    return {"order": order, "recovered": recovered, "missed": len(items), "ms_mean": statistics.fmean(ms) if ms else 0.0,
            "ms_max": max(ms, default=0.0), "nme_mean": statistics.fmean(nmes) if nmes else 0.0}


def greedy_order(items: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Strategies in the order of most NME gained over the average crop (on the copies still
    missed) per ms; a strategy whose finds would lose NME is left out."""
    left, order = list(items), []
    pool = list(names)

    def gain(name: str) -> float:
        won = sum(it["fallback_nme"] - it["by"][name]["nme"] for it in left if it["by"][name]["found"])
        return won / max(1e-6, statistics.fmean(it["by"][name]["ms"] for it in left))

    while left and pool:
        best = max(pool, key=gain)
        if gain(best) <= 0:
            break
        order.append(best)
        pool.remove(best)
        left = [it for it in left if not it["by"][best]["found"]]
    return order


def rotated_pick(item: dict[str, Any], groups: list[list[str]]) -> dict[str, Any] | None:
    """The face the rotated copies of ``groups`` give (see :func:`simulate`), or None."""
    for group in groups:
        hits = [item["by"][name] for name in group if item["by"][name]["found"]]
        if hits:
            return max(hits, key=lambda e: e["probability"])
    return None


def print_study(items: list[dict[str, Any]], names: list[str], current: list[list[str]]) -> dict[str, Any]:
    print(f"\nsecond chance: {len(items)} copies missed by the fast search "
          f"(by angle: {dict(sorted(_count(it['angle'] for it in items).items()))})")
    print(f"  average crop on all of them: NME {statistics.fmean(it['fallback_nme'] for it in items) if items else 0:.2f} %")
    print(f"\n  {'strategy':<10} {'finds':>5} {'only it':>7} {'ms mean':>8} {'5-pt err %':>10} {'NME %':>7}")
    per = {}
    for name in names:
        hits = [it["by"][name] for it in items if it["by"][name]["found"]]
        only = sum(1 for it in items if it["by"][name]["found"] and sum(e["found"] for e in it["by"].values()) == 1)
        ms = statistics.fmean(it["by"][name]["ms"] for it in items) if items else 0.0
        err = statistics.fmean(h["five_point_error"] for h in hits) if hits else float("nan")
        nme = statistics.fmean(h["nme"] for h in hits) if hits else float("nan")
        per[name] = {"finds": len(hits), "only": only, "ms_mean": ms, "five_point_error": err, "nme": nme}
        print(f"  {name:<10} {len(hits):>5} {only:>7} {ms:>8.1f} {err:>10.2f} {nme:>7.2f}")
    rotations = [group for group in current if group[0].startswith("rot")]
    both = [(it, rotated_pick(it, rotations)) for it in items if it["by"]["low"]["found"]]
    both = [(it, pick) for it, pick in both if pick is not None]
    if both:
        low = [it["by"]["low"] for it, _ in both]
        print(f"\n  copies that both lower thresholds and the detector's rotated copies find: {len(both)}; five-point error "
              f"{statistics.fmean(e['five_point_error'] for e in low):.2f} % (low) vs "
              f"{statistics.fmean(p['five_point_error'] for _, p in both):.2f} % (rotated); mesh NME "
              f"{statistics.fmean(e['nme'] for e in low):.2f} % vs {statistics.fmean(p['nme'] for _, p in both):.2f} %")
    singles = [n for n in names if n.startswith("rot")]
    orders = {
        "detector's": current,
        "same, one way at a time": [[n] for group in current for n in group],
        "thresholds first (+-30, +-45)": [["full"], ["low"], ["rot-30"], ["rot+30"], ["rot-45"], ["rot+45"]],
        "greedy (NME gain per ms)": [[n] for n in greedy_order(items, names)],
        "every angle, both ways": [["full"]] + [[a, b] for a, b in zip(singles[::2], singles[1::2])] + [["low"]],
    }
    print(f"\n  {'order':<30} {'recovered':>9} {'ms mean':>8} {'ms max':>7} {'NME %':>7}   strategies ([a|b]: both, the more confident)")
    sims = {}
    for label, order in orders.items():
        sim = simulate(items, order)
        sims[label] = sim
        text = ",".join(group[0] if len(group) == 1 else "[" + "|".join(group) + "]" for group in order)
        print(f"  {label:<30} {sim['recovered']:>4}/{sim['missed']:<4} {sim['ms_mean']:>8.1f} {sim['ms_max']:>7.1f} {sim['nme_mean']:>7.2f}   {text}")
    return {"strategies": per, "orders": sims}


def _count(values: Any) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# ---- overlays -------------------------------------------------------------------------------


def write_overlays(rec: Any, faces: dict[str, Face], rows: list[Row], folder: Path, worst: int) -> list[Path]:
    """The ``worst`` copies by NME, predicted again and drawn (see the module docstring)."""
    import cv2

    from facerecon.overlay import draw_mesh_overlay, save_image

    paths = []
    for rank, row in enumerate(sorted(rows, key=lambda r: -r.nme)[:worst]):
        face = faces[row.id]
        image, gt = turned(face, row.angle)
        (result,) = rec.image(image)
        canvas = draw_mesh_overlay(image, result.vertices_px, result.faces, result.landmarks_px, mode="wireframe", alpha=0.5)
        for x, y in gt:
            cv2.circle(canvas, (int(round(x)), int(round(y))), 2, (0, 255, 0), -1, cv2.LINE_AA)
        crop = result.crop
        if crop.detection is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in crop.detection)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), (255, 255, 0), 1, cv2.LINE_AA)
        if crop.landmarks5 is not None:
            for k, (x, y) in enumerate(crop.landmarks5):
                cv2.circle(canvas, (int(round(x)), int(round(y))), 5 if k < 2 else 3, (255, 0, 255), -1, cv2.LINE_AA)
        stem = row.id.split("/")[-1]
        name = f"{rank:02d}_{stem}_{row.angle:+.0f}_{row.search}_nme{row.nme:.1f}.png"
        paths.append(save_image(folder / name, canvas, durable=False))
    return paths


# ---- main -----------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="a prepared AFLW2000-3D cache (only read: its test split's ids)")
    parser.add_argument("--data", type=Path, default=DATA, help="the raw AFLW2000-3D folder (photos and .mat files)")
    parser.add_argument("--checkpoint", default=None, help="a .pt checkpoint or an exported .onnx network (default: the shipped model)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="the cache split whose faces are turned (choose a policy on val, report on test)")
    parser.add_argument("--limit", type=int, default=None, help="the first N faces only")
    parser.add_argument("--angles", type=_floats, default=[-45.0, -30.0, 0.0, 30.0, 45.0], help="degrees, counter-clockwise on screen")
    parser.add_argument("--no-second-chance", action="store_true", help="the detector's fast search only, then the average crop")
    parser.add_argument("--no-level", action="store_true", help="keep MTCNN's five points of a rolled face as found (no levelled copy)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows and the summary here")
    parser.add_argument("--overlays", type=Path, default=None, help="write the worst copies' overlays into this folder")
    parser.add_argument("--worst", type=int, default=10)
    parser.add_argument("--study", action="store_true", help="measure the second chance's strategies on the copies the fast search misses")
    parser.add_argument("--study-angles", type=_floats, default=[15.0, 30.0, 45.0, 60.0, 90.0])
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads for a .pt checkpoint (ONNX Runtime uses 2)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"{args.data}: AFLW2000-3D not found (--data)", file=sys.stderr)
        return 2
    from rich.progress import Progress

    from facerecon import Reconstructor

    if args.checkpoint and not str(args.checkpoint).endswith(".onnx"):
        import torch

        torch.set_num_threads(args.threads)
    ids = split_ids(args.cache, args.split)[: args.limit]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average at the start: {_load()}")
    t0 = time.perf_counter()
    rec = Reconstructor(checkpoint=args.checkpoint)
    rec.detector.second_chance = not args.no_second_chance
    if args.no_level:
        rec.detector.level_roll = 0.0
    faces = list(load_faces(ids, args.data))
    print(f"{len(faces)} {args.split} faces of {args.cache}, angles {args.angles}, runtime {rec.runtime}, model {rec.checkpoint}, "
          f"second chance {'off' if args.no_second_chance else 'on'}, levelling {'off' if args.no_level else 'on'}")
    with Progress(transient=True) as bar:
        task = bar.add_task("predicting", total=len(faces))
        rows = predict_rows(rec, faces, args.angles, lambda n: bar.advance(task, n))
    table = summary(rows, args.angles)
    print_summary(table)
    print(f"\n{len(rows)} predictions in {time.perf_counter() - t0:.0f} s; load average at the end: {_load()}")
    report: dict[str, Any] = {"summary": table, "rows": [asdict(r) for r in rows], "model": str(rec.checkpoint), "machine": cpu_model()}
    if args.study:
        current = [["full"]] + [[f"rot{-a:+.0f}", f"rot{a:+.0f}"] for a in rec.detector.ROTATIONS] + [["low"]]
        names = list(dict.fromkeys(strategies(args.study_angles) + [n for group in current for n in group]))
        with Progress(transient=True) as bar:
            task = bar.add_task("second chance", total=len(faces))
            items = study_rows(rec, faces, args.angles, names, lambda n: bar.advance(task, n))
        report["study"] = {"items": items, **print_study(items, names, current)}
    if args.overlays is not None:
        paths = write_overlays(rec, {f.id: f for f in faces}, rows, args.overlays, args.worst)
        print(f"\n{len(paths)} overlays of the worst copies in {args.overlays}")
    if args.json is not None:
        from facerecon.io_utils import write_json

        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
