"""Profile-weighted epochs (``train.yaw_repeat``) and dropped five points (``train.aug_drop_five``)."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cachefix import make_tiny_cache  # noqa: E402

from facerecon.data.augment import AugmentSettings
from facerecon.data.dataset import FaceCacheDataset, yaw_repeat_rows
from facerecon.errors import InputError


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
