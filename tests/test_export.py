"""Mesh and point-cloud export: round trips through trimesh and Open3D, errors, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from facerecon import io_utils
from facerecon.errors import InputError
from facerecon.mesh import export as export_module
from facerecon.mesh.export import (
    MeshFormat,
    export_mesh,
    export_points,
    load_geometry,
    mesh_suffixes,
    register_mesh_format,
)
from facerecon.mesh.templates import load_template

COLOUR_FORMATS = (".obj", ".ply", ".glb")


@pytest.fixture(scope="module")
def hemisphere() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The finest hemisphere level placed like a face in a 640 px photo, with random colours."""
    level = load_template("hemisphere").levels[-1]
    vertices = level.vertices.astype(np.float64) * 150.0 + np.array([320.0, 240.0, 0.0])  # image px
    colors = np.random.default_rng(0).integers(0, 256, size=(len(vertices), 3), dtype=np.uint8)
    return vertices, level.faces.astype(np.int64), colors


def _o3d():
    return pytest.importorskip("open3d")


def _stray_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def _match(reference: np.ndarray, other: np.ndarray, tol: float) -> np.ndarray:
    """Index into ``reference`` of each row of ``other`` (a bijection within ``tol``)."""
    dist, idx = cKDTree(reference).query(other)
    assert dist.max() <= tol, dist.max()
    assert len(np.unique(idx)) == len(reference) == len(other)
    return idx


@pytest.mark.parametrize("suffix", mesh_suffixes())
def test_round_trip_trimesh(tmp_path: Path, hemisphere, suffix: str) -> None:
    v, f, c = hemisphere
    path = tmp_path / f"face{suffix}"
    export_mesh(path, v, f, colors=c)
    loaded = trimesh.load(path, process=False, force="mesh")
    if suffix == ".stl":  # a triangle soup: three vertices per face until merged
        assert len(loaded.vertices) == 3 * len(f)
        loaded.merge_vertices()
        idx = _match(v, np.asarray(loaded.vertices), tol=1e-3)
        np.testing.assert_array_equal(idx[loaded.faces], f)
    else:
        assert loaded.vertices.shape == v.shape and loaded.faces.shape == f.shape
        np.testing.assert_allclose(loaded.vertices, v, rtol=0, atol=1e-7 * 640)  # float32 precision
        np.testing.assert_array_equal(loaded.faces, f)
    assert loaded.is_winding_consistent
    if suffix in COLOUR_FORMATS:
        np.testing.assert_array_equal(np.asarray(loaded.visual.vertex_colors)[:, :3], c)


@pytest.mark.parametrize("suffix", mesh_suffixes())
def test_round_trip_open3d(tmp_path: Path, hemisphere, suffix: str) -> None:
    o3d = _o3d()
    v, f, c = hemisphere
    path = tmp_path / f"face{suffix}"
    export_mesh(path, v, f, colors=c)
    mesh = o3d.io.read_triangle_mesh(str(path))
    if suffix == ".stl":
        mesh.remove_duplicated_vertices()
    ov, of = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    assert ov.shape == v.shape and of.shape == f.shape
    # Open3D renumbers .obj/.glb vertices in the order the faces use them: compare through the match
    idx = _match(v, ov, tol=1e-7 * 640)
    np.testing.assert_array_equal(idx[of], f)  # same triangles, same corner order (winding)
    if suffix in COLOUR_FORMATS:
        assert mesh.has_vertex_colors()
        np.testing.assert_array_equal(np.round(np.asarray(mesh.vertex_colors) * 255).astype(np.uint8), c[idx])


@pytest.mark.parametrize("suffix", mesh_suffixes())
def test_load_geometry_reads_what_export_wrote(tmp_path: Path, hemisphere, suffix: str) -> None:
    v, f, c = hemisphere
    path = tmp_path / f"face{suffix}"
    export_mesh(path, v, f, colors=c)
    g = load_geometry(path)
    assert g.is_mesh and g.num_vertices == len(v) and g.faces.shape == f.shape
    if suffix == ".stl":
        idx = _match(v, g.vertices, tol=1e-3)
        np.testing.assert_array_equal(idx[g.faces], f)
    else:
        np.testing.assert_allclose(g.vertices, v, atol=1e-7 * 640)
        np.testing.assert_array_equal(g.faces, f)
    if suffix in COLOUR_FORMATS:
        np.testing.assert_array_equal(g.colors, c)
    else:
        assert g.colors is None


