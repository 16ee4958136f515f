"""facerecon.imageio: every kind of image file becomes (H, W, 3) uint8 RGB, or a clear InputError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerecon.errors import InputError
from facerecon.imageio import expand_image_inputs, image_size, load_image, save_image


def _gradient(h: int = 24, w: int = 32) -> np.ndarray:
    """A deterministic (h, w, 3) uint8 RGB pattern whose orientation is unambiguous."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], axis=-1).astype(np.uint8)


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    gray = _gradient()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (24, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_bilevel_image(tmp_path: Path) -> None:
    bits = (_gradient()[..., 0] > 127).astype(np.uint8) * 255
    Image.fromarray(bits, mode="L").convert("1").save(tmp_path / "b.png")
    out = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[..., 1], bits)


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgb = _gradient()
    alpha = np.zeros((24, 32), np.uint8)
    alpha[:, 8:16] = 128
    alpha[:, 16:] = 255
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    expected = np.rint(rgb.astype(np.float64) * alpha[..., None] / 255.0).astype(np.uint8)
    assert out.shape == (24, 32, 3)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert (out[:, :8] == 0).all()
    np.testing.assert_array_equal(out[:, 16:], rgb[:, 16:])


def test_la_is_composited_on_black(tmp_path: Path) -> None:
    gray = np.full((10, 12), 200, np.uint8)
    alpha = np.full((10, 12), 51, np.uint8)  # 20 %
    Image.fromarray(np.dstack([gray, alpha]), mode="LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert out.shape == (10, 12, 3)
    assert (out == 40).all()  # 200 * 0.2


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    rgb = _gradient()
    Image.fromarray(rgb).quantize(colors=16).save(tmp_path / "p.png")
    reference = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), reference)

    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    pal.save(tmp_path / "t.png", transparency=1)  # index 1 (green) fully transparent
    out = load_image(tmp_path / "t.png")
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])


def test_16bit_grayscale_png_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])  # round(v / 257)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_16bit_rgb_png_is_scaled(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    rgb16 = np.zeros((2, 3, 3), np.uint16)
    rgb16[0, 0] = (65535, 0, 32896)  # 32896 = 128 * 257
    rgb16[1, 2] = (257 * 10, 257 * 200, 65535)
    assert cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # cv2 writes BGR, 16 bit
    out = load_image(tmp_path / "c16.png")
    np.testing.assert_array_equal(out[0, 0], [255, 0, 128])
    np.testing.assert_array_equal(out[1, 2], [10, 200, 255])


def test_float_tiff_in_unit_range(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tiff")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tiff")[0, :, 0], [0, 128, 255])


def test_cmyk_jpeg(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (200, 30, 30)
    rgb[:, 8:] = (20, 40, 220)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (16, 16, 3)
    assert np.abs(out[4, 2].astype(int) - [200, 30, 30]).max() <= 12
    assert np.abs(out[4, 13].astype(int) - [20, 40, 220]).max() <= 12


@pytest.mark.parametrize(
    ("orientation", "transform"),
    [
        (3, lambda a: np.rot90(a, 2)),  # rotated 180
        (6, lambda a: np.rot90(a, -1)),  # the camera was turned: rotate 90 clockwise to view
        (8, lambda a: np.rot90(a, 1)),  # rotate 90 counter-clockwise to view
        (2, lambda a: a[:, ::-1]),  # mirrored
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, transform) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:10, :10] = (255, 0, 0)  # red block top-left as stored
    stored[-10:, -10:] = (0, 0, 255)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "r.jpg")
    expected = transform(stored)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 3  # JPEG noise only
    assert image_size(tmp_path / "r.jpg") == (expected.shape[1], expected.shape[0])  # from the header


def test_image_size_of_a_file_that_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    assert image_size(tmp_path / "x.jpg") is None
    assert image_size(tmp_path / "missing.jpg") is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.jpg: cannot read image \(no such file\)"):
        load_image(tmp_path / "nope.jpg")


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read image"):
        load_image(tmp_path)


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    with pytest.raises(InputError, match=r"notes\.jpg: cannot read image \(not an image"):
        load_image(tmp_path / "notes.jpg")


def test_truncated_jpeg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match=r"cut\.jpg: cannot read image \(.*truncated"):
        load_image(tmp_path / "cut.jpg")


def test_corrupt_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_gradient()).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[60:80] = b"\x00" * 20  # corrupts the image data chunk (its CRC no longer matches)
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"bad\.png: cannot read image"):
        load_image(tmp_path / "bad.png")


def test_100_megapixel_image_loads(tmp_path: Path) -> None:
    """Pillow's default limit would warn at ~89 MP and refuse at ~179 MP; a 100 MP photo must load.

    A bilevel PNG keeps the file tiny; the decoded RGB array is 300 MB.
    """
    import warnings

    Image.new("1", (12500, 8000), 1).save(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        out = load_image(tmp_path / "big.png")
    assert out.shape == (8000, 12500, 3)
    assert out[::997, ::991].min() == 255
    del out


def test_above_the_pixel_limit_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facerecon import imageio

    Image.new("L", (100, 50)).save(tmp_path / "x.png")
    monkeypatch.setattr(imageio, "MAX_PIXELS", 4999)
    with pytest.raises(InputError, match=r"x\.png: cannot read image \(100x50 is above the"):
        load_image(tmp_path / "x.png")


def test_save_image_round_trip(tmp_path: Path) -> None:
    rgb = _gradient()
    save_image(tmp_path / "sub" / "x.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / "x.png")), rgb)
    save_image(tmp_path / "x.jpg", rgb, quality=100)
    assert np.abs(np.asarray(Image.open(tmp_path / "x.jpg")).astype(int) - rgb).mean() < 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "x.jpg"]  # no temporary left
    with pytest.raises(InputError, match="unknown image format"):
        save_image(tmp_path / "x.xyz", rgb)


def test_expand_image_inputs(tmp_path: Path) -> None:
    for name in ["b.jpg", "a.PNG", "notes.txt", ".hidden.jpg", "sub/c.jpg"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")

    def names(paths):
        return [p.relative_to(tmp_path).as_posix() for p in paths]

    assert names(expand_image_inputs([tmp_path])) == ["a.PNG", "b.jpg"]
    assert names(expand_image_inputs([tmp_path], recursive=True)) == ["a.PNG", "b.jpg", "sub/c.jpg"]
    assert names(expand_image_inputs([str(tmp_path / "*.jpg")])) == ["b.jpg"]
    assert names(expand_image_inputs([str(tmp_path / "**" / "*.jpg")])) == ["b.jpg", "sub/c.jpg"]
    # explicit files are kept whatever their suffix; duplicates are dropped
    assert names(expand_image_inputs([tmp_path / "notes.txt", tmp_path / "b.jpg", tmp_path])) == [
        "notes.txt", "b.jpg", "a.PNG",
    ]
    assert names(expand_image_inputs([tmp_path / "missing.jpg"])) == ["missing.jpg"]
    assert expand_image_inputs([str(tmp_path / "*.gif")]) == []
