"""One home each for writing a picture and for Open3D rendering.

``facerecon.imageio.save_image`` is the one image writer (the overlay's ``save_image`` is it,
limited to .png / .jpg); ``facerecon.mesh.preview.render_offscreen`` / ``run_window`` are the one
Open3D render path, used by the template preview and by ``facerecon view``. Files are read back
with OpenCV, not with the Pillow that wrote them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facerecon import imageio, overlay
from facerecon.errors import DependencyError, InputError


def _picture(h: int = 24, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 7 % 256, y * 11 % 256, (x * y) % 256], axis=-1).astype(np.uint8)


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"OpenCV cannot read {path}"
    return bgr[..., ::-1]


# --------------------------------------------------------------------------- save_image
@pytest.mark.parametrize("writer", ["imageio", "overlay"])
def test_png_and_jpg_read_back_with_opencv(tmp_path: Path, writer: str) -> None:
    img = _picture()
    save = imageio.save_image if writer == "imageio" else overlay.save_image
    save(tmp_path / "a" / "x.png", img)
    np.testing.assert_array_equal(_read_rgb(tmp_path / "a" / "x.png"), img)
    save(tmp_path / "x.JPEG", img)
    assert np.abs(_read_rgb(tmp_path / "x.JPEG").astype(int) - img).mean() < 12
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_the_overlay_writer_is_the_imageio_writer_limited_to_png_jpg(tmp_path: Path) -> None:
    img = _picture()
    imageio.save_image(tmp_path / "x.bmp", img)  # any format Pillow writes
    np.testing.assert_array_equal(_read_rgb(tmp_path / "x.bmp"), img)
    for save in (overlay.save_image, lambda p, i: imageio.save_image(p, i, suffixes=imageio.PNG_JPG)):
        with pytest.raises(InputError, match=r"x\.bmp: unknown image format '\.bmp'; use \.png or \.jpg"):
            save(tmp_path / "x.bmp", img)
        with pytest.raises(InputError, match=r"'\(no extension\)'; use \.png or \.jpg"):
            save(tmp_path / "noext", img)
    with pytest.raises(InputError, match=r"unknown image format '\.xyz' \(use \.jpg or \.png\)"):
        imageio.save_image(tmp_path / "x.xyz", img)


def test_save_image_errors_are_input_errors(tmp_path: Path) -> None:
    img = _picture()
    (tmp_path / "dir.png").mkdir()
    for save in (imageio.save_image, overlay.save_image):
        with pytest.raises(InputError, match="is a folder; give a file name ending in"):
            save(tmp_path / "dir.png", img)
        with pytest.raises(InputError, match=r"\(H, W, 3\) uint8"):
            save(tmp_path / "bad.png", img.astype(np.float32))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError):
        imageio.save_image(blocker / "x.png", img)
    assert imageio.image_format(tmp_path / "y.jpg", imageio.PNG_JPG) == "JPEG"


# --------------------------------------------------------------------------- Open3D
class _FakeVisualizer:
    """Records the calls of the legacy ``Visualizer`` protocol; ``ok`` is what create_window says."""

    ok = True
    calls: list[str] = []

    def create_window(self, **kw: object) -> bool:
        self.calls.append(f"create visible={kw.get('visible', True)}")
        return self.ok

    def poll_events(self) -> None:
        self.calls.append("poll")

    def update_renderer(self) -> None:
        self.calls.append("update")

    def capture_screen_float_buffer(self, do_render: bool) -> np.ndarray:
        self.calls.append("capture")
        return np.full((4, 6, 3), 0.5, dtype=np.float32)

    def run(self) -> None:
        self.calls.append("run")

    def destroy_window(self) -> None:
        self.calls.append("destroy")


@pytest.fixture
def fake_open3d(monkeypatch: pytest.MonkeyPatch) -> type[_FakeVisualizer]:
    from types import SimpleNamespace

    from facerecon.mesh import preview

    _FakeVisualizer.calls = []
    _FakeVisualizer.ok = True
    fake = SimpleNamespace(visualization=SimpleNamespace(Visualizer=_FakeVisualizer))
    monkeypatch.setattr(preview, "open3d_module", lambda: fake)
    return _FakeVisualizer


def test_render_offscreen_and_window_protocol(fake_open3d: type[_FakeVisualizer]) -> None:
    from facerecon.mesh.preview import render_offscreen, run_window

    seen = []
    out = render_offscreen(lambda vis: seen.append(vis), 6, 4)
    assert out.shape == (4, 6, 3) and out.dtype == np.float32 and len(seen) == 1
    assert fake_open3d.calls == ["create visible=False", "poll", "update", "capture", "destroy"]
    fake_open3d.calls = []
    run_window(lambda vis: None, 6, 4, "t")
    assert fake_open3d.calls == ["create visible=True", "run", "destroy"]
    fake_open3d.ok = False
    with pytest.raises(DependencyError, match="offscreen render context"):
        render_offscreen(lambda vis: None, 6, 4)
    with pytest.raises(DependencyError, match="could not open a window"):
        run_window(lambda vis: None, 6, 4, "t")


def test_viewer_and_preview_render_through_the_one_path(fake_open3d: type[_FakeVisualizer], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from facerecon import viewer
    from facerecon.mesh import preview

    populated = []
    monkeypatch.setattr(viewer, "_populate", lambda vis, *a: populated.append("scene"))
    monkeypatch.setattr(preview, "_populate", lambda vis, level: populated.append("template"))
    image = viewer.render_scene(object(), width=16, height=16)
    np.testing.assert_array_equal(image, np.full((4, 6, 3), 128, np.uint8))  # round(0.5 * 255)
    buffer = preview.render_png(object(), tmp_path / "t.png")
    np.testing.assert_array_equal(_read_rgb(tmp_path / "t.png"), np.full((4, 6, 3), 127, np.uint8))  # truncated
    assert buffer.dtype == np.float32 and populated == ["scene", "template"]
    assert fake_open3d.calls.count("capture") == 2


@pytest.fixture(scope="module")
def offscreen() -> None:
    """Skip when Open3D cannot create an offscreen (EGL) context on this machine."""
    try:
        from facerecon.mesh.preview import open3d_module

        o3d = open3d_module()
    except DependencyError as exc:
        pytest.skip(str(exc))
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(width=64, height=64, visible=False):
        pytest.skip("Open3D cannot create an offscreen render context here (no EGL/Mesa)")
    vis.destroy_window()


def test_template_png_is_the_returned_render(offscreen: None, tmp_path: Path) -> None:
    from facerecon.mesh import load_template
    from facerecon.mesh.preview import render_png

    level = load_template("hemisphere").levels[0]
    image = render_png(level, tmp_path / "shot.png", width=120, height=90)
    assert image.shape == (90, 120, 3)
    written = _read_rgb(tmp_path / "shot.png")
    np.testing.assert_array_equal(written, (np.clip(image, 0, 1) * 255).astype(np.uint8))
    assert (written < 200).any() and (written == 255).any()  # a drawn mesh on a white background


_RENDER_THEN_TRAIN = r"""
import torch
from facerecon.mesh.preview import open3d_module
o3d = open3d_module()
vis = o3d.visualization.Visualizer()
if not vis.create_window(width=64, height=64, visible=False):
    raise SystemExit(3)
vis.destroy_window()
p = torch.nn.Parameter(torch.zeros(3))
opt = torch.optim.Adam([p], lr=1e-3)
p.sum().backward()
opt.step()
print("stepped")
"""


def test_an_optimizer_step_after_an_offscreen_render(tmp_path: Path) -> None:
    """An Open3D offscreen context and then a first optimizer step in one process (a test run, a
    notebook): the step must not crash the process (a segmentation fault when torch imports its
    compiler stack after Open3D); ``open3d_module`` imports it first when torch is loaded."""
    import subprocess
    import sys

    script = tmp_path / "render_then_train.py"
    script.write_text(_RENDER_THEN_TRAIN)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    if r.returncode == 3:
        pytest.skip("Open3D cannot create an offscreen render context here (no EGL/Mesa)")
    assert r.returncode == 0 and "stepped" in r.stdout, (r.returncode, r.stderr[-2000:])
