"""ONNX export (facerecon/runtime/export.py): ONNX Runtime's outputs equal PyTorch's within 1e-4
crop units, on the shipped model and on random weights of every network kind (model v1 with a
colour head, model v2 with graph blocks on every level or on the coarsest only, model v2 with the
spiral decoder), at several batch sizes;
the export-time equivalents against the operations they replace (scipy, numpy, PyTorch's own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from facerecon.config import Config
from facerecon.runtime.export import (
    BandedResize,
    NeighbourTable,
    _bilinear_stacked,
    _bilinear_union,
    _nearest_scaled_rotation,
    _resize,
    _table,
    _unpool,
    carry_matrix,
    export_mtcnn,
    export_network,
    neighbour_table,
    resize_matrix,
    sparse_rows,
    union_pays,
)
from facerecon.runtime.session import MeshRuntime, OnnxMTCNN

TOL = 1e-4  # crop units


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime's optimised copies of the test's models go to a temporary cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
FIVE = np.array([[-0.33, -0.28], [0.33, -0.28], [0.0, 0.05], [-0.27, 0.38], [0.27, 0.38]], np.float32)


def _inputs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random crops and jittered five points; the last row has no five points (NaN)."""
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    five = (FIVE[None] + rng.normal(0, 0.04, (batch, 5, 2))).astype(np.float32)
    if batch > 1:
        five[-1] = np.nan
    return crops, five


def _torch_outputs(network: torch.nn.Module, crops: np.ndarray, five: np.ndarray) -> dict[str, np.ndarray]:
    image = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        if network.takes_five_points:
            pred = network(image, landmarks5=torch.from_numpy(five))
        else:
            pred = network(image)
    out = {"vertices": pred.vertices.numpy()}
    if pred.landmarks is not None:
        out["landmarks"] = pred.landmarks.numpy()
    if pred.colors is not None:
        out["colors"] = pred.colors.numpy()
    out.update({f"stage{k}": c.numpy() for k, c in enumerate(pred.coords)})
    return out


def _assert_equal_outputs(runtime: MeshRuntime, network: torch.nn.Module, batches: tuple[int, ...] = (3, 1)) -> None:
    for batch in batches:
        crops, five = _inputs(batch, seed=batch)
        ours = runtime.run(crops, five)
        ref = _torch_outputs(network, crops, five)
        assert sorted(ours) == sorted(ref)
        for name, value in ref.items():
            assert ours[name].shape == value.shape, name
            np.testing.assert_allclose(ours[name], value, atol=TOL, rtol=0, err_msg=name)


def _randomise(network: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight and statistic random (zero-initialised heads included), so each part of the
    function shows in the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "logit" in name:  # adaptive unpooling positions, landmark assignments
                p.copy_(noise)
            elif p.ndim == 1:  # biases, and batch-norm scales around 1
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.05 * noise)
            else:  # signals stay O(1) through the layers (neighbour weights: a sum of ~6)
                p.copy_(noise * 0.5 / p[0].numel() ** 0.5 / (6.0 if name.endswith("weight1") else 1.0))
        for name, b in network.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
        if network.takes_five_points:
            network.prior_mean.normal_(0, 0.3, generator=gen)
            network.prior_basis.normal_(0, 0.01, generator=gen)
            network.prior_std.uniform_(0.5, 1.5, generator=gen)
            network.prior_landmarks.normal_(0, 0.3, generator=gen)
            network.prior_five3d.copy_(torch.tensor([[-0.3, -0.2, -0.1], [0.3, -0.2, -0.1], [0.0, 0.1, -0.35], [-0.22, 0.4, -0.08], [0.22, 0.4, -0.08]]))
            network.prior_five_ref.copy_(torch.from_numpy(FIVE))
    return network.eval()


TINY = {
    "v1 (graph blocks from the template, colour head)": {
        "model.kind": "pixel2mesh", "model.backbone": "mobilenet_v2_050", "model.image_size": 64,
        "model.graph.hidden": 16, "model.graph.layers_per_block": 4, "model.pixel2mesh.colour": True, "model.landmarks": True,
    },
    "v2 graph (posed prior, grid head, O-Net features)": {
        "model.kind": "prior_graph", "model.backbone": "mobilenet_v2_050", "model.image_size": 64, "model.prior.components": 6,
        "model.prior.head_hidden": 32, "model.graph.hidden_per_block": [16, 12, 8, 8],
        "model.graph.layers_per_block_list": [4, 2, 2, 2], "model.prior.head_pool": "grid", "model.prior.onet_features": True,
    },
    "v2 graph refining the coarsest level only (the finer ones carried by the unpoolings)": {
        "model.kind": "prior_graph", "model.backbone": "mobilenet_v2_050", "model.image_size": 64, "model.prior.components": 6,
        "model.prior.head_hidden": 32, "model.graph.hidden_per_block": [16, 12, 8, 8],
        "model.graph.layers_per_block_list": [4, 2, 2, 2], "model.graph.refined_levels": 1,
    },
    "v2 spiral": {
        "model.kind": "prior_spiral", "model.backbone": "mobilenet_v2_050", "model.image_size": 64,
        "model.prior.components": 4, "model.prior.head_hidden": 32, "model.spiral.widths": [8, 8, 8, 8],
    },
}


