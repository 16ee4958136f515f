"""The FaceVision-GAN family through ``facerecon train``, ``eval``, ``predict`` and ``view``: its
configuration table, its target maps moved with the augmented crop (hand-worked), landmarks from
a hand-made correspondence map, and a few training steps on a tiny cache whose checkpoint
resumes exactly and is read by eval, predict and view without flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from typer.testing import CliRunner

from facerecon.cli import app
from facerecon.config import Config, ConfigError, load_config
from facerecon.data.augment import Transform2D
from facerecon.data.facevision_maps import code_to_depth, depth_to_code, landmarks_from_maps, warp_maps
from facerecon.errors import DependencyError
from testutils import synthetic_photo

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
#: A network small enough to train in seconds: 32 px maps, three levels.
TINY = {"model.kind": "facevision", "model.facevision.input_size": 32, "model.facevision.channels": 4,
        "model.facevision.levels": 3, "model.facevision.disc_channels": 4, "train.batch_size": 2,
        "train.num_workers": 0, "train.lr": 2e-3, "train.augment.enabled": True}


def test_the_facevision_kind_reads_its_own_table() -> None:
    cfg = Config.from_dict({"model": {"kind": "facevision", "facevision": {"lambda_1": 50, "lambda_g": 10}}})
    assert (cfg.model.facevision.lambda_1, cfg.model.facevision.lambda_g, cfg.model.facevision.input_size) == (50.0, 10.0, 128)
    assert "graph" not in cfg.to_dict()["model"] and cfg.to_dict()["model"]["facevision"]["lambda_1"] == 50.0
    with pytest.raises(ConfigError, match="model.facevision.lambda_1"):
        Config.from_dict({"model": {"kind": "pixel2mesh", "facevision": {"lambda_1": 50}}})
    with pytest.raises(ConfigError, match="model.facevision.smooth_lambda"):
        Config.from_dict({"model": {"kind": "facevision", "facevision": {"smooth_lambda": 2.0}}})
    shipped = load_config(ROOT / "facerecon" / "configs" / "aflw-gan.toml")
    assert shipped.model.kind == "facevision" and shipped.model.facevision.input_size == 128 and shipped.train.augment.enabled


def _plane(size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A face covering columns 2..4 of rows 1..5 (depth code 0.6 + 0.05 per column), PNCC x = column / 10."""
    depth = np.zeros((size, size), np.float32)
    pncc = np.zeros((size, size, 3), np.float32)
    for c in range(2, 5):
        depth[1:6, c] = 0.6 + 0.05 * c
        pncc[1:6, c] = (c / 10.0, 0.5, 0.25)
    return depth, pncc


def test_maps_follow_a_flip_of_the_crop() -> None:
    depth, pncc = _plane()
    d, p = warp_maps(Transform2D(True, 0.0, 1.0, np.zeros(2)), depth, pncc)
    assert d == pytest.approx(depth[:, ::-1])  # mirrored about the crop's centre; depth unchanged
    face = depth[:, ::-1] > 0
    assert p[face][:, 0] == pytest.approx(1.0 - pncc[:, ::-1][face][:, 0])  # the mirror point on the mean face
    assert p[face][:, 1:] == pytest.approx(pncc[:, ::-1][face][:, 1:]) and (p[~face] == 0).all()


def test_maps_follow_a_shift_and_a_scale_of_the_crop() -> None:
    depth, pncc = _plane()
    one_px = 2.0 / 8  # crop units per map px
    d, p = warp_maps(Transform2D(False, 0.0, 1.0, np.array([one_px, 2 * one_px])), depth, pncc)
    assert d[3:8, 3:6] == pytest.approx(depth[1:6, 2:5]) and (d > 0).sum() == (depth > 0).sum()
    assert p[3:8, 3:6] == pytest.approx(pncc[1:6, 2:5])
    # scale 0.5 about the centre: z' = z / 2, so a code c becomes (1 - 0.5) / 2 + 0.5 c; the face shrinks
    flat = np.where(depth > 0, np.float32(0.7), np.float32(0)).astype(np.float32)
    d, _ = warp_maps(Transform2D(False, 0.0, 0.5, np.zeros(2)), flat, pncc)
    assert d[d > 0] == pytest.approx(0.25 + 0.5 * 0.7) and 0 < (d > 0).sum() < (flat > 0).sum()
    assert code_to_depth(np.float32(0.6)) == pytest.approx(0.5 * code_to_depth(np.float32(0.7)), abs=1e-6)
    assert depth_to_code(np.array([0.5 * code_to_depth(0.7)])) == pytest.approx([0.6])


