"""Chamfer / nearest-neighbour speed and memory against peers, in one process on the same tensors.

    .venv/bin/python benchmarks/bench_chamfer.py            # B in {1, 8}, N = 7008, M in {18000, 60000}
    .venv/bin/python benchmarks/bench_chamfer.py --quick    # B = 1, M = 18000 only

Methods: ours (compiled kernel, 1 thread and all threads), ours with the pure-torch fallback,
``torch.cdist`` + ``min``, scipy ``cKDTree`` (build + query both ways, all workers) and pytorch3d's
``knn_points`` when installed. "fwd" = both-direction nearest neighbours + Chamfer value;
"fwd+bwd" adds the backward pass w.r.t. the predicted points (for cKDTree, which has no autograd,
its indices feed the same torch distance recomputation and backward as ours). Times are the best of
``--reps`` runs; "ratio" = peer time / our all-threads time. Peak extra memory = the highest
resident-set size (sampled every 0.5 ms by a thread, psutil) above the level before the call;
on a GPU, torch.cuda.max_memory_allocated above the level before.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from typing import Callable, Optional

import psutil
import torch

from facerecon.ops import backend_summary, chamfer_distance, nearest_neighbors
from facerecon.ops.knn import _gather_sq_dist


class PeakRSS:
    """Context manager measuring the peak resident-set growth (bytes) while it is active."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> "PeakRSS":
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.stop = False
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base_cuda = torch.cuda.memory_allocated()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
            time.sleep(0.0005)

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base_cuda


def _cdist_chamfer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, y).square()
    return d.min(2).values.mean(1) + d.min(1).values.mean(1)


def _ckdtree_chamfer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from scipy.spatial import cKDTree

    ixy, iyx = [], []
    for b in range(x.shape[0]):
        xn, yn = x[b].detach().numpy(), y[b].detach().numpy()
        ixy.append(torch.from_numpy(cKDTree(yn).query(xn, workers=-1)[1]))
        iyx.append(torch.from_numpy(cKDTree(xn).query(yn, workers=-1)[1]))
    dxy = _gather_sq_dist(x, y, torch.stack(ixy).long())
    dyx = _gather_sq_dist(y, x, torch.stack(iyx).long())
    return dxy.mean(1) + dyx.mean(1)


def _pytorch3d_chamfer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from pytorch3d.ops import knn_points

    return knn_points(x, y, K=1).dists[..., 0].mean(1) + knn_points(y, x, K=1).dists[..., 0].mean(1)


def _ours(threads: Optional[int], backend: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        old_threads, old_env = torch.get_num_threads(), os.environ.get("FACERECON_NN_BACKEND")
        os.environ["FACERECON_NN_BACKEND"] = backend
        if threads:
            torch.set_num_threads(threads)
        try:
            return chamfer_distance(x, y, reduction="none")
        finally:
            torch.set_num_threads(old_threads)
            if old_env is None:
                os.environ.pop("FACERECON_NN_BACKEND", None)
            else:
                os.environ["FACERECON_NN_BACKEND"] = old_env

    return run


def measure(fn: Callable, x: torch.Tensor, y: torch.Tensor, backward: bool, reps: int) -> tuple[float, int]:
    """Best wall time (s) of up to ``reps`` runs and the peak extra memory (bytes) of one more run.

    Timed runs have no memory sampler beside them (it would steal a core); a method slower than
    1 s is timed once.
    """
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def once() -> None:
        xr = x.detach().requires_grad_(backward)
        out = fn(xr, y)
        if backward:
            out.sum().backward()
        sync()

    best = float("inf")
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
        if best > 1.0:
            break
    with PeakRSS(x.device) as mem:
        once()
    return best, mem.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only B=1, M=18000, fewer repetitions")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per measurement (best is kept)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--max-matrix-gb", type=float, default=3.0,
                        help="skip torch.cdist when its B*N*M distance matrix exceeds this (GB)")
    parser.add_argument("--slow-peers", action="store_true", help="also run the fallback at B=8, M=60000")
    args = parser.parse_args()
    device = torch.device(args.device)
    reps = 2 if args.quick else args.reps
    cases = [(1, 18000)] if args.quick else [(1, 18000), (1, 60000), (8, 18000), (8, 60000)]
    n = 7008
    gen = torch.Generator().manual_seed(0)
    all_threads = torch.get_num_threads()
    nearest_neighbors(torch.rand(1, 10, 3), torch.rand(1, 10, 3))  # build/load the extension first
    try:
        import pytorch3d  # noqa: F401  (only whether it imports)

        has_p3d = True
    except ImportError:
        has_p3d = False
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"device {device}")
    print(f"# {backend_summary()}")
    print("| B | M | method | fwd ms | fwd+bwd ms | ratio fwd | ratio fwd+bwd | peak extra MB |")
    print("|---|---|---|---|---|---|---|---|")
    for batch, m in cases:
        x = (torch.rand(batch, n, 3, generator=gen) * 2 - 1).to(device)
        y = (torch.rand(batch, m, 3, generator=gen) * 2 - 1).to(device)
        methods: list[tuple[str, Callable]] = []
        if device.type == "cpu":
            methods.append(("ours, 1 thread", _ours(1, "cpp")))
        methods.append((f"ours, {all_threads} threads" if device.type == "cpu" else "ours (CUDA)",
                        _ours(None, "cpp")))
        if args.slow_peers or batch * m <= 8 * 18000:
            methods.append(("ours, torch fallback", _ours(None, "torch")))
        matrix_gb = batch * n * m * x.element_size() / 1e9
        if matrix_gb <= args.max_matrix_gb:
            methods.append(("torch.cdist + min", _cdist_chamfer))
        else:
            print(f"| {batch} | {m} | torch.cdist + min | skipped: one {matrix_gb:.1f} GB distance matrix "
                  "(x3 with backward) | | | | |")
        if device.type == "cpu":
            methods.append(("scipy cKDTree (all workers)", _ckdtree_chamfer))
        if has_p3d:
            methods.append(("pytorch3d knn_points", _pytorch3d_chamfer))
        results = {}
        for name, fn in methods:
            fwd, mem_f = measure(fn, x, y, False, reps)
            fb, mem_b = measure(fn, x, y, True, reps)
            results[name] = (fwd, fb, max(mem_f, mem_b))
        ref_name = methods[1][0] if device.type == "cpu" else methods[0][0]
        ref_f, ref_b, _ = results[ref_name]
        for name, (fwd, fb, mem) in results.items():
            print(f"| {batch} | {m} | {name} | {fwd * 1e3:.1f} | {fb * 1e3:.1f} | {fwd / ref_f:.2f} | "
                  f"{fb / ref_b:.2f} | {mem / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
