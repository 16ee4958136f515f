"""Face models: a tiny synthetic model written in every supported format loads to the same arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from facerecon.data.face_model import (
    FaceModel,
    load_face_model,
    pose_degrees,
    project_to_image,
    save_face_model,
)
from facerecon.errors import InputError
from facerecon.frames import rotation_from_euler

KS, KE = 5, 3


def savemat_v73(path: Path, variables: dict) -> Path:
    """A MATLAB v7.3 ``.mat`` as MATLAB writes one, without MATLAB: an HDF5 file behind a 512-byte
    header (text, subsystem offset, version 0x0200, endian ``IM``), each array stored with its axes
    reversed (MATLAB is column-major), a struct as a group of its fields."""
    import h5py

    def put(group, name: str, value) -> None:
        if isinstance(value, dict):
            sub = group.create_group(name)
            for k, v in value.items():
                put(sub, k, v)
        else:
            group.create_dataset(name, data=np.atleast_2d(np.asarray(value)).T)

    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            put(f, name, value)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")
    return path


def tiny_model_arrays(n_side: int = 16, seed: int = 0) -> dict:
    """A dome-shaped grid 'face' (units um, ~150 mm wide, facing +z) with random small bases.

    Returns mean (N, 3), shape (3N, KS), exp (3N, KE), tri (T, 3) 0-based (counter-clockwise seen
    from +z, so outward normals point to +z), landmark ids (68,).
    """
    rng = np.random.default_rng(seed)
    g = np.linspace(-75000.0, 75000.0, n_side)
    x, y = np.meshgrid(g, g)
    z = 90000.0 - (x**2 + y**2) / 250000.0
    mean = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    tri = []
    for i in range(n_side - 1):
        for j in range(n_side - 1):
            a, b, c, d = i * n_side + j, i * n_side + j + 1, (i + 1) * n_side + j, (i + 1) * n_side + j + 1
            tri += [(a, b, d), (a, d, c)]  # x grows with j, y with i: counter-clockwise from +z
    centre = [i * n_side + j for i in range(2, n_side - 2) for j in range(2, n_side - 2)]
    lm = np.array(rng.choice(centre, 68, replace=False), dtype=np.int64)
    return {
        "mean": mean.astype(np.float32),
        "shape": (rng.normal(size=(3 * mean.shape[0], KS)) * 500).astype(np.float32),
        "exp": (rng.normal(size=(3 * mean.shape[0], KE)) * 300).astype(np.float32),
        "tri": np.array(tri, dtype=np.int64),
        "lm": lm,
    }


def write_reduced(folder: Path, arr: dict) -> Path:
    """The reduced 3DDFA layout; u_shp + u_exp = mean."""
    folder.mkdir(parents=True, exist_ok=True)
    flat = arr["mean"].reshape(-1, 1)
    u_exp = np.full_like(flat, 7.0)
    np.save(folder / "u_shp.npy", (flat - u_exp).astype(np.float32))
    np.save(folder / "u_exp.npy", u_exp.astype(np.float32))
    np.save(folder / "w_shp_sim.npy", arr["shape"])
    np.save(folder / "w_exp_sim.npy", arr["exp"])
    np.save(folder / "keypoints_sim.npy", (3 * arr["lm"][:, None] + np.arange(3)).reshape(-1))
    scipy.io.savemat(folder / "tri.mat", {"tri": (arr["tri"].T + 1).astype(np.uint16)})
    return folder


def write_face3d(path: Path, arr: dict, v73: bool = False) -> Path:
    flat = arr["mean"].reshape(-1, 1).astype(np.float64)
    model = {
        "shapeMU": flat - 3.0, "shapePC": arr["shape"].astype(np.float64), "shapeEV": np.ones((KS, 1)),
        "expMU": np.full_like(flat, 3.0), "expPC": arr["exp"].astype(np.float64), "expEV": np.ones((KE, 1)),
        "tri": (arr["tri"].T + 1).astype(np.float64), "kpt_ind": (arr["lm"][None, :] + 1).astype(np.float64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    (savemat_v73 if v73 else scipy.io.savemat)(path, {"model": model})
    return path


def write_bfm2009(folder: Path, arr: dict) -> Path:
    """01_MorphableModel.mat with 10 extra vertices (and triangles) that model_info.mat's trimIndex cuts."""
    folder.mkdir(parents=True, exist_ok=True)
    n = arr["mean"].shape[0]
    rng = np.random.default_rng(1)
    # full vertex order: 5 extra vertices, then the kept ones, then 5 more extra
    full_ids = np.concatenate([np.arange(5), 5 + np.arange(n), n + 5 + np.arange(5)])
    keep = full_ids[5 : 5 + n]
    full_mean = np.zeros((n + 10, 3))
    full_mean[keep] = arr["mean"].astype(np.float64) - 2.0
    full_mean[:5] = rng.normal(size=(5, 3)) * 1e5
    full_mean[n + 5 :] = rng.normal(size=(5, 3)) * 1e5
    full_pc = rng.normal(size=(3 * (n + 10), KS))
    rows = (3 * keep[:, None] + np.arange(3)).reshape(-1)
    full_pc[rows] = arr["shape"]
    tl = np.concatenate([keep[arr["tri"]], np.array([[0, 1, 2], [n + 5, n + 6, 7], [3, 8, n + 9]])])
    scipy.io.savemat(folder / "01_MorphableModel.mat", {
        "shapeMU": full_mean.reshape(-1, 1), "shapePC": full_pc, "shapeEV": np.ones((KS, 1)),
        "tl": (tl + 1).astype(np.float64),
    })
    scipy.io.savemat(folder / "Model_Expression.mat", {
        "mu_exp": np.full((3 * n, 1), 2.0), "w_exp": arr["exp"].astype(np.float64), "sigma_exp": np.ones((KE, 1)),
    })
    scipy.io.savemat(folder / "model_info.mat", {"trimIndex": (keep + 1).reshape(-1, 1).astype(np.float64)})
    (folder / "landmark_ids.txt").write_text("\n".join(str(i) for i in arr["lm"]) + "\n")
    return folder


