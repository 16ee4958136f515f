"""Nearest neighbours: compiled kernel and fallback vs scipy.spatial.cKDTree, ragged batches, dtypes,
threads, validation and gradients."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from facerecon.errors import DependencyError, InputError
from facerecon.ops import backend, nearest_neighbors
from facerecon.ops import build as build_module


def sphere_surface(n: int, rng: np.random.Generator, radius: float = 1.0) -> np.ndarray:
    """(n, 3) points sampled uniformly on a sphere surface (a surface-sampled cloud)."""
    v = rng.normal(size=(n, 3))
    return radius * v / np.linalg.norm(v, axis=1, keepdims=True)


def reference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each point of a: (squared distance to nearest b, its index, unique-by-margin mask).

    Computed in float64 with cKDTree; an index is only comparable where the second nearest is
    farther than the nearest by a clear margin (otherwise float32 rounding may pick either).
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    k = 2 if len(b64) > 1 else 1
    d, i = cKDTree(b64).query(a64, k=k)
    if k == 1:
        return d**2, i, np.ones(len(a), dtype=bool)
    unique = d[:, 1] ** 2 - d[:, 0] ** 2 > 1e-5 * np.maximum(d[:, 1] ** 2, 1e-6)
    return d[:, 0] ** 2, i[:, 0], unique

HAS_COMPILER = shutil.which("c++") is not None or shutil.which("g++") is not None


@pytest.fixture(params=["cpp", "torch"])
def nn_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with the compiled extension and with the forced pure-torch fallback."""
    if request.param == "cpp" and not HAS_COMPILER:
        pytest.skip("no C++ compiler: the compiled extension cannot be built here")
    monkeypatch.setenv("FACERECON_NN_BACKEND", request.param)
    return request.param


def test_compiled_backend_is_active_when_a_compiler_exists() -> None:
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler")
    assert backend("cpu") == "cpp", build_module.failure_reason()


