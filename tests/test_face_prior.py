"""The face prior: pose fits against known transforms, the correspondence against an analytic
surface, the PCA against numpy, and the five-point baseline on the shared data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facerecon.model.face_prior import (
    FIVE_POINT_LANDMARKS,
    build_face_prior,
    fit_scaled_orthographic,
    five_points_from_68,
    mirror_permutation,
    rotation_6d,
    similarity_2d,
    similarity_fit_batch,
    template_correspondence,
)
from rotations import rotation_xyz
from synthetic_cache import make_tiny_cache


def test_similarity_fit_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(3, 20, 3))
    rots = np.stack([rotation_xyz(*rng.uniform(-1, 1, 3)) for _ in range(3)])
    scales, shifts = np.array([0.5, 1.0, 3.0]), rng.normal(size=(3, 3))
    dst = scales[:, None, None] * np.einsum("bij,bnj->bni", rots, src) + shifts[:, None, :]
    s, r, t = similarity_fit_batch(torch.from_numpy(src), torch.from_numpy(dst))
    np.testing.assert_allclose(s.numpy(), scales, rtol=1e-10)
    np.testing.assert_allclose(r.numpy(), rots, atol=1e-10)
    np.testing.assert_allclose(t.numpy(), shifts, atol=1e-10)


def test_similarity_2d_aligns_and_nan_rows_give_identity() -> None:
    ref = torch.tensor([[-0.3, -0.2], [0.3, -0.2], [0.0, 0.1], [-0.25, 0.4], [0.25, 0.4]], dtype=torch.float64)
    ang = 0.4
    rot = torch.tensor([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]], dtype=torch.float64)
    pts = 1.7 * ref @ rot.T + torch.tensor([0.1, -0.05], dtype=torch.float64)
    batch = torch.stack([pts, torch.full((5, 2), float("nan"), dtype=torch.float64)])
    a, t = similarity_2d(batch, ref)
    aligned = pts @ a[0].T + t[0]
    torch.testing.assert_close(aligned, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(a[1], torch.eye(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(t[1], torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)


def test_scaled_orthographic_fit_recovers_pose_from_exact_projections() -> None:
    rng = np.random.default_rng(1)
    model = rng.normal(size=(5, 3))  # five non-coplanar points
    rot = rotation_xyz(0.2, -0.6, 0.3)
    s, t = 0.8, np.array([0.05, -0.1])
    img = s * (model @ rot.T)[:, :2] + t
    s_fit, r_fit, t_fit = fit_scaled_orthographic(torch.from_numpy(model), torch.from_numpy(img)[None])
    assert abs(float(s_fit[0]) - s) < 1e-9
    np.testing.assert_allclose(r_fit[0].numpy(), rot, atol=1e-9)
    np.testing.assert_allclose(t_fit[0].numpy(), t, atol=1e-9)
    assert abs(float(torch.det(r_fit[0])) - 1.0) < 1e-9


def test_rotation_6d_identity_and_orthonormal() -> None:
    torch.testing.assert_close(rotation_6d(torch.zeros(1, 6)), torch.eye(3)[None])
    r = rotation_6d(torch.randn(8, 6, dtype=torch.float64))
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(8, 3, 3), atol=1e-12, rtol=0)
    assert torch.allclose(torch.det(r), torch.ones(8, dtype=torch.float64))


def test_five_points_from_68_by_hand() -> None:
    lm = np.arange(68 * 2, dtype=np.float64).reshape(68, 2)
    five = five_points_from_68(lm)
    np.testing.assert_allclose(five[0], lm[36:42].mean(0))
    np.testing.assert_allclose(five[1], lm[42:48].mean(0))
    np.testing.assert_allclose(five[2:], lm[[30, 48, 54]])
    assert len(FIVE_POINT_LANDMARKS) == 5


def _paraboloid(n: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """A disk-shaped grid on z = 0.3 (x^2 + y^2) (crop axes), triangulated, radius 1."""
    from scipy.spatial import Delaunay

    g = np.linspace(-1, 1, n)
    xx, yy = np.meshgrid(g, g)
    keep = xx**2 + yy**2 <= 1.0
    xy = np.stack([xx[keep], yy[keep]], axis=1)
    z = 0.3 * (xy**2).sum(1)
    return np.column_stack([xy, z]), Delaunay(xy).simplices


def test_correspondence_lands_on_the_surface() -> None:
    verts, tri = _paraboloid()
    rng = np.random.default_rng(2)
    # a "template": points on the unit hemisphere (dome tip at z = -1)
    d = rng.normal(size=(300, 3))
    d[:, 2] = -np.abs(d[:, 2])
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    ids, bary = template_correspondence(verts, tri, d, margin=0.9)
    np.testing.assert_allclose(bary.sum(1), 1.0, atol=1e-6)
    assert (bary >= 0).all()
    p = (bary[:, :, None] * verts[ids]).sum(1)
    # every point lies on the paraboloid (up to the linear interpolation of a 0.05 grid)
    np.testing.assert_allclose(p[:, 2], 0.3 * (p[:, :2] ** 2).sum(1), atol=2e-3)
    # radius: the polar angle from the dome tip, scaled to 0.9 of the outline radius (1)
    rho = np.arccos(np.clip(-d[:, 2], -1, 1)) / (np.pi / 2)
    np.testing.assert_allclose(np.hypot(p[:, 0], p[:, 1]), 0.9 * rho, atol=0.03)


def test_mirror_permutation_of_a_symmetric_set() -> None:
    rng = np.random.default_rng(3)
    half = rng.normal(size=(10, 3))
    half[:, 0] = np.abs(half[:, 0]) + 0.1
    pts = np.concatenate([half, half * np.array([-1, 1, 1])])
    perm = mirror_permutation(pts)
    np.testing.assert_array_equal(perm, np.concatenate([np.arange(10, 20), np.arange(10)]))


def test_prior_of_a_tiny_cache_matches_numpy_pca(tmp_path: Path) -> None:
    from facerecon.mesh.templates import load_template
    from facerecon.model.graph import MeshHierarchy

    cache = make_tiny_cache(tmp_path / "t.h5", n=12, points=400, same_topology=True)
    template = MeshHierarchy.from_template(load_template("hemisphere")).template_vertices(1).numpy()
    from facerecon.engine.statistics import read_cache_statistics

    stats = read_cache_statistics(cache, template=template)
    faces, landmarks, fives = stats.prior_samples
    assert faces.shape == (8, template.shape[0], 3)  # the train split's samples, template topology
    prior = build_face_prior(faces, landmarks, fives, stats.correspondence, template, n_components=3)
    # the tiny caps differ only by scale and shift: after the similarity alignment every face
    # equals the mean, so the PCA has (numerically) no variance left
    assert prior.mean.shape == (template.shape[0], 3) and prior.basis.shape == (3, template.shape[0], 3)
    assert float(prior.std.max()) < 1e-4
    # the modes are orthonormal (checked against numpy)
    b = prior.basis.reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(b @ b.T, np.eye(3), atol=1e-4)
    # the reference five points are the mean of the cache's five points of the train split
    import h5py

    with h5py.File(cache, "r") as f:
        five = f["landmarks5"][:][f["split"][:] == 0]
    np.testing.assert_allclose(prior.five_ref, five.mean(0), atol=1e-6)


def test_five_point_baseline_beats_the_mean_face_on_shared_data(tmp_path: Path, shared_data: Path) -> None:
    """On real AFLW2000-3D crops the five-point pose must be much closer than the unposed mean
    face: a regression test of the fit's conventions (axes, depth origin) on real data."""
    from facerecon.data.cache import PrepareOptions, prepare_cache
    from facerecon.data.readers import list_samples
    from facerecon.engine.evaluate import EvalSettings, evaluate_cache

    src = shared_data / "aflw2000-3d"
    cache = tmp_path / "a.h5"
    refs = list_samples(src)[:12]
    prepare_cache(refs, cache, str(shared_data / "bfm-mean"), PrepareOptions(split_file=None), dataset=str(src), fmt="aflw2000", command="t")
    settings = EvalSettings(surface_samples=2000)
    five = evaluate_cache(str(cache), "all", settings, baseline="five-point").summary
    mean = evaluate_cache(str(cache), "all", settings, baseline="mean").summary
    assert five["nme"] < 0.7 * mean["nme"] and five["nme"] < 12.0
    assert five["folds"] < 0.5  # the face model's own surface is smooth


