"""Speed of the network: neighbour-sum variants, forward, training step, pre/post projection.

Run:  .venv/bin/python benchmarks/bench_model.py [--device cpu|cuda] [--repeats 3] [--threads 1] [--skip-resnet50]

Prints the best of ``--repeats`` wall times (ms; other load only adds time). Everything on synthetic inputs (random images, 18,000 random
ground-truth points per sample), on the real hemisphere template (141 -> 7001 vertices).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from facerecon.config import GraphConfig, LossConfig, ModelConfig
from facerecon.losses import MeshLoss
from facerecon.mesh.templates import load_template
from facerecon.model import MeshHierarchy, build_network


def _timeit(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    # the minimum: on a shared machine other processes only ever add time
    return 1e3 * min(times)


def bench_neighbour_sum(hier: MeshHierarchy, repeats: int, device: torch.device) -> None:
    level = hier.num_levels - 1
    v, b, c = hier.num_vertices(level), 4, 128
    e = hier.edges(level).to(device)
    src, dst = torch.cat([e[:, 0], e[:, 1]]), torch.cat([e[:, 1], e[:, 0]])
    adj = hier.to(device).adjacency(level)
    deg = hier.degree(level).to(device)
    d = int(deg.max())
    order = torch.argsort(dst * v + src)
    crow = torch.zeros(v + 1, dtype=torch.long, device=device)
    crow[1:] = torch.cumsum(deg, 0)
    pos = torch.arange(src.numel(), device=device) - crow[dst[order]]
    table = torch.full((v, d), v, dtype=torch.long, device=device)
    table[dst[order], pos] = src[order]

    def index_add(x: torch.Tensor) -> torch.Tensor:  # (B, V, C)
        return torch.zeros_like(x).index_add_(1, dst, x[:, src])

    def sparse_csr(x: torch.Tensor) -> torch.Tensor:  # vertex-major (V, B, C)
        return torch.sparse.mm(adj, x.reshape(v, -1)).view(x.shape)

    def padded(x: torch.Tensor) -> torch.Tensor:  # (B, V, C)
        return torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], 1)[:, table].sum(2)

    print(f"\n## Neighbour sum, B={b}, V={v}, C={c} ({device.type})")
    print("| method | forward ms | forward+backward ms |\n|---|---|---|")
    for name, fn, vm in (("index_add over edges", index_add, False), ("sparse CSR mm (kept)", sparse_csr, True),
                         ("padded neighbour gather", padded, False)):
        x0 = torch.randn(v, b, c, device=device) if vm else torch.randn(b, v, c, device=device)

        def fwd() -> None:
            with torch.no_grad():
                fn(x0)

        def fwd_bwd() -> None:
            x = x0.clone().requires_grad_(True)
            fn(x).sum().backward()

        print(f"| {name} | {_timeit(fwd, repeats, device):.1f} | {_timeit(fwd_bwd, repeats, device):.1f} |")


def _batch(b: int, device: torch.device, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = 18000
    pts = torch.rand(b, p, 3, generator=gen) * 1.6 - 0.8
    return {
        "image": torch.rand(b, 3, 224, 224, generator=gen).to(device),
        "points": pts.to(device),
        "lengths": torch.full((b,), p, dtype=torch.long).to(device),
        "normals": torch.nn.functional.normalize(torch.randn(b, p, 3, generator=gen), dim=-1).to(device),
        "landmarks": (torch.rand(b, 68, 3, generator=gen) - 0.5).to(device),
    }


def bench_network(template, backbones: list[str], repeats: int, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(0)
    loss_fn = MeshLoss(LossConfig())
    print(f"\n## Network, 224x224, hemisphere 141 -> 7001, hidden 128 ({device.type})")
    print("| backbone | project_mode | forward B=1 ms | forward B=4 ms | train step B=4 ms | samples/s (train) |")
    print("|---|---|---|---|---|---|")
    for backbone in backbones:
        for mode in ("auto", "pre", "post"):
            torch.manual_seed(0)
            cfg = ModelConfig(backbone=backbone, graph=GraphConfig(project_mode=mode))  # type: ignore[arg-type]
            net = build_network(cfg, template, device=device)
            opt = torch.optim.Adam(net.parameters(), lr=1e-4)
            b1, b4 = _batch(1, device, gen), _batch(4, device, gen)

            def forward(batch: dict[str, torch.Tensor]) -> None:
                net.eval()
                with torch.no_grad():
                    net(batch["image"])

            def step() -> None:
                net.train()
                res = loss_fn(net(b4["image"]), b4)
                opt.zero_grad(set_to_none=True)
                res.total.backward()
                opt.step()

            f1 = _timeit(lambda: forward(b1), repeats, device)
            f4 = _timeit(lambda: forward(b4), repeats, device)
            st = _timeit(step, repeats, device)
            print(f"| {backbone} | {mode} | {f1:.0f} | {f4:.0f} | {st:.0f} | {4000 / st:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-resnet50", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: on a machine shared with other work, 2+ threads vary 20x run to run)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    template = load_template("hemisphere")
    bench_neighbour_sum(MeshHierarchy.from_template(template), args.repeats * 3, device)
    backbones = ["resnet18"] + ([] if args.skip_resnet50 else ["resnet50"])
    bench_network(template, backbones, args.repeats, device)


if __name__ == "__main__":
    main()