@pytest.mark.parametrize("kind", list(TINY))
def test_random_weights_of_each_kind_run_the_same_in_onnx_runtime(kind: str, tmp_path: Path) -> None:
    from facerecon.model.network import build_network

    if TINY[kind].get("model.prior.onet_features"):
        pytest.importorskip("facenet_pytorch")
    network = _randomise(build_network(Config().replace(TINY[kind]).model), seed=len(kind))
    reference = np.random.default_rng(1).normal(size=(68, 3))
    path = export_network(network, tmp_path / "net.onnx", landmark_reference=reference)
    runtime = MeshRuntime(path)
    _assert_equal_outputs(runtime, network)
    last = network.num_blocks - 1
    np.testing.assert_array_equal(runtime.stage_faces[-1], network.hierarchy.faces(last).numpy())
    np.testing.assert_array_equal(runtime.landmark_reference, reference)


def test_shipped_model_runs_the_same_in_onnx_runtime(tmp_path: Path) -> None:
    from facerecon.engine.predict import default_checkpoint, load_model
    from facerecon.runtime.export import export_onnx

    if default_checkpoint() is None:
        pytest.skip("this checkout ships no default model")
    model = load_model(default_checkpoint())
    path = export_onnx(None, tmp_path / "shipped.onnx")
    _assert_equal_outputs(MeshRuntime(path), model.network, batches=(4, 1))
    # the copy shipped in facerecon/assets is an export of the shipped checkpoint
    from facerecon.runtime.session import default_onnx_model

    shipped = default_onnx_model()
    assert shipped is not None, "facerecon/assets/default_model.onnx is missing: run 'facerecon export'"
    _assert_equal_outputs(MeshRuntime(shipped), model.network, batches=(2,))