def test_remove_folds_smooths_creases_and_moves_little() -> None:
    """A sphere with a few small dents (local creases, like the lips of a sampled face): the folds
    (counted by trimesh) mostly go, and the surface moves little."""
    import trimesh

    from facerecon.model.face_prior import remove_folds

    mesh = trimesh.creation.icosphere(subdivisions=3)
    rng = np.random.default_rng(4)
    verts = mesh.vertices.copy()
    dents = rng.choice(len(verts), 60, replace=False)
    verts[dents] *= 0.85  # each dent folds the ring of faces around it
    before = (trimesh.Trimesh(verts, mesh.faces, process=False).face_adjacency_angles > np.radians(60)).mean()
    out = remove_folds(verts, mesh.faces, weight=0.1, steps=400)
    after = (trimesh.Trimesh(out, mesh.faces, process=False).face_adjacency_angles > np.radians(60)).mean()
    assert before > 0.002 and after < 0.7 * before
    assert np.linalg.norm(out - verts, axis=1).mean() < 0.01


def test_prior_samples_read_in_chunks_equal_the_whole_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The statistics' one pass gathers each training face in template topology from chunks of
    points that split samples anywhere; the result equals ``sum_k bary * points[ids]`` computed
    with numpy on each sample read whole."""
    import h5py

    from facerecon.data import validate
    from facerecon.engine import statistics
    from facerecon.mesh.templates import load_template
    from facerecon.model.graph import MeshHierarchy

    cache = make_tiny_cache(tmp_path / "t.h5", n=12, points=400, same_topology=True)
    template = MeshHierarchy.from_template(load_template("hemisphere")).template_vertices(1).numpy()
    monkeypatch.setattr(validate, "CHUNK_POINTS", 37)  # 400-point samples straddle the chunks
    monkeypatch.setattr(statistics, "_read", {})
    stats = statistics.read_cache_statistics(cache, template=template)
    ids, bary = stats.correspondence
    faces, landmarks, fives = stats.prior_samples
    with h5py.File(cache, "r") as f:
        rows = np.flatnonzero(f["split"][:] == 0)
        offsets = f["offsets"][:]
        for k, r in enumerate(rows):
            pts = f["points"][offsets[r] : offsets[r + 1]].astype(np.float64)
            expect = np.einsum("vk,vkc->vc", bary.astype(np.float64), pts[ids])
            np.testing.assert_allclose(faces[k], expect, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(landmarks, f["landmarks"][:][rows])
        np.testing.assert_array_equal(fives, f["landmarks5"][:][rows])


def test_remove_folds_gives_the_same_bits_on_every_run() -> None:
    """The prior's smoothing is part of every model-v2 checkpoint: two runs, and a run on one
    thread, give identical vertices (the gathers' backward must not add in thread order)."""
    import torch

    from facerecon.mesh.templates import load_template
    from facerecon.model.face_prior import remove_folds
    from facerecon.model.graph import MeshHierarchy

    h = MeshHierarchy.from_template(load_template("hemisphere"))
    faces = h.faces(3).numpy()
    x = h.template_vertices(3).numpy() + np.random.default_rng(0).normal(0, 3e-3, (h.num_vertices(3), 3)).astype(np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, b = remove_folds(x, faces, steps=30), remove_folds(x, faces, steps=30)
        torch.set_num_threads(1)
        c = remove_folds(x, faces, steps=30)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert np.abs(a - x).max() > 0  # it did move the vertices
    assert not torch.are_deterministic_algorithms_enabled()  # and put the global switch back


def test_similarity_2d_is_the_least_squares_similarity_of_noisy_points() -> None:
    """With noise no similarity fits exactly: the closed form must give numpy's linear least
    squares over the four parameters (a, b, tx, ty) of [[a, -b], [b, a]] p + t."""
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(5, 2))
    pts = rng.normal(size=(3, 5, 2))
    a_mat, t = similarity_2d(torch.from_numpy(pts), torch.from_numpy(ref))
    for k in range(3):
        x, y = pts[k, :, 0], pts[k, :, 1]
        one, zero = np.ones(5), np.zeros(5)
        design = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
        sol = np.linalg.lstsq(design, np.concatenate([ref[:, 0], ref[:, 1]]), rcond=None)[0]
        np.testing.assert_allclose(a_mat[k].numpy(), [[sol[0], -sol[1]], [sol[1], sol[0]]], atol=1e-10)
        np.testing.assert_allclose(t[k].numpy(), sol[2:], atol=1e-10)