def test_landmarks_from_a_hand_made_correspondence_map() -> None:
    """PNCC codes linear in the pixel position, (u / 32, v / 32, 0.5): a landmark whose code is
    (a, b, 0.5) lies at map px (32 a, 32 b), between pixel centres too; depth code 0.55 -> z = -0.1."""
    size = 32
    v, u = np.mgrid[0:size, 0:size] + 0.5
    pncc = np.stack([u / size, v / size, np.full_like(u, 0.5)], axis=-1)
    depth = np.full((size, size), 0.55)
    depth[:, :3] = 0.0  # background at the left: no landmark may land there
    targets = np.array([[10.5, 12.5], [20.25, 7.75], [15.9, 27.3], [4.1, 3.6]])  # map px
    codes = np.concatenate([targets / size, np.full((4, 1), 0.5)], axis=1)
    lms = landmarks_from_maps(depth, pncc, codes)
    assert lms[:, :2] == pytest.approx(2.0 * targets / size - 1.0, abs=1e-6)  # crop units
    assert lms[:, 2] == pytest.approx(-0.1)
    coarse = landmarks_from_maps(depth, pncc, codes, subpixel=False)
    assert coarse[:, :2] == pytest.approx(2.0 * (np.floor(targets) + 0.5) / size - 1.0)


def test_fitted_landmarks_follow_a_turned_and_scaled_map_through_wrong_codes() -> None:
    """Codes made from the map px by a known affine map (a turn by 25 degrees, a scale, a
    shift, the third code a tilt): the fit carries each landmark's code to the px the inverse
    map gives, hand-worked, whether or not any pixel holds that code; 15 % of the face pixels
    given random codes (a network's mistakes) move the trimmed fit by under 0.1 px, where a
    nearest-code search lands on them."""
    size = 64
    v, u = np.mgrid[0:size, 0:size] + 0.5
    mask = (u - 30) ** 2 + (v - 34) ** 2 < 26**2
    t = np.radians(25.0)
    turn = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) / 80.0
    uv = np.stack([u, v], axis=-1)
    xy = (uv - [30.0, 34.0]) @ turn.T + [0.5, 0.5]  # codes x, y in [0, 1]
    pncc = np.concatenate([xy, 0.3 + 0.2 * xy[..., :1] - 0.1 * xy[..., 1:]], axis=-1)
    targets = np.array([[30.0, 34.0], [12.25, 20.5], [47.5, 50.75], [2.0, 60.0]])  # the last outside the face
    target_xy = (targets - [30.0, 34.0]) @ turn.T + [0.5, 0.5]
    codes = np.concatenate([target_xy, 0.3 + 0.2 * target_xy[:, :1] - 0.1 * target_xy[:, 1:]], axis=1)
    depth = np.where(mask, 0.55, 0.0)
    clean = landmarks_from_maps(depth, pncc, codes, method="fit")
    assert clean[:, :2] == pytest.approx(2.0 * targets / size - 1.0, abs=1e-9)
    rng = np.random.default_rng(3)
    wrong = mask & (rng.random(mask.shape) < 0.15)
    noisy = pncc.copy()
    noisy[wrong] = rng.random((int(wrong.sum()), 3))
    fitted = (landmarks_from_maps(depth, noisy, codes, method="fit")[:, :2] + 1.0) * size / 2
    assert np.abs(fitted - targets).max() < 0.1
    nearest = (landmarks_from_maps(depth, noisy, codes, method="nearest")[:3, :2] + 1.0) * size / 2
    assert np.abs(nearest - targets[:3]).max() > 1.0


def _renderer() -> None:
    from facerecon.data.facevision_maps import render_maps

    try:
        render_maps(np.eye(3), np.array([[0, 1, 2]]), np.zeros((3, 3)), 4)
    except DependencyError as exc:
        pytest.skip(f"no OpenGL renderer here: {exc}")


def _train(cache: Path, out: Path, epochs: int, resume: bool = False, max_steps: int | None = None) -> object:
    from facerecon.engine.train import TrainOptions, run_training

    cfg = Config().replace({**TINY, "train.epochs": epochs})
    return run_training(cfg, TrainOptions(cache=cache, out=out, resume=resume, max_steps=max_steps, quiet=True))


