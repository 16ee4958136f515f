"""Same seed, same weights: two uninterrupted training runs with one seed end bit-identical at
batch size 1 as at 4.

The cause at batch size 1 (measured by comparing every autograd node's gradients of two
backward passes): the CPU backward of an indexed read (``coords[:, edges]`` in the edge and
normal losses) is ``index_put_`` with accumulation, which above 32,768 elements splits the work
between threads that add with atomic float adds. At batch size 4 the threads' shares fall on
different samples; at batch size 1 they share vertices, and the order of their adds (a matter
of scheduling: it showed on the loaded 2-core machine, not on an idle one) changed the sums.
The losses now read with ``index_select``, whose backward adds in index order."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL
from failure_harness import tiny_cache


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """At least ``n`` intra-op threads (the order of a parallel sum depends on them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_edge_gathers_add_their_gradients_in_index_order() -> None:
    """The edge loss's gradient at batch size 1 on the finest template (7,001 vertices, 20,440
    edges): each vertex's sum in edge order, as ``numpy.add.at`` adds (in float32), every time."""
    import numpy as np

    from facerecon.losses import edge_loss
    from facerecon.mesh.templates import load_template

    edges = torch.as_tensor(load_template("hemisphere").levels[-1].edges, dtype=torch.int64)
    n, e = int(edges.max()) + 1, edges.shape[0]
    coords0 = torch.randn(1, n, 3, generator=torch.Generator().manual_seed(0))

    def grad() -> torch.Tensor:
        coords = coords0.clone().requires_grad_(True)
        edge_loss(coords, edges).backward()
        return coords.grad[0]

    # d/dp of mean_k |p_a - p_b|^2 over E edges: 2 (p_a - p_b) / E at a, its negative at b
    step = (2 * (coords0[0, edges[:, 0]] - coords0[0, edges[:, 1]]) / e).numpy().astype(np.float32)
    at_a, at_b = np.zeros((n, 3), np.float32), np.zeros((n, 3), np.float32)
    np.add.at(at_a, edges[:, 0].numpy(), step)
    np.add.at(at_b, edges[:, 1].numpy(), -step)
    with _threads(2):
        first = grad()
        np.testing.assert_allclose(first.numpy(), at_a + at_b, rtol=1e-5, atol=1e-9)
        assert all(torch.equal(first, grad()) for _ in range(10))


@pytest.mark.parametrize("batch_size", [1, 4])
def test_two_runs_with_one_seed_give_identical_weights(batch_size: int, tmp_path: Path) -> None:
    from facerecon.config import Config
    from facerecon.engine.train import TrainOptions, run_training

    cache = tiny_cache(tmp_path / "c.h5", n=8, points=400)
    cfg = Config().replace({**TINY_MODEL, "train.epochs": 1, "train.batch_size": batch_size})
    weights = []
    with _threads(2):
        for name in ("a", "b"):
            run_training(cfg, TrainOptions(cache=cache, out=tmp_path / name, quiet=True, validate=False))
            weights.append(torch.load(tmp_path / name / "last.pt", weights_only=True)["model"])
    differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert differ == [], f"{len(differ)} of {len(weights[0])} tensors differ, e.g. {differ[:3]}"
