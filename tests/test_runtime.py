"""The torch-free runtime (facerecon/runtime/session.py through engine/results.py's Predictor): a
photo reconstructed in a fresh process that never imports torch, with the same boxes, five points
and vertices as the PyTorch runtime (boxes IoU >= 0.99, vertices within 1e-4 crop units) on a
synthetic two-face image and on the shared photos (skipped when ../shared/data is absent); all
faces in one batch; the runtime ``auto`` chooses; ``predict`` without torch installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from facerecon.crop import FaceCrop, box_iou
from facerecon.imageio import load_image, save_image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"

#: Run in a fresh interpreter: every face of each photo through the runtime, then the check that
#: torch was never imported; the results go to an .npz per photo.
SCRIPT = r"""
import json, sys
import numpy as np
import facerecon.engine.outputs, facerecon.engine.photos, facerecon.engine.video
from facerecon import Reconstructor
from facerecon.imageio import load_image

rec = Reconstructor(all_faces=True, batch_size=16)  # runtime "auto": the shipped model in ONNX Runtime
report = {"runtime": rec.runtime}
for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):
    faces = rec.image(load_image(src))
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
    assert report["torch"] is False and report["runtime"] == "onnx"
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
    cached = optimised_model_path(default_onnx_model(), batch=1)  # MeshRuntime's session: batch axis fixed to 1
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
    # the faces of a batch run concurrently, face by face: the same arrays on one worker
    np.testing.assert_array_equal(MeshRuntime(default_onnx_model(), threads=1).run(crops, five)["vertices"], together)
    empty = rt.run(crops[:0], five[:0])
    assert empty["vertices"].shape == (0, *together.shape[1:]) and empty["landmarks"].shape[0] == 0


def test_one_face_runs_on_spinning_threads_only_on_an_idle_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """One face: on an idle machine, a session on 2 threads that spin within a run; on a busy one,
    the one-thread session. Both give the one-thread session's vertices (within float rounding:
    the threads split the convolutions), and a batch after a single face takes the one-thread
    session, face by face."""
    import facerecon.machine
    from facerecon.runtime.session import MeshRuntime, default_onnx_model

    if default_onnx_model() is None:
        pytest.skip("no shipped ONNX model")
    rng = np.random.default_rng(5)
    crops = rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    five = np.full((3, 5, 2), np.nan, np.float32)
    monkeypatch.setattr(facerecon.machine, "machine_busy", lambda: True)
    busy = MeshRuntime(default_onnx_model())
    monkeypatch.setattr(facerecon.machine, "machine_busy", lambda: False)
    idle = MeshRuntime(default_onnx_model())
    assert idle.spin and not busy.spin and not MeshRuntime(default_onnx_model(), threads=1).spin
    reference = busy.run(crops[:1], five[:1])["vertices"]
    np.testing.assert_allclose(idle.run(crops[:1], five[:1])["vertices"], reference, atol=1e-5)
    np.testing.assert_array_equal(idle.run(crops, five)["vertices"], busy.run(crops, five)["vertices"])


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

    photo = ROOT / "facerecon" / "assets" / "astronaut.png"
    rec = Reconstructor(runtime="onnx")
    ours = rec.image(photo)
    ref_rec = Reconstructor(runtime="torch")
    ref = ref_rec.image(photo)
    assert len(ours) == len(ref) == 1
    side = ref[0].crop.box[2]
    assert np.abs(np.asarray(ours[0].crop.box) - np.asarray(ref[0].crop.box)).max() < 0.01 * side
    # the same crop through both networks
    face = rec.predictor.reconstruct([(photo, load_image(photo), ref[0].crop, 0)])[0]
    np.testing.assert_allclose(face.stages_crop[-1], ref[0].stages_crop[-1], atol=1e-4)
    assert face.pose is not None and np.allclose(face.pose, ref[0].pose, atol=0.05)
    # what the map outputs read of the network: the template and the mean face (PNCC's colours)
    assert rec.predictor.network.template == ref_rec.model.config.model.template
    prior = ref_rec.model.network.prior_mean.detach().numpy()
    np.testing.assert_allclose(rec.predictor.network.reference_face(), prior, atol=1e-6)


def test_auto_runtime_is_onnx_for_the_shipped_model_and_onnx_files_on_the_cpu(tmp_path: Path) -> None:
    from facerecon.api import choose_runtime
    from facerecon.errors import InputError
    from facerecon.runtime.session import default_onnx_model

    if default_onnx_model() is None:
        pytest.skip("no shipped ONNX model")
    assert choose_runtime("auto", None) == "onnx"
    assert choose_runtime("auto", "run/best.onnx") == "onnx"
    assert choose_runtime("auto", "run/best.pt") == "torch"
    assert choose_runtime("auto", None, device="cuda") == "torch"
    assert choose_runtime("torch", None) == "torch"
    assert choose_runtime("onnx", None) == "onnx"
    with pytest.raises(InputError, match="facerecon export model.onnx --checkpoint run/best.pt"):
        choose_runtime("onnx", "run/best.pt")
    with pytest.raises(InputError, match="runs on the CPU"):
        choose_runtime("onnx", None, device="cuda:1")
    with pytest.raises(InputError, match="ONNX runtime"):
        choose_runtime("torch", "model.onnx")
    with pytest.raises(InputError, match="use auto, onnx, torch"):
        choose_runtime("tensorrt", None)


