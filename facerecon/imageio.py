"""Robust image loading and saving: every photo becomes an ``(H, W, 3)`` uint8 RGB array.

:func:`load_image` accepts whatever a user is likely to point the toolkit at and normalises it:

- the EXIF orientation tag is applied (the array is what a photo viewer shows);
- grayscale (``1``, ``L``, ``I;16``, ``I``, ``F``) is replicated into three channels;
- 16-bit data is scaled to 8 bits (``v / 257``, rounded), float data in [0, 1] by 255;
- an alpha channel (``RGBA``, ``LA``, ``PA``, palette transparency) is **composited on black**
  (``rgb * alpha / 255``), the same black the crops use outside the image;
- palette, CMYK, YCbCr, LAB and HSV images are converted to RGB with Pillow.

Images up to :data:`MAX_PIXELS` pixels load (Pillow's decompression-bomb limit is raised to it
when this module is imported; a limit someone disabled stays disabled). Anything unreadable
raises :class:`~facerecon.errors.InputError` naming the file and the reason.
"""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facerecon.errors import InputError
from facerecon.io_utils import atomic_path

#: The largest image (in pixels) :func:`load_image` accepts: 250 MP, about 750 MB as RGB uint8.
MAX_PIXELS = 250_000_000

#: The suffixes of the pictures the toolkit writes (overlays, screenshots, plots).
PNG_JPG = (".png", ".jpg", ".jpeg")

#: Suffixes treated as images when a folder is scanned (lower case, with the dot).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")

# Pillow refuses images above 2 * MAX_IMAGE_PIXELS (and warns above it) as decompression bombs.
# Real photos up to MAX_PIXELS must load, so raise the limit deliberately; our own size check in
# load_image gives a clear error above MAX_PIXELS.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: any format Pillow reads (JPEG, PNG incl. 16-bit, TIFF, BMP, WebP, GIF, ...).

    Returns:
        ``(H, W, 3)`` uint8 RGB, C-contiguous, EXIF orientation applied, alpha composited on
        black (see the module docstring for every mode handled).

    Raises:
        InputError: ``"<path>: cannot read image (<reason>)"`` for a missing, unreadable,
            truncated or corrupt file, a file that is not an image, or one above
            :data:`MAX_PIXELS` pixels.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixels(path, *im.size)
                im.load()
                return _to_rgb8(_exif_transpose(im))
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: cannot read image (no such file)") from None
    except IsADirectoryError:
        raise InputError(f"{path}: cannot read image (it is a folder)") from None
    except PermissionError:
        raise InputError(f"{path}: cannot read image (permission denied)") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: cannot read image (not an image file, or an unsupported format)") from None
    except MemoryError:
        raise InputError(f"{path}: cannot read image (out of memory)") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, Image.DecompressionBombError) as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise InputError(f"{path}: cannot read image ({reason})") from None


#: Photos of at least this many pixels are decoded by :func:`load_photo`'s lean path.
LEAN_DECODE_PIXELS = 16_000_000


def load_photo(path: str | os.PathLike[str]) -> np.ndarray:
    """:func:`load_image`, with less memory for huge PNGs (what ``predict`` decodes photos with).

    Pillow holds an RGB image as 4 bytes a pixel and ``load_image`` then copies it into numpy:
    a 100 MP PNG peaks at ~1.3 GB. For a plain 8-bit RGB or grayscale PNG of at least
    :data:`LEAN_DECODE_PIXELS` pixels with no EXIF rotation, OpenCV decodes straight into the
    array (converted to RGB in place): the same pixels, one copy. Everything else (and every
    error) goes through ``load_image``.
    """
    try:
        with Image.open(path) as im:
            lean = (
                im.format == "PNG"
                and im.mode in ("RGB", "L")
                and LEAN_DECODE_PIXELS <= im.size[0] * im.size[1] <= MAX_PIXELS
                and "transparency" not in im.info
                and header_orientation(im) == 1  # not im.getexif(): it decodes the whole PNG
            )
            size = im.size
    except Exception:  # broad on purpose: load_image reports the problem with its own words
        lean = False
    if lean:
        import cv2

        flags = cv2.IMREAD_COLOR | getattr(cv2, "IMREAD_IGNORE_ORIENTATION", 0)
        try:
            bgr = cv2.imread(os.fspath(path), flags)
        except cv2.error:
            bgr = None
        if bgr is not None and bgr.shape[:2] == (size[1], size[0]) and bgr.dtype == np.uint8:
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)
    return load_image(path)


