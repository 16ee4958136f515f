"""``facerecon predict`` end to end on CPU (and ``view`` on its output): meshes in the photo's
pixel frame, JSON records, overlays, folders, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from typer.testing import CliRunner

from facerecon.cli import app
from testutils import synthetic_photo

runner = CliRunner()
V, F = 7001, 13440  # the hemisphere after three unpoolings


_photo = synthetic_photo


def _check_mesh(path: Path) -> trimesh.Trimesh:
    mesh = trimesh.load(path, process=False, force="mesh")
    assert mesh.vertices.shape == (V, 3) and mesh.faces.shape == (F, 3)
    assert np.isfinite(mesh.vertices).all()
    assert mesh.is_winding_consistent
    import open3d as o3d

    o3d_mesh = o3d.io.read_triangle_mesh(str(path))
    assert len(o3d_mesh.triangles) == F and len(o3d_mesh.vertices) >= V - 10
    return mesh


def _check_record(path: Path) -> dict:
    rec = json.loads(path.read_text())
    for key in ("box", "probability", "fallback", "landmarks68", "pose_degrees", "num_vertices", "image_size"):
        assert key in rec, key
    assert len(rec["box"]) == 3 and rec["box"][2] > 0
    assert np.asarray(rec["landmarks68"]).shape == (68, 3)
    assert set(rec["pose_degrees"]) == {"yaw", "pitch", "roll"}
    assert rec["num_vertices"] == V
    return rec


def test_predict_generated_image_single(tiny_run: dict, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "face.png")
    out = tmp_path / "out" / "face.obj"
    result = runner.invoke(
        app, ["-q", "predict", str(photo), "-o", str(out), "--checkpoint", str(tiny_run["checkpoint"]),
              "--overlay", str(tmp_path / "out" / "overlay.png"), "--stages"]
    )
    assert result.exit_code == 0, result.output
    mesh = _check_mesh(out)
    rec = _check_record(out.with_suffix(".json"))
    assert rec["fallback"] is True  # a drawn disk is not a face: the average crop is used and flagged
    # the mesh lies in the photo's pixel frame: inside the crop box
    x0, y0, side = rec["box"]
    xy = mesh.vertices[:, :2]
    assert (xy[:, 0] > x0 - 0.2 * side).all() and (xy[:, 0] < x0 + 1.2 * side).all()
    assert (xy[:, 1] > y0 - 0.2 * side).all() and (xy[:, 1] < y0 + 1.2 * side).all()
    stages = sorted((tmp_path / "out").glob("face.stage*.obj"))
    assert [len(trimesh.load(s, process=False).vertices) for s in stages] == [141, 491, 1821, 7001]
    overlay = np.asarray(Image.open(tmp_path / "out" / "overlay.png"))
    assert overlay.shape == (300, 400, 3)
    assert (overlay != np.asarray(Image.open(photo))).any(axis=2).mean() > 0.05  # the mesh was drawn
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_predict_real_photo_and_view(tiny_run: dict, tmp_path: Path, shared_data: Path) -> None:
    photo = shared_data / "photos" / "JianzhuGuo.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} not found")
    out = tmp_path / "guo.ply"
    result = runner.invoke(app, ["-q", "predict", str(photo), "-o", str(out), "--checkpoint", str(tiny_run["checkpoint"])])
    assert result.exit_code == 0, result.output
    _check_mesh(out)
    rec = _check_record(out.with_suffix(".json"))
    assert rec["fallback"] is False and rec["probability"] > 0.9
    shot = tmp_path / "view.png"
    viewed = runner.invoke(app, ["view", str(out), "--image", str(photo), "--screenshot", str(shot)])
    if viewed.exit_code != 0 and "offscreen" in viewed.output.lower():
        pytest.skip(f"Open3D cannot render offscreen here: {viewed.output}")
    assert viewed.exit_code == 0, viewed.output
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 5  # not blank


def test_predict_folder_batches_and_reports_failures(tiny_run: dict, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        _photo(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    out = tmp_path / "meshes"
    result = runner.invoke(
        app, ["predict", str(folder), "-o", str(out), "--format", "ply", "--batch-size", "2",
              "--checkpoint", str(tiny_run["checkpoint"]), "--overlay", str(tmp_path / "overlays")]
    )
    assert result.exit_code == 1, result.output  # one image failed, the others were done
    assert "broken.jpg" in result.output
    assert sorted(p.name for p in out.glob("*.ply")) == ["a.ply", "b.ply", "c.ply"]
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "b.json", "c.json"]
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 3
    # batching does not change the result: a.ply from the folder run equals a single-image run
    single = tmp_path / "single.ply"
    assert runner.invoke(app, ["-q", "predict", str(folder / "a.png"), "-o", str(single),
                               "--checkpoint", str(tiny_run["checkpoint"])]).exit_code == 0
    np.testing.assert_allclose(trimesh.load(single, process=False).vertices,
                               trimesh.load(out / "a.ply", process=False).vertices, atol=1e-3)


def test_predict_bad_inputs(tiny_run: dict, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "p.png")
    ckpt = str(tiny_run["checkpoint"])
    not_image = tmp_path / "x.jpg"
    not_image.write_text("hello")
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    wrong = tmp_path / "wrong.pt"
    data = torch.load(ckpt, weights_only=True)
    data["config"]["model"]["graph"]["hidden"] = 48  # weights no longer match the described network
    torch.save(data, wrong)
    cases = {
        "missing checkpoint": ([str(photo), "-o", str(tmp_path / "a.obj"), "--checkpoint", str(tmp_path / "nope.pt")], "not found"),
        "wrong checkpoint": ([str(photo), "-o", str(tmp_path / "b.obj"), "--checkpoint", str(wrong)], "do not match"),
        "unreadable image": ([str(not_image), "-o", str(tmp_path / "c.obj"), "--checkpoint", ckpt], "x.jpg"),
        "no face, required": ([str(photo), "-o", str(tmp_path / "d.obj"), "--checkpoint", ckpt, "--require-face"], "no face"),
        "unwritable output": ([str(photo), "-o", str(blocker / "e.obj"), "--checkpoint", ckpt], "file"),
        "unknown format": ([str(photo), "-o", str(tmp_path / "f.xyz"), "--checkpoint", ckpt], ".xyz"),
    }
    for name, (args, needle) in cases.items():
        result = runner.invoke(app, ["-q", "predict", *args])
        assert result.exit_code == 2, (name, result.output)
        lines = [l for l in result.output.splitlines() if l.strip()]
        assert len(lines) == 1 and needle in lines[0], (name, result.output)
    leftovers = [p.name for p in tmp_path.iterdir() if p.suffix in (".obj", ".json") or ".tmp" in p.name]
    assert leftovers == [], leftovers


def test_predict_imports_only_what_it_needs(tmp_path: Path) -> None:
    """Start-up: ``facerecon predict photo -o face.obj`` with the shipped model (the ONNX runtime)
    never imports torch (seconds), torchvision, facenet-pytorch, trimesh (the .obj is written
    directly), Open3D or h5py; and ``predict --help`` does not even import numpy."""
    import subprocess
    import sys

    from facerecon.engine.predict import default_checkpoint

    heavy = ("torch", "torchvision", "facenet_pytorch", "trimesh", "open3d", "h5py", "scipy")
    report = "import atexit, sys\natexit.register(lambda: print(sorted({m.split('.')[0] for m in sys.modules})))\n"
    help_run = subprocess.run(
        [sys.executable, "-c", report + "sys.argv = ['facerecon', 'predict', '--help']\nfrom facerecon.cli import main\nmain()"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    loaded = eval(help_run.stdout.strip().splitlines()[-1])  # our own printout
    assert help_run.returncode == 0 and "torch" not in loaded and "numpy" not in loaded, loaded
    if default_checkpoint() is None:
        pytest.skip("this installation ships no default model")
    photo = tmp_path / "astronaut.png"
    photo.write_bytes((Path(__file__).resolve().parents[1] / "facerecon" / "assets" / "astronaut.png").read_bytes())
    argv = ["facerecon", "-q", "predict", str(photo), "-o", str(tmp_path / "face.obj")]
    run = subprocess.run(
        [sys.executable, "-c", report + f"sys.argv = {argv!r}\nfrom facerecon.cli import main\nmain()"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    loaded = eval(run.stdout.strip().splitlines()[-1])
    assert "onnxruntime" in loaded and not set(heavy) & set(loaded), sorted(set(heavy) & set(loaded))
    assert _check_mesh(tmp_path / "face.obj") is not None


def test_landmarks5_in_crop_units_by_hand() -> None:
    from facerecon.crop import FaceCrop
    from facerecon.engine.predict import landmarks5_crop_units

    lm = np.array([[110, 120], [150, 120], [130, 140], [115, 160], [145, 160]], np.float32)
    face = FaceCrop(box=(100.0, 100.0, 80.0), probability=0.99, landmarks5=lm, detection=None, fallback=False)
    fallback = FaceCrop(box=(0.0, 0.0, 50.0), probability=float("nan"), landmarks5=None, detection=None, fallback=True)
    out = landmarks5_crop_units([face, fallback])
    assert out.shape == (2, 5, 2) and out.dtype == np.float32
    # x = 2 (x_px - x0) / side - 1: 110 -> 2 * 10 / 80 - 1 = -0.75; y 120 -> -0.5; 160 -> 0.5
    np.testing.assert_allclose(out[0, 0], [-0.75, -0.5])
    np.testing.assert_allclose(out[0, 4], [2 * 45 / 80 - 1, 0.5])
    assert np.isnan(out[1]).all()


def test_predict_passes_landmarks5_to_a_network_that_takes_them(tiny_run: dict, tmp_path: Path) -> None:
    """A network that takes the five points (``takes_five_points``, model v2) gets MTCNN's five
    points in crop units; one that does not is called with the image only (both go through the
    same Predictor)."""
    from facerecon.crop import FaceCrop
    from facerecon.engine.predict import Predictor, load_model

    model = load_model(tiny_run["checkpoint"])
    inner = model.network
    seen: list = []

    class TakesFivePoints(torch.nn.Module):
        takes_five_points = True

        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image, landmarks5=None):
            seen.append(None if landmarks5 is None else landmarks5.clone())
            return self.inner(image)

    image = np.full((200, 200, 3), 120, np.uint8)
    lm = np.array([[80, 90], [120, 90], [100, 110], [85, 130], [115, 130]], np.float32)
    crops = [FaceCrop(box=(50.0, 50.0, 100.0), probability=0.99, landmarks5=lm, detection=None, fallback=False),
             FaceCrop(box=(0.0, 0.0, 200.0), probability=float("nan"), landmarks5=None, detection=None, fallback=True)]
    model.network = TakesFivePoints().eval()
    predictor = Predictor(model, detector=None, batch_size=2)
    assert predictor.takes_landmarks5
    results = predictor.reconstruct(predictor.prepare(tmp_path / "x.png", image, crops))
    assert len(results) == 2 and len(seen) == 1
    five = seen[0].numpy()
    np.testing.assert_allclose(five[0], 2 * (lm - 50) / 100 - 1, atol=1e-6)
    assert np.isnan(five[1]).all()
    model.network = inner
    assert not Predictor(model, detector=None).takes_landmarks5
