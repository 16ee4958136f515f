"""Training under failure: Ctrl-C / SIGTERM mid-step resume bit-identically, stale temporaries,
a full disk while writing a checkpoint, damaged caches refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from facerecon.engine.checkpoint import load_checkpoint
from failure_harness import cli, error_lines, remount, small_tmpfs, tiny_cache

TESTS = Path(__file__).resolve().parent

# One training run in a fresh process (same thread count for every run, so results compare
# bit for bit). With SIGNAL set, the process sends itself that signal in the middle of the
# first step's forward pass (after three BatchNorm layers have updated their statistics).
DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from conftest import TINY_MODEL
    from facerecon.config import Config
    from facerecon.engine.train import TrainOptions, run_training

    cache, out, resume, sig = sys.argv[1], sys.argv[2], sys.argv[3] == "resume", sys.argv[4]
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else TINY_MODEL["train.batch_size"]
    if sig != "none":
        seen = {{"bn": 0}}

        def hook(module, args, output):
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training:
                seen["bn"] += 1
                if seen["bn"] == 3:
                    os.kill(os.getpid(), getattr(signal, sig))

        torch.nn.modules.module.register_module_forward_hook(hook)
    cfg = Config().replace({{**TINY_MODEL, "train.epochs": 2, "train.batch_size": batch}})
    result = run_training(cfg, TrainOptions(cache=Path(cache), out=Path(out), resume=resume, quiet=True, validate=False))
    print("RESULT " + json.dumps({{"interrupted": result.interrupted, "global_step": result.global_step}}))
    """
)


