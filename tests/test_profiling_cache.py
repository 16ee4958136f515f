"""``prepare --profile-views``: views of training rows only, the rows unchanged, the derived ground
truth equal to the view's own, resumable, through the CLI; on the synthetic fixture dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from facerecon.data.cache import PrepareInterrupted, PrepareOptions, prepare_cache
from facerecon.data.dataset import FaceCacheDataset
from facerecon.data.face_model import load_face_model
from facerecon.data.ground_truth import build_ground_truth
from facerecon.data.profiling import profile_views
from facerecon.data.readers import list_samples, read_sample
from facerecon.data.views import view_rng

sys.path.insert(0, str(Path(__file__).parent))
from test_cache import make_fixture_dataset

pytest.importorskip("moderngl", reason="the renderer needs moderngl")

OPTIONS = {"crop_from": "landmarks", "compression": "lzf"}


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("profiled")
    data, model = make_fixture_dataset(root, n=12)
    refs = list_samples(data)
    plain = prepare_cache(refs, root / "plain.h5", model, PrepareOptions(**OPTIONS))
    views = prepare_cache(refs, root / "views.h5", model, PrepareOptions(**OPTIONS, profile_views=2))
    return {"root": root, "data": data, "model": model, "refs": refs, "plain": plain, "views": views}


def test_views_come_from_training_rows_and_leave_the_rows_as_they_were(fixture: dict) -> None:
    with h5py.File(fixture["plain"].path) as a, h5py.File(fixture["views"].path) as b:
        for name in ("split", "images", "points", "normals", "regions", "colors", "landmarks", "pose", "boxes", "offsets"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert "views" not in a
        train = np.flatnonzero(b["split"][:] == 0)
        np.testing.assert_array_equal(b["views/source"][:], np.repeat(train, 2))
        np.testing.assert_array_equal(b["views/view"][:], np.tile([0, 1], len(train)))
        assert "_progress" not in b["views"]
    assert fixture["views"].n_views == 2 * fixture["views"].split_counts[0] and not fixture["views"].view_failures
    val = FaceCacheDataset(fixture["views"].path, split="val", points_per_region=None)
    train_set = FaceCacheDataset(fixture["views"].path, split="train", points_per_region=None)
    assert len(val) == fixture["plain"].split_counts[1]
    assert (train_set.n_rows, train_set.n_views) == (fixture["plain"].split_counts[0], fixture["views"].n_views)


def test_a_views_derived_ground_truth_is_the_views_own(fixture: dict) -> None:
    dataset = FaceCacheDataset(fixture["views"].path, split="train", points_per_region=None)
    model = load_face_model(fixture["model"])
    with h5py.File(fixture["views"].path) as f:
        for v in (0, 3):
            item = dataset[dataset.n_rows + v]
            row, k, box = int(f["views/source"][v]), int(f["views/view"][v]), tuple(f["views/boxes"][v])
            view = profile_views(read_sample(fixture["refs"][row], model), model, 2, view_rng(0, row))[k]
            gt = build_ground_truth(view.sample, box, model)  # the view's own, computed from scratch
            np.testing.assert_allclose(item["points"].numpy(), gt.points, atol=1e-5)
            np.testing.assert_allclose(item["landmarks"].numpy(), gt.landmarks, atol=1e-5)
            np.testing.assert_allclose(item["normals"].numpy(), gt.normals, atol=1e-3)
            np.testing.assert_allclose(item["pose"].numpy(), gt.pose, atol=1e-4)
            assert float(item["mm_per_unit"]) == pytest.approx(gt.mm_per_unit, rel=1e-5)
            assert item["id"] == f"{fixture['refs'][row].id}@view{k}" and int(item["index"]) == row


def test_interrupted_views_resume_to_the_same_file(fixture: dict) -> None:
    out = fixture["root"] / "resumed.h5"
    options = PrepareOptions(**OPTIONS, profile_views=2, flush_every=1)

    def stop(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(PrepareInterrupted, match="profiled views"):
        prepare_cache(fixture["refs"], out, fixture["model"], options, on_views=stop)
    with h5py.File(str(out) + ".partial") as f:
        assert int(f["views/_progress"][0]) == 3
    summary = prepare_cache(fixture["refs"], out, fixture["model"], options)
    with h5py.File(fixture["views"].path) as a, h5py.File(out) as b:
        for name in ("images", "boxes", "transform", "pose", "source", "view"):
            np.testing.assert_array_equal(a[f"views/{name}"][()], b[f"views/{name}"][()], err_msg=name)
    assert summary.n_views == fixture["views"].n_views


def test_cli_prepare_with_profile_views(fixture: dict) -> None:
    from typer.testing import CliRunner

    from facerecon.cli import app

    out = fixture["root"] / "cli.h5"
    args = ["prepare", str(fixture["data"]), str(out), "-m", str(fixture["model"]), "--crop-from", "landmarks", "--limit", "5", "--profile-views", "1"]
    r = CliRunner().invoke(app, ["--quiet", *args])
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        n_train = int((f["split"][:] == 0).sum())
        assert f["views/images"].shape == (n_train, 224, 224, 3)
    assert f"added {n_train} profiled views" in r.output


def test_the_cache_check_accepts_views_and_refuses_one_from_a_test_row(fixture: dict, tmp_path: Path) -> None:
    import shutil

    from facerecon.data.validate import check_cache
    from facerecon.errors import InputError

    assert check_cache(fixture["views"].path).n_samples == 12
    bad = tmp_path / "bad.h5"
    shutil.copy(fixture["views"].path, bad)
    with h5py.File(bad, "r+") as f:
        f["views/source"][0] = int(np.flatnonzero(f["split"][:] == 2)[0])
    with pytest.raises(InputError, match="validation or test row"):
        check_cache(bad)


def test_an_epoch_can_serve_a_fresh_share_of_the_views(fixture: dict) -> None:
    """``views_per_epoch``: the epoch's length is the rows plus that many views, the views are
    distinct within an epoch, differ between epochs, and together cover the cache's views."""
    dataset = FaceCacheDataset(fixture["views"].path, split="train", points_per_region=None, views_per_epoch=3)
    assert len(dataset) == dataset.n_rows + 3
    seen = []
    for epoch in range(8):
        dataset.set_epoch(epoch)
        ids = [dataset[dataset.n_rows + k]["id"] for k in range(3)]
        assert len(set(ids)) == 3 and all("@view" in i for i in ids)
        seen.append(tuple(ids))
    assert len(set(seen)) > 1
    assert len({i for ids in seen for i in ids}) > 3
    everything = FaceCacheDataset(fixture["views"].path, split="train", points_per_region=None, views_per_epoch=10_000)
    assert len(everything) == everything.n_rows + everything.n_views
    with pytest.raises(Exception, match="views_per_epoch"):
        FaceCacheDataset(fixture["views"].path, split="train", points_per_region=None, views_per_epoch=-2)
