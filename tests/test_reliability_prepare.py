"""prepare under failure: a full disk keeps the partial cache resumable; non-finite face-model
parameters are skipped and reported; a run without one good sample fails."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from facerecon.data.cache import PrepareDiskFull, PrepareOptions, partial_path, prepare_cache
from facerecon.data.readers import list_samples
from failure_harness import cli, error_lines, remount, small_tmpfs

sys.path.insert(0, str(Path(__file__).parent))
from test_cache import _assert_same_file, make_fixture_dataset


def _poison(mat: Path, field: str, value: float) -> None:
    data = scipy.io.loadmat(str(mat))
    arr = np.asarray(data[field], dtype=np.float64)
    arr.flat[3] = value
    data = {k: v for k, v in data.items() if not k.startswith("__")}
    data[field] = arr
    scipy.io.savemat(mat, data)


def test_full_disk_then_resume_after_freeing_space(tmp_path: Path) -> None:
    """On a 6 MB tmpfs the run stops with one line naming the partial file (exit 1, no crash);
    once the disk is larger the same command resumes and gives the uninterrupted file."""
    data, model = make_fixture_dataset(tmp_path, n=60)
    common = ["--face-model", str(model), "--crop-from", "landmarks", "--compression", "none", "--flush-every", "4"]
    ref = tmp_path / "ref.h5"
    r = cli("-q", "prepare", str(data), str(ref), *common)
    assert r.returncode == 0, r.stderr
    with small_tmpfs("6m") as disk:
        out = disk / "c.h5"
        r = cli("-q", "prepare", str(data), str(out), *common)
        lines = error_lines(r.stderr)
        assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert str(partial_path(out)) in lines[0] and "no space left" in lines[0] and "resume" in lines[0]
        assert partial_path(out).exists() and not out.exists()
        remount(disk, "40m")
        r = cli("prepare", str(data), str(out), *common)
        assert r.returncode == 0, r.stderr
        assert "resumed after" in " ".join(r.stdout.split()) + " ".join(r.stderr.split())
        assert not partial_path(out).exists()
        shutil.copy(out, tmp_path / "resumed.h5")
    _assert_same_file(ref, tmp_path / "resumed.h5")


def test_injected_full_disk_at_a_block_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same without a tmpfs: the disk reports too little free space at the fourth block."""
    import facerecon.data.cache as cache_mod

    data, model = make_fixture_dataset(tmp_path, n=16)
    refs = list_samples(data)
    opts = PrepareOptions(crop_from="landmarks", flush_every=3)
    prepare_cache(refs, tmp_path / "ref.h5", model, opts)
    real = shutil.disk_usage
    calls = {"n": 0}

    def disk_usage(path):
        calls["n"] += 1
        usage = real(path)
        return usage._replace(free=1000) if calls["n"] >= 5 else usage

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", disk_usage)
    out = tmp_path / "c.h5"
    with pytest.raises(PrepareDiskFull, match="no space left") as info:
        prepare_cache(refs, out, model, opts)
    assert str(partial_path(out)) in str(info.value)
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", real)
    summary = prepare_cache(refs, out, model, opts)
    assert summary.resumed_from == 9
    _assert_same_file(tmp_path / "ref.h5", out)


def test_non_finite_parameters_are_skipped_and_reported(tmp_path: Path) -> None:
    from facerecon.data.validate import check_cache

    data, model = make_fixture_dataset(tmp_path, n=8)
    _poison(data / "image00002.mat", "Shape_Para", np.nan)
    _poison(data / "image00005.mat", "Exp_Para", np.inf)
    out = tmp_path / "c.h5"
    r = cli("prepare", str(data), str(out), "--face-model", str(model), "--crop-from", "landmarks")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "skipped 2 bad sample(s)" in text
    assert "image00002.mat: Shape_Para holds 1 non-finite value(s)" in text
    assert "image00005.mat: Exp_Para holds 1 non-finite value(s)" in text
    assert check_cache(out).n_samples == 6  # and nothing non-finite went in