def test_a_gan_trains_resumes_exactly_and_eval_predict_and_view_read_it(tmp_path: Path) -> None:
    from synthetic_cache import make_tiny_cache

    _renderer()
    cache = make_tiny_cache(tmp_path / "c.h5", n=8, points=600, same_topology=True)
    whole = _train(cache, tmp_path / "whole", 2)
    assert whole.epochs_done == 2 and whole.global_step == 4 and (tmp_path / "c.maps.h5").is_file()
    ckpt = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert {"generator", "discriminators"} == set(ckpt["optimizer"]) == set(ckpt["scheduler"])
    assert any(k.startswith("gan.disc_depth.") for k in ckpt["model"]) and any(k.startswith("gan.disc_pncc.") for k in ckpt["model"])
    assert float(ckpt["model"]["landmark_codes"].abs().sum()) > 0  # the maps' landmark codes, for predict
    import h5py

    with h5py.File(cache, "r") as f:  # the face model that completes the meshes, from the cache
        mean, model_triangles = f["face_model/mean"][:], f["face_model/triangles"][:]
    assert ckpt["model"]["face_codes"].shape == mean.shape and np.array_equal(ckpt["model"]["face_triangles"].numpy(), model_triangles)
    lines = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and all("val_nme" in r and "val_chamfer" in r and "depth_l1" in r for r in lines)
    # stopped after 3 steps (mid-epoch), resumed: the same weights as the uninterrupted run
    _train(cache, tmp_path / "parts", 2, max_steps=3)
    _train(cache, tmp_path / "parts", 2, resume=True)
    resumed = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)
    for key, value in ckpt["model"].items():
        assert torch.equal(value, resumed["model"][key]), key

    checkpoint = tmp_path / "whole" / "last.pt"
    photo = synthetic_photo(tmp_path / "face.png")
    out = tmp_path / "out" / "face.obj"
    result = runner.invoke(app, ["-q", "predict", str(photo), "-o", str(out), "--checkpoint", str(checkpoint), "--stages"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    mesh = trimesh.load(out, process=False, force="mesh")
    assert record["num_vertices"] == len(mesh.vertices) > 3 and np.asarray(record["landmarks68"]).shape == (68, 3)
    assert set(record["pose_degrees"]) == {"yaw", "pitch", "roll"} and len(record["stages"]) == 4
    raw, cleaned, smoothed, detailed = (trimesh.load(out.with_name(name), process=False, force="mesh") for name in record["stages"])
    x0, y0, side = record["box"]  # the map's mesh is in the photo's frame, inside the crop box
    assert (detailed.vertices[:, 0] >= x0).all() and (detailed.vertices[:, 0] <= x0 + side).all()
    assert (detailed.vertices[:, 1] >= y0).all() and (detailed.vertices[:, 1] <= y0 + side).all()
    assert len(raw.faces) >= len(cleaned.faces) == len(smoothed.faces) == len(detailed.faces)
    assert np.allclose(smoothed.vertices[:, :2], cleaned.vertices[:, :2])  # depth-only smoothing
    # the final mesh: the detailed one, then the face model's triangles the depth map does not show
    assert len(mesh.faces) > len(detailed.faces) and np.allclose(mesh.vertices[: len(detailed.vertices)], detailed.vertices, atol=1e-4)
    assert np.array_equal(mesh.faces[: len(detailed.faces)], detailed.faces)

    # a checkpoint without a face model gives the map's mesh alone, uncompleted
    bare = tmp_path / "bare.pt"
    torch.save({**ckpt, "model": {k: v for k, v in ckpt["model"].items() if not k.startswith("face_")}}, bare)
    plain = runner.invoke(app, ["-q", "predict", str(photo), "-o", str(tmp_path / "bare" / "face.obj"), "--checkpoint", str(bare), "--stages"])
    assert plain.exit_code == 0, plain.output
    bare_record = json.loads((tmp_path / "bare" / "face.json").read_text())
    assert len(bare_record["stages"]) == 3 and bare_record["num_vertices"] == len(detailed.vertices)

    refused = runner.invoke(app, ["-q", "predict", str(photo), "-o", str(tmp_path / "x.obj"), "--checkpoint", str(checkpoint), "--runtime", "onnx"])
    assert refused.exit_code == 2 and "PyTorch runtime only" in refused.output
    not_exported = runner.invoke(app, ["-q", "export", str(tmp_path / "gan.onnx"), "--checkpoint", str(checkpoint)])
    assert not_exported.exit_code == 2 and "not exported to ONNX" in not_exported.output and not (tmp_path / "gan.onnx").exists()

    report = tmp_path / "eval.json"
    evaluated = runner.invoke(app, ["-q", "eval", "--cache", str(cache), "--checkpoint", str(checkpoint), "--split", "test",
                                    "--samples", "500", "--output", str(report)])
    assert evaluated.exit_code == 0, evaluated.output
    rows = report.with_suffix(".csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 3 and {"chamfer", "fscore@tau", "nme", "folds"} <= set(header)  # the two test crops
    for line in rows[1:]:
        values = dict(zip(header, line.split(",")))
        assert float(values["chamfer"]) > 0 and 0 <= float(values["folds"]) <= 100 and float(values["nme"]) > 0

    shot = tmp_path / "shot.png"
    viewed = runner.invoke(app, ["view", str(out), "--image", str(photo), "--screenshot", str(shot), "--width", "160", "--height", "120"])
    if viewed.exit_code != 0 and "offscreen" in viewed.output.lower():
        pytest.skip(f"no offscreen rendering here: {viewed.output}")
    assert viewed.exit_code == 0, viewed.output
    assert shot.is_file()


def test_two_processes_train_the_same_gan(tmp_path: Path) -> None:
    """CPU processes (gloo): each averages its two optimizers' gradients over both, so both hold the same weights."""
    from facerecon.engine.train import TrainOptions, run_training
    from synthetic_cache import make_tiny_cache

    _renderer()
    cache = make_tiny_cache(tmp_path / "c.h5", n=8, points=600, same_topology=True)
    cfg = Config().replace({**TINY, "train.epochs": 1, "train.batch_size": 1})
    result = run_training(cfg, TrainOptions(cache=cache, out=tmp_path / "run", nproc=2, quiet=True, validate=False))
    assert result.global_step == 2 and len(result.rank_checksums) == 2
    assert result.rank_checksums[0] == result.rank_checksums[1]
