"""FaceCacheDataset and collate_faces: region draws, determinism, padding, DataLoader workers."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from facerecon.data.cache import PrepareOptions, prepare_cache
from facerecon.data.dataset import FaceCacheDataset, collate_faces
from facerecon.data.readers import list_samples
from facerecon.errors import InputError

sys.path.insert(0, str(Path(__file__).parent))
from test_cache import make_fixture_dataset


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    data, model = make_fixture_dataset(root, n=10)
    out = root / "c.h5"
    prepare_cache(list_samples(data), out, model, PrepareOptions(crop_from="landmarks"))
    return out


def _raw(path: Path, row: int) -> dict:
    with h5py.File(path, "r") as f:
        a, b = f["offsets"][row], f["offsets"][row + 1]
        return {k: f[k][a:b] for k in ("points", "normals", "regions", "colors")} | {
            "image": f["images"][row], "landmarks": f["landmarks"][row], "id": f["ids"][row].decode()}


def test_all_points_match_the_file(cache: Path) -> None:
    ds = FaceCacheDataset(cache, split="all", points_per_region=None, weights=(0.5, 1.5, 2.0))
    assert len(ds) == 10
    item = ds[3]
    raw = _raw(cache, 3)
    np.testing.assert_array_equal(item["points"].numpy(), raw["points"])
    np.testing.assert_array_equal(item["regions"].numpy(), raw["regions"].astype(np.int64))
    np.testing.assert_allclose(item["normals"].numpy(), raw["normals"].astype(np.float32))
    np.testing.assert_allclose(item["colors"].numpy() * 255, raw["colors"], atol=1e-4)
    np.testing.assert_allclose(item["weights"].numpy(), np.array([0.5, 1.5, 2.0], np.float32)[raw["regions"]])
    assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy() * 255, raw["image"], atol=1e-3)
    assert item["id"] == raw["id"] and int(item["index"]) == 3
    assert item["landmarks"].shape == (68, 3) and item["pose"].shape == (3,) and item["mm_per_unit"].ndim == 0


def test_region_draws(cache: Path) -> None:
    raw = _raw(cache, 0)
    counts = np.bincount(raw["regions"], minlength=3)
    # ask for more of the rarest region than it has: those draws repeat, the others do not
    want = (int(counts[0]) - 1, int(counts[1]) // 2, int(counts[2]) + 50)
    ds = FaceCacheDataset(cache, split="all", points_per_region=want, seed=3)
    item = ds[0]
    regions = item["regions"].numpy()
    assert np.bincount(regions, minlength=3).tolist() == list(want)
    pts = item["points"].numpy()
    for r in range(2):  # without replacement: distinct points, all from the right region
        sel = pts[regions == r]
        assert np.unique(sel, axis=0).shape[0] == sel.shape[0]
    region_of = {tuple(p): int(g) for p, g in zip(raw["points"], raw["regions"])}
    assert all(region_of[tuple(p)] == r for p, r in zip(pts, regions))
    assert np.unique(pts[regions == 2], axis=0).shape[0] == counts[2]  # every key point, some twice


def test_draws_are_seeded_per_epoch_and_index(cache: Path) -> None:
    a = FaceCacheDataset(cache, split="all", points_per_region=(50, 30, 20), seed=1)
    b = FaceCacheDataset(cache, split="all", points_per_region=(50, 30, 20), seed=1)
    np.testing.assert_array_equal(a[2]["points"], b[2]["points"])
    first = a[2]["points"].clone()
    a.set_epoch(1)
    assert not torch.equal(a[2]["points"], first)
    a.set_epoch(0)
    assert torch.equal(a[2]["points"], first)
    c = FaceCacheDataset(cache, split="all", points_per_region=(50, 30, 20), seed=2)
    assert not torch.equal(c[2]["points"], first)


def test_splits_partition_the_rows(cache: Path) -> None:
    rows = [FaceCacheDataset(cache, split=s, points_per_region=None).rows for s in ("train", "val", "test")]
    assert sorted(np.concatenate(rows).tolist()) == list(range(10))
    assert [len(r) for r in rows] == [8, 1, 1]
    with pytest.raises(InputError, match="split must be"):
        FaceCacheDataset(cache, split="dev")
    for bad in ("train+dev", "train+train", "train+"):
        with pytest.raises(InputError, match="split must be"):
            FaceCacheDataset(cache, split=bad)
    with pytest.raises(InputError, match="points_per_region"):
        FaceCacheDataset(cache, points_per_region=(1, 2))


def test_joined_splits_are_the_union_of_their_rows(cache: Path) -> None:
    """``train+val`` (a final model trains on both): exactly the rows the cache marks 0 or 1."""
    import h5py

    with h5py.File(cache, "r") as f:
        marks = f["split"][:]
    union = FaceCacheDataset(cache, split="train+val", points_per_region=None).rows
    assert union.tolist() == [i for i, m in enumerate(marks) if m in (0, 1)]
    assert FaceCacheDataset(cache, split="val+train", points_per_region=None).rows.tolist() == union.tolist()


def test_collate_pads_and_reports_lengths() -> None:
    def item(n: int, i: int) -> dict:
        return {"points": torch.ones(n, 3) * i, "normals": torch.ones(n, 3), "regions": torch.full((n,), 2),
                "weights": torch.ones(n), "colors": torch.ones(n, 3), "landmarks": torch.zeros(68, 3),
                "image": torch.zeros(3, 4, 4), "index": torch.tensor(i), "id": f"s{i}"}

    batch = collate_faces([item(5, 1), item(3, 2)])
    assert batch["lengths"].tolist() == [5, 3]
    assert batch["points"].shape == (2, 5, 3) and batch["image"].shape == (2, 3, 4, 4)
    assert (batch["points"][1, 3:] == 0).all() and (batch["weights"][1, 3:] == 0).all()
    assert (batch["regions"][1, 3:] == -1).all() and (batch["regions"][1, :3] == 2).all()
    assert batch["id"] == ["s1", "s2"] and batch["index"].tolist() == [1, 2]


@pytest.mark.slow
def test_dataloader_with_two_workers_matches_in_process(cache: Path) -> None:
    ds = FaceCacheDataset(cache, split="all", points_per_region=(200, 100, 50), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_faces, shuffle=False)
    batches = list(loader)
    assert [b["points"].shape[0] for b in batches] == [4, 4, 2]
    assert all(b["lengths"].tolist() == [350] * b["points"].shape[0] for b in batches)
    for b in batches:  # the same draws as in this process: seeded by (seed, epoch, index)
        for j, idx in enumerate(b["index"].tolist()):
            torch.testing.assert_close(b["points"][j], ds[idx]["points"])


def test_variable_sizes_pad_in_a_loader(tmp_path: Path) -> None:
    """Scans of different sizes: all points per sample, padded batches."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, n in enumerate((120, 300, 200)):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"s{k}.png")
        np.save(tmp_path / f"s{k}.npy", np.column_stack([rng.uniform(10, 50, (n, 2)), rng.uniform(0, 3, n)]).astype(np.float32))
        np.save(tmp_path / f"s{k}.landmarks.npy", np.column_stack([rng.uniform(15, 45, (68, 2)), np.zeros(68)]).astype(np.float32))
    (tmp_path / "scan_info.json").write_text('{"mm_per_px": 1.0}')
    out = tmp_path / "c.h5"
    prepare_cache(list_samples(tmp_path), out, None, PrepareOptions(crop_from="landmarks"))
    ds = FaceCacheDataset(out, split="all", points_per_region=None)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_faces)))
    assert batch["lengths"].tolist() == [120, 300, 200] and batch["points"].shape == (3, 300, 3)
