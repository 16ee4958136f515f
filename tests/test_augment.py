"""Augmentation: every field of a sample moves with the image (checked on the pixels), flips
re-order left and right, draws are seeded."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from facerecon.data.augment import (
    AugmentSettings,
    Transform2D,
    apply_geometry,
    apply_normals,
    flip_landmarks,
    warp_image,
)
from facerecon.data.readers import FLIP_PERMUTATION_68
from synthetic_cache import make_tiny_cache

GEOMETRY_ONLY = AugmentSettings(colour=0.0, grey=0.0, blur=0.0, noise=0.0, occlusion=0.0, five_noise=0.0, flip=0.5)


def _to_px(xy: np.ndarray, size: int) -> np.ndarray:
    """Crop units -> pixel-centre coordinates (docs/conventions.md)."""
    return (np.asarray(xy) + 1.0) * size / 2.0 - 0.5


def _blob_centroids(image: np.ndarray, labels: list[tuple[int, int, int]]) -> list[np.ndarray]:
    out = []
    for colour in labels:
        mask = np.all(np.abs(image.astype(int) - np.array(colour)) < 60, axis=2)
        ys, xs = np.nonzero(mask)
        out.append(np.array([xs.mean(), ys.mean()]))
    return out


@pytest.mark.parametrize("flip", [False, True])
def test_points_follow_the_warped_image(flip: bool) -> None:
    import cv2

    size = 224
    pts = np.array([[-0.4, -0.3], [0.35, -0.25], [0.0, 0.1], [-0.2, 0.45]])
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    img = np.zeros((size, size, 3), np.uint8)
    for p, c in zip(_to_px(pts, size), colours):
        cv2.circle(img, (int(round(p[0] * 16)), int(round(p[1] * 16))), 6 * 16, c, -1, lineType=cv2.LINE_AA, shift=4)
    tf = Transform2D(flip=flip, angle=math.radians(25), scale=1.08, shift=np.array([0.05, -0.04]))
    warped = warp_image(tf, img)
    expect = _to_px(apply_geometry(tf, pts), size)
    found = _blob_centroids(warped, colours)
    for e, f in zip(expect, found):
        np.testing.assert_allclose(f, e, atol=0.5)


def test_geometry_by_hand() -> None:
    tf = Transform2D(flip=True, angle=math.pi / 2, scale=2.0, shift=np.array([0.1, 0.0]))
    # flip: (x, y) -> (-x, y); rotate 90 deg: (x, y) -> (-y, x); scale 2; shift
    out = apply_geometry(tf, np.array([[0.5, 0.25, 0.3]]))
    np.testing.assert_allclose(out, [[2 * -0.25 + 0.1, 2 * -0.5, 0.6]], atol=1e-6)
    n = apply_normals(tf, np.array([[1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(n, [[0.0, -1.0, 0.0]], atol=1e-6)


def test_flip_permutations_are_involutions() -> None:
    perm = np.asarray(FLIP_PERMUTATION_68)
    np.testing.assert_array_equal(perm[perm], np.arange(68))
    five = np.arange(10.0).reshape(5, 2)
    np.testing.assert_array_equal(flip_landmarks(flip_landmarks(five, five=True), five=True), five)
    assert flip_landmarks(five, five=True)[0].tolist() == five[1].tolist()  # the eyes swap


def _textured_cache(tmp_path: Path) -> Path:
    """The tiny cache with a smooth random texture, so pixels identify places."""
    import cv2

    cache = make_tiny_cache(tmp_path / "t.h5", n=6, points=400, same_topology=True)
    rng = np.random.default_rng(5)
    with h5py.File(cache, "r+") as f:
        for i in range(f["images"].shape[0]):
            noise = rng.uniform(0, 255, size=(28, 28, 3)).astype(np.float32)
            f["images"][i] = np.clip(cv2.resize(noise, (224, 224), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    return cache


def _sample(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """(3, H, W), (K, 2) crop units -> (K, 3) bilinear samples."""
    grid = xy.float().view(1, 1, -1, 2)
    return torch.nn.functional.grid_sample(image[None].float(), grid, align_corners=False)[0, :, 0].T


def test_augmented_landmarks_land_on_the_same_image_features(tmp_path: Path) -> None:
    """The image sampled at an augmented sample's landmarks equals the un-augmented image sampled
    at the matching original landmarks (with the 68-point permutation on flips)."""
    from facerecon.data.dataset import FaceCacheDataset

    cache = _textured_cache(tmp_path)
    plain = FaceCacheDataset(cache, "all", points_per_region=None)
    aug = FaceCacheDataset(cache, "all", points_per_region=None, augment=GEOMETRY_ONLY)
    flips = 0
    for epoch in range(3):
        aug.set_epoch(epoch)
        for i in range(len(plain)):
            a, p = aug[i], plain[i]
            lm_a, lm_p = a["landmarks"][:, :2], p["landmarks"][:, :2]
            inside = (lm_a.abs() < 0.9).all(1)
            # which original landmark each augmented one is: identity, or the flip permutation
            flipped = bool(torch.allclose(aug_flip(aug, i), torch.tensor(1.0)))
            flips += flipped
            src = lm_p[list(FLIP_PERMUTATION_68)] if flipped else lm_p
            va, vp = _sample(a["image"], lm_a[inside]), _sample(p["image"], src[inside])
            assert float((va - vp).abs().mean()) < 0.02, (epoch, i, flipped)
            # the five points follow the same transform (no noise here)
            assert a["landmarks5"].shape == (5, 2)
    assert 0 < flips < 3 * len(plain)  # both cases were exercised


def aug_flip(ds: object, item: int) -> torch.Tensor:
    """Whether the dataset flips ``item`` this epoch (re-drawing its transform from the same seed)."""
    from facerecon.data.augment import draw_transform

    row = int(ds.rows[item])
    rng = np.random.default_rng([ds.seed, ds.epoch, row, 1])
    return torch.tensor(float(draw_transform(rng, ds.augment).flip))


def test_augmentation_is_seeded_and_changes_per_epoch(tmp_path: Path) -> None:
    from facerecon.data.dataset import FaceCacheDataset

    cache = _textured_cache(tmp_path)
    a = FaceCacheDataset(cache, "all", points_per_region=None, augment=AugmentSettings(), seed=3)
    b = FaceCacheDataset(cache, "all", points_per_region=None, augment=AugmentSettings(), seed=3)
    torch.testing.assert_close(a[2]["image"], b[2]["image"])
    torch.testing.assert_close(a[2]["landmarks"], b[2]["landmarks"])
    first = a[2]["landmarks"].clone()
    a.set_epoch(1)
    assert not torch.allclose(a[2]["landmarks"], first)


def test_vertices_follow_the_points_under_augmentation(tmp_path: Path) -> None:
    """Per-vertex ground truth is a barycentric combination of the sample's points, so it moves
    with them: after the transform each vertex equals the same combination of the moved points."""
    from facerecon.data.dataset import FaceCacheDataset

    cache = _textured_cache(tmp_path)
    ids = np.stack([np.arange(10), np.arange(10) + 10, np.arange(10) + 20], axis=1)
    bary = np.tile(np.array([[0.2, 0.3, 0.5]], np.float32), (10, 1))
    ds = FaceCacheDataset(cache, "all", points_per_region=None, correspondence=(ids, bary), augment=GEOMETRY_ONLY)
    for epoch in range(4):
        ds.set_epoch(epoch)
        item = ds[1]
        expect = (torch.from_numpy(bary)[:, :, None] * item["points"][torch.from_numpy(ids)]).sum(1)
        torch.testing.assert_close(item["vertices"], expect, atol=1e-5, rtol=0)
