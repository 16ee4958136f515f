"""The FaceVision-GAN family's costs on this machine, measured in one run: the network at three
widths against the default width and against the shipped default model, and the steps around it.

Run:  .venv/bin/python benchmarks/bench_facevision.py [--threads 2] [--repeats 5] [--rounds 3]

* Per width (``channels`` 8, 16 = the default, 24; discriminators as wide): parameters of the
  generator and of both discriminators, the float32 state dict's size, a training step at batch 8
  on 128 px crops (``train_step``: both discriminators, then the generator; and the generator
  alone, ``adversarial = 0``), the generator's forward at batch 1 (``torch.inference_mode``). Best
  of ``--repeats`` in each of ``--rounds`` rounds that visit the widths in turn (a slow spell of a
  shared machine falls on all of them), the median of the rounds' bests. Ratios against the
  default width, and the shipped default model's network at batch 1 (224 px crop, five points) as
  a peer measured in the same run.
* Around the network: rendering one crop's target maps (``render_maps``, 53,215 vertices / 105,840
  triangles: the BFM mean face from ``../shared/data/bfm-mean`` when present, else a grid mesh of
  the same size), the mesh synthesis and refinement of a 128 px face-like depth map
  (``synthesize_mesh`` with detail filling on a 450 px photo), and the 68 landmarks from a PNCC map.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from facerecon.data.facevision_maps import (
    landmarks_from_maps,
    reference_codes,
    render_maps,
)
from facerecon.mesh.from_depth import synthesize_mesh
from facerecon.model.facevision import FaceVisionGAN, LossWeights, train_step

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WIDTHS = (8, 16, 24)
DEFAULT_WIDTH = 16


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000.0


def _network_costs(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    torch.manual_seed(0)
    x, d, p = torch.rand(8, 3, 128, 128), torch.rand(8, 1, 128, 128), torch.rand(8, 3, 128, 128)
    setups = {}
    for w in WIDTHS:
        gan = FaceVisionGAN(w, 5, w)
        opt_g = torch.optim.Adam(gan.generator.parameters(), 2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam([q for m in gan.discriminators() for q in m.parameters()], 2e-4, betas=(0.5, 0.999))
        setups[w] = (gan, opt_g, opt_d)
    runs: dict[int, dict[str, list[float]]] = {w: {"gan": [], "gen": [], "fwd": []} for w in WIDTHS}
    for _ in range(args.rounds):
        for w, (gan, opt_g, opt_d) in setups.items():
            def step(gan=gan, opt_g=opt_g, opt_d=opt_d, adversarial=1.0):
                return train_step(gan, x, d, p, opt_g, opt_d if adversarial else None, LossWeights(adversarial=adversarial))

            runs[w]["gan"].append(_best_ms(step, args.repeats))
            runs[w]["gen"].append(_best_ms(lambda step=step: step(adversarial=0.0), args.repeats))
            gan.eval()
            with torch.inference_mode():
                runs[w]["fwd"].append(_best_ms(lambda gan=gan: gan.generator(x[:1]), args.repeats * 4))
    out = {}
    for w, (gan, _, _) in setups.items():
        buf = io.BytesIO()
        torch.save(gan.generator.state_dict(), buf)
        out[w] = {k: statistics.median(v) for k, v in runs[w].items()}
        out[w]["gen_params"] = sum(q.numel() for q in gan.generator.parameters())
        out[w]["disc_params"] = sum(q.numel() for m in gan.discriminators() for q in m.parameters())
        out[w]["mb"] = len(buf.getvalue()) / 1e6
    return out


def _shipped_model_ms(repeats: int) -> float | None:
    """The shipped default model's network at batch 1 (224 px, five points), or None when it cannot be loaded."""
    from facerecon.errors import FaceReconError

    try:
        from facerecon.engine.predict import load_model

        model = load_model(ROOT / "facerecon" / "assets" / "default_model.pt")
    except (ImportError, FaceReconError, OSError, KeyError, RuntimeError):  # the peer is optional
        return None
    net = model.network.eval()
    batch = torch.rand(1, 3, 224, 224)
    five = torch.tensor([[[-0.3, -0.2], [0.3, -0.2], [0.0, 0.1], [-0.22, 0.4], [0.22, 0.4]]])
    with torch.inference_mode():
        try:
            return _best_ms(lambda: net(batch, landmarks5=five), repeats)
        except TypeError:
            return _best_ms(lambda: net(batch), repeats)


