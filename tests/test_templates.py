"""Template meshes and their unpooling hierarchy, checked against trimesh, scipy and hand-worked values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import trimesh
import trimesh.remesh

from facerecon.errors import InputError
from facerecon.mesh import generate_template, load_template, save_template, unpool_mesh

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "hemisphere": {"vertices": [141, 491, 1821, 7001], "faces": [210, 840, 3360, 13440], "chi": 1},
    "ellipsoid": {"vertices": [156, 618, 2466], "faces": [308, 1232, 4928], "chi": 2},
}


@pytest.fixture(scope="module", params=["hemisphere", "ellipsoid"])
def shipped(request):
    return load_template(request.param)


def _trimesh(level) -> trimesh.Trimesh:
    return trimesh.Trimesh(level.vertices.astype(np.float64), level.faces, process=False, validate=False)


def test_counts_per_level(shipped) -> None:
    exp = EXPECTED[shipped.name]
    assert [lvl.vertices.shape[0] for lvl in shipped.levels] == exp["vertices"]
    assert [lvl.faces.shape[0] for lvl in shipped.levels] == exp["faces"]
    if shipped.name == "ellipsoid":
        assert shipped.levels[0].edges.shape[0] == 462
    else:
        assert shipped.levels[0].edges.shape[0] == 350
    assert len(shipped.unpool_edges) == len(exp["vertices"]) - 1


def test_dtypes(shipped) -> None:
    for lvl in shipped.levels:
        assert lvl.vertices.dtype == np.float32
        for arr in (lvl.faces, lvl.edges, lvl.adj_indptr, lvl.adj_indices):
            assert arr.dtype == np.int64


def test_trimesh_invariants(shipped) -> None:
    for i, lvl in enumerate(shipped.levels):
        mesh = _trimesh(lvl)
        assert mesh.is_winding_consistent, f"level {i}"
        assert mesh.euler_number == EXPECTED[shipped.name]["chi"], f"level {i}"
        assert mesh.area_faces.min() > 1e-4 * mesh.area_faces.mean(), f"degenerate face at level {i}"
        assert len(np.unique(np.sort(lvl.faces, axis=1), axis=0)) == len(lvl.faces), f"duplicate face at level {i}"
        assert len(np.unique(lvl.faces)) == len(lvl.vertices)  # every vertex is used
        if shipped.name == "ellipsoid":
            assert mesh.is_watertight
            assert mesh.volume > 0  # outward normals
        else:
            # outward: every face normal points away from the sphere centre (the origin)
            assert (np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center) > 0).all(), f"level {i}"
            assert not mesh.is_watertight


def test_hemisphere_geometry_and_single_boundary_loop() -> None:
    t = load_template("hemisphere")
    lvl = t.levels[0]
    v = lvl.vertices.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)  # on the unit sphere
    # independent boundary: edges used by exactly one face
    mesh = _trimesh(lvl)
    once = trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)
    rim_edges = mesh.edges_sorted[once]
    assert len(rim_edges) == 70
    rim = np.unique(rim_edges)
    assert len(rim) == 70 and (np.bincount(rim_edges.ravel())[rim] == 2).all()  # a 2-regular graph ...
    graph = scipy.sparse.coo_matrix((np.ones(len(rim_edges)), (rim_edges[:, 0], rim_edges[:, 1])), shape=(len(v),) * 2)
    n_comp, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    assert len(np.unique(labels[rim])) == 1  # ... with one component: exactly one cycle
    assert len(mesh.outline().entities) == 1
    np.testing.assert_allclose(v[rim, 2], 0.0, atol=1e-7)  # rim in the z = 0 plane
    assert (v[np.setdiff1d(np.arange(len(v)), rim), 2] < 0).all()  # dome towards -z (the camera)
    assert sorted(t.boundary.tolist()) == rim.tolist()
    # boundary_0 is in loop order: consecutive entries are rim edges
    loop = np.stack([t.boundary, np.roll(t.boundary, -1)], axis=1)
    assert {tuple(e) for e in np.sort(loop, axis=1).tolist()} == {tuple(e) for e in rim_edges.tolist()}


def test_ellipsoid_geometry() -> None:
    v = load_template("ellipsoid").levels[0].vertices.astype(np.float64)
    q = (v - [0.0, 0.0, 0.8]) / [0.2, 0.2, 0.4]
    np.testing.assert_allclose((q * q).sum(axis=1), 1.0, atol=1e-5)
    assert (v[:, 2] > 0).all()  # entirely in front of the camera


def test_unpooled_vertices_are_edge_midpoints(shipped) -> None:
    for i, edges in enumerate(shipped.unpool_edges):
        coarse, fine = shipped.levels[i], shipped.levels[i + 1]
        np.testing.assert_array_equal(edges, coarse.edges)
        n = coarse.vertices.shape[0]
        np.testing.assert_array_equal(fine.vertices[:n], coarse.vertices)
        a = coarse.vertices[edges[:, 0]].astype(np.float64)
        b = coarse.vertices[edges[:, 1]].astype(np.float64)
        np.testing.assert_array_equal(fine.vertices[n:], ((a + b) / 2).astype(np.float32))


def test_unpooling_matches_trimesh_subdivide(shipped) -> None:
    from scipy.spatial import cKDTree

    for i in range(len(shipped.unpool_edges)):
        coarse, fine = shipped.levels[i], shipped.levels[i + 1]
        ref_v, ref_f = trimesh.remesh.subdivide(coarse.vertices.astype(np.float64), coarse.faces)
        assert len(ref_f) == len(fine.faces) == 4 * len(coarse.faces)
        assert len(ref_v) == len(fine.vertices)
        # same vertex set: a one-to-one nearest-neighbour match
        dist, ours_to_ref = cKDTree(ref_v).query(fine.vertices.astype(np.float64))
        assert dist.max() < 1e-6
        assert len(np.unique(ours_to_ref)) == len(ref_v)
        # same triangles (as vertex sets; trimesh may start a face at another corner)
        ours = {tuple(sorted(f)) for f in ours_to_ref[fine.faces].tolist()}
        assert ours == {tuple(sorted(f)) for f in ref_f.tolist()}


def test_edges_and_csr_adjacency(shipped) -> None:
    for lvl in shipped.levels:
        mesh = _trimesh(lvl)
        ref = np.unique(np.sort(mesh.edges_unique, axis=1), axis=0)
        np.testing.assert_array_equal(lvl.edges, ref)
        n = len(lvl.vertices)
        adj = scipy.sparse.coo_matrix(
            (np.ones(2 * len(ref)), (np.r_[ref[:, 0], ref[:, 1]], np.r_[ref[:, 1], ref[:, 0]])), shape=(n, n)
        ).tocsr()
        adj.sort_indices()
        np.testing.assert_array_equal(lvl.adj_indptr, adj.indptr)
        np.testing.assert_array_equal(lvl.adj_indices, adj.indices)


def test_edge_length_ratio() -> None:
    # measured with trimesh; the numbers reported in docs/make-initial-mesh.md
    hemi = _trimesh(load_template("hemisphere").levels[0]).edges_unique_length
    ell = _trimesh(load_template("ellipsoid").levels[0]).edges_unique_length
    assert hemi.max() / hemi.min() < 3.8
    assert ell.max() / ell.min() < 1.6


@pytest.mark.parametrize("shape", ["hemisphere", "ellipsoid"])
def test_regeneration_reproduces_shipped_file(shape: str, tmp_path: Path) -> None:
    shipped = np.load(ROOT / "ellipsoids" / f"{shape}.npz")
    path = tmp_path / f"{shape}.npz"
    save_template(generate_template(shape), path)
    fresh = np.load(path)
    assert sorted(fresh.files) == sorted(shipped.files)
    for key in shipped.files:
        assert fresh[key].dtype == shipped[key].dtype, key
        np.testing.assert_array_equal(fresh[key], shipped[key], err_msg=key)
    meta = json.loads(str(shipped["meta"][()]))
    assert meta["format_version"] == 1 and meta["name"] == shape


def test_unpool_mesh_single_triangle_by_hand() -> None:
    v = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0]], dtype=np.float32)
    new_v, new_f, edges = unpool_mesh(v, np.array([[0, 1, 2]]))
    np.testing.assert_array_equal(edges, [[0, 1], [0, 2], [1, 2]])
    np.testing.assert_array_equal(new_v[3:], [[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    assert new_f.shape == (4, 3)
    normals = np.cross(new_v[new_f[:, 1]] - new_v[new_f[:, 0]], new_v[new_f[:, 2]] - new_v[new_f[:, 0]])
    assert (normals[:, 2] > 0).all()  # winding kept (counter-clockwise seen from +z)
    assert np.isclose(0.5 * np.linalg.norm(normals, axis=1).sum(), 2.0)  # areas add up


def test_custom_options() -> None:
    t = generate_template("hemisphere", vertices=30, faces=40, levels=1, radius=2.0, center=(0.0, 0.0, 1.0))
    v = t.levels[0].vertices.astype(np.float64)
    assert len(v) == 30 and len(t.levels[0].faces) == 40 and len(t.levels) == 2
    assert len(t.boundary) == 2 * 30 - 40 - 2
    np.testing.assert_allclose(np.linalg.norm(v - [0, 0, 1], axis=1), 2.0, atol=1e-5)
    mesh = _trimesh(t.levels[1])
    assert mesh.is_winding_consistent and mesh.euler_number == 1
    e = generate_template("ellipsoid", vertices=42, levels=0, radii=(1.0, 1.0, 1.0))
    mesh = _trimesh(e.levels[0])
    assert len(e.levels[0].faces) == 80 and mesh.is_watertight and mesh.volume > 0


@pytest.mark.parametrize(
    "shape, options, words",
    [
        ("hemisphere", {"vertices": 141, "faces": 300}, "rim"),
        ("hemisphere", {"vertices": 141, "faces": 100}, "inner"),
        ("ellipsoid", {"vertices": 156, "faces": 300}, "2V - 4"),
        ("ellipsoid", {"radii": (0.2, -1.0, 0.4)}, "radii"),
        ("hemisphere", {"radii": (1.0, 1.0, 1.0)}, "unknown option"),
        ("hemisphere", {"levels": 9}, "levels"),
        ("cube", {}, "unknown template shape"),
    ],
)
def test_impossible_options_raise_input_error(shape: str, options: dict, words: str) -> None:
    with pytest.raises(InputError, match=words):
        generate_template(shape, **options)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_template(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(InputError, match="bad.npz"):
        load_template(bad)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InputError, match="invalid template"):
        load_template(tmp_path / "other.npz")