def write_model_shape(folder: Path, arr: dict, v73: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    flat = arr["mean"].reshape(-1, 1).astype(np.float64)
    save = savemat_v73 if v73 else scipy.io.savemat
    save(folder / "Model_Shape.mat", {
        "mu_shape": flat - 1.0, "w": arr["shape"].astype(np.float64), "tri": (arr["tri"].T + 1).astype(np.float64),
        "keypoints": (arr["lm"][None, :] + 1).astype(np.float64),
    })
    save(folder / "Model_Expression.mat", {"mu_exp": np.ones((flat.shape[0], 1)), "w_exp": arr["exp"].astype(np.float64)})
    return folder


def assert_same_model(m: FaceModel, arr: dict) -> None:
    np.testing.assert_allclose(m.mean, arr["mean"], atol=0.02)
    np.testing.assert_allclose(m.shape_basis, arr["shape"], rtol=1e-6)
    np.testing.assert_allclose(m.exp_basis, arr["exp"], rtol=1e-6)
    # same triangles (as sets of rows; the cut may only reorder nothing here)
    assert m.triangles.dtype == np.int64 and m.triangles.shape == arr["tri"].shape
    np.testing.assert_array_equal(m.triangles, arr["tri"])
    np.testing.assert_array_equal(m.landmark_ids, arr["lm"])
    assert m.units == "um" and len(m.sha256) == 64


@pytest.mark.parametrize("layout", ["reduced", "face3d", "bfm2009", "model_shape", "face3d_v73", "model_shape_v73"])
def test_every_format_loads_to_the_same_arrays(tmp_path: Path, layout: str) -> None:
    arr = tiny_model_arrays()
    target = {
        "reduced": lambda: write_reduced(tmp_path / "reduced", arr),
        "face3d": lambda: write_face3d(tmp_path / "face3d" / "BFM.mat", arr),
        "bfm2009": lambda: write_bfm2009(tmp_path / "bfm", arr),
        "model_shape": lambda: write_model_shape(tmp_path / "ms", arr),
        # the same files saved by MATLAB with -v7.3 (HDF5)
        "face3d_v73": lambda: write_face3d(tmp_path / "face3d" / "BFM.mat", arr, v73=True),
        "model_shape_v73": lambda: write_model_shape(tmp_path / "ms", arr, v73=True),
    }[layout]()
    model = load_face_model(target)
    assert_same_model(model, arr)
    # the converted .npz gives exactly the same arrays and keeps the fingerprint
    npz = save_face_model(model, tmp_path / "conv.npz")
    again = load_face_model(npz)
    for name in ("mean", "shape_basis", "exp_basis", "triangles", "landmark_ids"):
        np.testing.assert_array_equal(getattr(again, name), getattr(model, name))
    assert again.sha256 == model.sha256 and again.name == model.name


def test_bfm2009_file_path_and_folder_agree(tmp_path: Path) -> None:
    arr = tiny_model_arrays()
    folder = write_bfm2009(tmp_path / "bfm", arr)
    a, b = load_face_model(folder), load_face_model(folder / "01_MorphableModel.mat")
    np.testing.assert_array_equal(a.mean, b.mean)
    assert a.sha256 == b.sha256


def test_vertices_truncate_and_pad_parameters(tmp_path: Path) -> None:
    arr = tiny_model_arrays()
    m = load_face_model(write_reduced(tmp_path / "r", arr))
    rng = np.random.default_rng(3)
    alpha, beta = rng.normal(size=199) * 2, rng.normal(size=29)
    ref = arr["mean"].astype(np.float64).reshape(-1) + arr["shape"].astype(np.float64) @ alpha[:KS] + arr["exp"].astype(np.float64) @ beta[:KE]
    np.testing.assert_allclose(m.vertices(alpha, beta), ref.reshape(-1, 3), atol=0.05)
    np.testing.assert_allclose(m.landmark_vertices(alpha, beta), ref.reshape(-1, 3)[arr["lm"]], atol=0.05)
    short = m.vertices(alpha[:2], beta[:1])  # missing coefficients are zero
    ref2 = arr["mean"].reshape(-1) + arr["shape"][:, :2] @ alpha[:2] + arr["exp"][:, :1] @ beta[:1]
    np.testing.assert_allclose(short, ref2.reshape(-1, 3), atol=0.05)


def test_missing_and_unknown_layouts_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_face_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no face model layout recognised"):
        load_face_model(tmp_path / "empty")
    arr = tiny_model_arrays()
    folder = write_bfm2009(tmp_path / "bfm", arr)
    (folder / "model_info.mat").unlink()
    with pytest.raises(InputError, match="trimIndex"):
        load_face_model(folder)
    folder2 = write_model_shape(tmp_path / "ms", arr)
    (folder2 / "Model_Expression.mat").unlink()
    with pytest.raises(InputError, match="Model_Expression.mat"):
        load_face_model(folder2)
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(InputError, match="bad.mat"):
        load_face_model(bad)


def test_rotation_matches_the_published_formula() -> None:
    # Rx(a) = [[1,0,0],[0,c,s],[0,-s,c]] etc. (data README); check against scipy's extrinsic rotations
    from scipy.spatial.transform import Rotation

    pitch, yaw, roll = 0.3, -0.7, 0.2
    r = rotation_from_euler(pitch, yaw, roll)
    # the README's matrices are the transposes of the usual active rotations
    ref = (Rotation.from_euler("x", pitch).as_matrix().T @ Rotation.from_euler("y", yaw).as_matrix().T
           @ Rotation.from_euler("z", roll).as_matrix().T)
    np.testing.assert_allclose(r, ref, atol=1e-12)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(pose_degrees(np.array([pitch, yaw, roll, 0, 0, 0, 1])), np.degrees([yaw, pitch, roll]), rtol=1e-6)


def test_projection_is_the_1_based_recipe_minus_half_a_pixel() -> None:
    v = np.array([[1000.0, 2000.0, 3000.0], [-500.0, 0.0, 100.0]])
    pose = np.array([0.1, 0.2, -0.1, 100.0, 120.0, 5.0, 0.002])
    r = rotation_from_euler(*pose[:3])
    p = pose[6] * v @ r.T + pose[3:6]
    out = project_to_image(v, pose, image_height=450)
    np.testing.assert_allclose(out[:, 0], p[:, 0] - 0.5, atol=1e-4)
    np.testing.assert_allclose(out[:, 1], (450 + 1 - p[:, 1]) - 0.5, atol=1e-4)  # 1-based y, then 0-based
    np.testing.assert_allclose(out[:, 2], -p[:, 2], atol=1e-4)


def test_shared_reduced_model_loads(shared_data: Path) -> None:
    m = load_face_model(shared_data / "bfm-mean")
    assert m.n_vertices == 53215 and m.triangles.shape == (105840, 3)
    np.testing.assert_array_equal(m.landmark_ids[:5], [21873, 22149, 21653, 21036, 43236])
    width = m.mean[:, 0].max() - m.mean[:, 0].min()
    assert 120_000 < width < 250_000  # micrometres: a face is ~15-20 cm wide
