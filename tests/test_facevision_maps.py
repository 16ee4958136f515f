"""Depth and correspondence (PNCC) maps: hand-worked planes, the side file of a cache (resumed
after an interruption and after a killed writer), and landmarks and pose found in a PNCC map of
a known mesh."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_subdir
from facerecon.data.facevision_maps import (
    FOREGROUND_CODE,
    MIN_CODE,
    code_to_depth,
    depth_to_code,
    landmarks_from_maps,
    make_maps_file,
    maps_path,
    read_maps,
    reference_codes,
    render_maps,
)
from facerecon.errors import DependencyError, InputError
from facerecon.frames import head_pose, rotation_from_euler
from synthetic_cache import make_tiny_cache

ROOT = Path(__file__).resolve().parents[1]
SQUARE = np.array([[0, 1, 2], [0, 2, 3]])


@pytest.fixture(scope="module", autouse=True)
def _renderer() -> None:
    try:
        render_maps(np.eye(3), np.array([[0, 1, 2]]), np.zeros((3, 3)), 4)
    except DependencyError as exc:
        pytest.skip(f"no OpenGL renderer here: {exc}")


def _centres(size: int) -> np.ndarray:
    """Crop units of the map's pixel centres along one axis."""
    return 2.0 * (np.arange(size) + 0.5) / size - 1.0


def test_depth_code_round_trip_and_range() -> None:
    z = np.array([-1.0, -0.3, 0.0, 0.5, 0.9, 1.5])
    code = depth_to_code(z)
    assert code.tolist() == pytest.approx([1.0, 0.65, 0.5, 0.25, MIN_CODE, MIN_CODE])
    assert code_to_depth(code[:5]) == pytest.approx(z[:5], abs=1e-6)


def test_a_tilted_plane_gives_its_hand_worked_depth_and_codes() -> None:
    size = 16
    xy = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    z = 0.1 + 0.2 * xy[:, 0]
    codes = np.stack([(xy[:, 0] + 1) / 2, (xy[:, 1] + 1) / 2, np.full(4, 0.3)], axis=1)
    depth, pncc = render_maps(np.c_[xy, z], SQUARE, codes, size)
    c = _centres(size)
    inside = (np.abs(c) < 0.5)[:, None] & (np.abs(c) < 0.5)[None, :]  # (row, column)
    expected = np.where(inside, (1.0 - (0.1 + 0.2 * c[None, :])) / 2.0, 0.0)
    assert depth == pytest.approx(expected, abs=1e-5)
    assert pncc[..., 0] == pytest.approx(np.where(inside, (c[None, :] + 1) / 2, 0.0), abs=1e-5)
    assert pncc[..., 1] == pytest.approx(np.where(inside, (c[:, None] + 1) / 2, 0.0), abs=1e-5)
    assert pncc[..., 2] == pytest.approx(np.where(inside, 0.3, 0.0), abs=1e-5)


def test_the_nearer_surface_wins() -> None:
    far = np.array([[-0.9, -0.9, 0.4], [0.9, -0.9, 0.4], [0.9, 0.9, 0.4], [-0.9, 0.9, 0.4]])
    near = far * [0.5, 0.5, 1.0] - [0.0, 0.0, 0.6]  # z = -0.2, the centre half
    points = np.concatenate([far, near])
    depth, pncc = render_maps(points, np.concatenate([SQUARE, SQUARE + 4]), np.repeat([[0.1, 0.1, 0.1], [0.9, 0.9, 0.9]], 4, 0), 8)
    assert depth[4, 4] == pytest.approx(0.6) and depth[0, 0] == pytest.approx(0.3)
    assert pncc[4, 4] == pytest.approx([0.9] * 3) and pncc[0, 0] == pytest.approx([0.1] * 3)


def test_reference_codes_use_crop_axes() -> None:
    mean = np.array([[0.0, 0.0, 0.0], [2.0, 4.0, 6.0], [1.0, 1.0, 3.0]])  # model axes: y up, z toward the camera
    assert reference_codes(mean) == pytest.approx(np.array([[0, 1, 1], [1, 0, 0], [0.5, 0.75, 0.5]]))


def _made_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        return f["depth"][:], f["pncc"][:]


