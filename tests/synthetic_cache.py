"""A tiny synthetic cache in the schema of docs/formats.md, for training/eval/predict tests.

Each sample is a spherical cap ("face") whose centre and radius vary from sample to sample, and
the image shows a disk at the same place, so a network can learn the mapping. Landmarks are 68
fixed points of the cap; poses are zero. Written directly with h5py, independent of
``facerecon prepare``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def cap_points(n: int, centre: tuple[float, float], radius: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) points and outward normals of a spherical cap bulging towards the camera (-z)."""
    u = rng.uniform(0, 1, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    theta = np.arccos(1 - u * (1 - np.cos(np.radians(70))))  # polar angle up to 70 degrees
    d = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), -np.cos(theta)], axis=1)
    pts = d * radius + np.array([centre[0], centre[1], 0.0])
    return pts.astype(np.float32), d.astype(np.float32)


def make_tiny_cache(
    path: Path,
    n: int = 10,
    points: int = 800,
    splits: tuple[int, int, int] | None = None,
    seed: int = 0,
    size: int = 224,
    same_topology: bool = False,
) -> Path:
    """Write the cache and return its path.

    Args:
        n: samples; ``splits`` (train, val, test) counts default to n-4, 2, 2.
        points: points per sample (each sample gets ``points`` when ``same_topology`` else
            ``points + 7 * i`` for ragged clouds).
        same_topology: every sample the same number of points in corresponding order (a fixed
            direction set scaled per sample), as 3DMM ground truth is; needed by the mean baseline.
    """
    import h5py

    rng = np.random.default_rng(seed)
    splits = splits or (n - 4, 2, 2)
    split = np.concatenate([np.full(c, k, dtype=np.uint8) for k, c in enumerate(splits)])
    assert split.shape[0] == n
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    all_pts, all_nrm, offsets, landmarks = [], [], [0], []
    yy, xx = np.mgrid[0:size, 0:size]
    base_rng = np.random.default_rng(seed + 1)
    base_pts, base_nrm = cap_points(points, (0.0, 0.0), 1.0, base_rng)
    lm_dirs = base_pts[:68].copy()
    for i in range(n):
        cx, cy = rng.uniform(-0.15, 0.15, 2)
        r = rng.uniform(0.55, 0.8)
        if same_topology:
            pts = base_pts * r + np.array([cx, cy, 0.0], dtype=np.float32)
            nrm = base_nrm
        else:
            pts, nrm = cap_points(points + 7 * i, (cx, cy), r, rng)
        px_c = ((cx + 1) / 2 * size, (cy + 1) / 2 * size)
        disk = (xx + 0.5 - px_c[0]) ** 2 + (yy + 0.5 - px_c[1]) ** 2 < (r * size / 2) ** 2
        img = np.full((size, size, 3), 30, dtype=np.uint8)
        img[disk] = (200, 160, 120)
        images[i] = img
        all_pts.append(pts)
        all_nrm.append(nrm)
        offsets.append(offsets[-1] + pts.shape[0])
        landmarks.append(lm_dirs * r + np.array([cx, cy, 0.0], dtype=np.float32))
    pts = np.concatenate(all_pts)
    nrm = np.concatenate(all_nrm)
    regions = np.zeros(pts.shape[0], dtype=np.uint8)
    regions[::3] = 1
    regions[::5] = 2
    path = Path(path)
    with h5py.File(path, "w") as f:
        f.attrs["schema_version"] = 2
        f.attrs["units"] = "crop"
        f.attrs["crop_size"] = size
        f.create_dataset("images", data=images, chunks=(1, size, size, 3))
        f.create_dataset("offsets", data=np.asarray(offsets, dtype=np.int64))
        f.create_dataset("points", data=pts)
        f.create_dataset("normals", data=nrm.astype(np.float16))
        f.create_dataset("regions", data=regions)
        f.create_dataset("colors", data=np.full((pts.shape[0], 3), 128, dtype=np.uint8))
        f.create_dataset("landmarks", data=np.stack(landmarks).astype(np.float32))
        f.create_dataset("boxes", data=np.tile(np.array([[0.0, 0.0, float(size)]]), (n, 1)))
        f.create_dataset("image_sizes", data=np.tile(np.array([[size, size]], dtype=np.int32), (n, 1)))
        f.create_dataset("probabilities", data=np.ones(n, dtype=np.float32))
        f.create_dataset("fallback", data=np.zeros(n, dtype=np.uint8))
        f.create_dataset("pose", data=np.zeros((n, 3), dtype=np.float32))
        f.create_dataset("mm_per_unit", data=np.full(n, 100.0, dtype=np.float32))
        f.create_dataset("ids", data=np.array([f"tiny/{i:03d}" for i in range(n)], dtype=h5py.string_dtype()))
        f.create_dataset("split", data=split)
        lms = np.stack(landmarks).astype(np.float32)
        five = np.stack([lms[:, list(ids), :2].mean(1) for ids in _FIVE]).transpose(1, 0, 2)
        f.create_dataset("landmarks5", data=five.astype(np.float32))
        f.attrs["points_in_model_order"] = bool(same_topology)
        if same_topology:
            _write_face_model(f, base_pts)
    return path


def _write_face_model(f, base_pts: np.ndarray) -> None:
    """The "face model" of a same-topology cache: the unit cap, stored in model axes (y up, z
    toward the camera), with 68 landmark ids."""
    from scipy.spatial import Delaunay

    fm = f.create_group("face_model")
    fm.create_dataset("mean", data=(base_pts * np.array([1.0, -1.0, -1.0])).astype(np.float32))
    fm.create_dataset("triangles", data=Delaunay(base_pts[:, :2]).simplices.astype(np.int32))
    fm.create_dataset("landmark_ids", data=np.arange(68, dtype=np.int32))


#: iBUG-68 ids of MTCNN's five points (eye centres, nose tip, mouth corners).
_FIVE = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))
