"""``facerecon predict clip.mp4 -o out/``: per-frame meshes, one JSONL, tracking that skips most
detections, and the camera's one-line error. The clips are made here with cv2.VideoWriter: a pan
and zoom over a shared photo, and over the bundled public-domain astronaut (no shared data
needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from facerecon.cli import app

cv2 = pytest.importorskip("cv2")
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "facerecon" / "assets" / "astronaut.png"


def _load_rgb(path: Path) -> np.ndarray:
    from facerecon.imageio import load_image

    return load_image(path)


def make_clip(
    photo: np.ndarray, path: Path, focus: tuple[float, float], frames: int = 24, size: tuple[int, int] = (320, 240)
) -> list[tuple[float, float, float]]:
    """A pan and zoom over ``photo`` about ``focus`` (photo px, the face): frame ``t`` shows the
    photo's region from ``(x0, y0)`` at ``k`` photo px per frame px (returned per frame), scaled to
    ``size``. Written as MJPG AVI (always available in OpenCV)."""
    h, w = photo.shape[:2]
    out_w, out_h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    regions = []
    for t in range(frames):
        a = t / max(frames - 1, 1)
        side = min(w, h / (out_h / out_w)) * (0.95 - 0.25 * a)  # zoom in by ~25 %
        rw, rh = side, side * out_h / out_w
        x0 = float(np.clip(focus[0] - rw * (0.65 - 0.3 * a), 0, w - rw))  # the face moves left to right
        y0 = float(np.clip(focus[1] - rh / 2, 0, h - rh))
        m = np.array([[out_w / rw, 0, -x0 * out_w / rw], [0, out_h / rh, -y0 * out_h / rh]])
        frame = cv2.warpAffine(photo, m, size, flags=cv2.INTER_AREA)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        regions.append((x0, y0, rw / out_w))
    writer.release()
    return regions


def _run_clip(tiny_run: dict, clip: Path, out: Path, *extra: str):
    return runner.invoke(app, ["-q", "predict", str(clip), "-o", str(out), "--checkpoint", str(tiny_run["checkpoint"]), *extra])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def _focus(photo: np.ndarray) -> tuple[tuple[float, float], tuple[float, float, float]]:
    """The face's centre in the photo and its crop box (MTCNN on the photo itself)."""
    from facerecon.detect import FaceDetector

    (face,) = FaceDetector().crop(photo)
    x0, y0, side = face.box
    return (x0 + side / 2, y0 + side / 2), face.box


def _check_against_photo_detection(records: list[dict], regions, photo_box) -> None:
    """Each frame's box is the photo's face box seen through that frame's pan and zoom."""
    x0p, y0p, sidep = photo_box
    for rec in records:
        rx, ry, k = regions[rec["frame"]]
        expected = ((x0p - rx) / k, (y0p - ry) / k, sidep / k)
        x0, y0, side = rec["box"]
        assert abs(side / expected[2] - 1) < 0.15, (rec["frame"], rec["box"], expected)
        centre = np.array([x0 + side / 2, y0 + side / 2])
        centre_expected = np.array([expected[0] + expected[2] / 2, expected[1] + expected[2] / 2])
        assert np.linalg.norm(centre - centre_expected) < 0.1 * expected[2], (rec["frame"], rec["box"], expected)


def test_video_of_the_astronaut(tiny_run: dict, tmp_path: Path) -> None:
    photo = _load_rgb(ASTRONAUT)
    clip = tmp_path / "astronaut.avi"
    focus, photo_box = _focus(photo)
    regions = make_clip(photo, clip, focus, frames=16)
    out = tmp_path / "out"
    result = _run_clip(tiny_run, clip, out)
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert [r["frame"] for r in records] == list(range(16))
    meshes = sorted(out.glob("frame_*.obj"))
    assert [m.name for m in meshes] == [f"frame_{i:06d}.obj" for i in range(16)]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".json") == []  # the records are in frames.jsonl
    mesh = trimesh.load(meshes[5], process=False, force="mesh")
    assert mesh.vertices.shape == (7001, 3) and np.isfinite(mesh.vertices).all()
    for rec in records:
        assert not rec["fallback"] and rec["probability"] >= 0.9
        assert np.asarray(rec["landmarks5"]).shape == (5, 2) and np.asarray(rec["landmarks68"]).shape == (68, 3)
        assert set(rec["pose_degrees"]) == {"yaw", "pitch", "roll"}
        assert (out / rec["mesh"]).is_file()
    # tracking: the first frame is detected, most of the others are not
    assert records[0]["tracked"] is False
    assert sum(r["tracked"] for r in records) >= 12
    # boxes follow the pan and zoom: compare with MTCNN on the photo itself
    _check_against_photo_detection(records, regions, photo_box)
    assert not list(out.glob(".*tmp*"))


