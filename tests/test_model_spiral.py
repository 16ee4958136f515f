"""The spiral decoder: spiral order on a hand-drawn mesh, the convolution against an explicit
per-vertex gather-and-matmul, pooling after unpooling, and the network end to end."""

from __future__ import annotations

import numpy as np
import torch

from facerecon.model.spiral import (
    SpiralConv,
    SpiralDecoder,
    VertexNormals,
    elu,
    pool,
    spiral_indices,
    spiral_length,
    vertex_normals,
)

# A hexagon fan: centre 0, ring 1..6 counter-clockwise (x right, y up), then a second ring of
# three vertices on the outside of edges (1, 2), (3, 4), (5, 6).
_FAN = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 5], [0, 5, 6], [0, 6, 1]])
_OUTER = np.array([[1, 7, 2], [3, 8, 4], [5, 9, 6]])
FACES = np.concatenate([_FAN, _OUTER])


def test_spiral_lengths() -> None:
    assert [spiral_length(h) for h in (1, 2, 3)] == [7, 19, 37]


def test_spiral_order_of_a_hand_drawn_mesh() -> None:
    spirals = spiral_indices(FACES, 10, hops=1)
    # centre: itself, then its ring counter-clockwise from the smallest index
    assert spirals[0].tolist() == [0, 1, 2, 3, 4, 5, 6]
    # vertex 1 (boundary, fan 7 -> 2 -> 0 -> 6 around it): its open fan starts at 7
    assert spirals[1].tolist() == [1, 7, 2, 0, 6, 10, 10]
    # vertex 7: two neighbours, then padding with the zero row (index 10)
    assert spirals[7].tolist() == [7, 2, 1, 10, 10, 10, 10]
    two = spiral_indices(FACES, 10, hops=2)
    # the second ring walks the first in order, appending unseen neighbours in each one's order
    assert two[0].tolist()[:10] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert (two[0, 10:] == 10).all()


def test_spiral_conv_equals_explicit_gather_and_matmul() -> None:
    spirals = torch.from_numpy(spiral_indices(FACES, 10, hops=1))
    conv = SpiralConv(4, 5, spirals)
    x = torch.randn(2, 10, 4, dtype=torch.float32)
    got = conv(x)
    w, bias = conv.linear.weight, conv.linear.bias
    for b in range(2):
        for v in range(10):
            parts = [x[b, i] if i < 10 else torch.zeros(4) for i in spirals[v].tolist()]
            expect = w @ torch.cat(parts) + bias
            torch.testing.assert_close(got[b, v], expect, atol=1e-5, rtol=1e-5)


def test_elu_equals_torch_elu_in_value_and_gradient() -> None:
    x = torch.cat([torch.linspace(-30, 30, 2001), torch.zeros(3), torch.tensor([-1e-6, 1e-6])]).double().requires_grad_()
    y = elu(x)
    ref = torch.nn.functional.elu(x)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=0)
    (g,) = torch.autograd.grad(y.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=0)


def test_vertex_normals_sum_the_faces_cross_products() -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(2, 10, 3))
    expect = np.zeros_like(pts)
    for b in range(2):  # by hand: each face's (b - a) x (c - a) added to its three corners
        for f in FACES:
            a, bb, c = pts[b, f]
            n = np.cross(bb - a, c - a)
            for v in f:
                expect[b, v] += n
    expect /= np.linalg.norm(expect, axis=-1, keepdims=True)
    coords = torch.tensor(pts, dtype=torch.float32, requires_grad=True)
    got = vertex_normals(coords, torch.from_numpy(FACES))
    np.testing.assert_allclose(got.detach().numpy(), expect, atol=1e-5)
    module = VertexNormals(torch.from_numpy(FACES), 10)
    with torch.inference_mode():  # the incidence matrix built here must still serve training
        module(coords.detach())
    out = module(coords)
    np.testing.assert_allclose(out.detach().numpy(), expect, atol=1e-5)
    out[..., 2].sum().backward()
    assert coords.grad is not None and torch.isfinite(coords.grad).all() and coords.grad.abs().sum() > 0


def test_pool_after_unpool_is_identity() -> None:
    from facerecon.mesh.templates import load_template
    from facerecon.model.graph import MeshHierarchy

    h = MeshHierarchy.from_template(load_template("hemisphere"))
    spirals = [torch.from_numpy(spiral_indices(h.faces(l).numpy(), h.num_vertices(l), 1)) for l in range(4)]
    dec = SpiralDecoder(8, [4, 4, 4, 4], spirals, [h.unpool_edges(l) for l in range(3)])
    x = torch.randn(2, h.num_vertices(1), 3)
    up = dec.unpool(x, 1)
    assert up.shape[1] == h.num_vertices(2)
    torch.testing.assert_close(pool(up, h.num_vertices(1)), x)
    # the unpooled values are edge midpoints (the template's own subdivision)
    v2 = h.template_vertices(2)
    torch.testing.assert_close(dec.unpool(h.template_vertices(1)[None], 1)[0], v2)
    # every spiral of an interior vertex of a regular level has no padding
    s3 = spirals[3]
    assert (s3 < h.num_vertices(3)).all(1).float().mean() > 0.9