def test_mesh_without_colours_loads_without_colours(tmp_path: Path, hemisphere) -> None:
    v, f, _ = hemisphere
    for suffix in (".obj", ".ply"):
        export_mesh(tmp_path / f"plain{suffix}", v, f)
        assert load_geometry(tmp_path / f"plain{suffix}").colors is None


def test_float_colours_are_scaled_to_bytes(tmp_path: Path) -> None:
    v = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    colours = np.array([[0.0, 0.5, 1.0], [1.0, 0.0, 0.0], [0.2, 0.4, 0.6]])
    export_mesh(tmp_path / "t.ply", v, np.array([[0, 1, 2]]), colors=colours)
    expected = np.array([[0, 128, 255], [255, 0, 0], [51, 102, 153]], dtype=np.uint8)  # round(255 x)
    np.testing.assert_array_equal(load_geometry(tmp_path / "t.ply").colors, expected)


def test_unknown_extension_lists_supported(tmp_path: Path, hemisphere) -> None:
    v, f, _ = hemisphere
    with pytest.raises(InputError) as err:
        export_mesh(tmp_path / "face.xyz", v, f)
    for suffix in mesh_suffixes():
        assert suffix in str(err.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "vertices, faces",
    [
        (np.zeros((3, 2)), np.array([[0, 1, 2]])),  # not (V, 3)
        (np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]]), np.array([[0, 1, 2]])),  # NaN
        (np.eye(3), np.array([[0, 1, 3]])),  # index out of range
        (np.eye(3), np.array([[0.0, 1.0, 2.0]])),  # float faces
        (np.eye(3), np.zeros((0, 3), dtype=np.int64)),  # no faces
    ],
)
def test_malformed_arrays_raise(tmp_path: Path, vertices, faces) -> None:
    with pytest.raises(InputError):
        export_mesh(tmp_path / "bad.obj", vertices, faces)
    assert not list(tmp_path.iterdir())


def test_folder_that_cannot_be_created(tmp_path: Path, hemisphere) -> None:
    v, f, _ = hemisphere
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="cannot create the output folder"):
        export_mesh(blocker / "sub" / "face.obj", v, f)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path: Path, hemisphere) -> None:
    v, f, _ = hemisphere
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError):
            export_mesh(ro / "missing" / "face.obj", v, f)
        with pytest.raises(InputError):
            export_mesh(ro / "face.obj", v, f)
        assert not list(ro.iterdir())
    finally:
        ro.chmod(0o700)


