"""Data pipeline throughput: ``prepare`` (samples/s) and the training loader (samples/s).

Usage::

    python benchmarks/bench_data.py [--data ../shared/data] [--n 100] [--workers 0 2]

1. prepare: the first ``--n`` AFLW2000-3D samples with the reduced 3DDFA model, MTCNN crops
   (as ``facerecon prepare``), in this process (``--workers 0``) and with a 2-process pool;
   also with ``--crop-from landmarks`` to separate the detector's cost from the ground truth's.
2. loader: ``FaceCacheDataset`` with 18,000-point region draws (11000/4000/3000) from that cache,
   batches of 8 through a torch DataLoader with 0 and 2 workers, one pass after a warm-up batch.

Prints a table; numbers depend on the machine's load (state it when you quote them).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_prepare(data: Path, n: int, crop_from: str, workers: int, tmp: Path) -> tuple[float, Path]:
    from facerecon.data.cache import PrepareOptions, prepare_cache
    from facerecon.data.readers import list_samples

    refs = list_samples(data / "aflw2000-3d")[:n]
    out = tmp / f"bench_{crop_from}_{workers}.h5"
    t = time.perf_counter()
    prepare_cache(refs, out, data / "bfm-mean", PrepareOptions(crop_from=crop_from, workers=workers))
    return n / (time.perf_counter() - t), out


def bench_loader(cache: Path, workers: int, batch_size: int = 8) -> float:
    import torch

    from facerecon.data.dataset import FaceCacheDataset, collate_faces

    ds = FaceCacheDataset(cache, split="all", points_per_region=(11000, 4000, 3000))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_faces,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # warm-up: worker start, file open
    t, count = time.perf_counter(), 0
    for batch in it:
        count += int(batch["lengths"].shape[0])
    return count / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=100, help="AFLW2000-3D samples to prepare")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.n} AFLW2000-3D samples")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        cache = None
        for crop_from in ("landmarks", "detector"):
            for w in args.workers:
                rate, out = bench_prepare(args.data, args.n, crop_from, w, Path(tmp))
                rows.append((f"prepare --crop-from {crop_from} --workers {w}", rate))
                cache = out
        size = cache.stat().st_size / args.n / 1e6
        for w in args.workers:
            rows.append((f"loader 18000-point draws, batch 8, {w} workers", bench_loader(cache, w)))
        print(f"{'stage':58s} samples/s")
        for name, rate in rows:
            print(f"{name:58s} {rate:9.1f}")
        print(f"cache size: {size:.2f} MB per sample")


if __name__ == "__main__":
    main()
