"""``facerecon predict``'s optional outputs end to end with the shipped model: a textured mesh, the
UV texture, depth / PNCC / normal maps, dense points in the record, the dense overlay; folders;
and bad options (one line, exit 2, before any model loads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facerecon.cli import app
from testutils import synthetic_photo

pytest.importorskip("moderngl")
runner = CliRunner()
ASSET = Path(__file__).resolve().parents[1] / "facerecon" / "assets" / "astronaut.png"
V = 7001


def _default_model() -> None:
    from facerecon.engine.predict import default_checkpoint

    if default_checkpoint() is None:
        pytest.skip("this installation ships no default model")


def _obj_vertices(path: Path) -> np.ndarray:
    rows = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
    return np.asarray(rows, dtype=np.float64)


def test_single_photo_with_every_output(tmp_path: Path) -> None:
    _default_model()
    trimesh = pytest.importorskip("trimesh")
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(ASSET.read_bytes())
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "-q", "predict", str(photo), "-o", str(out / "face.obj"), "--texture", "--uv-texture", str(out / "uv.png"),
        "--maps", "depth,pncc,normals", "--dense-points", "--overlay", str(out / "overlay.png"), "--overlay-mode", "dense",
    ])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([
        "face.obj", "face.mtl", "face.texture.png", "face.json", "uv.png", "face.depth.png", "face.pncc.png",
        "face.normals.png", "overlay.png",
    ])
    rec = json.loads((out / "face.json").read_text())
    assert rec["maps"] == {"depth": "face.depth.png", "pncc": "face.pncc.png", "normals": "face.normals.png"}
    assert rec["texture"] == "face.texture.png" and rec["uv_texture"] == "uv.png"
    vertices = _obj_vertices(out / "face.obj")
    assert vertices.shape == (V, 3)
    dense = np.asarray(rec["dense_points_px"])
    np.testing.assert_allclose(dense, vertices[:, :2], atol=0.006)
    textured = trimesh.load(out / "face.obj", process=False)
    assert textured.visual.uv.min() >= 0 and textured.visual.uv.max() <= 1
    # the depth map decodes to the vertices' own depth under them (independent: OpenCV reads the PNG)
    import cv2

    depth = cv2.imread(str(out / "face.depth.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (512, 512)
    z = rec["depth_offset_px"] - depth.astype(np.float64) * rec["depth_scale_px"]
    cols, rows = np.floor(vertices[:, 0]).astype(int), np.floor(vertices[:, 1]).astype(int)
    under = depth[rows, cols] > 0
    assert under.mean() > 0.9
    diff = vertices[under, 2] - z[rows[under], cols[under]]
    assert np.median(np.abs(diff)) < 0.5 and (np.abs(diff) < 3.0).mean() > 0.9  # steep sides differ across a pixel
    pncc = np.asarray(Image.open(out / "face.pncc.png"))
    assert ((pncc.max(axis=2) > 0) <= (depth > 0)).all() and (pncc[depth > 0].max(axis=1) > 0).mean() > 0.99
    uv = np.asarray(Image.open(out / "uv.png"))
    assert uv.shape == (256, 256, 4) and (uv[..., 3] == 255).mean() > 0.3


def test_folder_with_glb_textures_and_uv_folder(tmp_path: Path) -> None:
    _default_model()
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        (photos / name).write_bytes(ASSET.read_bytes())
    out, uvs = tmp_path / "out", tmp_path / "uv"
    result = runner.invoke(app, [
        "-q", "predict", str(photos), "-o", str(out), "--format", "glb", "--texture", "--uv-texture", str(uvs),
        "--maps", "depth",
    ])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.depth.png", "a.glb", "a.json", "b.depth.png", "b.glb", "b.json"]
    assert sorted(p.name for p in uvs.iterdir()) == ["a.png", "b.png"]
    trimesh = pytest.importorskip("trimesh")
    (geom,) = trimesh.load(out / "a.glb").geometry.values()
    assert geom.visual.material.baseColorTexture is not None


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--maps", "depth,colour"], "colour"),
        (["--texture"], ".stl"),
        (["--uv-texture", "uv.jpg"], "uv.jpg"),
        (["--overlay-mode", "sparkly"], "sparkly"),
    ],
)
def test_bad_output_options_are_one_line(tmp_path: Path, extra: list[str], needle: str) -> None:
    photo = synthetic_photo(tmp_path / "p.png")
    args = ["-q", "predict", str(photo), "-o", str(tmp_path / "face.stl"), *[str(tmp_path / a) if a.endswith(".jpg") else a for a in extra]]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "face.stl").exists()


def test_video_frames_get_the_same_outputs(tmp_path: Path) -> None:
    """A clip: each frame's mesh textured from that frame, its maps beside it, its UV texture in
    the UV folder, and the files named in its line of frames.jsonl."""
    _default_model()
    cv2 = pytest.importorskip("cv2")
    trimesh = pytest.importorskip("trimesh")
    from facerecon.imageio import load_image
    from test_video import make_clip

    clip = tmp_path / "clip.avi"
    make_clip(load_image(ASSET), clip, focus=(256.0, 230.0), frames=3, size=(320, 240))
    out, uv = tmp_path / "out", tmp_path / "uv"
    result = runner.invoke(app, [
        "-q", "predict", str(clip), "-o", str(out), "--texture", "--maps", "depth", "--uv-texture", str(uv), "--dense-points",
    ])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2]
    capture = cv2.VideoCapture(str(clip))
    for record in records:
        stem = f"frame_{record['frame']:06d}"
        assert record["mesh"] == f"{stem}.obj" and record["texture"] == f"{stem}.texture.png"
        assert record["maps"] == {"depth": f"{stem}.depth.png"} and (out / f"{stem}.depth.png").is_file()
        assert record["uv_texture"] == f"{stem}.png" and (uv / f"{stem}.png").is_file()
        ok, bgr = capture.read()
        frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        mesh = trimesh.load(out / f"{stem}.obj", process=False)
        # the vertices around the nose take the frame's pixels under them: the texture is the frame
        nose = np.asarray(record["landmarks68"])[30, :2]
        near = np.flatnonzero(np.linalg.norm(mesh.vertices[:, :2] - nose, axis=1) < 15)
        texture = np.asarray(mesh.visual.material.image.convert("RGB")).astype(int)
        th, tw = texture.shape[:2]
        u, v = mesh.visual.uv[near].T
        seen = v * th >= 8  # the hidden faces' grey band lies below the photo's region
        rows = th - 1 - np.clip(np.floor(v * th), 0, th - 1).astype(int)  # v runs up from the bottom row
        texels = texture[rows, np.clip(np.floor(u * tw), 0, tw - 1).astype(int)]
        x, y = np.floor(mesh.vertices[near, :2]).T.astype(int)
        diff = np.abs(texels - frame[y, x].astype(int)).max(axis=1)
        assert seen.sum() > 20 and diff[seen].max() <= 2, (seen.sum(), diff[seen].max())