def _check_pixels(path: Path, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise InputError(f"{path}: cannot read image ({width}x{height} is above the {MAX_PIXELS / 1e6:.0f} MP limit)")


def check_image_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """:func:`image_size`, refusing an image above :data:`MAX_PIXELS` from its header, before
    anything is decoded or sized for it (``load_image``'s error); None when the header cannot be
    read (then :func:`load_image` gives the error)."""
    size = image_size(path)
    if size is not None:
        _check_pixels(Path(path), *size)
    return size


def image_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(width, height)`` of the image :func:`load_image` would return (EXIF orientation
    applied), from the file's header alone; None when the header cannot be read (then
    :func:`load_image` gives the error)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked by the caller
            with Image.open(path) as im:
                width, height = im.size
                orientation = header_orientation(im)
    except Exception:
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def header_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened, not yet decoded image, from what precedes its
    pixels. Pillow's ``getexif`` decodes a whole PNG that has no EXIF chunk before its image data
    (looking for one after it): 768 MB for a 256 MP photo before any size check. A PNG's EXIF
    chunk is read here only when it comes first, as the PNG specification places it; a
    malformed EXIF block counts as none (``load_image`` then keeps the image as stored)."""
    try:
        if im.format == "PNG":
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            return int(exif.get(0x0112, 1))
        return int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1


def save_image(
    path: str | os.PathLike[str], image: np.ndarray, quality: int = 95, suffixes: Sequence[str] | None = None,
    durable: bool = True,
) -> Path:
    """Write an RGB image atomically; the format follows the suffix (``.jpg``, ``.png``, ...).

    Args:
        path: output file; its folder is created.
        image: ``(H, W, 3)`` uint8 RGB.
        quality: JPEG quality (1-100); ignored for lossless formats.
        suffixes: the suffixes allowed (lower case, with the dot, e.g. :data:`PNG_JPG`), or None
            for any format Pillow writes.
        durable: flush the file to the disk before it replaces ``path`` (see
            :mod:`facerecon.io_utils`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: a suffix not allowed or unknown, a malformed image, a folder at ``path``, or
            a path that cannot be written.
    """
    path = Path(path)
    fmt = image_format(path, suffixes)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"{path}: save_image expects (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name ending in {_listed(suffixes)}")
    options = {"quality": int(quality)} if fmt == "JPEG" else {}
    try:
        with atomic_path(path, durable=durable) as tmp:
            Image.fromarray(image, mode="RGB").save(tmp, format=fmt, **options)
    except PermissionError:
        raise InputError(f"{path}: cannot write here (permission denied)") from None
    return path


def image_format(path: str | os.PathLike[str], suffixes: Sequence[str] | None = None) -> str:
    """The Pillow format :func:`save_image` writes ``path`` in (checked before any work is done).

    Args:
        path: the output file.
        suffixes: the suffixes allowed (lower case, with the dot), or None for any Pillow writes.

    Raises:
        InputError: a suffix not in ``suffixes``, or one Pillow does not know.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if suffixes is not None and suffix not in suffixes:
        raise InputError(f"{path}: unknown image format {path.suffix or '(no extension)'!r}; use {_listed(suffixes)}")
    if fmt is None:
        raise InputError(f"{path}: unknown image format {path.suffix!r} (use .jpg or .png)")
    return fmt


def _listed(suffixes: Sequence[str] | None) -> str:
    """``(".png", ".jpg", ".jpeg")`` -> ``".png or .jpg"`` (``.jpeg`` is ``.jpg`` again)."""
    shown = [s for s in suffixes or (".jpg", ".png") if s != ".jpeg"] or list(suffixes or ())
    return " or ".join(shown)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path``'s suffix is one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _exif_transpose(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a corrupt EXIF block leaves the image as stored."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF must not make a readable photo unreadable
        return im
    return im if out is None else out


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB (see the module docstring for the rules)."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode in ("RGBa", "La"):  # premultiplied alpha: already composited on black
        return _gray_or_rgb(np.asarray(im)[..., :-1])
    if mode in ("RGBA", "LA"):
        arr = np.asarray(im)
        color = arr[..., :-1].astype(np.uint16)
        alpha = arr[..., -1:].astype(np.uint16)
        composited = ((color * alpha + 127) // 255).astype(np.uint8)
        return _gray_or_rgb(composited)
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(im), dtype=np.uint8)
    if mode in ("L", "1"):
        return _gray_or_rgb(np.asarray(im.convert("L")))
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        return _gray_or_rgb(_scale_to_uint8(np.asarray(im)))
    # CMYK, YCbCr, LAB, HSV and anything else Pillow can convert.
    return np.ascontiguousarray(np.asarray(im.convert("RGB")), dtype=np.uint8)


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """High-bit-depth grayscale -> uint8.

    Integers: 0-255 kept, 0-65535 scaled by 1/257 (so 65535 -> 255), wider ranges by their
    maximum. Floats: [0, 1] scaled by 255, otherwise clipped to [0, 255].
    """
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:
            arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    arr = arr.astype(np.int64)
    arr = np.clip(arr, 0, None)
    hi = int(arr.max(initial=0))
    if hi <= 255:
        return arr.astype(np.uint8)
    if hi <= 65535:
        return ((arr * 255 + 32767) // 65535).astype(np.uint8)
    return ((arr * 255 + hi // 2) // hi).astype(np.uint8)


def _gray_or_rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1) -> (H, W, 3) by replication; (H, W, 3) unchanged."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def expand_image_inputs(inputs: Sequence[str | os.PathLike[str]], recursive: bool = False) -> list[Path]:
    """Files, folders and glob patterns -> the list of image paths, in a stable order.

    - an existing file is taken as it is (whatever its suffix: it is reported if unreadable);
    - a folder gives the files inside with an image suffix (:data:`IMAGE_SUFFIXES`), sorted by
      name; with ``recursive`` also those in sub-folders (sorted by relative path);
    - anything else containing ``*``, ``?`` or ``[`` is expanded as a glob (``**`` matches
      sub-folders) for shells that do not expand it; matched folders are scanned as above and
      matched files are kept when they have an image suffix;
    - a path that neither exists nor matches anything is returned as it is, so that the caller
      reports it as unreadable ("no such file").

    Duplicates (the same file reached twice) are dropped, keeping the first occurrence.
    """
    out: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = Path(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            out.append(path)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for p in _scan_folder(path, recursive):
                add(p)
        elif path.exists() or not glob.has_magic(str(item)):
            add(path)
        else:
            for match in sorted(glob.glob(str(item), recursive=True)):
                m = Path(match)
                if m.is_dir():
                    for p in _scan_folder(m, recursive):
                        add(p)
                elif is_image_file(m):
                    add(m)
    return out


def _scan_folder(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in pattern if p.is_file() and is_image_file(p) and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def sample_colors(image: np.ndarray, xy_px: np.ndarray) -> np.ndarray:
    """Bilinear colour lookup at continuous image px (pixel ``(i, j)``'s centre is ``(j + .5, i + .5)``).

    Args:
        image: ``(H, W, 3)`` uint8.
        xy_px: ``(P, 2)`` image px.

    OpenCV's bilinear ``remap`` (weights quantised to 1/32 px, far below a colour's accuracy).

    Returns:
        ``(P, 3)`` uint8; outside the image the colour fades to black (zero padding).
    """
    import cv2

    xy = np.asarray(xy_px, dtype=np.float32).reshape(-1, 2) - 0.5  # to array-index coordinates
    n = xy.shape[0]
    cols = 1024  # cv2.remap needs maps below 32767 px a side: lay the points out on a grid
    rows = max(1, -(-n // cols))
    grid = np.full((rows * cols, 2), -10.0, dtype=np.float32)
    grid[:n] = xy
    grid = grid.reshape(rows, cols, 2)
    out = cv2.remap(
        np.ascontiguousarray(image), grid[..., 0].copy(), grid[..., 1].copy(),
        interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    return out.reshape(-1, out.shape[-1] if out.ndim == 3 else 1)[:n].astype(np.uint8)
