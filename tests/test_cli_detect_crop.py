"""``facerecon detect-crop`` through typer's CliRunner."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facerecon.cli import app

pytest.importorskip("facenet_pytorch")
runner = CliRunner()


def _records(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / "crops.jsonl").read_text().splitlines()]


def _noise(path: Path, h: int = 120, w: int = 160, mode: str = "RGB") -> None:
    """A face-free picture (smooth noise)."""
    rng = np.random.default_rng(len(path.name))
    img = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
    img.convert(mode).save(path)


def test_no_input_matched_is_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["detect-crop", str(tmp_path / "*.jpg"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no images found" in lines[0]
    assert not (tmp_path / "out").exists()


def test_fallbacks_and_unreadable_without_shared_data(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _noise(src / "a.png")
    _noise(src / "gray.png", mode="L")
    _noise(src / "rgba.png", h=90, mode="RGBA")
    (src / "notes.jpg").write_text("not an image")
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect-crop", str(src), "-o", str(out), "--size", "64", "--format", "png"])
    assert result.exit_code == 1, result.output
    assert "notes.jpg" in result.output and "not an image" in result.output
    recs = _records(out)
    assert [r["output"] for r in recs] == ["a.png", "gray.png", "rgba.png"]
    assert all(r["fallback"] and r["probability"] is None and r["landmarks5"] is None for r in recs)
    rgba = next(r for r in recs if r["output"] == "rgba.png")
    assert rgba["image_size"] == [160, 90] and rgba["box"] == pytest.approx([35.0, 0.0, 90.0])
    for r in recs:
        assert Image.open(out / r["output"]).size == (64, 64)

    # an explicit fallback box, CSV records, a glob the shell did not expand
    result = runner.invoke(
        app,
        ["detect-crop", str(src / "a.*"), "-o", str(tmp_path / "csv"), "--csv", "--fallback-box", "0.25", "0.5", "0.5"],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "csv" / "crops.csv").read_text())))
    assert len(rows) == 1 and rows[0]["fallback"] == "1" and rows[0]["output"] == "a.jpg"
    # 160 x 120 image: centre (40, 60), side 0.5 * 120 = 60
    assert [float(rows[0][k]) for k in ("box_x0", "box_y0", "box_side")] == pytest.approx([10.0, 30.0, 60.0])


@pytest.fixture
def photo_dir(shared_data: Path, tmp_path: Path) -> Path:
    photos = shared_data / "photos"
    if not photos.is_dir():
        pytest.skip(f"{photos} not found")
    src = tmp_path / "in"
    src.mkdir()
    for name in ["aflw-test.jpg", "grass.jpg", "trump_hillary.jpg"]:
        shutil.copy(photos / name, src / name)
    data = (photos / "JianzhuGuo.jpg").read_bytes()
    (src / "broken.jpg").write_bytes(data[: len(data) // 3])  # truncated JPEG
    return src


def test_folder_with_good_and_corrupt_files(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect-crop", str(photo_dir), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "broken.jpg" in result.output and "truncated" in result.output.lower()
    assert "could not be read" in result.output
    recs = {Path(r["source"]).name: r for r in _records(out)}
    assert sorted(recs) == ["aflw-test.jpg", "grass.jpg", "trump_hillary.jpg"]
    assert recs["grass.jpg"]["fallback"] and not recs["aflw-test.jpg"]["fallback"]
    assert recs["trump_hillary.jpg"]["probability"] > 0.99
    assert np.asarray(recs["aflw-test.jpg"]["landmarks5"]).shape == (5, 2)
    for r in recs.values():
        crop = Image.open(out / r["output"])
        assert crop.size == (224, 224) and crop.mode == "RGB"
    assert sorted(p.name for p in out.iterdir()) == ["aflw-test.jpg", "crops.jsonl", "grass.jpg", "trump_hillary.jpg"]


def test_all_faces_and_rerun_replaces_records(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    target = str(photo_dir / "trump_hillary.jpg")
    result = runner.invoke(app, ["detect-crop", target, "-o", str(out), "--all-faces"])
    assert result.exit_code == 0, result.output
    recs = _records(out)
    assert [r["output"] for r in recs] == ["trump_hillary_0.jpg", "trump_hillary_1.jpg"]
    assert recs[0]["probability"] >= recs[1]["probability"] >= 0.9
    # the two crops are different people: their boxes are far apart
    assert abs(recs[0]["box"][0] - recs[1]["box"][0]) > 300

    # the same command again: the same records, no duplicates
    assert runner.invoke(app, ["detect-crop", target, "-o", str(out), "--all-faces"]).exit_code == 0
    assert _records(out) == recs
    # without --all-faces: the image's records and crops are replaced, stale crops removed
    assert runner.invoke(app, ["detect-crop", target, "-o", str(out)]).exit_code == 0
    (rec,) = _records(out)
    assert rec["output"] == "trump_hillary.jpg" and rec["probability"] == pytest.approx(recs[0]["probability"])
    assert sorted(p.name for p in out.iterdir()) == ["crops.jsonl", "trump_hillary.jpg"]
    # another image into the same folder: the earlier record is kept
    assert runner.invoke(app, ["detect-crop", str(photo_dir / "grass.jpg"), "-o", str(out)]).exit_code == 0
    assert [r["output"] for r in _records(out)] == ["grass.jpg", "trump_hillary.jpg"]


def test_fallback_mean_uses_the_runs_average_face_box(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    inputs = [str(photo_dir / n) for n in ("aflw-test.jpg", "grass.jpg", "trump_hillary.jpg")]
    result = runner.invoke(app, ["detect-crop", *inputs, "-o", str(out), "--fallback-mean"])
    assert result.exit_code == 0, result.output
    recs = {Path(r["source"]).name: r for r in _records(out)}
    faces = [recs["aflw-test.jpg"], recs["trump_hillary.jpg"]]

    def relative(r: dict) -> np.ndarray:  # (cx / W, cy / H, side / min(W, H)), by hand
        (x0, y0, side), (w, h) = r["box"], r["image_size"]
        return np.array([(x0 + side / 2) / w, (y0 + side / 2) / h, side / min(w, h)])

    mean = (relative(faces[0]) + relative(faces[1])) / 2
    grass = recs["grass.jpg"]
    assert grass["fallback"]
    np.testing.assert_allclose(relative(grass), mean, rtol=1e-6)
    assert (out / "grass.jpg").is_file()


def test_min_face_leaves_out_the_smaller_faces(tmp_path: Path) -> None:
    """A large and a ~16-px face on one photo: --all-faces crops the large one only (faces under
    32 px are not searched for by default); --min-face 12 crops both, the large one with the same
    box."""
    astronaut = Image.open(Path(__file__).resolve().parents[1] / "facerecon" / "assets" / "astronaut.png").convert("RGB")
    canvas = Image.new("RGB", (1000, 700), (100, 100, 100))
    canvas.paste(astronaut.resize((400, 400), Image.Resampling.BOX), (80, 100))
    canvas.paste(astronaut.resize((100, 100), Image.Resampling.BOX), (700, 400))
    photo = tmp_path / "two.png"
    canvas.save(photo)
    boxes = {}
    for args in ([], ["--min-face", "12"]):
        out = tmp_path / f"out{len(args)}"
        result = runner.invoke(app, ["detect-crop", str(photo), "-o", str(out), "--all-faces", *args])
        assert result.exit_code == 0, result.output
        boxes[len(args)] = [r["box"] for r in _records(out)]
    assert len(boxes[0]) == 1 and len(boxes[2]) == 2
    assert boxes[0][0] in boxes[2] and boxes[0][0][2] > 60
    result = runner.invoke(app, ["detect-crop", str(photo), "-o", str(tmp_path / "bad"), "--min-face", "5"])
    assert result.exit_code != 0 and "--min-face" in result.output