def test_mtcnn_networks_run_the_same_in_onnx_runtime(tmp_path: Path) -> None:
    pytest.importorskip("facenet_pytorch")
    from facerecon.mtcnn import load_nets, pack_levels

    export_mtcnn(tmp_path)
    ours, ref = OnnxMTCNN(tmp_path), load_nets("cpu")
    rng = np.random.default_rng(0)
    sizes = [(60, 45), (43, 32), (30, 23), (13, 12)]
    mosaic = pack_levels(sizes)
    canvas = rng.uniform(-1, 1, (1, *mosaic.shape, 3)).astype(np.float32)
    (reg, prob), (ref_reg, ref_prob) = ours.run_pnet(canvas, mosaic.outside), ref.run_pnet(canvas, mosaic.outside)
    for (oy, ox), (h, w) in zip(mosaic.offsets, sizes):  # each level's own cells (between levels: ~1e9)
        cells = (slice(oy // 2, oy // 2 + (h - 1) // 2 - 4), slice(ox // 2, ox // 2 + (w - 1) // 2 - 4))
        np.testing.assert_allclose(reg[(slice(None), *cells)], ref_reg[(slice(None), *cells)], atol=1e-5)
        np.testing.assert_allclose(prob[cells], ref_prob[cells], atol=1e-5)
    for size, run in ((24, "run_rnet"), (48, "run_onet")):
        crops = rng.uniform(-1, 1, (5, size, size, 3)).astype(np.float32)
        for a, b in zip(getattr(ours, run)(crops), getattr(ref, run)(crops)):
            np.testing.assert_allclose(a, b, atol=1e-5)


# ---- export-time equivalents ------------------------------------------------------------------


def _prelu_and_input(low: float, high: float) -> tuple[torch.nn.PReLU, torch.Tensor]:
    """A 16-channel PReLU with slopes evenly from ``low`` to ``high``, and a (3, 16, 7, 5) input of
    both signs with exact zeros at one pixel."""
    torch.manual_seed(0)
    prelu = torch.nn.PReLU(16)
    with torch.no_grad():
        prelu.weight.copy_(torch.linspace(low, high, 16))
    x = torch.randn(3, 16, 7, 5) * 4
    x[0, :, 0, 0] = 0.0
    return prelu, x


@pytest.mark.parametrize("low, high", [(-1.3, 1.0), (-0.7, 1.3), (0.0, 0.5)])
def test_prelu_for_onnx_is_prelu_bit_for_bit(low: float, high: float) -> None:
    """MTCNN's PReLUs as exported (``max(x, a x)``, or ``relu(x) + a min(x, 0)`` where a slope
    exceeds 1): the same bits as ``nn.PReLU`` on both sides of 0, for slopes below 0, in (0, 1]
    and above 1."""
    from facerecon.runtime.export import _prelu

    prelu, x = _prelu_and_input(low, high)
    with torch.no_grad():
        assert torch.equal(_prelu(prelu, x), prelu(x))
        assert torch.equal(_prelu(prelu, x, general="split"), prelu(x))
        assert torch.equal(_prelu(prelu, x[:, :, 0, 0]), prelu(x[:, :, 0, 0]))  # dense layers' (N, C)


@pytest.mark.parametrize("low, high", [(-1.3, 1.0), (-0.7, 1.3), (0.0, 0.5)])
def test_blocked_prelu_is_prelu_within_float_rounding(low: float, high: float) -> None:
    """The PReLU after MTCNN's convolutions as exported (``x + (1 - a) relu(-x)`` by depthwise
    convolutions): ``x`` itself where ``x >= 0``, and ``a x`` within float32 rounding where
    ``x < 0``, for slopes below 0, in (0, 1] and above 1."""
    from facerecon.runtime.export import _BlockedPReLU

    prelu, x = _prelu_and_input(low, high)
    with torch.no_grad():
        ours, ref = _BlockedPReLU(prelu)(x), prelu(x)
    assert torch.equal(ours[x >= 0], x[x >= 0])
    # rounding 1 - a, the product and the sum: each within half an ulp of its own size
    eps = float(torch.finfo(torch.float32).eps)
    a = prelu.weight.detach().reshape(1, -1, 1, 1)
    assert bool(((ours - ref).abs() <= 1.5 * eps * x.abs() * (1 + (1 - a).abs())).all())


def test_padded_channels_compute_the_same_function() -> None:
    """A convolution padded with zero channels to a whole number of blocks, its PReLU and the
    next convolution: the same outputs as the three layers as they were (R-Net's 28 channels)."""
    from facerecon.runtime.export import _padded_channels

    torch.manual_seed(0)
    conv, prelu, following = torch.nn.Conv2d(3, 28, 3), torch.nn.PReLU(28), torch.nn.Conv2d(28, 48, 3)
    with torch.no_grad():
        prelu.weight.uniform_(-0.7, 1.3)
    padded, slopes, after = _padded_channels(conv, prelu, following)
    assert (padded.out_channels, after.in_channels, slopes.weight.numel()) == (32, 32, 32)
    x = torch.randn(4, 3, 24, 24)
    pool = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
    with torch.no_grad():
        ref = following(pool(prelu(conv(x))))
        ours = after(pool(slopes(padded(x))))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert _padded_channels(following, torch.nn.PReLU(48), torch.nn.Conv2d(48, 8, 1))[0] is following  # 48: whole blocks


def test_resize_matrix_is_pytorchs_antialiased_bilinear_resize() -> None:
    image = torch.rand(2, 3, 224, 224)
    m = resize_matrix(224, 128)
    ref = F.interpolate(image, size=(128, 128), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(m @ image @ m.t(), ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize(("src", "dst"), [(224, 128), (128, 48), (224, 112), (100, 37)])
def test_banded_resize_is_pytorchs_antialiased_bilinear_resize(src: int, dst: int) -> None:
    image = torch.rand(2, 3, src, src)
    resize = BandedResize(resize_matrix(src, dst))
    ref = F.interpolate(image, size=(dst, dst), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(_resize(image, resize), ref, atol=2e-6, rtol=0)
    assert resize.banded == ((src, dst) != (100, 37))  # coprime sizes have no blocks: kept dense


@pytest.mark.parametrize("sizes", [[(32, 32), (16, 16), (8, 8), (4, 4)], [(28, 56), (14, 28), (7, 14)], [(6, 9), (2, 3)]])
def test_union_table_samples_what_grid_sample_samples_from_each_map(sizes: list[tuple[int, int]]) -> None:
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 5, h, w, generator=gen) for h, w in sizes]
    grid = torch.rand(2, 300, 2, generator=gen) * 2.4 - 1.2  # past the crop's edges too (border padding)
    grid[0, :3] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])  # corners and a pixel edge of every map
    ref = sum(F.grid_sample(m, grid[:, None], mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0] for m in maps)
    ref = ref.transpose(1, 2)  # (B, V, C)
    ours = _bilinear_union([m.permute(0, 2, 3, 1) for m in maps], sizes, grid).reshape(2, 300, 5)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    stacked = _bilinear_stacked(torch.cat([_table(m) for m in maps], 1), sizes, grid)
    torch.testing.assert_close(stacked, ref, atol=1e-5, rtol=0)


def test_union_table_is_used_on_the_fine_levels_of_the_shipped_sizes() -> None:
    sizes = [(32, 32), (16, 16), (8, 8), (4, 4)]  # MobileNetV2's maps of a 128 px input
    assert [union_pays(sizes, v) for v in (141, 491, 1821, 7001)] == [False, False, True, True]
    assert not union_pays(sizes[:1], 7001)  # one map: its own four taps


def test_carry_matrix_is_the_unpoolings_one_after_the_other_and_its_sparse_rows_sum_the_same() -> None:
    from facerecon.model.network import build_network

    network = _randomise(build_network(Config().replace(TINY["v2 graph (posed prior, grid head, O-Net features)"]).model), seed=3)
    x = torch.randn(network.hierarchy.num_vertices(1), 2, 3)
    unpools = list(network.unpools)[1:]
    expected = x
    for unpool in unpools:  # the network's own unpooling modules
        expected = unpool(expected, dim=0)
    carry = carry_matrix(unpools, x.shape[0])
    assert carry.shape == (network.hierarchy.num_vertices(3), x.shape[0])
    np.testing.assert_allclose((carry @ x.reshape(x.shape[0], -1)).reshape(-1, 2, 3).numpy(), expected.detach().numpy(), atol=1e-5)
    # the first rows are the identity: an unpooling appends its new vertices after the old ones
    np.testing.assert_array_equal(carry[: x.shape[0]].numpy(), np.eye(x.shape[0], dtype=np.float32))
    index, weight = sparse_rows(carry)
    assert index.shape[1] <= 3  # a vertex of the finest level lies on an edge of an edge of an edge
    gathered = (x.reshape(x.shape[0], -1)[index] * weight[..., None]).sum(1)
    np.testing.assert_allclose(gathered.numpy(), (carry @ x.reshape(x.shape[0], -1)).numpy(), atol=1e-6)
    np.testing.assert_allclose(_unpool(unpools[0], x, 0).detach().numpy(), expected[: network.hierarchy.num_vertices(2)].detach().numpy(), atol=1e-6)


def test_nearest_scaled_rotation_equals_the_svd() -> None:
    m = torch.randn(64, 2, 3, dtype=torch.float64)
    u, sig, vh = torch.linalg.svd(m, full_matrices=False)
    s, r = _nearest_scaled_rotation(m)
    torch.testing.assert_close(s, sig.mean(1))
    torch.testing.assert_close(r, u @ vh)


def test_neighbour_table_sums_what_the_sparse_adjacency_sums() -> None:
    from scipy.sparse import csr_matrix

    from facerecon.mesh.templates import load_template
    from facerecon.model.graph import MeshHierarchy

    h = MeshHierarchy.from_template(load_template("hemisphere"))
    for level in range(h.num_levels):
        crow, col = getattr(h, f"adj_crow_{level}"), getattr(h, f"adj_col_{level}")
        v = h.num_vertices(level)
        x = torch.randn(v, 3, 5)
        nsum = NeighbourTable(neighbour_table(crow, col, v))
        adj = csr_matrix((np.ones(len(col)), col.numpy(), crow.numpy()), shape=(v, v))
        ref = (adj @ x.reshape(v, -1).double().numpy()).reshape(v, 3, 5)
        np.testing.assert_allclose(nsum(x).numpy(), ref, atol=1e-5)
    assert nsum.table.shape[1] == 6 and nsum.rest is not None  # the few vertices of degree 7-9 apart


def test_export_subcommand_writes_a_model_that_loads(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from facerecon.cli import app
    from facerecon.engine.predict import default_checkpoint

    if default_checkpoint() is None:
        pytest.skip("this checkout ships no default model")
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["export", str(out), "--mtcnn", str(tmp_path / "mtcnn")])
    assert result.exit_code == 0, result.output
    assert MeshRuntime(out).takes_landmarks5
    OnnxMTCNN(tmp_path / "mtcnn")
    bad = CliRunner().invoke(app, ["export", str(tmp_path / "x.onnx"), "--checkpoint", str(tmp_path / "missing.pt")])
    assert bad.exit_code == 2
