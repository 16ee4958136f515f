"""Profile-weighted epochs (``train.yaw_repeat``), dropped five points (``train.augment.drop_five``) and
transplanted five-point failures (``train.augment.five_outlier``)."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from facerecon.data.augment import AugmentSettings
from facerecon.data.dataset import FaceCacheDataset, yaw_repeat_rows
from facerecon.errors import InputError
from synthetic_cache import make_tiny_cache


def test_rows_repeat_by_yaw_bin() -> None:
    rows = np.array([10, 11, 12, 13, 14, 15])
    yaw = np.array([5.0, -40.0, 35.0, 75.0, -89.0, 29.9])  # bins 0, 1, 1, 2, 2, 0
    out, copies = yaw_repeat_rows(rows, yaw, (1.0, 1.5, 3.0), seed=0)
    # the originals first, in order, as copy 0
    np.testing.assert_array_equal(out[:6], rows)
    np.testing.assert_array_equal(copies[:6], 0)
    extra = sorted(zip(out[6:].tolist(), copies[6:].tolist()))
    # 30-60: one of the two rows once more (half of the bin); 60-90: both rows twice more
    profile = [e for e in extra if e[0] in (13, 14)]
    assert profile == [(13, 1), (13, 2), (14, 1), (14, 2)]
    half = [e for e in extra if e[0] in (11, 12)]
    assert len(half) == 1 and half[0][1] == 1
    assert not [e for e in extra if e[0] in (10, 15)]


def test_yaw_repeat_weights_below_one_are_refused() -> None:
    with pytest.raises(InputError, match="yaw_repeat"):
        yaw_repeat_rows(np.arange(3), np.zeros(3), (1.0, 0.5, 2.0), seed=0)


def _cache_with_yaws(tmp_path: Path) -> Path:
    cache = make_tiny_cache(tmp_path / "c.h5", n=10, points=300)
    with h5py.File(cache, "r+") as f:
        split = f["split"][:]
        pose = f["pose"][:]
        pose[split == 0, 0] = np.linspace(-80.0, 80.0, int((split == 0).sum()))
        f["pose"][...] = pose
    return cache


def test_repeats_draw_their_own_augmentation_and_originals_keep_theirs(tmp_path: Path) -> None:
    cache = _cache_with_yaws(tmp_path)
    aug = AugmentSettings()
    plain = FaceCacheDataset(cache, points_per_region=(100, 50, 50), augment=aug)
    weighted = FaceCacheDataset(cache, points_per_region=(100, 50, 50), augment=aug, yaw_repeat=(1.0, 2.0, 2.0))
    with h5py.File(cache, "r") as f:
        yaw = np.abs(f["pose"][:, 0][plain.rows])
    assert len(weighted) == len(plain) + int((yaw >= 30).sum())
    for i in range(len(plain)):  # the original items are exactly the unweighted ones
        a, b = plain[i], weighted[i]
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
        np.testing.assert_array_equal(a["points"].numpy(), b["points"].numpy())
    for j in range(len(plain), len(weighted)):  # a repeat is the same face, augmented anew
        row = int(weighted.rows[j])
        i = int(np.flatnonzero(plain.rows == row)[0])
        assert weighted[j]["id"] == plain[i]["id"]
        assert not np.array_equal(weighted[j]["image"].numpy(), plain[i]["image"].numpy())


def test_dropped_five_points_are_nan_and_no_drop_changes_nothing(tmp_path: Path) -> None:
    cache = _cache_with_yaws(tmp_path)
    base = FaceCacheDataset(cache, points_per_region=None, augment=AugmentSettings())
    never = FaceCacheDataset(cache, points_per_region=None, augment=AugmentSettings(drop_five=0.0))
    always = FaceCacheDataset(cache, points_per_region=None, augment=AugmentSettings(drop_five=1.0))
    for i in range(len(base)):
        np.testing.assert_array_equal(base[i]["landmarks5"].numpy(), never[i]["landmarks5"].numpy())
        assert np.isfinite(base[i]["landmarks5"].numpy()).all()
        assert np.isnan(always[i]["landmarks5"].numpy()).all()
        np.testing.assert_array_equal(base[i]["image"].numpy(), always[i]["image"].numpy())  # only the points go


def _true_five(landmarks: np.ndarray) -> np.ndarray:
    """MTCNN's five points from iBUG-68, written out: eye-contour means, nose tip, mouth corners."""
    lm = landmarks[:, :2].astype(np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def _box_size(landmarks: np.ndarray) -> float:
    w, h = landmarks[:, :2].max(0) - landmarks[:, :2].min(0)
    return float(np.sqrt(w * h))


#: Two made-up gross failures (in face sizes): the far eye dragged in, a mouth corner off.
_FAILURES = (
    np.array([[0.30, 0.05], [0.0, 0.0], [0.10, 0.0], [0.0, 0.0], [-0.20, 0.10]]),
    np.array([[0.0, 0.0], [-0.40, 0.0], [0.0, 0.15], [0.25, 0.0], [0.0, 0.0]]),
)


def _cache_with_failures(tmp_path: Path) -> tuple[Path, dict[int, np.ndarray]]:
    """Train rows 0-7 at yaws -80..80; rows 0 (yaw -80) and 1 (yaw -57) carry a gross five-point
    failure each, every other five points are exact (no failure to learn from)."""
    cache = _cache_with_yaws(tmp_path)
    with h5py.File(cache, "r+") as f:
        lms = f["landmarks"][:]
        five = np.stack([_true_five(lm) for lm in lms]).astype(np.float32)
        donors = {}
        for row, err in zip((0, 1), _FAILURES):
            five[row] = _true_five(lms[row]) + err * _box_size(lms[row])
            donors[row] = err
        f["landmarks5"][...] = five
        yaws = f["pose"][:, 0]
    assert yaws[0] < 0 and yaws[1] < 0 and (yaws[2:8] > 0).any()
    return cache, donors


_NO_GEOMETRY = dict(rotation_deg=0.0, scale=0.0, shift=0.0, five_noise=0.0)


def test_transplanted_failures_are_a_donors_error_on_the_true_points(tmp_path: Path) -> None:
    cache, donors = _cache_with_failures(tmp_path)
    ds = FaceCacheDataset(cache, points_per_region=None, augment=AugmentSettings(flip=0.0, five_outlier=1.0, **_NO_GEOMETRY))
    with h5py.File(cache, "r") as f:
        lms, yaws = f["landmarks"][:], f["pose"][:, 0]
    mirrored = [err[[1, 0, 2, 4, 3]] * np.array([-1.0, 1.0]) for err in donors.values()]
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        row = int(item["index"])
        err = (item["landmarks5"].numpy() - _true_five(lms[row])) / _box_size(lms[row])
        # a donor's failure, as it is for a face looking the donors' way, mirrored for the other
        candidates = list(donors.values()) if yaws[row] < 0 else mirrored
        hits = [k for k, c in enumerate(candidates) if np.allclose(err, c, atol=1e-5)]
        assert len(hits) == 1, (row, err)
        seen.add(hits[0])
    assert seen == {0, 1}  # both donors are drawn


def test_transplanted_failures_flip_with_the_crop(tmp_path: Path) -> None:
    cache, _ = _cache_with_failures(tmp_path)
    plain = FaceCacheDataset(cache, points_per_region=None, augment=AugmentSettings(flip=0.0, five_outlier=1.0, **_NO_GEOMETRY))
    flipped = FaceCacheDataset(cache, points_per_region=None, augment=AugmentSettings(flip=1.0, five_outlier=1.0, **_NO_GEOMETRY))
    for i in range(len(plain)):
        a = plain[i]["landmarks5"].numpy()
        b = flipped[i]["landmarks5"].numpy()
        # crop units are centred: a mirror negates x and swaps the eyes and mouth corners
        np.testing.assert_allclose(b, (a * np.array([-1.0, 1.0]))[[1, 0, 2, 4, 3]], atol=1e-6)


def test_no_failure_in_the_split_leaves_the_points_alone(tmp_path: Path) -> None:
    cache = _cache_with_yaws(tmp_path)  # every five points exact: nothing to transplant
    base = FaceCacheDataset(cache, points_per_region=None, augment=AugmentSettings())
    keen = FaceCacheDataset(cache, points_per_region=None, augment=AugmentSettings(five_outlier=1.0))
    for i in range(len(base)):
        np.testing.assert_array_equal(base[i]["landmarks5"].numpy(), keen[i]["landmarks5"].numpy())
