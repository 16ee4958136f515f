"""The torch-free runtime (facerecon/runtime/session.py, predict.py): a photo reconstructed in a
fresh process that never imports torch, with the same boxes, five points and vertices as the
PyTorch path (boxes IoU >= 0.99, vertices within 1e-4 crop units) on a synthetic two-face image
and on the shared photos (skipped when ../shared/data is absent); all faces in one batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from facerecon.crop import FaceCrop, box_iou  # noqa: E402
from facerecon.imageio import load_image, save_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"

#: Run in a fresh interpreter: every face of each photo through the runtime, then the check that
#: torch was never imported; the results go to an .npz per photo.
SCRIPT = r"""
import json, sys
import numpy as np
from facerecon.imageio import load_image
from facerecon.runtime.predict import RuntimePredictor

predictor = RuntimePredictor(all_faces=True)
report = {}
for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):
    faces = predictor.predict(load_image(src))
    np.savez(dst, crops=json.dumps([f.crop.to_dict() for f in faces]),
             vertices=np.stack([f.stages_crop[-1] for f in faces]),
             landmarks=np.stack([f.landmarks_px for f in faces]))
    report[src] = len(faces)
report["torch"] = "torch" in sys.modules
print(json.dumps(report))
"""


def _synthetic(path: Path) -> Path:
    """Two copies of the shipped astronaut portrait at different sizes on a noisy canvas."""
    import cv2

    portrait = load_image(ROOT / "facerecon" / "assets" / "astronaut.png")
    rng = np.random.default_rng(0)
    canvas = rng.integers(90, 140, (620, 900, 3), dtype=np.uint8)
    canvas[40:360, 30:350] = cv2.resize(portrait, (320, 320), interpolation=cv2.INTER_AREA)
    canvas[300:560, 520:780] = cv2.resize(portrait, (260, 260), interpolation=cv2.INTER_AREA)
    save_image(path, canvas)
    return path


def _run_runtime(photos: list[Path], tmp_path: Path) -> tuple[dict, list[dict]]:
    args = []
    outs = []
    for k, photo in enumerate(photos):
        outs.append(tmp_path / f"out{k}.npz")
        args += [str(photo), str(outs[-1])]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="PASSIVE", XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = []
    for out in outs:
        with np.load(out) as data:
            results.append({"crops": [FaceCrop.from_dict(c) for c in json.loads(str(data["crops"]))],
                            "vertices": data["vertices"], "landmarks": data["landmarks"]})
    return report, results


def _compare_with_torch(photo: Path, result: dict) -> None:
    from facerecon.detect import FaceDetector
    from facerecon.engine.predict import Predictor, default_checkpoint, load_model

    image = load_image(photo)
    ref_crops = FaceDetector().crop(image, all_faces=True)
    crops = result["crops"]
    assert len(crops) == len(ref_crops), photo.name
    for ours, ref in zip(crops, ref_crops):
        assert ours.fallback == ref.fallback
        x0, y0, side = ours.box
        rx0, ry0, rside = ref.box
        assert box_iou((x0, y0, x0 + side, y0 + side), (rx0, ry0, rx0 + rside, ry0 + rside)) >= 0.99, (photo.name, ours.box, ref.box)
        if ref.landmarks5 is not None:
            side = ref.box[2]
            assert np.abs(np.asarray(ours.landmarks5) - ref.landmarks5).max() <= 0.01 * side
    # the network on the same crops: PyTorch's vertices, all faces in one batch
    predictor = Predictor(load_model(default_checkpoint()), detector=None, batch_size=len(crops))
    ref_faces = predictor.reconstruct([(photo, image, crop, k) for k, crop in enumerate(crops)])
    ref_vertices = np.stack([f.stages_crop[-1] for f in ref_faces])
    np.testing.assert_allclose(result["vertices"], ref_vertices, atol=1e-4, rtol=0)
    np.testing.assert_allclose(result["landmarks"], np.stack([f.landmarks_px for f in ref_faces]), atol=1e-4 * max(c.box[2] for c in crops))


@pytest.mark.slow
def test_runtime_never_imports_torch_and_matches_the_torch_path(tmp_path: Path) -> None:
    pytest.importorskip("facenet_pytorch")
    photos = [_synthetic(tmp_path / "two_faces.png")]
    shared = [PHOTOS / name for name in ("JianzhuGuo.jpg", "t1.jpg")]
    photos += [p for p in shared if p.is_file()]
    report, results = _run_runtime(photos, tmp_path)
    assert report["torch"] is False
    assert report[str(photos[0])] == 2
    for photo, result in zip(photos, results):
        _compare_with_torch(photo, result)
    if len(photos) == 1:
        pytest.skip("../shared/data/photos is absent: compared on the synthetic image only")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime's optimised copies go to a temporary cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_optimised_copy_is_kept_per_machine_and_gives_the_same_outputs(tmp_path: Path) -> None:
    from facerecon.runtime.session import MeshRuntime, default_onnx_model, optimised_model_path

    if default_onnx_model() is None:
        pytest.skip("no shipped ONNX model")
    cached = optimised_model_path(default_onnx_model())
    assert cached is not None and str(cached).startswith(str(tmp_path / "cache")) and not cached.exists()
    rng = np.random.default_rng(5)
    crops = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    first = MeshRuntime(default_onnx_model()).run(crops)["vertices"]
    assert cached.is_file() and not list(cached.parent.glob(".*.tmp"))
    second = MeshRuntime(default_onnx_model()).run(crops)["vertices"]  # loaded from the copy
    np.testing.assert_array_equal(first, second)
    cached.write_bytes(b"damaged")  # a damaged copy is made again
    np.testing.assert_array_equal(MeshRuntime(default_onnx_model()).run(crops)["vertices"], first)
    assert cached.stat().st_size > 1000


def test_mesh_runtime_takes_all_faces_in_one_batch() -> None:
    """Faces batched together give each face's own result (the batch axis is dynamic)."""
    from facerecon.runtime.session import MeshRuntime, default_onnx_model

    if default_onnx_model() is None:
        pytest.skip("no shipped ONNX model")
    rt = MeshRuntime(default_onnx_model())
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    five = np.full((5, 5, 2), np.nan, np.float32)
    together = rt.run(crops, five)["vertices"]
    for k in (0, 4):
        alone = rt.run(crops[k : k + 1], five[k : k + 1])["vertices"]
        np.testing.assert_allclose(together[k], alone[0], atol=1e-5)
    assert together.shape[0] == 5 and int(rt.stage_faces[-1].max()) < together.shape[1]


