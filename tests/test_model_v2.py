"""Model v2: the posed prior face, the new loss terms and metrics against independent references,
and a tiny end-to-end run (train, eval with the five-point baseline, predict-side loading)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facerecon.config import Config
from facerecon.engine.evaluate import fold_fraction
from facerecon.losses import vertex_loss
from facerecon.mesh.surface import face_adjacency, normal_consistency_loss
from facerecon.model.face_prior import FacePriorArrays
from rotations import rotation_xyz
from synthetic_cache import make_tiny_cache

TINY_V2 = {
    "model.backbone": "resnet18",
    "model.kind": "prior_graph",
    "model.prior.components": 4,
    "model.graph.hidden_per_block": [16, 16, 8, 8],
    "model.graph.layers_per_block_list": [2, 2, 2, 2],
    "model.image_size": 64,
    "model.prior.head_hidden": 32,
    "loss.chamfer": 0.0,
    "loss.normal": 0.0,
    "loss.vertex": 1.0,
    "loss.base": 0.5,
    "loss.normal_consistency": 0.01,
    "loss.gt_normal": 0.01,
    "train.points_per_region": [100, 50, 50],
    "train.num_workers": 0,
    "train.batch_size": 2,
    "train.augment.enabled": True,
    "train.fit_template": False,
}


def test_untrained_network_outputs_the_five_point_posed_mean_face() -> None:
    """With a zero head, the base face is the prior mean posed by the five points: put the five
    3-D points among the mean's vertices, project them with a known pose, and the base face's
    first five vertices must land exactly on the given points."""
    from facerecon.model.network import build_network

    cfg = Config().replace({k: v for k, v in TINY_V2.items() if k.startswith("model.")}).model
    net = build_network(cfg).eval()
    v = net.num_vertices
    rng = np.random.default_rng(0)
    five3d = np.array([[-0.3, -0.2, -0.1], [0.3, -0.2, -0.1], [0.0, 0.1, -0.35], [-0.22, 0.4, -0.08], [0.22, 0.4, -0.08]])
    mean = rng.normal(scale=0.3, size=(v, 3))
    mean[:5] = five3d
    prior = FacePriorArrays(
        ids=np.zeros((v, 3), np.int64), bary=np.ones((v, 3), np.float32) / 3, mean=mean.astype(np.float32),
        basis=np.zeros((4, v, 3), np.float32), std=np.ones(4, np.float32), landmarks=np.zeros((68, 3), np.float32),
        five3d=five3d.astype(np.float32), five_ref=five3d[:, :2].astype(np.float32), mirror=np.arange(v), explained=1.0,
    )
    net.set_prior(prior)
    rot = rotation_xyz(0.15, -0.5, 0.3)
    five = 0.9 * (five3d @ rot.T)[:, :2] + np.array([0.05, -0.03])
    with torch.no_grad():
        pred = net(torch.rand(1, 3, 64, 64), landmarks5=torch.from_numpy(five).float()[None])
    np.testing.assert_allclose(pred.base[0, :5, :2].numpy(), five, atol=1e-4)
    # the refinements start at zero: the final mesh is the base face
    assert float((pred.vertices - pred.base).abs().max()) < 1e-6


def test_fold_fraction_matches_trimesh() -> None:
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=2)
    rng = np.random.default_rng(1)
    verts = mesh.vertices + rng.normal(scale=0.08, size=mesh.vertices.shape)
    noisy = trimesh.Trimesh(verts, mesh.faces, process=False)
    expect = float((noisy.face_adjacency_angles > np.radians(60)).mean())
    got = fold_fraction(torch.from_numpy(verts)[None], torch.from_numpy(mesh.faces.astype(np.int64)))
    assert abs(float(got[0]) - expect) < 1e-12 and expect > 0
    pairs = face_adjacency(torch.from_numpy(mesh.faces.astype(np.int64)))
    assert pairs.shape[0] == noisy.face_adjacency.shape[0]


def test_normal_consistency_by_hand() -> None:
    # two triangles sharing an edge: flat (loss 0), then folded to 90 degrees (1 - cos = 1)
    faces = torch.tensor([[0, 1, 2], [0, 3, 1]])
    flat = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0]]])
    assert float(normal_consistency_loss(flat, faces)) < 1e-7
    bent = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]])
    assert abs(float(normal_consistency_loss(bent, faces)) - 1.0) < 1e-6


def test_vertex_loss_by_hand() -> None:
    pred = torch.zeros(1, 2, 3)
    gt = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [9.0, 9.0, 9.0]]])  # a finer level: first rows used
    assert abs(float(vertex_loss(pred, gt)) - 3.0) < 1e-6


def test_model_v2_trains_evaluates_and_loads(tmp_path: Path) -> None:
    from facerecon.engine.evaluate import EvalSettings, evaluate_cache
    from facerecon.engine.predict import load_model
    from facerecon.engine.train import TrainOptions, run_training

    cache = make_tiny_cache(tmp_path / "c.h5", n=8, points=400, same_topology=True)
    cfg = Config().replace({**TINY_V2, "train.epochs": 1})
    result = run_training(cfg, TrainOptions(cache=cache, out=tmp_path / "run", quiet=True))
    assert result.epochs_done == 1 and math.isfinite(result.last_metrics["nme"])
    model = load_model(tmp_path / "run" / "best.pt", "cpu")
    net = model.network
    assert float(net.prior_mean.abs().sum()) > 0  # the prior travelled in the checkpoint
    settings = EvalSettings(surface_samples=500)
    rep = evaluate_cache(str(cache), "test", settings, network=net)
    base = evaluate_cache(str(cache), "test", settings, baseline="five-point")
    for summary in (rep.summary, base.summary):
        assert {"nme", "chamfer", "fscore@2tau", "folds"} <= set(summary)


def test_prior_start_refuses_a_cache_without_topology(tmp_path: Path) -> None:
    from facerecon.engine.train import TrainOptions, run_training
    from facerecon.errors import InputError

    cache = make_tiny_cache(tmp_path / "c.h5", n=6, points=300, same_topology=False)
    cfg = Config().replace({**TINY_V2, "train.epochs": 1})
    with pytest.raises(InputError, match="vertex order"):
        run_training(cfg, TrainOptions(cache=cache, out=tmp_path / "run", quiet=True))


def test_onet_features_match_facenet_pytorch() -> None:
    """The frozen ONet branch computes the same 256-d features as facenet-pytorch's own ONet on
    the same 48 px input (an independent implementation of the same weights)."""
    facenet = pytest.importorskip("facenet_pytorch.models.mtcnn")
    from torch.nn import functional as F

    from facerecon.model.network import build_network

    cfg = Config().replace({**{k: v for k, v in TINY_V2.items() if k.startswith("model.")}, "model.prior.onet_features": True}).model
    net = build_network(cfg).eval()
    ref = facenet.ONet(pretrained=True).eval()
    captured = {}
    ref.prelu5.register_forward_hook(lambda m, i, o: captured.__setitem__("f", o))
    image = torch.rand(2, 3, 64, 64)
    x48 = F.interpolate(image, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        ref((x48 * 255.0 - 127.5) * 0.0078125)
        ours = net._onet_features(image)
    torch.testing.assert_close(ours, captured["f"], atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in net.onet.parameters())


@pytest.mark.slow
def test_two_processes_learn_the_same_face_prior_as_one(tmp_path: Path) -> None:
    """``--nproc 2``: the gathered training faces reach the spawned processes as shared tensors
    (not one pickled copy each), and rank 0 learns the same prior as a single process does."""
    import numpy as np

    from facerecon.engine.checkpoint import load_checkpoint
    from facerecon.engine.statistics import read_cache_statistics
    from facerecon.engine.train import TrainOptions, _shareable, prior_template, run_training

    cache = make_tiny_cache(tmp_path / "c.h5", n=8, points=400, same_topology=True)
    cfg = Config().replace({**TINY_V2, "train.epochs": 1, "train.num_workers": 0})
    opts = TrainOptions(cache=cache, out=tmp_path / "x", quiet=True)
    stats = read_cache_statistics(cache, template=prior_template(cfg, opts))
    shared = _shareable(stats)
    for array, tensor in zip(stats.prior_samples, shared.prior_samples):
        assert isinstance(tensor, torch.Tensor) and np.shares_memory(tensor.numpy(), array)
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        run_training(cfg, TrainOptions(cache=cache, out=out, nproc=nproc, quiet=True, validate=False, max_steps=1))
        runs[nproc] = load_checkpoint(out / "last.pt")["model"]
    for key in ("prior_mean", "prior_basis", "prior_std", "prior_five3d", "prior_five_ref"):
        torch.testing.assert_close(runs[2][key], runs[1][key], rtol=0, atol=0, msg=key)


def test_pruning_the_finer_blocks_keeps_what_they_did_not_change(tmp_path: Path) -> None:
    """A network whose blocks past the first output nothing (their last convolution zero, every
    other weight random) and the same network pruned to its first block (``prune_refinement``,
    loaded by ``load_model``): the same mesh at every level, the same landmarks; the dropped
    blocks' weights are gone from the file, and asking for more blocks than there are, or for
    none, is refused."""
    from facerecon import __version__
    from facerecon.engine.checkpoint import CHECKPOINT_FORMAT, prune_refinement, save_checkpoint
    from facerecon.engine.predict import load_model
    from facerecon.errors import InputError
    from facerecon.model.network import build_network

    config = Config().replace(TINY_V2)
    net = build_network(config.model).eval()
    v = net.num_vertices
    rng = np.random.default_rng(1)
    five3d = np.array([[-0.3, -0.2, -0.1], [0.3, -0.2, -0.1], [0.0, 0.1, -0.35], [-0.22, 0.4, -0.08], [0.22, 0.4, -0.08]], np.float32)
    net.set_prior(FacePriorArrays(
        ids=np.zeros((v, 3), np.int64), bary=np.ones((v, 3), np.float32) / 3, mean=rng.normal(scale=0.3, size=(v, 3)).astype(np.float32),
        basis=rng.normal(scale=0.02, size=(4, v, 3)).astype(np.float32), std=np.ones(4, np.float32), landmarks=np.zeros((68, 3), np.float32),
        five3d=five3d, five_ref=five3d[:, :2], mirror=np.arange(v), explained=1.0,
    ))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            dead = name.startswith(("blocks.1.", "blocks.2.", "blocks.3.")) and ".conv_out." in name
            p.copy_(torch.zeros_like(p) if dead else 0.1 * torch.randn(p.shape, generator=gen))
    src, dst = tmp_path / "full.pt", tmp_path / "pruned.pt"
    save_checkpoint(src, {
        "format": CHECKPOINT_FORMAT, "version": 1, "facerecon_version": __version__, "config": config.to_dict(),
        "epoch": 1, "global_step": 1, "best": 0.0, "metrics": {}, "model": net.state_dict(), "landmark_reference": None,
    })
    written = prune_refinement(src, dst, 1)
    assert not any(k.startswith("blocks.1.") for k in written["model"])
    assert written["config"]["model"]["graph"]["refined_levels"] == 1
    pruned = load_model(dst).network
    assert len(pruned.blocks) == 1 and pruned.num_blocks == net.num_blocks
    image, five = torch.rand(2, 3, 64, 64, generator=gen), torch.from_numpy(five3d[:, :2] * 0.9)[None].repeat(2, 1, 1)
    with torch.no_grad():
        a, b = net(image, landmarks5=five), pruned(image, landmarks5=five)
    assert float((a.vertices - a.base).abs().max()) > 1e-3  # the first block does move the face
    for level, (x, y) in enumerate(zip(a.coords, b.coords)):
        np.testing.assert_allclose(y.numpy(), x.numpy(), atol=1e-6, err_msg=f"level {level}")
    np.testing.assert_allclose(b.landmarks.numpy(), a.landmarks.numpy(), atol=1e-6)
    for levels in (0, 5):
        with pytest.raises(InputError, match="graph blocks on 4 levels"):
            prune_refinement(src, tmp_path / "bad.pt", levels)
    assert not (tmp_path / "bad.pt").exists()


def test_refined_levels_beyond_the_template_or_on_model_v1_are_refused() -> None:
    from facerecon.errors import InputError
    from facerecon.model.network import build_network

    with pytest.raises(InputError, match="refined_levels = 5: the network has 4 levels"):
        build_network(Config().replace({**{k: v for k, v in TINY_V2.items() if k.startswith("model.")}, "model.graph.refined_levels": 5}).model)
    with pytest.raises(InputError, match="refined_levels is read by model.kind = 'prior_graph' only"):
        build_network(Config().replace({"model.kind": "pixel2mesh", "model.backbone": "resnet18", "model.graph.refined_levels": 1}).model)