def test_side_file_of_a_cache(tmp_path: Path) -> None:
    import h5py

    cache = make_tiny_cache(tmp_path / "c.h5", n=5, points=600, same_topology=True)
    seen: list[tuple[int, int]] = []
    out = make_maps_file(cache, size=32, on_progress=lambda a, b: seen.append((a, b)), block=2)
    assert out == maps_path(cache) == tmp_path / "c.maps.h5" and seen == [(2, 5), (4, 5), (5, 5)]
    assert not out.with_name(out.name + ".partial").exists()
    depth, pncc, lm_codes = read_maps(out, [0, 4])
    with h5py.File(cache, "r") as f:
        for k, row in enumerate([0, 4]):
            pts = f["points"][f["offsets"][row] : f["offsets"][row + 1]]
            centre = pts.mean(0)[:2]  # on the cap's axis
            u, v = ((centre + 1) * 16).astype(int)
            apex = pts[:, 2].min()  # the nearest point of the cap, on its axis
            assert depth[k, v, u] == pytest.approx(depth_to_code(apex), abs=0.01)
            assert depth[k, 0, 0] == 0.0 and (pncc[k][depth[k] == 0] == 0).all()
        ids = f["face_model/landmark_ids"][:]
        assert lm_codes == pytest.approx(reference_codes(f["face_model/mean"][:])[ids])
    # made once: a second call keeps the file
    mtime = out.stat().st_mtime_ns
    assert make_maps_file(cache, size=32) == out and out.stat().st_mtime_ns == mtime


