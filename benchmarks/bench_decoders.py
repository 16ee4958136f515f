"""The networks side by side: Pixel2Mesh v1 (the previous default), model v2 with graph blocks (the
default) and model v2 with the spiral decoder, measured in the same run.

Run:  .venv/bin/python benchmarks/bench_decoders.py [--threads 2] [--repeats 20] [--rounds 5]
          [--checkpoint graph=runs/aflw-v2/last.pt --checkpoint spiral=runs/spiral/last.pt]

Per network: parameters, the float32 state dict's size, forward ms per face at batch 1
(``torch.inference_mode``, 224-px crops as ``predict`` passes them; the best of ``--repeats``
calls in each of ``--rounds`` rounds that visit the networks in turn, so a slow spell of a shared
machine does not fall on one network only), and training samples/s (forward + backward + Adam
step, batch 16, with the model-v2 losses for v2). Inputs are synthetic (random crops and five
points near their mean); weights are random except the face prior, which is filled with a smooth
synthetic face so the five-point alignment is well defined (timings do not depend on the
weights). ``--checkpoint KIND=PATH`` (KIND ``graph`` or ``spiral``) loads a trained checkpoint for
that network instead, and reports its file size. Ratios: each network against the default's
forward time, and against 3DDFA_V2's regression + dense reconstruction, 2.5 ms, measured on this
machine kind with 2 threads (``benchmarks/bench_predict.py``).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from facerecon.config import Config, load_config
from facerecon.losses import MeshLoss
from facerecon.model.face_prior import FacePriorArrays
from facerecon.model.network import build_network

ROOT = Path(__file__).resolve().parents[1]
FIVE = np.array([[-0.3, -0.2], [0.3, -0.2], [0.0, 0.1], [-0.22, 0.4], [0.22, 0.4]], np.float32)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _best_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best


def _synthetic_prior(net: torch.nn.Module) -> None:
    v = net.num_vertices
    t = net.hierarchy.template_vertices(net.num_blocks - 1).numpy()
    mean = (t * np.array([0.8, 0.9, -0.5])).astype(np.float32)  # a dome, face-sized
    k = net.prior_basis.shape[0]
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(k, v, 3)).astype(np.float32)
    basis /= np.linalg.norm(basis.reshape(k, -1), axis=1)[:, None, None]
    five3d = np.concatenate([FIVE, np.full((5, 1), -0.4, np.float32)], axis=1)
    lms = mean[rng.choice(v, 68, replace=False)]
    net.set_prior(FacePriorArrays(np.zeros((v, 3), np.int64), np.full((v, 3), 1 / 3, np.float32), mean, basis,
                                  np.full(k, 0.01, np.float32), lms, five3d, FIVE, np.arange(v), 1.0))


def _state_bytes(net: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.tell()


def _batch(b: int, v: int, gen: torch.Generator) -> dict:
    five = torch.from_numpy(FIVE)[None].expand(b, -1, -1) + 0.02 * torch.randn(b, 5, 2, generator=gen)
    return {
        "image": torch.rand(b, 3, 224, 224, generator=gen),
        "landmarks5": five,
        "vertices": torch.randn(b, v, 3, generator=gen) * 0.3,
        "landmarks": torch.randn(b, 68, 3, generator=gen) * 0.3,
        "points": torch.randn(b, 3000, 3, generator=gen) * 0.3,
        "normals": torch.nn.functional.normalize(torch.randn(b, 3000, 3, generator=gen), dim=-1),
        "lengths": torch.full((b,), 3000, dtype=torch.long),
        "weights": torch.ones(b, 3000),
    }


PEER_MS = 1.4 + 1.1  # 3DDFA_V2: MobileNet regression + 38k-vertex reconstruction, this machine kind, 2 threads


def _network(cfg: Config, checkpoint: Path | None) -> tuple[torch.nn.Module, int | None]:
    if checkpoint is not None:
        from facerecon.engine.predict import load_model

        return load_model(checkpoint, "cpu").network, checkpoint.stat().st_size
    torch.manual_seed(0)
    net = build_network(cfg.model)
    if cfg.model.starts_from_prior:
        _synthetic_prior(net)
    return net, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="KIND=PATH",
                        help="a trained checkpoint for the 'graph' or 'spiral' network (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints: dict[str, Path] = {}
    for item in args.checkpoint:
        kind, _, path = item.partition("=")
        if kind not in ("graph", "spiral") or not path:
            parser.error(f"--checkpoint {item!r}: use graph=PATH or spiral=PATH")
        checkpoints[kind] = Path(path)
    configs = ROOT / "facerecon" / "configs"
    nets = {
        "Pixel2Mesh v1 (aflw-mobilenet)": (load_config(configs / "aflw-mobilenet.toml"), None),
        "model v2, graph blocks (aflw-v2, default)": (load_config(configs / "aflw-v2.toml"), checkpoints.get("graph")),
        "model v2, spiral decoder (aflw-v2-spiral)": (load_config(configs / "aflw-v2-spiral.toml"), checkpoints.get("spiral")),
    }
    print(f"CPU: {_cpu_name()}; torch {torch.__version__}; {args.threads} threads; load average {os.getloadavg()[0]:.2f}")
    gen = torch.Generator().manual_seed(0)
    built = {}
    for name, (cfg, ckpt) in nets.items():
        net, file_size = _network(cfg, ckpt)
        net.eval()
        one = _batch(1, net.num_vertices, gen)
        prior = cfg.model.starts_from_prior

        def forward(net=net, one=one, prior=prior) -> None:
            with torch.inference_mode():
                if prior:
                    net(one["image"], landmarks5=one["landmarks5"])
                else:
                    net(one["image"])

        built[name] = (cfg, net, forward, file_size)
    best = {name: float("inf") for name in built}
    for _ in range(args.rounds):  # interleaved: a slow spell of the machine is shared by all
        for name, (_, _, forward, _) in built.items():
            best[name] = min(best[name], _best_ms(forward, args.repeats))
    default = best["model v2, graph blocks (aflw-v2, default)"]
    print("| network | parameters (M) | state dict (MB) | checkpoint file (MB) | forward B=1 (ms) | vs default | vs 3DDFA_V2 | train samples/s (B=16) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (cfg, net, _, file_size) in built.items():
        params = sum(p.numel() for p in net.parameters()) / 1e6
        size = _state_bytes(net) / 2**20
        net.train()
        loss_fn = MeshLoss(cfg.loss)
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 1e-4)
        batch = _batch(16, net.num_vertices, gen)
        prior = cfg.model.starts_from_prior

        def step() -> None:
            pred = net(batch["image"], landmarks5=batch["landmarks5"]) if prior else net(batch["image"])
            loss = loss_fn(pred, batch).total
            opt.zero_grad()
            loss.backward()
            opt.step()

        step_ms = _best_ms(step, args.train_steps, warmup=1)
        ms = best[name]
        file_mb = "-" if file_size is None else f"{file_size / 2**20:.1f}"
        print(f"| {name} | {params:.2f} | {size:.1f} | {file_mb} | {ms:.1f} | {ms / default:.2f}x | {ms / PEER_MS:.1f}x | {16e3 / step_ms:.1f} |")


if __name__ == "__main__":
    main()