def _check_against_scipy(x: np.ndarray, y: np.ndarray, dtype: torch.dtype) -> None:
    res = nearest_neighbors(torch.tensor(x, dtype=dtype)[None], torch.tensor(y, dtype=dtype)[None])
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for dist, idx, (ref_d, ref_i, unique), src, dst in (
        (res.dist_xy[0], res.idx_xy[0], reference(x, y), x, y),
        (res.dist_yx[0], res.idx_yx[0], reference(y, x), y, x),
    ):
        dist, idx = dist.numpy(), idx.numpy()
        assert idx.dtype == np.int64
        np.testing.assert_allclose(dist, ref_d, rtol=rtol, atol=1e-7 if dtype == torch.float32 else 1e-14)
        assert unique.mean() > 0.9
        np.testing.assert_array_equal(idx[unique], ref_i[unique])
        # Where not unique, the chosen point is still at the nearest distance.
        chosen = ((src.astype(np.float64) - dst.astype(np.float64)[idx]) ** 2).sum(-1)
        np.testing.assert_allclose(chosen, ref_d, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes", [(1, 1), (5, 3), (700, 1300), (2100, 650)])
def test_random_clouds_match_ckdtree(nn_backend: str, dtype: torch.dtype, sizes: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(sizes))
    x = rng.uniform(-1.0, 1.0, (sizes[0], 3))
    y = rng.uniform(-1.0, 1.0, (sizes[1], 3)) * 1.5 + 0.2
    _check_against_scipy(x.astype(np.float32), y.astype(np.float32), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_surface_sampled_clouds_match_ckdtree(nn_backend: str, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(7)
    x = sphere_surface(1500, rng, radius=1.02)  # a "mesh" slightly outside the "scan"
    y = sphere_surface(4000, rng) * np.array([1.0, 0.8, 0.6])  # an ellipsoid surface
    _check_against_scipy(x.astype(np.float32), y.astype(np.float32), dtype)


@pytest.mark.parametrize("threads", [1, 2])
def test_one_and_two_threads_agree_with_ckdtree(nn_backend: str, threads: int) -> None:
    rng = np.random.default_rng(threads)
    x = rng.normal(size=(3000, 3)).astype(np.float32)
    y = rng.normal(size=(1800, 3)).astype(np.float32)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_against_scipy(x, y, torch.float32)
    finally:
        torch.set_num_threads(old)


def test_ragged_batch_matches_per_element_ckdtree(nn_backend: str) -> None:
    rng = np.random.default_rng(3)
    xl, yl = [300, 17, 1, 250], [90, 400, 33, 1]
    x = rng.normal(size=(4, 300, 3)).astype(np.float32)
    y = rng.normal(size=(4, 400, 3)).astype(np.float32)
    x[1, 17:] = np.nan  # padding may hold anything; it must be ignored
    y[3, 1:] = 1e30
    res = nearest_neighbors(torch.from_numpy(x), torch.from_numpy(y), torch.tensor(xl), torch.tensor(yl))
    for b in range(4):
        ref_d, ref_i, unique = reference(x[b, : xl[b]], y[b, : yl[b]])
        np.testing.assert_allclose(res.dist_xy[b, : xl[b]].numpy(), ref_d, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(res.idx_xy[b, : xl[b]].numpy()[unique], ref_i[unique])
        ref_d, ref_i, unique = reference(y[b, : yl[b]], x[b, : xl[b]])
        np.testing.assert_allclose(res.dist_yx[b, : yl[b]].numpy(), ref_d, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(res.idx_yx[b, : yl[b]].numpy()[unique], ref_i[unique])
        assert (res.idx_xy[b, xl[b]:] == -1).all() and (res.dist_xy[b, xl[b]:] == 0).all()
        assert (res.idx_yx[b, yl[b]:] == -1).all() and (res.dist_yx[b, yl[b]:] == 0).all()


def test_many_small_elements_use_the_batch_parallel_path(nn_backend: str) -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(16, 40, 3))
    y = rng.normal(size=(16, 70, 3))
    res = nearest_neighbors(torch.from_numpy(x), torch.from_numpy(y))
    for b in range(16):
        ref_d, ref_i, unique = reference(x[b], y[b])
        np.testing.assert_allclose(res.dist_xy[b].numpy(), ref_d, rtol=1e-12)
        np.testing.assert_array_equal(res.idx_xy[b].numpy()[unique], ref_i[unique])


def test_ties_pick_the_smallest_index(nn_backend: str) -> None:
    y = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]])
    x = torch.zeros(1, 1, 3)
    res = nearest_neighbors(x, y)
    assert res.idx_xy.tolist() == [[0]]
    assert res.idx_yx.tolist() == [[0, 0, 0, 0]]
    assert res.dist_xy.tolist() == [[1.0]]


def test_compiled_and_fallback_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 900, 3, generator=gen)
    y = torch.randn(3, 1200, 3, generator=gen)
    xl, yl = torch.tensor([900, 500, 3]), torch.tensor([1200, 1, 700])
    monkeypatch.setenv("FACERECON_NN_BACKEND", "cpp")
    a = nearest_neighbors(x, y, xl, yl)
    monkeypatch.setenv("FACERECON_NN_BACKEND", "torch")
    b = nearest_neighbors(x, y, xl, yl)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_gradcheck_float64(nn_backend: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randn(2, 13, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    lengths_x, lengths_y = torch.tensor([9, 6]), torch.tensor([13, 10])

    def fn(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        res = nearest_neighbors(a, b, lengths_x, lengths_y)
        return res.dist_xy, res.dist_yx

    assert torch.autograd.gradcheck(fn, (x, y))
    assert torch.autograd.gradgradcheck(fn, (x, y))


def test_gradient_matches_hand_derivation() -> None:
    x = torch.tensor([[[0.0, 0.0, 0.0]]], requires_grad=True)
    y = torch.tensor([[[1.0, 2.0, 2.0], [5.0, 5.0, 5.0]]], requires_grad=True)
    res = nearest_neighbors(x, y)
    assert res.dist_xy.item() == pytest.approx(9.0)
    res.dist_xy.sum().backward()
    # d/dx |x - y0|^2 = 2 (x - y0); y1 is not anyone's nearest in the x->y direction.
    assert x.grad.tolist() == [[[-2.0, -4.0, -4.0]]]
    assert y.grad.tolist() == [[[2.0, 4.0, 4.0], [0.0, 0.0, 0.0]]]


@pytest.mark.parametrize(
    "x, y, kwargs, message",
    [
        (torch.zeros(1, 4, 2), torch.zeros(1, 4, 3), {}, "shape"),
        (torch.zeros(4, 3), torch.zeros(1, 4, 3), {}, "shape"),
        (torch.zeros(2, 4, 3), torch.zeros(1, 4, 3), {}, "batch size"),
        (torch.zeros(1, 4, 3), torch.zeros(1, 4, 3, dtype=torch.float64), {}, "dtype"),
        (torch.zeros(1, 4, 3, dtype=torch.int64), torch.zeros(1, 4, 3), {}, "float32 or float64"),
        (torch.zeros(1, 0, 3), torch.zeros(1, 4, 3), {}, "empty"),
        (torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), {"x_lengths": torch.tensor([0])}, "empty"),
        (torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), {"y_lengths": torch.tensor([5])}, "only 4"),
        (torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), {"y_lengths": torch.tensor([2, 2])}, "shape"),
        (torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), {"x_lengths": torch.tensor([1.5])}, "integers"),
        (torch.tensor([[[0.0, float("nan"), 0.0]]]), torch.zeros(1, 4, 3), {}, "not finite"),
        (torch.zeros(1, 4, 3), torch.full((1, 4, 3), float("inf")), {}, "not finite"),
        (np.zeros((1, 4, 3)), torch.zeros(1, 4, 3), {}, "torch.Tensor"),
    ],
)
def test_bad_input_raises_input_error(x: object, y: object, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        nearest_neighbors(x, y, **kwargs)


def test_mismatched_devices_raise_input_error() -> None:
    x = torch.zeros(1, 4, 3)
    y = torch.zeros(1, 4, 3, device="meta")
    with pytest.raises(InputError, match="device"):
        nearest_neighbors(x, y)


def test_unknown_forced_backend_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACERECON_NN_BACKEND", "fortran")
    with pytest.raises(InputError, match="FACERECON_NN_BACKEND"):
        nearest_neighbors(torch.zeros(1, 2, 3), torch.ones(1, 2, 3))


def test_fallback_warns_once_when_extension_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    state = build_module._State()
    state.tried, state.failure = True, "no compiler (simulated)"
    monkeypatch.setattr(build_module, "_state", state)
    monkeypatch.setenv("FACERECON_NN_BACKEND", "auto")
    x, y = torch.zeros(1, 2, 3), torch.ones(1, 3, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = nearest_neighbors(x, y)
        nearest_neighbors(x, y)
    assert [str(w.message) for w in caught if "fallback" in str(w.message)].__len__() == 1
    assert first.dist_xy.tolist() == [[3.0, 3.0]]
    monkeypatch.setenv("FACERECON_NN_BACKEND", "cpp")
    with pytest.raises(DependencyError, match="simulated"):
        nearest_neighbors(x, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    for batch, n, m in ((1, 7008, 18000), (3, 500, 64), (2, 3, 2000)):
        x = torch.randn(batch, n, 3, generator=gen, dtype=dtype)
        y = torch.randn(batch, m, 3, generator=gen, dtype=dtype)
        xl = torch.randint(1, n + 1, (batch,), generator=gen)
        yl = torch.randint(1, m + 1, (batch,), generator=gen)
        xl[0], yl[0] = n, m
        cpu = nearest_neighbors(x, y, xl, yl)
        gpu = nearest_neighbors(x.cuda(), y.cuda(), xl.cuda(), yl.cuda())
        assert backend("cuda") == "cuda"
        for dist in ("dist_xy", "dist_yx"):
            torch.testing.assert_close(getattr(gpu, dist).cpu(), getattr(cpu, dist), rtol=1e-5, atol=1e-6)
        for idx in ("idx_xy", "idx_yx"):  # rounding may flip near-ties between devices, rarely
            same = (getattr(gpu, idx).cpu() == getattr(cpu, idx)).double().mean().item()
            assert same > 0.999
