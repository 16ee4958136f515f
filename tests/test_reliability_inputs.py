"""Bad input: a corrupt face-model array, a damaged cache given to eval, and
Open3D's XDG_RUNTIME_DIR complaint on a successful headless screenshot."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from failure_harness import cli, error_lines, tiny_cache

sys.path.insert(0, str(Path(__file__).parent))
from test_face_model import tiny_model_arrays, write_reduced


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: p.write_bytes(b"\x93NUMPY garbage that is not an array header"), "cannot read this face-model array"),
        (lambda p: p.write_bytes(b""), "cannot read this face-model array"),
        (lambda p: np.save(p, np.array([1.0, np.nan, 2.0], dtype=np.float32)), "non-finite"),
        (lambda p: np.save(p, np.array(["a", "b"])), "expected a numeric array"),
    ],
)
def test_a_corrupt_u_shp_is_named(damage, expected: str, tmp_path: Path) -> None:
    folder = write_reduced(tmp_path / "model", tiny_model_arrays())
    damage(folder / "u_shp.npy")
    r = cli("prepare", "--face-model", str(folder), "--convert-face-model", str(tmp_path / "m.npz"))
    lines = error_lines(r.stderr)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and "internal error" not in lines[0], lines
    assert str(folder / "u_shp.npy") in lines[0] and expected in lines[0], lines[0]


def test_a_corrupt_npz_face_model_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "model.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    r = cli("prepare", "--face-model", str(bad), "--convert-face-model", str(tmp_path / "m.npz"))
    lines = error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1 and str(bad) in lines[0] and "internal error" not in lines[0], r.stderr


@pytest.mark.parametrize("damage, expected", [("no-points", "no 'points' dataset"), ("offsets", "corrupt 'offsets'")])
def test_eval_on_a_damaged_cache_names_it(damage: str, expected: str, tmp_path: Path) -> None:
    path = tiny_cache(tmp_path / "c.h5", n=8, points=300, same_topology=True)
    with h5py.File(path, "r+") as f:
        if damage == "no-points":
            del f["points"]
        else:
            off = f["offsets"][:]
            off[4] = -7
            f["offsets"][:] = off
    r = cli("eval", "--cache", str(path), "--baseline", "mean")
    lines = error_lines(r.stderr)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and "internal error" not in lines[0], lines
    assert str(path) in lines[0] and expected in lines[0], lines[0]


def test_headless_screenshot_prints_no_xdg_runtime_dir_error(tmp_path: Path) -> None:
    pytest.importorskip("open3d")
    from facerecon.mesh.export import export_mesh

    mesh = tmp_path / "tri.ply"
    export_mesh(mesh, np.array([[20.0, 20, 0], [70, 20, 0], [20, 70, 0]]), np.array([[0, 1, 2]]))
    for runtime in (None, str(tmp_path / "does-not-exist")):
        shot = tmp_path / "shot.png"
        r = cli(
            "view", str(mesh), "--screenshot", str(shot), "--width", "64", "--height", "64",
            env={} if runtime is None else {"XDG_RUNTIME_DIR": runtime},
            unset=("DISPLAY", "WAYLAND_DISPLAY") + (("XDG_RUNTIME_DIR",) if runtime is None else ()),
        )
        if r.returncode != 0 and "offscreen" in r.stderr.lower():
            pytest.skip(f"no offscreen rendering here: {r.stderr.strip()}")
        assert r.returncode == 0, r.stderr
        output = r.stdout + r.stderr
        assert "XDG_RUNTIME_DIR" not in output and "error" not in output.lower(), output
        assert shot.is_file()
        shot.unlink()


def _png_header_claiming(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header says ``width x height`` (its image data is all zero rows,
    compressed to a few hundred kB): what a 256 MP photo looks like before it is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("command", ["predict", "detect-crop"])
def test_a_photo_above_the_pixel_limit_is_refused_from_its_header(command: str, tmp_path: Path) -> None:
    """A 16000 x 16000 PNG: refused with one line before it is decoded or anything is sized for
    it. predict used to decode it (Pillow's EXIF lookup) and size MTCNN's warm-up for it first:
    1.7 GB before the refusal; now the whole command stays near the interpreter's own size."""
    import subprocess

    from failure_harness import ROOT

    huge = _png_header_claiming(tmp_path / "huge.png", 16000, 16000)
    args = ["-o", str(tmp_path / "face.obj")] if command == "predict" else ["-o", str(tmp_path / "crops")]
    measure = ("import resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "sys.stderr.write(r.stderr)\n"
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    r = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "facerecon", "-q", command, str(huge), *args], check=False,
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    code, peak_kb = (int(x) for x in r.stdout.split())
    lines = error_lines(r.stderr)
    assert code == 2, r.stderr
    assert len(lines) == 1 and "16000x16000 is above the 250 MP limit" in lines[0], lines
    assert peak_kb < 400_000, f"peak {peak_kb / 1000:.0f} MB"
