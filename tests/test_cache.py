"""``prepare`` / the HDF5 cache: schema, bad samples, splits, Ctrl-C and kill -9 resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from facerecon.data.cache import PrepareOptions, assign_splits, partial_path, prepare_cache, read_split_file
from facerecon.data.readers import list_samples
from facerecon.errors import InputError
from facerecon.frames import rotation_from_euler

sys.path.insert(0, str(Path(__file__).parent))
from test_face_model import tiny_model_arrays, write_reduced

ROOT = Path(__file__).resolve().parents[1]


def make_fixture_dataset(root: Path, n: int = 12, size: int = 96, seed: int = 0) -> tuple[Path, Path]:
    """An AFLW2000-3D-like folder of n synthetic samples and a tiny reduced face model.

    Images are smooth colour gradients; the .mat files hold Shape_Para / Exp_Para / Pose_Para and
    pt3d_68 computed with the published 1-based recipe (x = P_x, y = H + 1 - P_y, z = P_z).
    Returns (dataset folder, model folder).
    """
    arr = tiny_model_arrays()
    model_dir = write_reduced(root / "model", arr)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 40 + 10 * i)], axis=2).astype(np.uint8)
        Image.fromarray(img).save(data / f"image{i:05d}.jpg", quality=95)
        shape_p, exp_p = rng.normal(size=(199, 1)) * 2, rng.normal(size=(29, 1))
        pose = np.array([[rng.uniform(-0.3, 0.3), rng.uniform(-0.6, 0.6), rng.uniform(-0.2, 0.2),
                          size / 2 + rng.uniform(-5, 5), size / 2 + rng.uniform(-5, 5), 0.0, 0.0004]], dtype=np.float32)
        v = (arr["mean"].astype(np.float64).reshape(-1) + arr["shape"] @ shape_p[:5, 0] + arr["exp"] @ exp_p[:3, 0]).reshape(-1, 3)
        p = pose[0, 6] * v[arr["lm"]] @ rotation_from_euler(*pose[0, :3]).T + pose[0, 3:6]
        pt3d = np.stack([p[:, 0], size + 1 - p[:, 1], p[:, 2]]).astype(np.float32)
        scipy.io.savemat(data / f"image{i:05d}.mat", {"Shape_Para": shape_p, "Exp_Para": exp_p, "Pose_Para": pose, "pt3d_68": pt3d})
    return data, model_dir


def _read_all(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
        out["attrs"] = {k: v for k, v in f.attrs.items() if k != "command"}
    return out


def _assert_same_file(a: Path, b: Path) -> None:
    da, db = _read_all(a), _read_all(b)
    assert sorted(da) == sorted(db)
    for k in da:
        if k == "attrs":
            assert sorted(da[k]) == sorted(db[k])
            for name in da[k]:
                np.testing.assert_array_equal(da[k][name], db[k][name], err_msg=name)
        else:
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)


@pytest.fixture()
def fixture_set(tmp_path: Path) -> tuple[Path, Path]:
    return make_fixture_dataset(tmp_path, n=12)


def test_schema_and_contents(tmp_path: Path, fixture_set: tuple[Path, Path]) -> None:
    data, model = fixture_set
    out = tmp_path / "c.h5"
    s = prepare_cache(list_samples(data), out, model, PrepareOptions(crop_from="landmarks", flush_every=5), dataset=str(data), fmt="aflw2000", command="x")
    assert s.n_written == 12 and not s.skipped and not partial_path(out).exists()
    with h5py.File(out, "r") as f:
        assert f.attrs["schema_version"] == 2 and f.attrs["face_model_units"] == "um"
        # schema 2: the face model's arrays, points in its vertex order, no five points for
        # landmark-box crops
        assert bool(f.attrs["points_in_model_order"])
        assert f["face_model/mean"].shape == (16 * 16, 3) and f["face_model/landmark_ids"].shape == (68,)
        assert f["landmarks5"].shape == (12, 5, 2) and np.isnan(f["landmarks5"][:]).all()
        assert len(f.attrs["face_model_sha256"]) == 64
        n = 16 * 16
        assert f["images"].shape == (12, 224, 224, 3) and f["images"].chunks == (1, 224, 224, 3)
        np.testing.assert_array_equal(f["offsets"][:], np.arange(13) * n)
        assert f["points"].shape == (12 * n, 3) and f["points"].dtype == np.float32
        assert f["normals"].dtype == np.float16 and f["regions"].dtype == np.uint8 and f["colors"].dtype == np.uint8
        assert f["landmarks"].shape == (12, 68, 3)
        assert [x.decode() if isinstance(x, bytes) else x for x in f["ids"][:3]] == ["aflw2000/image00000", "aflw2000/image00001", "aflw2000/image00002"]
        assert np.isnan(f["probabilities"][:]).all() and not f["fallback"][:].any()
        # landmarks: z centred on their mean; all inside the landmark crop box (|x|, |y| < 1/1.1)
        lm = f["landmarks"][:]
        np.testing.assert_allclose(lm[:, :, 2].mean(axis=1), 0, atol=1e-5)
        assert np.abs(lm[:, :, :2]).max() <= 1 / 1.1 + 1e-4
        assert sorted(np.bincount(f["split"][:], minlength=3)) == [1, 1, 10]


def test_bad_samples_are_skipped_and_reported(tmp_path: Path, fixture_set: tuple[Path, Path]) -> None:
    data, model = fixture_set
    (data / "image00003.jpg").write_bytes(b"garbage")  # unreadable image
    (data / "image00005.mat").write_bytes(b"garbage")  # corrupt .mat
    scipy.io.savemat(data / "image00007.mat", {"Shape_Para": np.zeros((199, 1))})  # missing fields
    (data / "image00009.mat").unlink()  # missing annotation
    out = tmp_path / "c.h5"
    s = prepare_cache(list_samples(data), out, model, PrepareOptions(crop_from="landmarks"))
    assert s.n_written == 8
    assert [sid for sid, _ in s.skipped] == [f"aflw2000/image{i:05d}" for i in (3, 5, 7, 9)]
    assert "missing field" in s.skipped[2][1] and "cannot read image" in s.skipped[0][1]
    with h5py.File(out, "r") as f:
        assert f["skipped/ids"].shape == (4,)


def test_existing_output_and_changed_options_are_refused(tmp_path: Path, fixture_set: tuple[Path, Path]) -> None:
    data, model = fixture_set
    out = tmp_path / "c.h5"
    out.write_bytes(b"x")
    with pytest.raises(InputError, match="already exists"):
        prepare_cache(list_samples(data), out, model, PrepareOptions(crop_from="landmarks"))


def test_splits_are_deterministic_and_proportional(tmp_path: Path) -> None:
    ids = [f"a/{i}" for i in range(2000)]
    s = assign_splits(ids, seed=0)
    assert np.bincount(s, minlength=3).tolist() == [1600, 200, 200]
    np.testing.assert_array_equal(s, assign_splits(ids, seed=0))
    assert (s != assign_splits(ids, seed=1)).any()
    assert np.bincount(assign_splits(ids[:1800]), minlength=3).tolist() == [1440, 180, 180]
    f = tmp_path / "split.txt"
    f.write_text("# comment\na/0 test\na/1, val\na/2 train\n")
    assert read_split_file(f) == {"a/0": 2, "a/1": 1, "a/2": 0}
    assert assign_splits(["a/0", "a/1", "a/2"], split_file=f).tolist() == [2, 1, 0]
    with pytest.raises(InputError, match="not listed"):
        assign_splits(["a/0", "zzz"], split_file=f)
    f.write_text("a/0 testing\n")
    with pytest.raises(InputError, match="split.txt:1"):
        read_split_file(f)


def test_keyboard_interrupt_then_resume_equals_uninterrupted(tmp_path: Path, fixture_set: tuple[Path, Path]) -> None:
    data, model = fixture_set
    refs = list_samples(data)
    ref_out = tmp_path / "ref.h5"
    prepare_cache(refs, ref_out, model, PrepareOptions(crop_from="landmarks", flush_every=3))
    out = tmp_path / "c.h5"
    calls = {"n": 0}

    def interrupt(done: int, total: int, skipped: int) -> None:
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt

    from facerecon.data.cache import PrepareInterrupted

    with pytest.raises(PrepareInterrupted, match="run the same command again"):
        prepare_cache(refs, out, model, PrepareOptions(crop_from="landmarks", flush_every=3), on_progress=interrupt)
    assert partial_path(out).exists() and not out.exists()
    with h5py.File(partial_path(out), "r") as f:  # closed cleanly: readable, marker covers all 7
        assert f["_progress"][0] == 7
    s = prepare_cache(refs, out, model, PrepareOptions(crop_from="landmarks", flush_every=3))
    assert s.resumed_from == 7
    _assert_same_file(ref_out, out)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "facerecon", "--quiet", "prepare", *args]


@pytest.mark.slow
def test_kill9_mid_run_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    data, model = make_fixture_dataset(tmp_path, n=40)
    common = ["--face-model", str(model), "--crop-from", "landmarks", "--flush-every", "2"]
    ref_out, out = tmp_path / "ref.h5", tmp_path / "c.h5"
    env = dict(os.environ)
    subprocess.run(_cli(str(data), str(ref_out), *common), check=True, env=env, cwd=ROOT, capture_output=True)
    proc = subprocess.Popen(_cli(str(data), str(out), *common), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = partial_path(out)
    marker = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if part.exists():
            try:
                with h5py.File(part, "r", libver="latest", swmr=True) as f:
                    marker = int(f["_progress"][0])
            except (OSError, KeyError):
                pass
            if marker >= 8:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "prepare finished before it could be killed; make the fixture larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert part.exists() and not out.exists() and 8 <= marker < 40
    r = subprocess.run(_cli(str(data), str(out), *common), env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not part.exists()
    _assert_same_file(ref_out, out)


def test_cli_convert_face_model_and_prepare(tmp_path: Path, fixture_set: tuple[Path, Path]) -> None:
    from typer.testing import CliRunner

    from facerecon.cli import app
    from facerecon.data.face_model import load_face_model

    data, model = fixture_set
    r = CliRunner().invoke(app, ["prepare", "--face-model", str(model), "--convert-face-model", str(tmp_path / "m.npz")])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(load_face_model(tmp_path / "m.npz").mean, load_face_model(model).mean)
    r = CliRunner().invoke(app, ["--quiet", "prepare", str(data), str(tmp_path / "c.h5"), "-m", str(tmp_path / "m.npz"), "--crop-from", "landmarks", "--limit", "4"])
    assert r.exit_code == 0, r.output
    assert "4 samples" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["prepare", str(tmp_path / "nowhere"), str(tmp_path / "d.h5")])
    assert r.exit_code == 2


@pytest.mark.slow
def test_workers_give_the_same_file(tmp_path: Path, fixture_set: tuple[Path, Path]) -> None:
    data, model = fixture_set
    refs = list_samples(data)
    prepare_cache(refs, tmp_path / "a.h5", model, PrepareOptions(crop_from="landmarks"))
    prepare_cache(refs, tmp_path / "b.h5", model, PrepareOptions(crop_from="landmarks", workers=2))
    _assert_same_file(tmp_path / "a.h5", tmp_path / "b.h5")


@pytest.mark.slow
@pytest.mark.shared_data
def test_prepare_aflw_subset_with_mtcnn_end_to_end(tmp_path: Path, shared_data: Path) -> None:
    from facerecon.data.dataset import FaceCacheDataset, collate_faces

    refs = list_samples(shared_data / "aflw2000-3d")[:10]
    out = tmp_path / "aflw10.h5"
    s = prepare_cache(refs, out, shared_data / "bfm-mean", PrepareOptions(crop_from="detector"), fmt="aflw2000")
    assert s.n_written == 10 and not s.skipped
    with h5py.File(out, "r") as f:
        fb = f["fallback"][:].astype(bool)
        prob = f["probabilities"][:]
        lm = f["landmarks"][:]
        assert (prob[~fb] >= 0.9).all() and np.isnan(prob[fb]).all() and fb.sum() <= 3
        # the MTCNN crop holds the annotated face: the landmarks are inside the crop
        assert (np.abs(lm[~fb][:, :, :2]) < 1.0).mean() > 0.99
        assert f.attrs["crop_from"] == "detector"
    ds = FaceCacheDataset(out, split="all")
    batch = collate_faces([ds[0], ds[1]])
    assert batch["points"].shape == (2, 18000, 3) and batch["lengths"].tolist() == [18000, 18000]


@pytest.mark.parametrize("second_chance", [True, False])
def test_second_chance_face_is_used_before_the_average_crop(fixture_set: tuple[Path, Path], second_chance: bool) -> None:
    """A photo whose full MTCNN search finds no face: with ``second_chance`` (the default, as
    ``predict``) the detector's second chance is asked next and its face makes the crop, with its
    five points; without it the sample goes to the average crop."""
    from facerecon.crop import FaceCrop, square_box
    from facerecon.data.face_model import load_face_model
    from facerecon.data.samples import SampleContext, compute_sample

    data, model_dir = fixture_set
    ref = list_samples(data, "aflw2000")[0]
    five = np.array([[30, 35], [66, 35], [48, 50], [34, 68], [62, 68]], np.float32)
    detection = np.array([10.0, 8.0, 86.0, 90.0], np.float32)
    face = FaceCrop(square_box(detection), 0.95, five, detection, False)

    class Detector:  # the full search finds nothing; the second chance finds the annotated face
        def __init__(self) -> None:
            self.calls: list[str] = []

        def detect(self, image: np.ndarray) -> list:
            self.calls.append("full")
            return []

        def detect_second_chance(self, image: np.ndarray) -> list:
            self.calls.append("second")
            return [face]

        def level(self, image: np.ndarray, found: FaceCrop) -> FaceCrop:  # an upright face: as found
            self.calls.append("level")
            return found

    detector = Detector()
    ctx = SampleContext(model=load_face_model(model_dir), options=PrepareOptions(second_chance=second_chance), detector=detector)
    result = compute_sample(0, ref, ctx)
    assert result.error is None
    if not second_chance:
        assert result.needs_fallback and detector.calls == ["full"]
        return
    assert not result.needs_fallback and detector.calls == ["full", "second", "level"]
    row = result.row
    assert row["fallback"] == 0 and row["probabilities"] == pytest.approx(0.95)
    np.testing.assert_allclose(row["boxes"], face.box)
    x0, y0, side = face.box  # the five points in crop units: [-1, 1] over the box, by hand
    expect = (five - [x0 + side / 2, y0 + side / 2]) / (side / 2)
    np.testing.assert_allclose(row["landmarks5"], expect, atol=1e-5)


@pytest.mark.parametrize("second_chance", [True, False])
def test_a_doubtful_full_search_face_is_rechecked_as_predict_does(fixture_set: tuple[Path, Path], second_chance: bool) -> None:
    """The full search finds the annotated face at p 0.95: with ``second_chance`` the detector's
    recheck on turned copies is asked (``predict``'s policy for a doubtful find) and the face it
    returns, with its own five points, makes the crop, before the levelling; without it the face
    is taken as found. The last chances are not asked for a face already found."""
    from facerecon.crop import FaceCrop, square_box
    from facerecon.data.face_model import load_face_model
    from facerecon.data.samples import SampleContext, compute_sample

    data, model_dir = fixture_set
    ref = list_samples(data, "aflw2000")[0]
    five = np.array([[30, 35], [66, 35], [48, 50], [34, 68], [62, 68]], np.float32)
    turned_five = np.array([[31, 40], [64, 30], [49, 50], [38, 70], [63, 62]], np.float32)
    detection = np.array([10.0, 8.0, 86.0, 90.0], np.float32)
    face = FaceCrop(square_box(detection), 0.95, five, detection, False)
    turned = FaceCrop(square_box(detection + 1.0), 0.999, turned_five, detection + 1.0, False)

    class Detector:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def detect(self, image: np.ndarray) -> list:
            self.calls.append("full")
            return [face]

        def detect_second_chance(self, image: np.ndarray) -> list:
            self.calls.append("second")
            return []

        def recheck(self, image: np.ndarray, found: FaceCrop) -> FaceCrop:
            self.calls.append("recheck")
            assert found is face
            return turned

        def level(self, image: np.ndarray, found: FaceCrop) -> FaceCrop:
            self.calls.append("level")
            return found

    detector = Detector()
    ctx = SampleContext(model=load_face_model(model_dir), options=PrepareOptions(second_chance=second_chance), detector=detector)
    result = compute_sample(0, ref, ctx)
    assert result.error is None and not result.needs_fallback
    taken = turned if second_chance else face
    assert detector.calls == (["full", "recheck", "level"] if second_chance else ["full", "level"])
    row = result.row
    assert row["probabilities"] == pytest.approx(taken.probability)
    np.testing.assert_allclose(row["boxes"], taken.box)
    x0, y0, side = taken.box
    expect = (taken.landmarks5 - [x0 + side / 2, y0 + side / 2]) / (side / 2)
    np.testing.assert_allclose(row["landmarks5"], expect, atol=1e-5)


def test_the_annotated_face_is_the_detection_that_overlaps_its_landmarks() -> None:
    """``prepare`` takes the detection whose 1.1x square crop box overlaps the landmarks' one
    most, and none below IoU 0.3 (a face part, a face beside it). Hand-worked boxes: landmarks
    spanning x, y in [100, 200] give the square (95, 95, 110)."""
    from facerecon.crop import FaceCrop
    from facerecon.data.samples import pick_face

    lm = np.array([[100.0, 100.0], [200.0, 200.0], [150.0, 120.0]])

    def face(x0: float, y0: float, side: float) -> FaceCrop:
        return FaceCrop((x0, y0, side), 0.99, None, np.array([x0, y0, x0 + side, y0 + side], np.float32), False)

    same, shifted, part = face(95, 95, 110), face(150, 95, 110), face(180, 180, 30)
    # IoU(same) = 1; IoU(shifted) = 55 * 110 / (2 * 110 * 110 - 55 * 110) = 1/3; IoU(part) = 625 / 12100
    assert pick_face([shifted, same], lm) is same
    assert pick_face([shifted], lm) is shifted
    assert pick_face([part], lm) is None
    assert pick_face([part, shifted], lm) is shifted
    assert pick_face([part], None) is part  # no landmarks: the most confident