def test_video_every_nth_frame_of_a_shared_photo(tiny_run: dict, tmp_path: Path, shared_data: Path) -> None:
    path = shared_data / "photos" / "JianzhuGuo.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    photo = _load_rgb(path)
    clip = tmp_path / "guo.avi"
    focus, photo_box = _focus(photo)
    regions = make_clip(photo, clip, focus, frames=20, size=(240, 320))
    out = tmp_path / "out"
    result = _run_clip(tiny_run, clip, out, "--every", "3", "--format", "ply")
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert [r["frame"] for r in records] == list(range(0, 20, 3))
    assert sorted(p.name for p in out.glob("frame_*.ply")) == [f"frame_{i:06d}.ply" for i in range(0, 20, 3)]
    _check_against_photo_detection(records, regions, photo_box)


def test_video_errors_are_one_line(tiny_run: dict, tmp_path: Path) -> None:
    not_video = tmp_path / "clip.mp4"
    not_video.write_bytes(b"not a video at all")
    result = _run_clip(tiny_run, not_video, tmp_path / "out")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "clip.mp4" in lines[0], result.output
    # in a real process too, where FFmpeg writes to the process's stderr itself
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    proc = subprocess.run(
        [sys.executable, "-m", "facerecon", "predict", str(not_video), "-o", str(tmp_path / "out2"), "--checkpoint", str(tiny_run["checkpoint"])],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "clip.mp4" in lines[0], proc.stdout + proc.stderr
    clip = tmp_path / "ok.avi"
    make_clip(_load_rgb(ASTRONAUT), clip, (256.0, 128.0), frames=2)
    result = _run_clip(tiny_run, clip, tmp_path / "x.obj")
    assert result.exit_code == 2 and "folder" in result.output, result.output


def test_camera_missing_is_one_line(tmp_path: Path) -> None:
    """Where no camera exists: one red line, exit 2 (a machine with /dev/video9 is not expected)."""
    if Path("/dev/video9").exists():
        pytest.skip("this machine has a /dev/video9")
    out = subprocess.run(
        [sys.executable, "-m", "facerecon", "predict", "--camera", "9", "-o", str(tmp_path / "cam")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and "camera 9" in lines[0], out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def _faceless_clip(path: Path, frames: int = 12) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    assert writer.isOpened()
    for t in range(frames):
        writer.write(np.full((120, 160, 3), 60 + 5 * t, np.uint8))  # flat grey: no face for MTCNN
    writer.release()
    return path


def test_require_face_on_a_video_without_a_face(tiny_run: dict, tmp_path: Path) -> None:
    """--require-face applies to videos too: no face in any frame is an error (exit 2, one line,
    no mesh); without the flag the meshes from the average crop come with one warning line."""
    clip = _faceless_clip(tmp_path / "grey.avi")
    result = _run_clip(tiny_run, clip, tmp_path / "strict", "--require-face")
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "no face found in any of its 12 frame(s) (--require-face)" in lines[0], result.output
    assert not list((tmp_path / "strict").glob("frame_*")) and not (tmp_path / "strict" / "frames.jsonl").exists()
    result = _run_clip(tiny_run, clip, tmp_path / "lenient")
    assert result.exit_code == 0, result.output
    assert "warning: 12 of 12 frame(s) without a detected face use the average crop" in " ".join(result.output.split())
    assert len(list((tmp_path / "lenient").glob("frame_*.obj"))) == 12