def _cli(args: list[str], tmp_path: Path, site: str) -> subprocess.CompletedProcess:
    """``facerecon ARGS`` in a fresh process whose ``sitecustomize`` is ``site``."""
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(site)
    env = dict(os.environ, PYTHONPATH=f"{folder}{os.pathsep}{ROOT}", OMP_WAIT_POLICY="PASSIVE", XDG_CACHE_HOME=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "facerecon", *args], check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


#: A process in which importing torch (or anything of it) fails loudly, as on an install without it.
REFUSE_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision", "facenet_pytorch"):
            raise ImportError(f"torch-free process imported {name}", name=name)
        return None
sys.meta_path.insert(0, _NoTorch())
"""


@pytest.mark.slow
def test_predict_on_the_onnx_runtime_never_imports_torch(tmp_path: Path) -> None:
    """``facerecon predict`` (runtime auto, and every photo output) in a process that cannot
    import torch; the mesh overlays the photo as the PyTorch runtime's does (within 1e-3 px)."""
    import trimesh

    photo = ROOT / "facerecon" / "assets" / "astronaut.png"
    args = [str(photo), "-o", "face.obj", "--texture", "--maps", "depth,pncc,normals", "--stages", "--overlay", "face.png"]
    proc = _cli(["predict", *args, "--runtime", "onnx"], tmp_path, REFUSE_TORCH)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("face.obj", "face.json", "face.png", "face.depth.png", "face.pncc.png", "face.normals.png", "face.stage0.obj"):
        assert (tmp_path / name).is_file(), name
    plain = _cli(["predict", str(photo), "-o", "plain.obj"], tmp_path, REFUSE_TORCH)  # runtime auto
    assert plain.returncode == 0 and "onnx runtime" in plain.stderr, plain.stderr[-2000:]
    if importlib.util.find_spec("facenet_pytorch") is None:
        return
    ref = _cli(["predict", str(photo), "-o", "ref.obj", "--runtime", "torch"], tmp_path, "")
    assert ref.returncode == 0, ref.stderr[-2000:]
    ours = trimesh.load(tmp_path / "plain.obj", process=False)
    theirs = trimesh.load(tmp_path / "ref.obj", process=False)
    np.testing.assert_allclose(ours.vertices, theirs.vertices, atol=1e-3)


def test_commands_of_the_train_extra_name_its_install_command_without_torch(tmp_path: Path) -> None:
    """With torch missing (``sys.modules['torch'] = None``, as Python's import system reads it):
    one red line naming ``pip install 'facerecon[train]'``, exit 2."""
    site = "import sys\nsys.modules['torch'] = None\n"
    photo = ROOT / "facerecon" / "assets" / "astronaut.png"
    for args in (["export", "model.onnx"], ["predict", str(photo), "-o", "face.obj", "--runtime", "torch"]):
        proc = _cli(args, tmp_path, site)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'facerecon[train]'" in lines[0], (args, proc.stderr)
    proc = _cli(["predict", str(photo), "-o", "face.obj"], tmp_path, site)
    assert proc.returncode == 0 and (tmp_path / "face.json").is_file(), proc.stderr[-2000:]


@pytest.mark.slow
def test_a_video_runs_on_the_onnx_runtime_with_tracking(tmp_path: Path) -> None:
    """``facerecon predict clip.avi -o frames/`` without torch: one mesh per frame, the face
    tracked between detections (MTCNN's last stage in ONNX Runtime), each mesh over the face."""
    import cv2

    portrait = load_image(ROOT / "facerecon" / "assets" / "astronaut.png")
    clip = tmp_path / "pan.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 320))
    assert writer.isOpened()
    for t in range(6):  # the portrait shifted 4 px a frame
        m = np.array([[320 / portrait.shape[1], 0, 4.0 * t], [0, 320 / portrait.shape[0], 0]])
        writer.write(cv2.cvtColor(cv2.warpAffine(portrait, m, (320, 320)), cv2.COLOR_RGB2BGR))
    writer.release()
    proc = _cli(["predict", str(clip), "-o", "frames"], tmp_path, REFUSE_TORCH)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "frames" / "frames.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and sum(r["tracked"] for r in lines) >= 4, lines
    assert len(list((tmp_path / "frames").glob("frame_*.obj"))) == 6
    first = ROOT / "facerecon" / "assets" / "astronaut.png"
    ref = _cli(["predict", str(first), "-o", "still.obj"], tmp_path, REFUSE_TORCH)
    assert ref.returncode == 0
    box0 = np.asarray(lines[0]["box"])
    still = np.asarray(json.loads((tmp_path / "still.json").read_text())["box"]) * 320 / portrait.shape[1]
    assert np.abs(box0 - still).max() < 0.05 * still[2]  # the first frame's face where the photo's is
