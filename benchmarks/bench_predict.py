"""Prediction latency and throughput on this machine.

Single photo: time per stage (MTCNN detection, network, export of mesh + JSON), median of
repeats; folder mode: images/s with the network batched at 1 and at 8. The network's weights do
not change its speed, so a freshly initialised network of the given configuration is timed
unless --checkpoint is given.

    python benchmarks/bench_predict.py [--checkpoint best.pt] [--config facerecon/configs/aflw-mobilenet.toml]
                                       [--photos ../shared/data/photos] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(args: argparse.Namespace, tmp: Path) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    from facerecon.config import load_config
    from facerecon.engine.train import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
    from facerecon.model.network import build_network

    cfg = load_config(args.config)
    net = build_network(cfg.model)
    path = tmp / "random.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": cfg.to_dict(), "model": net.state_dict()}, path)
    return path


def _photos(folder: Path, n: int) -> list[Path]:
    if folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png") and p.stat().st_size < 5_000_000)
        if found:
            return (found * n)[:n]
    from PIL import Image

    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        path = Path(tempfile.mkdtemp()) / f"gen{i}.png"
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint")
    parser.add_argument("--config", default=str(ROOT / "facerecon" / "configs" / "aflw-mobilenet.toml"))
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "photos"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--folder-images", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from facerecon.detect import FaceDetector
    from facerecon.engine.predict import Predictor, load_model, write_result
    from facerecon.imageio import load_image

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = load_model(_checkpoint(args, tmp))
        detector = FaceDetector()
        photos = _photos(Path(args.photos), max(args.folder_images, 1))
        single = photos[0]
        image = load_image(single)
        print(f"machine: {torch.get_num_threads()} torch threads; model: {model.config.model.backbone}, "
              f"{model.network.num_vertices} vertices, input {model.config.model.image_size or 224} px")
        print(f"single photo: {single.name} ({image.shape[1]}x{image.shape[0]})")

        # warm-up (lazy imports, first allocations), then repeats
        predictor = Predictor(model, detector, batch_size=1)
        det, net, exp = [], [], []
        for k in range(args.repeats + 1):
            t0 = time.perf_counter()
            crops = predictor.crops_of(image)
            t1 = time.perf_counter()
            results = predictor.reconstruct([(single, image, crops[0], 0)])
            t2 = time.perf_counter()
            write_result(results[0], tmp / "face.obj")
            t3 = time.perf_counter()
            if k:
                det.append(t1 - t0), net.append(t2 - t1), exp.append(t3 - t2)
        med = statistics.median
        total = med(det) + med(net) + med(exp)
        print(f"{'stage':<22}{'median ms':>10}")
        for name, values in (("detection (MTCNN)", det), ("network", net), ("export (.obj + .json)", exp)):
            print(f"{name:<22}{1000 * med(values):>10.1f}")
        print(f"{'total':<22}{1000 * total:>10.1f}")

        print(f"\nfolder of {len(photos)} photos (detection + network + export .ply):")
        for batch in (1, 8):
            predictor = Predictor(model, detector, batch_size=batch)
            t0 = time.perf_counter()
            pending = []
            for i, path in enumerate(photos):
                img = load_image(path)
                crop = predictor.crops_of(img)[0]
                pending.append((path, img, crop, 0))
                if len(pending) == batch:
                    for j, res in enumerate(predictor.reconstruct(pending)):
                        write_result(res, tmp / f"{i}_{j}.ply")
                    pending = []
            if pending:
                for j, res in enumerate(predictor.reconstruct(pending)):
                    write_result(res, tmp / f"last_{j}.ply")
            elapsed = time.perf_counter() - t0
            t = predictor.timings
            print(f"  batch {batch}: {len(photos) / elapsed:.2f} images/s "
                  f"(network {1000 * t.network / len(photos):.0f} ms/image, detection {1000 * t.detect / len(photos):.0f} ms/image)")


if __name__ == "__main__":
    main()