def test_failed_export_leaves_nothing_half_written(tmp_path: Path, hemisphere, monkeypatch) -> None:
    v, f, _ = hemisphere
    target = tmp_path / "face.obj"
    target.write_text("the previous file\n")

    def broken_write(fd, data):
        os.write(fd, bytes(data[: len(data) // 2]))  # half a file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_utils, "_write_all", broken_write)
    with pytest.raises(OSError, match="face.obj"):
        export_mesh(target, v, f)
    assert target.read_text() == "the previous file\n"
    assert _stray_files(tmp_path) == []


def test_points_ply_round_trip(tmp_path: Path) -> None:
    o3d = _o3d()
    rng = np.random.default_rng(1)
    p = rng.normal(size=(500, 3)) * 40.0
    n = rng.normal(size=(500, 3))
    c = rng.integers(0, 256, size=(500, 3), dtype=np.uint8)
    export_points(tmp_path / "gt.ply", p, colors=c, normals=n)
    g = load_geometry(tmp_path / "gt.ply")
    assert not g.is_mesh
    np.testing.assert_array_equal(g.vertices, p)  # float64 in the file
    np.testing.assert_array_equal(g.colors, c)
    np.testing.assert_allclose(g.normals, n.astype(np.float32))
    cloud = o3d.io.read_point_cloud(str(tmp_path / "gt.ply"))
    np.testing.assert_array_equal(np.asarray(cloud.points), p)
    np.testing.assert_allclose(np.asarray(cloud.normals), n, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.round(np.asarray(cloud.colors) * 255).astype(np.uint8), c)
    tm = trimesh.load(tmp_path / "gt.ply")
    assert isinstance(tm, trimesh.PointCloud) and len(tm.vertices) == 500


def test_points_npy(tmp_path: Path) -> None:
    p = np.arange(12, dtype=np.float64).reshape(4, 3)
    n = np.tile([0.0, 0.0, -1.0], (4, 1))
    export_points(tmp_path / "xyz.npy", p)
    export_points(tmp_path / "xyzn.npy", p, normals=n)
    assert np.load(tmp_path / "xyz.npy").shape == (4, 3)
    np.testing.assert_array_equal(np.load(tmp_path / "xyzn.npy"), np.concatenate([p, n], axis=1))
    g = load_geometry(tmp_path / "xyzn.npy")
    np.testing.assert_array_equal(g.vertices, p)
    np.testing.assert_array_equal(g.normals, n)
    with pytest.raises(InputError, match="colours"):
        export_points(tmp_path / "c.npy", p, colors=np.zeros((4, 3), np.uint8))
    assert not (tmp_path / "c.npy").exists() and _stray_files(tmp_path) == []


def test_obj_with_vertices_only_is_a_point_cloud(tmp_path: Path) -> None:
    (tmp_path / "pts.obj").write_text("v 0 0 0\nv 1 2 3\nv 4 5 6\n")
    g = load_geometry(tmp_path / "pts.obj")
    assert not g.is_mesh
    np.testing.assert_array_equal(g.vertices, [[0, 0, 0], [1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.obj", None, "no such file"),
        ("empty.ply", b"", "empty"),
        ("garbage.obj", b"this is not a mesh\n", "no vertices"),
        ("garbage.ply", b"ply\nnonsense\n", "cannot read"),
        ("garbage.glb", b"\x00\x01\x02 not gltf", "cannot read"),
        ("bad.npy", None, r"\(N, 3\) or \(N, 6\)"),
        ("empty.npy", None, "empty"),
        ("nan.npy", None, "finite"),
        ("mesh.xyz", b"1 2 3\n", "unknown"),
    ],
)
def test_load_geometry_errors_name_the_file(tmp_path: Path, name: str, content, message: str) -> None:
    path = tmp_path / name
    if name == "bad.npy":
        np.save(path, np.zeros((5, 4)))
    elif name == "empty.npy":
        np.save(path, np.zeros((0, 3)))
    elif name == "nan.npy":
        np.save(path, np.array([[0.0, np.nan, 1.0]]))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        load_geometry(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_load_geometry_folder(tmp_path: Path) -> None:
    (tmp_path / "dir.obj").mkdir()
    with pytest.raises(InputError, match="not a file"):
        load_geometry(tmp_path / "dir.obj")


# ---- the writers against independent references ------------------------------------------------


def test_obj_vertices_exact_within_formatting(tmp_path: Path, hemisphere) -> None:
    from facerecon.mesh.export import decimals_for

    v, f, c = hemisphere
    v = v + np.random.default_rng(3).normal(0, 1e-3, v.shape)  # not on a grid
    path = tmp_path / "face.obj"
    export_mesh(path, v, f, colors=c)
    d = decimals_for(v)
    assert d == 5  # 8 significant digits of a coordinate of a few hundred px
    loaded = trimesh.load(path, process=False, force="mesh")
    # what trimesh read is exactly Python's rounding of each coordinate to d decimals
    expected = np.array([float(f"{x:.{d}f}") for x in v.ravel()]).reshape(v.shape)
    np.testing.assert_allclose(loaded.vertices, expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(loaded.faces, f)
    np.testing.assert_array_equal(np.asarray(loaded.visual.vertex_colors)[:, :3], c)
    o3d = _o3d()
    mesh = o3d.io.read_triangle_mesh(str(path))  # tinyobjloader reads float32
    idx = _match(expected, np.asarray(mesh.vertices), tol=1e-7 * 640)
    np.testing.assert_array_equal(np.round(np.asarray(mesh.vertex_colors) * 255).astype(np.uint8), c[idx])


def test_binary_ply_is_bit_exact(tmp_path: Path, hemisphere) -> None:
    v, f, c = hemisphere
    v = v + np.random.default_rng(4).normal(0, 1e-3, v.shape)
    path = tmp_path / "face.ply"
    export_mesh(path, v, f, colors=c)
    assert path.read_bytes()[:40].startswith(b"ply\nformat binary_little_endian 1.0\n")
    loaded = trimesh.load(path, process=False, force="mesh")
    np.testing.assert_array_equal(loaded.vertices, v)  # float64 stored: bit-exact
    np.testing.assert_array_equal(loaded.faces, f)
    np.testing.assert_array_equal(np.asarray(loaded.visual.vertex_colors)[:, :3], c)
    o3d = _o3d()
    mesh = o3d.io.read_triangle_mesh(str(path))
    np.testing.assert_array_equal(np.asarray(mesh.vertices), v)
    np.testing.assert_array_equal(np.asarray(mesh.triangles), f)
    np.testing.assert_array_equal(np.round(np.asarray(mesh.vertex_colors) * 255).astype(np.uint8), c)


def test_stl_normals_match_trimesh(tmp_path: Path, hemisphere) -> None:
    v, f, _ = hemisphere
    path = tmp_path / "face.stl"
    export_mesh(path, v, f)
    stored = np.frombuffer(path.read_bytes()[84:], dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")])
    reference = trimesh.Trimesh(vertices=v, faces=f, process=False).face_normals
    np.testing.assert_allclose(stored["n"], reference, atol=1e-5)
    np.testing.assert_allclose(stored["v"], v[f], rtol=1e-6)


def test_face_lines_follow_the_faces_given(tmp_path: Path, hemisphere) -> None:
    """Two topologies of the same size written one after the other each get their own face lines."""
    v, f, _ = hemisphere
    export_mesh(tmp_path / "a.obj", v, f)
    flipped = f[:, ::-1].copy()
    export_mesh(tmp_path / "b.obj", v, flipped)
    export_mesh(tmp_path / "c.off", v, flipped)
    np.testing.assert_array_equal(trimesh.load(tmp_path / "a.obj", process=False).faces, f)
    np.testing.assert_array_equal(trimesh.load(tmp_path / "b.obj", process=False).faces, flipped)
    np.testing.assert_array_equal(trimesh.load(tmp_path / "c.off", process=False).faces, flipped)


def test_export_does_not_import_trimesh_for_formats_written_directly(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from facerecon.mesh.export import export_mesh\n"
        "v = np.array([[0., 0, 0], [1, 0, 0], [0, 1, 0]]); f = np.array([[0, 1, 2]])\n"
        f"for s in ('.obj', '.ply', '.off', '.stl'): export_mesh(r'{tmp_path}/m' + s, v, f)\n"
        "print('trimesh' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "False"


def test_obj_and_off_text_is_python_formatting(tmp_path: Path) -> None:
    """Each number is Python's ``%.{d}f`` of the value (``d`` keeps 8 significant digits of the
    largest coordinate), colours r/255 with 6 decimals, faces 1-based in ``.obj``, 0-based in ``.off``."""
    v = np.array([[308.092034, -245.212166, 99.678234], [0.5, -0.0, 1e-9], [634.567891, 7.0, -0.25]])
    f = np.array([[0, 1, 2]])
    c = np.array([[19, 19, 21], [0, 128, 255], [255, 0, 1]], dtype=np.uint8)
    export_mesh(tmp_path / "m.obj", v, f, colors=c)
    export_mesh(tmp_path / "m.off", v, f, colors=c)
    obj = (tmp_path / "m.obj").read_text().splitlines()
    assert obj[1:] == [
        "v 308.09203 -245.21217 99.67823 0.074510 0.074510 0.082353",
        "v 0.50000 -0.00000 0.00000 0.000000 0.501961 1.000000",
        "v 634.56789 7.00000 -0.25000 1.000000 0.000000 0.003922",
        "f 1 2 3",
    ]
    off = (tmp_path / "m.off").read_text().splitlines()
    assert off == ["OFF", "3 1 0", "308.09203 -245.21217 99.67823", "0.50000 -0.00000 0.00000", "634.56789 7.00000 -0.25000", "3 0 1 2"]
    o3d = _o3d()
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "m.off"))
    np.testing.assert_allclose(np.asarray(mesh.vertices), np.round(v, 5), rtol=0, atol=1e-7 * 640)  # float32
    np.testing.assert_array_equal(np.asarray(mesh.triangles), f)


@pytest.fixture
def registry(monkeypatch) -> dict:
    """The format registry, restored after the test."""
    from facerecon import mesh_formats as formats_module

    formats = dict(formats_module._MESH_FORMATS)
    monkeypatch.setattr(formats_module, "_MESH_FORMATS", formats)
    return formats


def test_a_registered_format_is_written_read_and_listed(tmp_path: Path, registry: dict, hemisphere) -> None:
    """A new format is one class: export, load and the suffix list pick it up."""

    @register_mesh_format
    class XyzFaces(MeshFormat):  # vertices then faces as text, read by hand below
        suffix = ".xyzf"
        summary = "test format"

        def encode(self, vertices, faces, colors):
            return (f"{len(vertices)}\n" + "".join(f"{x!r} {y!r} {z!r}\n" for x, y, z in vertices.tolist())
                    + "".join(f"{a} {b} {c}\n" for a, b, c in faces.tolist())).encode()

        def read(self, path: Path) -> export_module.Geometry:
            lines = path.read_text().splitlines()
            n = int(lines[0])
            v = np.array([[float(t) for t in line.split()] for line in lines[1 : n + 1]])
            f = np.array([[int(t) for t in line.split()] for line in lines[n + 1 :]])
            return export_module.Geometry(path=path, vertices=v, faces=f)

    v, f, c = hemisphere
    assert mesh_suffixes()[-1] == ".xyzf"
    export_mesh(tmp_path / "face.XYZF", v, f, colors=c)  # colours dropped: the format has none
    g = load_geometry(tmp_path / "face.XYZF")
    np.testing.assert_array_equal(g.vertices, v)
    np.testing.assert_array_equal(g.faces, f)
    with pytest.raises(InputError, match=r"\.xyzf"):
        export_mesh(tmp_path / "face.abc", v, f)


def test_registering_a_suffix_twice_is_refused(registry: dict) -> None:
    class Obj2(MeshFormat):
        suffix = ".obj"

    class Upper(MeshFormat):
        suffix = ".OBJ2"

    with pytest.raises(InputError, match="already registered"):
        register_mesh_format(Obj2)
    with pytest.raises(InputError, match="lower case"):
        register_mesh_format(Upper)
    assert type(registry[".obj"]).__name__ == "ObjFormat"


def test_cli_help_lists_the_registered_formats() -> None:
    from typer.testing import CliRunner

    from facerecon.cli import app

    for command in ("predict", "view"):
        result = CliRunner().invoke(app, [command, "--help"], terminal_width=400)
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        for suffix in mesh_suffixes():
            assert suffix in text, (command, suffix)


@pytest.mark.parametrize("scale, decimals", [(400.0, 5), (1.0, 8), (3000.0, 4), (1e-3, 9)])
def test_text_rows_write_what_python_percent_formatting_writes(scale: float, decimals: int) -> None:
    from facerecon.mesh_formats import text_rows

    rng = np.random.default_rng(7)
    values = rng.standard_normal((3000, 3)) * scale
    # signed zeros, ties and carries into a new integer place
    values[:5] = [[0.0, -0.0, 1e-12], [-1e-12, 0.5, -0.5], [123.456785, -9.99999999, 10.0], [1, 2, 3], [99999.5, -4e-6, 7]]
    expected = "".join(f"v %.{decimals}f %.{decimals}f %.{decimals}f\n" % tuple(row) for row in values.tolist())
    assert text_rows("v", values, (decimals,) * 3) == expected.encode("ascii")
    bare = "".join(f"%.{decimals}f %.{decimals}f %.{decimals}f\n" % tuple(row) for row in values.tolist())
    assert text_rows("", values, (decimals,) * 3) == bare.encode("ascii")
    ints = rng.integers(-5, 100000, (500, 3))
    assert text_rows("f", ints, (0, 0, 0)) == "".join("f %d %d %d\n" % tuple(r) for r in ints.tolist()).encode("ascii")
    with_nan = np.array([[1.0, np.nan, -np.inf]])
    assert text_rows("v", with_nan, (2, 2, 2)) == b"v 1.00 nan -inf\n"
    assert text_rows("v", np.zeros((0, 3)), (2, 2, 2)) == b""