def test_interrupted_runs_resume_to_the_same_file(tmp_path: Path) -> None:
    cache = make_tiny_cache(tmp_path / "c.h5", n=5, points=600, same_topology=True)
    whole = make_maps_file(cache, tmp_path / "whole.h5", size=32, block=2)

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        make_maps_file(cache, out, size=32, on_progress=stop, block=2)
    assert not out.exists() and out.with_name("resumed.h5.partial").exists()
    # a writer killed outright (its SWMR flag left set) after the second block
    script = (
        "import os, sys\nfrom facerecon.data.facevision_maps import make_maps_file\n"
        "def die(done, total):\n    if done >= 4: os._exit(3)\n"
        f"make_maps_file({str(cache)!r}, {str(out)!r}, size=32, on_progress=die, block=2)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120, check=False)
    assert proc.returncode == 3 and not out.exists()
    seen: list[int] = []
    make_maps_file(cache, out, size=32, on_progress=lambda a, b: seen.append(a), block=2)
    assert seen == [5]  # only the last row was left
    for a, b in zip(_made_rows(whole), _made_rows(out)):
        assert np.array_equal(a, b)


def test_a_full_disk_stops_before_writing_and_the_rerun_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from collections import namedtuple

    from facerecon.errors import FaceReconError

    cache = make_tiny_cache(tmp_path / "c.h5", n=5, points=600, same_topology=True)
    real = shutil.disk_usage
    calls = []

    def usage(path: object) -> object:
        calls.append(path)
        full = namedtuple("usage", "total used free")(1 << 30, 1 << 30, 1000)
        return full if len(calls) == 2 else real(path)  # the second block finds the disk full

    monkeypatch.setattr(shutil, "disk_usage", usage)
    with pytest.raises(FaceReconError, match="2 rows are kept"):
        make_maps_file(cache, size=32, block=2)
    monkeypatch.setattr(shutil, "disk_usage", real)
    seen: list[int] = []
    make_maps_file(cache, size=32, block=2, on_progress=lambda a, b: seen.append(a))
    assert seen == [4, 5]


def test_scan_caches_have_no_maps(tmp_path: Path) -> None:
    cache = make_tiny_cache(tmp_path / "scan.h5", n=5, points=300, same_topology=False)
    with pytest.raises(InputError, match="face model's vertices"):
        make_maps_file(cache)


_FLIP = np.diag([1.0, -1.0, -1.0])


def _posed(reference: np.ndarray, yaw: float, pitch: float, roll: float, scale: float, shift: np.ndarray) -> np.ndarray:
    """``reference`` (our axes) turned by a dataset pose (degrees), scaled and shifted."""
    rot = _FLIP @ rotation_from_euler(math.radians(pitch), math.radians(yaw), math.radians(roll)) @ _FLIP
    return scale * reference @ rot.T + shift


def _grid_face(n: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """A smooth face-like surface in crop axes (an ellipsoid cap, nose toward -z) and its grid triangles."""
    from scipy.spatial import Delaunay

    g = np.linspace(-1.0, 1.0, n)
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    z = -0.6 * np.sqrt(np.clip(1.2 - x**2 * 0.8 - y**2 * 0.5, 0.0, None))
    return np.stack([x, y, z], axis=1), Delaunay(np.stack([x, y], axis=1)).simplices


def test_landmarks_and_pose_from_the_pncc_map_of_a_known_mesh() -> None:
    mean, faces = _grid_face()
    rng = np.random.default_rng(0)
    ids = rng.choice(np.flatnonzero((np.abs(mean[:, 0]) < 0.6) & (np.abs(mean[:, 1]) < 0.7)), 68, replace=False)
    codes = reference_codes(mean * [1.0, -1.0, -1.0])  # stored as a model's mean: y up, z toward the camera
    posed = _posed(mean, 20.0, -10.0, 5.0, 0.55, np.array([0.05, -0.03, 0.0]))
    size = 128
    depth, pncc = render_maps(posed, faces, codes, size)
    found = landmarks_from_maps(depth, pncc, codes[ids])
    expected_px = (posed[ids, :2] + 1.0) * size / 2
    err_px = np.linalg.norm((found[:, :2] + 1.0) * size / 2 - expected_px, axis=1)
    assert err_px.max() < 1.0 and err_px.mean() < 0.35
    assert found[:, 2] == pytest.approx(posed[ids, 2], abs=0.02)
    yaw, pitch, roll = head_pose(found, mean[ids])
    assert (yaw, pitch, roll) == pytest.approx((20.0, -10.0, 5.0), abs=1.5)


def test_landmarks_without_subpixel_are_pixel_centres() -> None:
    mean, faces = _grid_face(21)
    codes = reference_codes(mean * [1.0, -1.0, -1.0])
    depth, pncc = render_maps(_posed(mean, 0, 0, 0, 0.5, np.zeros(3)), faces, codes, 32)
    found = landmarks_from_maps(depth, pncc, codes[[200, 220]], subpixel=False)
    px = (found[:, :2] + 1.0) * 16
    assert np.allclose(px - np.floor(px), 0.5)


def test_landmarks_on_the_mean_bfm_face(shared_data: Path) -> None:
    """The reduced BFM's mean face at a 25 degree yaw: the landmarks on surface facing the camera
    within 1 px (but the inner lips' crease); where the surface grazes the view (the jaw's contour)
    neighbouring pixels' codes are far apart and the nearest code can lie several px away."""
    from scipy.io import loadmat

    from facerecon.data.ground_truth import vertex_normals
    from facerecon.render import render, vertex_visibility

    bfm = shared_subdir("bfm-mean")
    mean_model = (np.load(bfm / "u_shp.npy") + np.load(bfm / "u_exp.npy")).reshape(-1, 3).astype(np.float64)
    faces = loadmat(bfm / "tri.mat")["tri"].T.astype(np.int64) - 1
    ids = np.load(bfm / "keypoints_sim.npy")[0::3] // 3
    crop_axes = mean_model * [1.0, -1.0, -1.0]
    centred = (crop_axes - crop_axes[ids].mean(0)) / np.ptp(crop_axes[:, 0]) * 1.6
    posed = _posed(centred, 25.0, 5.0, 0.0, 1.0, np.zeros(3))
    codes = reference_codes(mean_model)
    size = 128
    depth, pncc = render_maps(posed, faces, codes, size)
    px = np.c_[(posed[:, :2] + 1.0) * size / 2, posed[:, 2]]
    seen = vertex_visibility(render(px, faces, (size, size)), px, tolerance=0.5)[ids]
    normals = vertex_normals(posed, faces)
    facing = seen & (normals[ids, 2] * np.sign(-normals[:, 2].mean()) < -0.3)
    found = landmarks_from_maps(depth, pncc, codes[ids])
    err_px = np.linalg.norm((found[:, :2] + 1.0) * size / 2 - px[ids, :2], axis=1)
    assert facing.sum() >= 45 and np.median(err_px[facing]) < 0.3
    assert (err_px[facing] < 1.0).mean() > 0.95 and err_px[facing].max() < 1.5
    assert head_pose(found[facing], centred[ids][facing])[0] == pytest.approx(25.0, abs=2.0)


def test_no_face_no_landmarks() -> None:
    with pytest.raises(InputError, match="no face pixel"):
        landmarks_from_maps(np.zeros((8, 8)), np.zeros((8, 8, 3)), np.full((68, 3), 0.5))
    assert FOREGROUND_CODE < MIN_CODE


def test_a_mesh_made_from_the_depth_map_lies_on_the_rendered_surface(tmp_path: Path) -> None:
    """Round trip through the photo frame: the tiny cache's spherical caps -> depth map -> mesh."""
    import h5py

    from facerecon.frames import image_to_crop
    from facerecon.mesh.from_depth import RefineOptions, synthesize_mesh

    cache = make_tiny_cache(tmp_path / "c.h5", n=5, points=1500, same_topology=True)
    with h5py.File(cache, "r") as f:
        pts = f["points"][f["offsets"][1] : f["offsets"][2]].astype(np.float64)
        box = f["boxes"][1]
        codes = reference_codes(f["face_model/mean"][:])
        tri = f["face_model/triangles"][:]
    depth, _ = render_maps(pts, tri, codes, 64)
    stages = synthesize_mesh(depth, box, options=RefineOptions(smooth_iterations=0))
    back = image_to_crop(stages.cleaned.vertices, box).astype(np.float64)
    radius = np.ptp(pts[:, 0]) / 2 / np.sin(np.radians(70))  # the caps span 70 degrees from their axis
    centre = np.array([pts[:, 0].min() + np.ptp(pts[:, 0]) / 2, pts[:, 1].min() + np.ptp(pts[:, 1]) / 2, 0.0])
    off_sphere = np.abs(np.linalg.norm(back - centre, axis=1) - radius)
    assert np.median(off_sphere) < 0.005 and off_sphere.max() < 0.05
    assert len(stages.cleaned.vertices) == int((depth > 0).sum())


def test_a_few_training_steps_on_a_tiny_cache_and_a_mesh_from_the_result(tmp_path: Path) -> None:
    """Cache -> maps side file -> loader -> a few GAN steps -> the generator's maps -> a mesh and landmarks."""
    import torch

    from facerecon.data.facevision_maps import MapsDataset
    from facerecon.mesh.from_depth import synthesize_mesh
    from facerecon.model.facevision import FaceVisionGAN, network_input, train_step

    cache = make_tiny_cache(tmp_path / "c.h5", n=8, points=600, same_topology=True)
    with pytest.raises(InputError, match="make them"):
        MapsDataset(cache)
    make_maps_file(cache, size=64)
    data = MapsDataset(cache, split="train")
    assert len(data) == 4 and data[0]["depth"].shape == (1, 64, 64) and data[0]["pncc"].shape == (3, 64, 64)
    loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=False)
    torch.manual_seed(0)
    gan = FaceVisionGAN(channels=8, levels=3, disc_channels=4)
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=5e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([p for d in gan.discriminators() for p in d.parameters()], lr=2e-4, betas=(0.5, 0.999))
    history = []
    for _ in range(4):
        for batch in loader:
            images = network_input(batch["image"], 64)
            history.append(train_step(gan, images, batch["depth"], batch["pncc"], opt_g, opt_d))
    assert history[-1]["depth_l1"] < history[0]["depth_l1"]
    gan.eval()
    with torch.inference_mode():
        depth, pncc = gan.generator(network_input(torch.from_numpy(data[0]["image"][None]), 64))
    stages = synthesize_mesh(depth[0, 0].numpy(), (0.0, 0.0, 224.0), data[0]["image"])
    assert len(stages.smoothed.faces) > 0 and np.isfinite(stages.detailed.vertices).all()
    _, _, codes = read_maps(maps_path(cache), [0])
    assert np.isfinite(landmarks_from_maps(depth[0, 0].numpy(), pncc[0].permute(1, 2, 0).numpy(), codes)).all()