def _run(driver: Path, cache: Path, out: Path, resume: bool, sig: str, batch: int = 2, threads: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run(
        [sys.executable, str(driver), str(cache), str(out), "resume" if resume else "fresh", sig, str(batch)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor (and number) in a nested checkpoint, by its path."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = torch.tensor(obj, dtype=torch.float64)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 4 train samples, batch 2: two steps per epoch
    return tiny_cache(tmp_path_factory.mktemp("relcache") / "c.h5", n=8, points=500)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "drive.py"
    path.write_text(DRIVER.format(tests=str(TESTS)))
    return path


@pytest.fixture(scope="module")
def uninterrupted(cache: Path, driver: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    assert _run(driver, cache, out, False, "none") == {"interrupted": False, "global_step": 4}
    return out


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_mid_step_then_resume_is_bit_identical(sig: str, cache: Path, driver: Path, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _run(driver, cache, out, False, sig)
    assert first == {"interrupted": True, "global_step": 1}  # the step under way was finished, then it stopped
    saved = load_checkpoint(out / "last.pt")
    assert saved["epoch"] == 0 and saved["step_in_epoch"] == 1
    assert saved["running"]["count"] == 1  # the epoch's loss sum so far travels with the checkpoint
    assert not list(out.glob(".*.tmp*"))
    second = _run(driver, cache, out, True, "none")
    assert second == {"interrupted": False, "global_step": 4}
    a, b = _tensors(load_checkpoint(uninterrupted / "last.pt")), _tensors(load_checkpoint(out / "last.pt"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}"
    # metrics.jsonl: each epoch's mean loss covers all of its steps, the interrupted ones included
    ref = [json.loads(x) for x in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in got] == [1, 2]
    for r, g in zip(ref, got):
        assert {k: v for k, v in r.items() if k != "samples_per_s"} == {k: v for k, v in g.items() if k != "samples_per_s"}


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_at_batch_size_1_then_resume_is_bit_identical(sig: str, cache: Path, driver: Path, tmp_path: Path) -> None:
    """The same at batch size 1 with two threads, where the losses' gradient sums once depended on
    thread order: a Ctrl-C or SIGTERM mid-step and --resume end where an uninterrupted run ends."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert _run(driver, cache, ref, False, "none", batch=1, threads=2) == {"interrupted": False, "global_step": 8}
    assert _run(driver, cache, out, False, sig, batch=1, threads=2) == {"interrupted": True, "global_step": 1}
    assert _run(driver, cache, out, True, "none", batch=1, threads=2) == {"interrupted": False, "global_step": 8}
    a, b = _tensors(load_checkpoint(ref / "last.pt")), _tensors(load_checkpoint(out / "last.pt"))
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}"


def test_stale_checkpoint_temporaries_are_removed_on_start(cache: Path, tmp_path: Path) -> None:
    """What ``kill -9`` during a checkpoint write leaves (a 0-byte ``.last.*.tmp.pt``) does not
    outlive the next run."""
    out = tmp_path / "run"
    args = ["-q", "train", "--cache", str(cache), "--out", str(out), "--epochs", "1", "--no-validate", "--max-steps", "1"]
    sets = [x for k, v in TINY_MODEL.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    r = cli(*args, *sets)
    assert r.returncode == 0, r.stderr
    stale = [out / ".last.k9x2_abc.tmp.pt", out / ".best.q1w2e3r4.tmp.pt", out / ".metrics.zz81.tmp.jsonl"]
    for path in stale:
        path.write_bytes(b"")  # as mkstemp leaves it when the writer is killed before writing
    unrelated = out / ".notes.tmp.txt"
    unrelated.write_text("mine")
    r = cli(*args[:-2], "--resume", *sets)
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in stale)
    assert unrelated.exists()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_full_disk_while_writing_a_checkpoint_then_resume(cache: Path, tmp_path: Path) -> None:
    """A disk with room for one checkpoint and a half: the second epoch's last.pt does not fit. One
    line names it, exit 1; last.pt and best.pt of the first epoch stay loadable (best.pt shares
    last.pt's disk space), no temporary file is left, and once space is freed --resume finishes.
    (Writing best.pt first used to fill the disk in the first epoch: best.pt without last.pt, a
    run that could not be resumed.)"""
    probe = tiny_cache(tmp_path / "probe.h5", n=8, points=500)
    sets = [x for k, v in TINY_MODEL.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    r = cli("-q", "train", "--cache", str(probe), "--out", str(tmp_path / "probe"), "--epochs", "1", "--no-validate", "--max-steps", "1", *sets)
    assert r.returncode == 0, r.stderr
    size = (tmp_path / "probe" / "last.pt").stat().st_size
    with small_tmpfs(f"{int(size * 1.5) // 1024}k") as disk:
        out = disk / "run"
        args = ["-q", "train", "--cache", str(cache), "--out", str(out), "--epochs", "3", "--val-limit", "1", *sets]
        r = cli(*args)
        lines = error_lines(r.stderr)
        assert r.returncode == 1, r.stdout + r.stderr
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "no space left" in lines[0] and str(out / "last.pt") in lines[0], lines[0]
        assert not list(out.glob(".*.tmp*")), list(out.iterdir())
        assert load_checkpoint(out / "last.pt")["epoch"] == 1
        assert load_checkpoint(out / "best.pt")["epoch"] == 1
        remount(disk, f"{int(size * 4) // 1024}k")
        r = cli(*args, "--resume")
        assert r.returncode == 0, r.stderr
        assert load_checkpoint(out / "last.pt")["epoch"] == 3


def _damage(path: Path, how: str) -> None:
    with h5py.File(path, "r+") as f:
        if how == "nan-points":
            pts = f["points"][:]
            a = int(f["offsets"][5])
            pts[a + 10 : a + 12] = np.nan
            f["points"][:] = pts
        elif how == "inf-normals":
            nrm = f["normals"][:]
            nrm[int(f["offsets"][2]) + 3] = np.inf
            f["normals"][:] = nrm
        elif how == "no-points":
            del f["points"]
        elif how == "offsets":
            off = f["offsets"][:]
            off[3] = off[6] + 5
            f["offsets"][:] = off


def _random_bytes_in_the_middle(path: Path) -> None:
    """Overwrite the middle of the points dataset's bytes on disk (as a bad disk or copy would)."""
    with h5py.File(path, "r") as f:
        offset = f["points"].id.get_offset()
        nbytes = f["points"].id.get_storage_size()
    with open(path, "r+b") as fh:
        fh.seek(offset + nbytes // 3)
        fh.write(np.random.default_rng(0).integers(0, 256, nbytes // 3, dtype=np.uint8).tobytes())


@pytest.mark.parametrize(
    "how, expected",
    [
        ("nan-points", "sample 'tiny/005' has non-finite points"),
        ("inf-normals", "sample 'tiny/002' has non-finite normals"),
        ("no-points", "no 'points' dataset"),
        ("offsets", "corrupt 'offsets'"),
        ("random-bytes", "non-finite"),
    ],
)
def test_train_refuses_a_damaged_cache_naming_it(how: str, expected: str, tmp_path: Path) -> None:
    path = tiny_cache(tmp_path / "bad.h5", n=8, points=500)
    if how == "random-bytes":
        with h5py.File(path, "r+") as f:  # contiguous storage, so the bytes are easy to reach
            pts = f["points"][:]
            del f["points"]
            f.create_dataset("points", data=pts)
        _random_bytes_in_the_middle(path)
    else:
        _damage(path, how)
    line = _refused_train(path, tmp_path / "run")
    assert str(path) in line and expected in line, line


def _refused_train(cache: Path, out: Path, *extra: str) -> str:
    """Run ``train`` that must be refused: exit 2, one error line, no traceback, no checkpoint.
    Returns the line."""
    r = cli("train", "--cache", str(cache), "--out", str(out), "--epochs", "1", *extra)
    lines = error_lines(r.stderr)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr and "internal error" not in lines[0], r.stderr
    assert not (out / "last.pt").exists()
    return lines[0]


def test_cache_check_passes_a_good_cache(tmp_path: Path) -> None:
    from facerecon.data.validate import check_cache

    path = tiny_cache(tmp_path / "ok.h5", n=8, points=500)
    summary = check_cache(path)
    assert summary.n_samples == 8 and summary.n_points == 8 * 500 + 7 * 28
    assert check_cache(path) is summary  # the same unchanged file is not read twice


def test_resume_with_a_corrupt_config_json_names_it(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"model": {"hidden": 32,')  # cut short
    r = cli("train", "--cache", str(cache), "--out", str(out), "--resume")
    lines = error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert str(out / "config.json") in lines[0] and "internal error" not in lines[0], lines[0]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_to_the_process_group_with_loader_workers(sig: str, cache: Path, tmp_path: Path) -> None:
    """Ctrl-C in a terminal and a scheduler's SIGTERM reach the data-loader workers too: they must
    not die under the step under way. The run saves and exits 130 (Ctrl-C) or 143 (SIGTERM), without a
    traceback, with one line saying what was kept and how to resume."""
    import signal
    import time

    out = tmp_path / "run"
    sets = [x for k, v in TINY_MODEL.items() if k != "train.num_workers" for x in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [sys.executable, "-m", "facerecon", "train", "--cache", str(cache), "--out", str(out), "--epochs", "50",
           "--no-validate", "--workers", "2", *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        while not (out / "last.pt").exists() and proc.poll() is None:  # the first epoch ends
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0]
        os.killpg(proc.pid, getattr(signal, sig))
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == (130 if sig == "SIGINT" else 143), output
    assert "Traceback" not in output and "error" not in output.lower(), output
    assert "interrupted: saved" in output
    assert f"{'interrupted (Ctrl-C)' if sig == 'SIGINT' else 'terminated (SIGTERM)'}: " in output and "--resume" in output
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] < 50
    assert not list(out.glob(".*.tmp*"))


def test_kill9_during_a_checkpoint_write_then_resume(cache: Path, tmp_path: Path) -> None:
    """``kill -9`` while ``last.pt`` is being written: the temporary file it leaves is gone after
    the next run, which resumes from the last complete checkpoint."""
    import signal
    import time

    out = tmp_path / "run"
    sets = [x for k, v in TINY_MODEL.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [sys.executable, "-m", "facerecon", "-q", "train", "--cache", str(cache), "--out", str(out), "--epochs", "200",
           "--no-validate", *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    caught: list[Path] = []
    try:
        while proc.poll() is None and not caught:  # wait for a save after the first one, and kill it mid-write
            if (out / "last.pt").exists():
                caught = list(out.glob(".last.*.tmp.pt"))
            if not caught:
                time.sleep(0.002)
        if caught:
            proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not caught:
        pytest.skip("the run ended before a checkpoint write could be caught")
    assert proc.returncode == -signal.SIGKILL
    if not list(out.glob(".last.*.tmp.pt")):  # the write completed between the look and the kill
        pytest.skip("the checkpoint write finished before the kill landed")
    before = load_checkpoint(out / "last.pt")["epoch"]  # the previous complete checkpoint
    r = cli("-q", "train", "--cache", str(cache), "--out", str(out), "--epochs", str(before + 1), "--no-validate", "--resume", *sets)
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".*.tmp*"))
    assert load_checkpoint(out / "last.pt")["epoch"] == before + 1


_WORKER_START_DRIVER = r"""
import os, signal, sys
import torch
from torch.utils.data import DataLoader
from facerecon.signals import ignore_stop_signals, stop_requests, stop_signals_blocked

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        return torch.tensor([i])

with stop_requests() as request:
    loader = DataLoader(Slow(), batch_size=1, num_workers=2, worker_init_fn=ignore_stop_signals)
    with stop_signals_blocked():
        batches = iter(loader)
        os.killpg(0, getattr(signal, sys.argv[1]))  # while the workers start, before they ignore it
    got = sorted(int(b) for b in batches)
    print("got", got, "requested", request.requested)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_loader_workers_start_does_not_kill_them(sig: str, tmp_path: Path) -> None:
    """The race behind the test above: a signal to the process group that arrives while the
    workers of a new epoch are being forked (before their ``worker_init_fn`` ignores it) must not
    end a worker ("DataLoader worker exited unexpectedly"). Sent at exactly that moment, every
    batch must still arrive and the main process must see the stop request."""
    driver = tmp_path / "driver.py"
    driver.write_text(_WORKER_START_DRIVER)
    r = subprocess.run([sys.executable, str(driver), sig], capture_output=True, text=True, timeout=120,
                       start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "got [0, 1, 2, 3, 4, 5, 6, 7] requested True" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("train.augment.five_outlier=1.5", "config key 'train.augment.five_outlier': 1.5 must be >= 0 and <= 1 (a probability)"),
        ("train.augment.flip=-0.1", "config key 'train.augment.flip': -0.1 must be >= 0 and <= 1 (a probability)"),
        ("train.augment.scale=1.0", "config key 'train.augment.scale': 1.0 must be >= 0 and < 1 (a fraction of the crop)"),
        ("train.augment.rotation_deg=-5", "config key 'train.augment.rotation_deg': -5.0 must be >= 0"),
    ],
)
def test_train_refuses_augmentation_out_of_range(setting: str, expected: str, tmp_path: Path) -> None:
    path = tiny_cache(tmp_path / "ok.h5", n=8, points=500)
    line = _refused_train(path, tmp_path / "run", "--set", setting)
    assert expected in line and f"--set {setting}" in line, line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "train.epochs=lots"], "--set train.epochs=lots and --epochs both set train.epochs: give it once"),
        (["--set", "train.batch_size=0", "--batch-size", "4"], "--set train.batch_size=0 and --batch-size both set train.batch_size"),
        (["--set", "train.lr=-0.01"], "--set train.lr=-0.01: config key 'train.lr': -0.01 must be > 0"),
    ],
)
def test_train_command_line_values_are_checked_with_their_source(args: list[str], expected: str, tmp_path: Path) -> None:
    """A shortcut flag (``--epochs 1``, given by ``_refused_train``) and ``--set`` cannot both set a
    key, and a value out of range is a user error naming the key and where it came from."""
    path = tiny_cache(tmp_path / "ok.h5", n=8, points=500)
    line = _refused_train(path, tmp_path / "run", *args)
    assert expected in line, line


def test_train_config_file_value_out_of_range_names_the_file(tmp_path: Path) -> None:
    path = tiny_cache(tmp_path / "ok.h5", n=8, points=500)
    config = tmp_path / "neg.toml"
    config.write_text("[train]\nlr = -1e-3\n")
    line = _refused_train(path, tmp_path / "run", "--config", str(config))
    assert "neg.toml: config key 'train.lr': -0.001 must be > 0" in line, line


def test_an_empty_training_split_is_named_with_the_cache(tmp_path: Path) -> None:
    """A cache whose samples are all in val: refused before anything is built, naming the cache,
    the split and the split sizes (model v2's face prior used to say only that it needs a face)."""
    sys.path.insert(0, str(TESTS))
    from facerecon.data.cache import PrepareOptions, prepare_cache
    from facerecon.data.readers import list_samples
    from test_cache import make_fixture_dataset

    data, model = make_fixture_dataset(tmp_path, n=4)
    cache = tmp_path / "c.h5"
    prepare_cache(list_samples(data), cache, model, PrepareOptions(crop_from="landmarks"))
    with h5py.File(cache, "r+") as f:
        f["split"][:] = 1  # every sample in val
    r = cli("train", "--cache", str(cache), "--out", str(tmp_path / "run"), "--config", "facerecon/configs/aflw-v2.toml", "--epochs", "1")
    lines = error_lines(r.stderr)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and f"{cache}: the train split holds no sample (train 0, val 4, test 0)" in lines[0], lines