def test_a_prepare_without_one_good_sample_fails(tmp_path: Path) -> None:
    data, model = make_fixture_dataset(tmp_path, n=4)
    for mat in sorted(data.glob("*.mat")):
        _poison(mat, "Shape_Para", np.nan)
    out = tmp_path / "c.h5"
    r = cli("-q", "prepare", str(data), str(out), "--face-model", str(model), "--crop-from", "landmarks")
    lines = error_lines(r.stderr)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert str(out) in lines[0] and "none of the 4 samples" in lines[0] and "Shape_Para" in lines[0]
    assert not out.exists() and not partial_path(out).exists()


def test_ctrl_c_while_finishing_then_rerun_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the last sample, while the split and ids are being written: the rerun redoes
    the finish and gives the uninterrupted file."""
    import facerecon.data.cache as cache_mod

    data, model = make_fixture_dataset(tmp_path, n=6)
    refs = list_samples(data)
    opts = PrepareOptions(crop_from="landmarks")
    prepare_cache(refs, tmp_path / "ref.h5", model, opts)

    class CtrlC:  # raises when the finish formats the version attribute (split and ids exist by then)
        def __format__(self, spec: str) -> str:
            raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "__version__", CtrlC())
    out = tmp_path / "c.h5"
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(refs, out, model, opts)
    assert partial_path(out).exists() and not out.exists()
    monkeypatch.undo()
    prepare_cache(refs, out, model, opts)
    _assert_same_file(tmp_path / "ref.h5", out)


@pytest.mark.parametrize("field, keep", [("Shape_Para", 10), ("Exp_Para", 5)])
def test_a_cut_parameter_field_is_skipped_and_reported(field: str, keep: int, tmp_path: Path) -> None:
    """A fit whose coefficients were cut short (10 of the 199 shape values) would read as the
    missing ones set to zero, a plausible but wrong face: the sample is skipped and named."""
    from facerecon.data.validate import check_cache

    data, model = make_fixture_dataset(tmp_path, n=6)
    mat = data / "image00003.mat"
    fields = {k: v for k, v in scipy.io.loadmat(str(mat)).items() if not k.startswith("__")}
    fields[field] = fields[field][:keep]
    scipy.io.savemat(mat, fields)
    out = tmp_path / "c.h5"
    r = cli("prepare", str(data), str(out), "--face-model", str(model), "--crop-from", "landmarks")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "skipped 1 bad sample(s)" in text, text
    assert f"image00003.mat: {field} holds {keep} values" in text, text
    assert check_cache(out).n_samples == 5


def test_a_reader_of_the_unfinished_cache_does_not_stop_the_finish(tmp_path: Path) -> None:
    """A process reading OUT.partial (HDF5 SWMR, e.g. to watch the progress) while the last
    sample goes in: its lock used to refuse the finish ("unable to lock file", no file named, no
    cache). The finish goes ahead and gives the file an undisturbed run gives."""
    import subprocess

    data, model = make_fixture_dataset(tmp_path, n=5)
    refs = list_samples(data)
    opts = PrepareOptions(crop_from="landmarks")
    prepare_cache(refs, tmp_path / "ref.h5", model, opts)
    out = tmp_path / "c.h5"
    readers: list[subprocess.Popen] = []

    def open_a_reader(done: int, total: int, skipped: int) -> None:
        if done == total:  # every sample written and flushed: a reader opens the partial file
            reader = subprocess.Popen(
                [sys.executable, "-c", ("import h5py, sys, time\n"
                                        "f = h5py.File(sys.argv[1], 'r', libver='latest', swmr=True)\n"
                                        "print(f['_progress'][0], flush=True)\ntime.sleep(120)\n"), str(partial_path(out))],
                stdout=subprocess.PIPE, text=True,
            )
            readers.append(reader)
            assert reader.stdout is not None and reader.stdout.readline().strip() != ""

    try:
        prepare_cache(refs, out, model, opts, on_progress=open_a_reader)
        assert readers and readers[0].poll() is None  # the reader was open during the finish
    finally:
        for reader in readers:
            reader.kill()
            reader.wait()
    assert not partial_path(out).exists()
    _assert_same_file(tmp_path / "ref.h5", out)