def test_runtime_reports_a_missing_model_in_one_line(tmp_path: Path) -> None:
    from facerecon.errors import InputError
    from facerecon.runtime.session import MeshRuntime

    with pytest.raises(InputError, match="no such ONNX model"):
        MeshRuntime(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a usable ONNX model"):
        MeshRuntime(tmp_path / "junk.onnx")


def test_reconstructor_on_the_onnx_runtime_matches_the_torch_runtime() -> None:
    """``Reconstructor(runtime="onnx")``: the same crops, the same vertices within 1e-4 crop units."""
    pytest.importorskip("facenet_pytorch")
    from facerecon.api import Reconstructor
    from facerecon.errors import InputError

    photo = ROOT / "facerecon" / "assets" / "astronaut.png"
    ours = Reconstructor(runtime="onnx").image(photo)
    ref = Reconstructor().image(photo)
    assert len(ours) == len(ref) == 1
    side = ref[0].crop.box[2]
    assert np.abs(np.asarray(ours[0].crop.box) - np.asarray(ref[0].crop.box)).max() < 0.01 * side
    # the same crop through both networks
    rec = Reconstructor(runtime="onnx")
    face = rec.predictor.reconstruct([(photo, load_image(photo), ref[0].crop, 0)])[0]
    np.testing.assert_allclose(face.stages_crop[-1], ref[0].stages_crop[-1], atol=1e-4)
    assert face.pose is not None and np.allclose(face.pose, ref[0].pose, atol=0.05)
    with pytest.raises(InputError, match="PyTorch runtime"):
        rec.video(photo)
