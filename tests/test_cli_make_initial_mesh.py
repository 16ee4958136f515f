"""`facerecon make-initial-mesh`: help, errors, regeneration of the shipped files, --check, --show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facerecon.cli import app
from facerecon.mesh import load_template, save_template

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_help() -> None:
    result = runner.invoke(app, ["make-initial-mesh", "--help"])
    assert result.exit_code == 0
    for word in ("--out", "--vertices", "--faces", "--levels", "--show", "--check"):
        assert word in result.output


def test_unknown_shape_is_one_line_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["make-initial-mesh", "cube", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert len(_lines(result.output)) == 1 and "cube" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ["hemisphere", "--vertices", "141", "--faces", "400"],
        ["ellipsoid", "--vertices", "156", "--faces", "300"],
        ["hemisphere", "--radii", "1", "1", "1"],
        ["--vertices", "100"],  # numbers need exactly one shape
    ],
)
def test_impossible_numbers_exit_2(args: list[str], tmp_path: Path) -> None:
    result = runner.invoke(app, ["make-initial-mesh", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert len(_lines(result.output)) == 1
    assert "Traceback" not in result.output


def test_regenerates_shipped_files(tmp_path: Path) -> None:
    result = runner.invoke(app, ["make-initial-mesh", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "7001" in result.output and "2466" in result.output  # the tables
    for shape in ("hemisphere", "ellipsoid"):
        fresh, shipped = tmp_path / f"{shape}.npz", ROOT / "ellipsoids" / f"{shape}.npz"
        with np.load(fresh) as a, np.load(shipped) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{shape}: {key}")
        # the writer is deterministic (fixed zip timestamps and order): saving again gives the same bytes
        again = tmp_path / f"{shape}_again.npz"
        save_template(load_template(fresh), again)
        assert again.read_bytes() == fresh.read_bytes(), shape


def test_check_detects_changes(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path)]
    assert runner.invoke(app, ["make-initial-mesh", "ellipsoid", *out]).exit_code == 0
    assert runner.invoke(app, ["make-initial-mesh", "ellipsoid", "--check", *out]).exit_code == 0
    path = tmp_path / "ellipsoid.npz"
    data = dict(np.load(path))
    data["vertices_0"] = data["vertices_0"] + np.float32(1e-3)
    np.savez(path, **data)
    result = runner.invoke(app, ["make-initial-mesh", "ellipsoid", "--check", *out])
    assert result.exit_code == 1
    assert "differs" in result.output


def test_custom_numbers_do_not_overwrite_shipped_templates() -> None:
    result = runner.invoke(app, ["make-initial-mesh", "hemisphere", "--vertices", "60"])
    assert result.exit_code == 2
    assert "--out" in result.output


def test_custom_template_written_with_name(tmp_path: Path) -> None:
    args = ["make-initial-mesh", "hemisphere", "--vertices", "40", "--levels", "1", "--name", "small", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "small.npz") as data:
        assert data["vertices_0"].shape == (40, 3)
        assert data["vertices_1"].shape[0] == 40 + data["edges_0"].shape[0]


def _open3d_can_render() -> bool:
    try:
        from facerecon.mesh.preview import open3d_module

        o3d = open3d_module()  # as facerecon loads it: libraries with their own LLVM first

        o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
        vis = o3d.visualization.Visualizer()
        ok = vis.create_window(visible=False, width=64, height=48)
        if ok:
            vis.destroy_window()
        return bool(ok)
    except Exception:  # any failure means: cannot render here
        return False


def test_show_renders_png_offscreen(tmp_path: Path) -> None:
    if not _open3d_can_render():
        pytest.skip("Open3D cannot create an offscreen render context here")
    from PIL import Image

    args = ["make-initial-mesh", "hemisphere", "--vertices", "60", "--levels", "0", "--out", str(tmp_path),
            "--show", "--screenshot", str(tmp_path / "shots")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    png = tmp_path / "shots" / "hemisphere_level0.png"
    image = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255
    assert image.shape == (600, 800, 3)
    background = np.all(image > 0.98, axis=2)  # white background
    assert 0.05 < 1 - background.mean() < 0.9  # the mesh covers a real part of the image
    assert image.std() > 0.05  # shading and wireframe, not a flat fill