def test_spiral_network_runs_and_starts_at_the_base_face() -> None:
    from facerecon.config import Config
    from facerecon.model.network import build_network

    cfg = Config().replace({
        "model.backbone": "resnet18", "model.kind": "prior_spiral", "model.prior.components": 4,
        "model.image_size": 64, "model.prior.head_hidden": 32, "model.spiral.widths": [8, 8, 8, 8],
    }).model
    net = build_network(cfg).eval()
    with torch.no_grad():
        net.prior_mean.normal_(0, 0.3)
        net.prior_five3d.copy_(torch.tensor([[-0.3, -0.2, -0.1], [0.3, -0.2, -0.1], [0.0, 0.1, -0.35], [-0.22, 0.4, -0.08], [0.22, 0.4, -0.08]]))
        net.prior_five_ref.copy_(net.prior_five3d[:, :2])
        pred = net(torch.rand(2, 3, 64, 64))
    assert pred.vertices.shape == (2, net.num_vertices, 3) and len(pred.coords) == 2
    # both zero-initialised outputs: the mesh is the posed prior face
    torch.testing.assert_close(pred.vertices, pred.base)


def test_spiral_checkpoint_trains_loads_and_evaluates(tmp_path) -> None:
    """A spiral-decoder run goes through the same engine: train, load without flags, evaluate."""
    import math

    from facerecon.config import Config
    from facerecon.engine.evaluate import EvalSettings, evaluate_cache
    from facerecon.engine.predict import load_model
    from facerecon.engine.train import TrainOptions, run_training
    from synthetic_cache import make_tiny_cache

    cache = make_tiny_cache(tmp_path / "c.h5", n=8, points=400, same_topology=True)
    cfg = Config().replace({
        "model.backbone": "resnet18", "model.kind": "prior_spiral", "model.prior.components": 4,
        "model.image_size": 64, "model.prior.head_hidden": 32, "model.spiral.widths": [8, 8, 8, 8],
        "loss.chamfer": 0.0, "loss.normal": 0.0, "loss.vertex": 1.0, "loss.base": 0.5,
        "loss.chamfer_block_weights": [0.5, 1.0], "train.points_per_region": [100, 50, 50],
        "train.num_workers": 0, "train.batch_size": 2, "train.epochs": 1, "train.fit_template": False,
    })
    result = run_training(cfg, TrainOptions(cache=cache, out=tmp_path / "run", quiet=True))
    assert math.isfinite(result.last_metrics["nme"])
    model = load_model(tmp_path / "run" / "best.pt", "cpu")
    assert model.network.spiral_decoder is not None
    rep = evaluate_cache(str(cache), "test", EvalSettings(surface_samples=300), network=model.network)
    assert math.isfinite(rep.summary["chamfer"]) and 0.0 <= rep.summary["folds"] <= 100.0
    # predict and view take it without flags (the checkpoint says which decoder it is)
    from typer.testing import CliRunner

    from facerecon.cli import app
    from testutils import synthetic_photo

    photo = synthetic_photo(tmp_path / "photo.png")
    runner = CliRunner()
    out = tmp_path / "face.obj"
    result = runner.invoke(app, ["-q", "predict", str(photo), "-o", str(out), "--checkpoint", str(tmp_path / "run" / "best.pt")])
    assert result.exit_code == 0, result.output
    import trimesh

    mesh = trimesh.load(out, process=False)
    assert mesh.vertices.shape == (model.network.num_vertices, 3) and np.isfinite(mesh.vertices).all()
    from facerecon.mesh.preview import open3d_module

    try:
        open3d_module()
    except Exception:
        return  # no Open3D here: the viewer's own tests say so
    shot = tmp_path / "shot.png"
    viewed = runner.invoke(app, ["view", str(out), "--image", str(photo), "--screenshot", str(shot), "--width", "160", "--height", "120"])
    if viewed.exit_code != 0 and "offscreen" in viewed.output.lower():
        return  # no offscreen context (no EGL/Mesa): the viewer's own tests skip for the same reason
    assert viewed.exit_code == 0, viewed.output
    assert shot.stat().st_size > 0