def _face_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(mean in model axes, triangles, landmark ids, what it is): the BFM mean or a grid of its size."""
    if (SHARED / "bfm-mean" / "tri.mat").exists():
        from scipy.io import loadmat

        bfm = SHARED / "bfm-mean"
        mean = (np.load(bfm / "u_shp.npy") + np.load(bfm / "u_exp.npy")).reshape(-1, 3).astype(np.float64)
        tri = loadmat(bfm / "tri.mat")["tri"].T.astype(np.int64) - 1
        return mean, tri, np.load(bfm / "keypoints_sim.npy")[0::3] // 3, "the BFM mean face"
    n = 231
    g = np.linspace(-1, 1, n)
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    mean = np.stack([x, -y, 0.6 * np.sqrt(np.clip(1.2 - 0.8 * x**2 - 0.5 * y**2, 0, None))], axis=1)
    q = np.arange(n * n).reshape(n, n)[:-1, :-1].ravel()
    tri = np.concatenate([np.stack([q, q + 1, q + n], 1), np.stack([q + 1, q + n + 1, q + n], 1)])
    return mean, tri, np.arange(68) * 700, "a grid mesh of the BFM's size"


def _post_costs(repeats: int) -> dict[str, float]:
    mean, tri, ids, what = _face_mesh()
    crop = mean * [1.0, -1.0, -1.0]
    crop = (crop - crop[ids].mean(0)) / np.ptp(crop[:, 0]) * 1.6
    codes = reference_codes(mean)
    depth, pncc = render_maps(crop, tri, codes, 128)
    photo = np.random.default_rng(0).integers(0, 255, (450, 450, 3), dtype=np.uint8)
    box = (100.0, 80.0, 260.0)
    stages = synthesize_mesh(depth, box, photo)
    return {
        "what": what,  # type: ignore[dict-item]
        "vertices": float(len(mean)),
        "triangles": float(len(tri)),
        "render_maps": _best_ms(lambda: render_maps(crop, tri, codes, 128), repeats),
        "synthesize_mesh": _best_ms(lambda: synthesize_mesh(depth, box, photo), max(1, repeats // 2)),
        "mesh_vertices": float(len(stages.smoothed.vertices)),
        "landmarks": _best_ms(lambda: landmarks_from_maps(depth, pncc, codes[ids]), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {_cpu()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    costs = _network_costs(args)
    peer = _shipped_model_ms(args.repeats * 4)
    base = costs[DEFAULT_WIDTH]
    print("\nwidth | generator params | discriminators params | state dict MB | GAN step b8 ms (x default) | generator-only step b8 ms | forward b1 ms (x default)")
    for w, c in costs.items():
        print(f"{w:5d} | {c['gen_params'] / 1e6:16.2f}M | {c['disc_params'] / 1e6:20.2f}M | {c['mb']:13.1f} | "
              f"{c['gan']:8.0f} ({c['gan'] / base['gan']:.2f}) | {c['gen']:25.0f} | {c['fwd']:6.1f} ({c['fwd'] / base['fwd']:.2f})")
    if peer is not None:
        print(f"shipped default model, network at batch 1 (224 px): {peer:.1f} ms; the default-width generator: "
              f"{base['fwd'] / peer:.2f}x that")
    post = _post_costs(args.repeats)
    print(f"\naround the network ({post['what']}: {post['vertices']:.0f} vertices, {post['triangles']:.0f} triangles):")
    print(f"  target maps of one crop (render_maps, 128 px): {post['render_maps']:.1f} ms")
    print(f"  mesh synthesis and refinement with detail (128 px map, {post['mesh_vertices']:.0f} vertices): {post['synthesize_mesh']:.0f} ms")
    print(f"  68 landmarks from the PNCC map: {post['landmarks']:.1f} ms")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
